"""The rule miner on the project's own hand-written report corpus (tests/data/report_corpus.jsonl):
210 pediatric wrist reports written by hand in several house styles (free text, upper case,
abbreviations and typos, British, structured, follow-ups, post-operative films), gold findings
set by radiology meaning, not produced by the generator. Issue 22 thresholds: fracture-status
macro-F1 >= 0.97 and field accuracy >= 0.98."""

import collections
import json
import os
import re

import pytest
from sklearn.metrics import f1_score

from wristmir_jax.reports.evaluate import evaluate_corpus
from wristmir_jax.reports.mining import mine_text_rules
from wristmir_jax.schema import REGIONS, validate_findings

CORPUS = os.path.join(os.path.dirname(__file__), "data", "report_corpus.jsonl")


@pytest.fixture(scope="module")
def corpus():
    with open(CORPUS, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_corpus_is_large_varied_and_valid(corpus):
    assert len(corpus) >= 200
    assert len({r["id"] for r in corpus}) == len(corpus)
    assert len({r["report"] for r in corpus}) == len(corpus)
    styles = collections.Counter(r["style"] for r in corpus)
    assert {"free", "upper", "abbrev", "followup", "postop"} <= set(styles) and min(styles.values()) >= 4
    for r in corpus:
        validate_findings(r["regions"], r["global"])
    statuses = collections.Counter(r["regions"][n]["fracture"] for r in corpus for n in REGIONS)
    assert all(statuses[s] >= 40 for s in ("absent", "present", "uncertain")), statuses


# Each error kind of issue 22, found by phrasing: (name, pattern over the report text, minimum count).
KINDS = [
    ("hedge after the finding", r"(?:, (?:questionable|suspected)\.|possibly represent|is possible|not excluded|"
                                r"cannot be excluded|questionable for|query torus)", 8),
    ("hedge over a coordinated pair", r"(?:possibl|question|suspic|query).{0,40}radial and ulnar|"
                                      r"radial and ulnar metaphyses.{0,40}(?:possibl|suspic|query|excluded)", 4),
    ("fracture only in history or comparison", r"(?:INDICATION|HISTORY|COMPARISON|Hx|Clinical details).{0,80}"
                                               r"(?i:fracture).{0,200}(?i:no (?:acute )?fracture)", 10),
    ("healed and remodelled remote fracture", r"(?i:remodel|old healed|remote)", 10),
    ("previously questioned, not confirmed", r"(?i:not confirmed|questioned .{0,60} is not seen|to confirm)", 4),
    ("recommendation or plan", r"(?i:recommend|suggest |plan:|will be placed|consider cast|rec splint)", 15),
    ("removed hardware", r"(?i:removed|removal|pin tracts|screw tracts)", 10),
    ("attribution across bones", r"(?i:neither|both fractures|both are|the (?:radial|ulnar) fracture)", 10),
    ("side letter in the indication", r"(?:\b[LR] (?:wrist|arm|WRIST|ARM|distal)|\([LR]\)|, R\.)", 10),
    ("ulnar styloid fracture without a pattern word", r"(?i:fracture of the ulnar styloid|ulnar styloid (?:base )?fracture|"
                                                      r"ulnar styloid fx|fx of ulnar styl)", 12),
]


@pytest.mark.parametrize("name,pattern,minimum", KINDS, ids=[k[0] for k in KINDS])
def test_corpus_covers_every_error_kind(corpus, name, pattern, minimum):
    hits = [r["id"] for r in corpus if re.search(pattern, r["report"], re.S)]
    assert len(hits) >= minimum, (name, hits)


def test_rule_miner_meets_the_issue_thresholds_on_the_corpus(corpus):
    res = evaluate_corpus(CORPUS)
    # The macro-F1 recomputed independently with scikit-learn over report x region.
    mined = [mine_text_rules(r["report"]) for r in corpus]
    y_true = [r["regions"][n]["fracture"] for r in corpus for n in REGIONS]
    y_pred = [m[0][n]["fracture"] for m in mined for n in REGIONS]
    assert res["n"] == len(corpus)
    assert res["fracture_macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert res["fracture_macro_f1"] >= 0.97, (res["fracture_f1"], res["disagreements"])
    assert res["field_accuracy_mean"] >= 0.98, res["disagreements"]
    assert res["min_field_accuracy"] >= 0.95, (res["worst_field"], res["disagreements"])
    # The per-report disagreement list names ids and fields only, never report text.
    text = json.dumps(res)
    assert not any(r["report"].strip()[:30] in text for r in corpus)


def test_corpus_command_line_and_bad_corpus_rows(tmp_path, capsys):
    from wristmir_jax.errors import UserError
    from wristmir_jax.reports.evaluate import main

    main(["--corpus", CORPUS])
    res = json.loads(capsys.readouterr().out)
    assert res["n"] >= 200 and res["fracture_macro_f1"] >= 0.97
    bad = tmp_path / "bad.jsonl"
    with open(CORPUS, encoding="utf-8") as f:
        first = json.loads(f.readline())
    first["regions"]["distal_radius"]["pattern"] = "buckle"  # absent with a pattern: invalid gold
    bad.write_text(json.dumps({"id": "x", "report": "FINDINGS: Normal."}) + "\n" + json.dumps(first) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: corpus row lacks regions, global"):
        evaluate_corpus(str(bad))
    bad.write_text(json.dumps(first) + "\n")
    assert first["id"] == "n001" and first["regions"]["distal_radius"]["fracture"] == "absent"
    with pytest.raises(UserError, match=r"bad.jsonl:1: gold findings"):
        evaluate_corpus(str(bad))


@pytest.mark.parametrize("name", ["report_corpus_holdout.jsonl", "report_corpus_blind2.jsonl"])
def test_rule_miner_on_the_smaller_sets_written_after_the_rules(name):
    # Written after the rule changes (the first set's misses then led to two general rules; the
    # second set was scored once and left as is), so they check the rules beyond the main corpus.
    res = evaluate_corpus(os.path.join(os.path.dirname(__file__), "data", name))
    assert res["n"] == 30
    assert res["fracture_macro_f1"] >= 0.97, res["disagreements"]
    assert res["field_accuracy_mean"] >= 0.98, res["disagreements"]
