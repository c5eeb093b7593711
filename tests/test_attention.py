"""Our heads-major attention equals jax.nn.dot_product_attention and an independent numpy
reference, with padding masks (a fully padded row included), in fp32 and bf16; the attention
module's fused projections equal separate ones (self- and cross-attention); the ViT and the text
tower give the same outputs with jax's attention swapped in."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wristmir_jax.models import layers
from wristmir_jax.models.layers import NEG_INF, MultiHeadAttention
from wristmir_jax.models.text import TextSpec, TextTower
from wristmir_jax.models.vit import ViT, ViTSpec


def numpy_attention(q, k, v, bias):
    """q [B,T,N,H], k, v [B,S,N,H], bias [B,1,1,S] -> [B,T,N,H] in float64."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    # The bias is added in float32 as on device: a fully padded row (all keys at NEG_INF) then
    # attends uniformly, as it did with the einsum attention.
    logits = (logits.astype(np.float32) + np.asarray(bias, np.float32)).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", w, v)


def padding_bias(b, s, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, s + 1, b)
    lengths[-1] = 0                                           # a fully padded caption
    mask = np.arange(s)[None] < lengths[:, None]
    return np.where(mask, 0.0, NEG_INF).astype(np.float32)[:, None, None, :], mask


def jax_attention(q, k, v, bias=None, mask=None, dtype=jnp.float32, dropout=None):
    """heads_major_attention's contract through jax.nn.dot_product_attention ([B,T,N,H])."""
    assert dropout is None
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, bias=None if bias is None else
                                       bias.astype(jnp.float32), mask=mask, implementation="xla")
    return jnp.swapaxes(out, 1, 2)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_heads_major_attention_equals_jax_and_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    b, t, n, h = 3, 7, 4, 8
    q, k, v = (rng.normal(size=(b, t, n, h)).astype(np.float32) for _ in range(3))
    bias, _ = padding_bias(b, t, 1)
    q16, k16, v16 = (jnp.asarray(x, dtype) for x in (q, k, v))
    heads_major = (jnp.swapaxes(x, 1, 2) for x in (q16, k16, v16))
    got = jnp.swapaxes(layers.heads_major_attention(*heads_major, jnp.asarray(bias), dtype=dtype),
                       1, 2)
    assert got.dtype == dtype
    jx = jax.nn.dot_product_attention(q16, k16, v16, bias=jnp.asarray(bias), implementation="xla")
    ref = numpy_attention(*(np.asarray(jnp.asarray(x, jnp.float32)) for x in (q16, k16, v16)), bias)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, atol=tol, rtol=tol)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(jx, np.float32),
                               atol=tol, rtol=tol)


def run_both(module, *inputs):
    """Outputs of `module` through heads_major_attention and through jax's attention."""
    params = module.init(jax.random.PRNGKey(0), *inputs)
    new = module.apply(params, *inputs)
    orig = layers.heads_major_attention
    layers.heads_major_attention = jax_attention
    try:
        old = module.apply(params, *inputs)
    finally:
        layers.heads_major_attention = orig
    return new, old


def test_multihead_attention_module_matches_numpy_with_mask():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 6, 16)), jnp.float32)
    bias, mask = padding_bias(3, 6, 3)
    mha = MultiHeadAttention(width=16, heads=4)
    params = mha.init(jax.random.PRNGKey(1), x, x, jnp.asarray(bias))
    out = mha.apply(params, x, x, jnp.asarray(bias))
    p = jax.tree.map(np.asarray, nn.meta.unbox(params["params"]))
    proj = lambda name: np.einsum("bse,enh->bsnh", np.asarray(x), p[name]["kernel"]) + p[name]["bias"]
    att = numpy_attention(proj("query"), proj("key"), proj("value"), bias)
    ref = np.einsum("bsnh,nhe->bse", att, p["out"]["kernel"]) + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)
    # a bool mask (True = attend) gives the same outputs on rows with at least one real key
    out_m = mha.apply(params, x, x, jnp.asarray(mask)[:, None, None, :])
    np.testing.assert_allclose(np.asarray(out_m)[:2], ref[:2], atol=1e-5, rtol=1e-5)


def test_cross_attention_projects_queries_and_keys_separately():
    """A probe attending over tokens (MapHead): q from the probe, k and v from the tokens."""
    rng = np.random.default_rng(3)
    probe = jnp.asarray(rng.normal(size=(2, 1, 16)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
    mha = MultiHeadAttention(width=16, heads=4)
    params = mha.init(jax.random.PRNGKey(1), probe, x)
    out = mha.apply(params, probe, x)
    p = jax.tree.map(np.asarray, nn.meta.unbox(params["params"]))
    proj = lambda name, inp: (np.einsum("bse,enh->bsnh", np.asarray(inp), p[name]["kernel"])
                              + p[name]["bias"])
    att = numpy_attention(proj("query", probe), proj("key", x), proj("value", x),
                          np.zeros((2, 1, 1, 5), np.float32))
    ref = np.einsum("bsnh,nhe->bse", att, p["out"]["kernel"]) + p["out"]["bias"]
    assert out.shape == (2, 1, 16)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_text_tower_and_vit_equal_jax_attention(dtype, tol):
    rng = np.random.default_rng(4)
    text = TextTower(TextSpec(vocab_size=50, width=32, depth=2, heads=4, mlp_dim=64, max_len=10,
                              dtype=dtype))
    tokens = jnp.asarray(rng.integers(0, 50, (4, 10)), jnp.int32)
    _, mask = padding_bias(4, 10, 5)
    (p_new, h_new), (p_old, h_old) = run_both(text, tokens, jnp.asarray(mask, jnp.int32))
    np.testing.assert_allclose(np.asarray(h_new, np.float32), np.asarray(h_old, np.float32),
                               atol=tol, rtol=tol)
    vit = ViT(ViTSpec(image_size=16, patch=4, width=32, depth=2, heads=4, mlp_dim=64, dtype=dtype))
    img = jnp.asarray(rng.uniform(size=(2, 16, 16, 1)), jnp.float32)
    (v_new, _), (v_old, _) = run_both(vit, img)
    np.testing.assert_allclose(np.asarray(v_new, np.float32), np.asarray(v_old, np.float32),
                               atol=tol, rtol=tol)
    assert float(jnp.abs(v_new.astype(jnp.float32)).max()) > 0.0
