"""Explanations from retrieved cases: the weighted vote against an independent reference, the
CLI (`explain`, `search --explain`) on a tiny random index, the LLM phrasing with its check
against the facts and the fallback to the template, per-field accuracy, and bad --llm folders."""

import collections
import json

import numpy as np
import pytest
import torch  # noqa: F401  (the `llm` extra; part of the dev environment)

from wristmir_jax.cli.main import main
from wristmir_jax.retrieval import explain as X
from wristmir_jax.schema import GLOBAL_FLAGS, REGIONS, decode_record
from test_eval import make_index, random_records
from test_reports_llm import tiny_model_dir  # noqa: F401  (fixture)


def _ref_vote(values, sims):
    w = [max(s, 0.0) for s in sims]
    if sum(w) <= 0:
        w = [1.0] * len(w)
    tot = collections.defaultdict(float)
    for v, wi in zip(values, w):
        tot[str(v)] += wi
    best = max(tot.values())
    winners = [str(v) for v in values if tot[str(v)] == best]
    return winners[0], best / sum(w)


def _check(expl, recs, ids, sims, region):
    dec = [decode_record(r) for r in recs]
    st = [d[0][region]["fracture"] for d in dec]
    v, agree = _ref_vote(st, sims)
    assert str(expl.fields["fracture"].value) == v
    assert expl.fields["fracture"].agreement == pytest.approx(agree, abs=1e-5)
    assert [c["id"] for c in expl.fields["fracture"].support] == [i for i, s in zip(ids, st) if s == v]
    frac = [j for j, s in enumerate(st) if s != "absent"]
    for f in X.FRACTURE_FIELDS:
        if v == "absent" or not frac:
            assert expl.fields[f].value == X.NOT_APPLICABLE
        else:
            rv, ra = _ref_vote([dec[j][0][region][f] for j in frac], [sims[j] for j in frac])
            assert str(expl.fields[f].value) == rv and expl.fields[f].agreement == pytest.approx(ra, abs=1e-5)
    for f in GLOBAL_FLAGS:
        rv, ra = _ref_vote([d[1][f] for d in dec], sims)
        assert str(expl.fields[f].value) == rv


@pytest.mark.parametrize("seed", range(6))
def test_vote_matches_reference(seed):
    rng = np.random.default_rng(seed)
    recs = random_records(rng, 9)
    sims = sorted(rng.uniform(-0.2, 1.0, 9).tolist(), reverse=True)
    ids = [f"c{i}" for i in range(9)]
    for region in REGIONS:
        expl = X.explain_neighbours(recs, ids, sims, region)
        _check(expl, recs, ids, sims, region)
        text = X.paragraph(expl)
        assert region.replace("_", " ") in text and not X.unsupported_claims(text, expl)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("explain") / "idx"
    arr, patients = make_index(path, np.random.default_rng(21), n=60, d=16, n_patients=20)
    return str(path), arr


