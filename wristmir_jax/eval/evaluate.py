"""Evaluation of an index: retrieval metrics per condition (global, each bone) and method
(global-only, region-only, two-stage), image<->text recall, kNN fracture diagnosis per bone, and
a linear probe on frozen embeddings; TREC export, a markdown table and plots.

Queries: `queries="test"` uses the index's own items as queries (the index must hold that
split); each query's own patient (itself included) is excluded from its results and from its
relevance judgments. A path to another index uses its items as outside queries (nothing excluded
unless a hashed patient occurs in both).

Relevance for condition c is row c of reports.relevance (row 3 for "global"), as integer gains
(eval.metrics). Diagnosis for bone r: the top knn_k neighbours of each query for condition r
vote on the bone's fracture label (schema.fracture_labels) -> F1 per bone and the mean; the
fraction of positive neighbours is the kNN score (AUROC/AUPRC). The linear probe (sklearn
LogisticRegression, fitted on a train index's embeddings) scores the query embeddings: features
global_img (global), region_img[r] (region), their concatenation (two_stage).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.eval import metrics as M
from wristmir_jax.eval import trec
from wristmir_jax.retrieval.query import METHODS, QueryEmbeddings, Retriever
from wristmir_jax.retrieval.rerank import settings as rerank_settings
from wristmir_jax.retrieval.store import Index, load_index
from wristmir_jax.schema import REGIONS, SPLITS, fracture_labels
from wristmir_jax.utils.fs import atomic_write
from wristmir_jax.utils.log import get_logger

CONDITIONS = ("global",) + REGIONS
DEFAULT_KNN_K = 10
_REL_ROW = {"global": 3, **{r: i for i, r in enumerate(REGIONS)}}

log = get_logger("wristmir.eval")


def _cfg_get(cfg: Any, key: str, default):
    try:
        return cfg["retrieval"][key]
    except (KeyError, TypeError, AttributeError):
        return default


def _queries(index: Index, queries: str) -> tuple[QueryEmbeddings, np.ndarray, np.ndarray, bool]:
    """(query embeddings, query ids, query records, queries are the index's own items)."""
    if queries in SPLITS:
        split = index.fingerprint.get("split")
        if split is not None and split != queries:
            raise UserError(f"index holds split {split!r}, not {queries!r} (embed that split or pass "
                            "another index as --queries)", path=index.path)
        a = index.arrays
        return (QueryEmbeddings(a.global_img, a.region_img, a.crop_mask, index.patient_codes()),
                a.ids, np.asarray(a.records), True)
    if not os.path.isdir(queries):
        raise UserError(f"--queries must be a split ({', '.join(SPLITS)}) or an index folder", path=queries)
    qi = load_index(queries, params_sha256=index.fingerprint["model"].get("params_sha256"),
                    dim=index.dim)
    db_pat = {p: c for p, c in zip(index.arrays.patients.tolist(), index.patient_codes().tolist())}
    groups = np.array([db_pat.get(p, -1) for p in qi.arrays.patients.tolist()], np.int32)
    a = qi.arrays
    return QueryEmbeddings(a.global_img, a.region_img, a.crop_mask, groups), a.ids, np.asarray(a.records), False


def _gains(q_records: np.ndarray, db_records: np.ndarray, q_groups: np.ndarray, db_groups: np.ndarray,
           chunk: int = 512) -> np.ndarray:
    """int8[4, Q, N] graded gains; same-patient pairs (and the item itself) set to 0."""
    from wristmir_jax.reports.relevance import relevance

    n_q, n = q_records.shape[0], db_records.shape[0]
    out = np.zeros((4, n_q, n), np.int8)
    for s in range(0, n_q, chunk):
        rel = np.asarray(relevance(q_records[s:s + chunk], db_records))
        g = M.graded_gains(rel).astype(np.int8)
        qg = q_groups[s:s + chunk]
        same = (qg[:, None] == db_groups[None, :]) & (qg[:, None] >= 0)
        g[:, same] = 0
        out[:, s:s + chunk] = g
    return out


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, np.generic):
        return _nan_to_none(x.item())
    return x


