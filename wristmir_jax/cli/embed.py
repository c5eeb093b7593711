"""`wristmir embed --workdir W --data DATA_DIR --split S --out INDEX_DIR`: encode a split into a
retrieval index (global and region image embeddings, report and caption text embeddings, ids,
hashed patients, records, boxes, a model/config fingerprint, and a ScaNN searcher for large
splits). Batched and jitted, sharded over all local devices; each process encodes its slice."""

from __future__ import annotations

import argparse
import json

from wristmir_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training workdir (checkpoints, config.json)")
    p.add_argument("--data", required=True, help="DATA_DIR built by `wristmir build`")
    p.add_argument("--split", required=True, help="split to embed (train, val or test)")
    p.add_argument("--out", required=True, help="INDEX_DIR to write")
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


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.retrieval.encode import embed_split

    if args.config_overrides:
        raise UserError("embed takes no --config overrides (the model config comes from the workdir)")
    build = {"auto": None, "yes": True, "no": False}[args.scann]
    fp = embed_split(args.workdir, args.data, args.split, args.out, dtype=args.dtype,
                     batch_size=args.batch_size, overwrite=args.overwrite, build_scann=build,
                     scann_params=_scann_overrides(args.scann_param) or None)
    if fp is not None:
        print(f"wrote {args.out}: {fp['count']} items, dim {fp['dim']}, {fp['dtype']}, "
              f"{'ScaNN' if fp['scann'] else 'exact'} search")
    return 0
