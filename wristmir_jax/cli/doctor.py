"""`wristmir doctor PATH`: checks a dataset, a training workdir or an index and prints one line
per check; exit 0 only when every check holds (1 when one fails, 2 when PATH is not one of them).

  raw dataset  (a folder with manifest.jsonl, or the manifest itself): every line parses, ids are
               unique, every image exists and decodes (a non-constant greyscale radiograph within
               the pixel limit); mined.jsonl / boxes.jsonl beside it name only manifest ids
  DATA_DIR     (wristmir_meta.json): the TFDS info reads, every ArrayRecord shard holds the
               records its info says and every record decodes; ids unique across splits
  workdir      (config.json / checkpoints/): every checkpoint step restores; best.json names a
               kept step; summary.json's params SHA-256 equals the restored newest step's
  INDEX_DIR    (fingerprint.json): every file against the fingerprint (shape, dtype, size and
               the content SHA-256, hashed afresh); ids unique; the model in the index's workdir
               (or --workdir) has the fingerprint's params SHA-256
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Callable

from wristmir_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="a dataset folder / manifest.jsonl, DATA_DIR, workdir or INDEX_DIR")
    p.add_argument("--workdir", default=None, help="model workdir for an index (default: the recorded one)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


class Report:
    def __init__(self, kind: str, path: str):
        self.kind, self.path = kind, path
        self.checks: list[dict] = []

    def check(self, name: str, fn: Callable[[], str | None]) -> bool:
        """Runs one check: a returned string is its detail; UserError (or any error reading the
        user's files) is a failure with its one-line reason."""
        try:
            detail = fn() or ""
            ok = True
        except UserError as e:
            ok, detail = False, str(e)
        except Exception as e:  # a damaged file can raise anything from a third-party reader
            from wristmir_jax.train.checkpoint import _quiet_orphaned_reads

            _quiet_orphaned_reads()
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        self.checks.append({"check": name, "ok": ok, "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)


def kind_of(path: str) -> str:
    if os.path.isfile(path) and path.endswith(".jsonl"):
        return "raw"
    if not os.path.isdir(path):
        raise UserError("not found (expected a dataset, workdir or index folder)", path=path)
    names = set(os.listdir(path))
    if "fingerprint.json" in names:
        return "index"
    if "wristmir_meta.json" in names:
        return "data"
    if "config.json" in names or "checkpoints" in names:
        return "workdir"
    if "manifest.jsonl" in names:
        return "raw"
    raise UserError("not a dataset (manifest.jsonl / wristmir_meta.json), workdir (config.json, "
                    "checkpoints/) or index (fingerprint.json)", path=path)


# --- raw dataset ------------------------------------------------------------------------------
def check_raw(path: str, rep: Report) -> None:
    from wristmir_jax.imaging.io import ImageError, load_image
    from wristmir_jax.utils.jsonl import BadLine, iter_jsonl

    manifest = path if os.path.isfile(path) else os.path.join(path, "manifest.jsonl")
    folder = os.path.dirname(os.path.abspath(manifest))
    rows: list[tuple[int, dict]] = []
    ids: set[str] = set()

    def lines():
        bad, dup = [], []
        for lineno, obj in iter_jsonl(manifest):
            if isinstance(obj, BadLine):
                bad.append(f"line {lineno}: {obj.reason}")
                continue
            rid = obj.get("id")
            if not isinstance(rid, str) or not rid:
                bad.append(f"line {lineno}: no id")
                continue
            if rid in ids:
                dup.append(f"line {lineno}: duplicate id")
                continue
            ids.add(rid)
            rows.append((lineno, obj))
        if bad or dup:
            raise UserError(f"{len(bad)} unreadable line(s), {len(dup)} duplicate id(s); first: "
                            f"{(bad + dup)[0]}", path=manifest)
        return f"{len(rows)} rows, ids unique"

    rep.check("manifest lines", lines)

    def images():
        bad = []
        for lineno, obj in rows:
            img = obj.get("image")
            if not isinstance(img, str) or not img:
                bad.append(f"line {lineno}: no image")
                continue
            p = img if os.path.isabs(img) else os.path.join(folder, img)
            try:
                load_image(p)
            except ImageError as e:
                bad.append(f"line {lineno}: {e.reason}")
        if bad:
            raise UserError(f"{len(bad)} of {len(rows)} images missing or undecodable; first: {bad[0]}",
                            path=manifest)
        return f"{len(rows)} images decode"

    rep.check("images", images)
    for name in ("mined.jsonl", "boxes.jsonl", "gold.jsonl"):
        side = os.path.join(folder, name)
        if os.path.exists(side):
            def _ids(side=side, name=name):
                unknown, bad, n = 0, 0, 0
                for lineno, obj in iter_jsonl(side):
                    if isinstance(obj, BadLine):
                        bad += 1
                        continue
                    n += 1
                    unknown += obj.get("id") not in ids
                if bad or unknown:
                    raise UserError(f"{bad} unreadable line(s), {unknown} id(s) not in the manifest",
                                    path=side)
                return f"{n} rows, all ids in the manifest"

            rep.check(name, _ids)


# --- built dataset ----------------------------------------------------------------------------
def check_data(path: str, rep: Report) -> None:
    from wristmir_jax.data.source import DatasetSource, check_shards, open_builder, read_meta

    rep.check("wristmir_meta.json", lambda: f"image {read_meta(path)['image_size']} px")
    splits: list[str] = []

    def info():
        b = open_builder(path)
        splits.extend(sorted(b.info.splits))
        for s in splits:
            check_shards(b, s, full=True)
        return f"splits {', '.join(splits)}; every shard holds its records"

    if not rep.check("TFDS info and shards", info):
        return
    seen: dict[str, str] = {}

    for split in splits:
        def records(split=split):
            src = DatasetSource(path, split)
            dup = 0
            for i in range(len(src)):
                ex = src[i]
                rid = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
                dup += rid in seen
                seen[rid] = split
            if dup:
                raise UserError(f"{dup} id(s) of split {split} also appear earlier", path=path)
            return f"{len(src)} records decode"

        rep.check(f"split {split}", records)


# --- workdir ----------------------------------------------------------------------------------
def check_workdir(path: str, rep: Report) -> None:
    import jax
    import orbax.checkpoint as ocp

    from wristmir_jax.train import checkpoint as ckpt
    from wristmir_jax.train.state import abstract_train_state, inference_params

    cfg_holder: list = []
    if not rep.check("config.json", lambda: cfg_holder.append(ckpt.read_config(path)) or "reads"):
        return
    manager = ckpt.make_manager(path, save_every=1, keep=1, keep_best=0, async_save=False,
                                read_only=True)
    steps = sorted(manager.all_steps())
    rep.check("checkpoints present", lambda: f"steps {steps}" if steps else (_ for _ in ()).throw(
        UserError("no checkpoint", path=path)))
    _, abstract = abstract_train_state(cfg_holder[0])
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract)
    shas: dict[int, str] = {}
    for step in steps:
        def restore(step=step):
            out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
            shas[step] = ckpt.params_sha256(inference_params(out["state"]))
            return f"params {shas[step][:12]}"

        rep.check(f"checkpoint {step} restores", restore)
    manager.close()
    best = ckpt.best_step(path) if os.path.exists(os.path.join(path, "best.json")) else None
    if best is not None:
        rep.check("best.json", lambda: f"step {best} kept" if best in steps else (_ for _ in ()).throw(
            UserError(f"best.json names step {best}, not kept (have {steps})", path=path)))
    summary = os.path.join(path, "summary.json")
    if os.path.exists(summary) and steps and steps[-1] in shas:
        def summ():
            with open(summary) as f:
                s = json.load(f)
            if int(s.get("step", -1)) != steps[-1]:
                return f"summary is of step {s.get('step')}, newest checkpoint {steps[-1]}"
            if s.get("params_sha256") != shas[steps[-1]]:
                raise UserError("summary.json params SHA-256 differs from the newest checkpoint's",
                                path=summary)
            return "params SHA-256 equals the newest checkpoint's"

        rep.check("summary.json", summ)


# --- index ------------------------------------------------------------------------------------
def check_index(path: str, rep: Report, workdir: str | None) -> None:
    import numpy as np

    from wristmir_jax.retrieval import store

    fp_holder: list = []
    if not rep.check("fingerprint", lambda: fp_holder.append(store.read_fingerprint(path)) or
                     f"{fp_holder[0]['count']} items, dim {fp_holder[0]['dim']}"):
        return
    fp = fp_holder[0]
    loaded: list = []
    if not rep.check("files: shape, dtype, size",
                     lambda: loaded.append(store.load_index(path, verify=False)) or "match"):
        return
    rep.check("files: content SHA-256 (hashed afresh)",
              lambda: f"{store.verify_digests(path, fp, use_cache=False)['hashed']} files match")

    def ids():
        a = loaded[0].arrays.ids
        if len(np.unique(a)) != len(a):
            raise UserError("index ids are not unique", path=path)
        return f"{len(a)} unique"

    rep.check("ids", ids)
    wd = workdir or fp["model"].get("workdir")
    if wd and os.path.isdir(wd):
        def model():
            from wristmir_jax.train.checkpoint import params_sha256, restore_for_inference

            _, params, cfg = restore_for_inference(wd)
            store.check_compatible(fp, path, params_sha256=params_sha256(params), config=cfg.model)
            return f"workdir {wd} holds the index's model"

        rep.check("model fingerprint", model)
    else:
        rep.checks.append({"check": "model fingerprint", "ok": False,
                           "detail": f"workdir {wd!r} not available (pass --workdir)"})


def run(args: argparse.Namespace) -> int:
    if args.config_overrides:
        raise UserError("doctor takes no --config overrides")
    path = os.path.abspath(args.path)
    kind = kind_of(path)
    rep = Report(kind, path)
    if kind == "raw":
        check_raw(path, rep)
    elif kind == "data":
        check_data(path, rep)
    elif kind == "workdir":
        check_workdir(path, rep)
    else:
        check_index(path, rep, args.workdir)
    if args.json:
        print(json.dumps({"kind": kind, "path": path, "ok": rep.ok, "checks": rep.checks}, indent=2))
    else:
        print(f"{kind} {path}")
        for c in rep.checks:
            print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}")
        print("all checks hold" if rep.ok else
              f"{sum(not c['ok'] for c in rep.checks)} of {len(rep.checks)} checks failed")
    return 0 if rep.ok else 1
