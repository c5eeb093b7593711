"""`wristmir box-classifier --workdir W --manifest M --boxes B --out DIR [--eval-boxes GOLD]`:
trains the anatomy classifier of drawn boxes (distal radius, distal ulna, ulnar styloid, other;
retrieval/box_classifier.py) on the crop tower of the model in W, from the train split's images
and bone boxes (B: boxes.jsonl, e.g. the localizer's), and measures it on jittered and random
boxes of the test split (around --eval-boxes when given, else B). `search --box` without
`--region` uses W/box_classifier unless --box-classifier names another folder."""

from __future__ import annotations

import argparse
import os

import numpy as np

from wristmir_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="the contrastive model's workdir")
    p.add_argument("--manifest", required=True, help="manifest.jsonl (image paths, laterality, split)")
    p.add_argument("--boxes", required=True, help="boxes.jsonl of the bones (training boxes)")
    p.add_argument("--eval-boxes", default=None, help="boxes.jsonl for the test boxes (default --boxes)")
    p.add_argument("--out", default=None, help="output folder (default WORKDIR/box_classifier)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--finetune", action="store_true", help="also update the crop projection")
    p.add_argument("--max-images", type=int, default=0, help="cap on training images (0: all)")
    p.add_argument("--margin", type=float, default=0.2, help="crop margin (the dataset's crop_margin)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-roi", dest="roi", action="store_false",
                   help="leave out the box's ROI-pooled global spatial embedding (crop + geometry only)")


def _read_boxes(path: str) -> dict[str, dict]:
    from wristmir_jax.utils.jsonl import read_jsonl_strict

    return {row["id"]: row.get("boxes") or {} for row in read_jsonl_strict(path)}


def collect(manifest: list[dict], root: str, boxes: dict[str, dict], split: str, size: int, margin: float,
            rng: np.random.Generator, describe, max_images: int = 0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Crops f32[N,s,s,1], box descriptors f32[N,F] (`describe(img, boxes, laterality)`, one call per
    image), labels int[N] and views str[N] of the sampled boxes of one split's images."""
    from wristmir_jax.imaging.io import load_image
    from wristmir_jax.retrieval.box_classifier import box_crop, sample_boxes

    crops, geo, labels, views = [], [], [], []
    rows = [m for m in manifest if m.get("split") == split and m["id"] in boxes]
    if max_images:
        rows = rows[:max_images]
    for m in rows:
        img = load_image(os.path.join(root, m["image"]))
        h, w = img.shape
        sampled = sample_boxes(boxes[m["id"]], w, h, rng)
        if not sampled:
            continue
        geo.append(describe(img, [b for b, _ in sampled], m.get("laterality")))
        for box, label in sampled:
            crops.append(box_crop(img, box, m.get("laterality"), size, margin))
            labels.append(label)
            views.append(str(m.get("view") or "unknown"))
    if not crops:
        raise UserError(f"no {split} images with boxes", path=None)
    return (np.stack(crops)[..., None].astype(np.float32), np.concatenate(geo).astype(np.float32),
            np.asarray(labels, np.int32), np.asarray(views))


def run(args: argparse.Namespace) -> int:
    import jax

    from wristmir_jax.retrieval.box_classifier import (CLASSES, OTHER, box_descriptors, classify_crops,
                                                       make_featurizer, train)
    from wristmir_jax.train.checkpoint import params_sha256, restore_for_inference
    from wristmir_jax.utils.jsonl import read_jsonl_strict

    if args.steps <= 0:
        raise UserError(f"--steps must be positive, got {args.steps}")
    model, params, _ = restore_for_inference(args.workdir)
    manifest = read_jsonl_strict(args.manifest)
    root = os.path.dirname(os.path.abspath(args.manifest))
    rng = np.random.default_rng(args.seed)
    size = model.crop_size
    spatial_fn = jax.jit(model.encode_spatial)

    def describe(img, bxs, lat):
        return box_descriptors(model, params, img, bxs, lat, roi=args.roi, spatial_fn=spatial_fn)

    xtr, gtr, ytr, _ = collect(manifest, root, _read_boxes(args.boxes), "train", size, args.margin, rng,
                               describe, args.max_images)
    xte, gte, yte, vte = collect(manifest, root, _read_boxes(args.eval_boxes or args.boxes), "test", size,
                                 args.margin, np.random.default_rng(args.seed + 1), describe)
    feat = make_featurizer(model)
    clf = train(model, params, xtr, gtr, ytr, steps=args.steps, finetune=args.finetune, seed=args.seed, featurizer=feat)
    pred = classify_crops(clf, model, params, xte, gte, featurizer=feat).argmax(-1)
    bone = yte != OTHER
    acc = {"jittered_bone_boxes": float(np.mean(pred[bone] == yte[bone])),
           "random_other_boxes": float(np.mean(pred[~bone] == OTHER)) if (~bone).any() else None,
           "all": float(np.mean(pred == yte))}
    per_class = {c: float(np.mean(pred[yte == i] == i)) for i, c in enumerate(CLASSES) if (yte == i).any()}
    # jittered bone boxes per view: on a lateral the radius and ulna boxes overlap
    per_view = {v: float(np.mean(pred[bone & (vte == v)] == yte[bone & (vte == v)]))
                for v in sorted(set(vte.tolist())) if (bone & (vte == v)).any()}
    clf.meta = {"classes": list(CLASSES),
                "features": "crop tower (3 bone ids) + box geometry" + (" + ROI-pooled global spatial embedding"
                                                                        if args.roi else ""),
                "roi": bool(args.roi), "params_sha256": params_sha256(params), "crop_size": size,
                "margin": args.margin, "finetune": bool(args.finetune), "steps": args.steps,
                "train_boxes": int(ytr.size), "test_boxes": int(yte.size), "test_accuracy": acc,
                "test_accuracy_per_class": per_class, "jittered_bone_boxes_per_view": per_view}
    out = args.out or os.path.join(args.workdir, "box_classifier")
    clf.save(out)
    print(f"box classifier: {ytr.size} training boxes; test accuracy on jittered bone boxes "
          f"{acc['jittered_bone_boxes']:.3f}, on random other boxes {acc['random_other_boxes']:.3f} "
          f"({yte.size} boxes); wrote {out}")
    return 0
