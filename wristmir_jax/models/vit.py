"""Vision Transformer image tower (pre-LN, CLS token always present as in HF ViTModel) with
cls / gap / map pooling and an optional learned region embedding for the shared bone-crop tower.

Input: f32[B,H,W,C] in [0,1]; normalised inside the tower with `pixel_mean`/`pixel_std`.
Output: (pooled [B,width], last hidden states [B,1+N,width] after the final LayerNorm).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from wristmir_jax.models.layers import BlockSpec, Dtype, Encoder, Linear, MapHead, layer_norm, logical


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    image_size: int
    patch: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    channels: int = 1
    pool: str = "cls"  # cls | gap | map
    layer_norm_eps: float = 1e-6
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    num_regions: int = 0  # >0: learned region embedding added to every token (zero init)
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    remat: bool = False
    scan: bool = False
    deterministic: bool = True

    @property
    def grid(self) -> int:
        return self.image_size // self.patch

    @property
    def out_width(self) -> int:
        return self.width


def patchify(x, patch: int):
    """[B,H,W,C] -> [B, (H/p)*(W/p), p*p*C], each patch flattened in (row, col, channel) order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class ViT(nn.Module):
    spec: ViTSpec

    @nn.compact
    def __call__(self, x, region_ids=None):
        s = self.spec
        if x.shape[1] != s.image_size or x.shape[2] != s.image_size or x.shape[3] != s.channels:
            raise ValueError(f"ViT expects images [B,{s.image_size},{s.image_size},{s.channels}], "
                             f"got {tuple(x.shape)}")
        if s.image_size % s.patch:
            raise ValueError(f"image_size {s.image_size} is not a multiple of patch {s.patch}")
        x = (x.astype(jnp.float32) - s.pixel_mean) / s.pixel_std
        tokens = Linear(features=(s.width,), in_names=("patch",), out_names=("embed",),
                        dtype=s.dtype, kernel_init=nn.initializers.lecun_normal(),
                        name="patch_embed")(patchify(x.astype(s.dtype), s.patch))
        cls = self.param("cls", logical(nn.initializers.zeros, ("embed",)), (s.width,), jnp.float32)
        cls = jnp.broadcast_to(cls.astype(s.dtype), (tokens.shape[0], 1, s.width))
        tokens = jnp.concatenate([cls, tokens], axis=1)
        pos = self.param("pos_embed", logical(nn.initializers.normal(0.02), (None, "embed")),
                         (1 + s.grid * s.grid, s.width), jnp.float32)
        tokens = tokens + pos.astype(s.dtype)[None]
        if s.num_regions:
            if region_ids is None:
                raise ValueError("this tower has a region embedding: pass region_ids")
            reg = self.param("region_embed", logical(nn.initializers.zeros, ("region", "embed")),
                             (s.num_regions, s.width), jnp.float32)
            tokens = tokens + reg[region_ids].astype(s.dtype)[:, None, :]
        if s.dropout > 0.0 and not s.deterministic:
            tokens = nn.Dropout(s.dropout, deterministic=False)(tokens)
        block = BlockSpec(width=s.width, heads=s.heads, mlp_dim=s.mlp_dim,
                          layer_norm_eps=s.layer_norm_eps, post_ln=False, dropout=s.dropout,
                          dtype=s.dtype, deterministic=s.deterministic)
        h = Encoder(block, s.depth, remat=s.remat, scan=s.scan, name="encoder")(tokens)
        h = layer_norm(s.layer_norm_eps, s.dtype, "ln_final")(h)
        if s.pool == "cls":
            pooled = h[:, 0]
        elif s.pool == "gap":
            pooled = jnp.mean(h[:, 1:].astype(jnp.float32), axis=1).astype(s.dtype)
        elif s.pool == "map":
            pooled = MapHead(s.width, s.heads, s.mlp_dim, s.layer_norm_eps, s.dtype,
                             name="map_head")(h)
        else:
            raise ValueError(f"unknown ViT pool {s.pool!r} (cls|gap|map)")
        return pooled, h
