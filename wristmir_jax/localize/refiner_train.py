"""The box refiner's (`refiner.py`) training data and check: windows around gold boxes, jittered
patches that mimic the first stage's errors, IoU before and after. The training loop is the
shared trainer's (tasks/styloid_refiner.py).

Windows: while `localizer_train.load_prepared` loads each image once for the first stage, a
`WindowCollector` keeps, per refined region, the normalised canonical original (left wrists
mirrored, original pixel scale) around the gold box as uint8: a square reaching
`JitterConfig.reach(context)` gold longer sides from the centre (clipped to the image), so every
training patch is cut from it exactly as `crop_square` would cut it from the whole image
(edge padding beyond the image included). 1373 styloid windows at 512 px are ~75 MB.

Jitter (per patch, host side): the stand-in first-stage box has its centre moved by a per-axis
error in units of the gold box's width / height (normal with `sigma`, or with probability
`wide` uniform in +-`max_offset`), its size scaled by a log-uniform factor in `scale` and its
aspect by a log-normal factor. On the demo's first stage (1000 steps) the styloid's centre errors
were 0.1 longer sides per axis (std), 0.35-0.5 at the 99th percentile and sizes 0.76-1.3x; the
defaults (sigma 0.15, 15% uniform up to 1 box size, sizes 0.8-1.25x) cover that with room.
A wider jitter (25% uniform, sizes 0.7-1.4x) made the refiner less precise on real first-stage
boxes (test mean IoU 0.764 against 0.784 at 400 steps), since it spends capacity on errors the
first stage does not make.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np

from wristmir_jax.imaging.crops import MIN_CROP_SIDE, crop_square
from wristmir_jax.imaging.jsonconfig import JsonConfig
from wristmir_jax.localize.localizer_train import HIT_IOU
from wristmir_jax.localize.refiner import RefinerConfig, Refiner, patch_square


@dataclasses.dataclass(frozen=True)
class JitterConfig(JsonConfig):
    sigma: float = 0.15                       # per-axis centre error (gold w / h units), normal
    wide: float = 0.15                        # share of errors drawn uniform in +-max_offset
    max_offset: float = 1.0                   # no error beyond this (gold w / h units)
    scale: tuple[float, float] = (0.8, 1.25)  # first-stage size / gold size, log-uniform
    aspect_sigma: float = 0.08                # log-normal aspect change, clipped at 3 sigma

    def reach(self, context: float) -> float:
        """Farthest a training patch reads from the gold centre, in gold longer sides."""
        return self.max_offset + context * self.scale[1] * math.exp(3 * self.aspect_sigma) / 2


@dataclasses.dataclass
class RefineSet:
    """One sample per (image, refined region with a gold box)."""

    windows: list[np.ndarray]   # uint8 [h, w] crops of the canonical normalised original
    origins: np.ndarray         # f32 [N, 2] each window's (x0, y0) in canonical px
    bounded: np.ndarray         # bool [N, 4] window edge (left, top, right, bottom) is inside the image
    gold: np.ndarray            # f32 [N, 4] canonical px
    region: np.ndarray          # i32 [N] index into RefinerConfig.regions
    image_index: np.ndarray     # i32 [N] row of the PreparedSet the sample came from

    def __len__(self) -> int:
        return len(self.windows)

    @classmethod
    def from_extras(cls, extras: Sequence[list | None]) -> "RefineSet":
        items = [(i, *e) for i, ex in enumerate(extras) for e in (ex or [])]
        if not items:
            return cls([], np.zeros((0, 2), np.float32), np.zeros((0, 4), bool),
                       np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                       np.zeros((0,), np.int32))
        return cls(windows=[t[2] for t in items],
                   origins=np.asarray([t[3] for t in items], np.float32),
                   bounded=np.asarray([t[4] for t in items], bool),
                   gold=np.asarray([t[5] for t in items], np.float32),
                   region=np.asarray([t[1] for t in items], np.int32),
                   image_index=np.asarray([t[0] for t in items], np.int32))


class WindowCollector:
    """`load_prepared` hook: (row, canonical normalised original, Geometry) -> window samples."""

    def __init__(self, rcfg: RefinerConfig, jitter: JitterConfig,
                 boxes_by_id: Mapping[str, Mapping[str, Sequence[float]]] | None = None):
        self.rcfg, self.jitter, self.boxes_by_id = rcfg, jitter, boxes_by_id or {}

    def __call__(self, row, canon: np.ndarray, geo) -> list:
        out = []
        h, w = canon.shape
        for k, name in enumerate(self.rcfg.regions):
            b = (self.boxes_by_id.get(row.id) or {}).get(name)
            if b is None:
                continue
            x0, y0, x1, y1 = (float(t) for t in b)
            if geo.flipped:
                x0, x1 = geo.orig_w - x1, geo.orig_w - x0
            g = [x0, y0, x1, y1]
            out.append((k, *cut_window(canon, g, self.jitter.reach(self.rcfg.context)), g))
        return out


def cut_window(canon: np.ndarray, box: Sequence[float], reach: float):
    """-> (uint8 window, (x0, y0), bounded[4]) around `box`, reaching `reach` longer sides."""
    h, w = canon.shape
    x0, y0, x1, y1 = (float(t) for t in box)
    r = max(x1 - x0, y1 - y0, MIN_CROP_SIDE) * reach + 3.0  # + the resampling kernel
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    wx0, wy0 = int(math.floor(cx - r)), int(math.floor(cy - r))
    wx1, wy1 = int(math.ceil(cx + r)), int(math.ceil(cy + r))
    bounded = (wx0 > 0, wy0 > 0, wx1 < w, wy1 < h)
    wx0, wy0 = min(max(wx0, 0), w - 1), min(max(wy0, 0), h - 1)
    wx1, wy1 = max(min(wx1, w), wx0 + 1), max(min(wy1, h), wy0 + 1)
    win = np.round(np.clip(canon[wy0:wy1, wx0:wx1], 0.0, 1.0) * 255.0).astype(np.uint8)
    return win, (float(wx0), float(wy0)), bounded


# ---------------------------------------------------------------------------------------------
# Patches
# ---------------------------------------------------------------------------------------------
def jitter_boxes(gold: np.ndarray, jitter: JitterConfig, rng: np.random.Generator) -> np.ndarray:
    """Gold boxes f32[N, 4] -> stand-in first-stage boxes (see the module docstring)."""
    gold = np.asarray(gold, np.float64)
    n = len(gold)
    wh = gold[:, 2:] - gold[:, :2]
    c = (gold[:, :2] + gold[:, 2:]) / 2
    m = jitter.max_offset
    d = np.clip(rng.normal(0.0, jitter.sigma, (n, 2)), -m, m)
    wide = rng.random(n) < jitter.wide
    d[wide] = rng.uniform(-m, m, (int(wide.sum()), 2))
    lo, hi = math.log(jitter.scale[0]), math.log(jitter.scale[1])
    s = np.exp(rng.uniform(lo, hi, (n, 1)))
    a = 3 * jitter.aspect_sigma
    asp = np.exp(np.clip(rng.normal(0.0, jitter.aspect_sigma, (n, 2)), -a, a))
    c1 = c + d * wh
    wh1 = wh * s * asp
    return np.concatenate([c1 - wh1 / 2, c1 + wh1 / 2], axis=1).astype(np.float32)


def window_patches(rs: RefineSet, idx: np.ndarray, boxes: np.ndarray, rcfg: RefinerConfig
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patches around `boxes` f32[B, 4] (canonical px) of samples `idx`, cut from their windows.

    -> (patches f32[B, P, P], squares f32[B, 3] canonical px, covered bool[B]); covered is False
    where the patch reads beyond a window edge that lies inside the image (then the patch is
    edge-padded there and only approximately what the whole image would give).
    """
    p = rcfg.patch_size
    patches = np.zeros((len(idx), p, p), np.float32)
    squares = np.zeros((len(idx), 3), np.float32)
    covered = np.ones((len(idx),), bool)
    for j, (i, b) in enumerate(zip(idx, boxes)):
        win = rs.windows[i]
        h, w = win.shape
        ox, oy = rs.origins[i]
        sx0, sy0, side = patch_square(b, rcfg.context)
        squares[j] = (sx0, sy0, side)
        # Only the part of the window the patch reads (crop_square reads 1 px around the
        # square), converted to float: the result is the same as from the whole window.
        lx0, ly0 = sx0 - ox - 2, sy0 - oy - 2
        lx1, ly1 = lx0 + side + 4, ly0 + side + 4
        left, top, right, bottom = rs.bounded[i]
        covered[j] = not ((left and lx0 < 0) or (top and ly0 < 0) or (right and lx1 > w)
                          or (bottom and ly1 > h))
        cx0 = min(max(int(math.floor(lx0)), 0), w - 1)
        cy0 = min(max(int(math.floor(ly0)), 0), h - 1)
        cx1 = max(min(int(math.ceil(lx1)), w), cx0 + 1)
        cy1 = max(min(int(math.ceil(ly1)), h), cy0 + 1)
        sub = win[cy0:cy1, cx0:cx1].astype(np.float32) * (1.0 / 255.0)
        dx, dy = ox + cx0, oy + cy0
        patches[j] = crop_square(sub, [b[0] - dx, b[1] - dy, b[2] - dx, b[3] - dy], p, rcfg.margin)
    return patches, squares, covered


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def refine_on_windows(refiner: Refiner, rs: RefineSet, boxes: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Refines one box per sample (f32[N, 4] canonical px) from the samples' windows.

    -> (boxes f32[N, 4], refined bool[N], covered bool[N]) (see `window_patches`)."""
    idx = np.arange(len(rs))
    patches, squares, covered = window_patches(rs, idx, boxes, refiner.cfg)
    new, ok = refiner.refine_patches(patches, rs.region, np.asarray(boxes, np.float32), squares)
    return new, ok, covered


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
             - inter)
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def iou_before_after(rs: RefineSet, before: np.ndarray, after: np.ndarray,
                     regions: Sequence[str]) -> dict:
    """Per region: n, mean IoU and hit rate (>= 0.5) of `before` and `after` against gold."""
    out = {}
    ib, ia = _iou(before, rs.gold), _iou(after, rs.gold)
    for k, name in enumerate(regions):
        m = rs.region == k
        if not m.any():
            continue
        out[name] = {"n": int(m.sum()),
                     "mean_iou_before": float(ib[m].mean()), "mean_iou_after": float(ia[m].mean()),
                     "hit_rate_before": float((ib[m] >= HIT_IOU).mean()),
                     "hit_rate_after": float((ia[m] >= HIT_IOU).mean())}
    return out
