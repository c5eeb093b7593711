"""Second-stage box refiner (a cascade, as in two-stage detectors) for small bone boxes, by
default the ulnar styloid.

The first stage (`localizer.py`) sees the radiograph at 256 px and decodes boxes on a stride-4
grid: for the styloid (about 13 x 18 px at 256) one cell of centre error already costs a lot of
IoU. The refiner looks again at the ORIGINAL resolution: a square patch in the canonical frame
(left wrists mirrored, original pixel scale), centred on the first-stage box, of side `context`
times the box's longer side, resampled to `patch_size` px (`crops.crop_square`, antialiased
bilinear, edge padding). A small Flax conv net predicts the box inside the patch:

  heat  one logit per cell of a stride-`head_stride` grid; softmax over the grid,
  off   per cell a sub-cell centre offset (tanh, +-1 cell),
  size  per cell log(w, h) relative to patch_size / context (0 = the first stage's longer side),
  box   centre = sum_cells p * (cell centre + offset), log size = sum_cells p * size
        (integral regression: sub-pixel and differentiable). Loss: L1 on the centre (in gold
        box units) and log size, 2 x (1 - GIoU), and 0.5 x a cross-entropy pulling the softmax
        to a Gaussian at the gold centre; without that last term it learned much more slowly
        (demo test mean IoU 0.745 against 0.764 at 400 steps).

At initialisation the softmax is uniform and the output is the patch centre at the first
stage's size, so an untrained refiner is close to the identity.

Never silently worse: the first-stage score is kept; the refined box replaces the first-stage box
only when it is finite, at least `min_side` original px on each side, inside the patch, and its
size is within `max_size_ratio` of the first stage's (`select_boxes`); otherwise the first-stage
box stays. `localize train` also drops a region from the refiner when refining it lowers the
validation mean IoU (REFINER_CHECK_FILE lists the regions kept).

Pure, jittable pieces: `apply`, `decode_patch`, `refiner_loss`, `select_boxes`, `refine_patches`.
`Refiner` wraps trained parameters for batched, jitted inference. Training is the shared
trainer's (task `styloid_refiner`, tasks/styloid_refiner.py); its orbax workdir is `refiner/`
inside the localizer's workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from functools import partial
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.crops import MIN_CROP_SIDE, crop_square
from wristmir_jax.imaging.jsonconfig import JsonConfig
from wristmir_jax.localize.blocks import ConvNormAct, giou, up2
from wristmir_jax.models.conv import Conv
from wristmir_jax.schema import NUM_REGIONS, REGIONS

REFINER_DIR = "refiner"                  # the trainer's workdir inside a localizer workdir
REFINER_CHECK_FILE = "refiner_check.json"  # the validation check: {"regions_used": [...], ...}


@dataclasses.dataclass(frozen=True)
class RefinerConfig(JsonConfig):
    regions: tuple[str, ...] = ("ulnar_styloid",)   # refined regions (REGIONS names)
    patch_size: int = 64                            # patch side in px (multiple of 16)
    context: float = 3.0                            # patch side / first-stage box longer side
    widths: tuple[int, ...] = (16, 32, 48, 64)      # strides 2, 4, 8, 16 inside the patch
    head_width: int = 32
    head_stride: int = 4                            # 2 or 4
    group_norm: bool = True                         # False: conv + bias + ReLU (faster on CPU)
    min_side: float = 2.0                           # original px; a thinner box is degenerate
    max_size_ratio: float = 2.0                     # refined / first-stage size, either way
    version: int = 1

    def check(self) -> "RefinerConfig":
        bad = [r for r in self.regions if r not in REGIONS]
        if bad or not self.regions or len(set(self.regions)) != len(self.regions):
            raise UserError(f"refiner regions must be distinct names from {list(REGIONS)}, "
                            f"got {list(self.regions)}")
        if (len(self.widths) != 4 or self.head_stride not in (2, 4) or self.patch_size < 32
                or self.patch_size % 16):
            raise UserError(f"refiner config: need 4 widths, head stride 2 or 4 and a patch size "
                            f"divisible by 16 and >= 32 (got {list(self.widths)}, "
                            f"{self.head_stride}, {self.patch_size})")
        if not (self.context >= 1.2 and self.max_size_ratio > 1.0 and self.min_side > 0):
            raise UserError(f"refiner config: context must be >= 1.2, max_size_ratio > 1 and "
                            f"min_side > 0 (got {self.context}, {self.max_size_ratio}, "
                            f"{self.min_side})")
        return self

    @property
    def region_index(self) -> tuple[int, ...]:
        return tuple(REGIONS.index(r) for r in self.regions)

    @property
    def grid(self) -> int:
        return self.patch_size // self.head_stride

    @property
    def margin(self) -> float:
        """`crops.crop_square` margin giving a side of `context` x the longer side."""
        return (self.context - 1.0) / 2.0


# ---------------------------------------------------------------------------------------------
# Patch geometry (host side, numpy; canonical-frame original pixels)
# ---------------------------------------------------------------------------------------------
def patch_square(box: Sequence[float], context: float) -> tuple[float, float, float]:
    """(x0, y0, side) of the patch `crop_square` cuts around `box` (same formula)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, MIN_CROP_SIDE) * (1.0 + 2.0 * ((context - 1.0) / 2.0))
    return (x0 + x1) / 2.0 - side / 2.0, (y0 + y1) / 2.0 - side / 2.0, side


