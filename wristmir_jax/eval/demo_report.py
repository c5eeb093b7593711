"""The demo's `report.md`: what the run produced, in the order a reader asks for it.

1. the headline: region-aware fracture diagnosis (kNN vote per bone) two-stage vs global-only,
   and fracture AUROC from the embeddings, each against the targets of the method;
2. retrieval metrics per condition and method, image <-> report recall;
3. the data that went in (generator, miner, localizer) and the stage timings;
4. phrase grounding (when evaluate measured it): pointing game and IoU per bone against the
   generator's gold boxes, with a few heatmap overlays;
5. explanation accuracy per bone and field (the preliminary finding voted from retrieved cases);
6. three retrieval panels: a test image with a fracture of one bone, queried against the training
   archive, two-stage for that bone (top row) and global-only (bottom row), each with the
   explanation `wristmir explain` gives for it.

Everything is read from the files the stages wrote (eval/metrics.json, summaries); nothing is
recomputed here except the three panel queries and their explanations.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from wristmir_jax.eval.metrics import OWN_REPORT_KEYS, own_report_note
from wristmir_jax.schema import REGION_DISPLAY, REGIONS, fracture_labels
from wristmir_jax.utils.fs import atomic_write, read_json_or_none

# The method's targets (the issue; the WristMIR paper reports 0.568 -> 0.753 and AUROC 0.949).
TARGET_F1_GAIN = 0.10
TARGET_AUROC = 0.90
TARGET_POINTING = 0.85  # per bone, on the full demo (issue 21)
OVERLAYS_SHOWN = 3
PANEL_K = 5
EXPLAIN_K = 10


def _f(v, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def headline(metrics: dict) -> dict[str, Any]:
    """The figures the method is judged by, from an evaluate_index result."""
    knn = metrics["diagnosis_knn"]
    g, t = knn["global"]["mean_f1"], knn["two_stage"]["mean_f1"]
    probe = metrics.get("diagnosis_probe", {})
    auroc = {m: v.get("mean_auroc") for m, v in probe.items()}
    best_auroc_method = max((m for m in auroc if auroc[m] is not None), key=lambda m: auroc[m], default=None)
    best = auroc.get(best_auroc_method) if best_auroc_method else None
    return {
        "knn_mean_f1_global": g, "knn_mean_f1_two_stage": t,
        "knn_mean_f1_gain": None if g is None or t is None else t - g,
        "probe_mean_auroc": auroc, "best_probe_auroc": best, "best_probe_method": best_auroc_method,
        "f1_gain_met": None if g is None or t is None else bool(t - g >= TARGET_F1_GAIN),
        "auroc_met": None if best is None else bool(best >= TARGET_AUROC),
    }


def _headline_md(metrics: dict, h: dict) -> list[str]:
    knn = metrics["diagnosis_knn"]
    probe = metrics.get("diagnosis_probe", {})
    lines = ["## Region-aware fracture diagnosis (test split)", "",
             f"kNN vote of the top {metrics['knn_k']} retrieved cases for the bone in question; "
             "AUROC from a linear probe on frozen embeddings (fitted on the training index) and from "
             "the kNN score.", "",
             "| method | " + " | ".join(f"F1 {REGION_DISPLAY[r]}" for r in REGIONS) + " | **mean F1** | "
             + " | ".join(f"probe AUROC {REGION_DISPLAY[r]}" for r in REGIONS) + " | **mean probe AUROC** | "
             "mean kNN AUROC |",
             "|---|" + "---|" * (2 * len(REGIONS) + 3)]
    names = {"global": "global-only", "region": "region-only", "two_stage": "two-stage"}
    for m, v in knn.items():
        p = probe.get(m, {})
        kauc = [v["auroc"][r] for r in REGIONS if v["auroc"][r] is not None]
        lines.append(f"| {names.get(m, m)} | " + " | ".join(_f(v["f1"][r]) for r in REGIONS)
                     + f" | **{_f(v['mean_f1'])}** | "
                     + " | ".join(_f(p.get("auroc", {}).get(r)) for r in REGIONS)
                     + f" | **{_f(p.get('mean_auroc'))}** | {_f(float(np.mean(kauc)) if kauc else None)} |")
    ok = {True: "met", False: "**not met**", None: "not measured"}
    lines += ["",
              f"- Two-stage minus global-only mean F1: **{_f(h['knn_mean_f1_gain'], 4)}** "
              f"(target >= {TARGET_F1_GAIN:.2f}: {ok[h['f1_gain_met']]}; the paper: 0.568 -> 0.753).",
              f"- Best mean fracture AUROC from the embeddings: **{_f(h['best_probe_auroc'], 4)}** "
              f"({names.get(h['best_probe_method'], h['best_probe_method'])} features; target >= "
              f"{TARGET_AUROC:.2f}: {ok[h['auroc_met']]}; the paper: 0.949).",
              "- Positives among the queries: "
              + ", ".join(f"{REGION_DISPLAY[r]} {n}" for r, n in metrics["positives"].items())
              + f" of {metrics['queries']}.", ""]
    return lines


def _retrieval_md(metrics: dict) -> list[str]:
    k = 10 if 10 in metrics["ks"] else max(metrics["ks"])
    lines = ["## Image -> image retrieval", "",
             f"Graded relevance from the mined reports (gain 0-4, relevant = gain >= "
             f"{metrics['relevance_level']}); same-patient images excluded.", "",
             f"| condition | method | R@{k} | P@{k} | mAP@{k} | nDCG@{k} |", "|---|---|---|---|---|---|"]
    for c, per in metrics["retrieval"].items():
        for m, v in per.items():
            lines.append(f"| {c} | {m} | {_f(v.get(f'recall@{k}'))} | {_f(v.get(f'P@{k}'))} | "
                         f"{_f(v.get(f'map@{k}'))} | {_f(v.get(f'ndcg@{k}'))} |")
    if "image_to_text" in metrics:
        ks = [x for x in (1, 5, 10) if x in metrics["ks"]]
        lines += ["", "## Image <-> report", "", "| direction | " + " | ".join(f"R@{x}" for x in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for name in OWN_REPORT_KEYS:
            if name in metrics:
                lines.append(f"| {name.replace('_', ' ')} | "
                             + " | ".join(_f(metrics[name].get(f"recall@{x}")) for x in ks) + " |")
        lines += ["", own_report_note(metrics)]
    return lines + [""]


def _grounding_md(out: str, metrics: dict) -> list[str]:
    from wristmir_jax.eval.grounding import markdown

    g = metrics.get("grounding")
    if not g:
        return []
    lines = markdown(g)
    met = [v["pointing_game"] is not None and v["pointing_game"] >= TARGET_POINTING
           for v in g["per_bone"].values()]
    lines += [f"Pointing game >= {TARGET_POINTING:.2f} for every bone: "
              f"{'met' if all(met) else '**not met**'}. Heatmaps of each bone's region caption over "
              "the test image (white box: gold box; x: the heatmap maximum).", ""]
    for p in (g.get("overlays") or [])[:OVERLAYS_SHOWN]:
        lines += [f"![grounding]({os.path.join('eval', p)})", ""]  # relative to eval/metrics.json
    return lines


def _explanation_md(metrics: dict) -> list[str]:
    """Per bone, how often the preliminary finding built from the two-stage top k (retrieval/
    explain.py, what `wristmir explain` prints) matches the query's findings, beside kNN F1."""
    acc = metrics.get("explanation_accuracy")
    if not acc:
        return []
    basis = "vs_gold" if all("vs_gold" in v for v in acc.values()) else "vs_mined"
    fields = ("fracture", "pattern", "salter_harris", "displaced", "angulated", "healing")
    f1 = (metrics.get("diagnosis_knn", {}).get("two_stage") or {}).get("f1", {})
    lines = ["## Explanations from retrieved cases", "",
             f"Per bone, the fraction of test queries whose preliminary finding (similarity-weighted "
             f"vote of the two-stage top {metrics.get('knn_k', 10)}, `wristmir explain`) equals the "
             f"query's {'gold' if basis == 'vs_gold' else 'mined'} finding, field by field; kNN F1 "
             "of the same neighbours beside it.", "",
             "| bone | " + " | ".join(fields) + " | kNN F1 (two-stage) |",
             "|---|" + "---|" * (len(fields) + 1)]
    for r in REGIONS:
        row = acc.get(r, {}).get(basis, {})
        lines.append(f"| {REGION_DISPLAY[r]} | " + " | ".join(_f(row.get(x)) for x in fields)
                     + f" | {_f(f1.get(r))} |")
    return lines + [""]


