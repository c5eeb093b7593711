"""models/conv.py: the matmul weight gradient equals XLA's convolution gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from wristmir_jax.models.conv import Conv, conv_general_dilated, max_pool

DIMS = ("NHWC", "HWIO", "NHWC")

CASES = [  # (input hw, channels in/out, kernel, stride, padding)
    ((9, 9), (3, 5), (3, 3), (1, 1), "SAME"),
    ((9, 8), (3, 5), (3, 3), (2, 2), "SAME"),
    ((16, 16), (1, 4), (7, 7), (2, 2), "SAME"),
    ((8, 8), (4, 6), (1, 1), (2, 2), "SAME"),
    ((16, 12), (2, 3), (4, 4), (4, 4), "VALID"),
    ((10, 10), (2, 3), (3, 3), (1, 2), ((2, 0), (1, 3))),
]


@pytest.mark.parametrize("hw,ch,k,s,pad", CASES)
def test_gradients_match_xla(hw, ch, k, s, pad):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, *hw, ch[0])), jnp.float32)
    w = jnp.asarray(rng.standard_normal((*k, *ch)), jnp.float32)

    def loss(conv, x, w):
        y = conv(x, w, s, pad, dimension_numbers=DIMS)
        return jnp.sum(jnp.sin(y))  # a non-uniform upstream gradient

    y_ref = lax.conv_general_dilated(x, w, s, pad, dimension_numbers=DIMS)
    y = conv_general_dilated(x, w, s, pad, dimension_numbers=DIMS)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    gx_ref, gw_ref = jax.grad(loss, argnums=(1, 2))(lax.conv_general_dilated, x, w)
    gx, gw = jax.grad(loss, argnums=(1, 2))(conv_general_dilated, x, w)
    np.testing.assert_allclose(gx, gx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, gw_ref, rtol=1e-4, atol=1e-4)


def test_cpu_uses_the_custom_gradient_and_flax_params_are_unchanged():
    x = jnp.ones((2, 8, 8, 3))
    ours, ref = Conv(4, (3, 3), padding="SAME"), nn.Conv(4, (3, 3), padding="SAME")
    params = ref.init(jax.random.PRNGKey(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == \
        jax.tree.map(jnp.shape, params)
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-6)
    assert "custom_vjp_call" in str(jax.make_jaxpr(lambda p: ours.apply(p, x))(params))
    # dilated convolutions are outside the fast path and take XLA's own
    dil = Conv(4, (3, 3), kernel_dilation=2, padding="SAME")
    jaxpr = str(jax.make_jaxpr(lambda p: dil.apply(p, x))(dil.init(jax.random.PRNGKey(0), x)))
    assert "custom_vjp_call" not in jaxpr


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 9, 9, 3), (3, 3), (2, 2), "SAME"),
    ((2, 8, 7, 2), (3, 3), (2, 2), "VALID"),
    ((1, 6, 6, 1), (2, 2), (1, 1), ((1, 0), (0, 1))),
])
def test_max_pool_matches_flax_value_and_gradient(shape, window, strides, padding):
    # Distinct values: no ties, so select-and-scatter and the elementwise maximum agree exactly.
    x = jnp.asarray(np.random.default_rng(1).permutation(np.prod(shape)).reshape(shape), jnp.float32)
    ref = nn.max_pool(x, window, strides=strides, padding=padding)
    np.testing.assert_array_equal(max_pool(x, window, strides, padding), ref)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, window, strides, padding))))(x)
    g = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool(x, window, strides, padding))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)
    assert "select_and_scatter" not in str(jax.make_jaxpr(
        jax.grad(lambda x: jnp.sum(max_pool(x, window, strides, padding))))(x))
