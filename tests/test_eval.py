"""evaluate_index on a tiny index built from random embeddings + records: same-patient
exclusion, TREC export agreeing with pytrec_eval, kNN F1 against an independent numpy/sklearn
computation, and the written table and plots."""

import json
import os

import numpy as np
import pytest
import pytrec_eval
from sklearn.metrics import f1_score, roc_auc_score

from wristmir_jax.eval import metrics as M
from wristmir_jax.eval.evaluate import evaluate_index, write_outputs
from wristmir_jax.retrieval import store
from wristmir_jax.schema import PATTERNS, REGIONS, empty_findings, encode_record, fracture_labels


def random_records(rng, n):
    recs = []
    for _ in range(n):
        regions, glob = empty_findings()
        for r in REGIONS:
            st = rng.choice(["absent", "present", "uncertain"], p=[0.5, 0.35, 0.15])
            regions[r]["fracture"] = str(st)
            if st != "absent":
                p = str(rng.choice(PATTERNS))
                regions[r]["pattern"] = p
                regions[r]["salter_harris"] = int(rng.integers(1, 6)) if p == "salter_harris" else None
                regions[r]["displaced"] = bool(rng.random() < 0.3)
        glob["cast"] = bool(rng.random() < 0.2)
        recs.append(encode_record(regions, glob))
    return np.stack(recs)


def make_index(path, rng, n=120, d=24, n_patients=40, split="test", dtype="float32", missing=0.1):
    recs = random_records(rng, n)
    labels = fracture_labels(recs).astype(np.float32)
    proj = rng.normal(size=(3, d)).astype(np.float32)
    def emb(extra):
        x = labels @ proj + 0.8 * rng.normal(size=(n, d)).astype(np.float32) + extra
        return x / np.linalg.norm(x, axis=-1, keepdims=True)
    region = np.stack([emb(2 * proj[i]) for i in range(3)], 1)
    patients = rng.integers(0, n_patients, n)
    mask = (rng.random((n, 3)) > missing).astype(np.float32)
    arr = store.IndexArrays(
        global_img=emb(0).astype(dtype), region_img=region.astype(dtype), crop_mask=mask,
        global_txt=emb(0).astype(dtype), region_txt=region.astype(dtype),
        ids=np.array([f"img{i:05d}" for i in range(n)]),
        patients=np.array([store.hash_patient(f"p{p}") for p in patients]),
        records=recs, boxes=np.tile(np.array([[10, 10, 50, 50]], np.float32), (n, 3, 1)),
        images=np.array([f"images/img{i:05d}.png" for i in range(n)]))
    store.write_index(str(path), arr, model={"params_sha256": "f" * 64, "workdir": None}, config=None,
                      split=split)
    return arr, patients


