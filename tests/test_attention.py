"""Our heads-major attention equals jax.nn.dot_product_attention and an independent numpy
reference, with padding masks (a fully padded row included), in fp32 and bf16; the attention
module's fused projections equal separate ones (self- and cross-attention); the ViT and the text
tower give the same outputs with jax's attention swapped in; the hand-written attention gradient
equals PyTorch's and JAX's autodiff, alone and through a scanned, rematerialised ViT."""

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


def torch_attention_grads(q, k, v, bias, mask, d_out):
    """Gradients of sum(d_out * attention(q, k, v)) with respect to q, k, v and the bias by
    PyTorch's scaled_dot_product_attention (heads-major inputs, float64)."""
    torch = pytest.importorskip("torch")
    t = [torch.tensor(np.asarray(x, np.float64), requires_grad=True) for x in (q, k, v, bias)]
    attn_mask = t[3] if mask is None else t[3].masked_fill(~torch.tensor(np.asarray(mask)),
                                                          float(NEG_INF))
    out = torch.nn.functional.scaled_dot_product_attention(*t[:3], attn_mask=attn_mask)
    (out * torch.tensor(np.asarray(d_out, np.float64))).sum().backward()
    return [x.grad.numpy() for x in t]


@pytest.mark.parametrize("use_mask", [False, True])
def test_hand_written_attention_gradient_equals_torch_and_autodiff(use_mask):
    """`heads_major_attention`'s custom backward against PyTorch's attention backward (float64)
    and against JAX's own differentiation of the same forward, for q, k, v and a padding bias
    that broadcasts over heads and queries; with a bool mask (fully masked row included), whose
    masked logits take no gradient."""
    rng = np.random.default_rng(5)
    b, n, t, s, h = 3, 2, 5, 6, 8
    q = rng.normal(size=(b, n, t, h)).astype(np.float32)
    k, v = (rng.normal(size=(b, n, s, h)).astype(np.float32) for _ in range(2))
    d_out = rng.normal(size=(b, n, t, h)).astype(np.float32)
    bias, mask = padding_bias(b, s, 6)
    bias = bias + rng.normal(size=bias.shape).astype(np.float32) * (bias == 0)
    mask = mask[:, None, None, :] if use_mask else None

    def grads(attn):
        loss = lambda q, k, v, bias: jnp.sum(jnp.asarray(d_out) * attn(
            q, k, v, bias, None if mask is None else jnp.asarray(mask)))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(*map(jnp.asarray, (q, k, v, bias)))

    got = grads(layers.heads_major_attention)
    auto = grads(layers.attention_autodiff)
    ref = torch_attention_grads(q, k, v, bias, mask, d_out)
    # The last caption is all padding: in float32 its logits all round to NEG_INF (uniform
    # weights), in torch's float64 they keep their differences; compare the others with torch.
    rows = slice(0, b - 1)
    for name, g, a, r in zip(("q", "k", "v", "bias"), got, auto, ref):
        assert g.shape == a.shape == r.shape, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(a), atol=2e-5, rtol=1e-4,
                                   err_msg=name)
        np.testing.assert_allclose(np.asarray(g)[rows], r[rows], atol=2e-5, rtol=1e-4,
                                   err_msg=name)
        assert float(np.abs(r[rows]).max()) > 1e-3, name       # the comparison has signal
    if mask is not None:                                        # a fully masked row: no NaN,
        assert np.isfinite(np.asarray(got[0])).all()           # and no gradient to its keys
        np.testing.assert_array_equal(np.asarray(got[1])[-1], 0.0)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_block_gradients_with_hand_written_attention_equal_autodiff(monkeypatch, dtype, tol):
    """A whole ViT (scanned, rematerialised blocks) trains with the same parameter gradients
    whichever attention gradient it uses."""
    vit = ViT(ViTSpec(image_size=16, patch=4, width=32, depth=2, heads=4, mlp_dim=64, dtype=dtype,
                      remat=True, scan=True))
    img = jnp.asarray(np.random.default_rng(7).uniform(size=(2, 16, 16, 1)), jnp.float32)
    params = vit.init(jax.random.PRNGKey(0), img)
    w = jnp.asarray(np.random.default_rng(8).normal(size=(2, 17, 32)), jnp.float32)

    def grads():
        loss = lambda p: jnp.sum(w * vit.apply(p, img)[1].astype(jnp.float32))
        return jax.jit(jax.grad(loss))(params)

    got = grads()
    monkeypatch.setattr(layers, "heads_major_attention", layers.attention_autodiff)
    ref = grads()
    leaves = jax.tree_util.tree_flatten_with_path(ref)[0]
    assert len(leaves) == len(jax.tree.leaves(got)) > 0
    top = max(float(jnp.abs(x.astype(jnp.float32)).max()) for x in jax.tree.leaves(got))
    for (path, r), g in zip(leaves, jax.tree.leaves(got)):
        name = jax.tree_util.keystr(path)
        r, g = np.asarray(r, np.float32), np.asarray(g, np.float32)
        if "['key']['bias']" in name:
            # Zero up to rounding: softmax ignores a logit shift shared by all keys of a row.
            assert np.abs(g).max() <= 1e-4 * top, name
            continue
        scale = float(np.abs(r).max())
        assert scale > 0.0, name
        np.testing.assert_allclose(g / scale, r / scale, atol=tol, err_msg=name)
