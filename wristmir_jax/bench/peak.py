"""The machine's dense matmul peak, measured in the same run as the figure it normalises (MFU):
the best FLOP/s of jitted n x n x n matmuls of the model's compute dtype, n = 2048 and 4096 by
default (smaller matmuls understate a CPU: 107 GFLOP/s at 512^3 vs 147 at 4096^3 on one VM)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_SIZES = (2048, 4096)


def _best_seconds(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(sizes=DEFAULT_SIZES, dtype: str = "float32", reps: int = 3) -> dict:
    """{"flops_per_s": best over sizes, "dtype", "by_size": {n: FLOP/s}} for XLA on the default
    backend."""
    by_size = {}
    f = jax.jit(lambda x, y: x @ y)
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
        f(a, a).block_until_ready()
        s = _best_seconds(lambda: f(a, a).block_until_ready(), reps)
        by_size[str(n)] = 2.0 * n ** 3 / s
        del a
    return {"flops_per_s": max(by_size.values()), "dtype": dtype, "by_size": by_size}


def torch_matmul_peak(sizes=DEFAULT_SIZES, reps: int = 3) -> dict:
    """The same for PyTorch fp32 on CPU (a reference: both frameworks' BLAS on this CPU)."""
    import torch  # heavy optional dependency (the `bench` extra)

    by_size = {}
    for n in sizes:
        a = torch.randn(n, n)
        a @ a
        by_size[str(n)] = 2.0 * n ** 3 / _best_seconds(lambda: a @ a, reps)
    return {"flops_per_s": max(by_size.values()), "dtype": "float32", "by_size": by_size}
