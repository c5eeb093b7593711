"""`wristmir compare EVAL_A EVAL_B [EVAL_A2 EVAL_B2 ...] [--runs NAME,...] [--measures ndcg@10,recall@10]
[--out cmp.json]`: two evaluations of the same queries (`wristmir evaluate` output folders or their
metrics.json), query by query: means, the paired difference B - A with its 95% bootstrap interval
and a paired randomisation p-value per TREC run both hold (eval/compare.py). More pairs (one per
seed) are pooled. Use it before calling a change an improvement or a loss: a few hundred test
queries leave several points of noise."""

from __future__ import annotations

import argparse
import json

from wristmir_jax.errors import UserError
from wristmir_jax.utils.fs import atomic_write


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("evals", nargs="+", metavar="EVAL",
                   help="pairs A B [A2 B2 ...]: A the baseline, B the candidate, each a `wristmir evaluate` "
                        "output folder or its metrics.json, of the same split and data; several pairs "
                        "(e.g. one per seed) are pooled query by query")
    p.add_argument("--runs", default=None,
                   help="run names to compare, comma-separated (e.g. image_to_text.own,global.two_stage; "
                        "default: every run both hold)")
    p.add_argument("--measures", default="ndcg@10,recall@10,success@10",
                   help="comma-separated: ndcg@k, recall@k, P@k, map@k, success@k")
    p.add_argument("--out", default=None, help="also write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.eval.compare import compare, markdown, parse_measures

    if len(args.evals) % 2:
        raise UserError(f"compare takes evaluations in pairs (A B [A2 B2 ...]), got {len(args.evals)}")
    a, b = args.evals[0::2], args.evals[1::2]
    names = [n.strip() for n in args.runs.split(",") if n.strip()] if args.runs else None
    res = compare(a, b, parse_measures(args.measures), names)
    if args.out:
        with atomic_write(args.out) as f:
            json.dump({"a": a, "b": b, "runs": res}, f, indent=1)
    print(markdown(res, a, b), end="")
    return 0
