"""Training-time augmentations in numpy, one example at a time, driven by a caller's Generator.

What they do and why they are safe for wrist radiographs:
- a small random affine of the whole image (rotation, isotropic scale, translation): patient
  positioning varies a few degrees and millimetres between exposures (the bone boxes move with
  it);
- crop jitter: each bone crop gets its own small shift and scale, which is what a slightly
  different localizer box around the same bone would give (the crop keeps the bone centred
  within the jitter range, so it stays consistent with its box); missing crops stay zero;
- photometric changes shared by the image and its crops (they come from one exposure):
  window brightness/contrast and gamma, plus independent Gaussian noise per view.
No horizontal flips: images are already in the canonical orientation and a flip would swap the
radial and ulnar sides the region captions refer to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    rotate_deg: float = 5.0          # image rotation, uniform in [-r, r]
    scale: float = 0.05              # image scale, uniform in [1 - s, 1 + s]
    translate: float = 0.03          # image shift, fraction of the side
    crop_translate: float = 0.05     # crop jitter shift, fraction of the crop side
    crop_scale: float = 0.06         # crop jitter scale, uniform in [1 - s, 1 + s]
    brightness: float = 0.05         # additive, uniform in [-b, b]
    contrast: float = 0.1            # multiplicative about the mean, uniform in [1 - c, 1 + c]
    gamma: float = 0.2               # log-uniform in [1/(1+g), 1+g]
    noise_std: float = 0.015         # Gaussian noise sigma, uniform in [0, n]


def _affine(img: np.ndarray, rng: np.random.Generator, rotate_deg: float, scale: float,
            translate: float, mode: str) -> np.ndarray:
    """Rotation + isotropic scale about the centre and a shift; bilinear, f32[H,W] -> f32[H,W]."""
    return _affine_with_map(img, rng, rotate_deg, scale, translate, mode)[0]


def _affine_with_map(img, rng, rotate_deg, scale, translate, mode):
    """`_affine`, also returning (M, offset): output index coords o come from input M @ o + offset
    ((row, col) order, pixel centres at integers)."""
    h, w = img.shape
    theta = np.deg2rad(rng.uniform(-rotate_deg, rotate_deg)) if rotate_deg else 0.0
    s = rng.uniform(1.0 - scale, 1.0 + scale) if scale else 1.0
    t = rng.uniform(-translate, translate, 2) * np.array([h, w]) if translate else np.zeros(2)
    c, si = np.cos(theta), np.sin(theta)
    # affine_transform maps output coords o to input coords  M @ o + offset.
    m = np.array([[c, -si], [si, c]]) / s
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    offset = centre - m @ (centre + t)
    out = ndimage.affine_transform(img, m, offset=offset, order=1, mode=mode, cval=0.0,
                                   prefilter=False).astype(np.float32)
    return out, m, offset


def move_boxes(boxes: np.ndarray, m: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """f32[N,4] boxes (x0, y0, x1, y1; pixel i spans [i, i+1)) of an image warped by
    `_affine_with_map`'s (M, offset) -> the axis-aligned boxes around their moved corners. All-zero
    rows (no box) stay zero."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = boxes.T
    corners = np.stack([np.stack([y0, x0], -1), np.stack([y0, x1], -1),
                        np.stack([y1, x0], -1), np.stack([y1, x1], -1)], 1) - 0.5   # [N,4,(r,c)]
    moved = (corners - offset) @ np.linalg.inv(m).T + 0.5
    out = np.concatenate([moved[..., 1].min(1, keepdims=True), moved[..., 0].min(1, keepdims=True),
                          moved[..., 1].max(1, keepdims=True), moved[..., 0].max(1, keepdims=True)], 1)
    return np.where(np.any(boxes != 0, axis=1, keepdims=True), out, 0.0).astype(np.float32)


def _photometric(x: np.ndarray, gain: float, bias: float, gamma: float, mean: float) -> np.ndarray:
    y = np.clip((x - mean) * gain + mean + bias, 0.0, 1.0)
    return np.power(y, gamma, dtype=np.float32)


def augment_example(ex: dict[str, Any], rng: np.random.Generator,
                    cfg: AugmentConfig = AugmentConfig()) -> dict[str, Any]:
    """Returns a new example with augmented `image` f32[H,W,1] and `crops` f32[3,h,w,1], and its
    `boxes` f32[3,4] (when present) moved with the image; other fields are passed through
    unchanged. Deterministic given the Generator's state."""
    out = dict(ex)
    gain = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)
    bias = rng.uniform(-cfg.brightness, cfg.brightness)
    gamma = float(np.exp(rng.uniform(-np.log1p(cfg.gamma), np.log1p(cfg.gamma))))
    sigma = rng.uniform(0.0, cfg.noise_std)

    image = ex["image"][..., 0]
    mean = float(image.mean())
    image, m, offset = _affine_with_map(image, rng, cfg.rotate_deg, cfg.scale, cfg.translate, "constant")
    if "boxes" in ex:
        out["boxes"] = move_boxes(ex["boxes"], m, offset)
    image = _photometric(image, gain, bias, gamma, mean)
    image = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    out["image"] = np.clip(image, 0.0, 1.0)[..., None]

    crops = np.array(ex["crops"][..., 0], np.float32, copy=True)
    mask = np.asarray(ex["crop_mask"], np.float32)
    for i in range(crops.shape[0]):
        if mask[i] == 0:
            crops[i] = 0.0
            continue
        c = _affine(crops[i], rng, 0.0, cfg.crop_scale, cfg.crop_translate, "nearest")
        c = _photometric(c, gain, bias, gamma, mean)
        crops[i] = np.clip(c + rng.normal(0.0, sigma, c.shape).astype(np.float32), 0.0, 1.0)
    out["crops"] = crops[..., None]
    return out
