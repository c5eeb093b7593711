"""`wristmir compare`: two evaluations of the same queries, query by query (paired difference,
bootstrap interval, randomisation p), checked against pytrec_eval's per-query numbers and an
exact enumeration of the sign flips."""

import dataclasses
import itertools

import numpy as np
import pytest
import pytrec_eval

from tests.test_eval import make_index
from wristmir_jax.cli.main import main
from wristmir_jax.errors import UserError
from wristmir_jax.eval import metrics as M
from wristmir_jax.eval import trec
from wristmir_jax.eval.compare import compare, paired_test
from wristmir_jax.eval.evaluate import evaluate_index
from wristmir_jax.retrieval import store


def test_paired_test_p_equals_the_exact_sign_flip_enumeration():
    rng = np.random.default_rng(0)
    a = rng.random(10)
    b = a + rng.normal(0.15, 0.2, 10)
    r = paired_test(a, b)
    d = b - a
    flips = np.array(list(itertools.product((1, -1), repeat=10)))
    exact = np.mean(np.abs((flips * d).mean(1)) >= abs(d.mean()) - 1e-12)
    assert r["p"] == pytest.approx(exact, abs=1e-9)
    assert r["diff"] == pytest.approx(d.mean()) and r["a"] == pytest.approx(a.mean())
    assert r["ci95"][0] < d.mean() < r["ci95"][1]
    assert r["b_better"] + r["a_better"] == 10
    # undefined queries (NaN) drop out pairwise; no difference at all is p = 1
    a2 = np.append(a, np.nan)
    assert paired_test(a2, np.append(b, 0.3))["queries"] == 10
    assert paired_test(a, a)["p"] == 1.0


def _other_model(arr, rng):
    """The same items and reports, embedded by another (noisier) model."""
    def noisy(x):
        y = x.astype(np.float32) + 0.6 * rng.normal(size=x.shape).astype(np.float32)
        return (y / np.linalg.norm(y, axis=-1, keepdims=True)).astype(x.dtype)
    return dataclasses.replace(arr, global_img=noisy(arr.global_img), global_txt=noisy(arr.global_txt),
                               region_img=noisy(arr.region_img))


def test_compare_two_evaluations_query_by_query(tmp_path, capsys):
    rng = np.random.default_rng(1)
    arr, _ = make_index(tmp_path / "a_idx", rng, n=90)
    store.write_index(str(tmp_path / "b_idx"), _other_model(arr, rng), model={"params_sha256": "e" * 64,
                      "workdir": None}, config=None, split="test")
    res = {}
    for k in ("a", "b"):
        res[k] = evaluate_index(str(tmp_path / f"{k}_idx"), None, None, queries="test",
                                out_dir=str(tmp_path / f"eval_{k}"), ks=(1, 5, 10), explain=False)
    names = ["image_to_text.own", "text_to_image.same_report", "distal_radius.two_stage", "global.global"]
    got = compare(str(tmp_path / "eval_a"), str(tmp_path / "eval_b"), ("ndcg@10", "recall@10", "success@10"), names)
    assert sorted(got) == sorted(names)
    # the means are metrics.json's numbers (computed from the arrays, not from the TREC files)
    for k in ("a", "b"):
        assert got["image_to_text.own"]["recall@10"][k] == pytest.approx(res[k]["image_to_text"]["recall@10"])
        assert got["text_to_image.same_report"]["success@10"][k] == pytest.approx(
            res[k]["text_to_image_same_report"]["recall@10"])
        assert got["distal_radius.two_stage"]["ndcg@10"][k] == pytest.approx(
            res[k]["retrieval"]["distal_radius"]["two_stage"]["ndcg@10"])
    # the paired difference is the mean of pytrec_eval's per-query differences
    for name in ("distal_radius.two_stage", "image_to_text.own"):
        per = {}
        for k in ("a", "b"):
            t = tmp_path / f"eval_{k}" / "trec"
            qrels = trec.read_qrels(str(t / f"{name}.qrels"))
            per[k] = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut_10"}, relevance_level=M.RELEVANCE_LEVEL
                                                    ).evaluate(trec.read_run(str(t / f"{name}.run")))
        d = [per["b"][q]["ndcg_cut_10"] - per["a"][q]["ndcg_cut_10"] for q in per["a"]]
        r = got[name]["ndcg@10"]
        assert r["queries"] == len(d) and r["diff"] == pytest.approx(np.mean(d), abs=1e-9)
        assert r["ci95"][0] <= r["diff"] <= r["ci95"][1] and 0 < r["p"] <= 1
    # the noisier model loses the own reports, and the test says it is no accident
    own = got["image_to_text.own"]["recall@10"]
    assert own["diff"] < 0 and own["ci95"][1] < 0 and own["p"] < 0.01

    # two pairs (as two seeds would be) pool query by query: the pooled mean difference is the mean
    # of the two pairs' differences (same query count each)
    pooled = compare([str(tmp_path / "eval_a")] * 2, [str(tmp_path / "eval_b"), str(tmp_path / "eval_a")],
                     ("recall@10",), ["image_to_text.own"])["image_to_text.own"]["recall@10"]
    assert pooled["queries"] == 180 and pooled["diff"] == pytest.approx(own["diff"] / 2)
    with pytest.raises(UserError, match="in pairs"):
        compare([str(tmp_path / "eval_a")], [])

    # the CLI: a table, and JSON with --out
    with pytest.raises(SystemExit) as e:
        main(["compare", str(tmp_path / "eval_a"), str(tmp_path / "eval_b" / "metrics.json"),
              "--runs", "image_to_text.own", "--measures", "recall@10", "--out", str(tmp_path / "cmp.json")])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "| image_to_text.own | recall@10 | 90 |" in out
    assert (tmp_path / "cmp.json").stat().st_size > 0


def test_compare_refuses_different_judgments_and_bad_measures(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for k in ("a", "b"):  # two different datasets: other reports, other qrels
        make_index(tmp_path / f"{k}_idx", rng, n=40)
        evaluate_index(str(tmp_path / f"{k}_idx"), None, None, queries="test", out_dir=str(tmp_path / f"eval_{k}"),
                       ks=(1, 10), explain=False)
    with pytest.raises(UserError, match="qrels differ"):
        compare(str(tmp_path / "eval_a"), str(tmp_path / "eval_b"), names=["global.global"])
    for argv, msg in ((["--measures", "ndcg10"], "expected e.g."), (["--runs", "nope"], "not in all of")):
        with pytest.raises(SystemExit) as e:
            main(["compare", str(tmp_path / "eval_a"), str(tmp_path / "eval_a"), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main(["compare", str(tmp_path / "eval_a"), str(tmp_path / "eval_a"), str(tmp_path / "eval_b")])
    assert e.value.code == 2 and "in pairs" in capsys.readouterr().err
    with pytest.raises(UserError, match="no trec/ folder"):
        compare(str(tmp_path), str(tmp_path / "eval_a"))
