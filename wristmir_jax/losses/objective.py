"""The training objective: a weighted sum of registered loss terms, built from config.

Config shape (a dict or ml_collections.ConfigDict):

    loss_cfg = {
        "terms":  {"global_clip": 1.0, "local_clip": 0.5},     # term name -> weight
        "params": {"local_clip": {}, "global_multipos": {"threshold": 0.75}},  # optional
    }

`objective(loss_cfg, mesh=None, relevance_fn=None)` returns `fn(emb, batch) -> (total, aux)`:
total is sum(weight * term); aux maps each term's name to its unweighted value, "<term>/<key>" to
that term's own aux entries, and "total" to the total. Terms with weight 0 are not computed.
`mesh` (a jax.sharding.Mesh) is handed to the ring terms (`*_ring`) as their "mesh" parameter
unless the params already name one; `relevance_fn(rec_a, rec_b) -> f32[R,A,B]` likewise, so the
ring terms compute relevance block by block from batch["record"] (this layer cannot import the
report relevance itself; the train step hands it over through `fn.with_relevance_fn`).
`fn.reads_dense_relevance` says whether some term reads the dense batch["relevance"], so the
step builds that [4, B, B] array only when it is needed. Unknown term names raise KeyError, an empty objective ValueError, so a
bad config fails when the objective is built, not inside the jitted step.
"""

from __future__ import annotations

from typing import Any, Callable

from wristmir_jax.losses import registry
from wristmir_jax.losses.common import param


def _items(m: Any):
    if m is None:
        return []
    return list(m.items())


# Terms that never read report relevance (a registered term not listed here is assumed to read
# the dense batch["relevance"]).
RELEVANCE_FREE = frozenset(f"{view}_{kind}{ring}" for view in ("global", "local")
                           for kind in ("clip", "siglip") for ring in ("", "_ring"))
BLOCKWISE_RELEVANCE = frozenset({"global_multipos_ring", "local_multipos_ring"})


def objective(loss_cfg: Any, mesh: Any = None,
              relevance_fn: Callable | None = None) -> Callable[[dict, dict], tuple]:
    terms = param(loss_cfg, "terms", None)
    if terms is None:
        raise ValueError("loss config has no 'terms' (a mapping of term name -> weight)")
    all_params = param(loss_cfg, "params", None)
    built = []
    for name, weight in _items(terms):
        fn = registry.get(name)
        weight = float(weight)
        if weight == 0.0:
            continue
        p = dict(_items(param(all_params, name, None)))
        if mesh is not None and name.endswith("_ring"):
            p.setdefault("mesh", mesh)
        if relevance_fn is not None and name in BLOCKWISE_RELEVANCE:
            p.setdefault("relevance_fn", relevance_fn)
        built.append((name, weight, fn, p))
    if not built:
        raise ValueError("loss config has no term with a nonzero weight")

    def total_loss(emb: dict, batch: dict):
        total = 0.0
        aux = {}
        for name, weight, fn, p in built:
            value, term_aux = fn(emb, batch, p)
            aux[name] = value
            for k, v in term_aux.items():
                aux[f"{name}/{k}"] = v
            total = total + weight * value
        aux["total"] = total
        return total, aux

    total_loss.reads_dense_relevance = any(
        name not in RELEVANCE_FREE and not (name in BLOCKWISE_RELEVANCE and p.get("relevance_fn"))
        for name, _, _, p in built)
    total_loss.with_relevance_fn = lambda fn: objective(loss_cfg, mesh, fn)
    return total_loss
