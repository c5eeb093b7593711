"""Retrieval and diagnosis metrics in plain numpy (checked against pytrec_eval and sklearn).

Relevance: report-derived graded relevance (reports.relevance, in [0, 1]) becomes integer gains
0..GAIN_LEVELS (`graded_gains`: floor(4 * rel), so 1 -> 4, 0.5 -> 2, 0.25 -> 1); an item is
relevant for the binary measures when its gain >= RELEVANCE_LEVEL (rel >= 0.5: for a region, two
fractures of it or two normal regions; an uncertain-vs-absent pair is not relevant). These
integers are what the TREC qrels hold, so pytrec_eval (with relevance_level=RELEVANCE_LEVEL)
computes the same numbers from the exported files.

Per query, with g_i the gain at rank i (0 past the end of the list) and R the number of relevant
items in the database (excluded items - the query itself, same-patient items - are not counted):
  P@k = #{i <= k: g_i >= L} / k;  Recall@k = #{i <= k: g_i >= L} / R
  AP@k = sum_{i <= k, g_i >= L} P@i / R                     (trec_eval map_cut)
  nDCG@k = sum_{i <= k} g_i / log2(i + 1) / IDCG@k          (trec_eval ndcg_cut: linear gains)
Means are over queries with R > 0 (trec_eval drops queries without relevant items as well).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

GAIN_LEVELS = 4
RELEVANCE_LEVEL = 2
DEFAULT_KS = (1, 5, 10, 20, 50)


def graded_gains(rel: np.ndarray) -> np.ndarray:
    """Graded relevance in [0, 1] -> int gains 0..GAIN_LEVELS."""
    return np.floor(np.clip(np.asarray(rel, np.float64), 0.0, 1.0) * GAIN_LEVELS + 1e-6).astype(np.int32)


def retrieved_gains(ranked: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """ranked int[Q,K] (-1 = empty slot), gains int[Q,N] -> int[Q,K] gains at each rank."""
    ranked = np.asarray(ranked)
    g = np.take_along_axis(np.asarray(gains), np.maximum(ranked, 0), axis=1)
    return np.where(ranked >= 0, g, 0)


def ranking_metrics(ranked: np.ndarray, gains: np.ndarray, ks: Iterable[int] = DEFAULT_KS,
                    level: int = RELEVANCE_LEVEL) -> dict[str, np.ndarray]:
    """Per-query P@k, Recall@k, AP@k (map_cut), nDCG@k for each k, plus 'num_rel'.

    ranked int[Q,K] database positions best first (-1 = empty); gains int[Q,N] with excluded
    items already set to 0. Values for queries with num_rel == 0 are NaN.
    """
    gains = np.asarray(gains)
    rg = retrieved_gains(ranked, gains).astype(np.float64)
    n_q, depth = rg.shape
    rel = (rg >= level).astype(np.float64)
    num_rel = (gains >= level).sum(axis=1).astype(np.float64)
    has = num_rel > 0
    safe_r = np.where(has, num_rel, 1.0)
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    cum_rel = np.cumsum(rel, axis=1)
    prec_at_i = cum_rel / ranks
    disc = 1.0 / np.log2(ranks + 1.0)
    dcg = np.cumsum(rg * disc, axis=1)
    ideal_sorted = -np.sort(-gains.astype(np.float64), axis=1)
    out: dict[str, np.ndarray] = {"num_rel": num_rel}
    for k in ks:
        k = int(k)
        kk = min(k, depth)
        hits = cum_rel[:, kk - 1] if kk > 0 else np.zeros(n_q)
        p = hits / k
        r = hits / safe_r
        ap = (prec_at_i[:, :kk] * rel[:, :kk]).sum(axis=1) / safe_r
        idl = ideal_sorted[:, :k]
        idcg = (idl * (1.0 / np.log2(np.arange(1, idl.shape[1] + 1) + 1.0))).sum(axis=1)
        nd = np.where(idcg > 0, (dcg[:, kk - 1] if kk > 0 else 0.0) / np.where(idcg > 0, idcg, 1.0), 0.0)
        for name, v in (("P", p), ("recall", r), ("map", ap), ("ndcg", nd)):
            out[f"{name}@{k}"] = np.where(has, v, np.nan)
    return out


def mean_metrics(per_query: dict[str, np.ndarray]) -> dict[str, float]:
    """Means over queries with at least one relevant item; 'queries' counts them."""
    has = per_query["num_rel"] > 0
    out = {k: (float(np.mean(v[has])) if has.any() else float("nan"))
           for k, v in per_query.items() if k != "num_rel"}
    out["queries"] = int(has.sum())
    return out


def own_item_hits(ranked: np.ndarray, own: np.ndarray, k: int, classes: np.ndarray | None = None) -> np.ndarray:
    """bool[Q]: query q's own item (position own[q]) is in the top k of ranked int[Q,K] (-1 =
    none). With classes int[N], any item of the own item's class counts as it (identical
    reports: tie order between them is arbitrary, so the exact own item is not identifiable)."""
    ranked = np.asarray(ranked)[:, :int(k)]
    own = np.asarray(own)
    if classes is None:
        return np.any(ranked == own[:, None], axis=1)
    classes = np.asarray(classes)
    got = np.where(ranked >= 0, classes[np.maximum(ranked, 0)], -1)
    return np.any((got == classes[own][:, None]) & (ranked >= 0), axis=1)


def bootstrap_ci(values: np.ndarray, *, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> list[float]:
    """Percentile bootstrap interval of the mean of values (resampling queries)."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def own_item_recall(ranked: np.ndarray, own: np.ndarray, ks: Iterable[int] = DEFAULT_KS,
                    classes: np.ndarray | None = None, ci: bool = False) -> dict:
    """Image->text Recall@k: the fraction of queries whose own report (position own[q]) is in
    the top k of ranked int[Q,K] (with classes: a report of the same class; see own_item_hits).
    ci: also "ci95": {"recall@k": [lo, hi]}, a bootstrap over queries (277 test queries at
    recall 0.12 give about +-0.04)."""
    out: dict = {}
    intervals = {}
    for k in ks:
        hits = own_item_hits(ranked, own, k, classes)
        out[f"recall@{int(k)}"] = float(np.mean(hits))
        if ci:
            intervals[f"recall@{int(k)}"] = bootstrap_ci(hits)
    if ci:
        out["ci95"] = intervals
    return out


