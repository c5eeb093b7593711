"""`wristmir mine --manifest M --out mined.jsonl [--miner rules|llm --model DIR] [--workers N]
[--strict]`: reports -> structured findings + captions, one JSON line per report.

Bad lines (non-UTF-8, not JSON, missing/duplicate id, empty report) go to `<out>.rejects.jsonl`
with their line numbers; the summary line reads `read N = mined K + rejected R`. With --strict
the first bad line stops the run (exit code 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import os
import time

from wristmir_jax.errors import UserError
from wristmir_jax.reports.mining import checked_reports, map_rules, mined_row
from wristmir_jax.utils.jsonl import Rejects, rejects_path, write_jsonl
from wristmir_jax.utils.log import get_logger
from wristmir_jax.utils.progress import track


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="JSON lines with at least id and report")
    p.add_argument("--out", required=True, help="output mined.jsonl")
    p.add_argument("--miner", choices=("rules", "llm"), default="rules")
    p.add_argument("--model", default=None, help="local causal LM folder (with --miner llm)")
    p.add_argument("--max-new-tokens", type=int, default=320, help="LLM answer length limit")
    p.add_argument("--device", default="cpu", help="PyTorch device for the LLM miner (cpu, cuda, ...)")
    p.add_argument("--workers", type=int, default=1, help="processes for the rule miner")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line (exit 2)")


def run(args: argparse.Namespace) -> int:
    log = get_logger("mine")
    if args.miner == "llm" and not args.model:
        raise UserError("--miner llm needs --model DIR (a local causal LM folder)")
    if args.workers < 1:
        raise UserError(f"--workers must be >= 1, got {args.workers}")
    rejects = Rejects(source=os.fspath(args.manifest), strict=args.strict)
    items = list(checked_reports(args.manifest, rejects))
    n_read = len(items) + len(rejects)
    t0 = time.perf_counter()
    rows = []
    if args.miner == "rules":
        results = map_rules([rep for _, _, rep in items], workers=args.workers)
        for (_, rid, _), (regions, g) in track(zip(items, results), total=len(items), desc="mining"):
            rows.append(mined_row(rid, regions, g, "rules"))
    else:
        from wristmir_jax.reports.deid import deidentify
        from wristmir_jax.reports.llm import LLMMiner

        miner = LLMMiner(args.model, max_new_tokens=args.max_new_tokens, device=args.device)
        for _, rid, rep in track(items, total=len(items), desc="mining (llm)"):
            regions, g, label = miner.mine(deidentify(rep))
            rows.append(mined_row(rid, regions, g, label))
        log.info("llm answers: %d valid, %d retries, %d fallbacks to the rule miner",
                 miner.counts["llm"], miner.counts["retry"], miner.counts["fallback"])
    elapsed = time.perf_counter() - t0
    write_jsonl(args.out, rows)
    rpath = rejects_path(args.out)
    rejects.write(rpath)
    log.info("mined %d reports in %.2f s (%.0f reports/s)", len(rows), elapsed, len(rows) / max(elapsed, 1e-9))
    print(f"read {n_read} = mined {len(rows)} + rejected {len(rejects)}; wrote {args.out}"
          + (f" and {rpath}" if len(rejects) else ""))
    return 0
