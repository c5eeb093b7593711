"""Two evaluations of the same queries, query by query: is B better than A, or is it noise?

`wristmir evaluate` writes every ranking it scores as a TREC run with its qrels (trec/). For each
run name both evaluations have, this reads the two runs and the (identical) qrels, computes each
query's measure (eval.metrics, the definitions of metrics.json) and reports the means, the mean
paired difference B - A, its 95% bootstrap interval over queries and a two-sided paired
randomisation test (scipy's permutation test, swapping A and B within a query). Several pairs
(A B A2 B2 ..., e.g. one per seed) are pooled query by query. On a test split of a few hundred
queries a difference of a few points is often inside the interval.
"""

from __future__ import annotations

import os
import re

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.eval import metrics as M
from wristmir_jax.eval import trec

_MEASURE = re.compile(r"^(ndcg|recall|P|map|success)@([1-9][0-9]*)$")
DEFAULT_MEASURES = ("ndcg@10", "recall@10", "success@10")


def parse_measures(text: str) -> tuple[str, ...]:
    out = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in out if not _MEASURE.match(m)]
    if not out or bad:
        raise UserError(f"--measures {text!r}: expected e.g. ndcg@10,recall@10,P@5,map@20,success@10")
    return out


def per_query(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], qids: list[str],
              measures: tuple[str, ...]) -> dict[str, np.ndarray]:
    """{measure: f64[Q]} for qids (NaN where the query has no relevant item)."""
    ranked_rows, gain_rows = [], []
    for q in qids:
        docs = sorted(run.get(q, {}).items(), key=lambda kv: -kv[1])
        judged = qrels.get(q, {})
        vocab = {d: i for i, d in enumerate(dict.fromkeys([d for d, _ in docs] + list(judged)))}
        ranked_rows.append([vocab[d] for d, _ in docs])
        g = np.zeros(len(vocab), np.int64)
        for d, v in judged.items():
            g[vocab[d]] = v
        gain_rows.append(g)
    depth = max([len(r) for r in ranked_rows] + [1])
    width = max([len(g) for g in gain_rows] + [1])
    ranked = np.full((len(qids), depth), -1, np.int64)
    gains = np.zeros((len(qids), width), np.int64)
    for i, (r, g) in enumerate(zip(ranked_rows, gain_rows)):
        ranked[i, :len(r)] = r
        gains[i, :len(g)] = g
    ks = sorted({int(_MEASURE.match(m).group(2)) for m in measures})
    pm = M.ranking_metrics(ranked, gains, ks)
    rel = M.retrieved_gains(ranked, gains) >= M.RELEVANCE_LEVEL
    has = (gains >= M.RELEVANCE_LEVEL).any(axis=1)
    out = {}
    for m in measures:
        kind, k = _MEASURE.match(m).groups()
        if kind == "success":
            out[m] = np.where(has, rel[:, :int(k)].any(axis=1), np.nan).astype(np.float64)
        else:
            out[m] = np.asarray(pm[f"{kind}@{k}"], np.float64)
    return out


def paired_test(a: np.ndarray, b: np.ndarray, *, resamples: int = 10000, seed: int = 0) -> dict:
    """Means of a and b, mean(b - a), its bootstrap 95% interval and a two-sided paired
    randomisation p-value, over the entries where both are defined."""
    from scipy import stats

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    out = {"queries": int(a.size), "a": float(a.mean()) if a.size else None,
           "b": float(b.mean()) if b.size else None}
    if a.size < 2:
        return {**out, "diff": None, "ci95": None, "p": None}
    d = b - a
    if not np.any(d):
        p = 1.0
    else:
        p = float(stats.permutation_test(
            (b, a), lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
            n_resamples=resamples, vectorized=True, alternative="two-sided",
            rng=np.random.default_rng(seed)).pvalue)
    return {**out, "diff": float(d.mean()), "ci95": M.bootstrap_ci(d, seed=seed), "p": p,
            "b_better": int((d > 0).sum()), "a_better": int((d < 0).sum())}


def _trec_dir(path: str) -> str:
    d = path if os.path.isdir(path) else os.path.dirname(path)
    t = os.path.join(d, "trec")
    if not os.path.isdir(t):
        raise UserError(f"{path}: no trec/ folder (run `wristmir evaluate` without --no-trec)")
    return t


def compare(a: str | list[str], b: str | list[str], measures: tuple[str, ...] = DEFAULT_MEASURES,
            names: list[str] | None = None) -> dict:
    """{run name: {measure: paired_test}} for the runs every evaluation folder (or its
    metrics.json) holds. a and b may be lists of the same length (e.g. one pair per seed): the
    pairs' per-query values are pooled (query x pair). Refuses a pair whose qrels differ (not the
    same queries or judgments)."""
    a_list, b_list = ([a] if isinstance(a, str) else list(a)), ([b] if isinstance(b, str) else list(b))
    if not a_list or len(a_list) != len(b_list):
        raise UserError("compare needs evaluations in pairs (A B [A2 B2 ...])")
    dirs = [(_trec_dir(x), _trec_dir(y)) for x, y in zip(a_list, b_list)]
    runs = lambda t: {f[:-4] for f in os.listdir(t) if f.endswith(".run")}
    common = sorted(set.intersection(*[runs(t) for pair in dirs for t in pair]))
    where = " and ".join(t for pair in dirs for t in pair)
    if names:
        missing = sorted(set(names) - set(common))
        if missing:
            raise UserError(f"run(s) {', '.join(missing)} not in all of {where}")
        common = [n for n in common if n in names]
    if not common:
        raise UserError(f"no run name in all of {where}")
    out: dict[str, dict] = {}
    for name in common:
        va: dict[str, list] = {m: [] for m in measures}
        vb: dict[str, list] = {m: [] for m in measures}
        for ta, tb in dirs:
            qa = trec.read_qrels(os.path.join(ta, f"{name}.qrels"))
            qb = trec.read_qrels(os.path.join(tb, f"{name}.qrels"))
            if qa != qb:
                raise UserError(f"{name}: the qrels differ between {ta} and {tb} (not the same queries "
                                "or relevance): only evaluations of the same split and data compare")
            qids = sorted(qa)
            pa = per_query(trec.read_run(os.path.join(ta, f"{name}.run")), qa, qids, measures)
            pb = per_query(trec.read_run(os.path.join(tb, f"{name}.run")), qb, qids, measures)
            for m in measures:
                va[m].append(pa[m])
                vb[m].append(pb[m])
        out[name] = {m: paired_test(np.concatenate(va[m]), np.concatenate(vb[m])) for m in measures}
    return out


def markdown(result: dict, a: str | list[str], b: str | list[str]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"
    join = lambda x: x if isinstance(x, str) else ", ".join(x)
    lines = [f"A = {join(a)}", f"B = {join(b)}", "",
             "| run | measure | queries | A | B | B - A | 95% CI | p | B better / A better |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, per in result.items():
        for m, r in per.items():
            ci = "-" if r["ci95"] is None else f"[{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]"
            diff = "-" if r["diff"] is None else f"{r['diff']:+.3f}"
            lines.append(f"| {name} | {m} | {r['queries']} | {f(r['a'])} | {f(r['b'])} | {diff} | {ci} | "
                         f"{f(r['p'])} | {r.get('b_better', '-')} / {r.get('a_better', '-')} |")
    return "\n".join(lines) + "\n"