OWN_REPORT_KEYS = ("image_to_text", "text_to_image", "image_to_text_same_report", "text_to_image_same_report")


def own_report_note(result: dict, k: int = 10) -> str:
    """One line: the bootstrap intervals of own-report R@k and how many reports are distinct."""
    parts = [f"{name} [{ci[0]:.3f}, {ci[1]:.3f}]" for name in OWN_REPORT_KEYS
             if (ci := result.get(name, {}).get("ci95", {}).get(f"recall@{k}"))]
    return (f"95% bootstrap intervals of R@{k} over the {result['queries']} queries: " + "; ".join(parts)
            + f". {result.get('distinct_reports', '?')} distinct reports: the same-report rows count any "
            "report with the same mined findings (the identical caption) as the own one.")


def report_classes(records: np.ndarray) -> np.ndarray:
    """int[N]: one class per distinct mined-findings record (the captions are a function of the
    record, so one class per distinct caption text)."""
    records = np.asarray(records)
    return np.unique(records.reshape(len(records), -1), axis=0, return_inverse=True)[1].reshape(-1)


def knn_vote(neighbors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """neighbors int[Q,k] (-1 = none), labels int[N] -> (pred int[Q], score f32[Q]).

    score = fraction of positive neighbours; pred = majority vote (a tie counts as positive, the
    conservative reading). A query without neighbours gets score 0, pred 0.
    """
    neighbors = np.asarray(neighbors)
    valid = neighbors >= 0
    lab = np.where(valid, np.asarray(labels)[np.maximum(neighbors, 0)], 0).astype(np.float64)
    n = valid.sum(axis=1)
    score = np.where(n > 0, lab.sum(axis=1) / np.maximum(n, 1), 0.0)
    pred = ((score >= 0.5) & (n > 0)).astype(np.int32)
    return pred, score.astype(np.float32)


def f1_binary(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """F1 of the positive class; 0 when there is no positive in either (sklearn zero_division=0)."""
    y_true = np.asarray(y_true).astype(bool)
    y_pred = np.asarray(y_pred).astype(bool)
    tp = float(np.sum(y_true & y_pred))
    fp = float(np.sum(~y_true & y_pred))
    fn = float(np.sum(y_true & ~y_pred))
    den = 2 * tp + fp + fn
    return 0.0 if den == 0 else 2 * tp / den


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with one class."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s), np.float64)
    i = 0
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision (step-wise area under precision-recall, thresholds at distinct scores);
    NaN without positives."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    fp = np.cumsum(~ys)
    last = np.r_[np.flatnonzero(np.diff(ss) != 0), len(ss) - 1]  # end of each tie group
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    prev = np.r_[0.0, recall[:-1]]
    return float(np.sum((recall - prev) * precision))
