"""`wristmir localize train|predict|eval`: the bone localizer's command line.

  train    --manifest M --boxes B --workdir W [--steps N] [--image-size 256]
           [--refine-steps N] [--refine-regions ulnar_styloid] [--no-refine]
           B: gold.jsonl / boxes.jsonl, a COCO JSON file, or a folder of YOLO txt files.
           Trains on split "train" (all rows when the manifest has no splits), reports val.
           Then trains the second-stage refiner (original-resolution patches around small
           boxes, `localize/refiner.py`); a region whose val mean IoU it lowers is dropped.
  predict  --manifest M --workdir W --out boxes.jsonl [--split S] [--no-refine]
           lines {"id", "boxes": {region: [x0, y0, x1, y1] original px}, "scores": {region: p}};
           the refiner is applied when the workdir has one (scores stay the first stage's).
  eval     --manifest M --boxes GOLD --pred boxes.jsonl [--split test] [--out metrics.json]
           per-region mean IoU and hit rate at IoU >= 0.5, as JSON.
Bad inputs (unloadable images, bad boxes, bad manifest lines) go to a rejects file next to the
output, with reasons; `--strict` stops at the first one (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from wristmir_jax.errors import UserError
from wristmir_jax.schema import REGIONS
from wristmir_jax.utils.jsonl import Rejects, dumps, rejects_path
from wristmir_jax.utils.log import get_logger

log = get_logger("localize")

DEFAULT_REFINE_STEPS = 800


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,predict,eval}")

    t = sub.add_parser("train", help="train the localizer on boxed images")
    t.add_argument("--manifest", required=True, help="manifest.jsonl (id, image, laterality, split)")
    t.add_argument("--boxes", required=True,
                   help="box annotations: gold.jsonl/boxes.jsonl, COCO .json, or a YOLO txt folder")
    t.add_argument("--workdir", required=True, help="where the trained localizer is written")
    t.add_argument("--steps", type=int, default=1500)
    t.add_argument("--image-size", type=int, default=256, help="canonical square side (multiple of 32)")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--classes", default=None,
                   help="YOLO class names in index order, comma-separated (default: classes.txt / "
                        "data.yaml in the folder, else " + ",".join(REGIONS) + ")")
    t.add_argument("--workers", type=int, default=2, help="image loading threads")
    t.add_argument("--no-refine", action="store_true",
                   help="train the first stage only (no second-stage refiner)")
    t.add_argument("--refine-steps", type=int, default=None,
                   help=f"refiner steps (default {DEFAULT_REFINE_STEPS}, at most --steps)")
    t.add_argument("--refine-batch-size", type=int, default=32)
    t.add_argument("--refine-lr", type=float, default=3e-3)
    t.add_argument("--refine-regions", default="ulnar_styloid",
                   help="comma-separated regions the refiner re-estimates (default ulnar_styloid; "
                        "any of " + ",".join(REGIONS) + ")")
    t.add_argument("--overwrite", action="store_true", help="replace a localizer already in --workdir")
    t.add_argument("--strict", action="store_true", help="stop at the first bad input (exit 2)")

    pr = sub.add_parser("predict", help="predict bone boxes for a manifest")
    pr.add_argument("--manifest", required=True)
    pr.add_argument("--workdir", required=True, help="a workdir written by `localize train`")
    pr.add_argument("--out", required=True, help="boxes.jsonl to write")
    pr.add_argument("--split", default=None, help="only rows of this split (default: all)")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--workers", type=int, default=2)
    pr.add_argument("--no-refine", action="store_true",
                    help="ignore the workdir's refiner (first-stage boxes only)")
    pr.add_argument("--strict", action="store_true")

    e = sub.add_parser("eval", help="per-region IoU / hit rate of predicted boxes against gold")
    e.add_argument("--manifest", required=True)
    e.add_argument("--boxes", required=True, help="gold boxes (gold.jsonl, COCO JSON or YOLO folder)")
    e.add_argument("--pred", required=True, help="boxes.jsonl from `localize predict`")
    e.add_argument("--split", default="test", help="split to score ('all' for every row)")
    e.add_argument("--classes", default=None)
    e.add_argument("--out", default=None, help="write the metrics JSON here too")
    e.add_argument("--strict", action="store_true")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "predict": _predict, "eval": _eval}[args.action](args)


def _classes(args) -> list[str] | None:
    return [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None


# ---------------------------------------------------------------------------------------------
def _train(args) -> int:
    import jax

    from wristmir_jax.imaging.boxes import read_boxes, read_manifest
    from wristmir_jax.imaging.crops import fit_prior
    from wristmir_jax.localize.localizer import (CONFIG_FILE, LocalizerConfig, Localizer,
                                                params_sha256, save_localizer)
    from wristmir_jax.localize.localizer_train import (box_metrics, load_prepared,
                                                      train_localizer)
    from wristmir_jax.localize.refiner import RefinerConfig, remove_refiner
    from wristmir_jax.localize.refiner_train import JitterConfig, WindowCollector
    from wristmir_jax.utils.fs import atomic_write
    from wristmir_jax.utils.jsonl import write_jsonl
    from wristmir_jax.utils.progress import track

    t_start = time.time()
    if args.steps < 1 or args.batch_size < 1:
        raise UserError("--steps and --batch-size must be >= 1")
    if args.image_size < 64 or args.image_size % 32:
        raise UserError(f"--image-size must be a multiple of 32 and >= 64, got {args.image_size}")
    refine_steps = (min(DEFAULT_REFINE_STEPS, args.steps) if args.refine_steps is None
                    else args.refine_steps)
    rcfg = None
    if not args.no_refine:
        if refine_steps < 1 or args.refine_batch_size < 1:
            raise UserError("--refine-steps and --refine-batch-size must be >= 1 (or pass --no-refine)")
        regions = tuple(r.strip() for r in args.refine_regions.split(",") if r.strip())
        rcfg = RefinerConfig(regions=regions).check()
    w = os.path.abspath(args.workdir)
    if os.path.exists(os.path.join(w, CONFIG_FILE)) and not args.overwrite:
        raise UserError("already holds a trained localizer (pass --overwrite to replace it)", path=w)
    os.makedirs(w, exist_ok=True)
    remove_refiner(w)  # a refiner belongs to the localizer it was trained with

    man_rej = Rejects(args.manifest, strict=args.strict)
    rows = read_manifest(args.manifest, man_rej)
    has_splits = any(r.split is not None for r in rows)
    train_rows = [r for r in rows if r.split == "train"] if has_splits else rows
    val_rows = [r for r in rows if r.split == "val"] if has_splits else []
    box_rej = Rejects(args.boxes, strict=args.strict)
    boxes = read_boxes(args.boxes, train_rows + val_rows, box_rej, classes=_classes(args))

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
                        path=args.boxes)

    cfg = LocalizerConfig(image_size=args.image_size)
    img_rej = Rejects(args.manifest, strict=args.strict)
    jitter = JitterConfig()
    # The refiner's windows are cut while each image is in memory (images are read once).
    keep = WindowCollector(rcfg, jitter, boxes) if rcfg is not None else None
    t0 = time.time()
    train = load_prepared(train_rows, cfg, img_rej, boxes, workers=args.workers, progress=track,
                          keep=keep)
    val_rows = [r for r in val_rows if r.laterality is not None and boxes.get(r.id)]
    val = load_prepared(val_rows, cfg, img_rej, boxes, workers=args.workers, progress=track,
                        keep=keep)
    counts.update({"train_images": len(train), "val_images": len(val),
                   "images_rejected": len(img_rej)})
    log.info("loaded %d train and %d val images in %.1fs (%d rejected)", len(train), len(val),
             time.time() - t0, len(img_rej))
    if len(train) == 0:
        raise UserError("no training image could be loaded (see the rejects file)", path=args.manifest)

    history: list[dict] = []

    def on_log(row: dict) -> None:
        history.append(row)
        log.info("step %d loss %.4f (focal %.4f giou %.4f) %.0fs", row["step"], row["loss"],
                 row["focal"], row["giou"], row["elapsed_s"])

    t1 = time.time()
    params = train_localizer(train, cfg, args.steps, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, log_every=max(1, min(100, args.steps // 10)),
                             on_log=on_log)
    params = jax.device_get(params)
    train_s = time.time() - t1

    prior = fit_prior(({r: train.boxes[i, k].tolist() for k, r in enumerate(REGIONS)
                        if train.has_box[i, k] > 0}, train.rows[i].view) for i in range(len(train)))
    save_localizer(w, cfg, params, prior)

    val_metrics = pb = ps = None
    if len(val):
        from wristmir_jax.localize.localizer import result_record

        loc = Localizer(cfg, params, prior)
        pb, ps = loc.predict_prepared(val.images.astype("float32") / 255.0)
        preds = {r.id: result_record(pb[i], ps[i], val.geos[i])["boxes"]
                 for i, r in enumerate(val.rows)}
        val_metrics = box_metrics(preds, {r.id: boxes[r.id] for r in val.rows})
        log.info("val mean IoU %.3f, min per-region hit rate %.3f", val_metrics["mean_iou"],
                 val_metrics["min_hit_rate"])

    refiner_summary = None
    if rcfg is not None:
        refiner_summary, refined_val = _train_refiner(args, rcfg, jitter, refine_steps, train,
                                                      val, pb, ps, boxes, w)
        if refined_val is not None:
            refiner_summary["val_first_stage"] = val_metrics
            val_metrics = refined_val

    all_rej = man_rej.rows + box_rej.rows + img_rej.rows
    rej_file = os.path.join(w, "train.rejects.jsonl")
    write_jsonl(rej_file, all_rej)
    write_jsonl(os.path.join(w, "metrics.jsonl"), history)
    summary = {"config": cfg.to_dict(), "steps": args.steps, "batch_size": args.batch_size,
               "lr": args.lr, "seed": args.seed, "train_seconds": round(train_s, 1),
               "devices": [str(d) for d in jax.devices()][:1], "counts": counts,
               "params_sha256": params_sha256(params), "final": history[-1] if history else None,
               "val": val_metrics, "refiner": refiner_summary, "rejects_file": rej_file,
               "wall_seconds": round(time.time() - t_start, 1)}
    with atomic_write(os.path.join(w, "summary.json")) as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    log.info("wrote the localizer to %s (%d rejects in %s)", w, len(all_rej), rej_file)
    return 0


def _train_refiner(args, rcfg, jitter, steps, train, val, pb, ps, boxes, w):
    """Trains the refiner on the training windows, checks it on val, saves what helps.

    -> (summary dict, val metrics with refinement or None). A region whose val mean IoU the
    refiner lowers is removed from it (logged); with no region left nothing is saved."""
    import jax
    import numpy as np

    from wristmir_jax.localize.localizer import params_sha256, result_record
    from wristmir_jax.localize.localizer_train import box_metrics
    from wristmir_jax.localize.refiner import (REFINER_METRICS_FILE, Refiner,
                                              canonical_to_prepared, prepared_to_canonical,
                                              save_refiner)
    from wristmir_jax.localize.refiner_train import (RefineSet, iou_before_after,
                                                    refine_on_windows, restrict, train_refiner)
    from wristmir_jax.utils.jsonl import write_jsonl

    rs = RefineSet.from_extras(train.extras)
    t_all = time.time()
    out = {"config": rcfg.to_dict(), "jitter": jitter.to_dict(), "steps": steps,
           "batch_size": args.refine_batch_size, "lr": args.refine_lr, "train_samples": len(rs),
           "window_megabytes": round(sum(x.size for x in rs.windows) / 2**20, 1)}
    if len(rs) == 0:
        log.warning("refiner: no training box of %s; not trained", ",".join(rcfg.regions))
        out["status"] = "no training boxes"
        return out, None

    history: list[dict] = []

    def on_log(row: dict) -> None:
        history.append(row)
        log.info("refiner step %d loss %.4f (giou %.4f centre %.4f) %.0fs", row["step"],
                 row["loss"], row["giou"], row["centre_l1"], row["elapsed_s"])

    t0 = time.time()
    params = jax.device_get(train_refiner(
        rs, rcfg, steps, jitter, batch_size=args.refine_batch_size, lr=args.refine_lr, seed=args.seed,
        log_every=max(1, min(100, steps // 5)), on_log=on_log))
    out["train_seconds"] = round(time.time() - t0, 1)
    out["final"] = history[-1] if history else None
    write_jsonl(os.path.join(w, REFINER_METRICS_FILE), history)

    keep_regions = list(rcfg.regions)
    refined_val = None
    vs = RefineSet.from_extras(val.extras) if val.extras is not None else None
    if vs is not None and len(vs) and pb is not None:
        refiner = Refiner(rcfg, params)
        r_idx = np.asarray(rcfg.region_index)[vs.region]
        s1 = np.stack([prepared_to_canonical(pb[i, r], val.geos[i])
                       for i, r in zip(vs.image_index, r_idx)])
        new, ok, covered = refine_on_windows(refiner, vs, s1)
        out["val_windows"] = {"n": len(vs), "refined": int(ok.sum()),
                              "fully_inside_window": int(covered.sum())}
        out["val_iou"] = iou_before_after(vs, s1, np.where(ok[:, None], new, s1), rcfg.regions)
        for name, m in out["val_iou"].items():
            log.info("refiner val %s: mean IoU %.3f -> %.3f, hit rate %.3f -> %.3f", name,
                     m["mean_iou_before"], m["mean_iou_after"], m["hit_rate_before"],
                     m["hit_rate_after"])
            if m["mean_iou_after"] < m["mean_iou_before"]:
                log.warning("refiner: lowers the val mean IoU of %s; not used for it", name)
                keep_regions.remove(name)
        pb_ref = pb.copy()
        for j, (i, r) in enumerate(zip(vs.image_index, r_idx)):
            if ok[j] and REGIONS[r] in keep_regions:
                pb_ref[i, r] = canonical_to_prepared(new[j], val.geos[i])
        preds = {row.id: result_record(pb_ref[i], ps[i], val.geos[i])["boxes"]
                 for i, row in enumerate(val.rows)}
        refined_val = box_metrics(preds, {row.id: boxes[row.id] for row in val.rows})
        log.info("val with the refiner: mean IoU %.3f, min per-region hit rate %.3f",
                 refined_val["mean_iou"], refined_val["min_hit_rate"])
    else:
        log.warning("refiner: no validation boxes, so it is saved unchecked")
        out["val_iou"] = None
    out["regions_used"] = keep_regions
    if keep_regions:
        rcfg, params = restrict(rcfg, params, keep_regions)
        save_refiner(w, rcfg, params)
        out["params_sha256"] = params_sha256(params)
        out["status"] = "saved"
    else:
        out["status"] = "not saved (no region improved on val)"
    out["seconds"] = round(time.time() - t_all, 1)  # training + validation + saving
    return out, refined_val


# ---------------------------------------------------------------------------------------------
def _predict(args) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from wristmir_jax.imaging.boxes import read_manifest
    from wristmir_jax.imaging.io import ImageError, load_image
    from wristmir_jax.localize.localizer import Localizer
    from wristmir_jax.utils.fs import atomic_write
    from wristmir_jax.utils.progress import track

    if args.batch_size <= 0 or args.workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0 (got {args.batch_size}, "
                        f"{args.workers})")
    rejects = Rejects(args.manifest, strict=args.strict)
    rows = read_manifest(args.manifest, rejects, split=args.split)
    if args.split is not None and not rows:  # a typo must not write an empty file and exit 0
        raise UserError(f"no manifest rows in split {args.split!r}", path=args.manifest)
    n_manifest_rejects = len(rejects)
    loc = Localizer.load(args.workdir, batch_size=args.batch_size, refine=not args.no_refine)
    if loc.refiner is not None:
        log.info("refining %s with the second stage", ",".join(loc.refiner.cfg.regions))

    def load(row):
        try:
            return row, load_image(row.image), None
        except ImageError as e:
            return row, None, e.reason

    n_ok = 0
    t0 = time.time()
    chunk = max(args.batch_size, 16)
    with atomic_write(args.out) as f, ThreadPoolExecutor(max(1, args.workers)) as pool:
        for start in track(range(0, len(rows), chunk), total=(len(rows) + chunk - 1) // chunk,
                           desc="localizing"):
            batch = []
            for row, img, err in pool.map(load, rows[start:start + chunk]):
                if err is not None:
                    rejects.add(row.line, err, id=row.id)
                else:
                    batch.append((row, img))
            if not batch:
                continue
            results = loc.predict([b[1] for b in batch], [b[0].laterality for b in batch])
            for (row, _), res in zip(batch, results):
                f.write(dumps({"id": row.id, **res}) + "\n")
                n_ok += 1
    rej_file = rejects_path(args.out)
    rejects.write(rej_file)
    image_rejects = len(rejects) - n_manifest_rejects
    log.info("%d images: %d boxed, %d rejected (+%d bad manifest lines) in %.1fs; rejects in %s",
             len(rows), n_ok, image_rejects, n_manifest_rejects, time.time() - t0, rej_file)
    for name, c in loc.refine_counts.items():
        log.info("refiner %s: %d boxes refined, %d first-stage boxes kept", name, c["refined"],
                 c["kept"])
    return 0


# ---------------------------------------------------------------------------------------------
def _eval(args) -> int:
    from wristmir_jax.imaging.boxes import read_boxes, read_manifest
    from wristmir_jax.localize.localizer_train import box_metrics
    from wristmir_jax.utils.fs import atomic_write

    rejects = Rejects(args.manifest, strict=args.strict)
    rows = read_manifest(args.manifest, rejects, split=None if args.split == "all" else args.split)
    if not rows:
        raise UserError(f"no manifest rows in split {args.split!r}", path=args.manifest)
    gold_rej = Rejects(args.boxes, strict=args.strict)
    gold = read_boxes(args.boxes, rows, gold_rej, classes=_classes(args))
    pred_rej = Rejects(args.pred, strict=args.strict)
    pred = read_boxes(args.pred, rows, pred_rej)
    metrics = box_metrics(pred, gold, [r.id for r in rows])
    metrics.update({"split": args.split, "gold_rejected": len(gold_rej),
                    "pred_rejected": len(pred_rej), "manifest_rejected": len(rejects)})
    text = json.dumps(metrics, indent=2, sort_keys=True)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(text + "\n")
        all_rej = rejects.rows + gold_rej.rows + pred_rej.rows
        if all_rej:
            from wristmir_jax.utils.jsonl import write_jsonl

            write_jsonl(rejects_path(args.out if not args.out.endswith(".json")
                                     else args.out[:-5] + ".jsonl"), all_rej)
    print(text)
    return 0
