"""`wristmir evaluate --index INDEX_DIR [--train-index TRAIN_INDEX_DIR] --queries test --out
metrics.json [--config.retrieval.alpha=...]`: retrieval metrics (Recall/Precision/mAP/nDCG@K with report-derived graded
relevance, per region and global), image<->report recall, kNN fracture diagnosis per bone and a
linear probe, for global-only, region-only and two-stage retrieval. Writes metrics.json, a
markdown table (results.md), plots and TREC run/qrels files (trec/) beside it.

With `--grounding-boxes GOLD.jsonl` (boxes no training saw, e.g. the generator's gold.jsonl) it
also measures phrase grounding of the index's model (eval/grounding.py: pointing game and IoU per
bone), into metrics.json["grounding"], results.md and overlay PNGs in grounding/."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from wristmir_jax.errors import UserError
from wristmir_jax.utils import fs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="INDEX_DIR to evaluate (the database)")
    p.add_argument("--train-index", default=None, help="index of the train split, for the linear probe")
    p.add_argument("--queries", default="test",
                   help="a split name (the index's own items are the queries) or another INDEX_DIR")
    p.add_argument("--out", required=True, help="metrics.json path (other outputs go beside it)")
    p.add_argument("--config", default=None,
                   help="config file for the retrieval settings (default: the training config of "
                        "the index's workdir); --config.retrieval.alpha=... overrides either")
    p.add_argument("-k", "--ks", default="1,5,10,20,50", help="cut-offs, comma-separated")
    p.add_argument("--knn-k", type=int, default=None, help="neighbours voting in kNN diagnosis (default 10)")
    p.add_argument("--no-trec", action="store_true", help="skip the TREC run/qrels export")
    p.add_argument("--grounding-boxes", default=None,
                   help="gold boxes jsonl ({id, boxes: {bone: [x0,y0,x1,y1]}}, original pixels): "
                        "also measure phrase grounding (needs the index's workdir and DATA_DIR)")
    p.add_argument("--grounding-manifest", default=None,
                   help="manifest.jsonl of those images (image sizes, laterality); default: the "
                        "manifest.jsonl beside --grounding-boxes")
    p.add_argument("--gold", default=None, help="gold.jsonl: also score the explanations against gold findings")
    p.add_argument("--text-queries", default=None, metavar="MANIFEST",
                   help="manifest.jsonl with the queries' reports: text queries conditioned on the bones "
                        "they name vs unconditioned (nDCG@10 per bone; needs the index's model)")
    p.add_argument("--workdir", default=None, help="model workdir for --text-queries (default: the index's)")


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.eval.evaluate import evaluate_index, write_outputs
    from wristmir_jax.eval.grounding import evaluate_grounding
    from wristmir_jax.eval.grounding import markdown as grounding_markdown
    from wristmir_jax.retrieval.rerank import run_config
    from wristmir_jax.retrieval.store import read_fingerprint

    cfg = run_config(read_fingerprint(args.index), args.config, args.config_overrides)
    try:
        ks = tuple(int(x) for x in args.ks.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--ks {args.ks!r}: expected comma-separated integers") from None
    if not ks or min(ks) <= 0:
        raise UserError("--ks values must be positive")
    if args.knn_k is not None and args.knn_k <= 0:
        raise UserError(f"--knn-k must be a positive integer, got {args.knn_k}")
    out_url = fs.dirname(args.out)
    remote = fs.is_url(out_url)
    if remote:  # matplotlib and the TREC export write local files: write here, then upload
        fs.check_bucket(out_url)
    out_dir = tempfile.mkdtemp(prefix="wristmir-eval-") if remote else out_url
    try:
        res = evaluate_index(args.index, args.train_index, cfg, queries=args.queries,
                             out_dir=out_dir, ks=ks, knn_k=args.knn_k,
                             export_trec=not args.no_trec, gold=args.gold,
                             text_queries=args.text_queries, workdir=args.workdir)
        if args.grounding_boxes:
            res["grounding"] = evaluate_grounding(args.index, args.grounding_boxes,
                                                  args.grounding_manifest, out_dir=out_dir)
        paths = write_outputs(res, os.path.join(out_dir, fs.basename(args.out)) if remote
                              else args.out)
        if "grounding" in res:
            with open(paths["table"], "a", encoding="utf-8") as f:
                f.write("\n" + "\n".join(grounding_markdown(res["grounding"])))
            g = res["grounding"]["per_bone"]
            print("pointing game: " + ", ".join(f"{r} {v['pointing_game']:.3f}"
                                                for r, v in g.items()
                                                if v["pointing_game"] is not None))
        if remote:
            fs.upload_dir(out_dir, out_url, last=(fs.basename(args.out),))
            paths = {k: fs.join(out_url, os.path.relpath(v, out_dir)) for k, v in paths.items()}
    finally:
        if remote:
            shutil.rmtree(out_dir, ignore_errors=True)
    two = res["diagnosis_knn"]["two_stage"]["mean_f1"]
    glob = res["diagnosis_knn"]["global"]["mean_f1"]
    print(f"{res['queries']} queries: kNN mean F1 two-stage {two:.3f} vs global-only {glob:.3f}; "
          + (f"image->text R@5 {res['image_to_text'].get('recall@5', float('nan')):.3f}; "
             if "image_to_text" in res and "recall@5" in res["image_to_text"] else "")
          + f"wrote {paths['metrics']}, {paths['table']}")
    return 0
