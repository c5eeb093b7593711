"""Shared pieces of the contrastive terms: parameter access on any mapping-like config, the
global / local views of a batch as stacked pair sets, and the pair masks (valid pairs, identical
captions, effective relevance)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

# A finite stand-in for -inf on masked logits: exp underflows to exactly 0, and rows with no
# allowed entry (missing crops) stay finite, so their (masked-out) gradients cannot turn into NaN.
NEG = -1e9


def param(cfg: Any, key: str, default: Any) -> Any:
    """`cfg[key]` for a dict / ConfigDict / attribute object, `default` when absent or None."""
    if cfg is None:
        return default
    get = getattr(cfg, "get", None)
    value = get(key, default) if callable(get) else getattr(cfg, key, default)
    return default if value is None else value


class Pairs(NamedTuple):
    """G independent sets of N image/text pairs (pair i: image i <-> text i).

    The global view has G=1 (one pair per study); the local view has G=3 (one set per bone, in
    REGIONS order). img, txt f32[G,N,D]; valid bool[G,N]; caption_id i32[G,N];
    relevance f32[G,N,N] (row = image's record, column = text's record) or None.
    """

    img: Any
    txt: Any
    valid: Any
    caption_id: Any
    relevance: Any
    scale: Any
    bias: Any


def caption_ids(batch: dict, key: str, shape) -> Any:
    if key in batch and batch[key] is not None:
        return jnp.asarray(batch[key]).astype(jnp.int32)
    # Without caption ids every caption counts as distinct.
    return jnp.broadcast_to(jnp.arange(shape[0], dtype=jnp.int32).reshape(
        (shape[0],) + (1,) * (len(shape) - 1)), shape)


def global_view(emb: dict, batch: dict) -> Pairs:
    img, txt = emb["global_img"], emb["global_txt"]
    n = img.shape[0]
    rel = batch.get("relevance")
    return Pairs(img=img[None], txt=txt[None], valid=jnp.ones((1, n), bool),
                 caption_id=caption_ids(batch, "global_caption_id", (n,))[None],
                 relevance=None if rel is None else rel[3:4],
                 scale=emb["global_scale"], bias=emb["global_bias"])


def local_view(emb: dict, batch: dict) -> Pairs:
    img, txt = emb["region_img"], emb["region_txt"]          # [B,3,D]
    n, g = img.shape[0], img.shape[1]
    mask = batch.get("crop_mask")
    valid = jnp.ones((n, g), bool) if mask is None else jnp.asarray(mask) > 0.5
    rel = batch.get("relevance")
    return Pairs(img=jnp.swapaxes(img, 0, 1), txt=jnp.swapaxes(txt, 0, 1), valid=valid.T,
                 caption_id=caption_ids(batch, "region_caption_id", (n, g)).T,
                 relevance=None if rel is None else rel[:g],
                 scale=emb["local_scale"], bias=emb["local_bias"])


def pair_masks(p: Pairs):
    """(eye bool[1,N,N], both_valid bool[G,N,N], same_caption bool[G,N,N] off the diagonal)."""
    n = p.img.shape[1]
    eye = jnp.eye(n, dtype=bool)[None]
    both = p.valid[:, :, None] & p.valid[:, None, :]
    same = (p.caption_id[:, :, None] == p.caption_id[:, None, :]) & ~eye
    return eye, both, same


def effective_relevance(rel, eye, same):
    """Relevance with the diagonal and identical-caption pairs set to 1: a pair whose texts are
    identical is as relevant as the true pair, whatever the records say."""
    return jnp.where(eye | same, 1.0, rel)


def require_relevance(p: Pairs, term: str):
    if p.relevance is None:
        raise ValueError(f"loss term {term!r} needs batch['relevance'] (f32[4,B,B])")
    return p.relevance
