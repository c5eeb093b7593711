"""The location-conditioned word attention term (losses/region_grounding.py): its value against a
numpy implementation that loops over images, bones, words and pixels, its gradient against
finite differences, the boxes it needs (stored with every example, moved by augmentation), the
model's region words (live and from the frozen text cache) and a model that learns to point."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
from conftest import assert_grad_matches_fd

from wristmir_jax import losses
from wristmir_jax.losses.region_grounding import box_cell_coverage, content_words
from wristmir_jax.models.model import build
from wristmir_jax.models.presets import model_config

B, R, H, W, L, D, S = 3, 3, 4, 5, 6, 8, 40


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    emb = {"spatial_img": _unit(rng.normal(size=(B, H, W, D))),
           "region_word_txt": _unit(rng.normal(size=(B, R, L, D))),
           "word_attn_scale": np.float64(3.0 + rng.random())}
    lengths = rng.integers(1, L + 1, size=(B, R))
    mask = (np.arange(L) < lengths[..., None]).astype(np.int32)
    x0, y0 = rng.uniform(0, S - 12, size=(2, B, R))
    bw, bh = rng.uniform(3, 12, size=(2, B, R))
    boxes = np.stack([x0, y0, x0 + bw, y0 + bh], -1)
    crop_mask = np.ones((B, R), np.float32)
    crop_mask[1, 2] = 0.0                       # a missing crop
    boxes[2, 0] = [S + 5, S + 5, S + 9, S + 9]   # a box off the image covers no cell
    batch = {"region_mask": mask, "boxes": boxes, "crop_mask": crop_mask,
             "image": np.zeros((B, S, S, 1), np.float32)}
    return emb, batch


def reference(emb, batch):
    """Per (image, bone): pixel-counted box coverage of each cell, the mean word softmax and the
    KL, with explicit loops."""
    v = np.asarray(emb["spatial_img"], np.float64).reshape(B, H * W, -1)
    v = _unit(v)
    words = _unit(np.asarray(emb["region_word_txt"], np.float64))
    attn = float(emb["word_attn_scale"])
    sub = 40  # sub-pixel samples per cell side: exact coverage for integer box edges
    total, count = 0.0, 0
    for i in range(B):
        for r in range(R):
            n_real = int(np.sum(batch["region_mask"][i, r]))
            keep = [t for t in range(n_real) if n_real <= 2 or 0 < t < n_real - 1]
            x0, y0, x1, y1 = batch["boxes"][i, r]
            cover = np.zeros(H * W)
            for a in range(H):
                for c in range(W):
                    ys = (a + (np.arange(sub) + 0.5) / sub) * S / H
                    xs = (c + (np.arange(sub) + 0.5) / sub) * S / W
                    cover[a * W + c] = np.mean((ys[:, None] >= y0) & (ys[:, None] < y1)
                                               & (xs[None] >= x0) & (xs[None] < x1))
            if batch["crop_mask"][i, r] == 0 or cover.sum() == 0 or not keep:
                continue
            q = cover / cover.sum()
            heat = np.zeros(H * W)
            for t in keep:
                z = attn * (v[i] @ words[i, r, t])
                e = np.exp(z - z.max())
                heat += e / e.sum()
            heat /= len(keep)
            total += sum(qm * (np.log(qm) - np.log(hm)) for qm, hm in zip(q, heat) if qm > 0)
            count += 1
    return total / count


def _jax(tree, dtype):
    return {k: jnp.asarray(v, dtype if np.asarray(v).dtype.kind == "f" else None) for k, v in tree.items()}


def _snap(batch):
    """Integer box edges, where the reference's sub-samples count the coverage exactly."""
    return dict(batch, boxes=np.round(np.asarray(batch["boxes"])))


@pytest.mark.parametrize("seed", [0, 1])
def test_value_matches_numpy_reference(seed):
    emb, batch = make_inputs(seed)
    batch = _snap(batch)
    got, aux = jax.jit(lambda e, b: losses.get("region_grounding")(e, b, None))(
        _jax(emb, jnp.float32), _jax(batch, jnp.float32))
    want = reference(emb, batch)
    np.testing.assert_allclose(float(got), want, rtol=1e-4)
    assert float(aux["pairs"]) == B * R - 2  # the missing crop and the box off the image
    assert 0.0 <= float(aux["box_mass"]) <= 1.0


