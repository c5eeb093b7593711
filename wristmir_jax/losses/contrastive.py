"""The contrastive terms as small pure functions on stacked pair sets (see common.Pairs), and
their registered `fn(emb, batch, cfg) -> (loss, aux)` forms for the global (study image <->
report caption) and local (bone crop <-> region caption, per bone, missing crops masked) levels.

How identical captions in one batch are handled (caption ids equal, i != j):
  clip, multipos          masked out of both softmax denominators (neither positive nor negative)
  siglip                  labelled positive (+1)
  soft, anatomy_soft      treated as positive: relevance set to 1, the same target as the true pair
  rank                    effective relevance 1 to each other's anchor; two candidates with
                          identical captions are never compared with each other
  supcon (image-image)    positives of each other
Missing crops (local terms, crop_mask 0) are removed from rows and columns: they are neither
queries nor candidates. Normalisation: every loss is a mean over valid queries (pooled over the
three bones for local terms), and the symmetric terms average image->text and text->image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wristmir_jax.losses.common import (NEG, Pairs, effective_relevance, global_view, local_view,
                                        pair_masks, param, require_relevance)
from wristmir_jax.losses.registry import register

VIEWS = {"global": global_view, "local": local_view}


def _sims(p: Pairs):
    return jnp.einsum("gnd,gmd->gnm", p.img, p.txt)


def _count(valid):
    return jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)


def symmetric_infonce(logits, allowed, valid):
    """Symmetric InfoNCE with the diagonal as positive. logits f32[G,N,N]; allowed bool[G,N,N]
    (entries in the denominators; must include the diagonal of valid rows); valid bool[G,N]."""
    masked = jnp.where(allowed, logits, NEG)
    pos = jnp.diagonal(logits, axis1=1, axis2=2)
    i2t = jax.nn.logsumexp(masked, axis=2) - pos
    t2i = jax.nn.logsumexp(masked, axis=1) - pos
    n = _count(valid)
    i2t = jnp.sum(jnp.where(valid, i2t, 0.0)) / n
    t2i = jnp.sum(jnp.where(valid, t2i, 0.0)) / n
    return 0.5 * (i2t + t2i), {"i2t": i2t, "t2i": t2i}


def clip_pairs(p: Pairs):
    """CLIP: symmetric InfoNCE on scale * cosine; identical captions masked from denominators."""
    eye, both, same = pair_masks(p)
    return symmetric_infonce(p.scale * _sims(p), both & ~same, p.valid)


def multipos_pairs(p: Pairs, threshold: float = 0.75):
    """Multi-positive InfoNCE: pairs (i, j != i) whose report relevance >= threshold, and pairs with
    identical captions, are removed from the denominators instead of being pushed apart."""
    eye, both, same = pair_masks(p)
    rel = require_relevance(p, "multipos")
    near = (rel >= threshold) & ~eye
    return symmetric_infonce(p.scale * _sims(p), both & ~same & ~near, p.valid)


def siglip_pairs(p: Pairs):
    """SigLIP: -mean over valid queries of sum_j log sigmoid(z_ij (scale cos_ij + bias)),
    z = +1 on the diagonal and for identical captions, -1 otherwise; missing crops excluded."""
    eye, both, same = pair_masks(p)
    logits = p.scale * _sims(p) + p.bias
    z = jnp.where(eye | same, 1.0, -1.0)
    ll = jax.nn.log_sigmoid(z * logits)
    loss = -jnp.sum(jnp.where(both, ll, 0.0)) / _count(p.valid)
    return loss, {}


def soft_target_ce(logits, targets_logits, allowed, target_mask, valid):
    """Symmetric cross-entropy against soft targets. Row targets: softmax over j of
    targets_logits[i, j] restricted to target_mask; column targets likewise over i. The model's
    softmax runs over `allowed` (a superset of target_mask)."""
    masked = jnp.where(allowed, logits, NEG)
    tmask = jnp.where(target_mask, targets_logits, NEG)
    n = _count(valid)
    out = []
    for axis in (2, 1):
        logp = jax.nn.log_softmax(masked, axis=axis)
        t = jax.nn.softmax(tmask, axis=axis)
        ce = -jnp.sum(jnp.where(target_mask, t * logp, 0.0), axis=axis)
        out.append(jnp.sum(jnp.where(valid, ce, 0.0)) / n)
    return 0.5 * (out[0] + out[1]), {"i2t": out[0], "t2i": out[1]}


def soft_pairs(p: Pairs, temperature: float = 0.1):
    """Soft-target InfoNCE: the target distribution of query i is softmax_j(rel_ij / temperature)
    over valid candidates (rel of the diagonal and of identical captions = 1)."""
    eye, both, same = pair_masks(p)
    rel = effective_relevance(require_relevance(p, "soft"), eye, same)
    return soft_target_ce(p.scale * _sims(p), rel / temperature, both, both, p.valid)


def rank_pairs(p: Pairs, relevance_gap: float = 0.25, margin: float = 0.1, chunk: int = 32):
    """Relevance-ranking triplet loss on cosine similarity. For every anchor (an image, and
    symmetrically a text) and two valid candidates j, k of the other modality with
    rel(anchor, j) - rel(anchor, k) >= relevance_gap and different captions:
    hinge = max(0, margin - (cos(anchor, j) - cos(anchor, k))). Mean over qualifying triplets."""
    if relevance_gap <= 0:
        raise ValueError("rank: relevance_gap must be > 0")
    eye, both, same = pair_masks(p)
    rel = effective_relevance(require_relevance(p, "rank"), eye, same)
    sims = _sims(p)
    distinct = ~(p.caption_id[:, :, None] == p.caption_id[:, None, :])        # [G,N,N] cand pairs
    # Anchors of both directions stacked on a leading axis: rows of (sims, rel, both) for images,
    # columns for texts.
    a_sims = jnp.concatenate([jnp.moveaxis(sims, 1, 0), jnp.moveaxis(sims, 2, 0)])   # [2N,G,N]
    a_rel = jnp.concatenate([jnp.moveaxis(rel, 1, 0), jnp.moveaxis(rel, 2, 0)])
    a_ok = jnp.concatenate([jnp.moveaxis(both, 1, 0), jnp.moveaxis(both, 2, 0)])

    def one_anchor(x):
        s, r, ok = x                                                   # each [G,N]
        qual = ((r[:, :, None] - r[:, None, :]) >= relevance_gap) & ok[:, :, None] & ok[:, None, :]
        qual = qual & distinct
        hinge = jax.nn.relu(margin - (s[:, :, None] - s[:, None, :]))
        return jnp.sum(jnp.where(qual, hinge, 0.0)), jnp.sum(qual.astype(jnp.float32))

    h, c = jax.lax.map(one_anchor, (a_sims, a_rel, a_ok), batch_size=max(1, int(chunk)))
    count = jnp.sum(c)
    return jnp.sum(h) / jnp.maximum(count, 1.0), {"triplets": count}


def anatomy_pairs(p: Pairs, temperature: float = 0.1):
    """Anatomy-conditioned soft-target InfoNCE over all bones at once: a region caption (which
    names its bone) is a query against the crops of all three bones, and a crop against all
    region captions. Targets come from the per-bone relevance, restricted to the query's own
    bone; crops and captions of the other bones stay in the denominator as negatives, so the
    embedding must encode which bone it shows as well as the finding."""
    g, n, d = p.img.shape
    rel = require_relevance(p, "anatomy")
    k = g * n
    group = jnp.repeat(jnp.arange(g), n)
    same_group = group[:, None] == group[None, :]
    full_rel = jnp.zeros((k, k), rel.dtype)
    for r in range(g):
        full_rel = full_rel.at[r * n:(r + 1) * n, r * n:(r + 1) * n].set(rel[r])
    flat = Pairs(img=p.img.reshape(1, k, d), txt=p.txt.reshape(1, k, d),
                 valid=p.valid.reshape(1, k),
                 caption_id=p.caption_id.reshape(1, k),
                 relevance=full_rel[None], scale=p.scale, bias=p.bias)
    eye, both, same = pair_masks(flat)
    same = same & same_group[None]          # caption ids are only comparable within one bone
    rel_eff = effective_relevance(flat.relevance, eye, same)
    return soft_target_ce(p.scale * _sims(flat), rel_eff / temperature, both,
                          both & same_group[None], flat.valid)


def supcon_pairs(p: Pairs, threshold: float = 0.75, temperature: float = 0.1):
    """Report-supervised contrastive loss between images (SupCon, Khosla et al. 2020, with
    RadIR's report-derived positives). For each valid image i the positives are the other valid
    images whose relevance to i is >= threshold or whose caption is identical; the loss is
    -mean over positives of log softmax over all other valid images of cos / temperature, averaged
    over images that have a positive. Texts are not involved: the term shapes the image space by
    the mined findings directly, which is what kNN retrieval reads."""
    if temperature <= 0:
        raise ValueError("supcon: temperature must be > 0")
    eye, both, same = pair_masks(p)
    rel = require_relevance(p, "supcon")
    others = both & ~eye
    pos = others & (same | (rel >= threshold))
    logits = jnp.einsum("gnd,gmd->gnm", p.img, p.img) / temperature
    logp = logits - jax.nn.logsumexp(jnp.where(others, logits, NEG), axis=2, keepdims=True)
    npos = jnp.sum(pos.astype(jnp.float32), axis=2)
    per_anchor = -jnp.sum(jnp.where(pos, logp, 0.0), axis=2) / jnp.maximum(npos, 1.0)
    anchors = (npos > 0) & p.valid
    loss = jnp.sum(jnp.where(anchors, per_anchor, 0.0)) / _count(anchors)
    return loss, {"anchors": jnp.sum(anchors.astype(jnp.float32))}


def _term(kind_fn, view: str, **defaults):
    def fn(emb, batch, cfg=None):
        kwargs = {k: param(cfg, k, v) for k, v in defaults.items()}
        return kind_fn(VIEWS[view](emb, batch), **kwargs)

    fn.__name__ = f"{view}_{kind_fn.__name__.removesuffix('_pairs')}"
    fn.__doc__ = f"{view} level: {kind_fn.__doc__}"
    return fn


for _view in ("global", "local"):
    register(f"{_view}_clip")(_term(clip_pairs, _view))
    register(f"{_view}_siglip")(_term(siglip_pairs, _view))
    register(f"{_view}_multipos")(_term(multipos_pairs, _view, threshold=0.75))
    register(f"{_view}_soft")(_term(soft_pairs, _view, temperature=0.1))
    register(f"{_view}_rank")(_term(rank_pairs, _view, relevance_gap=0.25, margin=0.1, chunk=32))
    register(f"{_view}_supcon")(_term(supcon_pairs, _view, threshold=0.75, temperature=0.1))
register("anatomy_soft")(_term(anatomy_pairs, "local", temperature=0.1))
