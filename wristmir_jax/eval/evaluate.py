"""Evaluation of an index: retrieval metrics per condition (global, each bone) and method
(global-only, region-only, two-stage, exhaustive rerank), image<->text recall, image->report
nDCG with graded report relevance, kNN fracture diagnosis per bone, and
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
from wristmir_jax.utils import fs
from wristmir_jax.utils.fs import atomic_write
from wristmir_jax.utils.log import get_logger

CONDITIONS = ("global",) + REGIONS
PROBE_FEATURES = ("global", "region", "two_stage")
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
    if not fs.isdir(queries):
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


def linear_probe(ta: Any, test_q: QueryEmbeddings, q_labels: np.ndarray, seed: int = 0) -> dict:
    """Per method, AUROC/AUPRC per bone of a logistic regression fitted on the training
    embeddings `ta` (global_img, region_img, crop_mask, records: an IndexArrays or alike)."""
    from sklearn.linear_model import LogisticRegression

    t_labels = fracture_labels(np.asarray(ta.records))
    out: dict[str, dict] = {}
    for m in PROBE_FEATURES:
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


def knn_diagnosis(rankings: dict, q_labels: np.ndarray, db_labels: np.ndarray, knn_k: int) -> dict:
    """Per method, F1/AUROC/AUPRC per bone of the top-`knn_k` neighbours' vote;
    rankings[(bone, method)] = (scores, database positions) of that bone's condition; the methods
    are those ranked for every bone (a probe may leave out the exhaustive rerank)."""
    knn: dict[str, dict] = {}
    for m in [m for m in METHODS if all((r, m) in rankings for r in REGIONS)]:
        res = {"f1": {}, "auroc": {}, "auprc": {}}
        for r_i, r in enumerate(REGIONS):
            neigh = rankings[(r, m)][1][:, :knn_k]
            pred, score = M.knn_vote(neigh, db_labels[:, r_i])
            res["f1"][r] = M.f1_binary(q_labels[:, r_i], pred)
            res["auroc"][r] = M.auroc(q_labels[:, r_i], score)
            res["auprc"][r] = M.auprc(q_labels[:, r_i], score)
        res["mean_f1"] = float(np.mean(list(res["f1"].values())))
        knn[m] = res
    return knn


def evaluate_index(index_dir: str, train_index_dir: str | None = None, cfg: Any = None, *,
                   queries: str = "test", out_dir: str | None = None,
                   ks: tuple[int, ...] = M.DEFAULT_KS, knn_k: int | None = None,
                   export_trec: bool = True, explain: bool = True, gold: str | None = None,
                   text_queries: str | None = None, workdir: str | None = None) -> dict:
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
        rankings[(c, "exhaustive")] = retriever.image_to_image(q, region=region, k=depth, method="exhaustive")

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
        "index": fs.absolute(index_dir),
        "model_params_sha256": index.fingerprint["model"].get("params_sha256"),
        "count": index.count, "queries": n_q, "dim": index.dim,
        "coarse": retriever.coarse.kind, "ks": list(ks), "knn_k": knn_k,
        "relevance_level": M.RELEVANCE_LEVEL, "gain_levels": M.GAIN_LEVELS,
        "settings": {"alpha": s.alpha, "region_alpha": s.region_alpha,
                     "region_weights": list(s.region_weights), "coarse_k": s.coarse_k},
        "retrieval": retrieval,
    }
    # image -> report, graded: the database's reports ranked for each query image (other
    # patients only), each retrieved report's gain = the relevance of its findings to the query's
    result["image_to_report_graded"] = image_to_report_graded(retriever, q, gains, ks)
    if own:
        own_pos = np.arange(n_q)
        i2t_scores, i2t = retriever.image_to_report(q, k=max(ks))
        t2i_scores, t2i = retriever.text_to_image(np.asarray(index.arrays.global_txt, np.float32), k=max(ks))
        result["image_to_text"] = M.own_item_recall(i2t, own_pos, ks, ci=True)
        result["text_to_image"] = M.own_item_recall(t2i, own_pos, ks, ci=True)
        # Reports with the same mined findings have the same caption: between them the order
        # is a tie, so "own report" also reads as "a report identical to the own one".
        classes = M.report_classes(index.arrays.records)
        result["distinct_reports"] = int(classes.max()) + 1 if classes.size else 0
        result["image_to_text_same_report"] = M.own_item_recall(i2t, own_pos, ks, classes, ci=True)
        result["text_to_image_same_report"] = M.own_item_recall(t2i, own_pos, ks, classes, ci=True)
        if export_trec and out_dir:
            # qrels: the own item (or every item with the same report) at the top gain
            own_gain = np.where(np.eye(n_q, dtype=bool), M.GAIN_LEVELS, 0).astype(np.int8)
            same_gain = np.where(classes[:, None] == classes[None, :], M.GAIN_LEVELS, 0).astype(np.int8)
            for name, (sc, ranked) in (("image_to_text", (i2t_scores, i2t)),
                                       ("text_to_image", (t2i_scores, t2i))):
                for suffix, g in (("own", own_gain), ("same_report", same_gain)):
                    trec_files[f"{name}.{suffix}"] = trec.export(
                        os.path.join(out_dir, "trec"), f"{name}.{suffix}", q_ids.tolist(),
                        index.arrays.ids, ranked, sc, g)

    q_labels = fracture_labels(q_records)
    db_labels = fracture_labels(np.asarray(index.arrays.records))
    result["positives"] = {r: int(q_labels[:, i].sum()) for i, r in enumerate(REGIONS)}
    result["diagnosis_knn"] = knn_diagnosis(rankings, q_labels, db_labels, knn_k)
    if explain:
        result["explanation_accuracy"] = explanation_accuracy(
            index, retriever, q, q_ids, q_records, knn_k, read_gold_records(gold) if gold else None)
    if text_queries:
        from wristmir_jax.retrieval.encode import QueryModel
        from wristmir_jax.utils.jsonl import read_jsonl_strict

        reports = {row["id"]: row.get("report", "") for row in read_jsonl_strict(text_queries)}
        result["text_anatomy"] = text_anatomy_ndcg(index, retriever, QueryModel(index, workdir=workdir),
                                                   reports, q_ids, q_records, qg, gains, 10)
    if train_index_dir:
        train = load_index(train_index_dir, params_sha256=index.fingerprint["model"].get("params_sha256"),
                           dim=index.dim)
        result["diagnosis_probe"] = linear_probe(train.arrays, q, q_labels)
    if trec_files:
        result["trec"] = trec_files
    return _nan_to_none(result)


def image_to_report_graded(retriever: Retriever, q: QueryEmbeddings, gains: np.ndarray,
                           ks: tuple[int, ...]) -> dict[str, dict]:
    """{condition: mean ranking metrics} of image->report retrieval (same-patient reports
    excluded) with the graded gains of `gains` (int8[4, Q, N], row 3 global, rows 0-2 bones)."""
    _, idx = retriever.image_to_report(q, k=max(ks), exclude_same_patient=True)
    return {c: M.mean_metrics(M.ranking_metrics(idx, gains[_REL_ROW[c]], ks)) for c in CONDITIONS}


def explanation_accuracy(index: Index, retriever: Retriever, q: QueryEmbeddings, q_ids, q_records: np.ndarray,
                         k: int, gold: dict[str, np.ndarray] | None = None) -> dict:
    """Per bone, the per-field accuracy of the explanation (retrieval/explain.py) built from each
    query's two-stage top-k for that bone, against the query's mined findings and, when `gold`
    ({id: record}) is given, against its gold findings (queries without gold are skipped)."""
    from wristmir_jax.retrieval.explain import explain_neighbours, field_accuracy

    a = index.arrays
    out: dict[str, dict] = {}
    for r in REGIONS:
        scores, idx = retriever.image_to_image(q, region=r, k=k, method="two_stage")
        preds = []
        for s_row, i_row in zip(scores, idx):
            keep = i_row >= 0
            preds.append(explain_neighbours(a.records[i_row[keep]], a.ids[i_row[keep]].tolist(),
                                            s_row[keep].tolist(), r).predicted())
        res = {"vs_mined": field_accuracy(preds, q_records, r)}
        if gold:
            have = [j for j, i in enumerate(np.asarray(q_ids).tolist()) if i in gold]
            if have:
                res["vs_gold"] = field_accuracy([preds[j] for j in have],
                                                np.stack([gold[q_ids[j]] for j in have]), r)
                res["gold_queries"] = len(have)
        out[r] = res
    return out


def read_gold_records(path: str) -> dict[str, np.ndarray]:
    """gold.jsonl (id, regions, global) -> {id: schema record}."""
    from wristmir_jax.schema import encode_record
    from wristmir_jax.utils.jsonl import read_jsonl_strict

    return {row["id"]: encode_record(row["regions"], row["global"]) for row in read_jsonl_strict(path)}


def text_anatomy_ndcg(index: Index, retriever: Retriever, qm, reports: dict[str, str], q_ids, q_records,
                      q_groups, gains: np.ndarray, k: int = 10) -> dict:
    """Text queries made from reports ({id: report text}, the sentences of the findings and
    impression that name a bone): per bone r, over the queries whose text names r, nDCG@k with
    bone r's gains of global text->image retrieval (unconditioned) and of the search conditioned
    on the bones the text names (reports.anatomy; text_to_image_conditioned). Same-patient items
    carry no gain (the query's own image is not a hit)."""
    from wristmir_jax.reports.anatomy import bones_in_text
    from wristmir_jax.reports.rules import split_sections

    rows = []
    for j, qid in enumerate(np.asarray(q_ids).tolist()):
        text = reports.get(qid)
        if not text:
            continue
        body = " ".join(t for kind, t in split_sections(text) if kind in ("findings", "impression", "preamble"))
        sentences = [x.strip() for x in body.replace("\n", ". ").split(".") if x.strip()]
        named = [x for x in sentences if bones_in_text(x)]
        if not named:
            continue
        query = ". ".join(named[:3])
        rows.append((j, query, bones_in_text(query)))
    out: dict[str, dict] = {}
    if not rows:
        return out
    dim = index.dim
    g = np.stack([qm.encode_text(t) for _, t, _ in rows])
    reg = np.zeros((len(rows), len(REGIONS), dim), np.float32)
    for n, (_, t, bones) in enumerate(rows):
        for b in bones:
            reg[n, REGIONS.index(b)] = qm.encode_text(t, b)
    pos = np.array([j for j, _, _ in rows])
    _, uncond = retriever.coarse.search(g, k)
    cond = np.zeros((len(rows), k), np.int32)
    for bones in sorted({b for _, _, b in rows}):
        sel = np.array([n for n, (_, _, b) in enumerate(rows) if b == bones])
        _, cond[sel] = retriever.text_to_image_conditioned(g[sel], reg[sel], bones, k=k)
    for r_i, r in enumerate(REGIONS):
        sel = np.array([n for n, (_, _, b) in enumerate(rows) if r in b])
        if sel.size == 0:
            continue
        gr = gains[r_i][pos[sel]]
        out[r] = {"queries": int(sel.size),
                  "unconditioned": M.mean_metrics(M.ranking_metrics(uncond[sel], gr, (k,))).get(f"ndcg@{k}"),
                  "conditioned": M.mean_metrics(M.ranking_metrics(cond[sel], gr, (k,))).get(f"ndcg@{k}")}
    return out


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
        for name in M.OWN_REPORT_KEYS:
            if name in result:
                lines.append(f"| {name} | " + " | ".join(_fmt(result[name].get(f'recall@{k}')) for k in ks) + " |")
        lines += ["", M.own_report_note(result)]
    if "image_to_report_graded" in result:
        lines += ["", "## Image -> report, graded relevance of the retrieved reports (other patients)", "",
                  "| condition | " + " | ".join(f"nDCG@{k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for c, v in result["image_to_report_graded"].items():
            lines.append(f"| {c} | " + " | ".join(_fmt(v.get(f'ndcg@{k}')) for k in ks) + " |")
    lines += ["", "## Fracture diagnosis per bone", "",
              "| method | " + " | ".join(f"F1 {r}" for r in REGIONS) + " | mean F1 | "
              + " | ".join(f"AUROC {r}" for r in REGIONS) + " |", "|---|" + "---|" * (2 * len(REGIONS) + 1)]
    for m, v in result["diagnosis_knn"].items():
        lines.append(f"| kNN {m} | " + " | ".join(_fmt(v['f1'][r]) for r in REGIONS) + f" | {_fmt(v['mean_f1'])} | "
                     + " | ".join(_fmt(v['auroc'][r]) for r in REGIONS) + " |")
    for m, v in result.get("diagnosis_probe", {}).items():
        lines.append(f"| probe {m} | " + " | ".join("-" for _ in REGIONS) + " | - | "
                     + " | ".join(_fmt(v['auroc'][r]) for r in REGIONS) + " |")
    if "explanation_accuracy" in result:
        from wristmir_jax.retrieval.explain import REGION_FIELDS

        lines += ["", f"## Explanations: per-field accuracy of the preliminary finding (two-stage top {result['knn_k']})", "",
                  "| bone | against | " + " | ".join(REGION_FIELDS) + " |", "|---|---|" + "---|" * len(REGION_FIELDS)]
        for r, v in result["explanation_accuracy"].items():
            for ref in ("vs_mined", "vs_gold"):
                if ref in v:
                    lines.append(f"| {r} | {ref[3:]} | " + " | ".join(_fmt(v[ref].get(f)) for f in REGION_FIELDS) + " |")
    if result.get("text_anatomy"):
        lines += ["", "## Text queries from reports: conditioned on the bones they name vs not (nDCG@10)", "",
                  "| bone | queries | unconditioned | conditioned |", "|---|---|---|---|"]
        for r, v in result["text_anatomy"].items():
            lines.append(f"| {r} | {v['queries']} | {_fmt(v['unconditioned'])} | {_fmt(v['conditioned'])} |")
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
