"""Mining a manifest into `mined.jsonl` rows: input checks with line numbers (empty report, missing
or duplicate id; bad bytes and bad JSON come from utils.jsonl), de-identification, the chosen
miner (rules or LLM), captions, and ordered multi-process mining for the rule miner.

The output row keeps no report text: {"id", "regions", "global", "captions", "miner"}.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any, Iterator

from wristmir_jax.reports.captions import captions
from wristmir_jax.reports.deid import deidentify
from wristmir_jax.reports.rules import mine_report
from wristmir_jax.utils.jsonl import BadLine, Rejects, iter_jsonl


def checked_reports(manifest: str, rejects: Rejects) -> Iterator[tuple[int, str, str]]:
    """Yields (line, id, report) for usable manifest lines; the rest go to `rejects`."""
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(manifest):
        if isinstance(obj, BadLine):
            rejects.add(lineno, obj.reason)
            continue
        rid = obj.get("id")
        if rid is None or (isinstance(rid, str) and not rid.strip()):
            rejects.add(lineno, "missing id")
            continue
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            rejects.add(lineno, f"id must be a string, got {type(rid).__name__}")
            continue
        rid = str(rid)
        if rid in seen:
            rejects.add(lineno, f"duplicate id (first seen on line {seen[rid]})", id=rid)
            continue
        seen[rid] = lineno
        report = obj.get("report")
        if report is None:
            rejects.add(lineno, "missing report", id=rid)
            continue
        if not isinstance(report, str):
            rejects.add(lineno, f"report must be a string, got {type(report).__name__}", id=rid)
            continue
        if not report.strip():
            rejects.add(lineno, "empty report", id=rid)
            continue
        yield lineno, rid, report


def mined_row(rid: str, regions: dict, global_: dict, miner: str) -> dict[str, Any]:
    return {"id": rid, "regions": regions, "global": global_, "captions": captions(regions, global_),
            "miner": miner}


def mine_text_rules(report: str) -> tuple[dict, dict]:
    """De-identify, then the rule miner (a module-level function so worker processes can run it)."""
    return mine_report(deidentify(report))


def map_rules(reports: list[str], workers: int = 1) -> Iterator[tuple[dict, dict]]:
    """Rule-mines reports in input order; `workers > 1` uses a process pool (imap keeps order)."""
    if workers <= 1 or len(reports) < 2 * workers:
        for r in reports:
            yield mine_text_rules(r)
        return
    chunksize = max(1, min(256, len(reports) // (4 * workers)))
    ctx = multiprocessing.get_context("fork" if os.name == "posix" and "jax" not in _loaded() else "spawn")
    with ctx.Pool(processes=workers) as pool:
        yield from pool.imap(mine_text_rules, reports, chunksize=chunksize)


def _loaded() -> set[str]:
    import sys

    return {m.split(".")[0] for m in sys.modules}
