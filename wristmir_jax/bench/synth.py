"""Generator throughput: images/s for `synth.generate` at 512 px with 1 and 2 worker processes,
the per-image split between rendering and PNG encoding, and CPU time per image (one process),
from which the time for 2000 images on 2 idle cores is projected (wall time on a shared machine
depends on its load, reported as load_avg_1min)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from wristmir_jax.synth import generate, plan_dataset
from wristmir_jax.synth.dataset import encode_png16, render_one


def run(quick: bool = False) -> dict:
    n = 100 if quick else 400
    size = 512
    out: dict = {"n_images": n, "image_size": size}
    with tempfile.TemporaryDirectory(prefix="wristmir-bench-synth-") as tmp:
        for workers in (1, 2):
            s = generate(os.path.join(tmp, f"w{workers}"), n=n, seed=0, image_size=size, workers=workers)
            out[f"images_per_s_{workers}_workers"] = round(n / s["seconds"], 2)
            out[f"seconds_{workers}_workers"] = s["seconds"]
    out["speedup_2_vs_1_workers"] = round(out["images_per_s_2_workers"] / out["images_per_s_1_workers"], 2)
    out["projected_seconds_2000_images_2_workers_as_measured"] = round(2000 / out["images_per_s_2_workers"], 1)
    # Where one image's time goes (single process, no file system).
    studies = plan_dataset(0, 40)
    jobs = [(st, v, i) for st in studies for v, i in st["views"]][:40]
    t_render = t_png = 0.0
    c0 = time.process_time()
    for st, v, i in jobs:
        t0 = time.perf_counter()
        img, _ = render_one(0, i, st, v, size)
        t1 = time.perf_counter()
        encode_png16(img)
        t_png += time.perf_counter() - t1
        t_render += t1 - t0
    cpu_per_image = (time.process_time() - c0) / len(jobs)
    out["ms_render_per_image"] = round(1000 * t_render / len(jobs), 1)
    out["ms_png_per_image"] = round(1000 * t_png / len(jobs), 1)
    # CPU time is what a shared machine cannot inflate much: the projection for 2 idle cores.
    out["cpu_ms_per_image"] = round(1000 * cpu_per_image, 1)
    out["projected_seconds_2000_images_2_idle_cores"] = round(2000 * cpu_per_image / 2, 1)
    out["load_avg_1min"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    out["numpy"] = np.__version__
    return out
