"""`wristmir aot --config configs/X.py[:variant] --topology v5e:16x16 [--topology v5p:4x4x8 ...]
[--slices N] [--json out.json] [--no-flops] [--config.a.b=v ...]`, and
`wristmir aot --table a.json [b.json ...]`: the paper-scale markdown table from earlier reports.

Compiles the train step `wristmir train` runs for TPU topologies this host does not have (libtpu
from the `tpu` extra; a CPU-only machine is enough) and prints per chip: argument, output, temp
and generated-code bytes, the chip's HBM and whether the step fits, FLOPs per step (from a
compile with scanned layers unrolled) and compile time. Exit 2 when a topology does not fit,
naming the largest buffers. Each report records the command that made it; `--table` groups
reports of one config and topology (remat on and off) into one row. See wristmir_jax/train/aot.py.
"""

from __future__ import annotations

import argparse
import json
import shlex


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="config file, e.g. configs/vit_b16_pod.py[:arg]")
    p.add_argument("--topology", action="append",
                   help="TPU topology CHIP:AxB[xC], e.g. v5e:16x16 or v5p:4x4x8 (repeatable)")
    p.add_argument("--slices", type=int, default=1, help="slices of each topology (multislice)")
    p.add_argument("--json", default=None, help="also write the reports to this JSON file")
    p.add_argument("--no-flops", action="store_true",
                   help="skip the second (unrolled) compile that counts FLOPs")
    p.add_argument("--table", nargs="+", default=None, metavar="JSON",
                   help="compile nothing: print the markdown table of these --json reports")


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.config import load_config
    from wristmir_jax.errors import UserError
    from wristmir_jax.train import aot
    from wristmir_jax.utils.fs import atomic_write

    if args.table:
        reports = []
        for path in args.table:
            reports.extend(aot.load_reports(path))
        print(aot.markdown_table(reports))
        return 0
    if not args.config or not args.topology:
        raise UserError("--config and --topology are required (or --table JSON ... to render)")
    overrides = list(getattr(args, "config_overrides", ()))
    cfg = load_config(args.config, overrides)
    for name in args.topology:            # bad names fail before any compile
        aot.parse_topology(name)
    reports = []
    for name in args.topology:
        r = aot.compile_for_topology(cfg, name, slices=args.slices, flops=not args.no_flops)
        r["config"] = args.config
        r["overrides"] = overrides
        r["command"] = shlex.join(
            ["wristmir", "aot", "--config", args.config, "--topology", name]
            + (["--slices", str(args.slices)] if args.slices != 1 else [])
            + (["--no-flops"] if args.no_flops else []) + overrides)
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
