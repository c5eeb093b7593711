"""Location-conditioned word attention (ALC-ITR's anatomical-location conditioning, on the
word -> location attention of GLoRIA): each bone's region caption ("distal radius: buckle
fracture") attends over the global image's spatial features, and the attention is taught to land
on that bone's box.

The boxes are the localizer's (the same ones the bone crops are cut around, stored with every
example and moved with the image by augmentation); no gold box enters training, so grounding
against gold boxes (eval/grounding.py) measures whether text -> image attention found the bone
the caption names, as well as the localizer, seen only through the words, lets it.

For image i (locations V_i f32[M,D] on an h x w grid covering the S x S image) and bone r with
region-caption words W_ir f32[L,D] (content words only: [CLS] and [SEP] excluded, as in the
grounding heatmap), all rows L2-normalised:
  a_t    = softmax_m(attn * <W_irt, V_im>)              word t's attention over locations
  heat_m = mean_t a_tm                                  the caption's heatmap (eval/grounding.py)
  q_m    = |cell m  intersect box_ir| / |box_ir  on the grid|   the box as a distribution
  loss   = mean over (i, r) with a box of KL(q || heat) = sum_m q_m (log q_m - log heat_m)
`attn` is the model's learned word attention scale (shared with the word_region term).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wristmir_jax.losses.common import NEG
from wristmir_jax.losses.registry import register

_EPS = 1e-12


def _unit(x):
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS))


def content_words(mask):
    """bool[...,L]: the real tokens of int/bool[...,L] masks without the first ([CLS]) and last
    ([SEP]) one; captions of at most two tokens keep all of theirs (also the grounding evaluation's)."""
    mask = jnp.asarray(mask) > 0
    n = jnp.sum(mask, axis=-1, keepdims=True)
    pos = jnp.arange(mask.shape[-1])
    inner = mask & (pos > 0) & (pos < n - 1)
    return jnp.where(n > 2, inner, mask)


def box_cell_coverage(boxes, grid_h: int, grid_w: int, size: float):
    """f32[...,h,w]: the fraction of each grid cell covered by boxes f32[...,4] (x0, y0, x1, y1
    in pixels of a size x size image; the grid's cells are size/h x size/w)."""
    boxes = jnp.asarray(boxes, jnp.float32)

    def axis(lo, hi, n):
        cell = size / n
        edges = jnp.arange(n, dtype=jnp.float32) * cell
        inter = jnp.minimum(hi[..., None], edges + cell) - jnp.maximum(lo[..., None], edges)
        return jnp.clip(inter, 0.0, cell) / cell

    cx = axis(boxes[..., 0], boxes[..., 2], grid_w)             # [...,w]
    cy = axis(boxes[..., 1], boxes[..., 3], grid_h)             # [...,h]
    return cy[..., :, None] * cx[..., None, :]


def log_heatmap(spatial, words, words_mask, attn_scale):
    """log heat f32[B,R,M]: spatial f32[B,h,w,D], words f32[B,R,L,D], words_mask bool[B,R,L];
    heat = the mean over the masked words of their softmax attention over the M = h*w locations."""
    v = _unit(spatial.reshape(spatial.shape[0], -1, spatial.shape[-1]))
    w = _unit(words)
    logits = attn_scale * jnp.einsum("brtd,bmd->brtm", w, v)
    log_a = jax.nn.log_softmax(logits, axis=-1)
    log_a = jnp.where(words_mask[..., None], log_a, NEG)
    n = jnp.maximum(jnp.sum(words_mask, axis=-1), 1).astype(jnp.float32)
    return jax.nn.logsumexp(log_a, axis=2) - jnp.log(n)[..., None]


def region_grounding_loss(spatial, words, words_mask, boxes, valid, attn_scale, image_size):
    """(loss, aux) of the module docstring. valid bool[B,R]: the bone has a box (and words)."""
    h, w = spatial.shape[1:3]
    log_heat = log_heatmap(spatial, words, words_mask, attn_scale)             # [B,R,M]
    cover = box_cell_coverage(boxes, h, w, image_size).reshape(boxes.shape[:-1] + (h * w,))
    total = jnp.sum(cover, axis=-1)
    valid = valid & (total > 0) & jnp.any(words_mask, axis=-1)
    q = cover / jnp.maximum(total, _EPS)[..., None]
    log_q = jnp.log(jnp.maximum(q, _EPS))
    kl = jnp.sum(jnp.where(q > 0, q * (log_q - log_heat), 0.0), axis=-1)       # [B,R]
    count = jnp.maximum(jnp.sum(valid), 1)
    loss = jnp.sum(jnp.where(valid, kl, 0.0)) / count
    heat = jnp.exp(log_heat)
    inside = jnp.sum(jnp.where(q > 0, heat, 0.0), axis=-1)
    peak = jnp.take_along_axis(q, jnp.argmax(log_heat, axis=-1)[..., None], axis=-1)[..., 0]
    mean = lambda x: jnp.sum(jnp.where(valid, x, 0.0)) / count
    aux = {"box_mass": mean(inside), "peak_in_box": mean((peak > 0).astype(jnp.float32)),
           "pairs": jnp.sum(valid).astype(jnp.float32),
           "attn_scale": jnp.asarray(attn_scale, jnp.float32)}
    return loss, aux


@register("region_grounding")
def region_grounding(emb, batch, cfg=None):
    """Needs the model's region words (`model.word_features` and `model.region_words`):
    emb spatial_img f32[B,h,w,D], region_word_txt f32[B,3,L,D], word_attn_scale; batch
    region_mask [B,3,L], boxes f32[B,3,4] (pixels of the batch's image), crop_mask [B,3] and
    image [B,S,S,1] (its side is the boxes' frame)."""
    missing = [k for k in ("spatial_img", "region_word_txt", "word_attn_scale") if k not in emb]
    if missing:
        raise ValueError(f"loss term 'region_grounding' needs the model's word outputs {missing}: "
                         "set model.word_features=True and model.region_words=True")
    missing = [k for k in ("boxes", "crop_mask", "region_mask", "image") if k not in batch]
    if missing:
        raise ValueError(f"loss term 'region_grounding' needs batch fields {missing}")
    words_mask = content_words(batch["region_mask"])
    valid = jnp.asarray(batch["crop_mask"]) > 0
    return region_grounding_loss(emb["spatial_img"], emb["region_word_txt"], words_mask,
                                 jnp.asarray(batch["boxes"], jnp.float32), valid,
                                 emb["word_attn_scale"], float(batch["image"].shape[-3]))
