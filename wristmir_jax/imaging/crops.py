"""Bone crops (distal radius, distal ulna, ulnar styloid) and the policy for boxes that are
missing or not trusted.

A crop is a square around the box, enlarged by `margin` of the box's longer side on each side,
resampled (antialiased bilinear) to `size` x `size`, edge-padded where it leaves the image, in
the canonical orientation (left wrists mirrored, like `preprocess.prepare`).

Policy, per region:
  "detected"  the box exists and its score >= min_score (or no scores were given);
  "prior"     the box is missing or below min_score, and it is placed from the other regions'
              boxes with an anatomical prior: mean offsets and sizes between regions learned from
              training boxes (`BoxPrior`, a small JSON the localizer saves; a default fitted on the
              synthetic generator ships with the package). Confident boxes are the anchors.
              When no box is confident, a region's own low-score box is used (still flagged
              "prior"), and regions without one are placed from the low-score boxes;
  "missing"   no box at all exists for the image: the crop is zeros and mask 0, never a silent
              black crop passed off as usable.
No NaN ever reaches a crop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from importlib import resources
from typing import Iterable, Mapping, Sequence

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.schema import REGIONS

DEFAULT_PRIOR_FILE = "default_box_prior.json"
MIN_CROP_SIDE = 4.0  # pixels of the original image; a degenerate box still gives a real crop


@dataclasses.dataclass(frozen=True)
class CropResult:
    crops: np.ndarray            # f32[3, size, size] in [0, 1], REGIONS order, canonical orientation
    mask: np.ndarray             # f32[3], 1 = usable crop
    source: tuple[str, str, str]  # "detected" | "prior" | "missing" per region
    boxes: tuple                 # the box each crop was cut around (canonical frame) or None


# ---------------------------------------------------------------------------------------------
# The anatomical prior
# ---------------------------------------------------------------------------------------------
def _stats_key(a: str, b: str) -> str:
    return f"{a}->{b}"


@dataclasses.dataclass(frozen=True)
class BoxPrior:
    """Where region b lies given region a's box, in units of a's size s_a = sqrt(w_a h_a).

    stats[view][a->b] = {"mean": [dx, dy, log_w, log_h], "std": [...], "n": count}, with
    dx = (cx_b - cx_a) / s_a, dy likewise, log_w = log(w_b / s_a), log_h = log(h_b / s_a),
    all in the canonical (right-wrist) orientation. view "any" pools every view.
    """

    stats: dict

    def to_dict(self) -> dict:
        return {"version": 1, "frame": "canonical (left wrists mirrored)", "stats": self.stats}

    @classmethod
    def from_dict(cls, d: Mapping) -> "BoxPrior":
        if not isinstance(d, Mapping) or "stats" not in d or "any" not in d["stats"]:
            raise ValueError("box prior: expected {'stats': {'any': {...}, ...}}")
        return cls(stats=dict(d["stats"]))

    def save(self, path: str | os.PathLike) -> None:
        from wristmir_jax.utils.fs import atomic_write

        with atomic_write(path) as f:
            json.dump(self.to_dict(), f, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BoxPrior":
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"cannot read box prior ({e})", path=os.fspath(path)) from None

    def predict(self, region: str, anchors: Mapping[str, Sequence[float]],
                view: str | None = None) -> list[float] | None:
        """Box of `region` from the anchor boxes (canonical frame), or None without anchors."""
        table = self.stats.get(view or "any") or self.stats["any"]
        preds, weights = [], []
        for a, box in anchors.items():
            st = table.get(_stats_key(a, region)) or self.stats["any"].get(_stats_key(a, region))
            if st is None or box is None:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            w, h = max(x1 - x0, 1e-6), max(y1 - y0, 1e-6)
            s = math.sqrt(w * h)
            dx, dy, lw, lh = st["mean"]
            sd = st["std"]
            cx, cy = (x0 + x1) / 2 + dx * s, (y0 + y1) / 2 + dy * s
            bw, bh = math.exp(lw) * s, math.exp(lh) * s
            preds.append([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            # Anchors whose offset to this region varies less get more say.
            weights.append(1.0 / (sd[0] ** 2 + sd[1] ** 2 + 1e-3))
        if not preds:
            return None
        wts = np.asarray(weights) / np.sum(weights)
        return [float(v) for v in np.sum(np.asarray(preds) * wts[:, None], axis=0)]


def fit_prior(samples: Iterable[tuple[Mapping[str, Sequence[float]], str | None]],
              min_count: int = 1) -> BoxPrior:
    """Fits a BoxPrior from (boxes in the canonical frame, view) pairs."""
    acc: dict[str, dict[str, list]] = {}
    for boxes, view in samples:
        for v in ("any",) + ((view,) if view else ()):
            table = acc.setdefault(v, {})
            for a in REGIONS:
                for b in REGIONS:
                    if a == b or boxes.get(a) is None or boxes.get(b) is None:
                        continue
                    ax0, ay0, ax1, ay1 = (float(t) for t in boxes[a])
                    bx0, by0, bx1, by1 = (float(t) for t in boxes[b])
                    s = math.sqrt(max(ax1 - ax0, 1e-6) * max(ay1 - ay0, 1e-6))
                    table.setdefault(_stats_key(a, b), []).append([
                        ((bx0 + bx1) - (ax0 + ax1)) / 2 / s, ((by0 + by1) - (ay0 + ay1)) / 2 / s,
                        math.log(max(bx1 - bx0, 1e-6) / s), math.log(max(by1 - by0, 1e-6) / s)])
    if "any" not in acc:
        raise ValueError("box prior: no image had two or more boxes to learn offsets from")
    stats = {}
    for v, table in acc.items():
        stats[v] = {}
        for k, rows in table.items():
            if len(rows) < min_count:
                continue
            arr = np.asarray(rows, np.float64)
            stats[v][k] = {"mean": [float(t) for t in arr.mean(0)],
                           "std": [float(t) for t in arr.std(0)], "n": int(len(rows))}
    return BoxPrior(stats=stats)


def default_prior() -> BoxPrior:
    """The prior fitted on the synthetic generator's gold boxes (shipped with the package)."""
    text = resources.files("wristmir_jax.imaging").joinpath(DEFAULT_PRIOR_FILE).read_text("utf-8")
    return BoxPrior.from_dict(json.loads(text))


