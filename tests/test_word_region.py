"""The word-region alignment term (losses/word_region.py): its value against an independent
numpy implementation that forms the attention context vectors explicitly, its gradient against
finite differences, selection through the objective, and the model / frozen-text-cache inputs
it needs."""

import json

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from conftest import assert_grad_matches_fd

from wristmir_jax import losses
from wristmir_jax.models.model import build
from wristmir_jax.models.presets import model_config

B, M_H, M_W, L, D = 5, 2, 3, 6, 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs(seed=0, d=D):
    rng = np.random.default_rng(seed)
    emb = {"spatial_img": _unit(rng.normal(size=(B, M_H, M_W, d))),
           "word_txt": _unit(rng.normal(size=(B, L, d))),
           "word_attn_scale": np.float64(3.0 + rng.random()),
           "word_scale": np.float64(8.0 + rng.random())}
    lengths = rng.integers(2, L + 1, size=B)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    ids = np.arange(B, dtype=np.int32)
    ids[3] = ids[1]  # two identical captions
    emb["word_txt"][3] = emb["word_txt"][1]
    mask[3] = mask[1]
    return emb, {"global_mask": mask, "global_caption_id": ids}


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _lse(x):
    return x.max() + np.log(np.sum(np.exp(x - x.max())))


def reference(emb, batch, agg=5.0):
    """Loops over pairs, words and locations with explicit context vectors."""
    v = _unit(np.asarray(emb["spatial_img"], np.float64).reshape(B, M_H * M_W, -1))
    w = _unit(np.asarray(emb["word_txt"], np.float64))
    mask = np.asarray(batch["global_mask"]) > 0
    ids = np.asarray(batch["global_caption_id"])
    attn, scale = float(emb["word_attn_scale"]), float(emb["word_scale"])
    cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    s = np.zeros((B, B))
    for i in range(B):
        for j in range(B):
            words = w[j][mask[j]]
            sw = [cos(wt, _softmax(attn * (v[i] @ wt)) @ v[i]) for wt in words]
            sr = [cos(vm, _softmax(attn * (words @ vm)) @ words) for vm in v[i]]
            s[i, j] = 0.5 * (_lse(agg * np.array(sw)) + _lse(agg * np.array(sr))) / agg
    logits = scale * s
    allowed = ~((ids[:, None] == ids[None, :]) & ~np.eye(B, dtype=bool))
    i2t = np.mean([_lse(logits[i][allowed[i]]) - logits[i, i] for i in range(B)])
    t2i = np.mean([_lse(logits[:, j][allowed[:, j]]) - logits[j, j] for j in range(B)])
    return 0.5 * (i2t + t2i)


def _jax(tree, dtype):
    return {k: jnp.asarray(v, dtype if np.asarray(v).dtype.kind == "f" else None)
            for k, v in tree.items()}


# d=8: norms through the Gram matrices (M = L = 6 <= D); d=4: from the context vectors.
@pytest.mark.parametrize("seed,agg,d", [(0, 5.0, 8), (1, 2.0, 8), (2, 5.0, 4)])
def test_value_matches_numpy_reference(seed, agg, d):
    emb, batch = make_inputs(seed, d)
    got, aux = jax.jit(lambda e, b: losses.get("word_region")(e, b, {"agg": agg}))(
        _jax(emb, jnp.float32), _jax(batch, jnp.float32))
    np.testing.assert_allclose(float(got), reference(emb, batch, agg), rtol=2e-5)
    assert set(aux) >= {"i2t", "t2i", "pos_words", "pos_locations"}


@pytest.mark.parametrize("d", [8, 4])
def test_gradient_matches_finite_differences(d):
    emb, batch = make_inputs(2, d)
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(lambda e, b: losses.get("word_region")(e, b, None)[0]))(
            _jax(emb, jnp.float64), _jax(batch, jnp.float64))
        grad = {k: np.asarray(v) for k, v in grad.items()}
    assert_grad_matches_fd(grad, emb, lambda e: reference(e, batch), scalars=("word_attn_scale", "word_scale"),
                           fields=("spatial_img", "word_txt"))
    # Padding words carry no gradient.
    mask = batch["global_mask"]
    assert not np.any(grad["word_txt"][mask == 0])


def test_selected_through_the_objective_with_other_terms():
    emb, batch = make_inputs(0)
    rng = np.random.default_rng(0)
    emb.update(global_img=_unit(rng.normal(size=(B, D))), global_txt=_unit(rng.normal(size=(B, D))),
               global_scale=np.float64(10.0), global_bias=np.float64(-5.0))
    fn = losses.objective({"terms": {"global_clip": 1.0, "word_region": 0.5},
                           "params": {"word_region": {"agg": 5.0}}})
    total, aux = fn(_jax(emb, jnp.float32), _jax(batch, jnp.float32))
    assert float(total) == pytest.approx(float(aux["global_clip"]) + 0.5 * reference(emb, batch), rel=1e-5)
    assert "word_region/i2t" in aux


def test_needs_the_models_word_outputs():
    emb, batch = make_inputs(0)
    del emb["spatial_img"]
    with pytest.raises(ValueError, match="word_features"):
        losses.get("word_region")(emb, batch, None)


def _tiny(name="tiny"):
    c = model_config(name.removesuffix("_fine"))
    c.word_features = True
    if name.endswith("_fine"):
        c.image.spatial_stage = 0
    return build(c)


