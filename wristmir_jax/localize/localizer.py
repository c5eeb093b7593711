"""The bone localizer: a small Flax (Linen) conv net that finds the distal radius, distal ulna and
ulnar styloid in a canonical (right-wrist, square, padded) radiograph.

Head: centre heatmaps, one channel per region, on a stride-4 grid (CenterNet-style; a centre
head keeps the small ulnar styloid box sharp where a pooled regression head blurs it), plus,
per cell and region, a sub-cell centre offset and the log box size. Each image holds at most one
of each bone, so decoding takes the heatmap's peak per region; its sigmoid is the confidence.
Loss: penalty-reduced focal loss on the heatmaps (Gaussian targets whose width follows the box
size), L1 on offset and log size at the true centre cell, and a GIoU term on the decoded box.

Everything here is pure: `apply`, `localizer_loss` and `decode` are jittable functions of arrays;
`Localizer` wraps trained parameters for batched, jitted inference on original images and maps
boxes back to original pixels through `preprocess.Geometry`. Training is the shared trainer's
(task `bone_localizer`, tasks/bone_localizer.py): a localizer workdir holds its orbax workdir
`localizer/`, the crop prior (`BoxPrior`, box_prior.json) learned from training boxes and, unless
`--config.refine=False`, the second stage (`refiner.py`, task `styloid_refiner`, `refiner/`) that
re-estimates small boxes (by default the ulnar styloid) on an original-resolution patch;
`Localizer.load` picks it up when present, else it predicts with the first stage alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
from functools import partial
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.crops import BoxPrior
from wristmir_jax.imaging.jsonconfig import JsonConfig
from wristmir_jax.imaging.preprocess import normalize, prepare
from wristmir_jax.localize.blocks import ConvNormAct, giou, up2
from wristmir_jax.localize.refiner import canonical_image, load_refiner
from wristmir_jax.models.conv import Conv
from wristmir_jax.schema import NUM_REGIONS, REGIONS

PRIOR_FILE = "box_prior.json"
LOCALIZER_DIR = "localizer"   # the first stage's trainer workdir inside a localizer workdir


@dataclasses.dataclass(frozen=True)
class LocalizerConfig(JsonConfig):
    image_size: int = 256
    widths: tuple[int, ...] = (24, 48, 96, 128)      # stride 4, 8, 16, 32
    head_width: int = 48                              # top-down path (strides 32 -> 8)
    fine_width: int = 24                              # stride-4 refinement and heads
    clip: tuple[float, float] = (0.5, 99.5)           # percentile normalisation before `prepare`
    version: int = 1

    stride: int = 4

    @property
    def grid(self) -> int:
        return self.image_size // self.stride


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
class BoneLocalizer(nn.Module):
    """[B, S, S, 1] in [0, 1] -> (heat logits [B, S/4, S/4, 3], reg [B, S/4, S/4, 3, 4]).

    A 4x4 patch stem (cheap on CPU: no full-resolution feature maps), conv stages at strides
    8/16/32 for context, a top-down path back to stride 8, and a narrow stride-4 refinement that
    keeps small boxes (the ulnar styloid) sharp.
    """

    widths: tuple[int, ...]
    head_width: int
    fine_width: int

    @nn.compact
    def __call__(self, x):
        x = x * 2.0 - 1.0
        w4, w8, w16, w32 = self.widths
        c4 = Conv(w4, (4, 4), strides=4, padding="VALID")(x)
        c4 = ConvNormAct(w4)(nn.relu(c4))
        c8 = ConvNormAct(w8)(ConvNormAct(w8, 2)(c4))
        c16 = ConvNormAct(w16)(ConvNormAct(w16, 2)(c8))
        c32 = ConvNormAct(w32)(ConvNormAct(w32, 2)(c16))
        hw, fw = self.head_width, self.fine_width
        # Top-down path: global context (which bone is which) brought down to stride 8, then 4.
        p = Conv(hw, (1, 1))(c32)
        p = ConvNormAct(hw)(up2(p) + Conv(hw, (1, 1))(c16))
        p = ConvNormAct(hw)(up2(p) + Conv(hw, (1, 1))(c8))
        h = ConvNormAct(fw)(up2(Conv(fw, (1, 1))(p)) + Conv(fw, (1, 1))(c4))
        # Focal-loss prior: start at ~1% foreground so the loss is stable from step 0.
        heat = Conv(NUM_REGIONS, (1, 1), bias_init=nn.initializers.constant(-math.log(99.0)))(h)
        reg = Conv(NUM_REGIONS * 4, (1, 1), kernel_init=nn.initializers.normal(0.01))(h)
        b, g = reg.shape[0], reg.shape[1]
        return heat, reg.reshape(b, g, g, NUM_REGIONS, 4)


def _model(cfg: LocalizerConfig) -> BoneLocalizer:
    if len(cfg.widths) != 4 or cfg.stride != 4 or cfg.image_size % 32:
        raise UserError(f"localizer config: need 4 widths, stride 4 and an image size divisible by "
                        f"32 (got {list(cfg.widths)}, {cfg.stride}, {cfg.image_size})")
    return BoneLocalizer(widths=tuple(cfg.widths), head_width=cfg.head_width,
                         fine_width=cfg.fine_width)


def init_params(cfg: LocalizerConfig, seed: int = 0, *, key=None):
    """Fresh parameters from `key` (default PRNGKey(seed))."""
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, 1), jnp.float32)
    return _model(cfg).init(jax.random.PRNGKey(seed) if key is None else key, x)["params"]


def apply(cfg: LocalizerConfig, params, images):
    """images f32[B, S, S] (or [B, S, S, 1]) -> (heat logits [B, G, G, 3], reg [B, G, G, 3, 4])."""
    if images.ndim == 3:
        images = images[..., None]
    return _model(cfg).apply({"params": params}, images)


# ---------------------------------------------------------------------------------------------
# Targets, loss, decoding (all in prepared-image pixels; boxes [B, 3, 4] x0, y0, x1, y1)
# ---------------------------------------------------------------------------------------------
def _centre_cells(boxes, stride: int, grid: int):
    c = (boxes[..., :2] + boxes[..., 2:]) / 2.0 / stride          # [B, 3, 2] (x, y) in cells
    ci = jnp.clip(jnp.floor(c), 0, grid - 1)
    return c, ci


def heatmap_targets(boxes, has_box, stride: int, grid: int):
    """Gaussian centre targets f32[B, G, G, 3]: exactly 1 at the centre cell, sigma ~ box size."""

    _, ci = _centre_cells(boxes, stride, grid)
    wh = (boxes[..., 2:] - boxes[..., :2]) / stride
    sigma = jnp.maximum(jnp.sqrt(jnp.maximum(wh[..., 0] * wh[..., 1], 1e-6)) / 6.0, 0.6)  # [B, 3]
    g = jnp.arange(grid, dtype=jnp.float32)
    dx = g[None, None, :] - ci[..., 0, None]                       # [B, 3, G]
    dy = g[None, None, :] - ci[..., 1, None]
    d2 = dy[..., :, None] ** 2 + dx[..., None, :] ** 2             # [B, 3, G, G]
    heat = jnp.exp(-d2 / (2.0 * sigma[..., None, None] ** 2)) * has_box[..., None, None]
    return jnp.transpose(heat, (0, 2, 3, 1))


def _gather_cells(reg, ci, grid: int):
    """reg [B, G, G, 3, 4] at each region's cell ci [B, 3, 2] -> [B, 3, 4]."""
    b = reg.shape[0]
    flat = reg.reshape(b, grid * grid, NUM_REGIONS, 4)
    idx = (ci[..., 1] * grid + ci[..., 0]).astype(jnp.int32)       # [B, 3]
    picked = jnp.take_along_axis(flat, idx[:, None, :, None], axis=1)  # [B, 1, 3, 4]
    return picked[:, 0]


