"""Where a jitted step's time goes on XLA:CPU: a jax.profiler trace with XLA's per-operation
TraceMe events (`--xla_cpu_enable_xprof_traceme=true`, set by `cpu_profile_flags()` before JAX
starts its backend), summed per operation name and grouped by kind.

Kinds (from XLA's thunk names): "matmul" (dot, ynn/xnn/onednn fusions: the library-backed
matmuls), "convolution", "collective" (all-reduce, all-gather, reduce-scatter, all-to-all,
collective-permute, and the rendezvous waiting for the other devices), "copy/transpose",
"fusion" (XLA-emitted elementwise and reduction loops), "other".
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

TRACEME_FLAG = "--xla_cpu_enable_xprof_traceme=true"
_KINDS = (
    ("collective", re.compile(r"all-reduce|all-gather|reduce-scatter|all-to-all|"
                              r"collective-permute|rendezvous", re.I)),
    ("matmul", re.compile(r"^(dot|ynn|xnn|onednn|__onednn|custom-call.*matmul)", re.I)),
    ("convolution", re.compile(r"^convolution", re.I)),
    ("copy/transpose", re.compile(r"^(copy|transpose)", re.I)),
    ("fusion", re.compile(r"fusion|^(reduce|add|multiply|exponential|select|broadcast|"
                          r"dynamic|slice|concatenate|pad|gather|scatter|iota|compare|convert)",
                          re.I)),
)
# Runtime bookkeeping around the operations, not operations themselves.
_RUNTIME = re.compile(r"^(\$|PjitFunction|CommonPjRt|Wait|Mutex|ThunkExecutor|Threadpool|"
                      r"Handle |Allocate|Parse|PythonRef|InvokeRendezvous|end: |\[\d+\])")


def cpu_profile_flags(flags: str = "") -> str:
    """XLA_FLAGS text with the per-operation TraceMe events on (add before importing jax's
    backend, e.g. in a subprocess environment)."""
    return f"{flags} {TRACEME_FLAG}".strip() if TRACEME_FLAG not in flags else flags


def kind_of(name: str) -> str:
    for kind, pattern in _KINDS:
        if pattern.search(name):
            return kind
    return "other"


def _events(trace_dir: str) -> list[dict]:
    paths = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not paths:
        return []
    with gzip.open(sorted(paths)[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def summarize(events: list[dict], steps: int, wall_s: float) -> dict:
    """Per-operation milliseconds per step (summed over threads: on a multi-threaded CPU the
    per-op sum can exceed the wall time), shares of the summed op time, and per-kind totals."""
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("ph") != "X" or _RUNTIME.match(str(e.get("name", ""))):
            continue
        per_op[e["name"]] = per_op.get(e["name"], 0.0) + float(e.get("dur", 0.0)) / 1e3
    total = sum(per_op.values()) or 1.0
    kinds: dict[str, float] = {}
    for name, ms in per_op.items():
        kinds[kind_of(name)] = kinds.get(kind_of(name), 0.0) + ms
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:25]
    return {"steps": steps, "wall_ms_per_step": 1e3 * wall_s / max(steps, 1),
            "op_ms_per_step": total / max(steps, 1),
            "by_kind": {k: {"ms_per_step": v / max(steps, 1), "share": v / total}
                        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"name": n, "kind": kind_of(n), "ms_per_step": ms / max(steps, 1),
                         "share": ms / total} for n, ms in top]}


def profile_step(step, state, batch, steps: int = 2, trace_dir: str | None = None):
    """Runs `state, m = step(state, batch)` `steps` times under the profiler. Returns (state,
    summary). The per-op events exist only if XLA_FLAGS carried TRACEME_FLAG at startup
    (summary["per_op_events"] says whether they did)."""
    own = trace_dir is None
    trace_dir = trace_dir or tempfile.mkdtemp(prefix="wristmir-trace-")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    try:
        for _ in range(steps):
            state, m = step(state, batch)
            jax.block_until_ready(m)
    finally:
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
    summary = summarize(_events(trace_dir), steps, wall)
    summary["per_op_events"] = TRACEME_FLAG in os.environ.get("XLA_FLAGS", "")
    if own:
        import shutil

        shutil.rmtree(trace_dir, ignore_errors=True)
    return state, summary