def extract_patch(img: np.ndarray, box: Sequence[float], cfg: RefinerConfig
                  ) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Canonical image f32[H, W] and a box in its pixels -> (patch f32[P, P], (x0, y0, side))."""
    return crop_square(img, box, cfg.patch_size, cfg.margin), patch_square(box, cfg.context)


def to_patch(boxes: np.ndarray, squares: np.ndarray, patch_size: int) -> np.ndarray:
    """Boxes [..., 4] in image px -> patch px, squares [..., 3] (x0, y0, side)."""
    k = patch_size / squares[..., 2:3]
    off = np.concatenate([squares[..., :2], squares[..., :2]], axis=-1)
    return (boxes - off) * k


def prepared_to_canonical(boxes: np.ndarray, geo) -> np.ndarray:
    """Boxes [..., 4] in the localizer's square -> canonical (mirrored) original px."""
    off = np.array([geo.pad_x, geo.pad_y, geo.pad_x, geo.pad_y], np.float32)
    return ((np.asarray(boxes, np.float64) - off) / geo.scale).astype(np.float32)


def canonical_to_prepared(boxes: np.ndarray, geo) -> np.ndarray:
    off = np.array([geo.pad_x, geo.pad_y, geo.pad_x, geo.pad_y], np.float64)
    return (np.asarray(boxes, np.float64) * geo.scale + off).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class ConvAct(nn.Module):
    """3x3 conv + bias + ReLU, He-initialised (the normalisation-free block)."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x):
        x = Conv(self.features, (3, 3), strides=self.strides, padding="SAME",
                 kernel_init=nn.initializers.he_normal())(x)
        return nn.relu(x)


class BoxRefinerNet(nn.Module):
    """patches [B, P, P, 1] in [0, 1], region index i32[B] -> (heat [B, G, G], reg [B, G, G, 4]).

    reg = (offset x, offset y, log w, log h) before the tanh / prior; see `decode_patch`.
    The region is a learned bias on the first features (one net serves every refined region).
    """

    widths: tuple[int, ...]
    head_width: int
    head_stride: int
    num_regions: int
    group_norm: bool = True

    @nn.compact
    def __call__(self, x, region):
        block = ConvNormAct if self.group_norm else ConvAct
        # Per-patch standardisation: brightness and contrast vary with age, view, cast.
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        std = x.std(axis=(1, 2, 3), keepdims=True)
        x = (x - mean) / (std + 0.05)
        w2, w4, w8, w16 = self.widths
        c2 = block(w2, 2)(x)
        c2 = c2 + nn.Embed(self.num_regions, w2, embedding_init=nn.initializers.zeros)(region)[:, None, None, :]
        c2 = block(w2)(c2)
        c4 = block(w4)(block(w4, 2)(c2))
        c8 = block(w8)(block(w8, 2)(c4))
        c16 = block(w16)(block(w16, 2)(c8))
        hw = self.head_width
        p = Conv(hw, (1, 1))(c16)
        p = block(hw)(up2(p) + Conv(hw, (1, 1))(c8))
        p = block(hw)(up2(p) + Conv(hw, (1, 1))(c4))
        if self.head_stride == 2:
            p = block(hw)(up2(p) + Conv(hw, (1, 1))(c2))
        heat = Conv(1, (1, 1), kernel_init=nn.initializers.zeros)(p)[..., 0]
        reg = Conv(4, (1, 1), kernel_init=nn.initializers.normal(0.01))(p)
        return heat, reg


def _model(cfg: RefinerConfig) -> BoxRefinerNet:
    return BoxRefinerNet(widths=tuple(cfg.widths), head_width=cfg.head_width,
                         head_stride=cfg.head_stride, num_regions=len(cfg.regions),
                         group_norm=cfg.group_norm)


def init_params(cfg: RefinerConfig, seed: int = 0, *, key=None):
    """Fresh parameters from `key` (default: XLA's RngBitGenerator from `seed`). Shapes only are
    traced (`lazy_init`) and the init is jitted: on the 2-core CPU that compiles in ~4 s,
    against ~18 s for an eager threefry init."""
    p = cfg.patch_size
    x = jax.ShapeDtypeStruct((1, p, p, 1), jnp.float32)
    r = jax.ShapeDtypeStruct((1,), jnp.int32)
    key = jax.random.key(seed, impl="unsafe_rbg") if key is None else key
    return jax.jit(lambda k: _model(cfg).lazy_init(k, x, r)["params"])(key)


def apply(cfg: RefinerConfig, params, patches, region):
    """patches f32[B, P, P] (or [..., 1]), region i32[B] (index into cfg.regions)."""
    if patches.ndim == 3:
        patches = patches[..., None]
    return _model(cfg).apply({"params": params}, patches, region)


def decode_patch(cfg: RefinerConfig, heat, reg):
    """-> boxes f32[B, 4] in patch px (x0, y0, x1, y1); integral regression over the grid."""
    b, g = heat.shape[0], cfg.grid
    prob = jax.nn.softmax(heat.reshape(b, g * g), axis=-1).reshape(b, g, g, 1)
    cells = (jnp.arange(g, dtype=jnp.float32) + 0.5) * cfg.head_stride
    cx = cells[None, None, :] + jnp.tanh(reg[..., 0]) * cfg.head_stride     # [B, G, G]
    cy = cells[None, :, None] + jnp.tanh(reg[..., 1]) * cfg.head_stride
    centre = jnp.stack([(prob[..., 0] * cx).sum((1, 2)), (prob[..., 0] * cy).sum((1, 2))], -1)
    log_wh = (prob * jnp.clip(reg[..., 2:], -3.0, 3.0)).sum((1, 2))          # [B, 2]
    wh = jnp.exp(log_wh) * (cfg.patch_size / cfg.context)
    return jnp.concatenate([centre - wh / 2, centre + wh / 2], axis=-1)


def heat_targets(cfg: RefinerConfig, gold):
    """Softmax targets f32[B, G, G]: a normalised Gaussian (sigma 1 cell) at the gold centre."""
    g = cfg.grid
    c = (gold[:, :2] + gold[:, 2:]) / 2.0 / cfg.head_stride               # [B, 2] in cells
    cells = jnp.arange(g, dtype=jnp.float32) + 0.5
    dx = cells[None, :] - c[:, 0:1]                                        # [B, G]
    dy = cells[None, :] - c[:, 1:2]
    t = jnp.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / 2.0)
    return t / jnp.maximum(t.sum((1, 2), keepdims=True), 1e-6)


def refiner_loss(cfg: RefinerConfig, heat, reg, gold, weights=(1.0, 1.0, 2.0, 0.5)):
    """(scalar, aux): the net's outputs (`apply`) on patches f32[B, P, P], gold boxes f32[B, 4]
    in patch px.

    L1 on the centre in units of the gold box size, L1 on log size, 1 - GIoU, and a
    cross-entropy pulling the softmax towards the gold centre (a strong early signal that
    integral regression alone lacks).
    """
    pred = decode_patch(cfg, heat, reg)
    g_wh = jnp.maximum(gold[:, 2:] - gold[:, :2], 1e-3)
    p_wh = jnp.maximum(pred[:, 2:] - pred[:, :2], 1e-3)
    c_err = jnp.abs((pred[:, :2] + pred[:, 2:]) - (gold[:, :2] + gold[:, 2:])) / 2.0 / g_wh
    centre_l1 = c_err.sum(-1).mean()
    size_l1 = jnp.abs(jnp.log(p_wh) - jnp.log(g_wh)).sum(-1).mean()
    giou_l = (1.0 - giou(pred, gold)).mean()
    b = heat.shape[0]
    logp = jax.nn.log_softmax(heat.reshape(b, -1), axis=-1)
    heat_ce = -(heat_targets(cfg, gold).reshape(b, -1) * logp).sum(-1).mean()
    wc, ws, wg, wh = weights
    total = wc * centre_l1 + ws * size_l1 + wg * giou_l + wh * heat_ce
    return total, {"centre_l1": centre_l1, "size_l1": size_l1, "giou": giou_l, "heat_ce": heat_ce}


def select_boxes(cfg: RefinerConfig, stage1, refined_patch, squares):
    """Maps patch-px boxes to image px and keeps the first-stage box where the refined one is bad.

    stage1 f32[B, 4] and squares f32[B, 3] (x0, y0, side) in image px, refined_patch f32[B, 4]
    in patch px -> (boxes f32[B, 4] image px, refined bool[B]). A refined box is used only if it
    is finite, >= min_side px wide and high, inside the patch, and within max_size_ratio of the
    first-stage box in width and height. Jittable.
    """
    k = squares[:, 2:3] / cfg.patch_size
    off = jnp.concatenate([squares[:, :2], squares[:, :2]], axis=-1)
    box = refined_patch * k + off
    wh = box[:, 2:] - box[:, :2]
    s1_wh = jnp.maximum(stage1[:, 2:] - stage1[:, :2], 1e-6)
    ratio = wh / s1_wh
    lo, hi = squares[:, :2], squares[:, :2] + squares[:, 2:3]
    ok = (jnp.all(jnp.isfinite(box), axis=-1)
          & jnp.all(wh >= cfg.min_side, axis=-1)
          & jnp.all(box[:, :2] >= lo, axis=-1) & jnp.all(box[:, 2:] <= hi, axis=-1)
          & jnp.all(ratio <= cfg.max_size_ratio, axis=-1)
          & jnp.all(ratio >= 1.0 / cfg.max_size_ratio, axis=-1))
    return jnp.where(ok[:, None], box, stage1), ok


def refine_patches(cfg: RefinerConfig, params, patches, region, stage1, squares):
    """Jittable: patches f32[B, P, P], region i32[B], first-stage boxes f32[B, 4] and patch
    squares f32[B, 3] in image px -> (boxes f32[B, 4] image px, refined bool[B])."""
    pred = decode_patch(cfg, *apply(cfg, params, patches, region))
    return select_boxes(cfg, stage1, pred, squares)


# ---------------------------------------------------------------------------------------------
# Loading (the trainer's orbax workdir `refiner/` inside a localizer workdir)
# ---------------------------------------------------------------------------------------------
def restrict(rcfg: RefinerConfig, params, regions: Sequence[str]):
    """The refiner limited to `regions` (a subset of rcfg.regions): -> (cfg, params)."""
    keep = [rcfg.regions.index(r) for r in regions]
    emb = params["Embed_0"]["embedding"]
    params = {**params, "Embed_0": {"embedding": np.asarray(emb)[keep]}}
    return dataclasses.replace(rcfg, regions=tuple(regions)), params


def load_refiner(workdir: str, restore: Callable, batch_size: int = 64) -> "Refiner | None":
    """The refiner of a localizer workdir, limited to the regions `localize train` kept
    (REFINER_CHECK_FILE), or None when there is none (not trained, or no region kept).
    `restore(folder) -> (model, params, cfg)` reads the trainer's checkpoint."""
    check = os.path.join(workdir, REFINER_CHECK_FILE)
    if not os.path.exists(check):
        return None
    with open(check, encoding="utf-8") as f:
        regions = json.load(f).get("regions_used") or []
    if not regions:
        return None
    _, params, tcfg = restore(os.path.join(workdir, REFINER_DIR))
    rcfg = RefinerConfig.from_dict(tcfg.model.to_dict())
    return Refiner(*restrict(rcfg, jax.device_get(params), regions), batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
class Refiner:
    """Trained refiner: batched, jitted inference with a fixed batch shape."""

    def __init__(self, cfg: RefinerConfig, params, batch_size: int = 64):
        self.cfg, self.params, self.batch_size = cfg.check(), params, max(1, int(batch_size))
        self._fn = jax.jit(partial(refine_patches, cfg))

    def refine_patches(self, patches: np.ndarray, region: np.ndarray, stage1: np.ndarray,
                       squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Any number of patches -> (boxes f32[N, 4] image px, refined bool[N])."""
        n = len(patches)
        out = np.zeros((n, 4), np.float32)
        ok = np.zeros((n,), bool)
        bs, p = self.batch_size, self.cfg.patch_size
        for start in range(0, n, bs):
            sl = slice(start, start + bs)
            m = len(patches[sl])
            x = np.zeros((bs, p, p), np.float32)
            r = np.zeros((bs,), np.int32)
            s1 = np.tile(np.array([0, 0, 1, 1], np.float32), (bs, 1))
            sq = np.tile(np.array([0, 0, 1], np.float32), (bs, 1))
            x[:m], r[:m], s1[:m], sq[:m] = patches[sl], region[sl], stage1[sl], squares[sl]
            b, k = self._fn(self.params, x, r, s1, sq)
            out[sl], ok[sl] = np.asarray(b)[:m], np.asarray(k)[:m]
        return out, ok

    def refine(self, images: Sequence[np.ndarray], boxes: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical images f32[H, W] (normalised like the localizer's input, left wrists
        mirrored) and their boxes f32[N, 3, 4] in those pixels -> (boxes f32[N, 3, 4], refined
        bool[N, 3]). Only the configured regions change, each at most as `select_boxes` allows."""
        boxes = np.asarray(boxes, np.float32)
        out = boxes.copy()
        refined = np.zeros(boxes.shape[:2], bool)
        patches, region, s1, squares, where = [], [], [], [], []
        for i, img in enumerate(images):
            for k, r in enumerate(self.cfg.region_index):
                b = boxes[i, r]
                if not (np.all(np.isfinite(b)) and b[2] > b[0] and b[3] > b[1]):
                    continue  # nothing to refine around
                patch, sq = extract_patch(img, b, self.cfg)
                patches.append(patch)
                region.append(k)
                s1.append(b)
                squares.append(sq)
                where.append((i, r))
        if not patches:
            return out, refined
        new, ok = self.refine_patches(np.stack(patches), np.asarray(region, np.int32),
                                      np.stack(s1), np.asarray(squares, np.float32))
        for (i, r), b, k in zip(where, new, ok):
            out[i, r], refined[i, r] = b, bool(k)
        return out, refined

    def refine_prepared(self, canonical_images: Sequence[np.ndarray], geos,
                        boxes_prepared: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like `refine`, for boxes in the localizer's square (mapped through each Geometry)."""
        canon = np.stack([prepared_to_canonical(b, g) for b, g in zip(boxes_prepared, geos)]) \
            if len(geos) else np.zeros((0, NUM_REGIONS, 4), np.float32)
        new, refined = self.refine(canonical_images, canon)
        back = np.stack([canonical_to_prepared(b, g) for b, g in zip(new, geos)]) \
            if len(geos) else canon
        # Unrefined boxes stay bit-identical to the first stage's.
        back = np.where(refined[..., None], back, np.asarray(boxes_prepared, np.float32))
        return back, refined


def canonical_image(normalized: np.ndarray, geo) -> np.ndarray:
    """The normalised original in the canonical orientation (mirrored when `geo.flipped`)."""
    return normalized[:, ::-1] if geo.flipped else normalized

