"""TREC run and qrels files, so that trec_eval / pytrec_eval / ranx can recompute our metrics.

run:   `qid Q0 docid rank score tag` per retrieved item, best first. Scores are written as
       strictly decreasing (the reranked score, nudged down by 1e-9 per tie) so that trec_eval's
       tie-breaking cannot reorder our ranking.
qrels: `qid 0 docid gain` for every database item with a positive integer gain
       (eval.metrics.graded_gains; excluded items - the query itself, same-patient items - omitted).
"""

from __future__ import annotations

import os

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.utils.fs import atomic_write


def _check_token(t: str, what: str) -> str:
    t = str(t)
    if not t or any(c.isspace() for c in t):
        raise UserError(f"{what} {t!r} cannot be written to a TREC file (empty or whitespace)")
    return t


def write_run(path: str, qids, docids, ranked: np.ndarray, scores: np.ndarray, tag: str = "wristmir") -> int:
    """ranked int[Q,K] database positions (-1 = empty), scores f[Q,K]. Returns lines written."""
    qids = [_check_token(q, "query id") for q in qids]
    docids = np.asarray(docids)
    ranked = np.asarray(ranked)
    scores = np.asarray(scores, np.float64)
    n = 0
    with atomic_write(path) as f:
        for qi, q in enumerate(qids):
            prev = np.inf
            rank = 0
            for j in range(ranked.shape[1]):
                d = int(ranked[qi, j])
                if d < 0:
                    continue
                s = float(scores[qi, j])
                if not s < prev:
                    s = prev - 1e-9
                prev = s
                f.write(f"{q} Q0 {_check_token(docids[d], 'doc id')} {rank} {s:.12g} {tag}\n")
                rank += 1
                n += 1
    return n


def write_qrels(path: str, qids, docids, gains: np.ndarray) -> int:
    """gains int[Q,N] (0 = not relevant or excluded). Returns lines written."""
    qids = [_check_token(q, "query id") for q in qids]
    docids = [_check_token(d, "doc id") for d in np.asarray(docids).tolist()]
    gains = np.asarray(gains)
    n = 0
    with atomic_write(path) as f:
        for qi, q in enumerate(qids):
            for d in np.flatnonzero(gains[qi] > 0):
                f.write(f"{q} 0 {docids[d]} {int(gains[qi, d])}\n")
                n += 1
    return n


def _read_trec(path: str, fields: int, kind: str, value_col: int, cast, what: str) -> dict:
    """{qid: {docid: cast(column value_col)}} from a whitespace-separated TREC file."""
    out: dict = {}
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields:
                raise UserError(f"expected {fields} fields in a TREC {kind} line, got {len(parts)}",
                                path=path, line=ln)
            try:
                out.setdefault(parts[0], {})[parts[2]] = cast(parts[value_col])
            except ValueError:
                raise UserError(what, path=path, line=ln) from None
    return out


def read_run(path: str) -> dict[str, dict[str, float]]:
    """{qid: {docid: score}} (the dict form pytrec_eval and ranx take)."""
    return _read_trec(path, 6, "run", 4, float, "score is not a number")


def read_qrels(path: str) -> dict[str, dict[str, int]]:
    """{qid: {docid: gain}}."""
    return _read_trec(path, 4, "qrels", 3, int, "relevance is not an integer")


def export(out_dir: str, name: str, qids, docids, ranked, scores, gains) -> dict[str, str]:
    """Writes `<name>.run` and `<name>.qrels` into out_dir; returns their paths."""
    run_p = os.path.join(out_dir, f"{name}.run")
    qrels_p = os.path.join(out_dir, f"{name}.qrels")
    write_run(run_p, qids, docids, ranked, scores, tag=name)
    write_qrels(qrels_p, qids, docids, gains)
    return {"run": run_p, "qrels": qrels_p}
