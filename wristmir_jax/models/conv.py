"""CPU-fast gradients for the image towers' convolutions and max-pooling (XLA:CPU).

On some CPUs XLA:CPU computes a convolution's weight gradient (a convolution over the batch and
spatial axes with a tiny output) at a few GFLOP/s while the forward pass and the input gradient
run near the matmul peak. On the 2-core AMD EPYC (AVX2) dev machine of 2026-12-02, for a 3x3,
64 -> 64 channel convolution on 96 x 32 x 32 inputs: forward 65 ms, input gradient 132 ms,
weight gradient 2769 ms (5 GFLOP/s); the whole cpu_demo train step took 3.0 s instead of the
~1 s measured on the machine of the previous days. `conv_general_dilated` below has the same
signature as `jax.lax.conv_general_dilated` (pass it to `flax.linen.Conv`): its forward pass and
input gradient are XLA's own, and its weight gradient is one matmul per kernel tap
(dW[i, j] = X_shifted(i, j)^T dY), 9x faster on that machine. The two agree to float32 rounding
(tests/test_conv.py).

It is used on the CPU backend only (`jax.default_backend() == "cpu"` when the model is traced):
GPU and TPU convolution gradients are fast as they are. Cases it does not cover (dilation,
grouped convolutions, layouts other than NHWC/HWIO) fall back to XLA's path. On a VM whose XLA
weight gradient is not slow (2026-12-03: 294 ms for the layer above) the matmuls still cost no
more in the whole step (cpu_demo 0.75 s with them, 0.83 s with XLA's), although XLA's is faster
for some layers timed alone; choosing per layer from such timings (tried) did not speed the step
and added ~10 s of timing to each compilation, so the matmul path is used for every shape.

`max_pool` does the same for the ResNet stem's 3x3/2 max-pool, whose XLA:CPU gradient
(select-and-scatter) is the slow part.
"""

from __future__ import annotations

import functools
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

_DIMS = ("NHWC", "HWIO", "NHWC")


def _dims_are_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _DIMS)
    return tuple(dimension_numbers) == _DIMS


def _forward(x, w, strides, pads, precision):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DIMS,
                                    precision=precision)


def window_slices(x, window, strides, pads, pad_value=0.0):
    """x (NHWC) padded by `pads` with `pad_value`; for each window offset (i, j), the strided
    slice [N, Ho, Wo, C] whose (h, w) entry is the padded input at (i + sh * h, j + sw * w)."""
    kh, kw = window
    sh, sw = strides
    (plo_h, phi_h), (plo_w, phi_w) = pads
    # Negative padding (possible with explicit pads) crops; lax.pad takes both signs.
    xp = lax.pad(x, jnp.array(pad_value, x.dtype),
                 ((0, 0, 0), (plo_h, phi_h, 0), (plo_w, phi_w, 0), (0, 0, 0)))
    n, hp, wp, c = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    return [[lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c),
                       (1, sh, sw, 1)) for j in range(kw)] for i in range(kh)]


def weight_grad(x, dy, kernel_hw, strides, pads, precision=None):
    """dL/dW of a NHWC/HWIO convolution (no dilation, one group) as one matmul per kernel tap."""
    n, ho, wo, co = dy.shape
    g = dy.reshape(n * ho * wo, co)
    return jnp.stack([
        jnp.stack([jnp.dot(xs.reshape(n * ho * wo, -1).T, g, precision=precision,
                           preferred_element_type=jnp.float32) for xs in row])
        for row in window_slices(x, kernel_hw, strides, pads)])


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
    return _forward(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
    return _forward(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, res, dy):
    x, w = res
    _, input_vjp = jax.vjp(lambda x_: _forward(x_, w, strides, pads, precision), x)
    (dx,) = input_vjp(dy)
    dw = weight_grad(x, dy, w.shape[:2], strides, pads, precision).astype(w.dtype)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated` with a matmul weight gradient on the CPU backend."""
    plain = (jax.default_backend() == "cpu" and lhs.ndim == 4 and _dims_are_nhwc(dimension_numbers)
             and feature_group_count == 1 and batch_group_count == 1
             and preferred_element_type is None
             and all(d == 1 for d in (lhs_dilation or (1, 1)))
             and all(d == 1 for d in (rhs_dilation or (1, 1))))
    if not plain:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, batch_group_count=batch_group_count,
            precision=precision, preferred_element_type=preferred_element_type)
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    else:
        pads = padding
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    return _conv(lhs, rhs, strides, pads, precision)


def Conv(*args, **kwargs):  # noqa: N802 (a drop-in for the flax.linen.Conv class)
    """`flax.linen.Conv` with this module's convolution (same parameters and auto-names)."""
    kwargs.setdefault("conv_general_dilated", conv_general_dilated)
    return nn.Conv(*args, **kwargs)


def max_pool(x, window: tuple[int, int], strides: tuple[int, int], padding="VALID"):
    """`flax.linen.max_pool` on NHWC; on the CPU backend, a maximum over shifted strided slices.

    XLA:CPU's gradient of a windowed max (select-and-scatter) is slow: for the 3x3/2 pool of the
    cpu_demo image tower (32 x 64 x 64 x 24), 95 ms against 12 ms for this form's gradient. The
    maximum of the window's kh * kw shifted slices has the same value and an elementwise
    gradient (a tie shares its gradient equally between the tied inputs instead of sending it all
    to one of them).
    """
    if jax.default_backend() != "cpu" or x.ndim != 4:
        return nn.max_pool(x, window, strides=strides, padding=padding)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
    taps = [xs for row in window_slices(x, window, strides, padding, -jnp.inf) for xs in row]
    return functools.reduce(jnp.maximum, taps)
