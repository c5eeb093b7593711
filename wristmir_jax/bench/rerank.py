"""`wristmir bench --suite rerank`: the jitted region reranker against plain numpy
implementations of the same formula (256 queries x K=200 candidates x 3 regions, a quarter of the
queries conditioned on all bones and a quarter on each single bone; target >= 10x):

- end to end (gather from the database + scores + top-k): the jitted `rerank_needed_rows` (a batch
  of one condition reads only global + its bones; this mixed batch reads every row) vs a vectorised
  numpy one (fancy-index gather of every row and einsum) and a per-query numpy loop (gather +
  BLAS matvecs);
- the seam function `rerank(query, candidates, weights)` on candidates already gathered
  ([Q,K,3,D] in float32): jitted vs the same formula in numpy;

and the single-query two-stage latency (ScaNN coarse top-200 over 1,000,000 x 256 global
embeddings, then the jitted rerank; target p50 <= 5 ms; --quick: 100,000). The database is
float16 on device, as an index stores it.
"""

from __future__ import annotations

import os
import time

import numpy as np

D = 256
K = 200
Q = 256


def rerank_numpy(q_g, q_r, q_m, db_g, db_r, db_m, cand, alpha, w, k):
    """The reranker formula (retrieval/rerank.py) in plain numpy; returns (scores, idx) top-k."""
    cg = db_g[cand].astype(np.float32)            # [Q,K,D]
    cr = db_r[cand].astype(np.float32)            # [Q,K,3,D]
    cm = db_m[cand]                               # [Q,K,3]
    g = np.einsum("qd,qkd->qk", q_g, cg)
    s = np.einsum("qrd,qkrd->qkr", q_r, cr)
    we = w[:, None, :] * q_m[:, None, :] * cm
    den = alpha[:, None] + we.sum(-1)
    score = np.where(den > 0, (alpha[:, None] * g + (we * s).sum(-1)) / np.where(den > 0, den, 1), g)
    pos = np.argsort(-score, axis=1)[:, :k]
    return np.take_along_axis(score, pos, 1), np.take_along_axis(cand, pos, 1)


def rerank_numpy_loop(q_g, q_r, q_m, db_g, db_r, db_m, cand, alpha, w, k):
    """The same formula one query at a time (BLAS matvecs per query)."""
    out_s = np.empty((cand.shape[0], k), np.float32)
    out_i = np.empty((cand.shape[0], k), cand.dtype)
    for a in range(cand.shape[0]):
        c = cand[a]
        g = db_g[c].astype(np.float32) @ q_g[a]
        s = np.stack([db_r[c, r].astype(np.float32) @ q_r[a, r] for r in range(3)], 1)
        we = w[a] * q_m[a] * db_m[c]
        den = alpha[a] + we.sum(-1)
        score = np.where(den > 0, (alpha[a] * g + (we * s).sum(-1)) / np.where(den > 0, den, 1), g)
        pos = np.argsort(-score)[:k]
        out_s[a], out_i[a] = score[pos], c[pos]
    return out_s, out_i