@pytest.mark.parametrize("preset,grid", [("tiny", 4), ("tiny_resnet", 16), ("tiny_resnet_fine", 32)])
def test_model_exposes_spatial_and_word_features(preset, grid):
    model = _tiny(preset)
    rng = np.random.default_rng(0)
    b = model.dummy_batch(3)
    b["image"] = rng.random(b["image"].shape).astype(np.float32)
    b["global_tokens"] = rng.integers(5, 100, b["global_tokens"].shape).astype(np.int32)
    params, _ = model.init(jax.random.key(0), b)
    emb = jax.jit(model.encode)(params, b)
    sp, words = np.asarray(emb["spatial_img"]), np.asarray(emb["word_txt"])
    assert sp.shape == (3, grid, grid, model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(sp, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(sp, np.asarray(model.encode_spatial(params, b["image"])), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(words, np.asarray(model.encode_words(params, b["global_tokens"], b["global_mask"])),
                               rtol=1e-5, atol=1e-6)
    assert float(emb["word_attn_scale"]) == pytest.approx(4.0)
    # The term trains the image tower and the text side through it.
    g = jax.jit(jax.grad(lambda p: losses.get("word_region")(model.encode(p, b), b, None)[0]))(params)
    assert np.any(np.asarray(g["word_attn_log_scale"])) and np.any(np.asarray(g["word_log_scale"]))
    assert np.any(np.asarray(g["global_image_proj"]["kernel"]))
    # Without word_features the model has no word parameters and no extra outputs.
    if preset.endswith("_fine"):  # the finer grid's own projection learns too
        assert np.any(np.asarray(g["global_spatial_proj"]["kernel"]))
    plain = build(model_config(preset.removesuffix("_fine")))
    p2, _ = plain.init(jax.random.key(0), b)
    assert "word_log_scale" not in p2 and "spatial_img" not in jax.eval_shape(plain.encode, p2, b)


def test_text_cache_keeps_bounded_token_states_equal_to_the_tower():
    from wristmir_jax.models.text_cache import TextFeatureCache

    model = _tiny("tiny")
    rng = np.random.default_rng(1)
    b = model.dummy_batch(6)
    b["image"] = rng.random(b["image"].shape).astype(np.float32)
    lengths = np.array([5, 7, 16, 5, 9, 3])
    b["global_tokens"] = rng.integers(5, 100, b["global_tokens"].shape).astype(np.int32)
    b["global_mask"] = (np.arange(16)[None] < lengths[:, None]).astype(np.int32)
    b["global_tokens"][3] = b["global_tokens"][0]  # a repeated caption
    b["region_tokens"] = rng.integers(5, 100, b["region_tokens"].shape).astype(np.int32)
    params, _ = model.init(jax.random.key(0), b)
    cache = TextFeatureCache(model, params, chunk=2, max_token_entries=3)
    assert cache.tokens
    out = cache.attach(b)
    assert len(cache._tok_table) <= 5  # the batch's 5 distinct captions are kept while attached
    _, hidden = model.global_text_states(params, b["global_tokens"], b["global_mask"])
    want = np.asarray(hidden) * b["global_mask"][..., None]
    np.testing.assert_allclose(out["global_token_feat"], want, rtol=1e-5, atol=1e-5)
    # The cached path gives the same word embeddings as running the tower.
    real = b["global_mask"] > 0  # padding rows are meaningless either way
    np.testing.assert_allclose(np.asarray(model.encode(params, out)["word_txt"])[real],
                               np.asarray(model.encode(params, b)["word_txt"])[real], rtol=1e-4, atol=1e-5)
    # A second batch evicts down to the bound, and evicted captions are recomputed exactly.
    b2 = dict(b, global_tokens=rng.integers(5, 100, b["global_tokens"].shape).astype(np.int32))
    cache.attach(b2)
    again = cache.attach(b)
    assert len(cache._tok_table) <= 6
    np.testing.assert_allclose(again["global_token_feat"], want, rtol=1e-5, atol=1e-5)
    # Without word_features the cache keeps no token states.
    plain = build(model_config("tiny"))
    assert not TextFeatureCache(plain, params).tokens


@pytest.mark.slow
def test_trains_with_the_frozen_cached_text_tower(tmp_path):
    """A few trainer steps with the term on and a frozen pretrained text tower: the cache feeds
    token states and the term's loss is logged and finite."""
    from wristmir_jax.train.defaults import base_config
    from wristmir_jax.train.trainer import train

    c = base_config("tiny")
    c.data.source = "synthetic"
    c.data.order = "global"
    c.data.global_batch_size = 8
    c.data.synthetic.num_train = 16
    c.data.synthetic.num_val = 8
    c.data.eval_batches = 1
    c.model.text.pretrained = "minilm"
    c.model.text.frozen = True
    c.model.text.max_len = 16
    c.model.text.vocab_size = 30522
    c.model.word_features = True
    c.loss.terms = {"global_clip": 1.0, "word_region": 1.0}
    c.loss.params = {}
    c.train.steps = 3
    c.train.eval_every = 3
    c.train.checkpoint_every = 3
    c.train.async_checkpoint = False
    c.mesh.data = 1
    summary = train(c, str(tmp_path / "w"))
    assert summary["step"] == 3
    lines = [json.loads(x) for x in open(tmp_path / "w" / "metrics.jsonl")]
    vals = [x["loss/word_region"] for x in lines if "loss/word_region" in x]
    assert vals and all(np.isfinite(vals))
    assert summary["text_feature_cache"]["captions"] > 0
