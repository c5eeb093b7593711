"""Ahead-of-time compilation of the real train step for a TPU topology this machine does not have
(MaxText's train_compile, for this trainer): does a config fit the chips' HBM, how many FLOPs is
a step, how long does XLA take to compile it.

`compile_for_topology(cfg, "v5e:16x16")` takes compile-only devices from libtpu
(`jax.experimental.topologies.get_topology_desc`; the `tpu` extra installs it, and it works on a
CPU-only host), builds the mesh from `cfg.mesh` over them, runs the trainer's own setup
(`train/setup.build_run`) abstractly (`jax.eval_shape`: nothing is allocated) so the step,
optimizer, state shardings and objective are exactly those `wristmir train` uses, and compiles
that step (`Run.compile`) for `ShapeDtypeStruct` inputs with the config's shardings. A second compile of the same step with
scanned layers unrolled and remat off gives the model FLOPs (XLA's cost analysis counts a
scanned layer's body once; recomputation is not useful work); when that program does not fit
the chip (the TPU compiler refuses it), three compiles at B/16, B/8, B/4 are extrapolated
exactly along the step's FLOPs polynomial in the batch. `markdown_table` renders reports as
the paper-scale table (`wristmir aot --table a.json ...`).

Per-chip memory is XLA's `memory_analysis()`: arguments + outputs - aliased (the donated state)
+ temporaries + generated code.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.train import setup
from wristmir_jax.train.checkpoint import abstract_like
from wristmir_jax.train.mesh import BATCH_AXES, make_mesh
from wristmir_jax.train.state import batch_shardings, task_module

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    """Published per-chip figures (Google Cloud TPU documentation)."""

    name: str
    hbm_bytes: int
    bf16_flops: float          # peak dense bf16 FLOP/s per chip


CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12),
}
_TOPOLOGY = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+){1,2})$")


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """'v5e:16x16' -> ('v5e', (16, 16)); UserError naming the choices otherwise."""
    m = _TOPOLOGY.match(name.strip())
    if not m or m.group(1) not in CHIPS:
        raise UserError(f"--topology {name!r}: unknown topology (use CHIP:AxB or CHIP:AxBxC with "
                        f"CHIP one of {', '.join(CHIPS)}, e.g. v5e:16x16 or v5p:4x4x8)")
    dims = tuple(int(d) for d in m.group(2).split("x"))
    if any(d < 1 for d in dims):
        raise UserError(f"--topology {name!r}: chip counts must be positive")
    return m.group(1), dims


def topology_devices(name: str, slices: int = 1) -> tuple[Chip, list, int]:
    """(chip, compile-only devices, chips) of `slices` slices of topology `name`."""
    chip_key, dims = parse_topology(name)
    if slices < 1:
        raise UserError(f"--slices must be >= 1, got {slices}")
    # A compile-only client needs no TPU; without this a second libtpu user on the host (another
    # process that imported JAX) would make the plugin refuse to load.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
    except ImportError as e:  # pragma: no cover - jax always ships it
        raise UserError(f"jax.experimental.topologies unavailable: {e}") from e
    kwargs = {"num_slices": slices} if slices > 1 else {}
    try:
        desc = topologies.get_topology_desc(name, "tpu", **kwargs)
    except Exception as e:  # libtpu missing or the topology rejected: one line for the user
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        hint = " (install the tpu extra: pip install -e '.[tpu]')" if "tpu" in first.lower() \
            and "plugin" in first.lower() else ""
        raise UserError(f"--topology {name!r}: libtpu could not describe it: {first}{hint}") from e
    return CHIPS[chip_key], list(desc.devices), math.prod(dims) * slices


def abstract_run(cfg: ml_collections.ConfigDict, mesh) -> setup.Run:
    """The trainer's Run (`train/setup.build_run`) for `cfg` on `mesh`, built under
    jax.eval_shape: nothing is allocated, so the mesh may be made of compile-only devices. Its
    state is left as ShapeDtypeStructs; step, shardings, objective and optimizer are the ones
    `wristmir train` uses."""
    box = {}

    def build():
        box["run"] = setup.build_run(cfg, mesh)
        return box["run"].state

    shapes = jax.eval_shape(build)
    run = box["run"]
    run.state = abstract_like(shapes, run.shardings)
    return run


def abstract_batch(cfg: ml_collections.ConfigDict, mesh) -> dict:
    """The global batch's ShapeDtypeStructs with the trainer's batch shardings."""
    one = task_module(cfg).init_batch(cfg, 1)
    gbs = int(cfg.data.global_batch_size)
    shapes = {k: jax.ShapeDtypeStruct((gbs,) + v.shape[1:], v.dtype) for k, v in one.items()}
    return abstract_like(shapes, batch_shardings(shapes, mesh))


def for_compile(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config as compiled: without a DATA_DIR the model's input sizes are the config's own
    (the data source becomes the in-memory one, which reads them from the config)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.data.source == "tfds" and not cfg.data.dir:
        cfg.data.source = "synthetic"
    return cfg


_BUFFER = re.compile(r"%?([\w.\-]+) = ((?:f32|bf16|f16|s32|u32|s8|u8|pred|s64|f64)\[[0-9,]*\])")
_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1,
          "s64": 8, "f64": 8}


def largest_buffers(hlo_text: str, top: int = 5) -> list[tuple[str, str, int]]:
    """(instruction, shape, bytes) of the largest arrays in a compiled per-device HLO text."""
    seen = {}
    for name, shape in _BUFFER.findall(hlo_text):
        dtype, dims = shape.split("[")
        n = math.prod(int(d) for d in dims.rstrip("]").split(",") if d)
        seen[name] = (shape, n * _BYTES[dtype])
    rows = sorted(((k, s, b) for k, (s, b) in seen.items()), key=lambda r: -r[2])
    return rows[:top]


def compile_step(cfg, mesh):
    """(abstract state, compiled train step, seconds to lower + compile) for cfg on mesh: the
    Run's own `compile` with the global batch's ShapeDtypeStructs."""
    run = abstract_run(cfg, mesh)
    compiled = run.compile(abstract_batch(run.cfg, mesh))
    return run.state, compiled, run.compile_s


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def largest_arguments(tree: Any, top: int = 5) -> list[dict]:
    """The largest per-device argument buffers (ShapeDtypeStructs with shardings) by key path."""
    rows = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shape = x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape
        nbytes = math.prod(shape) * np.dtype(x.dtype).itemsize
        rows.append({"name": jax.tree_util.keystr(path), "shape": f"{np.dtype(x.dtype).name}"
                     f"{list(shape)}", "bytes": int(nbytes)})
    return sorted(rows, key=lambda r: -r["bytes"])[:top]


_OOM = re.compile(r"HLO temporaries \(([\d.]+)G\)")


def compile_for_topology(cfg: ml_collections.ConfigDict, topology: str, slices: int = 1,
                         flops: bool = True) -> dict:
    """Compiles cfg's train step for `topology` and returns the per-chip report (a dict)."""
    chip, devices, chips = topology_devices(topology, slices)
    cfg = for_compile(cfg)
    mesh = make_mesh(cfg.mesh, devices=devices)
    run = abstract_run(cfg, mesh)
    batch = abstract_batch(run.cfg, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(run.state["params"]))
    per_chip_devices = max(1, len(devices) // chips)
    report = {
        "topology": topology, "slices": slices, "chip": chip.name, "chips": chips,
        "devices": len(devices), "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "global_batch_size": int(cfg.data.global_batch_size),
        "grad_accum": int(cfg.train.grad_accum), "remat": bool(cfg.model.remat),
        "scan_layers": bool(cfg.model.scan_layers), "dtype": str(cfg.model.dtype),
        "params": n_params, "train_steps": int(cfg.train.steps), "hbm_bytes": chip.hbm_bytes,
    }
    t0 = time.perf_counter()
    try:
        compiled = run.compile(batch)
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        # The TPU compiler refuses a program that cannot fit; it reports the temporaries only.
        msg = str(e).strip().splitlines()[0]
        m = _OOM.search(msg)
        args = sum(r["bytes"] for r in largest_arguments((run.state, batch), top=10 ** 9))
        temp = int(float(m.group(1)) * GIB) if m else 0
        report.update(argument_bytes=args, output_bytes=0, alias_bytes=0, temp_bytes=temp,
                      generated_code_bytes=0, per_chip_bytes=(args + temp) * per_chip_devices,
                      fits=False, compiler_error=msg, compile_s=round(time.perf_counter() - t0, 1),
                      largest_buffers=largest_arguments((run.state, batch)))
        return report
    mem = compiled.memory_analysis()
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    code = int(mem.generated_code_size_in_bytes)
    per_chip = (arg + out - alias + temp + code) * per_chip_devices
    report.update(argument_bytes=arg, output_bytes=out, alias_bytes=alias, temp_bytes=temp,
                  generated_code_bytes=code, per_chip_bytes=per_chip,
                  fits=per_chip <= chip.hbm_bytes, compile_s=round(run.compile_s, 1))
    if not report["fits"]:
        report["largest_buffers"] = [
            {"name": n, "shape": s, "bytes": b} for n, s, b in largest_buffers(compiled.as_text())]
    if flops:
        report.update(step_flops(cfg, mesh, chip, chips, compiled))
    return report


def _compile_flops(cfg, mesh) -> float:
    """FLOPs of one step over all devices from a compile of cfg's step (SPMD cost analysis is per
    device)."""
    _, compiled, _ = compile_step(cfg, mesh)
    return _flops(compiled) * mesh.size


def quadratic_through(points: list[tuple[float, float]], x: float) -> float:
    """The value at x of the polynomial e + a b + c b^2 through three (b, f) points: a step's
    FLOPs in its global batch b (optimizer: constant; towers: linear; the contrastive loss and
    the relevance of every pair: quadratic)."""
    bs = np.array([p[0] for p in points], dtype=np.float64)
    fs = np.array([p[1] for p in points], dtype=np.float64)
    coef = np.linalg.solve(np.vander(bs, 3, increasing=True), fs)
    return float(coef @ np.array([1.0, x, x * x]))


def _batch_shards(mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def step_flops(cfg, mesh, chip: Chip, chips: int, compiled) -> dict:
    """Model FLOPs of one step (all chips) from a compile of the same step with scanned layers
    unrolled and without remat (recomputation is not useful work; the definition of
    models/flops.py), and the step time and run length they imply at the chip's bf16 peak and
    at 40% MFU.

    An unrolled step without remat may not fit the chip (the TPU compiler then refuses it, and
    gives no cost analysis): its FLOPs are then those of three compiles at global batches B/16,
    B/8 and B/4, extrapolated exactly along the polynomial e + a b + c b^2 that a step's FLOPs
    follow in the batch b (`quadratic_through`)."""
    method = "compile"
    t0 = time.perf_counter()
    if cfg.model.scan_layers or cfg.model.remat:
        unrolled = ml_collections.ConfigDict(cfg.to_dict())
        unrolled.model.scan_layers = False
        unrolled.model.remat = False
        method = "unrolled compile"
        try:
            total = _compile_flops(unrolled, mesh)
        except jax.errors.JaxRuntimeError as e:
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            gbs, shards = int(cfg.data.global_batch_size), _batch_shards(mesh)
            points = []
            for k in (16, 8, 4):
                if gbs % (k * shards):
                    raise UserError(f"FLOPs: the unrolled step does not fit {chip.name} and the "
                                    f"global batch {gbs} is not divisible by {k} x {shards} "
                                    "shards (use --no-flops)") from e
                small = ml_collections.ConfigDict(unrolled.to_dict())
                small.data.global_batch_size = gbs // k
                points.append((gbs // k, _compile_flops(small, mesh)))
            total = quadratic_through(points, gbs)
            method = "unrolled compiles at B/16, B/8, B/4, quadratic in B"
    else:
        total = _flops(compiled) * mesh.size
    unrolled_s = time.perf_counter() - t0 if method != "compile" else 0.0
    peak = chip.bf16_flops * chips
    steps = int(cfg.train.steps)
    at_peak = total / peak if peak else float("nan")
    at_40 = at_peak / 0.4
    return {"flops_per_step": total, "flops_per_device": total / mesh.size,
            "flops_method": method, "bf16_flops_per_chip": chip.bf16_flops,
            "unrolled_compile_s": round(unrolled_s, 1),
            "step_s_at_peak": at_peak, "step_s_at_40pct_mfu": at_40,
            "days_at_peak": at_peak * steps / 86400.0, "days_at_40pct_mfu": at_40 * steps / 86400.0}


def format_report(r: dict) -> str:
    def gib(b):
        return f"{b / GIB:.2f} GiB" if b >= GIB / 100 else f"{b / 1024 ** 2:.2f} MiB"

    lines = [
        f"{r['topology']} x{r['slices']} ({r['chips']} x {r['chip']}, mesh {r['mesh']}), "
        f"global batch {r['global_batch_size']}, {r['params'] / 1e6:.1f}M params, "
        f"remat {r['remat']}",
        f"  per chip: arguments {gib(r['argument_bytes'])}, outputs {gib(r['output_bytes'])} "
        f"(aliased {gib(r['alias_bytes'])}), temp {gib(r['temp_bytes'])}, generated code "
        f"{gib(r['generated_code_bytes'])}",
        f"  total {gib(r['per_chip_bytes'])} of {gib(r['hbm_bytes'])} HBM: "
        + ("fits" if r["fits"] else "DOES NOT FIT"),
        f"  compile {r['compile_s']:.1f}s",
    ]
    if "flops_per_step" in r:
        lines.append(f"  FLOPs/step {r['flops_per_step']:.3e} (unrolled compile "
                     f"{r['unrolled_compile_s']:.1f}s); step {r['step_s_at_peak']:.3f}s at peak, "
                     f"{r['step_s_at_40pct_mfu']:.3f}s at 40% MFU; {r['train_steps']} steps = "
                     f"{r['days_at_peak']:.2f} / {r['days_at_40pct_mfu']:.2f} days")
    if "compiler_error" in r:
        lines.append(f"  compiler: {r['compiler_error']}")
    for b in r.get("largest_buffers", []):
        lines.append(f"  largest: {b['name']} {b['shape']} {gib(b['bytes'])}")
    return "\n".join(lines)


def load_reports(path: str) -> list[dict]:
    """The reports of one `wristmir aot --json` file (UserError naming the file otherwise)."""
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable `wristmir aot --json` file ({e})") from e
    if not isinstance(data, list) or not all(isinstance(r, dict) and "topology" in r
                                             and "per_chip_bytes" in r for r in data):
        raise UserError(f"{path}: expected the list of reports `wristmir aot --json` writes")
    return data


_REMAT = re.compile(r"^--config\.model\.remat=")


def _model_flops_key(overrides: tuple) -> tuple:
    """Overrides that change the model FLOPs (scanning layers does not: the FLOPs are counted
    unrolled)."""
    return tuple(o for o in overrides if not o.startswith("--config.model.scan_layers="))


def markdown_table(reports: list[dict]) -> str:
    """The paper-scale table: one row per (config, topology, slices, other overrides), with the
    per-chip memory of the remat and no-remat reports side by side and the FLOPs, step time and
    run length of whichever report counted FLOPs; the exact commands follow the table."""
    def gib(r):
        if r is None:
            return "-"
        return f"{r['per_chip_bytes'] / GIB:.2f} GiB ({'fits' if r['fits'] else 'DOES NOT FIT'})"

    rows: dict[tuple, dict] = {}
    for r in reports:
        others = tuple(o for o in r.get("overrides", []) if not _REMAT.match(o))
        key = (r.get("config", "?"), r["topology"], r["slices"], others)
        row = rows.setdefault(key, {"remat": None, "no_remat": None, "flops": None})
        row["remat" if r["remat"] else "no_remat"] = r
        if "flops_per_step" in r and (row["flops"] is None or r["remat"] is False):
            row["flops"] = r
    head = ("| # | config | topology | chips | mesh | global batch | params | FLOPs/step "
            "| per chip, remat | per chip, no remat | HBM/chip | step s (peak) | step s (40% MFU) "
            "| days (peak) | days (40% MFU) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    commands = []
    for i, ((config, topology, slices, others), row) in enumerate(rows.items(), 1):
        any_r = row["remat"] or row["no_remat"]
        f = row["flops"]
        name = config + ("".join(f" {o}" for o in others))
        mesh = " x ".join(f"{k} {v}" for k, v in any_r["mesh"].items() if v != 1) or "1"
        topo = topology + (f" x{slices}" if slices != 1 else "")
        note = ""
        if f is None:
            # the same program (config, overrides, global batch) on another topology: its model
            # FLOPs are this row's; the step time is this row's chips at their own peak
            same = [(j, r) for j, (k, r) in enumerate(rows.items(), 1) if r["flops"] is not None
                    and k[0] == config and _model_flops_key(k[3]) == _model_flops_key(others)
                    and r["flops"]["global_batch_size"]
                    == any_r["global_batch_size"]]
            chip = next((c for c in CHIPS.values() if c.name == any_r["chip"]), None)
            if same and chip is not None:
                j, other = same[0]
                peak = other["flops"]["flops_per_step"] / (any_r["chips"] * chip.bf16_flops)
                f = {"flops_per_step": other["flops"]["flops_per_step"], "step_s_at_peak": peak,
                     "step_s_at_40pct_mfu": peak / 0.4,
                     "days_at_peak": peak * any_r["train_steps"] / 86400.0,
                     "days_at_40pct_mfu": peak / 0.4 * any_r["train_steps"] / 86400.0}
                note = f" (row {j})"
        if f is not None:
            timing = (f"{f['flops_per_step']:.3e}{note} | ", f"{f['step_s_at_peak']:.3f} | "
                      f"{f['step_s_at_40pct_mfu']:.3f} | {f['days_at_peak']:.3f} | "
                      f"{f['days_at_40pct_mfu']:.3f} |")
        else:
            timing = ("- | ", "- | - | - | - |")
        lines.append(
            f"| {i} | `{name}` | {topo} | {any_r['chips']} x {any_r['chip']} | {mesh} | "
            f"{any_r['global_batch_size']:,} | {any_r['params'] / 1e6:.1f}M | {timing[0]}"
            f"{gib(row['remat'])} | {gib(row['no_remat'])} | {any_r['hbm_bytes'] / GIB:.0f} GiB | "
            f"{timing[1]}")
        for r in (row["remat"], row["no_remat"]):
            if r is not None:
                commands.append(f"- row {i}: `{r.get('command', '?')}`")
    steps = sorted({r["train_steps"] for r in reports})
    lines += ["", f"Days are for the config's train.steps ({', '.join(map(str, steps))}); step time "
              "= FLOPs per step / (chips x the chip's published bf16 peak), and / 0.4 at 40% MFU. "
              "Memory is XLA's per-chip memory_analysis (arguments + outputs - aliased + temp + "
              "generated code); for a step the TPU compiler refuses, arguments + the temporaries its "
              "error names (an early estimate: it stops before scheduling). FLOPs marked (row j) are row j's: the same program on another "
              "topology.", "", "Commands (add `--json FILE`):"] + commands
    return "\n".join(lines)
