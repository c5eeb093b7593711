"""The bone localizer's training data and box metrics: image caching in the canonical frame, the
host-side augmentation, per-region mean IoU and hit rate at IoU >= 0.5. The training loop is the
shared trainer's (tasks/bone_localizer.py, tasks/styloid_refiner.py).

Images are loaded once, normalised, canonicalised (`prepare`) and kept in memory as uint8
[N, S, S] (1500 images at 256 px are ~100 MB), with their gold boxes mapped into that frame.
Augmentation: a random translation that keeps every box inside the square (`translate`, host
side, cheap) and a random gamma (inside the jitted step). `load_prepared(..., keep=fn)` also hands each
normalised original in the canonical orientation to `fn` while it is in memory (the refiner's
`WindowCollector` keeps windows around the gold boxes from it), so images are read once.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.boxes import ManifestRow, box_iou, read_boxes, read_manifest
from wristmir_jax.imaging.io import ImageError, load_image
from wristmir_jax.imaging.preprocess import Geometry, normalize, prepare
from wristmir_jax.localize.localizer import LocalizerConfig
from wristmir_jax.localize.refiner import canonical_image
from wristmir_jax.schema import NUM_REGIONS, REGIONS
from wristmir_jax.utils.jsonl import Rejects
from wristmir_jax.utils.log import get_logger
from wristmir_jax.utils.progress import track

log = get_logger("localize")

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


def translate(images: np.ndarray, boxes: np.ndarray, has: np.ndarray, rng: np.random.Generator,
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


# ---------------------------------------------------------------------------------------------
# Loading a manifest + boxes (`localize train` loads once and hands both stages their sources)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LocalizeData:
    """The loaded train and val splits (images with a laterality and at least one box), the
    gold boxes by id, counts that add up, and the rejects (manifest, boxes, images)."""

    train: PreparedSet
    val: PreparedSet
    boxes: dict
    counts: dict
    rejects: list


def load_data(data_cfg, image_size: int, clip: Sequence[float], keep: Any = None) -> LocalizeData:
    """Reads `data_cfg.manifest` and `data_cfg.boxes` (gold.jsonl / boxes.jsonl, COCO JSON or a
    YOLO folder), loads split "train" (every row when the manifest has no splits) and "val".
    `keep` (refiner_train.WindowCollector) cuts the refiner's windows while each image is in
    memory, so one load serves both stages of `localize train`."""
    if not data_cfg.manifest or not data_cfg.boxes:
        raise UserError("config data.manifest and data.boxes are required "
                        "(--config.data.manifest=M --config.data.boxes=B)")
    strict = bool(data_cfg.strict)
    classes = [c.strip() for c in str(data_cfg.get("classes", "") or "").split(",") if c.strip()]
    man_rej = Rejects(str(data_cfg.manifest), strict=strict)
    rows = read_manifest(str(data_cfg.manifest), man_rej)
    has_splits = any(r.split is not None for r in rows)
    train_rows = [r for r in rows if r.split == "train"] if has_splits else rows
    val_rows = [r for r in rows if r.split == "val"] if has_splits else []
    box_rej = Rejects(str(data_cfg.boxes), strict=strict)
    boxes = read_boxes(str(data_cfg.boxes), train_rows + val_rows, box_rej, classes=classes or None)
    counts = {"manifest_rows": len(rows), "manifest_rejected": len(man_rej),
              "box_annotations_rejected": len(box_rej)}
    unknown = [r for r in train_rows if r.laterality is None]
    train_rows = [r for r in train_rows if r.laterality is not None]
    unboxed = [r for r in train_rows if not boxes.get(r.id)]
    train_rows = [r for r in train_rows if boxes.get(r.id)]
    counts.update({"train_unknown_laterality": len(unknown), "train_without_boxes": len(unboxed)})
    if not train_rows:
        raise UserError("no training image with both a laterality and at least one box "
                        f"({len(unknown)} without laterality, {len(unboxed)} without boxes)",
                        path=str(data_cfg.boxes))
    cfg = LocalizerConfig(image_size=int(image_size), clip=tuple(float(c) for c in clip))
    if keep is not None:
        keep.boxes_by_id = boxes
    img_rej = Rejects(str(data_cfg.manifest), strict=strict)
    workers = int(data_cfg.workers)
    t0 = time.time()
    train = load_prepared(train_rows, cfg, img_rej, boxes, workers=workers, progress=track,
                          keep=keep)
    val_rows = [r for r in val_rows if r.laterality is not None and boxes.get(r.id)]
    val = load_prepared(val_rows, cfg, img_rej, boxes, workers=workers, progress=track, keep=keep)
    counts.update({"train_images": len(train), "val_images": len(val),
                   "images_rejected": len(img_rej)})
    log.info("loaded %d train and %d val images in %.1fs (%d rejected)", len(train), len(val),
             time.time() - t0, len(img_rej))
    if len(train) == 0:
        raise UserError("no training image could be loaded (see the rejects file)",
                        path=str(data_cfg.manifest))
    return LocalizeData(train, val, boxes, counts, man_rej.rows + box_rej.rows + img_rej.rows)