def _boxes_from_reg(cells, reg_at, stride: int):
    centre = (cells + jax.nn.sigmoid(reg_at[..., :2])) * stride
    size = jnp.exp(jnp.clip(reg_at[..., 2:], -4.0, 6.0)) * stride
    return jnp.concatenate([centre - size / 2, centre + size / 2], axis=-1)


# The ulnar styloid box is small: a pixel of centre error costs it far more IoU than the radius,
# so its box terms count double.
REGION_BOX_WEIGHTS = (1.0, 1.0, 2.0)


def localizer_loss(cfg: LocalizerConfig, heat_logits, reg, boxes, has_box,
                   weights=(1.0, 1.0, 1.0, 2.0)):
    """(scalar, aux) for the net's outputs (`apply`) on images f32[B,S,S], boxes f32[B,3,4]
    (prepared px), has_box f32[B,3]."""

    stride, grid = cfg.stride, cfg.grid
    target = heatmap_targets(boxes, has_box, stride, grid)
    pos = (target >= 1.0).astype(jnp.float32)
    p = jax.nn.sigmoid(heat_logits)
    pos_term = pos * (1 - p) ** 2 * jax.nn.log_sigmoid(heat_logits)
    neg_term = (1 - pos) * (1 - target) ** 4 * p ** 2 * jax.nn.log_sigmoid(-heat_logits)
    n_pos = jnp.maximum(pos.sum(), 1.0)
    focal = -(pos_term.sum() + neg_term.sum()) / n_pos

    c, ci = _centre_cells(boxes, stride, grid)
    reg_at = _gather_cells(reg, ci, grid)
    wbox = has_box * jnp.asarray(REGION_BOX_WEIGHTS, jnp.float32)
    n_box = jnp.maximum(wbox.sum(), 1.0)
    wh = jnp.maximum((boxes[..., 2:] - boxes[..., :2]) / stride, 1e-3)
    off_l1 = (jnp.abs(jax.nn.sigmoid(reg_at[..., :2]) - (c - ci)).sum(-1) * wbox).sum() / n_box
    size_l1 = (jnp.abs(reg_at[..., 2:] - jnp.log(wh)).sum(-1) * wbox).sum() / n_box
    pred = _boxes_from_reg(ci, reg_at, stride)
    giou_l = ((1.0 - giou(pred, boxes)) * wbox).sum() / n_box
    wf, wo, ws, wg = weights
    total = wf * focal + wo * off_l1 + ws * size_l1 + wg * giou_l
    return total, {"focal": focal, "offset_l1": off_l1, "size_l1": size_l1, "giou": giou_l}