def _probe(train: Index, test_q: QueryEmbeddings, q_labels: np.ndarray, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression

    ta = train.arrays
    t_labels = fracture_labels(np.asarray(ta.records))
    out: dict[str, dict] = {}
    for m in METHODS:
        res = {"auroc": {}, "auprc": {}}
        for r_i, r in enumerate(REGIONS):
            def feats(g, reg, mask):
                g = np.asarray(g, np.float32)
                reg = np.asarray(reg[:, r_i], np.float32) * np.asarray(mask[:, r_i:r_i + 1], np.float32)
                return {"global": g, "region": reg, "two_stage": np.concatenate([g, reg], 1)}[m]
            y = t_labels[:, r_i]
            if y.min() == y.max():
                res["auroc"][r], res["auprc"][r] = float("nan"), float("nan")
                continue
            clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
            clf.fit(feats(ta.global_img, ta.region_img, ta.crop_mask), y)
            p = clf.predict_proba(feats(test_q.global_, test_q.region, test_q.crop_mask))[:, 1]
            res["auroc"][r] = M.auroc(q_labels[:, r_i], p)
            res["auprc"][r] = M.auprc(q_labels[:, r_i], p)
        res["mean_auroc"] = float(np.nanmean(list(res["auroc"].values()))) if any(
            math.isfinite(v) for v in res["auroc"].values()) else float("nan")
        out[m] = res
    return out


def evaluate_index(index_dir: str, train_index_dir: str | None = None, cfg: Any = None, *,
                   queries: str = "test", out_dir: str | None = None,
                   ks: tuple[int, ...] = M.DEFAULT_KS, knn_k: int | None = None,
                   export_trec: bool = True) -> dict:
    """Every metric of the module docstring for INDEX_DIR; writes TREC files into out_dir/trec
    when out_dir is given. Returns the metrics dict (NaN where undefined, e.g. no positives)."""
    index = load_index(index_dir)
    s = rerank_settings(cfg)
    knn_k = int(_cfg_get(cfg, "knn_k", DEFAULT_KNN_K) if knn_k is None else knn_k)
    if knn_k <= 0 or min(ks) <= 0:
        raise UserError("k values must be positive")
    q, q_ids, q_records, own = _queries(index, queries)
    n_q = q.global_.shape[0]
    retriever = Retriever(index, s)
    depth = max(max(ks), knn_k)
    log.info("evaluating %d queries against %d items (%s coarse search)", n_q, index.count,
             retriever.coarse.kind)

    rankings: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    glob = retriever.image_to_image(q, k=depth, method="global")
    for c in CONDITIONS:
        region = None if c == "global" else c
        rankings[(c, "global")] = glob
        rankings[(c, "region")] = retriever.image_to_image(q, region=region, k=depth, method="region")
        rankings[(c, "two_stage")] = retriever.image_to_image(q, region=region, k=depth, method="two_stage")

    qg = q.groups if q.groups is not None else np.full(n_q, -1, np.int32)
    gains = _gains(q_records, np.asarray(index.arrays.records), qg, retriever.codes)
    retrieval: dict[str, dict] = {}
    trec_files: dict[str, dict] = {}
    for c in CONDITIONS:
        g = gains[_REL_ROW[c]]
        retrieval[c] = {}
        for m in METHODS:
            scores, idx = rankings[(c, m)]
            retrieval[c][m] = M.mean_metrics(M.ranking_metrics(idx, g, ks))
            if export_trec and out_dir:
                trec_files[f"{c}.{m}"] = trec.export(os.path.join(out_dir, "trec"), f"{c}.{m}",
                                                     q_ids.tolist(), index.arrays.ids, idx, scores, g)

    result: dict[str, Any] = {
        "index": os.path.abspath(index_dir),
        "model_params_sha256": index.fingerprint["model"].get("params_sha256"),
        "count": index.count, "queries": n_q, "dim": index.dim,
        "coarse": retriever.coarse.kind, "ks": list(ks), "knn_k": knn_k,
        "relevance_level": M.RELEVANCE_LEVEL, "gain_levels": M.GAIN_LEVELS,
        "settings": {"alpha": s.alpha, "region_alpha": s.region_alpha,
                     "region_weights": list(s.region_weights), "coarse_k": s.coarse_k},
        "retrieval": retrieval,
    }
    if own:
        own_pos = np.arange(n_q)
        _, i2t = retriever.image_to_report(q, k=max(ks))
        result["image_to_text"] = M.own_item_recall(i2t, own_pos, ks)
        _, t2i = retriever.text_to_image(np.asarray(index.arrays.global_txt, np.float32), k=max(ks))
        result["text_to_image"] = M.own_item_recall(t2i, own_pos, ks)

    q_labels = fracture_labels(q_records)
    db_labels = fracture_labels(np.asarray(index.arrays.records))
    result["positives"] = {r: int(q_labels[:, i].sum()) for i, r in enumerate(REGIONS)}
    knn: dict[str, dict] = {}
    for m in METHODS:
        res = {"f1": {}, "auroc": {}, "auprc": {}}
        for r_i, r in enumerate(REGIONS):
            neigh = rankings[(r, m)][1][:, :knn_k]
            pred, score = M.knn_vote(neigh, db_labels[:, r_i])
            res["f1"][r] = M.f1_binary(q_labels[:, r_i], pred)
            res["auroc"][r] = M.auroc(q_labels[:, r_i], score)
            res["auprc"][r] = M.auprc(q_labels[:, r_i], score)
        res["mean_f1"] = float(np.mean(list(res["f1"].values())))
        knn[m] = res
    result["diagnosis_knn"] = knn
    if train_index_dir:
        train = load_index(train_index_dir, params_sha256=index.fingerprint["model"].get("params_sha256"),
                           dim=index.dim)
        result["diagnosis_probe"] = _probe(train, q, q_labels)
    if trec_files:
        result["trec"] = trec_files
    return _nan_to_none(result)


# --- outputs --------------------------------------------------------------------------------
def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown_table(result: dict) -> str:
    ks = result["ks"]
    k_show = [k for k in ks if k in (1, 5, 10)] or ks[:3]
    k_rank = max([k for k in ks if k <= 10] or [min(ks)])
    lines = ["# Retrieval evaluation", "",
             f"{result['queries']} queries against {result['count']} items "
             f"({result['coarse']} coarse search), kNN k = {result['knn_k']}; relevant = gain >= "
             f"{result['relevance_level']} of {result['gain_levels']}.", "",
             "## Image -> image retrieval", "",
             "| condition | method | " + " | ".join(f"R@{k}" for k in k_show) + " | "
             + " | ".join(f"P@{k}" for k in k_show) + f" | mAP@{k_rank} | nDCG@{k_rank} |",
             "|---|---|" + "---|" * (2 * len(k_show) + 2)]
    for c, per in result["retrieval"].items():
        for m, v in per.items():
            lines.append(f"| {c} | {m} | " + " | ".join(_fmt(v.get(f'recall@{k}')) for k in k_show) + " | "
                         + " | ".join(_fmt(v.get(f'P@{k}')) for k in k_show)
                         + f" | {_fmt(v.get(f'map@{k_rank}'))} | {_fmt(v.get(f'ndcg@{k_rank}'))} |")
    if "image_to_text" in result:
        lines += ["", "## Image <-> report (own report / own image)", "",
                  "| direction | " + " | ".join(f"R@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for name in ("image_to_text", "text_to_image"):
            lines.append(f"| {name} | " + " | ".join(_fmt(result[name].get(f'recall@{k}')) for k in ks) + " |")
    lines += ["", "## Fracture diagnosis per bone", "",
              "| method | " + " | ".join(f"F1 {r}" for r in REGIONS) + " | mean F1 | "
              + " | ".join(f"AUROC {r}" for r in REGIONS) + " |", "|---|" + "---|" * (2 * len(REGIONS) + 1)]
    for m, v in result["diagnosis_knn"].items():
        lines.append(f"| kNN {m} | " + " | ".join(_fmt(v['f1'][r]) for r in REGIONS) + f" | {_fmt(v['mean_f1'])} | "
                     + " | ".join(_fmt(v['auroc'][r]) for r in REGIONS) + " |")
    for m, v in result.get("diagnosis_probe", {}).items():
        lines.append(f"| probe {m} | " + " | ".join("-" for _ in REGIONS) + " | - | "
                     + " | ".join(_fmt(v['auroc'][r]) for r in REGIONS) + " |")
    lines += ["", "Positives among the queries: " + ", ".join(f"{r} {n}" for r, n in result["positives"].items()), ""]
    return "\n".join(lines)


def plots(result: dict, out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    ks = result["ks"]
    fig, axes = plt.subplots(1, len(result["retrieval"]), figsize=(4 * len(result["retrieval"]), 3.4),
                             squeeze=False)
    for ax, (c, per) in zip(axes[0], result["retrieval"].items()):
        for m, v in per.items():
            ys = [v.get(f"recall@{k}") for k in ks]
            ax.plot(ks, [np.nan if y is None else y for y in ys], marker="o", label=m)
        ax.set_title(c)
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("K")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("Recall@K")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "recall_at_k.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    width = 0.8 / len(result["diagnosis_knn"])
    for j, (m, v) in enumerate(result["diagnosis_knn"].items()):
        ax.bar(np.arange(len(REGIONS)) + j * width, [v["f1"][r] or 0.0 for r in REGIONS], width, label=m)
    ax.set_xticks(np.arange(len(REGIONS)) + width * (len(result["diagnosis_knn"]) - 1) / 2)
    ax.set_xticklabels([r.replace("_", " ") for r in REGIONS])
    ax.set_ylabel(f"kNN F1 (k={result['knn_k']})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = os.path.join(out_dir, "f1_per_bone.png")
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    return paths


def write_outputs(result: dict, out_json: str) -> dict[str, str]:
    """metrics.json, results.md and the plots in the folder of out_json."""
    out_dir = os.path.dirname(os.path.abspath(out_json))
    with atomic_write(out_json) as f:
        json.dump(result, f, indent=2, sort_keys=True)
    md = os.path.join(out_dir, "results.md")
    with atomic_write(md) as f:
        f.write(markdown_table(result))
    pl = plots(result, out_dir)
    return {"metrics": out_json, "table": md, "recall_plot": pl[0], "f1_plot": pl[1]}
