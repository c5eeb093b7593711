"""`wristmir bench --suite search`: ScaNN against the jitted exact search on clustered synthetic
vectors (a normalised Gaussian mixture, one cluster per 1000 vectors), 1,000,000 x 256 (--quick: 100,000).

Reports, all measured in this one run: ScaNN recall@10 against exact search; queries/s of ScaNN
(single-threaded batched and `search_batched_parallel`) and of the jitted exact search, and their
ratio (target >= 25x); the exact search's FLOP/s against a dense jitted matmul peak; ScaNN build
time; searcher bytes per vector (target <= 400 with recall@10 >= 0.95, int8 reordering).
`coarse_union`: one query at a time through retrieval.coarse.CoarseSearcher, the coarse stage of a
bone-conditioned query before (global searcher only) and now (global + that bone's region
searcher, a second ScaNN over another mixture of the same size, candidates merged by
union_candidates), p50 in ms at coarse_k = 200 and k = 10, and their ratio (target p50 <= 5 ms).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

D = 256


def mixture(n: int, d: int, centers: np.ndarray, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
    """n points of a Gaussian mixture around unit-norm `centers`, L2-normalised. Each cluster has
    its own spread: the noise norm is 0.5-1.0 of the centre's, so clusters overlap partly (as
    embeddings of similar cases do) without collapsing into uniform noise on the sphere."""
    k = centers.shape[0]
    spread = np.random.default_rng(1234).uniform(0.5, 1.0, k).astype(np.float32) / np.sqrt(d)
    out = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        c = rng.integers(0, k, m)
        x = centers[c] + spread[c, None] * rng.standard_normal((m, d), dtype=np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def make_data(n: int, n_queries: int, seed: int = 0, d: int = D):
    rng = np.random.default_rng(seed)
    n_centers = max(16, n // 1000)
    centers = rng.standard_normal((n_centers, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    return mixture(n, d, centers, rng), mixture(n_queries, d, centers, rng)


def matmul_peak_flops(reps: int = 5) -> float:
    """Best FLOP/s of a jitted 2048x2048 @ 2048x2048 float32 matmul."""
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32))
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best


def timed(fn, reps: int = 3) -> float:
    """Best wall time over reps (after the caller's warm-up)."""
    best = np.inf
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def recall_at(got: np.ndarray, ref: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k].tolist()) & set(b[:k].tolist())) / k for a, b in zip(got, ref)]))


def run(quick: bool = False) -> dict:
    from wristmir_jax.retrieval import coarse
    from wristmir_jax.retrieval.exact import ExactSearcher

    n = 100_000 if quick else 1_000_000
    n_q = 1000 if quick else 2000
    k = 10
    t = time.perf_counter()
    db, q = make_data(n, n_q)
    gen_s = time.perf_counter() - t

    # exact: jitted, chunked; warm-up compiles the query-batch shape
    exact = ExactSearcher(db)
    qb = 500
    exact.search(q[:qb], k, query_batch=qb)
    t = time.perf_counter()
    _, ref = exact.search(q, k, query_batch=qb)
    ex_s = time.perf_counter() - t
    exact_qps = n_q / ex_s
    exact_flops = 2.0 * n * D * n_q / ex_s
    peak = matmul_peak_flops()

    params = coarse.params_for_size(n, D)
    searcher, build_s = coarse.build_scann(db, params)
    tmp = tempfile.mkdtemp(prefix="wristmir-bench-scann-")
    try:
        coarse.save_scann(searcher, tmp)
        files = {f: os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)}
        searcher = coarse.load_scann(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    searcher.search_batched(q[:100], final_num_neighbors=k)
    single_s = timed(lambda: searcher.search_batched(q, final_num_neighbors=k))
    par_s = timed(lambda: searcher.search_batched_parallel(q, final_num_neighbors=k))
    got, _ = searcher.search_batched_parallel(q, final_num_neighbors=k)
    rec = recall_at(np.asarray(got), ref, k)
    # one query at a time (the interactive path)
    lat = []
    for i in range(200):
        t = time.perf_counter()
        searcher.search(q[i], final_num_neighbors=k)
        lat.append(time.perf_counter() - t)
    total_bytes = sum(files.values())
    scann_qps = n_q / par_s
    return {
        "n": n, "dim": D, "queries": n_q, "k": k, "data": f"Gaussian mixture, {max(16, n // 1000)} clusters, L2-normalised",
        "generate_s": round(gen_s, 2),
        "scann_params": params.__dict__, "scann_build_s": round(build_s, 2),
        "scann_recall_at_10": round(rec, 4),
        "scann_qps_parallel": round(scann_qps, 1), "scann_qps_single_thread": round(n_q / single_s, 1),
        "scann_single_query_p50_ms": round(1e3 * float(np.median(lat)), 3),
        "exact_qps": round(exact_qps, 1),
        "speedup_scann_vs_exact": round(scann_qps / exact_qps, 2),
        "exact_flops": exact_flops, "matmul_peak_flops": peak,
        "exact_fraction_of_peak": round(exact_flops / peak, 3),
        "searcher_bytes": total_bytes, "searcher_files": files,
        "bytes_per_vector": round(total_bytes / n, 1),
        "targets": {"recall_at_10>=0.95": rec >= 0.95, "speedup>=25": scann_qps / exact_qps >= 25,
                    "bytes_per_vector<=400": total_bytes / n <= 400},
        "coarse_union": _coarse_union(db, q, params, n, seed=1),
        "load": _load(),
    }


def _coarse_union(db: np.ndarray, q: np.ndarray, params, n: int, seed: int, reps: int = 200) -> dict:
    from wristmir_jax.retrieval import coarse

    region_db, region_q = make_data(n, q.shape[0], seed=seed)
    g_searcher, _ = coarse.build_scann(db, params)
    r_searcher, r_build = coarse.build_scann(region_db, params)
    cs_g = coarse.CoarseSearcher(db, scann_searcher=g_searcher, params=params)
    cs_r = coarse.CoarseSearcher(region_db, scann_searcher=r_searcher, params=params)
    out = {"region_build_s": round(r_build, 2)}
    for kc in (200, 10):
        before, after = [], []
        for i in range(reps + 10):
            t = time.perf_counter()
            _, cand = cs_g.search(q[i:i + 1], kc)
            t1 = time.perf_counter()
            _, rc = cs_r.search(region_q[i:i + 1], kc)
            coarse.union_candidates(cand, rc)
            t2 = time.perf_counter()
            if i >= 10:  # warm-up
                before.append(t1 - t)
                after.append(t2 - t)
        b, a = 1e3 * float(np.median(before)), 1e3 * float(np.median(after))
        out[f"k{kc}"] = {"global_only_p50_ms": round(b, 3), "global_plus_region_p50_ms": round(a, 3),
                         "ratio": round(a / b, 2), "p50<=5ms": a <= 5.0}
    return out


def _load() -> str:
    try:
        return "loadavg " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
