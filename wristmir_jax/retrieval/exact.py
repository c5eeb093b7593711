"""Exact maximum-inner-product search: a jitted matmul + lax.top_k, scanned over database chunks
so memory stays bounded (queries x chunk scores at a time). It is the reference for ScaNN, the
search used for small databases and by evaluation, and it can exclude same-group (same-patient)
items and invalid items inside the jitted scan.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK = 16384
DEFAULT_QUERY_BATCH = 1024


@functools.partial(jax.jit, static_argnames=("k",))
def _search_chunks(q, db_chunks, valid_chunks, group_chunks, q_group, *, k: int):
    """q f32[Q,D]; db_chunks [C,S,D]; valid_chunks bool[C,S]; group_chunks i32[C,S]; q_group i32[Q].

    Returns (scores f32[Q,k], idx i32[Q,k]) of the best k valid items; -inf / -1 where fewer exist.
    """
    n_q = q.shape[0]
    chunk = db_chunks.shape[1]
    kc = min(k, chunk)

    def step(carry, xs):
        best_s, best_i = carry
        block, valid, group, offset = xs
        s = jnp.matmul(q, block.T.astype(q.dtype), preferred_element_type=jnp.float32)
        keep = valid[None, :] & ((q_group[:, None] < 0) | (group[None, :] != q_group[:, None]))
        s = jnp.where(keep, s, -jnp.inf)
        cs, ci = jax.lax.top_k(s, kc)
        ms = jnp.concatenate([best_s, cs], axis=1)
        mi = jnp.concatenate([best_i, ci.astype(jnp.int32) + offset], axis=1)
        ts, ti = jax.lax.top_k(ms, k)
        return (ts, jnp.take_along_axis(mi, ti, axis=1)), None

    init = (jnp.full((n_q, k), -jnp.inf, jnp.float32), jnp.full((n_q, k), -1, jnp.int32))
    offsets = jnp.arange(db_chunks.shape[0], dtype=jnp.int32) * chunk
    (scores, idx), _ = jax.lax.scan(step, init, (db_chunks, valid_chunks, group_chunks, offsets))
    idx = jnp.where(jnp.isfinite(scores), idx, -1)
    return scores, idx


class ExactSearcher:
    """Exact top-k over a fixed database, kept on device in chunks.

    database f[N,D] (float16 is upcast to float32: float16 matmuls are slow on CPU);
    groups int[N] (e.g. patient codes) enable exclusion of a query's own group; valid bool[N]
    marks searchable items (e.g. items whose region crop exists).
    """

    def __init__(self, database, *, groups=None, valid=None, chunk: int = DEFAULT_CHUNK):
        database = np.asarray(database)
        n, d = database.shape
        self.count, self.dim = n, d
        chunk = int(max(1, min(chunk, n)))
        n_chunks = -(-n // chunk)
        pad = n_chunks * chunk - n
        db = np.asarray(database, np.float32)
        if pad:
            db = np.concatenate([db, np.zeros((pad, d), np.float32)])
        v = np.ones(n, bool) if valid is None else np.asarray(valid, bool)
        g = np.full(n, -1, np.int32) if groups is None else np.asarray(groups, np.int32)
        v = np.concatenate([v, np.zeros(pad, bool)])
        g = np.concatenate([g, np.full(pad, -1, np.int32)])
        self._db = jnp.asarray(db.reshape(n_chunks, chunk, d))
        self._valid = jnp.asarray(v.reshape(n_chunks, chunk))
        self._groups = jnp.asarray(g.reshape(n_chunks, chunk))

    def search(self, queries, k: int, *, query_groups=None,
               query_batch: int = DEFAULT_QUERY_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """queries f[Q,D] -> (scores f32[Q,k], idx int32[Q,k]) best first; idx -1 where none."""
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {queries.shape}")
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        n_q = queries.shape[0]
        qg = np.full(n_q, -1, np.int32) if query_groups is None else np.asarray(query_groups, np.int32)
        out_s, out_i = [], []
        for start in range(0, n_q, query_batch):
            qb = queries[start:start + query_batch]
            gb = qg[start:start + query_batch]
            rows = qb.shape[0]
            if rows < query_batch and n_q > query_batch:  # keep one compiled shape
                qb = np.concatenate([qb, np.zeros((query_batch - rows, self.dim), np.float32)])
                gb = np.concatenate([gb, np.full(query_batch - rows, -1, np.int32)])
            s, i = _search_chunks(jnp.asarray(qb), self._db, self._valid, self._groups,
                                  jnp.asarray(gb), k=int(k))
            out_s.append(np.asarray(s)[:rows])
            out_i.append(np.asarray(i)[:rows])
        if not out_s:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
        return np.concatenate(out_s), np.concatenate(out_i)


def exact_search(queries, database, k: int, *, query_groups=None, db_groups=None, valid=None,
                 chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """One-shot exact top-k (builds an ExactSearcher). See ExactSearcher.search."""
    return ExactSearcher(database, groups=db_groups, valid=valid, chunk=chunk).search(
        queries, k, query_groups=query_groups)
