"""Normalisation, CLAHE, the canonical frame (flip + resize + pad) and exact box mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wristmir_jax.imaging.io import ImageError
from wristmir_jax.imaging.preprocess import Geometry, equalize_adapthist, normalize, prepare


def test_normalize_matches_numpy_percentiles_and_never_nan():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 0.1, size=(40, 50)).astype(np.float32)
    lo, hi = np.percentile(img, [0.5, 99.5])
    np.testing.assert_allclose(normalize(img), np.clip((img - lo) / (hi - lo), 0, 1), atol=1e-6)
    img[3, 4] = np.nan
    out = normalize(img)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ImageError, match="constant image"):
        normalize(np.full((8, 8), 0.3, np.float32))


def test_clahe_with_one_tile_and_no_clip_is_global_equalisation():
    rng = np.random.default_rng(1)
    img = rng.beta(2, 5, size=(33, 47)).astype(np.float32)
    bins = np.minimum((img * 256).astype(int), 255)
    cdf = np.cumsum(np.bincount(bins.ravel(), minlength=256)) / bins.size
    np.testing.assert_allclose(equalize_adapthist(img, tiles=1, clip_limit=0), cdf[bins], atol=1e-6)
    out = normalize(img, clahe=True)
    assert out.shape == img.shape and np.isfinite(out).all()
    assert 0.0 <= out.min() and out.max() <= 1.0
    # Clipping limits contrast: a clipped equalisation is closer to identity than an unclipped one.
    unclipped = equalize_adapthist(img, tiles=4, clip_limit=0)
    clipped = equalize_adapthist(img, tiles=4, clip_limit=0.005)
    assert np.abs(clipped - img).mean() < np.abs(unclipped - img).mean()


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (256, 256), (97, 513)])
@pytest.mark.parametrize("laterality", ["left", "right", None])
def test_box_round_trip_is_exact(shape, laterality):
    rng = np.random.default_rng(2)
    h, w = shape
    _, geo = prepare(rng.random(shape).astype(np.float32), laterality, 128)
    assert geo.flipped == (laterality == "left")
    for _ in range(20):
        x0, x1 = np.sort(rng.uniform(0, w, 2))
        y0, y1 = np.sort(rng.uniform(0, h, 2))
        box = [x0, y0, x1, y1]
        p = geo.box_to_processed(box)
        assert p[0] < p[2] and p[1] < p[3]
        assert all(-1e-9 <= t <= 128 + 1e-9 for t in p)
        np.testing.assert_allclose(geo.box_to_original(p), box, rtol=0, atol=1e-9)
        np.testing.assert_allclose(geo.box_to_processed(geo.box_to_original(p)), p, atol=1e-9)
    again = Geometry.from_dict(json.loads(json.dumps(geo.to_dict())))
    assert again == geo


@pytest.mark.parametrize("laterality", ["left", "right"])
def test_prepared_pixels_sit_where_the_mapped_box_says(laterality):
    h, w, size = 300, 180, 120
    img = np.zeros((h, w), np.float32)
    img[::4, :] = 0.05  # some texture so the image is not constant
    box = [30.0, 60.0, 90.0, 150.0]  # a bright block, whole pixels
    img[60:150, 30:90] = 1.0
    out, geo = prepare(img, laterality, size)
    assert out.shape == (size, size) and out.dtype == np.float32
    x0, y0, x1, y1 = geo.box_to_processed(box)
    ys, xs = np.nonzero(out > 0.5)
    # Half-intensity edges of a resampled block sit on the mapped box edges (within a pixel).
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1
    mirrored = laterality == "left"
    assert ((x0 + x1) / 2 > size / 2) == mirrored  # mirroring moves the block to the other half
    # Padding columns are exactly zero; the image spans the full height.
    assert geo.pad_y == 0 and geo.pad_x == (size - round(w * size / h)) // 2
    assert np.all(out[:, : int(geo.pad_x)] == 0)
