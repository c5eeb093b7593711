"""`wristmir bench --suite scaling [--config configs/X.py[:variant]] [--batch N] [--steps N]`:
the trainer's step (bench/train.prepare) on 1, 2, 4 and 8 simulated XLA:CPU devices, one
subprocess per device count (`--xla_force_host_platform_device_count`), data parallel over all
devices with a fixed per-device batch (`--batch`, default 4; weak scaling).

Per device count: examples/s, per-device examples/s, step time, and the fraction of the summed
operation time spent in collectives (all-reduce etc., including waiting for the other devices'
arrival), from XLA's per-operation profile events (bench/profile.py).

On CPU the simulated devices share the same cores: the figures show the overheads of sharding
and collectives, not speedups (the output says so in "note").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEVICE_COUNTS = (1, 2, 4, 8)
NOTE = ("simulated CPU devices share the same cores, so this shows the overheads of sharding "
        "and collectives (per-device throughput falls as devices are added), not speedups")


def _worker(config: str | None, devices: int, per_device: int, steps: int) -> dict:
    import jax
    import numpy as np

    from wristmir_jax.bench import train as train_bench
    from wristmir_jax.bench.profile import profile_step
    from wristmir_jax.train.mesh import make_mesh

    if jax.device_count() != devices:
        raise RuntimeError(f"expected {devices} devices, JAX sees {jax.device_count()}")
    gbs = per_device * devices
    cfg = train_bench.load_bench_config(config, gbs, overrides=(
        "--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1"))
    mesh = make_mesh(cfg.mesh)
    compiled, state, gen, _, compile_s, first = train_bench.prepare(cfg, mesh)
    state, m = compiled(state, first)
    jax.block_until_ready(m)
    import time

    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, first)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    state, prof = profile_step(compiled, state, first, steps=2)
    step_s = float(np.median(times))
    coll = prof["by_kind"].get("collective", {"share": 0.0, "ms_per_step": 0.0})
    return {"devices": devices, "global_batch_size": gbs, "per_device_batch": per_device,
            "compile_s": compile_s, "step_s": step_s, "step_s_all": times,
            "examples_per_s": gbs / step_s, "per_device_examples_per_s": gbs / step_s / devices,
            "collective_share": coll["share"], "collective_ms_per_step": coll["ms_per_step"],
            "op_profile_by_kind": prof["by_kind"], "per_op_events": prof["per_op_events"]}


def _spawn(config, devices: int, per_device: int, steps: int, timeout_s: float) -> dict:
    from wristmir_jax.bench.profile import cpu_profile_flags

    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                     if not f.startswith("--xla_force_host_platform_device_count"))
    env["XLA_FLAGS"] = cpu_profile_flags(
        f"{flags} --xla_force_host_platform_device_count={devices}")
    env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "wristmir_jax.bench.scaling", "--worker", str(devices),
           "--per-device", str(per_device), "--steps", str(steps)]
    if config:
        cmd += ["--config", config]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SCALING ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"scaling worker ({devices} devices) failed: {' | '.join(tail)}")
    return json.loads(lines[-1][len("SCALING "):])


def run(quick: bool = False, config: str | None = None, batch: int | None = None,
        steps: int | None = None) -> dict:
    config = config or ("configs/tiny.py" if quick else "configs/cpu_demo.py")
    per_device = int(batch or (2 if quick else 4))
    steps = int(steps or (2 if quick else 3))
    rows = [_spawn(config, n, per_device, steps, timeout_s=1800) for n in DEVICE_COUNTS]
    base = rows[0]["per_device_examples_per_s"]
    for r in rows:
        r["per_device_efficiency"] = r["per_device_examples_per_s"] / base
    return {"config": config, "per_device_batch": per_device, "steps": steps,
            "device_counts": list(DEVICE_COUNTS), "by_devices": rows, "note": NOTE}


def plot(result: dict) -> list[dict]:
    from wristmir_jax.bench.plots import panel

    rows = result["by_devices"]
    g = [str(r["devices"]) for r in rows]
    return [panel("scaling: per-device examples/s (simulated CPU devices)", "examples / s / device",
                  g, {"ours (JAX)": [r["per_device_examples_per_s"] for r in rows]},
                  note="x: devices. " + "CPU: shows overheads, not speedups"),
            panel("scaling: share of op time in collectives", "share", g,
                  {"ours (JAX)": [r["collective_share"] for r in rows]})]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one scaling worker (used by the scaling suite)")
    ap.add_argument("--worker", type=int, required=True, help="device count")
    ap.add_argument("--per-device", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--config", default=None)
    a = ap.parse_args(argv)
    out = _worker(a.config, a.worker, a.per_device, a.steps)
    print("SCALING " + json.dumps(out, default=float), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
