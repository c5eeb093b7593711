"""`wristmir bench --suite train`: throughput of the default (cpu_demo) train step and its model
FLOP utilisation against a dense fp32 matmul peak measured in the same run.

FLOPs per step come from XLA's cost analysis of the compiled step (forward + backward +
optimizer, as compiled; models.flops.flops_per_example is used for the forward pass when that
module exists). Inputs are in-memory synthetic batches placed on the devices before timing, so
the figure is the step alone; the data pipeline has its own suite (`input`).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def _matmul_peak(n: int, reps: int) -> float:
    """Best FLOP/s of an n x n fp32 matmul (the CPU's practical dense peak here)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best


def _flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends do not report costs
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    if not ca:
        return None
    v = ca.get("flops")
    return float(v) if v is not None and v > 0 else None


def run(quick: bool = False) -> dict:
    from wristmir_jax.config import load_config
    from wristmir_jax.train.inputs import SourceBatches
    from wristmir_jax.train.setup import build_run, data_sources

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    cfg = load_config(os.path.join(root, "configs", "cpu_demo.py"),
                      ["--config.data.source=synthetic", "--config.data.order=global"])
    steps = 3 if quick else 10
    r = build_run(cfg)
    mesh, cfg, model, state = r.mesh, r.cfg, r.model, r.state
    src, _ = data_sources(cfg)
    it = SourceBatches(src, cfg.data.global_batch_size, seed=0)
    batches = [r.global_batch(next(it)) for _ in range(2)]
    compiled = r.compile(batches[0])
    compile_s, mem = r.compile_s, r.memory
    state, m = compiled(state, batches[0])  # warm-up
    jax.block_until_ready(m)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, batches[i % 2])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    gbs = int(cfg.data.global_batch_size)
    flops = _flops(compiled)
    fwd_flops_per_example = None
    try:
        from wristmir_jax.models import flops as model_flops

        fwd_flops_per_example = float(model_flops.flops_per_example(model, params=state["params"]))
    except Exception:  # module absent or a different signature: cost analysis alone
        fwd_flops_per_example = None
    peak = _matmul_peak(512 if quick else 1024, 3 if quick else 5)
    out = {
        "config": "cpu_demo (synthetic batches)",
        "global_batch_size": gbs,
        "devices": mesh.size,
        "compile_s": round(compile_s, 2),
        "step_s_median": step_s,
        "examples_per_s": gbs / step_s,
        "step_flops_xla": flops,
        "matmul_peak_flops_per_s": peak,
        "mfu_vs_matmul_peak": (flops / step_s / peak) if flops else None,
        "temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0) or 0),
        "argument_bytes": int(getattr(mem, "argument_size_in_bytes", 0) or 0),
        "loss_last": float(np.asarray(m["loss"])),
    }
    if fwd_flops_per_example:
        # forward + backward ~ 3x forward
        out["model_flops_per_step"] = 3.0 * fwd_flops_per_example * gbs
        out["mfu_model_flops"] = out["model_flops_per_step"] / step_s / peak
    return out
