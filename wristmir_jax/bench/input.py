"""`wristmir bench --suite input`: does the input pipeline keep up with training?

In one run, on one machine:
  1. writes synthetic build inputs (PNG radiographs, manifest, mined, boxes) and builds a
     dataset with `wristmir build` at the default training config's sizes (configs/cpu_demo.py:
     image, crop and caption length);
  2. pipeline throughput: the Grain pipeline over that dataset's train split (ArrayRecord reads,
     PNG decoding, augmentation, batching) with 2 worker processes, examples/s after warm-up;
  3. what training consumes: the default config's jitted train step (cpu_demo: model, losses,
     optimizer, mesh over this machine's devices) on batches of the same dataset, examples/s
     from the median step time after compilation.
Target: pipeline / train >= 3 (input never the bottleneck). If the train step cannot be built,
the pipeline is measured alone and the result says why.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

DEFAULT_CONFIG = "cpu_demo"
TARGET_RATIO = 3.0


def _sizes(cfg) -> tuple[int, int, int]:
    return (int(cfg.model.image.image_size), int(cfg.model.local.crop_size),
            int(cfg.model.text.max_len))


def build_bench_dataset(folder: str, n: int, image_size: int, crop_size: int, max_len: int,
                        raw_width: int = 384, raw_height: int = 512) -> tuple[str, float]:
    """Writes n synthetic cases and builds DATA_DIR; returns (data_dir, build seconds)."""
    from wristmir_jax.data.builder import BuildConfig, build_dataset
    from wristmir_jax.data.synthetic import write_raw_inputs

    # Mostly training cases so the train split is large enough to batch.
    inp = write_raw_inputs(os.path.join(folder, "raw"), n=n, width=raw_width, height=raw_height,
                           splits=("train",) * 8 + ("val", "test"))
    data_dir = os.path.join(folder, "data")
    t0 = time.perf_counter()
    build_dataset(inp["paths"]["manifest"], inp["paths"]["mined"], inp["paths"]["boxes"],
                  data_dir, cfg=BuildConfig(image_size=image_size, crop_size=crop_size,
                                            max_len=max_len))
    return data_dir, time.perf_counter() - t0


def measure_pipeline(data_dir: str, *, global_batch_size: int, worker_count: int,
                     warmup_batches: int, batches: int, augment: bool = True) -> dict:
    """Examples/s of make_pipeline after `warmup_batches` (worker start-up and the prefetch
    buffers filled meanwhile are excluded by the warm-up)."""
    from wristmir_jax.data.pipeline import make_pipeline

    t0 = time.perf_counter()
    it = make_pipeline(data_dir, "train", global_batch_size=global_batch_size, seed=0,
                       augment=augment, worker_count=worker_count, process_index=0,
                       process_count=1)
    try:
        for _ in range(warmup_batches):
            next(it)
        t_warm = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(batches):
            next(it)
        dt = time.perf_counter() - t1
    finally:
        close = getattr(it, "close", None)
        if close:
            close()
    n = batches * global_batch_size
    return {"examples_per_s": n / dt, "batches": batches, "global_batch_size": global_batch_size,
            "worker_count": worker_count, "augment": augment, "seconds": dt,
            "warmup_s": t_warm}


def measure_train_step(data_dir: str, steps: int, config: str = DEFAULT_CONFIG) -> dict:
    """Examples/s the default config's compiled train step consumes (median over `steps`)."""
    import jax
    import numpy as np

    from wristmir_jax.config import load_config
    from wristmir_jax.data.pipeline import make_pipeline
    from wristmir_jax.train.setup import build_run

    run = build_run(load_config(config, [f"--config.data.dir={data_dir}",
                                         "--config.data.source=tfds"]))
    gbs = int(run.cfg.data.global_batch_size)
    state, step = run.state, run.train_step
    it = make_pipeline(data_dir, "train", global_batch_size=gbs, seed=1, augment=False,
                       worker_count=0, process_index=0, process_count=1)
    batch = run.global_batch(next(it))
    t0 = time.perf_counter()
    state, metrics = step(state, batch)  # compile + first step
    jax.block_until_ready(metrics)
    t_compile = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {"examples_per_s": gbs / med, "step_s_median": med, "step_s_all": times,
            "global_batch_size": gbs, "steps": steps, "config": config,
            "compile_and_first_step_s": t_compile, "devices": jax.device_count(),
            "loss_finite": bool(np.isfinite(float(metrics["loss"])))}


def run(quick: bool = False) -> dict:
    from wristmir_jax.config import load_config

    cfg = load_config(DEFAULT_CONFIG)
    image_size, crop_size, max_len = _sizes(cfg)
    gbs = int(cfg.data.global_batch_size)
    n = 160 if quick else 480
    with tempfile.TemporaryDirectory(prefix="wristmir-bench-input-") as tmp:
        data_dir, t_build = build_bench_dataset(tmp, n, image_size, crop_size, max_len)
        pipe = measure_pipeline(data_dir, global_batch_size=gbs, worker_count=2,
                                warmup_batches=3 if quick else 8, batches=6 if quick else 48)
        out = {"dataset": {"examples": n, "image_size": image_size, "crop_size": crop_size,
                           "max_len": max_len, "build_s": t_build,
                           "build_examples_per_s": n / t_build},
               "pipeline": pipe, "target_ratio": TARGET_RATIO}
        try:
            train = measure_train_step(data_dir, steps=2 if quick else 5)
        except Exception as e:  # the trainer is another stage; report rather than hide
            out["train_step"] = None
            out["train_step_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            out["ratio"] = None
            out["meets_target"] = None
            return out
    out["train_step"] = train
    out["ratio"] = pipe["examples_per_s"] / train["examples_per_s"]
    out["meets_target"] = bool(out["ratio"] >= TARGET_RATIO)
    return out
