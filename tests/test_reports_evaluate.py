"""Miner evaluation: the metric against scikit-learn, and the rule miner's accuracy on a freshly
generated synthetic dataset (issue thresholds: fracture-status macro-F1 >= 0.98, every field
>= 0.97)."""

import json
import random

import pytest
from sklearn.metrics import accuracy_score, f1_score

from wristmir_jax.reports.evaluate import evaluate_files, field_accuracy
from wristmir_jax.schema import FRACTURE_STATUS, REGIONS, empty_findings


def _row(i, statuses, cast):
    regions, g = empty_findings()
    for name, s in zip(REGIONS, statuses):
        regions[name]["fracture"] = s
    g["cast"] = cast
    return {"id": f"x{i}", "regions": regions, "global": g}


def test_field_accuracy_matches_sklearn():
    rng = random.Random(0)
    gold, mined = [], []
    for i in range(50):
        gs = [rng.choice(FRACTURE_STATUS) for _ in REGIONS]
        ms = [s if rng.random() < 0.8 else rng.choice(FRACTURE_STATUS) for s in gs]
        gc = rng.random() < 0.5
        gold.append(_row(i, gs, gc))
        mined.append(_row(i, ms, gc if rng.random() < 0.9 else not gc))
    mined.append(_row(99, ["present"] * 3, True))  # an id gold lacks is ignored
    res = field_accuracy(mined, gold)
    y_true = [g["regions"][r]["fracture"] for g in gold for r in REGIONS]
    y_pred = [m["regions"][r]["fracture"] for m in mined[:50] for r in REGIONS]
    assert res["n"] == 50
    assert res["fracture_macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert res["field_accuracy"]["global.cast"] == pytest.approx(
        accuracy_score([g["global"]["cast"] for g in gold], [m["global"]["cast"] for m in mined[:50]]))
    assert res["min_field_accuracy"] == min(res["field_accuracy"].values())
    with pytest.raises(ValueError):
        field_accuracy(mined[:1], [_row(7, ["absent"] * 3, False)])


@pytest.mark.slow
def test_rule_miner_meets_the_issue_thresholds_on_generated_reports(tmp_path):
    from wristmir_jax.cli.main import main

    data = tmp_path / "synth"
    with pytest.raises(SystemExit) as e:
        main(["synth", "--out", str(data), "--n", "240", "--seed", "7", "--image-size", "64", "--workers", "1"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["mine", "--manifest", str(data / "manifest.jsonl"), "--out", str(data / "mined.jsonl")])
    assert e.value.code == 0
    res = evaluate_files(str(data / "mined.jsonl"), str(data / "gold.jsonl"))
    assert res["n"] == sum(1 for _ in open(data / "manifest.jsonl"))
    assert res["fracture_macro_f1"] >= 0.98, json.dumps(res["fracture_f1"])
    assert res["min_field_accuracy"] >= 0.97, res["worst_field"]
