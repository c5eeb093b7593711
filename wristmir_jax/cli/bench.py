"""`wristmir bench --suite NAME [--out FILE] [--quick]`: one benchmark suite, JSON out.

A suite is a module `wristmir_jax.bench.<name>` with `run(quick: bool) -> dict`; targets are
ratios measured inside one run (see BUILD_NOTES.md), never absolute wall-clock assertions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time

from wristmir_jax.errors import UserError
from wristmir_jax.utils.fs import atomic_write

SUITES = {
    "synth": "wristmir_jax.bench.synth",
    "mine": "wristmir_jax.bench.mine",
    "localize": "wristmir_jax.bench.localize",
    "input": "wristmir_jax.bench.input",
    "train": "wristmir_jax.bench.train",
    "loss-memory": "wristmir_jax.bench.loss_memory",
    "search": "wristmir_jax.bench.search",
    "rerank": "wristmir_jax.bench.rerank",
    "index-digest": "wristmir_jax.bench.index_digest",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, choices=sorted(SUITES))
    p.add_argument("--out", default=None, help="JSON file (default bench_<suite>.json)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")


def run(args: argparse.Namespace) -> int:
    mod = importlib.import_module(SUITES[args.suite])
    t0 = time.time()
    result = mod.run(quick=args.quick)
    if not isinstance(result, dict):
        raise UserError(f"suite {args.suite} returned no result")
    result = {"suite": args.suite, "quick": bool(args.quick), "host": platform.node(),
              "cpu_count": os.cpu_count(), "wall_s": round(time.time() - t0, 2), **result}
    out = args.out or f"bench_{args.suite.replace('-', '_')}.json"
    with atomic_write(out) as f:
        json.dump(result, f, indent=2, sort_keys=True, default=float)
    print(json.dumps(result, indent=2, sort_keys=True, default=float))
    print(f"wrote {out}")
    return 0
