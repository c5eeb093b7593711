"""`wristmir localize train|predict|eval`: the bone localizer's command line.

  train    --workdir W [--config configs/localizer.py[:quick]] [--overwrite] [--config.a.b=v ...]
           e.g. --config.data.manifest=M --config.data.boxes=B --config.train.steps=1000
           B: gold.jsonl / boxes.jsonl, a COCO JSON file, or a folder of YOLO txt files.
           Trains the first stage with the shared trainer (task bone_localizer) in W/localizer/
           on split "train" (all rows when the manifest has no splits), scoring "val" with the
           box_iou evaluator; then (unless --config.refine=False) the second-stage refiner
           (task styloid_refiner, `--config.refiner.*`) in W/refiner/; a region whose val mean
           IoU it lowers is not used. Rerunning the command resumes from the checkpoints.
  predict  --manifest M --workdir W --out boxes.jsonl [--split S] [--no-refine]
           lines {"id", "boxes": {region: [x0, y0, x1, y1] original px}, "scores": {region: p}};
           params from the best checkpoint (box_iou mean IoU; else the latest); the refiner is
           applied when the workdir has one (scores stay the first stage's).
  eval     --manifest M --boxes GOLD --pred boxes.jsonl [--split test] [--out metrics.json]
           per-region mean IoU and hit rate at IoU >= 0.5, as JSON.
Bad inputs (unloadable images, bad boxes, bad manifest lines) go to a rejects file next to the
output, with reasons; `--strict` (`--config.data.strict=True` for train) stops at the first one
(exit code 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import ml_collections
import numpy as np

from wristmir_jax.config import load_config
from wristmir_jax.errors import UserError
from wristmir_jax.imaging.boxes import read_boxes, read_manifest
from wristmir_jax.imaging.crops import fit_prior
from wristmir_jax.imaging.io import ImageError, load_image
from wristmir_jax.localize.localizer import (LOCALIZER_DIR, PRIOR_FILE, Localizer,
                                            LocalizerConfig, result_record)
from wristmir_jax.localize.localizer_train import box_metrics, load_data
from wristmir_jax.localize.refiner import (REFINER_CHECK_FILE, REFINER_DIR, Refiner,
                                          RefinerConfig, canonical_to_prepared,
                                          prepared_to_canonical)
from wristmir_jax.localize.refiner_train import (RefineSet, WindowCollector, iou_before_after,
                                                refine_on_windows)
from wristmir_jax.schema import REGIONS
from wristmir_jax.tasks import bone_localizer as bl, styloid_refiner as st
from wristmir_jax.tasks.styloid_refiner import jitter_config, refiner_config
from wristmir_jax.train import trainer
from wristmir_jax.train.checkpoint import params_sha256, restore_for_inference
from wristmir_jax.train.validate import check_train_config
from wristmir_jax.utils.fs import atomic_write
from wristmir_jax.utils.jsonl import Rejects, dumps, rejects_path, write_jsonl
from wristmir_jax.utils.log import get_logger
from wristmir_jax.utils.progress import track

log = get_logger("localize")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "localizer.py")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="{train,predict,eval}")

    t = sub.add_parser("train", help="train the localizer (and its refiner) on boxed images")
    t.add_argument("--config", default=DEFAULT_CONFIG,
                   help="config file (default configs/localizer.py; ':quick' for the small "
                        "variant); --config.a.b=v overrides any field")
    t.add_argument("--workdir", required=True,
                   help="where the trained localizer is written (rerunning resumes)")
    t.add_argument("--overwrite", action="store_true",
                   help="start from scratch (removes a localizer already in --workdir)")

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
    cfg = load_config(args.config, getattr(args, "config_overrides", ()))
    if str(cfg.get("task", "")) != "bone_localizer":
        raise UserError(f"config task is {cfg.get('task')!r}, not 'bone_localizer' "
                        "(use configs/localizer.py)", path=args.config)
    rcfg = _refiner_train_config(cfg) if cfg.refine else None
    # A bad setting of either stage stops here, before any image is read.
    check_train_config(bl.resolve_config(cfg))
    if rcfg is not None:
        check_train_config(st.resolve_config(rcfg))
    w = os.path.abspath(args.workdir)
    if args.overwrite:
        for name in (LOCALIZER_DIR, REFINER_DIR, PRIOR_FILE, REFINER_CHECK_FILE, "summary.json"):
            path = os.path.join(w, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(w, exist_ok=True)
    # Both stages read the images loaded here (the refiner's windows are cut meanwhile).
    keep = (WindowCollector(refiner_config(rcfg), jitter_config(rcfg)) if rcfg is not None
            else None)
    data = load_data(cfg.data, int(cfg.model.image_size), tuple(cfg.model.clip), keep=keep)
    rej_file = os.path.join(w, "train.rejects.jsonl")
    write_jsonl(rej_file, data.rejects)
    if len(data.val) == 0:
        log.warning("no validation images: the final checkpoints are used, unchecked")
        for c in (cfg, rcfg):
            if c is not None:
                c.evals = {}
                c.train.best_metric = ""

    loc_summary = trainer.train(cfg, os.path.join(w, LOCALIZER_DIR), sources=bl.sources_from(data))
    train = data.train
    prior = fit_prior(({r: train.boxes[i, k].tolist() for k, r in enumerate(REGIONS)
                        if train.has_box[i, k] > 0}, train.rows[i].view) for i in range(len(train)))
    prior.save(os.path.join(w, PRIOR_FILE))
    _, params, tcfg = restore_for_inference(os.path.join(w, LOCALIZER_DIR))
    loc = Localizer(LocalizerConfig.from_dict(tcfg.model.to_dict()), jax.device_get(params), prior)
    val_metrics = pb = ps = None
    if len(data.val):
        pb, ps = loc.predict_prepared(data.val.images.astype("float32") / 255.0)
        preds = {r.id: result_record(pb[i], ps[i], data.val.geos[i])["boxes"]
                 for i, r in enumerate(data.val.rows)}
        val_metrics = box_metrics(preds, {r.id: data.boxes[r.id] for r in data.val.rows})
        log.info("val mean IoU %.3f, min per-region hit rate %.3f", val_metrics["mean_iou"],
                 val_metrics["min_hit_rate"])

    refiner_summary = None
    if rcfg is not None:
        refiner_summary, refined_val = _train_refiner(rcfg, data, pb, ps, w)
        if refined_val is not None:
            refiner_summary["val_first_stage"] = val_metrics
            val_metrics = refined_val

    summary = {"workdir": {"localizer": LOCALIZER_DIR, "refiner": REFINER_DIR if rcfg else None},
               "steps": int(cfg.train.steps), "best": loc_summary.get("best"),
               "counts": data.counts, "params_sha256": params_sha256(params),
               "val": val_metrics, "refiner": refiner_summary, "rejects_file": rej_file,
               "train_wall_s": loc_summary.get("wall_s")}
    with atomic_write(os.path.join(w, "summary.json")) as f:
        json.dump(summary, f, indent=1, sort_keys=True, default=float)
    log.info("wrote the localizer to %s (%d rejects in %s)", w, len(data.rejects), rej_file)
    return 0


def _refiner_train_config(cfg):
    """The refiner's trainer config: the localizer config's `refiner` section with the
    localizer's data (and seed) filled in."""
    r = ml_collections.ConfigDict(cfg.refiner.to_dict())
    for k in ("manifest", "boxes", "classes", "workers", "strict"):
        r.data[k] = cfg.data[k]
    r.data.image_size = int(cfg.model.image_size)
    r.data.clip = tuple(cfg.model.clip)
    r.seed = int(cfg.seed)
    return r