def _inputs_md(out: str, stage_seconds: dict) -> list[str]:
    lines = ["## What went in", ""]
    manifest = os.path.join(out, "synth", "manifest.jsonl")
    if os.path.exists(manifest):
        from collections import Counter

        from wristmir_jax.utils.jsonl import read_jsonl_strict

        rows = read_jsonl_strict(manifest)
        per = Counter(r["split"] for r in rows)
        lines.append(f"- Generator: {len(rows)} images, {len({r['study_id'] for r in rows})} studies, "
                     f"{len({r['patient_id'] for r in rows})} patients; split by patient: "
                     + ", ".join(f"{k} {per[k]}" for k in ("train", "val", "test")) + " images.")
    mined = os.path.join(out, "mined.jsonl")
    if os.path.exists(mined):
        from wristmir_jax.utils.jsonl import read_jsonl_strict

        rows = read_jsonl_strict(mined)
        frac = {r: sum(m["regions"][r]["fracture"] == "present" for m in rows) / max(len(rows), 1)
                for r in REGIONS}
        lines.append(f"- Mined reports: {len(rows)} images; definite fracture "
                     + ", ".join(f"{REGION_DISPLAY[r]} {v:.0%}" for r, v in frac.items()) + ".")
    loc = read_json_or_none(os.path.join(out, "localizer_eval.json"))
    if loc:
        per = loc["per_region"]
        lines.append("- Bone localizer on the test split, hit rate at IoU >= 0.5 (mean IoU): "
                     + ", ".join(f"{REGION_DISPLAY[r]} {_f(per[r]['hit_rate'])} ({_f(per[r]['mean_iou'])})"
                                 for r in REGIONS) + ".")
    train = read_json_or_none(os.path.join(out, "workdir", "summary.json"))
    if train:
        lines.append(f"- Encoders: {train.get('status', '?')} at step {train.get('step', '?')}; params "
                     f"SHA-256 `{str(train.get('params_sha256', ''))[:16]}...`.")
        best = train.get("best") or {}
        if best.get("metric"):
            lines.append(f"- Embedded checkpoint: step {best.get('step')}, the best by "
                         f"`{best['metric']}` ({_f(best.get('value'), 4)}) on the validation split.")
    if stage_seconds:
        total = sum(stage_seconds.values())
        lines.append(f"- Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in stage_seconds.items())
                     + f"; total {total / 60:.1f} min.")
    return lines + [""]