def run(quick: bool = False) -> dict:
    import jax
    import jax.numpy as jnp

    from wristmir_jax.bench.search import make_data
    from wristmir_jax.retrieval import coarse
    from wristmir_jax.retrieval.rerank import Reranker, condition_weights, rerank, rerank_needed_rows

    n = 100_000 if quick else 1_000_000
    rng = np.random.default_rng(0)
    db_g, q_g = make_data(n, Q, seed=0)
    # region embeddings: the global vector perturbed per region (correlated, like real towers)
    def regions(x, seed):
        r = np.random.default_rng(seed)
        out = np.empty((x.shape[0], 3, D), np.float16)
        for s in range(0, x.shape[0], 100_000):
            y = x[s:s + 100_000, None, :] + 0.7 / np.sqrt(D) * r.standard_normal((min(100_000, x.shape[0] - s), 3, D), dtype=np.float32)
            out[s:s + 100_000] = (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(np.float16)
        return out
    db_r = regions(db_g, 1)
    q_r = regions(q_g, 2).astype(np.float32)
    db_m = (rng.random((n, 3)) > 0.05).astype(np.float32)
    q_m = (rng.random((Q, 3)) > 0.05).astype(np.float32)
    db_g16 = db_g.astype(np.float16)

    # --- batched: 256 queries x K=200 candidates ----------------------------------------------
    cand = rng.integers(0, n, (Q, K)).astype(np.int32)
    conds = [None, "distal_radius", "distal_ulna", "ulnar_styloid"]
    aw = [condition_weights(conds[i % 4]) for i in range(Q)]
    alpha = np.array([a for a, _ in aw], np.float32)
    w = np.stack([x for _, x in aw]).astype(np.float32)
    rr = Reranker(db_g16, db_r, db_m)
    qd = {"global": jnp.asarray(q_g), "region": jnp.asarray(q_r), "crop_mask": jnp.asarray(q_m)}
    wd = {"alpha": jnp.asarray(alpha), "region": jnp.asarray(w)}
    cd = jnp.asarray(cand)

    def jitted():
        return rerank_needed_rows(qd, rr.packed, rr.db_mask, cd, alpha, w, k=10)

    js, ji = jitted()
    reps = 5
    t_jit = min(_time(jitted) for _ in range(reps))
    ns, ni = rerank_numpy(q_g, q_r, q_m, db_g16, db_r, db_m, cand, alpha, w, 10)
    t_np = min(_time(lambda: rerank_numpy(q_g, q_r, q_m, db_g16, db_r, db_m, cand, alpha, w, 10))
               for _ in range(3))
    agree = float(np.mean(ji == ni))
    t_loop = min(_time(lambda: rerank_numpy_loop(q_g, q_r, q_m, db_g16, db_r, db_m, cand, alpha, w, 10))
                 for _ in range(3))

    # --- the seam: rerank(query, candidates, weights) on gathered float32 candidates -----------
    cg = db_g16[cand].astype(np.float32)
    cr = db_r[cand].astype(np.float32)
    cm = db_m[cand]
    cands = {"global": jnp.asarray(cg), "region": jnp.asarray(cr), "crop_mask": jnp.asarray(cm)}

    def seam_jitted():
        return np.asarray(rerank(qd, cands, wd))

    def seam_numpy():
        g = np.einsum("qd,qkd->qk", q_g, cg)
        s = np.einsum("qrd,qkrd->qkr", q_r, cr)
        we = w[:, None, :] * q_m[:, None, :] * cm
        den = alpha[:, None] + we.sum(-1)
        return np.where(den > 0, (alpha[:, None] * g + (we * s).sum(-1)) / np.where(den > 0, den, 1), g)

    seam_err = float(np.max(np.abs(seam_jitted() - seam_numpy())))
    t_seam_jit = min(_time(seam_jitted) for _ in range(reps))
    t_seam_np = min(_time(seam_numpy) for _ in range(3))
    del cg, cr, cands

    # --- single query, two-stage: ScaNN top-200 + jitted rerank -------------------------------
    params = coarse.params_for_size(n, D)
    searcher, build_s = coarse.build_scann(db_g, params)
    one_a, one_w = alpha[1:2], w[1:2]  # a query about the distal radius

    def two_stage(i):
        idx, _ = searcher.search(q_g[i], final_num_neighbors=K, pre_reorder_num_neighbors=max(K, params.reorder))
        c = np.asarray(idx, np.int32)[None]
        if c.shape[1] < K:
            c = np.concatenate([c, np.full((1, K - c.shape[1]), -1, np.int32)], 1)
        q1 = {"global": q_g[i:i + 1], "region": q_r[i:i + 1], "crop_mask": q_m[i:i + 1]}
        s, top = rerank_needed_rows(q1, rr.packed, rr.db_mask, c, one_a, one_w, k=10)
        return top

    two_stage(0)
    lat_ms, coarse_ms = [], []
    for i in range(Q):
        t = time.perf_counter()
        two_stage(i)
        lat_ms.append(1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        searcher.search(q_g[i], final_num_neighbors=K, pre_reorder_num_neighbors=max(K, params.reorder))
        coarse_ms.append(1e3 * (time.perf_counter() - t))
    p50 = float(np.median(lat_ms))
    return {
        "n": n, "dim": D, "queries": Q, "candidates": K, "regions": 3, "db_dtype": "float16",
        "devices": len(jax.devices()),
        "batched_jitted_s": round(t_jit, 5), "batched_numpy_s": round(t_np, 5),
        "speedup_jitted_vs_numpy": round(t_np / t_jit, 2),
        "batched_numpy_loop_s": round(t_loop, 5),
        "speedup_jitted_vs_numpy_loop": round(t_loop / t_jit, 2),
        "top10_agreement_jitted_numpy": round(agree, 4),
        "seam_rerank_jitted_s": round(t_seam_jit, 5), "seam_rerank_numpy_s": round(t_seam_np, 5),
        "speedup_seam_jitted_vs_numpy": round(t_seam_np / t_seam_jit, 2),
        "seam_max_abs_diff": seam_err,
        "two_stage_p50_ms": round(p50, 3), "two_stage_p90_ms": round(float(np.percentile(lat_ms, 90)), 3),
        "coarse_only_p50_ms": round(float(np.median(coarse_ms)), 3),
        "scann_build_s": round(build_s, 2), "scann_params": params.__dict__,
        "targets": {"speedup>=10 (end to end, vs vectorised numpy)": t_np / t_jit >= 10,
                    "speedup>=10 (end to end, vs per-query numpy)": t_loop / t_jit >= 10,
                    "speedup>=10 (rerank seam on gathered candidates)": t_seam_np / t_seam_jit >= 10,
                    "two_stage_p50_ms<=5": p50 <= 5.0},
        "load": _load(),
    }


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _load() -> str:
    try:
        return "loadavg " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"
