"""Small ResNet image tower with GroupNorm (no batch statistics, so apply stays a pure function
of params and inputs), a pooling choice and an optional learned region embedding added to the
pooled feature (zero init) for the shared bone-crop tower.

Pooling: "gap" (mean), "max", or "gem" (generalised mean, Radenovic et al., the image-retrieval
standard; learned exponent p, init 3). A fracture is a few cells of the final feature map, so a
mean dilutes it by the map's area while max/GeM keep it (on the demo's distal-radius crops a
supervised probe reached test AUROC 0.60 with gap vs 0.73-0.74 with max/GeM after 300 steps).

Input normalisation: "fixed" ((x - pixel_mean) / pixel_std) or "per_image" (each input
standardised by its own mean and std, then scaled by pixel_std: exposure and soft-tissue
brightness differ between radiographs far more than the fracture changes the pixels).

Bone conditioning (shared crop tower, `film=True`): a per-bone scale and shift (FiLM, Perez et
al. 2018; zero init, so training starts from the unconditioned tower) on every block's first
normalised activation. The pooled-feature region embedding alone is a constant offset before a
linear projection, so it cannot change which features fire; with FiLM the convolutions can look
for an ulnar fracture in an ulna crop and discount the overlapping radius of a lateral view.

Input: f32[B,H,W,C] in [0,1], normalised inside. Output: (pooled [B,widths[-1]], feature map);
with `spatial_stage` >= 0 the second output is (last feature map, that stage's feature map), a
finer grid for word-location alignment (the last map of a 128 px image is 4 x 4).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from wristmir_jax.models.conv import Conv, max_pool
from wristmir_jax.models.layers import Dtype, logical


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    stages: tuple[int, ...] = (1, 1, 1, 1)  # basic blocks per stage
    widths: tuple[int, ...] = (32, 64, 128, 256)
    stem_stride: int = 1  # 1: 3x3 conv; 2: 7x7/2 conv; 4: 7x7/2 conv + 3x3/2 max-pool
    groups: int = 8  # GroupNorm groups (reduced to a divisor of the channel count)
    channels: int = 1
    pixel_mean: float = 0.5
    pixel_std: float = 0.5
    pool: str = "gap"  # gap | max | gem
    input_norm: str = "fixed"  # fixed | per_image
    num_regions: int = 0
    film: bool = False  # per-bone FiLM in every block (needs num_regions)
    spatial_stage: int = -1  # >= 0: also return this stage's (finer) feature map
    dtype: Dtype = jnp.float32
    remat: bool = False
    deterministic: bool = True

    @property
    def out_width(self) -> int:
        return self.widths[-1]


def _conv(features, kernel, stride, dtype, name):
    return Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                kernel_init=logical(nn.initializers.he_normal(),
                                    (None, None, "conv_in", "conv_out")), name=name)


def _norm(ch, groups, dtype, name, zero=False):
    g = groups
    while ch % g:
        g -= 1
    return nn.GroupNorm(num_groups=g, dtype=dtype, param_dtype=jnp.float32,
                        scale_init=logical(nn.initializers.zeros if zero else nn.initializers.ones,
                                           ("conv_out",)),
                        bias_init=logical(nn.initializers.zeros, ("conv_out",)), name=name)


class BasicBlock(nn.Module):
    features: int
    stride: int
    groups: int
    dtype: Dtype

    @nn.compact
    def __call__(self, x, film=None):
        y = _conv(self.features, 3, self.stride, self.dtype, "conv1")(x)
        y = _norm(self.features, self.groups, self.dtype, "norm1")(y)
        if film is not None:  # [B, 2, C]: (scale - 1, shift) of this crop's bone
            scale, shift = film[:, None, None, 0], film[:, None, None, 1]
            y = y * (1.0 + scale).astype(y.dtype) + shift.astype(y.dtype)
        y = nn.relu(y)
        y = _conv(self.features, 3, 1, self.dtype, "conv2")(y)
        y = _norm(self.features, self.groups, self.dtype, "norm2", zero=True)(y)
        if x.shape[-1] != self.features or self.stride != 1:
            x = _conv(self.features, 1, self.stride, self.dtype, "proj")(x)
            x = _norm(self.features, self.groups, self.dtype, "proj_norm")(x)
        return nn.relu(x + y)


class ResNet(nn.Module):
    spec: ResNetSpec

    @nn.compact
    def __call__(self, x, region_ids=None):
        s = self.spec
        if x.shape[-1] != s.channels:
            raise ValueError(f"ResNet expects {s.channels} channel(s), got {tuple(x.shape)}")
        if s.num_regions and region_ids is None:
            raise ValueError("this tower has a region embedding: pass region_ids")
        if s.film and not s.num_regions:
            raise ValueError("resnet film needs num_regions (a shared tower with region embedding)")
        x = x.astype(jnp.float32)
        if s.input_norm == "fixed":
            x = (x - s.pixel_mean) / s.pixel_std
        elif s.input_norm == "per_image":
            mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
            std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
            x = (x - mean) / (std + 1e-3) * (0.5 / s.pixel_std)
        else:
            raise ValueError(f"resnet input_norm must be fixed or per_image, got {s.input_norm!r}")
        x = x.astype(s.dtype)
        if s.stem_stride == 1:
            x = _conv(s.widths[0], 3, 1, s.dtype, "stem")(x)
        elif s.stem_stride in (2, 4):
            x = _conv(s.widths[0], 7, 2, s.dtype, "stem")(x)
        else:
            raise ValueError(f"resnet stem_stride must be 1, 2 or 4, got {s.stem_stride}")
        x = nn.relu(_norm(s.widths[0], s.groups, s.dtype, "stem_norm")(x))
        if s.stem_stride == 4:
            x = max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        block = nn.remat(BasicBlock) if s.remat else BasicBlock
        fine = None
        for i, (n, w) in enumerate(zip(s.stages, s.widths)):
            for j in range(n):
                film = None
                if s.film:
                    table = self.param(f"film_stage{i}_block{j}",
                                       logical(nn.initializers.zeros, ("region", None, "conv_out")),
                                       (s.num_regions, 2, w), jnp.float32)
                    film = table[region_ids]
                x = block(w, 2 if (i > 0 and j == 0) else 1, s.groups, s.dtype,
                          name=f"stage{i}_block{j}")(x, film)
            if i == s.spatial_stage:
                fine = x
        pooled = _pool(self, s.pool, x.astype(jnp.float32))
        if s.num_regions:
            reg = self.param("region_embed", logical(nn.initializers.zeros, ("region", "conv_out")),
                             (s.num_regions, s.out_width), jnp.float32)
            pooled = pooled + reg[region_ids]
        return pooled.astype(s.dtype), (x if fine is None else (x, fine))


def _pool(module: nn.Module, kind: str, x):
    """[B,h,w,C] (post-ReLU, >= 0) -> [B,C]."""
    if kind == "gap":
        return jnp.mean(x, axis=(1, 2))
    if kind == "max":
        return jnp.max(x, axis=(1, 2))
    if kind == "gem":
        p = module.param("gem_p", logical(nn.initializers.constant(3.0), ()), (), jnp.float32)
        p = jnp.clip(p, 1.0, 8.0)
        return jnp.mean(jnp.maximum(x, 1e-6) ** p, axis=(1, 2)) ** (1.0 / p)
    raise ValueError(f"resnet pool must be gap, max or gem, got {kind!r}")