def pick_panel_queries(records: np.ndarray, ids: np.ndarray) -> dict[str, int]:
    """One query per bone: the first item (by id) with a definite fracture of that bone only,
    else of that bone among others, preferring items not already chosen for another bone.
    Deterministic."""
    labels = fracture_labels(records, uncertain_as_positive=False)
    order = np.argsort(ids)
    chosen: dict[str, int] = {}
    for r_i, r in enumerate(REGIONS):
        fresh = [i for i in order if labels[i, r_i] and i not in chosen.values()]
        only = [i for i in fresh if labels[i].sum() == 1]
        reused = [i for i in order if labels[i, r_i]]  # a small set: one image may serve two bones
        pick = (only or fresh or reused or [None])[0]
        if pick is not None:
            chosen[r] = int(pick)
    return chosen


def write_panels(out: str, k: int = PANEL_K) -> list[tuple[str, str, int, int, str, str]]:
    """Three panels (one per bone) into out/panels/; returns [(region, path, fractured cases in
    the two-stage top k, in the global-only top k, the query's explanation paragraph, the query's
    mined findings)]."""
    from wristmir_jax.eval.panels import ImageStore, draw_panel, findings_text
    from wristmir_jax.retrieval.explain import explain_neighbours, paragraph
    from wristmir_jax.retrieval.query import QueryEmbeddings, Retriever
    from wristmir_jax.retrieval.rerank import settings
    from wristmir_jax.retrieval.store import load_index

    test = load_index(os.path.join(out, "index_test"))
    train = load_index(os.path.join(out, "index_train"),
                       params_sha256=test.fingerprint["model"].get("params_sha256"), dim=test.dim)
    retr = Retriever(train, settings(None))
    store = ImageStore(test.fingerprint.get("data_dir"))  # both splits live in one DATA_DIR
    ta, da = test.arrays, train.arrays
    labels = fracture_labels(np.asarray(da.records))
    os.makedirs(os.path.join(out, "panels"), exist_ok=True)
    written = []
    for region, qpos in pick_panel_queries(np.asarray(ta.records), ta.ids).items():
        r_i = REGIONS.index(region)
        # Train and test never share a patient (split by patient), so nothing is excluded.
        q = QueryEmbeddings(ta.global_img[[qpos]], ta.region_img[[qpos]], ta.crop_mask[[qpos]], None)
        rows = []
        for method in ("two_stage", "global"):
            s, idx = retr.image_to_image(q, region=region, k=k, method=method)
            hits = int(sum(labels[j, r_i] for j in idx[0] if j >= 0))
            rows.append((method, s[0], idx[0], hits))
        query = {"title": f"query {ta.ids[qpos]}", "image": store.get(str(ta.images[qpos])),
                 "boxes": ta.boxes[qpos].tolist(), "text": findings_text(ta.records[qpos], region)}
        per_method = []
        for method, s, idx, hits in rows:
            name = "two-stage" if method == "two_stage" else "global-only"
            tiles = [{"title": f"{name} #{rank} ({sc:.3f})" + (" FX" if labels[j, r_i] else ""),
                      "image": store.get(str(da.images[j])),
                      "boxes": [None if not np.all(np.isfinite(b)) else b for b in da.boxes[j].tolist()],
                      "text": findings_text(da.records[j], region)}
                     for rank, (sc, j) in enumerate(zip(s.tolist(), idx.tolist()), start=1) if j >= 0]
            blank = {"title": "", "image": None, "placeholder": "", "text": ""}
            per_method.append(tiles + [blank] * (k - len(tiles)))
        # Row one: the query and the two-stage top k; row two: a label tile and the global-only top k.
        grid = per_method[0] + [{"title": "", "image": None, "placeholder": "global-only ->",
                                 "text": ""}] + per_method[1]
        path = os.path.join(out, "panels", f"{region}.png")
        draw_panel(path, query, grid, region=region, columns=k + 1)
        s_x, i_x = retr.image_to_image(q, region=region, k=EXPLAIN_K, method="two_stage")
        keep = i_x[0] >= 0
        expl = explain_neighbours(np.asarray(da.records)[i_x[0][keep]], da.ids[i_x[0][keep]].tolist(),
                                  s_x[0][keep].tolist(), region)
        written.append((region, path, rows[0][3], rows[1][3], paragraph(expl), query["text"]))
    return written


