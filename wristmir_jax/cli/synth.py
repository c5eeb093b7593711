"""`wristmir synth --out DIR --n N --seed S [--image-size 512] [--overwrite] [--workers W]`:
writes the procedural dataset and prints a short summary (counts, prevalence; never report text)."""

from __future__ import annotations

import argparse

from wristmir_jax.schema import REGIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (must be empty or absent unless --overwrite)")
    p.add_argument("--n", type=int, required=True, help="number of images (views); studies have 2-3 views")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=512, help="square image side in pixels")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: min(2, CPUs))")


def format_summary(s: dict) -> str:
    lines = [f"wrote {s['n_images']} images ({s['n_studies']} studies, {s['n_patients']} patients, "
             f"{s['image_size']}px) to {s['out_dir']} in {s['seconds']:.1f}s "
             f"({s['images_per_s']:.1f} images/s, {s['workers']} workers)"]
    lines.append("splits: " + ", ".join(f"{k} {v['images']} images / {v['patients']} patients"
                                         for k, v in s["splits"].items()))
    lines.append("views: " + ", ".join(f"{k} {v}" for k, v in s["views"].items()))
    lines.append("per-study prevalence: " + ", ".join(
        f"{r} {s['prevalence'][r]['present']:.1%} (+{s['prevalence'][r]['uncertain']:.1%} uncertain)"
        for r in REGIONS) + f", normal {s['normal']:.1%}")
    lines.append("global: " + ", ".join(f"{k} {v:.1%}" for k, v in s["global"].items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.synth import generate

    summary = generate(args.out, n=args.n, seed=args.seed, image_size=args.image_size,
                       overwrite=args.overwrite, workers=args.workers)
    print(format_summary(summary))
    return 0
