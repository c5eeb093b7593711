"""Phrase grounding: where in the global image does a region caption point?

For each image of a split and each bone (every region caption names its bone: "distal radius:
buckle fracture"), the caption's word embeddings (the global text tower and projection) attend
over the global image's spatial embeddings (`WristModel.encode_spatial`) exactly as in the
word-region term: a_t = softmax over locations of attn * cos(word t, location). The heatmap is
the mean of a_t over the caption's words ([CLS] and [SEP] excluded), upsampled bilinearly from
the feature grid to the image (cell centres at ((j + 0.5) * S / w, (i + 0.5) * S / h)).

Metrics per bone, against gold boxes that no encoder training saw (the synthetic generator's
gold.jsonl; any boxes file of the same form, {id, boxes: {bone: [x0, y0, x1, y1]}} in original
pixels, mapped into the canonical square with the manifest's image size and laterality):
  pointing game   the fraction of (image, bone) pairs whose heatmap maximum (a pixel centre)
                  lies inside the gold box (Zhang et al. 2018; GLoRIA / ALC-ITR report it)
  IoU             the heatmap min-max normalised to [0, 1] and thresholded at `threshold`
                  (0.5), against the box's pixels (pixel centres inside the box); mean per bone
Models trained without the word-region term are measured the same way, with the fixed
attention scale models.model.WORD_ATTN_SCALE. A model trained with the `region_grounding` term
(losses/region_grounding.py) was taught this very heatmap against the localizer's boxes of the
training split; the result records that (`box_supervised`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.schema import REGION_DISPLAY, REGIONS
from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.grounding")
THRESHOLD = 0.5
OVERLAY_IMAGES = 4


# --- metrics (numpy) --------------------------------------------------------------------------
def upsample(heat: np.ndarray, size: int) -> np.ndarray:
    """f32[h,w] on a grid of cells -> f32[size,size], bilinear between cell centres (edges
    clamped)."""
    heat = np.asarray(heat, np.float64)
    h, w = heat.shape

    def axis(n):
        pos = (np.arange(size) + 0.5) * n / size - 0.5
        lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
        hi = np.clip(lo + 1, 0, n - 1)
        frac = np.clip(pos - lo, 0.0, 1.0)
        return lo, hi, frac

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    top = heat[y0][:, x0] * (1 - fx) + heat[y0][:, x1] * fx
    bot = heat[y1][:, x0] * (1 - fx) + heat[y1][:, x1] * fx
    return (top * (1 - fy[:, None]) + bot * fy[:, None]).astype(np.float32)


def box_mask(box, size: int) -> np.ndarray:
    """bool[size,size]: pixels whose centre lies inside [x0, x1) x [y0, y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    c = np.arange(size) + 0.5
    return ((c[:, None] >= y0) & (c[:, None] < y1)) & ((c[None, :] >= x0) & (c[None, :] < x1))


def pointing_hit(heat: np.ndarray, box) -> bool:
    """Whether the maximum of an image-sized heatmap (first in row-major order on ties) is a
    pixel inside the box."""
    i, j = np.unravel_index(int(np.argmax(heat)), heat.shape)
    x0, y0, x1, y1 = (float(v) for v in box)
    return bool(x0 <= j + 0.5 < x1 and y0 <= i + 0.5 < y1)


def threshold_iou(heat: np.ndarray, box, threshold: float = THRESHOLD) -> float:
    """IoU of {pixels with min-max normalised heat >= threshold} and the box's pixels."""
    heat = np.asarray(heat, np.float64)
    lo, hi = heat.min(), heat.max()
    norm = (heat - lo) / (hi - lo) if hi > lo else np.ones_like(heat)
    pred = norm >= threshold
    gold = box_mask(box, heat.shape[0])
    union = np.sum(pred | gold)
    return float(np.sum(pred & gold) / union) if union else 0.0


def grounding_metrics(heatmaps: np.ndarray, boxes: np.ndarray, size: int,
                      threshold: float = THRESHOLD) -> dict[str, Any]:
    """heatmaps f32[N,3,h,w] (grid), boxes f32[N,3,4] in the size x size frame (NaN: no gold
    box) -> {bone: {pointing_game, mean_iou, n}} plus the means over bones."""
    per: dict[str, dict] = {}
    for r_i, r in enumerate(REGIONS):
        hits, ious = [], []
        for n in range(heatmaps.shape[0]):
            box = boxes[n, r_i]
            if not np.all(np.isfinite(box)):
                continue
            up = upsample(heatmaps[n, r_i], size)
            hits.append(pointing_hit(up, box))
            ious.append(threshold_iou(up, box, threshold))
        per[r] = {"pointing_game": float(np.mean(hits)) if hits else None,
                  "mean_iou": float(np.mean(ious)) if ious else None, "n": len(hits)}
    done = [v for v in per.values() if v["n"]]
    return {"per_bone": per, "threshold": threshold,
            "mean_pointing_game": float(np.mean([v["pointing_game"] for v in done])) if done else None,
            "mean_iou": float(np.mean([v["mean_iou"] for v in done])) if done else None}


# --- heatmaps from a model --------------------------------------------------------------------
def content_mask(mask: np.ndarray) -> np.ndarray:
    """bool[...,L]: the real tokens of int[...,L] masks without [CLS] and [SEP] (captions of at
    most two tokens keep theirs); the words the `region_grounding` term trains, by the same function."""
    from wristmir_jax.losses.region_grounding import content_words

    return np.asarray(content_words(mask))


def make_heatmap_fn(model):
    """jitted fn(params, images f32[B,S,S,1], tokens i32[B,3,L], mask i32[B,3,L], words bool[B,3,L])
    -> f32[B,3,h,w]: the mean word -> location attention of each region caption (the heatmap the
    `region_grounding` term trains: losses.region_grounding.log_heatmap)."""
    import jax
    import jax.numpy as jnp

    from wristmir_jax.losses.region_grounding import log_heatmap

    def fn(params, images, tokens, mask, words):
        b, r, length = tokens.shape
        spatial = model.encode_spatial(params, images)                        # [B,h,w,D]
        w = model.encode_region_words(params, tokens.reshape(b * r, length), mask.reshape(b * r, length))
        heat = jnp.exp(log_heatmap(spatial, w.reshape(b, r, length, -1), words.astype(bool),
                                   model.word_attn_scale(params)))
        return heat.reshape((b, r) + spatial.shape[1:3])

    return jax.jit(fn)


# --- gold boxes -------------------------------------------------------------------------------
def gold_boxes(ids, boxes_path: str, manifest_path: str, size: int) -> np.ndarray:
    """f32[N,3,4]: each id's gold boxes mapped into the size x size canonical frame (NaN where
    the file has no box for that id or bone)."""
    from wristmir_jax.imaging.preprocess import geometry_for
    from wristmir_jax.utils.jsonl import read_jsonl_strict

    for p, what in ((boxes_path, "--grounding-boxes"), (manifest_path, "--grounding-manifest")):
        if not p or not os.path.isfile(p):
            raise UserError(f"{what}: file not found", path=p)
    gold = {str(r["id"]): r.get("boxes") or {} for r in read_jsonl_strict(boxes_path)}
    manifest = {str(m["id"]): m for m in read_jsonl_strict(manifest_path)}
    base = os.path.dirname(os.path.abspath(manifest_path))
    out = np.full((len(ids), len(REGIONS), 4), np.nan, np.float32)
    for n, iid in enumerate(ids):
        iid = str(iid)
        if iid not in gold or iid not in manifest:
            continue
        m = manifest[iid]
        w, h = _image_size(os.path.join(base, m["image"]))
        geo = geometry_for(w, h, m.get("laterality"), size)
        for r_i, r in enumerate(REGIONS):
            b = gold[iid].get(r)
            if b is not None and len(b) == 4:
                out[n, r_i] = geo.box_to_processed(b)
    return out


def _image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header when PIL can read it, else from the decoded image
    (DICOM)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError):
        from wristmir_jax.imaging.io import load_image

        h, w = load_image(path).shape
        return w, h


