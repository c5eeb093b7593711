"""Encoders: shapes and dtypes per tower, pure-function behaviour, jit == no-jit, logical axis
names on every parameter, bf16 / remat / scan / per-bone variants, masking and region entry
points."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wristmir_jax.models import PRESETS, build, model_config
from wristmir_jax.models.params import count_params, is_axes_leaf, stack_layers, unstack_layers
from wristmir_jax.models.resnet import ResNet, ResNetSpec
from wristmir_jax.models.text import TextSpec, TextTower
from wristmir_jax.models.vit import ViT, ViTSpec

ALLOWED_AXES = {"batch", "embed", "mlp", "heads", "kv", "vocab", "patch", "conv_in", "conv_out",
                "region", "proj", "layers", None}
EMB_KEYS = {"global_img", "global_txt", "region_img", "region_txt", "global_scale", "global_bias",
            "local_scale", "local_bias"}


def make_batch(model, b=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    batch = model.dummy_batch(b, length)
    batch["image"] = rng.random(batch["image"].shape, dtype=np.float32)
    batch["crops"] = rng.random(batch["crops"].shape, dtype=np.float32)
    vocab = int(model.cfg.text.vocab_size)
    batch["global_tokens"] = rng.integers(1, vocab, batch["global_tokens"].shape).astype(np.int32)
    batch["region_tokens"] = rng.integers(1, vocab, batch["region_tokens"].shape).astype(np.int32)
    lengths = rng.integers(3, length + 1, (b,))
    batch["global_mask"] = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    rl = rng.integers(3, length + 1, (b, 3))
    batch["region_mask"] = (np.arange(length)[None, None] < rl[..., None]).astype(np.int32)
    return batch


def cfg_with(name="tiny", **kw):
    cfg = model_config(name)
    for k, v in kw.items():
        node = cfg
        *path, leaf = k.split("__")
        for p in path:
            node = node[p]
        node[leaf] = v
    return cfg


@pytest.fixture(scope="module")
def tiny():
    model = build(model_config("tiny"))
    batch = make_batch(model)
    params, axes = model.init(jax.random.key(0), batch)
    return model, params, axes, batch


@pytest.fixture(scope="module")
def tiny_ref(tiny):
    """jit(encode) of the tiny model on its batch (compiled once for the module)."""
    model, params, _, batch = tiny
    return jax.jit(model.encode)(params, batch)


def entry_points(model):
    """All retrieval entry points in one jitted function (one compile per model)."""

    def run(params, batch, region_index):
        out = {"image": model.encode_image(params, batch["image"]),
               "crops": model.encode_crops(params, batch["crops"]),
               "global_text": model.encode_global_text(params, batch["global_tokens"],
                                                       batch["global_mask"])}
        for r in range(3):
            out[f"crop{r}"] = model.encode_crop(params, batch["crops"][:, r], region_index + r)
            out[f"region_text{r}"] = model.encode_region_text(
                params, batch["region_tokens"][:, r], batch["region_mask"][:, r], region_index + r)
        return out

    return jax.jit(run)


@pytest.fixture(scope="module")
def tiny_entries(tiny):
    return entry_points(tiny[0])


def assert_embeddings(emb, b, d):
    assert set(emb) == EMB_KEYS
    for k, shape in (("global_img", (b, d)), ("global_txt", (b, d)), ("region_img", (b, 3, d)),
                     ("region_txt", (b, 3, d))):
        assert emb[k].shape == shape and emb[k].dtype == jnp.float32, k
        np.testing.assert_allclose(np.linalg.norm(np.asarray(emb[k]), axis=-1), 1.0, atol=1e-5)
    for k in ("global_scale", "global_bias", "local_scale", "local_bias"):
        assert emb[k].shape == () and emb[k].dtype == jnp.float32, k


def test_encode_shapes_scales_and_purity(tiny, tiny_ref):
    model, params, _, batch = tiny
    emb = model.encode(params, batch)
    assert_embeddings(emb, 2, 32)
    np.testing.assert_allclose(float(emb["global_scale"]), 1 / 0.07, rtol=1e-5)
    np.testing.assert_allclose(float(emb["local_bias"]), -10.0)
    again = model.encode(params, batch)
    jitted = tiny_ref
    for k in emb:
        np.testing.assert_array_equal(np.asarray(emb[k]), np.asarray(again[k]))
        np.testing.assert_allclose(np.asarray(emb[k]), np.asarray(jitted[k]), atol=2e-6)
    # Same seed, same params; different seed, different params.
    p2, _ = model.init(jax.random.key(0), batch)
    p3, _ = model.init(jax.random.key(1), batch)
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(p2), jax.tree.leaves(p3))
    assert all(np.array_equal(a, b) for a, b, _ in leaves)
    assert not all(np.array_equal(a, c) for a, _, c in
                   zip(jax.tree.leaves(params), jax.tree.leaves(p2), jax.tree.leaves(p3)))


def test_params_fp32_and_logical_axes_on_every_parameter(tiny):
    model, params, axes, _ = tiny
    p_leaves, p_def = jax.tree.flatten(params)
    a_leaves, a_def = jax.tree.flatten(axes, is_leaf=is_axes_leaf)
    assert p_def == a_def, "logical_axes must mirror params"
    for p, a in zip(p_leaves, a_leaves):
        assert p.dtype == jnp.float32
        assert is_axes_leaf(a) and len(a) == p.ndim and set(a) <= ALLOWED_AXES, (a, p.shape)
    names = {n for a in a_leaves for n in a}
    assert {"embed", "mlp", "heads", "kv", "vocab", "patch", "region", "proj"} <= names
    assert axes["global_log_scale"] == () and params["global_log_scale"].shape == ()
    assert axes["text"]["word_embed"] == ("vocab", "embed")
    assert count_params(params) == sum(x.size for x in p_leaves)


def test_logical_axes_feed_named_sharding(tiny, tiny_ref):
    """Every logical spec is a valid PartitionSpec for its parameter on a 4x2 mesh."""
    model, params, axes, batch = tiny
    mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))
    specs = jax.tree.map(lambda a: nn.logical_to_mesh_axes(a, rules), axes, is_leaf=is_axes_leaf)
    qkv = specs["text"]["encoder"]["layers_0"]["attn"]["query"]["kernel"]
    assert tuple(qkv) == ("fsdp", "tensor", None)
    placed = jax.tree.map(lambda p, s: jax.device_put(p, jax.sharding.NamedSharding(mesh, s)),
                          params, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    emb = jax.jit(model.encode)(placed, batch)
    ref = tiny_ref
    np.testing.assert_allclose(np.asarray(emb["global_txt"]), np.asarray(ref["global_txt"]),
                               atol=2e-6)


def test_retrieval_entry_points_match_encode(tiny, tiny_ref, tiny_entries):
    model, params, _, batch = tiny
    emb = tiny_ref
    out = tiny_entries(params, batch, np.zeros((2,), np.int32))
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    close(out["image"], emb["global_img"])
    close(out["crops"], emb["region_img"])
    close(out["global_text"], emb["global_txt"])
    for r in range(3):
        close(out[f"crop{r}"], emb["region_img"][:, r])
        close(out[f"region_text{r}"], emb["region_txt"][:, r])


def test_region_embedding_changes_crops_and_region_text_only(tiny, tiny_entries):
    model, params, _, batch = tiny
    p = dict(params, local_image=dict(params["local_image"]), text=dict(params["text"]))
    key = jax.random.key(3)
    p["local_image"]["region_embed"] = jax.random.normal(key, p["local_image"]["region_embed"].shape)
    p["text"]["region_embed"] = jax.random.normal(key, p["text"]["region_embed"].shape)
    same = dict(batch)
    same["crops"] = np.repeat(batch["crops"][:, :1], 3, axis=1)
    same["region_tokens"] = np.repeat(batch["region_tokens"][:, :1], 3, axis=1)
    same["region_mask"] = np.repeat(batch["region_mask"][:, :1], 3, axis=1)
    zeros = np.zeros((2,), np.int32)
    before = tiny_entries(params, same, zeros)
    after = tiny_entries(p, same, zeros)
    # Zero-initialised region embeddings: identical inputs give identical embeddings per bone.
    np.testing.assert_allclose(np.asarray(before["crop0"]), np.asarray(before["crop1"]), atol=1e-6)
    # Learned (here random) ones tell the bones apart, on both sides; global text is unaffected.
    assert float(jnp.max(jnp.abs(after["crop0"] - after["crop1"]))) > 1e-3
    assert float(jnp.max(jnp.abs(after["region_text0"] - after["region_text2"]))) > 1e-3
    np.testing.assert_allclose(np.asarray(after["global_text"]), np.asarray(before["global_text"]),
                               atol=1e-6)


def test_padding_and_batch_independence(tiny, tiny_entries):
    """Padded positions (mask 0) and other examples in the batch do not change an embedding."""
    model, params, _, batch = tiny
    zeros = np.zeros((2,), np.int32)
    base = tiny_entries(params, batch, zeros)
    noisy = dict(batch)
    noisy["global_tokens"] = np.where(batch["global_mask"] > 0, batch["global_tokens"], 7)
    noisy["region_tokens"] = np.where(batch["region_mask"] > 0, batch["region_tokens"], 9)
    out = tiny_entries(params, noisy, zeros)
    for k in ("global_text", "region_text0", "region_text1", "region_text2"):
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(base[k]), atol=1e-5)
    swapped = jax.tree.map(lambda x: x[::-1], batch)
    out = tiny_entries(params, swapped, zeros)
    for k in base:
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(base[k])[::-1], atol=1e-5)


def _init_apply(module, *inputs):
    @jax.jit
    def run(key):
        v = module.init(key, *inputs)
        return v, module.apply(v, *inputs)
    return run(jax.random.key(0))


@pytest.mark.parametrize("pool", ["gap", "map"])
def test_vit_tower_shapes(pool):
    spec = ViTSpec(image_size=32, patch=8, width=32, depth=2, heads=4, mlp_dim=64, pool=pool)
    x = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    v, (pooled, hidden) = _init_apply(ViT(spec), x)
    assert pooled.shape == (3, 32) and hidden.shape == (3, 1 + 16, 32)
    assert pooled.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(pooled)))
    if pool == "gap":
        np.testing.assert_allclose(np.asarray(pooled), np.asarray(hidden[:, 1:].mean(1)), atol=1e-6)
    else:
        assert nn.unbox(v)["params"]["map_head"]["probe"].shape == (1, 32)
    with pytest.raises(ValueError, match="expects images"):
        ViT(spec).apply(v, x[:, :16])


def test_resnet_tower_shapes():
    spec = ResNetSpec(stages=(1, 2), widths=(8, 16), stem_stride=4, groups=4)
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    v, (pooled, fmap) = _init_apply(ResNet(spec), x)
    assert pooled.shape == (2, 16) and fmap.shape == (2, 8, 8, 16) and pooled.dtype == jnp.float32
    assert set(v) == {"params"}  # GroupNorm: no batch statistics, apply is pure
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(fmap.mean((1, 2))), atol=1e-6)


def test_resnet_pooling_choices_and_per_image_normalisation():
    x = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    base = dict(stages=(1, 1), widths=(8, 16), stem_stride=2, groups=4)
    _, (mx, fmap) = _init_apply(ResNet(ResNetSpec(pool="max", **base)), x)
    np.testing.assert_allclose(np.asarray(mx), np.asarray(fmap).max((1, 2)), atol=1e-6)
    gem = ResNet(ResNetSpec(pool="gem", **base))
    v = gem.init(jax.random.PRNGKey(0), x)
    assert float(nn.unbox(v["params"]["gem_p"])) == 3.0
    pooled, f = gem.apply(v, x)
    f = np.maximum(np.asarray(f, np.float64), 1e-6)
    np.testing.assert_allclose(np.asarray(pooled), np.mean(f ** 3, (1, 2)) ** (1 / 3), rtol=1e-4)
    # per-image standardisation: the tower no longer sees exposure (gain and offset) changes
    net = ResNet(ResNetSpec(pool="max", input_norm="per_image", **base))
    v = net.init(jax.random.PRNGKey(0), x)
    a, _ = net.apply(v, x)
    b, _ = net.apply(v, 0.6 * x + 0.25)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-2, atol=1e-3)
    fixed = ResNet(ResNetSpec(pool="max", **base))
    vf = fixed.init(jax.random.PRNGKey(0), x)
    assert np.abs(np.asarray(fixed.apply(vf, x)[0]) - np.asarray(fixed.apply(vf, 0.6 * x + 0.25)[0])).max() > 1e-2
    with pytest.raises(ValueError, match="pool"):
        ResNet(ResNetSpec(pool="mean", **base)).init(jax.random.PRNGKey(0), x)


def test_resnet_film_conditions_the_convolutions_on_the_bone():
    x = np.random.default_rng(2).random((4, 32, 32, 1), dtype=np.float32)
    ids = np.array([0, 1, 2, 1], np.int32)
    base = dict(stages=(1, 1), widths=(8, 16), stem_stride=2, groups=4, pool="max", num_regions=3)
    plain, film = ResNet(ResNetSpec(**base)), ResNet(ResNetSpec(film=True, **base))
    vf = film.init(jax.random.PRNGKey(0), x, ids)
    pf = nn.unbox(vf["params"])
    # residual branches start at zero (norm2 scale 0); open them so the blocks matter
    pf = {k: ({**v, "norm2": {**v["norm2"], "scale": jnp.ones_like(v["norm2"]["scale"])}}
              if k.startswith("stage") else v) for k, v in pf.items()}
    assert pf["film_stage0_block0"].shape == (3, 2, 8) and pf["film_stage1_block0"].shape == (3, 2, 16)
    # zero init: exactly the unconditioned tower with the same weights
    pp = {k: v for k, v in pf.items() if not k.startswith("film_")}
    a, _ = plain.apply({"params": pp}, x, ids)
    b, _ = film.apply({"params": pf}, x, ids)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # a scale for bone 1 in the first block changes the features of bone-1 crops only; the same
    # crop is seen differently as a radius and as an ulna, which the pooled embedding cannot do
    pf2 = jax.tree.map(lambda t: t, pf)
    pf2["film_stage0_block0"] = pf["film_stage0_block0"].at[1, 0].set(1.5).at[1, 1].set(-0.3)
    c, _ = film.apply({"params": pf2}, x, ids)
    a, c = np.asarray(a), np.asarray(c)
    np.testing.assert_allclose(c[[0, 2]], a[[0, 2]], atol=1e-6)
    assert np.abs(c[[1, 3]] - a[[1, 3]]).max() > 1e-2
    same = np.repeat(x[:1], 3, 0)
    d, _ = film.apply({"params": pf2}, same, np.arange(3, dtype=np.int32))
    assert np.abs(np.asarray(d)[1] - np.asarray(d)[0]).max() > 1e-2
    np.testing.assert_allclose(np.asarray(d)[2], np.asarray(d)[0], atol=1e-6)
    # the FiLM tables learn: nonzero gradient at init
    g = jax.grad(lambda p: jnp.sum(film.apply({"params": p}, x, ids)[0] ** 2))(pf)
    assert float(jnp.abs(g["film_stage1_block0"]).sum()) > 0
    with pytest.raises(ValueError, match="film needs num_regions"):
        ResNet(ResNetSpec(film=True, **{**base, "num_regions": 0})).init(jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_text_tower_shapes_and_pooling(pool):
    spec = TextSpec(vocab_size=50, width=16, depth=2, heads=2, mlp_dim=32, max_len=10, pool=pool)
    tokens = np.random.default_rng(0).integers(0, 50, (2, 10)).astype(np.int32)
    mask = np.array([[1] * 10, [1] * 4 + [0] * 6], np.int32)
    v, (pooled, hidden) = _init_apply(TextTower(spec), tokens, mask)
    assert pooled.shape == (2, 16) and hidden.shape == (2, 10, 16)
    expect = hidden[:, 0] if pool == "cls" else \
        (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(expect), atol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        TextTower(spec).apply(v, np.zeros((1, 11), np.int32), np.ones((1, 11), np.int32))


def _encode_and_grad(model, batch):
    loss = lambda p: jnp.sum(model.encode(p, batch)["global_txt"] ** 3) + \
        jnp.sum(model.encode(p, batch)["region_img"] ** 3)
    return jax.jit(lambda p: (model.encode(p, batch), jax.grad(loss)(p)))


@pytest.fixture(scope="module")
def tiny_grads(tiny):
    model, params, _, batch = tiny
    return _encode_and_grad(model, batch)(params)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["remat", "scan"])
def test_remat_and_scan_match_plain(tiny, tiny_grads, variant):
    model, params, axes, batch = tiny
    cfg = model_config("tiny")
    cfg.remat = variant == "remat"
    cfg.scan_layers = variant == "scan"
    other = build(cfg)
    p = stack_layers(params) if cfg.scan_layers else params
    ref, g_ref = tiny_grads
    out, g = _encode_and_grad(other, batch)(p)
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), np.asarray(ref[k]), atol=2e-6)
    # Gradients agree too (remat changes only what is kept for the backward pass).
    g = unstack_layers(g) if cfg.scan_layers else g
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    o_axes = other.logical_axes(batch)
    assert o_axes == (stack_layers(axes, axes=True) if cfg.scan_layers else axes)
    if cfg.scan_layers:
        assert o_axes["text"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"] == \
            ("layers", "embed", "mlp")
        assert p["text"]["encoder"]["layers"]["mlp"]["fc1"]["kernel"].shape == (2, 32, 64)
        assert jax.tree.all(jax.tree.map(np.array_equal, unstack_layers(p), params))


def test_bf16_compute_keeps_params_and_outputs_fp32(tiny, tiny_ref):
    model, params, _, batch = tiny
    cfg = model_config("tiny")
    cfg.dtype = "bfloat16"
    m16 = build(cfg)
    shapes = jax.eval_shape(m16.init_params, jax.random.key(0), batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes))
    lowered = jax.jit(m16.encode).lower(params, batch)
    assert "bf16" in lowered.as_text()
    emb = lowered.compile()(params, batch)
    assert_embeddings(emb, 2, 32)
    ref = tiny_ref
    # bf16 keeps ~3 significant digits: close to, but not equal to, fp32.
    diff = float(jnp.max(jnp.abs(emb["global_img"] - ref["global_img"])))
    assert 0 < diff < 0.1


@pytest.mark.slow
def test_per_bone_towers_and_unshared_text():
    cfg = model_config("tiny")
    cfg.local.shared_across_regions = False
    cfg.share_text_tower = False
    model = build(cfg)
    batch = make_batch(model)
    axes = model.logical_axes(batch)
    assert axes["local_image"]["patch_embed"]["kernel"][0] == "region"
    assert "local_text" in axes and "region_embed" not in axes["local_image"]
    same = dict(batch)
    same["crops"] = np.repeat(batch["crops"][:, :1], 3, axis=1)
    entries = entry_points(model)

    @jax.jit
    def run(key):
        params = model.init_params(key, batch)
        return params, model.encode(params, batch), entries(params, same, jnp.zeros(2, jnp.int32))

    params, emb, out = run(jax.random.key(0))
    assert params["local_image"]["patch_embed"]["kernel"].shape[0] == 3
    assert_embeddings(emb, 2, 32)
    np.testing.assert_allclose(np.asarray(out["crop0"]), np.asarray(emb["region_img"][:, 0]),
                               atol=1e-5)
    # Different bones use different towers: the same crop gives different embeddings.
    assert float(jnp.max(jnp.abs(out["crop0"] - out["crop1"]))) > 1e-3
    np.testing.assert_allclose(np.asarray(out["crops"][:, 1]), np.asarray(out["crop1"]), atol=1e-5)


@pytest.mark.slow
def test_resnet_model_and_dropout_training_mode():
    cfg = model_config("tiny_resnet")
    cfg.dropout = 0.5
    model = build(cfg, vocab_size=64)
    batch = make_batch(model)

    @jax.jit
    def run(key, r1, r2):
        params = model.init_params(key, batch)
        return (params, model.encode(params, batch),
                model.encode(params, batch, train=True, rng=r1),
                model.encode(params, batch, train=True, rng=r1),
                model.encode(params, batch, train=True, rng=r2))

    params, ev, t1, t2, t3 = run(jax.random.key(0), jax.random.key(1), jax.random.key(2))
    assert params["text"]["word_embed"].shape[0] == 64
    assert_embeddings(ev, 2, 32)
    assert_embeddings(t1, 2, 32)
    np.testing.assert_array_equal(np.asarray(t1["global_txt"]), np.asarray(t2["global_txt"]))
    assert float(jnp.max(jnp.abs(t1["global_txt"] - t3["global_txt"]))) > 1e-4
    assert float(jnp.max(jnp.abs(t1["global_txt"] - ev["global_txt"]))) > 1e-4
    with pytest.raises(ValueError, match="rng"):
        model.encode(params, batch, train=True)


def test_presets_build_abstractly():
    for name in PRESETS:
        model = build(model_config(name))
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                             model.dummy_batch(1, 8))
        axes = model.logical_axes(batch)
        shapes = jax.eval_shape(model.init_params, jax.random.key(0), batch)
        n = sum(math.prod(s.shape) for s in jax.tree.leaves(shapes))
        assert len(jax.tree.leaves(axes, is_leaf=is_axes_leaf)) == len(jax.tree.leaves(shapes))
        if name == "vit_b16":
            # 2 x ViT-B (~86M each) + BERT-base (~110M) + heads.
            assert 250e6 < n < 320e6, n
        assert n > 0


def test_unknown_preset_is_a_user_error():
    from wristmir_jax.errors import UserError
    with pytest.raises(UserError, match="unknown model preset"):
        model_config("vit_huge")
