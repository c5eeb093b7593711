"""`wristmir bench --suite train [--config configs/X.py[:variant]] [--batch N] [--steps N]`: the
trainer's own step for any config (default configs/cpu_demo.py) on in-memory synthetic data.

Reported: examples/s; the step time split into data wait (next batch from the source, text
features from the frozen-tower cache when the config has one, placement on the devices) and
compute (the jitted step until its metrics are ready); achieved FLOP/s with FLOPs counted
analytically per tower (models/flops.model_forward_flops: matmuls and convolutions, x3 for
forward + backward) and cross-checked against XLA's cost analysis of the same model compiled
unrolled (no scan, no remat: models/flops.flops_per_example); MFU against the dense matmul peak of
the model's compute dtype measured in the same run (best of 2048^3 and 4096^3, bench/peak.py);
compile time; XLA's memory analysis of the compiled step.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from wristmir_jax.bench import peak

DEFAULT_CONFIG = "configs/cpu_demo.py"


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_bench_config(config: str | None, batch: int | None = None, overrides=()):
    """The config with synthetic in-memory data in global order (no DATA_DIR needed) and the
    batch override; a relative path that does not exist is looked up under the repository."""
    from wristmir_jax.config import load_config
    from wristmir_jax.train.setup import resolve_config

    spec = config or DEFAULT_CONFIG
    path, sep, variant = spec.partition(":")
    if not os.path.exists(path) and os.path.exists(os.path.join(_repo_root(), path)):
        path = os.path.join(_repo_root(), path)
    ov = ["--config.data.source=synthetic", "--config.data.order=global", *overrides]
    if batch:
        ov.append(f"--config.data.global_batch_size={int(batch)}")
    cfg = load_config(path + (sep + variant if sep else ""), ov)
    return resolve_config(cfg)


def prepare(cfg, mesh):
    """(compiled step, state, device batch iterator, model, compile seconds, first device batch)
    from the shared setup (train/setup.build_run): the trainer's step, state and input path."""
    from wristmir_jax.train.inputs import SourceBatches
    from wristmir_jax.train.setup import build_run, data_sources

    r = build_run(cfg, mesh)
    src, _ = data_sources(r.cfg)
    it = SourceBatches(src, r.cfg.data.global_batch_size, seed=0)

    def batches():
        while True:
            yield r.global_batch(next(it))  # frozen-tower text features attached, placed

    gen = batches()
    first = next(gen)
    compiled = r.compile(first)
    return compiled, r.state, gen, r.model, r.compile_s, first


def memory_of(compiled) -> dict:
    mem = compiled.memory_analysis()
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
    return {k.replace("_size_in_bytes", "_bytes"): int(getattr(mem, k, 0) or 0) for k in keys}


def flop_counts(model, params, batch: dict) -> dict:
    """Per-example forward FLOPs: analytic per tower and XLA's cost analysis (unrolled)."""
    from wristmir_jax.models import flops as model_flops

    cached = "global_text_feat" in batch
    text_len = int(np.shape(batch["global_tokens"])[-1])
    analytic = model_flops.model_forward_flops(model, text_len=text_len, text_cached=cached)
    host = {k: v for k, v in batch.items() if k != "id"}
    xla = model_flops.flops_per_example(model, params, host, backward=True)
    return {"analytic_forward_per_example": analytic["total"],
            "analytic_per_tower": analytic,
            "xla_forward_per_example": xla["forward_flops"],
            "xla_train_per_example": xla["train_flops"],
            "xla_over_analytic_forward": xla["forward_flops"] / max(analytic["total"], 1.0),
            "params": xla["params"]}


def measure(cfg, steps: int, peak_sizes=peak.DEFAULT_SIZES, profile: bool = False) -> dict:
    from wristmir_jax.train.mesh import make_mesh

    mesh = make_mesh(cfg.mesh)
    compiled, state, gen, model, compile_s, first = prepare(cfg, mesh)
    gbs = int(cfg.data.global_batch_size)
    counts = flop_counts(model, state["params"], first)
    state, m = compiled(state, first)  # warm-up
    jax.block_until_ready(m)
    wait, compute = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        b = next(gen)
        jax.block_until_ready(b)
        t1 = time.perf_counter()
        state, m = compiled(state, b)
        jax.block_until_ready(m)
        t2 = time.perf_counter()
        wait.append(t1 - t0)
        compute.append(t2 - t1)
    out_profile = None
    if profile:
        from wristmir_jax.bench.profile import profile_step

        state, out_profile = profile_step(compiled, state, first, steps=2)
    dtype = str(cfg.model.dtype)
    mm = peak.matmul_peak(peak_sizes, dtype)
    c, w = float(np.median(compute)), float(np.median(wait))
    train_flops = 3.0 * counts["analytic_forward_per_example"] * gbs
    out = {"global_batch_size": gbs, "devices": int(mesh.size), "dtype": dtype,
           "steps": steps, "compile_s": compile_s,
           "step_s": c + w, "data_wait_s": w, "compute_s": c,
           "data_wait_s_all": wait, "compute_s_all": compute,
           "examples_per_s": gbs / (c + w), "examples_per_s_compute": gbs / c,
           "flops": counts, "train_flops_per_step_analytic": train_flops,
           "train_flops_per_step_xla": counts["xla_train_per_example"] * gbs,
           "achieved_flops_per_s": train_flops / c,
           "matmul_peak": mm, "mfu": train_flops / c / mm["flops_per_s"],
           "mfu_xla_flops": counts["xla_train_per_example"] * gbs / c / mm["flops_per_s"],
           "memory": memory_of(compiled), "loss_last": float(np.asarray(m["loss"]))}
    if out_profile is not None:
        out["profile"] = out_profile
    return out


def run(quick: bool = False, config: str | None = None, batch: int | None = None,
        steps: int | None = None, profile: bool = False) -> dict:
    cfg = load_bench_config(config, batch)
    out = measure(cfg, steps or (2 if quick else 10),
                  peak_sizes=(512, 1024) if quick else peak.DEFAULT_SIZES, profile=profile)
    out["config"] = config or DEFAULT_CONFIG
    out["mfu_basis"] = ("3 x analytic forward matmul/conv FLOPs per example (forward + backward) "
                        "over the compute time, against the best dense matmul of the model's "
                        "dtype measured in this run")
    return out


def plot(result: dict) -> list[dict]:
    from wristmir_jax.bench.plots import panel

    g = [f"{result['config']}\nbatch {result['global_batch_size']}"]
    return [panel("train: examples/s", "examples / s", g,
                  {"end to end": [result["examples_per_s"]],
                   "compute only": [result["examples_per_s_compute"]]}),
            panel("train: MFU", "MFU", g,
                  {"analytic FLOPs": [result["mfu"]], "XLA FLOPs": [result["mfu_xla_flops"]]})]
