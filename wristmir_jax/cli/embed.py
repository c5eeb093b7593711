"""`wristmir embed --workdir W --data DATA_DIR --split S --out INDEX_DIR`: encode a split into a
retrieval index (global and region image embeddings, report and caption text embeddings, ids,
hashed patients, records, boxes, a model/config fingerprint, and a ScaNN searcher for large
splits). Batched and jitted, sharded over all local devices; each process encodes its slice.
`--split train,test --out DIR/index_{split}` writes several indexes with one model restore and
one compile."""

from __future__ import annotations

import argparse
import json

from wristmir_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training workdir (checkpoints, config.json)")
    p.add_argument("--data", required=True, help="DATA_DIR built by `wristmir build`")
    p.add_argument("--split", required=True,
                   help="split to embed (train, val or test), or several comma-separated")
    p.add_argument("--out", required=True,
                   help="INDEX_DIR to write; with several splits it must contain {split}")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="storage dtype of the embeddings (default float16)")
    p.add_argument("--batch-size", type=int, default=64, help="examples per jitted batch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing INDEX_DIR")
    p.add_argument("--scann", choices=("auto", "yes", "no"), default="auto",
                   help="build a ScaNN searcher (auto: when the split has >= 10k items)")
    p.add_argument("--scann-param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a ScaNN parameter of the size rule, e.g. leaves_to_search=90")


def _scann_overrides(items: list[str]) -> dict:
    out = {}
    for it in items:
        name, sep, value = it.partition("=")
        if not sep:
            raise UserError(f"--scann-param {it!r}: expected NAME=VALUE")
        try:
            out[name] = json.loads(value)
        except ValueError:
            out[name] = value
    return out


def outputs_for(splits: str, out: str) -> dict[str, str]:
    """--split and --out -> {split: INDEX_DIR}."""
    names = [s.strip() for s in splits.split(",")]
    if not all(names) or len(set(names)) < len(names):
        raise UserError(f"--split {splits!r}: expected distinct comma-separated split names")
    if len(names) > 1 and "{split}" not in out:
        raise UserError(f"--out {out!r}: several splits need {{split}} in the output path")
    return {n: out.replace("{split}", n) for n in names}


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.retrieval.encode import embed_splits

    if args.config_overrides:
        raise UserError("embed takes no --config overrides (the model config comes from the workdir)")
    outputs = outputs_for(args.split, args.out)
    build = {"auto": None, "yes": True, "no": False}[args.scann]
    fps = embed_splits(args.workdir, args.data, outputs, dtype=args.dtype,
                       batch_size=args.batch_size, overwrite=args.overwrite, build_scann=build,
                       scann_params=_scann_overrides(args.scann_param) or None)
    for split, fp in fps.items():
        if fp is not None:
            print(f"wrote {outputs[split]}: {fp['count']} items, dim {fp['dim']}, {fp['dtype']}, "
                  f"{'ScaNN' if fp['scann'] else 'exact'} search")
    return 0