def test_box_coverage_counts_pixels():
    rng = np.random.default_rng(3)
    boxes = np.round(rng.uniform(0, 64, size=(6, 4)))
    boxes[:, 2:] = boxes[:, :2] + np.round(rng.uniform(1, 30, size=(6, 2)))
    got = np.asarray(box_cell_coverage(boxes, 8, 4, 64.0))
    px = np.arange(64) + 0.5
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        inside = ((px[:, None] >= y0) & (px[:, None] < y1)) & ((px[None] >= x0) & (px[None] < x1))
        want = inside.reshape(8, 8, 4, 16).mean(axis=(1, 3))
        np.testing.assert_allclose(got[n], want, atol=1e-6)


def test_gradient_matches_finite_differences():
    emb, batch = make_inputs(4)
    batch = _snap(batch)
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(lambda e, b: losses.get("region_grounding")(e, b, None)[0]))(
            _jax(emb, jnp.float64), _jax(batch, jnp.float64))
        grad = {k: np.asarray(v) for k, v in grad.items()}
    assert_grad_matches_fd(grad, emb, lambda e: reference(e, batch), scalars=("word_attn_scale",),
                           fields=("spatial_img", "region_word_txt"), per_field=5)
    # Words outside the content mask and bones without a box carry no gradient.
    words = np.asarray(content_words(batch["region_mask"]))
    assert not np.any(grad["region_word_txt"][~words])
    assert not np.any(grad["region_word_txt"][1, 2]) and not np.any(grad["region_word_txt"][2, 0])


def test_needs_region_words_and_boxes():
    emb, batch = make_inputs(0)
    with pytest.raises(ValueError, match="region_words"):
        losses.get("region_grounding")({k: v for k, v in emb.items() if k != "region_word_txt"}, batch, None)
    with pytest.raises(ValueError, match="boxes"):
        losses.get("region_grounding")(emb, {k: v for k, v in batch.items() if k != "boxes"}, None)
    with pytest.raises(ValueError, match="word_features"):
        c = model_config("tiny")
        c.region_words = True
        build(c)


def test_augmentation_moves_the_boxes_with_the_image():
    from wristmir_jax.data.augment import AugmentConfig, augment_example

    img = np.zeros((96, 96), np.float32)
    boxes = np.array([[20, 30, 44, 50], [60, 10, 80, 26], [0, 0, 0, 0]], np.float32)
    for x0, y0, x1, y1 in boxes[:2].astype(int):
        img[y0:y1, x0:x1] = 1.0
    ex = {"image": img[..., None], "crops": np.zeros((3, 8, 8, 1), np.float32),
          "crop_mask": np.array([1, 1, 0], np.float32), "boxes": boxes}
    cfg = AugmentConfig(rotate_deg=8.0, scale=0.1, translate=0.08, brightness=0.0, contrast=0.0,
                        gamma=0.0, noise_std=0.0)
    shifted = 0.0
    for seed in range(4):
        out = augment_example(ex, np.random.default_rng(seed), cfg)
        assert np.all(out["boxes"][2] == 0)
        for n in range(2):
            x0, y0, x1, y1 = boxes[n]
            # each rectangle alone, warped by the same draw: its pixels lie in the moved box
            alone = np.zeros_like(img)
            alone[int(y0):int(y1), int(x0):int(x1)] = 1.0
            moved = augment_example(dict(ex, image=alone[..., None]), np.random.default_rng(seed), cfg)
            ys, xs = np.nonzero(moved["image"][..., 0] > 0.5)
            got = moved["boxes"][n]
            assert xs.min() + 0.5 >= got[0] - 1 and xs.max() + 0.5 <= got[2] + 1
            assert ys.min() + 0.5 >= got[1] - 1 and ys.max() + 0.5 <= got[3] + 1
            # and the box is not much larger than the pixels (a rotated box's hull grows a little)
            assert (got[2] - got[0]) <= (xs.max() - xs.min() + 1) * 1.25 + 2
            shifted += float(np.abs(got - boxes[n]).max())
    assert shifted > 4.0, "the augmentation never moved a box"


