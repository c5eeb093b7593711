"""Localizer throughput: jitted batched inference on canonical 256 px images (the issue's target
is >= 50 images/s on 2 CPU cores), the whole predict path from a decoded original image (with
and without the second-stage refiner of the ulnar styloid), the refiner alone on patches, and
one training step of each. Weights are freshly initialised: speed does not depend on their values.

Ratios (`inference_vs_target`) are measured inside this one run; nothing here asserts time.
CPU seconds are reported beside wall seconds because the dev machine is shared.
"""

from __future__ import annotations

import os
import time
from functools import partial

import numpy as np

TARGET_IMAGES_PER_S = 50.0


def _timeit(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, after one warm-up call."""
    fn()  # compile / warm up
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats


def _trainer_step(config: str, host_batch: dict, repeats: int) -> tuple[float, float]:
    """(wall, CPU) seconds of one compiled train step of configs/<config>.py's task."""
    import jax

    from wristmir_jax.config import load_config
    from wristmir_jax.train.setup import build_run

    cfg = load_config(config, [f"--config.data.global_batch_size={len(next(iter(host_batch.values())))}"])
    run = build_run(cfg)
    batch = run.global_batch(host_batch)
    run.compile(batch)
    holder = {"state": run.state}

    def once():
        holder["state"], m = run.train_step(holder["state"], batch)
        jax.block_until_ready(m["loss"])

    return _timeit(once, max(1, repeats // 2))


def run(quick: bool = False) -> dict:
    import jax

    from wristmir_jax.localize.localizer import (Localizer, LocalizerConfig, init_params,
                                                predict_prepared)
    from wristmir_jax.localize.refiner import Refiner, RefinerConfig
    from wristmir_jax.localize.refiner import init_params as refiner_init

    size = 256
    batch = 32
    repeats = 3 if quick else 10
    cfg = LocalizerConfig(image_size=size)
    params = init_params(cfg, 0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size), dtype=np.float32)

    fwd = jax.jit(partial(predict_prepared, cfg))
    t_batch, cpu_batch = _timeit(lambda: jax.block_until_ready(fwd(params, x)), repeats)
    ips = batch / t_batch

    # End to end from decoded original images (normalise + flip + resize + infer + map back).
    originals = [rng.random((512, 512), dtype=np.float32) for _ in range(batch)]
    loc = Localizer(cfg, params, batch_size=batch)
    t_e2e, _ = _timeit(lambda: loc.predict(originals, ["left"] * batch), max(1, repeats // 2))

    # The refiner: jitted batches of 64 x 64 patches, and the predict path with it.
    rcfg = RefinerConfig()
    rparams = refiner_init(rcfg, 0)
    refiner = Refiner(rcfg, rparams, batch_size=64)
    p = rcfg.patch_size
    patches = rng.random((64, p, p), dtype=np.float32)
    region = np.zeros((64,), np.int32)
    s1 = np.tile(np.array([100, 100, 126, 136], np.float32), (64, 1))
    sq = np.tile(np.array([59, 64, 108], np.float32), (64, 1))
    t_ref, cpu_ref = _timeit(lambda: refiner.refine_patches(patches, region, s1, sq), repeats)
    loc_ref = Localizer(cfg, params, batch_size=batch, refiner=refiner)
    t_e2e_ref, _ = _timeit(lambda: loc_ref.predict(originals, ["left"] * batch), max(1, repeats // 2))

    # One training step of each stage (batch 32, the configs' default) through the shared
    # trainer's compiled step (train/setup.build_run): how many fit in the training budget.
    imgs = (x * 255).astype(np.uint8)
    boxes = np.tile(np.array([[40, 60, 100, 140], [120, 70, 160, 140], [140, 50, 156, 66]],
                             np.float32), (batch, 1, 1))
    t_step, cpu_step = _trainer_step("localizer", {"image": imgs, "boxes": boxes,
                                                    "has_box": np.ones((batch, 3), np.float32)},
                                     repeats)
    rgold = np.tile(np.array([21, 21, 43, 43], np.float32), (32, 1))
    t_rstep, cpu_rstep = _trainer_step("refiner", {"patch": patches[:32], "region": region[:32],
                                                   "gold": rgold}, repeats)
    return {
        "image_size": size, "batch_size": batch,
        "inference_images_per_s": round(ips, 1),
        "inference_vs_target": round(ips / TARGET_IMAGES_PER_S, 3),
        # On a shared machine wall time includes waiting for the CPU; CPU seconds do not.
        # (images per CPU-second) x 2 cores is what two idle cores would reach at best.
        "inference_images_per_cpu_s": round(batch / cpu_batch, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_images_per_s": TARGET_IMAGES_PER_S,
        "end_to_end_images_per_s_from_512px": round(batch / t_e2e, 1),
        "end_to_end_images_per_s_from_512px_with_refiner": round(batch / t_e2e_ref, 1),
        "refiner_patches_per_s_batch64": round(64 / t_ref, 1),
        "refiner_patches_per_cpu_s": round(64 / cpu_ref, 1),
        "refiner_train_step_s_batch32": round(t_rstep, 4),
        "refiner_train_step_cpu_s_batch32": round(cpu_rstep, 4),
        "train_step_s_batch32": round(t_step, 3),
        "train_steps_in_10_min": int(600 / t_step),
        "train_step_cpu_s_batch32": round(cpu_step, 3),
        "devices": [str(d) for d in jax.devices()][:1],
    }