def write_report(out: str, quick: bool = False, stage_seconds: dict | None = None) -> str:
    """out/report.md from the demo's outputs (plus out/panels/*.png); returns its path."""
    metrics = read_json_or_none(os.path.join(out, "eval", "metrics.json"))
    if metrics is None:
        from wristmir_jax.errors import UserError

        raise UserError("no eval/metrics.json: the evaluate stage has not run", path=out)
    h = headline(metrics)
    lines = ["# wristmir demo report" + (" (--quick)" if quick else ""), "",
             "Synthetic pediatric wrist radiographs and reports -> mined findings -> bone localizer -> "
             "global + local contrastive encoders -> two-stage retrieval. Every figure below comes "
             "from files in this folder.", ""]
    if quick:
        lines += ["*--quick is a smoke run (few images, few steps); its figures say little about the method.*", ""]
    lines += _headline_md(metrics, h)
    lines += ["![per-bone kNN F1](eval/f1_per_bone.png)", "", "![Recall@K](eval/recall_at_k.png)", ""]
    lines += _retrieval_md(metrics)
    lines += _grounding_md(out, metrics)
    lines += _explanation_md(metrics)
    lines += _inputs_md(out, stage_seconds or {})
    panels = write_panels(out)
    lines += ["## Example retrievals", "",
              "A test image with a fracture of one bone, searched against the training archive: "
              f"two-stage for that bone (top row) vs global-only (bottom row), top {PANEL_K}. The "
              "bone's box is outlined; mined findings for that bone are under each image; FX marks a "
              "retrieved case with a fracture of that bone.", ""]
    for region, path, hits_two, hits_glob, explanation, mined in panels:
        rel = os.path.relpath(path, out)
        lines += [f"### {REGION_DISPLAY[region]}", "",
                  f"Fractured {REGION_DISPLAY[region]} among the top {PANEL_K}: two-stage {hits_two}, "
                  f"global-only {hits_glob}.", "", f"![{region}]({rel})", "",
                  f"Explanation from the two-stage top {EXPLAIN_K} (`wristmir explain`): *{explanation}* "
                  f"The query's mined findings: {' '.join(str(mined).split())}.", ""]
    lines += ["Full tables: `eval/results.md`; all metrics: `eval/metrics.json`; TREC runs and qrels: "
              "`eval/trec/`.", ""]
    path = os.path.join(out, "report.md")
    with atomic_write(path) as f:
        f.write("\n".join(lines))
    with atomic_write(os.path.join(out, "headline.json")) as f:
        json.dump(h, f, indent=2, sort_keys=True)
    return path
