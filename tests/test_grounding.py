"""Phrase grounding (eval/grounding.py): the metrics against brute-force numpy references, gold
boxes mapped into the canonical frame, and heatmaps against attention recomputed from the
model's spatial and word embeddings."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import jax

from wristmir_jax.eval import grounding as G
from wristmir_jax.models.model import build
from wristmir_jax.models.presets import model_config
from wristmir_jax.schema import REGIONS


def ref_upsample(heat, size):
    """Bilinear between cell centres via np.interp (which clamps at the ends), rows then columns."""
    h, w = heat.shape
    cy = (np.arange(h) + 0.5) * size / h
    cx = (np.arange(w) + 0.5) * size / w
    p = np.arange(size) + 0.5
    cols = np.stack([np.interp(p, cy, heat[:, j]) for j in range(w)], axis=1)   # [size, w]
    return np.stack([np.interp(p, cx, cols[i]) for i in range(size)])


def ref_hit(up, box):
    best, at = -np.inf, None
    for i in range(up.shape[0]):
        for j in range(up.shape[1]):
            if up[i, j] > best:
                best, at = up[i, j], (i, j)
    i, j = at
    return box[0] <= j + 0.5 < box[2] and box[1] <= i + 0.5 < box[3]


def ref_iou(up, box, thr):
    lo, hi = up.min(), up.max()
    inter = union = 0
    for i in range(up.shape[0]):
        for j in range(up.shape[1]):
            p = (up[i, j] - lo) / (hi - lo) >= thr
            g = box[0] <= j + 0.5 < box[2] and box[1] <= i + 0.5 < box[3]
            inter += p and g
            union += p or g
    return inter / union


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force_references(seed):
    rng = np.random.default_rng(seed)
    size = 24
    heat = rng.random((2, 3, 4, 3)).astype(np.float32)
    boxes = np.zeros((2, 3, 4), np.float32)
    for n in range(2):
        for r in range(3):
            x0, y0 = rng.uniform(0, 14, size=2)
            boxes[n, r] = [x0, y0, x0 + rng.uniform(4, 10), y0 + rng.uniform(4, 10)]
    boxes[1, 2] = np.nan  # no gold box: not counted
    up = G.upsample(heat[0, 0], size)
    np.testing.assert_allclose(up, ref_upsample(heat[0, 0].astype(np.float64), size), rtol=1e-5, atol=1e-6)
    res = G.grounding_metrics(heat, boxes, size, threshold=0.4)
    for r_i, r in enumerate(REGIONS):
        hits, ious = [], []
        for n in range(2):
            if np.isnan(boxes[n, r_i]).any():
                continue
            u = ref_upsample(heat[n, r_i].astype(np.float64), size)
            hits.append(ref_hit(u, boxes[n, r_i]))
            ious.append(ref_iou(u, boxes[n, r_i], 0.4))
        assert res["per_bone"][r]["n"] == len(hits)
        assert res["per_bone"][r]["pointing_game"] == pytest.approx(np.mean(hits))
        assert res["per_bone"][r]["mean_iou"] == pytest.approx(np.mean(ious), rel=1e-6)


def test_pointing_and_iou_on_a_known_map():
    heat = np.zeros((16, 16), np.float32)
    heat[4:8, 10:14] = 1.0
    assert G.pointing_hit(heat, [10, 4, 14, 8]) and not G.pointing_hit(heat, [0, 0, 8, 8])
    assert G.threshold_iou(heat, [10, 4, 14, 8]) == pytest.approx(1.0)
    assert G.threshold_iou(heat, [10, 4, 12, 8]) == pytest.approx(0.5)
    np.testing.assert_array_equal(G.content_mask(np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])),
                                  [[False, True, True, False, False], [True, True, False, False, False]])


def test_gold_boxes_map_into_the_canonical_frame(tmp_path):
    # a left wrist 40 wide x 20 high: mirrored, scaled by 32/40 and padded vertically
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "b.png")
    man = tmp_path / "manifest.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "image": "a.png", "laterality": "left"},
        {"id": "b", "image": "b.png", "laterality": "right"}]) + "\n")
    gold = tmp_path / "gold.jsonl"
    gold.write_text(json.dumps({"id": "a", "boxes": {"distal_radius": [4, 2, 10, 12]}}) + "\n")
    out = G.gold_boxes(["a", "b"], str(gold), str(man), 32)
    s, pad_y = 32 / 40, (32 - 16) // 2
    np.testing.assert_allclose(out[0, 0], [(40 - 10) * s, 2 * s + pad_y, (40 - 4) * s, 12 * s + pad_y])
    assert np.isnan(out[0, 1:]).all() and np.isnan(out[1]).all()
    with pytest.raises(Exception, match="not found"):
        G.gold_boxes(["a"], str(tmp_path / "none.jsonl"), str(man), 32)


@pytest.mark.parametrize("kind", ["untrained_scale", "word_features", "grounding_heads"])
def test_heatmaps_are_the_mean_word_attention(kind):
    c = model_config("tiny_resnet")
    c.word_features = kind != "untrained_scale"
    if kind == "grounding_heads":  # region words and the spatial map through the grounding's heads
        c.region_words = c.grounding_heads = True
        c.image.spatial_stage = 0
    model = build(c)
    rng = np.random.default_rng(0)
    b = model.dummy_batch(2)
    b["image"] = rng.random(b["image"].shape).astype(np.float32)
    params, _ = model.init(jax.random.key(0), b)
    tokens = rng.integers(5, 100, (2, 3, 16)).astype(np.int32)
    mask = (np.arange(16)[None, None] < np.array([[5, 6, 4], [7, 3, 16]])[..., None]).astype(np.int32)
    words = G.content_mask(mask)
    heat = np.asarray(G.make_heatmap_fn(model)(params, b["image"], tokens, mask, words))
    sp = np.asarray(model.encode_spatial(params, b["image"]), np.float64)
    h, w = sp.shape[1:3]
    assert heat.shape == (2, 3, h, w)
    scale = float(model.word_attn_scale(params))
    for n in range(2):
        for r in range(3):
            wv = np.asarray(model.encode_region_words(params, tokens[n, r][None], mask[n, r][None]),
                            np.float64)[0]
            maps = []
            for t in np.nonzero(words[n, r])[0]:
                logit = scale * (sp[n].reshape(h * w, -1) @ wv[t])
                e = np.exp(logit - logit.max())
                maps.append((e / e.sum()).reshape(h, w))
            np.testing.assert_allclose(heat[n, r], np.mean(maps, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(heat.sum(axis=(2, 3)), 1.0, rtol=1e-5)
