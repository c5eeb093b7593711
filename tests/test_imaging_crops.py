"""Bone crops: pixels against a numpy reference, edge padding, laterality, and the policy for
missing / low-confidence boxes (prior, missing, never NaN)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from wristmir_jax.imaging.crops import (BoxPrior, crop_square, default_prior, extract_crops,
                                        fit_prior)
from wristmir_jax.schema import REGIONS

H, W = 120, 100


def _ramp(a=0.004, b=0.003, c=0.1):
    yy, xx = np.mgrid[0:H, 0:W]
    return (a * xx + b * yy + c).astype(np.float32)


def _expected_ramp_crop(box, size, margin, a=0.004, b=0.003, c=0.1):
    # Bilinear upsampling of an edge-padded linear ramp is the ramp at clamped sample points.
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    sx0, sy0 = (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2
    u = sx0 + (np.arange(size) + 0.5) * side / size - 0.5  # pixel-index coordinates
    v = sy0 + (np.arange(size) + 0.5) * side / size - 0.5
    u, v = np.clip(u, 0, W - 1), np.clip(v, 0, H - 1)
    return (a * u[None, :] + b * v[:, None] + c).astype(np.float32)


@pytest.mark.parametrize("box", [[40.0, 50.0, 60.0, 66.0],   # inside
                                 [-8.0, 100.0, 12.0, 125.0],  # leaves the image: edge padding
                                 [85.5, -5.25, 99.0, 9.0]])
def test_crop_pixels_match_numpy(box):
    got = crop_square(_ramp(), box, 64, 0.2)
    np.testing.assert_allclose(got, _expected_ramp_crop(box, 64, 0.2), atol=2e-5)


def _prior_from_layout(rng, n=200, noise=0.02):
    # Canonical layout: radius box, ulna beside it, styloid small at the ulna's distal tip.
    samples = []
    for _ in range(n):
        s = rng.uniform(20, 40)
        cx, cy = rng.uniform(30, 70), rng.uniform(40, 80)
        r = [cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2]
        u = [cx + 1.0 * s - 0.3 * s, cy - 0.35 * s, cx + 1.0 * s + 0.3 * s, cy + 0.35 * s]
        st = [cx + 1.1 * s - 0.1 * s, cy - 0.6 * s - 0.1 * s, cx + 1.1 * s + 0.1 * s, cy - 0.6 * s + 0.1 * s]
        jitter = lambda bx: [t + rng.normal(0, noise * s) for t in bx]  # noqa: E731
        samples.append(({"distal_radius": jitter(r), "distal_ulna": jitter(u),
                         "ulnar_styloid": jitter(st)}, "pa"))
    return fit_prior(samples)


def test_prior_fit_and_prediction_match_numpy():
    rng = np.random.default_rng(0)
    prior = _prior_from_layout(rng, noise=0.0)
    st = prior.stats["any"]["distal_radius->ulnar_styloid"]
    np.testing.assert_allclose(st["mean"], [1.1, -0.6, math.log(0.2), math.log(0.2)], atol=1e-9)
    radius = [10.0, 20.0, 40.0, 50.0]  # s = 30, centre (25, 35)
    got = prior.predict("ulnar_styloid", {"distal_radius": radius})
    np.testing.assert_allclose(got, [25 + 33 - 3, 35 - 18 - 3, 25 + 33 + 3, 35 - 18 + 3], atol=1e-9)
    again = BoxPrior.from_dict(json.loads(json.dumps(prior.to_dict())))
    assert again.predict("ulnar_styloid", {"distal_radius": radius}) == got


def test_crop_policy_detected_prior_missing():
    rng = np.random.default_rng(1)
    prior = _prior_from_layout(rng)
    img = _ramp()
    boxes = {"distal_radius": [20.0, 40.0, 50.0, 70.0], "distal_ulna": [56.0, 44.5, 74.0, 65.5],
             "ulnar_styloid": [60.0, 19.0, 67.0, 26.0]}

    res = extract_crops(img, boxes, {r: 0.9 for r in REGIONS}, "right", size=64, prior=prior)
    assert res.source == ("detected",) * 3 and res.mask.tolist() == [1, 1, 1]
    assert res.crops.shape == (3, 64, 64) and res.crops.dtype == np.float32
    np.testing.assert_allclose(res.crops[0], _expected_ramp_crop(boxes["distal_radius"], 64, 0.2),
                               atol=2e-5)
    # Downsampling (42 px of image into 32) is antialiased; PIL's discrete filter support shifts
    # the ramp by well under a pixel.
    res32 = extract_crops(img, boxes, None, "right", size=32, prior=prior)
    np.testing.assert_allclose(res32.crops[0], _expected_ramp_crop(boxes["distal_radius"], 32, 0.2),
                               atol=0.25 * 0.004)

    # A low-confidence styloid is replaced by the prior from the two confident boxes.
    scores = {"distal_radius": 0.9, "distal_ulna": 0.8, "ulnar_styloid": 0.1}
    res = extract_crops(img, boxes, scores, "right", size=32, prior=prior)
    assert res.source == ("detected", "detected", "prior") and res.mask.tolist() == [1, 1, 1]
    want = prior.predict("ulnar_styloid", {k: boxes[k] for k in ("distal_radius", "distal_ulna")})
    np.testing.assert_allclose(res.boxes[2], want, atol=1e-9)
    np.testing.assert_allclose(res.crops[2], crop_square(img, want, 32, 0.2), atol=1e-6)

    # A missing ulna box (None or absent) is placed from the others too.
    res = extract_crops(img, {**boxes, "distal_ulna": None}, None, "right", size=32, prior=prior)
    assert res.source == ("detected", "prior", "detected")

    # Nothing confident: each region keeps its own weak box, flagged "prior".
    res = extract_crops(img, boxes, {r: 0.2 for r in REGIONS}, "right", size=32, prior=prior)
    assert res.source == ("prior",) * 3
    np.testing.assert_allclose(res.boxes[0], boxes["distal_radius"])

    # No box at all: zeros, mask 0, flagged "missing" -- never a silent black crop.
    for empty in (None, {}, {r: None for r in REGIONS}, {"distal_radius": [5, 5, 3, 9]}):
        res = extract_crops(img, empty, None, "left", size=32, prior=prior)
        assert res.source == ("missing",) * 3 and res.mask.tolist() == [0, 0, 0]
        assert not res.crops.any()


def test_left_wrist_crops_are_canonical():
    rng = np.random.default_rng(2)
    img = rng.random((H, W)).astype(np.float32)
    box = [10.0, 30.0, 40.0, 70.0]
    left = extract_crops(img, {"distal_radius": box}, None, "left", size=48)
    mirrored_box = [W - box[2], box[1], W - box[0], box[3]]
    want = crop_square(img[:, ::-1], mirrored_box, 48, 0.2)
    np.testing.assert_allclose(left.crops[0], want, atol=1e-6)
    np.testing.assert_allclose(left.boxes[0], mirrored_box)
    assert left.source == ("detected", "prior", "prior")  # default prior fills the others


def test_no_nan_reaches_a_crop():
    img = _ramp()
    img[50:60, 50:60] = np.nan
    far = {"distal_radius": [500.0, 500.0, 530.0, 540.0]}  # outside the image: centre clamped
    for boxes in ({"distal_radius": [45.0, 45.0, 65.0, 65.0]}, far):
        res = extract_crops(img, boxes, {"distal_radius": float("nan")}, None, size=32)
        assert np.isfinite(res.crops).all() and res.crops.max() <= 1 and res.crops.min() >= 0
        assert res.mask.tolist() == [1, 1, 1]


def test_default_prior_is_a_fitted_anatomical_layout():
    prior = default_prior()
    table = prior.stats["any"]
    for a in REGIONS:
        for b in REGIONS:
            if a != b:
                assert table[f"{a}->{b}"]["n"] > 0
    # The styloid is smaller than the distal radius in every fitted view.
    assert table["distal_radius->ulnar_styloid"]["mean"][2] < 0
