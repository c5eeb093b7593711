"""Word-region local alignment (GLoRIA, Huang et al. 2021; the local term of ALC-ITR): caption
words attend over the image tower's spatial features and locations attend over the words, and
the resulting attention-pooled similarities of every (image, caption) pair in the batch enter a
symmetric InfoNCE.

For image i (locations V_i f32[M,D]) and caption j (words W_j f32[L,D], valid where mask_j), all
rows L2-normalised, G_ij[t,m] = <W_jt, V_im>:
  word -> locations (text -> image):  a_t = softmax_m(attn * G[t,m]),  c_t = sum_m a_tm V_im,
                                      R_w(i,j) = (1/agg) log sum_t exp(agg * cos(W_jt, c_t))
  location -> words (image -> text):  b_m = softmax_t(attn * G[t,m]) over valid words,
                                      u_m = sum_t b_mt W_jt,
                                      R_r(i,j) = (1/agg) log sum_m exp(agg * cos(V_im, u_m))
  S(i,j) = (R_w + R_r) / 2;  loss = symmetric InfoNCE on scale * S (image->caption and
  caption->image), identical captions (equal caption ids) masked from both denominators as in
  global_clip.
`attn` and `scale` are learned (the model's word_attn_scale and word_scale); `agg` (GLoRIA's
gamma_2, 5) is a config parameter. Cosines with the context vectors are computed without forming
them where that is cheaper: <W_t, c_t> = sum_m a_tm G[t,m] always, and |c_t|^2 = a_t^T (V V^T) a_t
when M <= D (else from c itself); likewise |u_m|^2 through W W^T when L <= D. Cost per pair:
L M D for G plus L M min(M, D) and M L min(L, D).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wristmir_jax.losses.common import NEG, caption_ids, param
from wristmir_jax.losses.contrastive import symmetric_infonce
from wristmir_jax.losses.registry import register

_EPS = 1e-12


def _unit(x):
    # Inputs are normalised again here, so S is made of true cosines whatever the caller passes.
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _EPS))


def _masked_softmax(x, mask, axis):
    x = jnp.where(mask, x, NEG)
    return jnp.where(mask, jax.nn.softmax(x, axis=axis), 0.0)


def _smooth_max(x, mask, agg, axis):
    return jax.nn.logsumexp(jnp.where(mask, agg * x, NEG), axis=axis) / agg


def word_region_scores(spatial, words, word_mask, attn_scale, agg: float = 5.0):
    """S f32[Bi,Bj] (and its two halves): spatial f32[Bi,...,D] (locations), words f32[Bj,L,D],
    word_mask bool[Bj,L]; rows are L2-normalised here."""
    v = _unit(spatial.reshape(spatial.shape[0], -1, spatial.shape[-1]))
    words = _unit(words)
    g = jnp.einsum("jtd,imd->ijtm", words, v)                       # [Bi,Bj,L,M]
    m, length, d = v.shape[1], words.shape[1], v.shape[-1]
    wm = word_mask[None, :, :, None]                                # [1,Bj,L,1]
    # word -> locations; |c|^2 through the M x M Gram matrix unless forming c is cheaper (M > D)
    a = jax.nn.softmax(attn_scale * g, axis=3)
    num = jnp.sum(a * g, axis=3)
    if m <= d:
        kv = jnp.einsum("imd,ind->imn", v, v)                       # [Bi,M,M]
        norm2 = jnp.einsum("ijtm,imn,ijtn->ijt", a, kv, a)
    else:
        c = jnp.einsum("ijtm,imd->ijtd", a, v)
        norm2 = jnp.sum(c * c, axis=3)
    cos_w = num * jax.lax.rsqrt(jnp.maximum(norm2, _EPS))
    r_w = _smooth_max(cos_w, word_mask[None], agg, axis=2)
    # locations -> words
    b = _masked_softmax(attn_scale * g, wm, axis=2)
    num = jnp.sum(b * g, axis=2)                                    # [Bi,Bj,M]
    if length <= d:
        kw = jnp.einsum("jtd,jsd->jts", words, words)               # [Bj,L,L]
        norm2 = jnp.einsum("ijtm,jts,ijsm->ijm", b, kw, b)
    else:
        u = jnp.einsum("ijtm,jtd->ijmd", b, words)
        norm2 = jnp.sum(u * u, axis=3)
    cos_r = num * jax.lax.rsqrt(jnp.maximum(norm2, _EPS))
    r_r = jax.nn.logsumexp(agg * cos_r, axis=2) / agg
    return 0.5 * (r_w + r_r), r_w, r_r


def word_region_loss(spatial, words, word_mask, caption_id, attn_scale, scale, agg: float = 5.0):
    n = spatial.shape[0]
    s, r_w, r_r = word_region_scores(spatial, words, word_mask, attn_scale, agg)
    eye = jnp.eye(n, dtype=bool)
    same = (caption_id[:, None] == caption_id[None, :]) & ~eye
    valid = jnp.ones((1, n), bool)
    loss, aux = symmetric_infonce((scale * s)[None], (~same)[None], valid)
    aux = dict(aux)
    aux["pos_words"] = jnp.mean(jnp.diagonal(r_w))
    aux["pos_locations"] = jnp.mean(jnp.diagonal(r_r))
    aux["attn_scale"] = jnp.asarray(attn_scale, jnp.float32)
    return loss, aux


@register("word_region")
def word_region(emb, batch, cfg=None):
    """Word-region alignment of the global caption with the global image's spatial features
    (module docstring). Needs the model's word outputs (`model.word_features=True`):
    emb spatial_img f32[B,h,w,D], word_txt f32[B,L,D], word_attn_scale, word_scale; batch
    global_mask [B,L] and optionally global_caption_id."""
    missing = [k for k in ("spatial_img", "word_txt", "word_attn_scale", "word_scale") if k not in emb]
    if missing:
        raise ValueError(f"loss term 'word_region' needs the model's word outputs {missing}: set "
                         "model.word_features=True")
    agg = float(param(cfg, "agg", 5.0))
    if agg <= 0:
        raise ValueError("word_region: agg must be > 0")
    words = emb["word_txt"]
    mask = jnp.asarray(batch["global_mask"]) > 0
    ids = caption_ids(batch, "global_caption_id", (words.shape[0],))
    return word_region_loss(emb["spatial_img"], words, mask, ids, emb["word_attn_scale"],
                            emb["word_scale"], agg)