def decode(cfg: LocalizerConfig, heat_logits, reg):
    """-> boxes f32[B, 3, 4] in prepared pixels (clipped to the square), scores f32[B, 3]."""

    b, grid = heat_logits.shape[0], cfg.grid
    flat = heat_logits.reshape(b, grid * grid, NUM_REGIONS)
    idx = jnp.argmax(flat, axis=1)                                   # [B, 3]
    scores = jax.nn.sigmoid(jnp.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0])
    ci = jnp.stack([idx % grid, idx // grid], axis=-1).astype(jnp.float32)
    boxes = _boxes_from_reg(ci, _gather_cells(reg, ci, grid), cfg.stride)
    return jnp.clip(boxes, 0.0, float(cfg.image_size)), scores


def predict_prepared(cfg: LocalizerConfig, params, images):
    """Jittable: prepared images f32[B, S, S] -> (boxes [B, 3, 4] prepared px, scores [B, 3])."""
    return decode(cfg, *apply(cfg, params, images))


# ---------------------------------------------------------------------------------------------
# Inference on original images
# ---------------------------------------------------------------------------------------------
def prepare_for_localizer(img: np.ndarray, laterality: str | None, cfg: LocalizerConfig):
    """Original image -> (canonical f32[S, S], Geometry), as in training."""
    return prepare(normalize(img, clip=tuple(cfg.clip)), laterality, cfg.image_size)


class Localizer:
    """Trained parameters + config; batched, jitted inference with a fixed batch shape.

    With a `refiner` (`refiner.Refiner`, loaded from the workdir when one was trained), the
    first stage's boxes of the refiner's regions are refined on the original-resolution image;
    `refine_counts` tallies, per region, boxes refined and first-stage boxes kept.
    """

    def __init__(self, cfg: LocalizerConfig, params, prior=None, batch_size: int = 32,
                 refiner=None):
        self.cfg, self.params, self.prior, self.batch_size = cfg, params, prior, batch_size
        self.refiner = refiner
        self.refine_counts: dict[str, dict[str, int]] = {}
        self._fn = jax.jit(partial(predict_prepared, cfg))

    @classmethod
    def load(cls, workdir: str, restore: Callable, batch_size: int = 32, refine: bool = True
             ) -> "Localizer":
        """The localizer `localize train` wrote to `workdir`: its trainer workdirs `localizer/`
        and (when trained and kept) `refiner/`, read by `restore(folder) -> (model, params,
        cfg)` (train.checkpoint.restore_for_inference: the best checkpoint, else the latest;
        passed in because localize sits below train). `refine=False` ignores the refiner."""
        stage1 = os.path.join(workdir, LOCALIZER_DIR)
        if not os.path.exists(os.path.join(stage1, "config.json")):
            raise UserError(f"no trained localizer here (expected {LOCALIZER_DIR}/config.json; "
                            "run `wristmir localize train` first)", path=workdir)
        _, params, tcfg = restore(stage1)
        cfg = LocalizerConfig.from_dict(tcfg.model.to_dict())
        prior_path = os.path.join(workdir, PRIOR_FILE)
        prior = BoxPrior.load(prior_path) if os.path.exists(prior_path) else None
        # One refiner patch per image and region: its batch follows the localizer's (a batch-1
        # query does not pay for 64 padded patches).
        refiner = load_refiner(workdir, restore, batch_size) if refine else None
        return cls(cfg, jax.device_get(params), prior, batch_size, refiner)

    def predict_prepared(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """f32[N, S, S] -> (boxes f32[N, 3, 4] prepared px, scores f32[N, 3]), any N."""
        n = len(images)
        boxes = np.zeros((n, NUM_REGIONS, 4), np.float32)
        scores = np.zeros((n, NUM_REGIONS), np.float32)
        bs, s = self.batch_size, self.cfg.image_size
        for start in range(0, n, bs):
            chunk = np.asarray(images[start:start + bs], np.float32)
            m = len(chunk)
            if m < bs:  # pad to the compiled shape
                chunk = np.concatenate([chunk, np.zeros((bs - m, s, s), np.float32)])
            b, sc = self._fn(self.params, chunk)
            boxes[start:start + m] = np.asarray(b)[:m]
            scores[start:start + m] = np.asarray(sc)[:m]
        return boxes, scores

    def predict(self, images: Sequence[np.ndarray], lateralities: Sequence[str | None]
                ) -> list[dict[str, Any]]:
        """Original images (any size) -> [{"boxes": {region: box}, "scores": {region: s}}].

        Boxes are in original pixels. An image of unknown laterality is tried both ways and the
        orientation with the higher mean confidence wins (the model only knows right wrists).
        """
        prepared, geos, owner, normed = [], [], [], []
        for i, (img, lat) in enumerate(zip(images, lateralities)):
            xn = normalize(img, clip=tuple(self.cfg.clip))  # = prepare_for_localizer's first step
            normed.append(xn)
            options = [lat] if lat is not None else ["right", "left"]
            for o in options:
                x, geo = prepare(xn, o, self.cfg.image_size)
                prepared.append(x)
                geos.append(geo)
                owner.append(i)
        if not prepared:
            return []
        boxes, scores = self.predict_prepared(np.stack(prepared))
        best: dict[int, int] = {}
        for j, i in enumerate(owner):
            if i not in best or scores[j].mean() > scores[best[i]].mean():
                best[i] = j
        pick = [best[i] for i in range(len(images))]
        chosen, chosen_geos = boxes[pick], [geos[j] for j in pick]
        if self.refiner is not None:
            canon = [canonical_image(normed[i], chosen_geos[i]) for i in range(len(images))]
            chosen, refined = self.refiner.refine_prepared(canon, chosen_geos, chosen)
            for r in self.refiner.cfg.region_index:
                c = self.refine_counts.setdefault(REGIONS[r], {"refined": 0, "kept": 0})
                c["refined"] += int(refined[:, r].sum())
                c["kept"] += int(len(images) - refined[:, r].sum())
        return [result_record(chosen[i], scores[j], chosen_geos[i]) for i, j in enumerate(pick)]


def result_record(boxes_prepared: np.ndarray, scores: np.ndarray, geo) -> dict[str, Any]:
    """One image's prepared-frame prediction -> {"boxes", "scores"} in original pixels."""
    res: dict[str, Any] = {"boxes": {}, "scores": {}}
    for r, name in enumerate(REGIONS):
        x0, y0, x1, y1 = geo.box_to_original([float(t) for t in boxes_prepared[r]])
        x0, x1 = max(0.0, x0), min(float(geo.orig_w), x1)
        y0, y1 = max(0.0, y0), min(float(geo.orig_h), y1)
        if x1 <= x0 or y1 <= y0:  # a degenerate box in the padding: report it as not found
            res["boxes"][name] = None
            res["scores"][name] = 0.0
            continue
        res["boxes"][name] = [round(v, 2) for v in (x0, y0, x1, y1)]
        res["scores"][name] = round(float(scores[r]), 4)
    return res
