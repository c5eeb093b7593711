"""Normalisation and the canonical frame: percentile clipping, optional CLAHE, laterality
canonicalisation (left wrists mirrored so every image looks like a right wrist) and
aspect-preserving resize with padding to a square.

`prepare` returns a `Geometry` recording exactly what was done, so that boxes predicted in the
canonical square map back to original pixels (`box_to_original`) and gold boxes map into it
(`box_to_processed`). Coordinates are continuous pixel-edge coordinates: [0, W] spans the image.
The mapping is  x_processed = (x_canonical) * scale + pad_x,  x_canonical = W - x if flipped.
The resize samples exactly that mapping (PIL's `box` argument), so it holds to float precision.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from wristmir_jax.imaging.io import ImageError


def normalize(img: np.ndarray, clip: tuple[float, float] | None = (0.5, 99.5),
              clahe: bool = False, clahe_tiles: int = 8, clahe_clip_limit: float = 0.01) -> np.ndarray:
    """Percentile contrast stretch to [0, 1] (then optional CLAHE). Never returns NaN.

    A constant image raises ImageError (it carries no anatomy and would become a black crop).
    """
    x = np.asarray(img, np.float32)
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    if clip is not None:
        lo, hi = np.percentile(x, clip)
    else:
        lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-8:
        lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-8:
        raise ImageError("constant image: nothing to normalise")
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if clahe:
        x = equalize_adapthist(x, tiles=clahe_tiles, clip_limit=clahe_clip_limit)
    return x


def equalize_adapthist(img: np.ndarray, tiles: int = 8, clip_limit: float = 0.01,
                       nbins: int = 256) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (Zuiderveld 1994) on a [0, 1] image.

    The image is split into tiles x tiles regions; each region's histogram is clipped at
    `clip_limit` (a fraction of the region's pixels per bin, excess spread uniformly), turned into
    a CDF, and each pixel's value is the bilinear blend of the CDFs of its four nearest tile
    centres. With tiles=1 and no clipping it is global histogram equalisation.
    """
    x = np.clip(np.asarray(img, np.float32), 0.0, 1.0)
    h, w = x.shape
    bins = np.minimum((x * nbins).astype(np.int64), nbins - 1)
    ty = np.linspace(0, h, tiles + 1).round().astype(int)
    tx = np.linspace(0, w, tiles + 1).round().astype(int)
    cdfs = np.zeros((tiles, tiles, nbins), np.float64)
    for i in range(tiles):
        for j in range(tiles):
            b = bins[ty[i]:ty[i + 1], tx[j]:tx[j + 1]]
            hist = np.bincount(b.ravel(), minlength=nbins).astype(np.float64)
            n = max(b.size, 1)
            if clip_limit is not None and clip_limit > 0:
                limit = max(clip_limit * n, 1.0)
                for _ in range(10):  # redistribute the excess until (almost) nothing is above
                    excess = np.sum(np.maximum(hist - limit, 0.0))
                    if excess <= 1e-9:
                        break
                    hist = np.minimum(hist, limit) + excess / nbins
            cdfs[i, j] = np.cumsum(hist) / max(hist.sum(), 1e-12)
    # Tile centres and each pixel's position between them.
    cy = (ty[:-1] + ty[1:]) / 2.0
    cx = (tx[:-1] + tx[1:]) / 2.0
    py = np.arange(h) + 0.5
    px = np.arange(w) + 0.5
    iy = np.clip(np.searchsorted(cy, py) - 1, 0, tiles - 1)
    ix = np.clip(np.searchsorted(cx, px) - 1, 0, tiles - 1)
    iy1 = np.minimum(iy + 1, tiles - 1)
    ix1 = np.minimum(ix + 1, tiles - 1)
    wy = np.where(iy1 > iy, (py - cy[iy]) / np.maximum(cy[iy1] - cy[iy], 1e-9), 0.0)
    wx = np.where(ix1 > ix, (px - cx[ix]) / np.maximum(cx[ix1] - cx[ix], 1e-9), 0.0)
    wy = np.clip(wy, 0.0, 1.0)[:, None]
    wx = np.clip(wx, 0.0, 1.0)[None, :]
    Y0, X0 = iy[:, None], ix[None, :]
    Y1, X1 = iy1[:, None], ix1[None, :]
    v00 = cdfs[Y0, X0, bins]
    v01 = cdfs[Y0, X1, bins]
    v10 = cdfs[Y1, X0, bins]
    v11 = cdfs[Y1, X1, bins]
    out = (1 - wy) * ((1 - wx) * v00 + wx * v01) + wy * ((1 - wx) * v10 + wx * v11)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How an original image became the canonical square: mirror, then scale, then pad."""

    orig_w: int
    orig_h: int
    flipped: bool
    scale: float
    pad_x: float
    pad_y: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(orig_w=int(d["orig_w"]), orig_h=int(d["orig_h"]), flipped=bool(d["flipped"]),
                   scale=float(d["scale"]), pad_x=float(d["pad_x"]), pad_y=float(d["pad_y"]))

    def box_to_processed(self, box: Sequence[float]) -> list[float]:
        """[x0, y0, x1, y1] in original pixels -> the same box in the canonical square."""
        x0, y0, x1, y1 = (float(v) for v in box)
        if self.flipped:
            x0, x1 = self.orig_w - x1, self.orig_w - x0
        s = self.scale
        return [x0 * s + self.pad_x, y0 * s + self.pad_y, x1 * s + self.pad_x, y1 * s + self.pad_y]

    def box_to_original(self, box: Sequence[float]) -> list[float]:
        """[x0, y0, x1, y1] in the canonical square -> original pixels (inverse of the above)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        s = self.scale
        x0, x1 = (x0 - self.pad_x) / s, (x1 - self.pad_x) / s
        y0, y1 = (y0 - self.pad_y) / s, (y1 - self.pad_y) / s
        if self.flipped:
            x0, x1 = self.orig_w - x1, self.orig_w - x0
        return [x0, y0, x1, y1]


