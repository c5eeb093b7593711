"""`wristmir bench --suite NAME [--out FILE] [--quick] [--config FILE[:variant]] [--batch N]
[--steps N] [--repeats N] [--profile]`: one benchmark suite, JSON out (and a PNG beside it for the
suites that plot: train, clip-parity, scaling). `--profile` (train, clip-parity) adds a per-op
profile of the step, with XLA's per-operation events switched on for this process.

A suite is a module `wristmir_jax.bench.<name>` with `run(quick: bool, **options) -> dict`; the
options a suite's `run` does not take are refused. Targets are ratios measured inside one run
(see BUILD_NOTES.md), never absolute wall-clock assertions.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
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
    "clip-parity": "wristmir_jax.bench.clip_parity",
    "scaling": "wristmir_jax.bench.scaling",
}
# CLI option -> the keyword of the suite's run()
_OPTIONS = {"config": "config", "batch": "batch", "steps": "steps", "repeats": "repeats",
            "profile": "profile"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, choices=sorted(SUITES))
    p.add_argument("--out", default=None, help="JSON file (default bench_<suite>.json)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for smoke runs")
    p.add_argument("--config", default=None,
                   help="train/scaling: configs/X.py[:variant] (default configs/cpu_demo.py)")
    p.add_argument("--batch", type=int, default=None,
                   help="global batch size (clip-parity: one size instead of 32 and 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps")
    p.add_argument("--repeats", type=int, default=None, help="clip-parity: alternating rounds")
    p.add_argument("--profile", action="store_true", default=None,
                   help="train/clip-parity: add a per-op profile of the step (both sides)")


def run(args: argparse.Namespace) -> int:
    mod = importlib.import_module(SUITES[args.suite])
    accepted = inspect.signature(mod.run).parameters
    options = {}
    for flag, key in _OPTIONS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if key not in accepted:
            raise UserError(f"--{flag}: suite {args.suite} does not take this option")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise UserError(f"--{flag}: must be >= 1, got {value}")
        options[key] = value
    if options.get("profile"):
        from wristmir_jax.bench.profile import cpu_profile_flags

        # before the suite starts JAX's backend, which reads XLA_FLAGS once
        os.environ["XLA_FLAGS"] = cpu_profile_flags(os.environ.get("XLA_FLAGS", ""))
    t0 = time.time()
    result = mod.run(quick=args.quick, **options)
    if not isinstance(result, dict):
        raise UserError(f"suite {args.suite} returned no result")
    result = {"suite": args.suite, "quick": bool(args.quick), "host": platform.node(),
              "cpu_count": os.cpu_count(), "wall_s": round(time.time() - t0, 2), **result}
    out = args.out or f"bench_{args.suite.replace('-', '_')}.json"
    with atomic_write(out) as f:
        json.dump(result, f, indent=2, sort_keys=True, default=float)
    print(json.dumps(result, indent=2, sort_keys=True, default=float))
    print(f"wrote {out}")
    if hasattr(mod, "plot"):
        from wristmir_jax.bench.plots import write_png

        png = os.path.splitext(out)[0] + ".png"
        write_png(mod.plot(result), png)
        print(f"wrote {png}")
    return 0
