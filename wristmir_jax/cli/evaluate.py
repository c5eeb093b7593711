"""`wristmir evaluate --index INDEX_DIR [--train-index TRAIN_INDEX_DIR] --queries test --out
metrics.json`: retrieval metrics (Recall/Precision/mAP/nDCG@K with report-derived graded
relevance, per region and global), image<->report recall, kNN fracture diagnosis per bone and a
linear probe, for global-only, region-only and two-stage retrieval. Writes metrics.json, a
markdown table (results.md), plots and TREC run/qrels files (trec/) beside it."""

from __future__ import annotations

import argparse
import os

from wristmir_jax.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="INDEX_DIR to evaluate (the database)")
    p.add_argument("--train-index", default=None, help="index of the train split, for the linear probe")
    p.add_argument("--queries", default="test",
                   help="a split name (the index's own items are the queries) or another INDEX_DIR")
    p.add_argument("--out", required=True, help="metrics.json path (other outputs go beside it)")
    p.add_argument("--config", default=None, help="config file for retrieval settings (alpha, weights)")
    p.add_argument("-k", "--ks", default="1,5,10,20,50", help="cut-offs, comma-separated")
    p.add_argument("--knn-k", type=int, default=None, help="neighbours voting in kNN diagnosis (default 10)")
    p.add_argument("--no-trec", action="store_true", help="skip the TREC run/qrels export")


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.eval.evaluate import evaluate_index, write_outputs

    cfg = None
    if args.config:
        from wristmir_jax.config import load_config

        cfg = load_config(args.config, args.config_overrides)
    elif args.config_overrides:
        raise UserError("--config.* overrides need --config FILE")
    try:
        ks = tuple(int(x) for x in args.ks.split(",") if x.strip())
    except ValueError:
        raise UserError(f"--ks {args.ks!r}: expected comma-separated integers") from None
    if not ks or min(ks) <= 0:
        raise UserError("--ks values must be positive")
    if args.knn_k is not None and args.knn_k <= 0:
        raise UserError(f"--knn-k must be a positive integer, got {args.knn_k}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    res = evaluate_index(args.index, args.train_index, cfg, queries=args.queries, out_dir=out_dir,
                         ks=ks, knn_k=args.knn_k, export_trec=not args.no_trec)
    paths = write_outputs(res, args.out)
    two = res["diagnosis_knn"]["two_stage"]["mean_f1"]
    glob = res["diagnosis_knn"]["global"]["mean_f1"]
    print(f"{res['queries']} queries: kNN mean F1 two-stage {two:.3f} vs global-only {glob:.3f}; "
          + (f"image->text R@5 {res['image_to_text'].get('recall@5', float('nan')):.3f}; "
             if "image_to_text" in res and "recall@5" in res["image_to_text"] else "")
          + f"wrote {paths['metrics']}, {paths['table']}")
    return 0
