"""Metrics vs independent implementations: pytrec_eval (reading our TREC files) and sklearn."""

import numpy as np
import pytest
import pytrec_eval
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from wristmir_jax.eval import metrics as M
from wristmir_jax.eval import trec


def _random_ranking(rng, n_q=25, n=120, depth=30):
    rel = rng.random((n_q, n)) ** 2  # graded relevance in [0,1], skewed low
    rel[rng.random((n_q, n)) < 0.4] = 0.0
    rel[0] = 0.0  # a query without relevant items: dropped from the means (as trec_eval does)
    gains = M.graded_gains(rel)
    scores = rng.normal(size=(n_q, n)) + gains * 0.4
    ranked = np.argsort(-scores, axis=1)[:, :depth].astype(np.int32)
    ranked[3, 20:] = -1  # a short list
    top_scores = np.take_along_axis(scores, np.maximum(ranked, 0), 1)
    return gains, ranked, top_scores


def test_graded_gains_levels():
    np.testing.assert_array_equal(M.graded_gains(np.array([0, 0.2499, 0.25, 0.5, 0.74, 0.75, 1.0])),
                                  [0, 0, 1, 2, 2, 3, 4])


@pytest.mark.parametrize("seed", [0, 1])
def test_ranking_metrics_agree_with_pytrec_eval_on_trec_files(tmp_path, seed):
    rng = np.random.default_rng(seed)
    gains, ranked, scores = _random_ranking(rng)
    qids = [f"q{i}" for i in range(gains.shape[0])]
    docids = [f"d{j}" for j in range(gains.shape[1])]
    paths = trec.export(str(tmp_path), "run", qids, docids, ranked, scores, gains)
    run, qrels = trec.read_run(paths["run"]), trec.read_qrels(paths["qrels"])
    ks = (1, 5, 10, 20, 30)
    measures = {f"{m}_{k}" for m in ("P", "recall", "map_cut", "ndcg_cut") for k in ks}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=M.RELEVANCE_LEVEL)
    ref = ev.evaluate(run)
    ours = M.ranking_metrics(ranked, gains, ks)
    compared = 0
    for qi, q in enumerate(qids):
        if ours["num_rel"][qi] == 0:
            assert q not in ref
            continue
        for k in ks:
            for ours_name, trec_name in (("P", "P"), ("recall", "recall"), ("map", "map_cut"),
                                         ("ndcg", "ndcg_cut")):
                assert ours[f"{ours_name}@{k}"][qi] == pytest.approx(ref[q][f"{trec_name}_{k}"], abs=1e-6), \
                    (q, ours_name, k)
                compared += 1
    assert compared > 300
    mean = M.mean_metrics(ours)
    assert mean["queries"] == len(ref)
    assert mean["ndcg@10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-6)


def test_own_item_recall_matches_direct_count():
    rng = np.random.default_rng(3)
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(40)])
    own = rng.integers(0, 50, 40)
    got = M.own_item_recall(ranked, own, (1, 5, 20))
    for k in (1, 5, 20):
        assert got[f"recall@{k}"] == pytest.approx(np.mean([own[i] in ranked[i, :k] for i in range(40)]))


def test_own_report_recall_counts_identical_reports_and_gives_an_interval():
    rng = np.random.default_rng(5)
    records = rng.integers(0, 3, (50, 2))  # 9 possible records: many identical reports
    ranked = np.stack([rng.permutation(50)[:20] for _ in range(40)])
    ranked[0, 10:] = -1
    own = rng.integers(0, 50, 40)
    classes = M.report_classes(records)
    for i in range(50):
        for j in range(50):
            assert (classes[i] == classes[j]) == bool(np.all(records[i] == records[j]))
    got = M.own_item_recall(ranked, own, (1, 5, 20), classes, ci=True)
    plain = M.own_item_recall(ranked, own, (1, 5, 20))
    for k in (1, 5, 20):
        want = np.mean([any(j >= 0 and np.all(records[j] == records[own[i]]) for j in ranked[i, :k])
                        for i in range(40)])
        assert got[f"recall@{k}"] == pytest.approx(want)
        assert got[f"recall@{k}"] >= plain[f"recall@{k}"]
        lo, hi = got["ci95"][f"recall@{k}"]
        assert lo <= got[f"recall@{k}"] <= hi
    assert got["recall@5"] > plain["recall@5"]  # identical reports do count
    # the percentile interval of a 0/1 mean: close to the normal approximation, narrower with more queries
    hits = rng.random(400) < 0.3
    lo, hi = M.bootstrap_ci(hits)
    se = np.sqrt(hits.mean() * (1 - hits.mean()) / hits.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    lo4, hi4 = M.bootstrap_ci(np.tile(hits, 4))
    assert hi4 - lo4 < 0.6 * (hi - lo)


def test_knn_vote_f1_matches_sklearn():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 200)
    neighbors = rng.integers(0, 200, (80, 7))
    neighbors[0, 3:] = -1
    neighbors[1, :] = -1
    pred, score = M.knn_vote(neighbors, labels)
    for q in range(80):
        v = [labels[j] for j in neighbors[q] if j >= 0]
        want = float(np.mean(v)) if v else 0.0
        assert score[q] == pytest.approx(want)
        assert pred[q] == (1 if v and want >= 0.5 else 0)
    y = rng.integers(0, 2, 80)
    assert M.f1_binary(y, pred) == pytest.approx(f1_score(y, pred))
    assert M.f1_binary(np.zeros(5), np.zeros(5)) == f1_score(np.zeros(5), np.zeros(5), zero_division=0)


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_auprc_match_sklearn(ties):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + y
    if ties:
        s = np.round(s, 1)
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert np.isnan(M.auroc(np.ones(4), np.arange(4)))
