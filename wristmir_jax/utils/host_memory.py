"""Host memory for XLA:CPU (and PyTorch CPU) steps: glibc malloc settings that keep freed memory
for the next step instead of returning it to the kernel.

XLA:CPU allocates an executable's temporaries as one buffer per run (3.2 GB for the clip-parity
train step at batch 32) and frees it when the run ends. glibc serves a request that large with a
fresh mmap (from a worker thread's arena it has no other choice) and unmaps it on free, so every
step faults in and zeroes every page of the buffer again: on a 2-core VM that was ~780k page
faults and ~2 s of kernel time per 4 s step. One arena, no mmap and no trimming let each step
reuse the pages of the last (`wristmir bench --suite clip-parity` records the faults per step).

The cost: resident memory does not shrink after a peak, and can settle at up to two temporaries'
size when a small allocation splits the freed block (measured: 4.1 then 7.0 GiB, flat over the
following 28 steps). `WRISTMIR_MALLOC=system` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_APPLIED: dict | None = None


def keep_freed_memory(environ=os.environ) -> dict:
    """Applies the settings above once per process (glibc on Linux only) and returns what was
    done: {"applied": bool, "reason" or "settings"}. Call before JAX or PyTorch start threads:
    threads that already own an arena keep it."""
    global _APPLIED
    if _APPLIED is not None:
        return _APPLIED
    if environ.get("WRISTMIR_MALLOC", "").lower() == "system":
        _APPLIED = {"applied": False, "reason": "WRISTMIR_MALLOC=system"}
        return _APPLIED
    if not sys.platform.startswith("linux"):
        _APPLIED = {"applied": False, "reason": f"not glibc ({sys.platform})"}
        return _APPLIED
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _APPLIED = {"applied": False, "reason": "no glibc mallopt"}
        return _APPLIED
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; trim threshold -1 disables trimming (mallopt(3)).
    ok = all(mallopt(p, v) == 1 for p, v in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0),
                                             (_M_TRIM_THRESHOLD, -1)))
    _APPLIED = {"applied": ok, "settings": {"arena_max": 1, "mmap_max": 0, "trim_threshold": -1}}
    if not ok:
        _APPLIED["reason"] = "mallopt refused a setting"
    return _APPLIED
