"""BERT-style text tower: word-piece, learned position and token-type (always type 0) embeddings,
embedding LayerNorm, post-LN transformer blocks (so Hugging Face BERT-family weights load exactly),
CLS or masked-mean pooling, and an optional learned region embedding (zero init) added to the
input embeddings of region captions.

Input: tokens i32[B,L], mask i32[B,L] (1 = real token). Output: (pooled [B,width],
last hidden states [B,L,width]).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from wristmir_jax.models.layers import NEG_INF, BlockSpec, Dtype, Encoder, layer_norm, logical


@dataclasses.dataclass(frozen=True)
class TextSpec:
    vocab_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    max_len: int
    type_vocab_size: int = 2
    pool: str = "cls"  # cls | mean
    layer_norm_eps: float = 1e-12
    num_regions: int = 0
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan: bool = False
    deterministic: bool = True

    @property
    def out_width(self) -> int:
        return self.width


class TextTower(nn.Module):
    spec: TextSpec

    @nn.compact
    def __call__(self, tokens, mask, region_ids=None):
        s = self.spec
        b, length = tokens.shape
        if length > s.max_len:
            raise ValueError(f"text length {length} exceeds the tower's max_len {s.max_len}")
        init = nn.initializers.normal(0.02)
        word = self.param("word_embed", logical(init, ("vocab", "embed")),
                          (s.vocab_size, s.width), jnp.float32)
        pos = self.param("pos_embed", logical(init, (None, "embed")), (s.max_len, s.width),
                         jnp.float32)
        typ = self.param("type_embed", logical(init, (None, "embed")),
                         (s.type_vocab_size, s.width), jnp.float32)
        x = jnp.take(word, tokens, axis=0) + pos[:length][None] + typ[0][None, None]
        if s.num_regions:
            # Region captions pass region_ids; global captions pass None (no region term).
            reg = self.param("region_embed", logical(nn.initializers.zeros, ("region", "embed")),
                             (s.num_regions, s.width), jnp.float32)
            if region_ids is not None:
                x = x + reg[region_ids][:, None, :]
        x = layer_norm(s.layer_norm_eps, jnp.float32, "ln_embed")(x).astype(s.dtype)
        if s.dropout > 0.0 and not s.deterministic:
            x = nn.Dropout(s.dropout, deterministic=False)(x)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, NEG_INF).astype(jnp.float32)
        block = BlockSpec(width=s.width, heads=s.heads, mlp_dim=s.mlp_dim,
                          layer_norm_eps=s.layer_norm_eps, post_ln=True, dropout=s.dropout,
                          dtype=s.dtype, deterministic=s.deterministic)
        h = Encoder(block, s.depth, remat=s.remat, scan=s.scan, name="encoder")(x, bias)
        if s.pool == "cls":
            pooled = h[:, 0]
        elif s.pool == "mean":
            m = mask.astype(jnp.float32)[..., None]
            pooled = (jnp.sum(h.astype(jnp.float32) * m, axis=1)
                      / jnp.maximum(jnp.sum(m, axis=1), 1.0)).astype(s.dtype)
        else:
            raise ValueError(f"unknown text pool {s.pool!r} (cls|mean)")
        return pooled, h
