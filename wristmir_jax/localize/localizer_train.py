"""Training and evaluating the bone localizer: image caching in the canonical frame, the jitted
optax train step, box metrics (per-region mean IoU and hit rate at IoU >= 0.5).

Images are loaded once, normalised, canonicalised (`prepare`) and kept in memory as uint8
[N, S, S] (1500 images at 256 px are ~100 MB), with their gold boxes mapped into that frame.
Augmentation: a random translation that keeps every box inside the square (host side, cheap)
and a random gamma (inside the jitted step). `load_prepared(..., keep=fn)` also hands each
normalised original in the canonical orientation to `fn` while it is in memory (the refiner's
`WindowCollector` keeps windows around the gold boxes from it), so images are read once.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wristmir_jax.imaging.boxes import ManifestRow, box_iou
from wristmir_jax.imaging.io import ImageError, load_image
from wristmir_jax.localize.localizer import LocalizerConfig, init_params, localizer_loss
from wristmir_jax.localize.refiner import canonical_image
from wristmir_jax.imaging.preprocess import Geometry, normalize, prepare
from wristmir_jax.schema import NUM_REGIONS, REGIONS
from wristmir_jax.utils.jsonl import Rejects

HIT_IOU = 0.5


@dataclasses.dataclass
class PreparedSet:
    """Canonical images and (optionally) their boxes, in the same order as `rows`."""

    rows: list[ManifestRow]
    images: np.ndarray        # uint8 [N, S, S]
    geos: list[Geometry]
    boxes: np.ndarray         # f32 [N, 3, 4] prepared px (zeros where has_box is 0)
    has_box: np.ndarray       # f32 [N, 3]
    extras: list | None = None  # what `keep` returned per image (None without `keep`)

    def __len__(self) -> int:
        return len(self.rows)


def load_prepared(rows: Sequence[ManifestRow], cfg: LocalizerConfig, rejects: Rejects,
                  boxes_by_id: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
                  workers: int = 2, progress: Callable | None = None,
                  keep: Callable[[ManifestRow, np.ndarray, Geometry], Any] | None = None
                  ) -> PreparedSet:
    """Loads and canonicalises images; unloadable ones go to `rejects` (and are dropped).

    `keep(row, canonical normalised original f32[H, W], geo)`, when given, is called once per
    loaded image (same normalisation as the localizer's input); its results are `extras`.
    """
    def work(row: ManifestRow):
        try:
            img = load_image(row.image)
            xn = normalize(img, clip=tuple(cfg.clip))  # = prepare_for_localizer, in two steps
            x, geo = prepare(xn, row.laterality, cfg.image_size)
        except ImageError as e:
            return row, None, None, None, e.reason
        extra = keep(row, canonical_image(xn, geo), geo) if keep is not None else None
        return row, np.round(x * 255.0).astype(np.uint8), geo, extra, None

    kept, imgs, geos, extras = [], [], [], []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(work, rows)
        if progress is not None:
            results = progress(results, total=len(rows), desc="loading images")
        for row, x, geo, extra, err in results:
            if err is not None:
                rejects.add(row.line, err, id=row.id)
                continue
            kept.append(row)
            imgs.append(x)
            geos.append(geo)
            extras.append(extra)
    n, s = len(kept), cfg.image_size
    boxes = np.zeros((n, NUM_REGIONS, 4), np.float32)
    has = np.zeros((n, NUM_REGIONS), np.float32)
    for i, (row, geo) in enumerate(zip(kept, geos)):
        for r, name in enumerate(REGIONS):
            b = (boxes_by_id or {}).get(row.id, {}).get(name)
            if b is not None:
                boxes[i, r] = geo.box_to_processed(b)
                has[i, r] = 1.0
    images = np.stack(imgs) if imgs else np.zeros((0, s, s), np.uint8)
    return PreparedSet(kept, images, geos, boxes, has, extras if keep is not None else None)


def _translate(images: np.ndarray, boxes: np.ndarray, has: np.ndarray, rng: np.random.Generator,
               max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """Random shift per image, limited so that every annotated box stays inside the square."""
    n, s, _ = images.shape
    out = np.zeros_like(images)
    boxes = boxes.copy()
    for i in range(n):
        lo_x, hi_x, lo_y, hi_y = -max_shift, max_shift, -max_shift, max_shift
        if has[i].any():
            b = boxes[i][has[i] > 0]
            lo_x, hi_x = max(lo_x, -int(np.floor(b[:, 0].min()))), min(hi_x, int(s - np.ceil(b[:, 2].max())))
            lo_y, hi_y = max(lo_y, -int(np.floor(b[:, 1].min()))), min(hi_y, int(s - np.ceil(b[:, 3].max())))
        dx = int(rng.integers(lo_x, hi_x + 1)) if hi_x >= lo_x else 0
        dy = int(rng.integers(lo_y, hi_y + 1)) if hi_y >= lo_y else 0
        src = images[i, max(-dy, 0):s - max(dy, 0), max(-dx, 0):s - max(dx, 0)]
        out[i, max(dy, 0):max(dy, 0) + src.shape[0], max(dx, 0):max(dx, 0) + src.shape[1]] = src
        boxes[i] += np.array([dx, dy, dx, dy], np.float32) * (has[i][:, None] > 0)
    return out, boxes


def make_optimizer(lr: float, steps: int):
    warmup = max(1, min(200, steps // 10))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr * 0.02)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=1e-4))


def make_train_step(cfg: LocalizerConfig, tx):
    def step(params, opt_state, images_u8, boxes, has_box, key):
        x = images_u8.astype(jnp.float32) / 255.0
        log_gamma = jax.random.uniform(key, (x.shape[0], 1, 1), minval=-0.35, maxval=0.35)
        x = jnp.power(x, jnp.exp(log_gamma))
        (loss, aux), grads = jax.value_and_grad(
            partial(localizer_loss, cfg), has_aux=True)(params, x, boxes, has_box)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    return jax.jit(step, donate_argnums=(0, 1))


def train_localizer(train: PreparedSet, cfg: LocalizerConfig, steps: int, batch_size: int = 32,
                    lr: float = 3e-3, seed: int = 0, max_shift: int | None = None,
                    log_every: int = 50, on_log: Callable[[dict], None] | None = None):
    """-> trained params. Only images with at least one box are used."""
    usable = np.nonzero(train.has_box.sum(1) > 0)[0]
    if len(usable) == 0:
        raise ValueError("no training image has a box")
    rng = np.random.default_rng(seed)
    params = init_params(cfg, seed)
    tx = make_optimizer(lr, steps)
    opt_state = tx.init(params)
    step_fn = make_train_step(cfg, tx)
    key = jax.random.PRNGKey(seed)
    shift = cfg.image_size // 8 if max_shift is None else max_shift
    t0 = time.time()
    order = rng.permutation(usable)
    pos = 0
    for it in range(1, steps + 1):
        if pos + batch_size > len(order):
            order, pos = rng.permutation(usable), 0
        idx = order[pos:pos + batch_size] if len(order) >= batch_size else rng.choice(usable, batch_size)
        pos += batch_size
        imgs, boxes = _translate(train.images[idx], train.boxes[idx], train.has_box[idx], rng, shift)
        key, sub = jax.random.split(key)
        params, opt_state, loss, aux = step_fn(params, opt_state, imgs, boxes, train.has_box[idx], sub)
        if on_log is not None and (it % log_every == 0 or it == steps):
            row = {"step": it, "loss": float(loss), **{k: float(v) for k, v in aux.items()},
                   "elapsed_s": round(time.time() - t0, 2)}
            on_log(row)
    return params


def box_metrics(pred: Mapping[str, Mapping[str, Sequence[float] | None]],
                gold: Mapping[str, Mapping[str, Sequence[float]]],
                ids: Sequence[str] | None = None) -> dict:
    """Per-region mean IoU and hit rate (IoU >= 0.5) over gold boxes; a missing prediction is 0."""
    ids = list(gold) if ids is None else [i for i in ids if i in gold]
    per: dict[str, dict] = {}
    for name in REGIONS:
        ious = [box_iou((pred.get(i) or {}).get(name), gold[i][name]) for i in ids
                if gold[i].get(name) is not None]
        arr = np.asarray(ious, np.float64)
        per[name] = {"n": int(arr.size),
                     "mean_iou": float(arr.mean()) if arr.size else None,
                     "hit_rate": float((arr >= HIT_IOU).mean()) if arr.size else None}
    vals = [p["mean_iou"] for p in per.values() if p["mean_iou"] is not None]
    hits = [p["hit_rate"] for p in per.values() if p["hit_rate"] is not None]
    return {"per_region": per, "n_images": len(ids), "hit_iou": HIT_IOU,
            "mean_iou": float(np.mean(vals)) if vals else None,
            "min_hit_rate": float(np.min(hits)) if hits else None,
            "missing_predictions": int(sum(1 for i in ids if i not in pred))}
