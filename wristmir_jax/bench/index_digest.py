"""`wristmir bench --suite index-digest`: what the index content check costs. Writes a
1,000,000-item index (--quick: 100,000) of 256-d float16 embeddings (the pod preset's size; no
ScaNN folder, whose few files hash the same way) and times, in this one run:

  load_no_verify_s   load_index without the content check (headers, shapes, sizes: the baseline)
  verify_uncached_s  streamed SHA-256 of every file (the first load after a copy or a rewrite;
                     file pages may sit in the OS page cache since they were just written)
  load_cached_s      load_index when .verified.json matches every file's (inode, size, mtime, ctime)
  hash_gb_per_s      bytes hashed / verify_uncached_s
and their ratios. Targets: a cached load within 1.5x of the unverified one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

from wristmir_jax.retrieval import store
from wristmir_jax.schema import NUM_REGIONS, RECORD_LEN

D = 256


def _arrays(n: int, d: int) -> store.IndexArrays:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((4096, d)).astype(np.float16)
    g = np.resize(block, (n, d))  # the hash reads every byte whatever the values
    r = np.resize(block, (n, NUM_REGIONS, d))
    ids = np.char.add("id", np.arange(n).astype(str))
    return store.IndexArrays(
        global_img=g, region_img=r, crop_mask=np.ones((n, NUM_REGIONS), np.float32),
        global_txt=g, region_txt=r, ids=ids, patients=np.char.add("p", (np.arange(n) // 3).astype(str)),
        records=np.zeros((n, RECORD_LEN), np.int32), boxes=np.zeros((n, NUM_REGIONS, 4), np.float32),
        images=ids)


def run(quick: bool = False) -> dict:
    n = 100_000 if quick else 1_000_000
    tmp = tempfile.mkdtemp(prefix="wristmir_bench_digest_")
    try:
        out = os.path.join(tmp, "idx")
        t0 = time.perf_counter()
        fp = store.write_index(out, _arrays(n, D), model={"params_sha256": "0" * 64}, config=None,
                               split="bench", build_scann=False)
        write_s = time.perf_counter() - t0
        total = store.index_bytes(out, tuple(fp["files"]))
        t0 = time.perf_counter()
        store.load_index(out, verify=False)
        base = time.perf_counter() - t0
        os.remove(os.path.join(out, store.VERIFIED_CACHE))
        t0 = time.perf_counter()
        st = store.verify_digests(out, fp)
        uncached = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.load_index(out)
        cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        st2 = store.verify_digests(out, fp)
        cached_check = time.perf_counter() - t0
        return {"items": n, "dim": D, "dtype": "float16", "index_bytes": total,
                "write_with_digests_s": round(write_s, 3), "load_no_verify_s": round(base, 4),
                "verify_uncached_s": round(uncached, 3), "files_hashed": st["hashed"],
                "hash_gb_per_s": round(st["bytes"] / uncached / 1e9, 3),
                "load_cached_s": round(cached, 4), "verify_cached_s": round(cached_check, 5),
                "files_cached": st2["cached"],
                "cached_load_over_unverified": round(cached / max(base, 1e-9), 3),
                "uncached_over_cached_check": round(uncached / max(cached_check, 1e-9), 1)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