def test_evaluate_index_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    arr, patients = make_index(tmp_path / "test_idx", rng)
    make_index(tmp_path / "train_idx", rng, n=150, split="train")
    out = tmp_path / "eval"
    res = evaluate_index(str(tmp_path / "test_idx"), str(tmp_path / "train_idx"), None,
                         queries="test", out_dir=str(out), ks=(1, 5, 10, 20))
    assert res["queries"] == 120 and res["coarse"] == "exact"
    for c in ("global",) + REGIONS:
        for m in ("global", "region", "two_stage"):
            v = res["retrieval"][c][m]
            assert 0 <= v["ndcg@10"] <= 1 and v["queries"] > 0

    # TREC export: pytrec_eval on our files reproduces our numbers, and no run line pairs a
    # query with an item of the same patient (itself included)
    pid = {f"img{i:05d}": patients[i] for i in range(120)}
    for name in ("distal_radius.two_stage", "global.global"):
        run = {}
        for line in open(res["trec"][name]["run"]):
            q, _, d, _, s, _ = line.split()
            assert pid[q] != pid[d]
            run.setdefault(q, {})[d] = float(s)
        qrels = {}
        for line in open(res["trec"][name]["qrels"]):
            q, _, d, g = line.split()
            assert pid[q] != pid[d]
            qrels.setdefault(q, {})[d] = int(g)
        ev = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10", "recall_5", "P_5", "map_cut_20"},
                                            relevance_level=M.RELEVANCE_LEVEL).evaluate(run)
        c, m = name.split(".")
        mine = res["retrieval"][c][m]
        assert mine["queries"] == len(ev)
        assert mine["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ev.values()]), abs=1e-6)
        assert mine["recall@5"] == pytest.approx(np.mean([v["recall_5"] for v in ev.values()]), abs=1e-6)
        assert mine["P@5"] == pytest.approx(np.mean([v["P_5"] for v in ev.values()]), abs=1e-6)
        assert mine["map@20"] == pytest.approx(np.mean([v["map_cut_20"] for v in ev.values()]), abs=1e-6)

    # kNN diagnosis with global-only retrieval, recomputed by brute force + sklearn
    g = arr.global_img.astype(np.float64)
    sim = g @ g.T
    sim[patients[:, None] == patients[None, :]] = -np.inf
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    labels = fracture_labels(arr.records)
    for i, r in enumerate(REGIONS):
        votes = labels[nn, i].mean(1)
        pred = (votes >= 0.5).astype(int)
        assert res["diagnosis_knn"]["global"]["f1"][r] == pytest.approx(f1_score(labels[:, i], pred))
        assert res["diagnosis_knn"]["global"]["auroc"][r] == pytest.approx(roc_auc_score(labels[:, i], votes))
    assert set(res["diagnosis_probe"]) == {"global", "region", "two_stage"}
    assert 0.5 < res["diagnosis_probe"]["two_stage"]["mean_auroc"] <= 1.0

    # own report / own image, and the same-report reading (identical findings count), by brute force
    s = arr.global_img.astype(np.float64) @ arr.global_txt.astype(np.float64).T
    same = np.all(arr.records[:, None] == arr.records[None], axis=-1)
    assert res["distinct_reports"] == len(np.unique(arr.records, axis=0)) < 120
    for name, sim_q in (("image_to_text", s), ("text_to_image", s.T)):
        ranked = np.argsort(-sim_q, axis=1, kind="stable")
        for k in (1, 5, 10):
            top = ranked[:, :k]
            assert res[name][f"recall@{k}"] == pytest.approx(np.mean([i in top[i] for i in range(120)]))
            assert res[name + "_same_report"][f"recall@{k}"] == pytest.approx(
                np.mean([same[i, top[i]].any() for i in range(120)]))
            lo, hi = res[name]["ci95"][f"recall@{k}"]
            assert lo <= res[name][f"recall@{k}"] <= hi

    paths = write_outputs(res, str(out / "metrics.json"))
    assert json.load(open(paths["metrics"]))["queries"] == 120
    assert "distinct reports" in open(paths["table"]).read()
    assert "| distal_radius | two_stage |" in open(paths["table"]).read()
    assert os.path.getsize(paths["recall_plot"]) > 1000 and os.path.getsize(paths["f1_plot"]) > 1000


def test_evaluate_wrong_split_and_other_model(tmp_path):
    from wristmir_jax.errors import UserError

    rng = np.random.default_rng(1)
    make_index(tmp_path / "a", rng, n=30, split="val")
    with pytest.raises(UserError, match="holds split 'val'"):
        evaluate_index(str(tmp_path / "a"), queries="test")
    arr, _ = make_index(tmp_path / "b", rng, n=30, split="train")
    fp_path = tmp_path / "b" / store.FINGERPRINT
    fp = json.load(open(fp_path))
    fp["model"]["params_sha256"] = "0" * 64
    json.dump(fp, open(fp_path, "w"))
    with pytest.raises(UserError, match="another model"):
        evaluate_index(str(tmp_path / "a"), str(tmp_path / "b"), queries="val")
