"""`wristmir aot --config configs/X.py[:variant] --topology v5e:16x16 [--topology v5p:4x4x8 ...]
[--slices N] [--json out.json] [--no-flops] [--config.a.b=v ...]`.

Compiles the train step `wristmir train` runs for TPU topologies this host does not have (libtpu
from the `tpu` extra; a CPU-only machine is enough) and prints per chip: argument, output, temp
and generated-code bytes, the chip's HBM and whether the step fits, FLOPs per step (from a
compile with scanned layers unrolled) and compile time. Exit 2 when a topology does not fit,
naming the largest buffers. See wristmir_jax/train/aot.py.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file, e.g. configs/vit_b16_pod.py[:arg]")
    p.add_argument("--topology", action="append", required=True,
                   help="TPU topology CHIP:AxB[xC], e.g. v5e:16x16 or v5p:4x4x8 (repeatable)")
    p.add_argument("--slices", type=int, default=1, help="slices of each topology (multislice)")
    p.add_argument("--json", default=None, help="also write the reports to this JSON file")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the second (unrolled) compile that counts FLOPs")


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.config import load_config
    from wristmir_jax.errors import UserError
    from wristmir_jax.train import aot
    from wristmir_jax.utils.fs import atomic_write

    cfg = load_config(args.config, getattr(args, "config_overrides", ()))
    for name in args.topology:            # bad names fail before any compile
        aot.parse_topology(name)
    reports = []
    for name in args.topology:
        r = aot.compile_for_topology(cfg, name, slices=args.slices, flops=not args.no_flops)
        r["config"] = args.config
        reports.append(r)
        print(aot.format_report(r), flush=True)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump(reports, f, indent=2)
    bad = [r for r in reports if not r["fits"]]
    if bad:
        raise UserError("does not fit: " + "; ".join(
            f"{r['topology']} needs {r['per_chip_bytes'] / aot.GIB:.2f} GiB per chip of "
            f"{r['hbm_bytes'] / aot.GIB:.0f} GiB (largest buffer "
            f"{r['largest_buffers'][0]['name']} {r['largest_buffers'][0]['shape']})"
            for r in bad))
    return 0