def _tiny(grounding_heads=False, spatial_stage=-1, trunk_grad=1.0):
    c = model_config("tiny_resnet")
    c.word_features = True
    c.region_words = True
    c.grounding_heads = grounding_heads
    c.spatial_trunk_grad = trunk_grad
    c.image.spatial_stage = spatial_stage
    return build(c)


def _batch(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    b = model.dummy_batch(n)
    b["image"] = rng.random(b["image"].shape).astype(np.float32)
    b["global_tokens"] = rng.integers(5, 100, b["global_tokens"].shape).astype(np.int32)
    b["region_tokens"] = rng.integers(5, 100, b["region_tokens"].shape).astype(np.int32)
    lengths = rng.integers(3, b["region_mask"].shape[-1] + 1, size=b["region_mask"].shape[:2])
    b["region_mask"] = (np.arange(b["region_mask"].shape[-1]) < lengths[..., None]).astype(np.int32)
    return b


@pytest.mark.parametrize("heads", [False, True])
def test_model_region_words_live_and_from_the_frozen_cache(heads):
    from wristmir_jax.models.text_cache import TextFeatureCache

    model = _tiny(heads)
    b = _batch(model, 4)
    b["region_tokens"][2, 1] = b["global_tokens"][0]  # a region caption equal to a global one
    b["region_mask"][2, 1] = b["global_mask"][0]
    params, _ = model.init(jax.random.key(0), b)
    emb = model.encode(params, b)
    rw = np.asarray(emb["region_word_txt"])
    n, r, length = b["region_tokens"].shape
    want = np.asarray(model.encode_region_words(params, b["region_tokens"].reshape(n * r, length),
                                                b["region_mask"].reshape(n * r, length))).reshape(rw.shape)
    real = b["region_mask"] > 0
    np.testing.assert_allclose(rw[real], want[real], rtol=1e-5, atol=1e-6)
    cache = TextFeatureCache(model, params, chunk=4)
    assert cache.region_tokens and cache.tokens
    out = cache.attach(b)
    assert out["region_token_feat"].shape[:3] == b["region_tokens"].shape
    np.testing.assert_allclose(np.asarray(model.encode(params, out)["region_word_txt"])[real], rw[real],
                               rtol=1e-4, atol=1e-5)
    # Without region_words the cache keeps no region token states.
    c = model_config("tiny_resnet")
    c.word_features = True
    assert "region_token_feat" not in TextFeatureCache(build(c), params).attach(b)


@pytest.mark.parametrize("heads", [False, True])
def test_grounding_heads_keep_the_term_off_the_global_projections(heads):
    """With model.grounding_heads the term's gradient reaches its own heads and never the global
    text / image projections (the global embeddings' last layers); without, it bends both."""
    model = _tiny(heads, spatial_stage=0)
    b = _batch(model, 4)
    b["boxes"] = np.tile(np.array([[8, 8, 40, 40], [30, 10, 60, 34], [2, 40, 20, 60]], np.float32), (4, 1, 1))
    b["crop_mask"] = np.ones((4, 3), np.float32)
    params, _ = model.init(jax.random.key(0), b)
    term = losses.get("region_grounding")
    grad = jax.grad(lambda p: term(model.encode(p, b), b, None)[0])(params)
    norm = {k: float(sum(np.abs(np.asarray(x)).sum() for x in jax.tree.leaves(v))) for k, v in grad.items()}
    assert norm["global_spatial_proj"] > 0 and norm["global_image"] > 0
    if heads:
        assert norm["region_word_proj"] > 0 and norm["spatial_proj"] > 0
        assert norm["global_text_proj"] == 0 and norm["global_image_proj"] == 0
        # and the global embeddings do not depend on the grounding heads
        bumped = jax.tree.map(lambda x: x, params)
        bumped["region_word_proj"] = jax.tree.map(lambda x: x + 1.0, params["region_word_proj"])
        bumped["spatial_proj"] = jax.tree.map(lambda x: x + 1.0, params["spatial_proj"])
        e0, e1 = model.encode(params, b), model.encode(bumped, b)
        for k in ("global_img", "global_txt"):
            np.testing.assert_array_equal(np.asarray(e0[k]), np.asarray(e1[k]))
        assert not np.allclose(np.asarray(e0["region_word_txt"]), np.asarray(e1["region_word_txt"]))
    else:
        assert "region_word_proj" not in params and "spatial_proj" not in params
        assert norm["global_text_proj"] > 0 and norm["global_image_proj"] > 0


def test_spatial_trunk_grad_scales_only_what_reaches_the_image_tower():
    """model.spatial_trunk_grad multiplies the term's gradient into the global image tower (0: none)
    and changes nothing else: the same embeddings, the same gradient for the projections."""
    b = None
    grads, embs = {}, {}
    for scale in (1.0, 0.25, 0.0):
        model = _tiny(spatial_stage=0, trunk_grad=scale)
        if b is None:
            b = _batch(model, 4)
            b["boxes"] = np.tile(np.array([[8, 8, 40, 40], [30, 10, 60, 34], [2, 40, 20, 60]], np.float32),
                                 (4, 1, 1))
            b["crop_mask"] = np.ones((4, 3), np.float32)
            params, _ = model.init(jax.random.key(0), b)
        term = losses.get("region_grounding")
        grads[scale] = jax.jit(jax.grad(lambda p: term(model.encode(p, b), b, None)[0]))(params)
        embs[scale] = jax.jit(model.encode)(params, b)
    for k in ("spatial_img", "global_img", "region_word_txt"):
        np.testing.assert_array_equal(np.asarray(embs[1.0][k]), np.asarray(embs[0.0][k]))
    trunk = lambda g: np.concatenate([np.ravel(x) for x in jax.tree.leaves(g["global_image"])])
    assert np.abs(trunk(grads[1.0])).sum() > 0
    np.testing.assert_allclose(trunk(grads[0.25]), 0.25 * trunk(grads[1.0]), rtol=1e-4, atol=1e-9)
    assert not np.any(trunk(grads[0.0]))
    for k in ("global_image_proj", "global_spatial_proj", "global_text_proj"):
        for a, z in zip(jax.tree.leaves(grads[1.0][k]), jax.tree.leaves(grads[0.0][k])):
            assert np.any(np.asarray(z))
            np.testing.assert_allclose(np.asarray(z), np.asarray(a), rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="spatial_trunk_grad must be in"):
        _tiny(trunk_grad=1.5)


def test_grounding_heads_need_region_words():
    c = model_config("tiny_resnet")
    c.word_features = True
    c.grounding_heads = True
    with pytest.raises(ValueError, match="grounding_heads needs model.region_words"):
        build(c)


def test_a_model_learns_to_point_at_the_box():
    """Gradient steps on the term alone move the heatmap's peak into the boxes of bright squares
    whose position differs per image and per bone (the caption names the bone)."""
    import optax

    model = _tiny()
    size = model.image_size
    rng = np.random.default_rng(0)
    n = 8
    b = _batch(model, n, seed=1)
    img = np.zeros((n, size, size, 1), np.float32)
    boxes = np.zeros((n, 3, 4), np.float32)
    side = size // 4
    for i in range(n):
        cells = rng.choice(16, 3, replace=False)
        for r, c in enumerate(cells):
            y0, x0 = (c // 4) * side, (c % 4) * side
            img[i, y0:y0 + side, x0:x0 + side] = 0.3 + 0.3 * r
            boxes[i, r] = [x0, y0, x0 + side, y0 + side]
    b["image"], b["boxes"] = img, boxes
    b["crop_mask"] = np.ones((n, 3), np.float32)
    for r in range(3):  # one caption per bone, the same in every image
        b["region_tokens"][:, r] = b["region_tokens"][0, r]
        b["region_mask"][:, r] = b["region_mask"][0, r]
    params, _ = model.init(jax.random.key(0), b)
    term = losses.get("region_grounding")
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        (loss, aux), g = jax.value_and_grad(lambda q: term(model.encode(q, b), b, None), has_aux=True)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss, aux

    _, aux0 = term(model.encode(params, b), b, None)
    first = None
    for _ in range(60):
        params, state, loss, aux = step(params, state)
        first = float(loss) if first is None else first
    assert float(loss) < 0.5 * first
    assert float(aux["peak_in_box"]) >= 0.9 > float(aux0["peak_in_box"])