def _run(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_explain_cli_uses_the_search_results(tiny, capsys):
    path, arr = tiny
    code, out, err = _run(capsys, ["search", "--index", path, "--id", "img00005", "--region", "distal_ulna",
                                   "-k", "7", "--json"])
    assert code == 0, err
    rows = json.loads(out)["results"]
    code, out, err = _run(capsys, ["explain", "--index", path, "--id", "img00005", "--region", "distal_ulna",
                                   "-k", "7", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert [c["id"] for c in res["explanation"]["cases"]] == [r["id"] for r in rows]
    pos = [int(r["id"][3:]) for r in rows]
    expl = X.explain_neighbours(arr.records[pos], [r["id"] for r in rows], [r["score"] for r in rows], "distal_ulna")
    _check(expl, arr.records[pos], [r["id"] for r in rows], [r["score"] for r in rows], "distal_ulna")
    assert res["explanation"]["fields"]["fracture"]["value"] == expl.fields["fracture"].value
    assert "distal ulna" in res["paragraph"]
    code, out, err = _run(capsys, ["search", "--index", path, "--id", "img00005", "--where", "ulnar styloid",
                                   "-k", "5", "--explain", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["region"] == "ulnar_styloid" and res["explanation"]["region"] == "ulnar_styloid"
    code, out, err = _run(capsys, ["explain", "--index", path, "--id", "img00005", "--region", "distal_ulna"])
    assert code == 0 and "Preliminary finding" in out


@pytest.mark.parametrize("argv,msg", [
    (["search", "--id", "img00001", "--explain"], "one bone"),
    (["search", "--id", "img00001", "--where", "  "], "--where is empty"),
    (["search", "--id", "img00001", "--where", "scaphoid waist"], "names none of the bones"),
    (["explain", "--id", "img00001", "--region", "distal_radius", "-k", "0"], "-k must be a positive"),
    (["explain", "--id", "img00001", "--region", "distal_radius", "--llm", "MISSING"], "model folder not found"),
])
def test_bad_input_one_line_exit_2(tiny, capsys, argv, msg, tmp_path):
    argv = [a if a != "MISSING" else str(tmp_path / "nope") for a in argv]
    code, _, err = _run(capsys, [argv[0], "--index", tiny[0], *argv[1:]])
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_llm_folder_that_is_not_a_causal_lm(tiny, capsys, tmp_path):
    from transformers import T5Config

    (tmp_path / "empty").mkdir()
    T5Config(d_model=8, d_ff=8, num_layers=1, num_heads=1, vocab_size=10).save_pretrained(tmp_path / "t5")
    for folder in ("empty", "t5"):
        code, _, err = _run(capsys, ["explain", "--index", tiny[0], "--id", "img00001", "--region",
                                     "distal_radius", "--llm", str(tmp_path / folder)])
        assert code == 2 and "causal LM" in err and len(err.strip().splitlines()) == 1, err


def test_llm_phrasing_checked_against_the_facts(tiny_model_dir):  # noqa: F811
    rng = np.random.default_rng(3)
    recs = random_records(rng, 6)
    regions, _ = decode_record(recs[0])
    sims = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    ids = [f"c{i}" for i in range(6)]
    expl = X.explain_neighbours(recs, ids, sims, "distal_radius")
    ph = X.LLMPhraser(tiny_model_dir, max_new_tokens=8)
    text = ph.phrase(expl)  # a random model's text: either supported (kept) or replaced
    if ph.last["source"] == "template":
        assert text == X.paragraph(expl)
    status = expl.fields["fracture"].value
    other = "distal ulna"
    scripted = {
        "ok": {"present": "The similar cases suggest a fracture of the distal radius.",
               "uncertain": "The similar cases suggest a possible fracture of the distal radius.",
               "absent": "The similar cases show no fracture of the distal radius."}[status],
        "other_bone": f"There is a fracture of the {other}.",
        "bad_id": "Case c99 is most similar.",
    }
    for name, answer in scripted.items():
        ph._lm.generate = lambda prompt, a=answer: a
        text = ph.phrase(expl)
        if name == "ok":
            assert text == answer and ph.last["source"] == "llm"
        else:
            assert text == X.paragraph(expl) and ph.last["source"] == "template" and ph.last["rejected"]
    assert "bone: distal radius" in ph.prompt(expl)


def test_field_accuracy_matches_reference():
    rng = np.random.default_rng(8)
    gold = random_records(rng, 12)
    preds = []
    for i in range(12):
        recs = random_records(rng, 5)
        preds.append(X.explain_neighbours(recs, [f"c{j}" for j in range(5)], [1.0] * 5, "distal_radius").predicted())
    acc = X.field_accuracy(preds, gold, "distal_radius")
    ref = np.mean([p["fracture"] == decode_record(g)[0]["distal_radius"]["fracture"] for p, g in zip(preds, gold)])
    assert acc["fracture"] == pytest.approx(ref)
    refc = np.mean([p["cast"] == decode_record(g)[1]["cast"] for p, g in zip(preds, gold)])
    assert acc["cast"] == pytest.approx(refc)