def _train_refiner(rcfg, data, pb, ps, w):
    """Trains the refiner (the shared trainer, task styloid_refiner) on the training windows,
    checks it on the validation split's first-stage boxes and keeps the regions it helps.

    -> (summary dict, val metrics with refinement or None). A region whose val mean IoU the
    refiner lowers is left out of REFINER_CHECK_FILE's `regions_used` (logged); with no region
    left the refiner is not applied."""
    rs = RefineSet.from_extras(data.train.extras)
    out = {"steps": int(rcfg.train.steps), "train_samples": len(rs),
           "window_megabytes": round(sum(x.size for x in rs.windows) / 2**20, 1)}
    check_path = os.path.join(w, REFINER_CHECK_FILE)
    if len(rs) == 0:
        log.warning("refiner: no training box of %s; not trained", ",".join(rcfg.model.regions))
        out["status"] = "no training boxes"
        return out, None
    t0 = time.time()
    summary = trainer.train(rcfg, os.path.join(w, REFINER_DIR), sources=st.sources_from(data, rcfg))
    out.update(train_wall_s=summary.get("wall_s"), best=summary.get("best"))
    _, params, tcfg = restore_for_inference(os.path.join(w, REFINER_DIR))
    rcfg_model = RefinerConfig.from_dict(tcfg.model.to_dict())
    params = jax.device_get(params)
    keep_regions = list(rcfg_model.regions)
    refined_val = None
    vs = RefineSet.from_extras(data.val.extras)
    val = data.val
    if len(vs) and pb is not None:
        refiner = Refiner(rcfg_model, params)
        r_idx = np.asarray(rcfg_model.region_index)[vs.region]
        s1 = np.stack([prepared_to_canonical(pb[i, r], val.geos[i])
                       for i, r in zip(vs.image_index, r_idx)])
        new, ok, covered = refine_on_windows(refiner, vs, s1)
        out["val_windows"] = {"n": len(vs), "refined": int(ok.sum()),
                              "fully_inside_window": int(covered.sum())}
        out["val_iou"] = iou_before_after(vs, s1, np.where(ok[:, None], new, s1),
                                          rcfg_model.regions)
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
        refined_val = box_metrics(preds, {row.id: data.boxes[row.id] for row in val.rows})
        log.info("val with the refiner: mean IoU %.3f, min per-region hit rate %.3f",
                 refined_val["mean_iou"], refined_val["min_hit_rate"])
    else:
        log.warning("refiner: no validation boxes, so it is used unchecked")
        out["val_iou"] = None
    out["regions_used"] = keep_regions
    out["params_sha256"] = params_sha256(params)
    out["status"] = "saved" if keep_regions else "not used (no region improved on val)"
    with atomic_write(check_path) as f:
        json.dump({"regions_used": keep_regions, "val_iou": out["val_iou"]}, f, indent=1,
                  sort_keys=True)
    out["seconds"] = round(time.time() - t0, 1)  # training + validation
    return out, refined_val


# ---------------------------------------------------------------------------------------------
def _predict(args) -> int:
    if args.batch_size <= 0 or args.workers < 0:
        raise UserError(f"--batch-size must be >= 1 and --workers >= 0 (got {args.batch_size}, "
                        f"{args.workers})")
    rejects = Rejects(args.manifest, strict=args.strict)
    rows = read_manifest(args.manifest, rejects, split=args.split)
    if args.split is not None and not rows:  # a typo must not write an empty file and exit 0
        raise UserError(f"no manifest rows in split {args.split!r}", path=args.manifest)
    n_manifest_rejects = len(rejects)
    loc = Localizer.load(args.workdir, restore_for_inference, batch_size=args.batch_size,
                         refine=not args.no_refine)
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
            write_jsonl(rejects_path(args.out if not args.out.endswith(".json")
                                     else args.out[:-5] + ".jsonl"), all_rej)
    print(text)
    return 0