# ---------------------------------------------------------------------------------------------
# Crops
# ---------------------------------------------------------------------------------------------
def _flip_box(box: Sequence[float], width: int) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [width - x1, y0, width - x0, y1]


def _valid_box(box) -> bool:
    if box is None:
        return False
    try:
        v = [float(t) for t in box]
    except (TypeError, ValueError):
        return False
    return len(v) == 4 and all(math.isfinite(t) for t in v) and v[2] > v[0] and v[3] > v[1]


def crop_square(img: np.ndarray, box: Sequence[float], size: int, margin: float) -> np.ndarray:
    """Square crop around `box` (+ margin), edge-padded outside the image, resized to size^2."""
    from PIL import Image

    h, w = img.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, MIN_CROP_SIDE) * (1.0 + 2.0 * margin)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    sx0, sy0 = cx - side / 2.0, cy - side / 2.0
    sx1, sy1 = sx0 + side, sy0 + side
    # Integer window covering the square plus one pixel for the resampling kernel.
    ix0, iy0 = int(math.floor(sx0)) - 1, int(math.floor(sy0)) - 1
    ix1, iy1 = int(math.ceil(sx1)) + 1, int(math.ceil(sy1)) + 1
    cx0, cy0 = min(max(ix0, 0), w - 1), min(max(iy0, 0), h - 1)
    cx1, cy1 = max(min(ix1, w), cx0 + 1), max(min(iy1, h), cy0 + 1)
    patch = img[cy0:cy1, cx0:cx1]
    pad = ((cy0 - iy0, iy1 - cy1), (cx0 - ix0, ix1 - cx1))
    patch = np.pad(patch, pad, mode="edge")
    src = (sx0 - ix0, sy0 - iy0, sx1 - ix0, sy1 - iy0)
    out = Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32)).resize(
        (size, size), Image.Resampling.BILINEAR, box=src)
    return np.clip(np.nan_to_num(np.asarray(out, np.float32), nan=0.0), 0.0, 1.0)


def _clamp_center(box: Sequence[float], w: int, h: int) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = x1 - x0, y1 - y0
    cx = min(max((x0 + x1) / 2.0, 0.0), float(w))
    cy = min(max((y0 + y1) / 2.0, 0.0), float(h))
    return [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]


def extract_crops(img: np.ndarray, boxes: Mapping[str, Sequence[float] | None] | None,
                  scores: Mapping[str, float | None] | None, laterality: str | None,
                  size: int = 128, margin: float = 0.2, min_score: float = 0.5,
                  prior: BoxPrior | None = None, view: str | None = None) -> CropResult:
    """Bone crops from an image in its original orientation and boxes in original pixels."""
    from wristmir_jax.imaging.preprocess import canonical_flip

    x = np.nan_to_num(np.asarray(img, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    h, w = x.shape
    flip = canonical_flip(laterality)
    if flip:
        x = x[:, ::-1]
    boxes = boxes or {}
    scores = scores or {}

    canon: dict[str, list[float]] = {}
    for r in REGIONS:
        b = boxes.get(r)
        if _valid_box(b):
            canon[r] = _flip_box(b, w) if flip else [float(t) for t in b]

    def confident(r: str) -> bool:
        s = scores.get(r)
        return s is None or (math.isfinite(float(s)) and float(s) >= min_score)

    detected = {r: b for r, b in canon.items() if confident(r)}
    # Without any confident box, the weak ones are the best anchors there are.
    anchors = detected or canon

    crops = np.zeros((len(REGIONS), size, size), np.float32)
    mask = np.zeros(len(REGIONS), np.float32)
    source: list[str] = []
    used: list = []
    for i, r in enumerate(REGIONS):
        if r in detected:
            box, src = detected[r], "detected"
        elif anchors:
            box = None
            if not detected and r in canon:
                box = canon[r]  # nothing is confident: its own weak box beats others' weak boxes
            else:
                others = {a: b for a, b in anchors.items() if a != r}
                if others:
                    box = (prior or default_prior()).predict(r, others, view)
            src = "prior" if box is not None else "missing"
            if box is not None:
                box = _clamp_center(box, w, h)
        else:
            box, src = None, "missing"
        if box is not None:
            crops[i] = crop_square(x, box, size, margin)
            mask[i] = 1.0
        source.append(src)
        used.append(None if box is None else tuple(float(t) for t in box))
    return CropResult(crops=crops, mask=mask, source=tuple(source), boxes=tuple(used))
