"""`wristmir mine --manifest M --out mined.jsonl [--miner rules|llm --model DIR] [--workers N]
[--strict]`: reports -> structured findings + captions, one JSON line per report.

Bad lines (non-UTF-8, not JSON, missing/duplicate id, empty report) go to `<out>.rejects.jsonl`
with their line numbers; the summary line reads `read N = mined K + rejected R`. With --strict
the first bad line stops the run (exit code 2) and nothing is written.

`wristmir mine --manifest M --explain ID [--show-text]` (alias --trace) mines one report with the
rule miner and prints, for each field it set, the sentence (by index) and the lexicon words that
set it, and which sentences were read as history, comparison or a plan. Like every log it prints
no report text unless --show-text is given (then the numbered, normalised, de-identified sentences).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from wristmir_jax.errors import UserError
from wristmir_jax.reports.deid import deidentify
from wristmir_jax.reports.mining import checked_reports, map_rules, mined_row
from wristmir_jax.reports.rules import mine_report, sentences
from wristmir_jax.schema import GLOBAL_KEYS, REGION_KEYS, REGIONS
from wristmir_jax.utils.jsonl import Rejects, rejects_path, write_jsonl
from wristmir_jax.utils.log import get_logger
from wristmir_jax.utils.progress import track


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="JSON lines with at least id and report")
    p.add_argument("--out", default=None, help="output mined.jsonl (required unless --explain)")
    p.add_argument("--miner", choices=("rules", "llm"), default="rules")
    p.add_argument("--model", default=None, help="local causal LM folder (with --miner llm)")
    p.add_argument("--max-new-tokens", type=int, default=320, help="LLM answer length limit")
    p.add_argument("--device", default="cpu", help="PyTorch device for the LLM miner (cpu, cuda, ...)")
    p.add_argument("--workers", type=int, default=1, help="processes for the rule miner")
    p.add_argument("--strict", action="store_true", help="stop at the first bad line (exit 2)")
    p.add_argument("--explain", "--trace", dest="explain", default=None, metavar="ID",
                   help="print which sentence and words set each field of report ID (rule miner)")
    p.add_argument("--show-text", action="store_true",
                   help="with --explain, also print the numbered sentences (report text)")


def explain_lines(report: str, show_text: bool = False) -> list[str]:
    """The --explain printout for one report: field = value <- sentence index: words."""
    text = deidentify(report)
    trace: dict = {}
    regions, g = mine_report(text, trace)
    sents = sentences(text)
    out = [f"{len(sents)} sentences (s0-s{len(sents) - 1})"]
    skipped = trace.get("skipped", [])
    if skipped:
        out.append("not read as findings: " + ", ".join(f"s{i} ({why})" for i, why in skipped))

    def where(items) -> str:
        return "; ".join((f"s{i}: " if i >= 0 else "") + f"\"{w}\"" for i, w in dict.fromkeys(map(tuple, items)))

    for name in REGIONS:
        for k in REGION_KEYS:
            v = regions[name][k]
            key = f"{name}.{k}"
            if k == "fracture" or key in trace:
                src = trace.get(key)
                out.append(f"{key} = {json.dumps(v)}" + (f"  <- {where(src)}" if src else "  (no finding named)"))
    for k in GLOBAL_KEYS:
        key = f"global.{k}"
        if key in trace:
            out.append(f"{key} = {json.dumps(g[k])}  <- {where(trace[key])}")
    if show_text:
        out.append("sentences:")
        out.extend(f"  s{i} [{kind}] {s.strip()}" for i, (kind, s) in enumerate(sents))
    return out


def _explain(args: argparse.Namespace) -> int:
    if args.miner != "rules":
        raise UserError("--explain traces the rule miner; drop --miner llm")
    rejects = Rejects(source=os.fspath(args.manifest), strict=False)
    for _, rid, rep in checked_reports(args.manifest, rejects):
        if rid == str(args.explain):
            print(f"report {rid}:")
            for line in explain_lines(rep, args.show_text):
                print("  " + line)
            return 0
    raise UserError(f"{args.manifest}: no usable report with id {args.explain!r}")


def run(args: argparse.Namespace) -> int:
    log = get_logger("mine")
    if args.explain is not None:
        return _explain(args)
    if args.out is None:
        raise UserError("--out is required (unless --explain ID)")
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