# --- the whole evaluation ---------------------------------------------------------------------
def evaluate_grounding(index_dir: str, boxes_path: str, manifest_path: str | None = None, *,
                       out_dir: str | None = None, batch_size: int = 32,
                       threshold: float = THRESHOLD, overlays: int = OVERLAY_IMAGES) -> dict:
    """Grounding metrics of the index's model on the index's split (its DATA_DIR and workdir
    from the fingerprint); overlay PNGs into out_dir/grounding/ when out_dir is given."""
    from wristmir_jax.data.features import to_training_example
    from wristmir_jax.data.source import DatasetSource
    from wristmir_jax.retrieval.store import load_index
    from wristmir_jax.train.checkpoint import restore_for_inference

    index = load_index(index_dir)
    fp = index.fingerprint
    workdir, data_dir, split = fp["model"].get("workdir"), fp.get("data_dir"), fp.get("split")
    if not workdir or not os.path.isdir(workdir):
        raise UserError("grounding needs the index's model workdir, which is not available", path=workdir)
    if not data_dir or not os.path.isdir(data_dir) or not split:
        raise UserError("grounding needs the index's DATA_DIR and split", path=data_dir)
    manifest_path = manifest_path or os.path.join(os.path.dirname(os.path.abspath(boxes_path)),
                                                  "manifest.jsonl")
    model, params, cfg = restore_for_inference(workdir)
    fn = make_heatmap_fn(model)
    src = DatasetSource(data_dir, split)
    ids, heat, images = [], [], []
    for s in range(0, len(src), batch_size):
        ex = [to_training_example(src.stored(i)) for i in range(s, min(s + batch_size, len(src)))]
        m = len(ex)
        stack = {k: np.stack([e[k] for e in ex]) for k in ("image", "region_tokens", "region_mask")}
        if m < batch_size:  # one compiled shape
            stack = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, 0)]) for k, v in stack.items()}
        hm = fn(params, stack["image"], stack["region_tokens"], stack["region_mask"],
                content_mask(stack["region_mask"]))
        heat.append(np.asarray(hm, np.float32)[:m])
        ids += [str(e["id"]) for e in ex]
        if len(images) < overlays:
            images += [e["image"][..., 0] for e in ex][:overlays - len(images)]
    heat = np.concatenate(heat)
    size = model.image_size
    boxes = gold_boxes(ids, boxes_path, manifest_path, size)
    res = grounding_metrics(heat, boxes, size, threshold)
    res.update(images=len(ids), split=split, grid=list(heat.shape[2:]),
               attn_scale=float(np.asarray(model.word_attn_scale(params))),
               learned_scale=bool(model.word_features), boxes=os.path.abspath(boxes_path),
               box_supervised=_term_weight(cfg, "region_grounding") > 0)
    if out_dir and overlays > 0:
        paths = write_overlays(os.path.join(out_dir, "grounding"), images, heat[:len(images)],
                               boxes[:len(images)], ids[:len(images)])
        res["overlays"] = [os.path.relpath(p, out_dir) for p in paths]  # beside metrics.json
    log.info("grounding on %d %s images: pointing game %s", len(ids), split,
             ", ".join(f"{r} {v['pointing_game']:.3f}" for r, v in res["per_bone"].items()
                       if v["pointing_game"] is not None))
    return res


