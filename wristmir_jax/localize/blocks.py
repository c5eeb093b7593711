"""Pieces both localizer stages share: the conv + GroupNorm + ReLU block, 2x upsampling,
and generalised IoU."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from wristmir_jax.models.conv import Conv


class ConvNormAct(nn.Module):
    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features, (3, 3), strides=self.strides, padding="SAME", use_bias=False)(x)
        x = nn.GroupNorm(num_groups=max(1, min(8, self.features // 8)))(x)
        return nn.relu(x)


def up2(x):
    """Nearest-neighbour 2x upsampling of [B, H, W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def giou(a, b):
    """Generalised IoU of boxes [..., 4] (x0, y0, x1, y1)."""
    area_a = jnp.maximum(a[..., 2] - a[..., 0], 0) * jnp.maximum(a[..., 3] - a[..., 1], 0)
    area_b = jnp.maximum(b[..., 2] - b[..., 0], 0) * jnp.maximum(b[..., 3] - b[..., 1], 0)
    iw = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0)
    ih = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0)
    inter = iw * ih
    union = area_a + area_b - inter
    iou = inter / jnp.maximum(union, 1e-6)
    cw = jnp.maximum(a[..., 2], b[..., 2]) - jnp.minimum(a[..., 0], b[..., 0])
    ch = jnp.maximum(a[..., 3], b[..., 3]) - jnp.minimum(a[..., 1], b[..., 1])
    hull = jnp.maximum(cw * ch, 1e-6)
    return iou - (hull - union) / hull