def canonical_flip(laterality: str | None) -> bool:
    """Left wrists are mirrored so every image looks like a right wrist; unknown stays as is."""
    if laterality is None:
        return False
    lat = str(laterality).strip().lower()
    if lat not in ("left", "right"):
        raise ValueError(f"laterality must be 'left', 'right' or None, got {laterality!r}")
    return lat == "left"


def geometry_for(orig_w: int, orig_h: int, laterality: str | None, size: int) -> Geometry:
    scale = float(size) / float(max(orig_w, orig_h))
    new_w = min(size, max(1, int(round(orig_w * scale))))
    new_h = min(size, max(1, int(round(orig_h * scale))))
    return Geometry(orig_w=int(orig_w), orig_h=int(orig_h), flipped=canonical_flip(laterality),
                    scale=scale, pad_x=float((size - new_w) // 2), pad_y=float((size - new_h) // 2))


def prepare(img: np.ndarray, laterality: str | None, size: int) -> tuple[np.ndarray, Geometry]:
    """Original [H, W] image -> (canonical f32[size, size], Geometry). Padding is 0."""
    from PIL import Image

    x = np.asarray(img, np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {x.shape}")
    h, w = x.shape
    geo = geometry_for(w, h, laterality, size)
    if geo.flipped:
        x = x[:, ::-1]
    new_w = min(size, max(1, int(round(w * geo.scale))))
    new_h = min(size, max(1, int(round(h * geo.scale))))
    # The source box makes the sampled mapping exactly x * scale (not x * new_w / w).
    src = (0.0, 0.0, new_w / geo.scale, new_h / geo.scale)
    # Rounding new_w / new_h up can put that box up to half an output pixel past the image
    # (PIL then refuses it, e.g. 1300 x 1000 at 256); one replicated edge pixel keeps the
    # mapping exact instead of squeezing it.
    over_x, over_y = src[2] > w + 1e-9, src[3] > h + 1e-9
    if over_x or over_y:
        x = np.pad(x, ((0, int(over_y)), (0, int(over_x))), mode="edge")
    resized = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32)).resize(
        (new_w, new_h), Image.Resampling.BILINEAR, box=src)
    out = np.zeros((size, size), np.float32)
    px, py = int(geo.pad_x), int(geo.pad_y)
    out[py:py + new_h, px:px + new_w] = np.asarray(resized, np.float32)
    out = np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)
    return out, geo