def _term_weight(cfg, name: str) -> float:
    try:
        return float(cfg.loss.terms.get(name, 0.0) or 0.0)
    except AttributeError:
        return 0.0


def write_overlays(folder: str, images, heat: np.ndarray, boxes: np.ndarray, ids) -> list[str]:
    """One PNG per image: the three bones' heatmaps over the image, the gold box outlined and the
    heatmap maximum marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    for n, img in enumerate(images):
        size = img.shape[0]
        fig, axes = plt.subplots(1, len(REGIONS), figsize=(3.0 * len(REGIONS), 3.2))
        for r_i, (ax, r) in enumerate(zip(axes, REGIONS)):
            up = upsample(heat[n, r_i], size)
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.imshow(up, cmap="jet", alpha=0.4)
            box = boxes[n, r_i]
            if np.all(np.isfinite(box)):
                ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1],
                                           fill=False, edgecolor="white", linewidth=1.5))
                hit = pointing_hit(up, box)
            else:
                hit = None
            i, j = np.unravel_index(int(np.argmax(up)), up.shape)
            ax.plot([j + 0.5], [i + 0.5], marker="x", color="white", markersize=8)
            ax.set_title(f"{REGION_DISPLAY[r]}" + ("" if hit is None else (" (hit)" if hit else " (miss)")),
                         fontsize=9)
            ax.axis("off")
        fig.suptitle(f"{ids[n]}: region caption -> image", fontsize=9)
        fig.tight_layout()
        p = os.path.join(folder, f"overlay_{n:02d}.png")
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths


def markdown(res: dict) -> list[str]:
    """The grounding table for results.md / the demo report."""
    lines = ["## Phrase grounding (region caption -> global image)", "",
             f"{res['images']} {res['split']} images; heatmap = mean word -> location attention on a "
             f"{res['grid'][0]}x{res['grid'][1]} grid (attention scale {res['attn_scale']:.2f}, "
             f"{'learned' if res['learned_scale'] else 'fixed: no word-region term'}); gold boxes "
             f"never used in training"
             + ("; the attention was taught the localizer's boxes of the training split "
                "(`region_grounding` term)" if res.get("box_supervised") else "")
             + f"; IoU of the map thresholded at {res['threshold']}.", "",
             "| bone | pointing game | mean IoU | n |", "|---|---|---|---|"]
    f = lambda v: "-" if v is None else f"{v:.3f}"
    for r, v in res["per_bone"].items():
        lines.append(f"| {REGION_DISPLAY[r]} | {f(v['pointing_game'])} | {f(v['mean_iou'])} | {v['n']} |")
    lines.append(f"| **mean** | **{f(res['mean_pointing_game'])}** | {f(res['mean_iou'])} | |")
    return lines + [""]
