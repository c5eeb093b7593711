"""The fine stage: a jitted region-similarity reranker over the coarse top-K candidates.

For a query q and a candidate c:
  g   = <q.global, c.global>                      global cosine similarity
  s_r = <q.region[r], c.region[r]>                region cosine similarity, r in schema.REGIONS
  w'_r = w_r * q.crop_mask[r] * c.crop_mask[r]    a missing crop on either side drops region r
  score = (alpha * g + sum_r w'_r s_r) / (alpha + sum_r w'_r)
i.e. the weighted mean of the similarities that exist: weights are renormalised over the
available regions, so candidates with and without a crop stay on one scale; with no weight left
(alpha = 0 and every chosen region missing) the score falls back to g.

The query's region condition chooses w (`condition_weights`): one bone (one-hot), several, or
all (the configured per-region weights). alpha and the base weights come from the config
(`settings(cfg)`: cfg.retrieval.{alpha, region_weights, coarse_k, region_alpha, coarse_union}
when present; `run_config` finds that config for an index: the training config of the workdir it
was embedded from).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wristmir_jax.config import apply_overrides, load_config
from wristmir_jax.errors import UserError
from wristmir_jax.schema import NUM_REGIONS, REGION_INDEX, REGIONS


@dataclasses.dataclass(frozen=True)
class RerankSettings:
    alpha: float = 1.0
    region_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    coarse_k: int = 200
    # alpha used when a specific bone is asked for: the bone dominates, the global view breaks ties
    region_alpha: float = 0.25
    # draw two-stage candidates from each weighted bone's region searcher too (coarse.py)
    coarse_union: bool = True


def settings(cfg: Any = None) -> RerankSettings:
    """RerankSettings from cfg.retrieval (a ConfigDict or dict) where present, else defaults."""
    base = RerankSettings()
    sub = None
    if cfg is not None:
        try:
            sub = cfg["retrieval"]
        except (KeyError, TypeError, AttributeError):
            sub = None
    if not sub:
        return base
    kw = {}
    for f in dataclasses.fields(RerankSettings):
        if f.name in sub:
            v = sub[f.name]
            kw[f.name] = tuple(float(x) for x in v) if f.name == "region_weights" else type(getattr(base, f.name))(v)
    s = dataclasses.replace(base, **kw)
    if len(s.region_weights) != NUM_REGIONS or min(s.region_weights) < 0 or s.alpha < 0:
        raise UserError("config retrieval: region_weights needs 3 non-negative numbers and alpha >= 0")
    return s


def run_config(index_fingerprint: dict, config_path: str | None = None,
               overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """The config whose `retrieval` section `search` and `evaluate` use: `config_path` when
    given, else the config.json of the workdir the index was embedded from (its training
    config), else only the defaults; then `--config.*` overrides (e.g. retrieval.alpha)."""
    if config_path:
        return load_config(config_path, overrides)
    workdir = (index_fingerprint.get("model") or {}).get("workdir")
    path = os.path.join(workdir, "config.json") if workdir else None
    cfg = ml_collections.ConfigDict()
    if path and os.path.exists(path):
        with open(path) as f:
            cfg = ml_collections.ConfigDict(json.load(f))
    if "retrieval" not in cfg:
        cfg.retrieval = ml_collections.ConfigDict({**dataclasses.asdict(RerankSettings()),
                                                   "knn_k": 10})
    return apply_overrides(cfg, overrides)


def parse_condition(condition: str | Iterable[str] | None) -> tuple[str, ...]:
    """None/'all' -> all regions; 'distal_radius' or 'distal_radius,ulnar_styloid' -> those."""
    if condition is None:
        return REGIONS
    names = condition.split(",") if isinstance(condition, str) else list(condition)
    names = [n.strip() for n in names if n.strip()]
    if not names or names == ["all"]:
        return REGIONS
    for n in names:
        if n not in REGION_INDEX:
            raise UserError(f"unknown region {n!r} (choose from {', '.join(REGIONS)} or all)")
    return tuple(dict.fromkeys(names))


def condition_weights(condition: str | Iterable[str] | None,
                      s: RerankSettings = RerankSettings()) -> tuple[float, np.ndarray]:
    """(alpha, w f32[3]) for a region condition: all regions -> (alpha, region_weights);
    a subset -> (region_alpha, region_weights on the subset, 0 elsewhere)."""
    names = parse_condition(condition)
    base = np.asarray(s.region_weights, np.float32)
    if set(names) == set(REGIONS):
        return float(s.alpha), base
    w = np.zeros(NUM_REGIONS, np.float32)
    for n in names:
        w[REGION_INDEX[n]] = base[REGION_INDEX[n]] if base[REGION_INDEX[n]] > 0 else 1.0
    return float(s.region_alpha), w


def _combine(g, s, q_mask, c_mask, alpha, w):
    """The score from similarities: g [..., K], s [..., K, 3]; q_mask/w [..., 3] (broadcast over
    K), c_mask [..., K, 3], alpha [...]."""
    w_eff = (w * q_mask)[..., None, :] * c_mask
    num = alpha[..., None] * g + jnp.sum(w_eff * s, axis=-1)
    den = alpha[..., None] + jnp.sum(w_eff, axis=-1)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), g)


def _rerank(query: dict, candidates: dict, weights: dict) -> jax.Array:
    """query: global f[Q,D], region f[Q,3,D], crop_mask f[Q,3];
    candidates: global f[Q,K,D], region f[Q,K,3,D], crop_mask f[Q,K,3], optional valid bool[Q,K];
    weights: alpha f[Q] (or scalar), region f[Q,3] (or [3]).  Returns scores f32[Q,K]
    (-inf where a candidate is not valid)."""
    f32 = jnp.float32
    qg = query["global"].astype(f32)
    n_q = qg.shape[0]
    g = jnp.einsum("qd,qkd->qk", qg, candidates["global"].astype(f32))
    s = jnp.einsum("qrd,qkrd->qkr", query["region"].astype(f32), candidates["region"].astype(f32))
    alpha = jnp.broadcast_to(jnp.asarray(weights["alpha"], f32), (n_q,))
    w = jnp.broadcast_to(jnp.asarray(weights["region"], f32), (n_q, NUM_REGIONS))
    score = _combine(g, s, query["crop_mask"].astype(f32), candidates["crop_mask"].astype(f32), alpha, w)
    if "valid" in candidates:
        score = jnp.where(candidates["valid"], score, -jnp.inf)
    return score


rerank = jax.jit(_rerank)
rerank.__doc__ = "Jitted reranker: " + (_rerank.__doc__ or "")


def pack_database(db_global, db_region) -> np.ndarray:
    """[N,D] + [N,3,D] -> [N,4,D] (global first): one contiguous row per candidate, so the
    gather reads a single 4*D run instead of two scattered ones."""
    g = np.asarray(db_global)
    r = np.asarray(db_region)
    dtype = np.float16 if g.dtype == np.float16 and r.dtype == np.float16 else np.float32
    out = np.empty((g.shape[0], 1 + NUM_REGIONS, g.shape[1]), dtype)
    out[:, 0] = g
    out[:, 1:] = r
    return out


@functools.partial(jax.jit, static_argnames=("k", "rows"))
def rerank_top(query, packed, db_mask, cand_idx, weights, *, k: int, rows: tuple[int, ...] = (0, 1, 2, 3)):
    """Gather + rerank + top-k, one query at a time (lax.map): each query's K candidate rows
    (packed [N,4,D]) stay in cache instead of a [Q,K,4,D] temporary going through memory.

    `rows` (static) names the packed rows to read: 0 = global (always read), 1 + r = region r.
    The reranker is bound by this gather, so a query about one bone reads 2 of the 4 rows; the
    weights of regions not read are taken as 0 (`rerank_needed_rows` picks rows from the weights).
    Returns (scores f32[Q,k], idx i32[Q,k]) best first, idx -1 where fewer valid candidates."""
    f32 = jnp.float32
    rows = tuple(sorted(set(rows) | {0}))
    n_q = query["global"].shape[0]
    alpha = jnp.broadcast_to(jnp.asarray(weights["alpha"], f32), (n_q,))
    w = jnp.broadcast_to(jnp.asarray(weights["region"], f32), (n_q, NUM_REGIONS))
    read = np.zeros(NUM_REGIONS, np.float32)
    read[[r - 1 for r in rows if r > 0]] = 1.0
    w = w * read
    q_all = jnp.concatenate([query["global"].astype(f32)[:, None], query["region"].astype(f32)], axis=1)
    q_all = q_all[:, list(rows)]
    sel = jnp.asarray(rows, jnp.int32)
    region_pos = jnp.asarray([rows.index(r + 1) if r + 1 in rows else 0 for r in range(NUM_REGIONS)])

    def one(args):
        q, qm, a, wq, c = args
        safe = jnp.maximum(c, 0)
        if len(rows) == 1 + NUM_REGIONS:
            got = packed.at[safe].get(mode="promise_in_bounds")                # [K,4,D]
        else:
            got = packed.at[safe[:, None], sel[None, :]].get(mode="promise_in_bounds")  # [K,L,D]
        cm = db_mask.at[safe].get(mode="promise_in_bounds").astype(f32)      # [K,3]
        sims = jnp.einsum("ld,kld->kl", q, got.astype(f32))
        region_sims = sims[:, region_pos] * read                             # unread -> 0
        score = _combine(sims[:, 0], region_sims, qm, cm, a, wq)
        score = jnp.where(c >= 0, score, -jnp.inf)
        top_s, pos = jax.lax.top_k(score, k)
        return top_s, jnp.where(jnp.isfinite(top_s), c[pos], -1)

    return jax.lax.map(one, (q_all, query["crop_mask"].astype(f32), alpha, w, cand_idx))


def rerank_needed_rows(query, packed, db_mask, cand_idx, alpha, region_w, *, k: int):
    """rerank_top reading only the rows the batch's region conditions need (host side): when
    every query uses the same regions (one bone, say), only global + those rows are gathered;
    a batch mixing conditions is reranked in one call over all rows (splitting it into one call
    per condition measured slower: 37.6 vs 30.2 ms for 256 x 200 at 1M, `bench --suite rerank`).
    query values and cand_idx may be numpy or device arrays; alpha f[Q], region_w f[Q,3] numpy.
    Returns numpy (scores f32[Q,k], idx i32[Q,k])."""
    region_w = np.asarray(region_w, np.float32)
    n_q = region_w.shape[0]
    alpha = np.broadcast_to(np.asarray(alpha, np.float32), (n_q,))
    used = region_w > 0
    if (used == used[:1]).all():
        rows = (0,) + tuple(1 + r for r in range(NUM_REGIONS) if used[0, r])
    else:
        rows = tuple(range(1 + NUM_REGIONS))
    q = {name: query[name] for name in ("global", "region", "crop_mask")}
    w = {"alpha": jnp.asarray(alpha), "region": jnp.asarray(region_w)}
    s, i = rerank_top(q, packed, db_mask, cand_idx, w, k=k, rows=rows)
    return np.asarray(s), np.asarray(i)


class Reranker:
    """Database embeddings on device, packed [N,4,D] in the index's dtype (float16 halves the
    memory; scores are computed in float32 after the gather), and the jitted rerank."""

    def __init__(self, db_global, db_region, db_mask):
        self.packed = jnp.asarray(pack_database(db_global, db_region))
        self.db_mask = jnp.asarray(np.asarray(db_mask, np.float32))

    def __call__(self, query: dict, cand_idx, alpha, region_w, k: int) -> tuple[np.ndarray, np.ndarray]:
        cand_idx = np.asarray(cand_idx, np.int32)
        n_q = cand_idx.shape[0]
        q = {"global": jnp.asarray(query["global"], jnp.float32),
             "region": jnp.asarray(query["region"], jnp.float32),
             "crop_mask": jnp.asarray(query["crop_mask"], jnp.float32)}
        a = np.broadcast_to(np.asarray(alpha, np.float32), (n_q,))
        w = np.broadcast_to(np.asarray(region_w, np.float32), (n_q, NUM_REGIONS))
        k = int(min(k, cand_idx.shape[1]))
        return rerank_needed_rows(q, self.packed, self.db_mask, cand_idx, a, w, k=k)
