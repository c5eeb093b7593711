"""`wristmir mine --explain ID` (alias --trace): which sentence and words set each field of one
report, the sentences read as history / comparison / plan, and no report text without --show-text."""

import json

import pytest

from wristmir_jax.cli.main import main
from wristmir_jax.cli.mine import explain_lines
from wristmir_jax.reports.rules import mine_report, sentences

REPORT = ("INDICATION: R arm injury. Referred by Dr. Zebediah Quxworth.\n"
          "COMPARISON: Prior radiographs showed a torus fracture of the distal ulna.\n"
          "FINDINGS: Cortical irregularity of the distal radius, questionable, possibly representing a subtle "
          "torus fracture. Transverse fracture of the distal ulna. Neither fracture is angulated. "
          "K-wires have been removed, pin tracts remain. Old healed fracture of the ulnar styloid, remodeled.\n"
          "IMPRESSION: Recommend splint immobilization.")


def _explain(tmp_path, capsys, *extra):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "r7", "report": REPORT}) + "\n"
                        + json.dumps({"id": "r8", "report": "FINDINGS: Normal."}) + "\n")
    with pytest.raises(SystemExit) as e:
        main(["mine", "--manifest", str(manifest), "--explain", "r7", *extra])
    assert e.value.code == 0
    return capsys.readouterr().out


def _field_lines(out):
    return {line.split(" = ")[0].strip(): line for line in out.splitlines() if " = " in line}


def test_explain_names_the_sentence_and_words_of_each_field(tmp_path, capsys):
    out = _explain(tmp_path, capsys)
    regions, g = mine_report(REPORT)
    lines = _field_lines(out)
    sents = sentences(REPORT)
    idx = {k: i for i, (_, s) in enumerate(sents) for k in ("questionable", "transverse", "neither", "pin tracts",
                                                                "recommend", "comparison", "prior radiographs")
           if k in s}
    # Every field line states the mined value.
    for key, line in lines.items():
        region, field = key.split(".")
        value = g[field] if region == "global" else regions[region][field]
        assert line.split(" = ")[1].split("  ")[0] == json.dumps(value)
    assert regions["distal_radius"]["fracture"] == "uncertain"
    assert f"s{idx['questionable']}: \"subtle torus fracture\"" in lines["distal_radius.fracture"]
    assert f"s{idx['transverse']}: \"transverse fracture\"" in lines["distal_ulna.fracture"]
    assert f"s{idx['neither']}: \"neither ... angulated\"" in lines["distal_ulna.angulated"]
    assert "pin tracts" in lines["global.hardware"] and g["hardware"] is False
    assert "history: r arm" in lines["global.laterality"] and g["laterality"] == "right"
    assert "old / not confirmed" in lines["ulnar_styloid.fracture"]
    assert f"s{idx['recommend']} (plan)" in out and f"s{idx['prior radiographs']} (comparison)" in out


def test_explain_prints_no_report_text_unless_asked(tmp_path, capsys):
    out = _explain(tmp_path, capsys)
    for secret in ("Zebediah", "Quxworth", "Cortical irregularity", "immobilization", "Prior radiographs"):
        assert secret.lower() not in out.lower()
    shown = _explain(tmp_path, capsys, "--show-text")
    assert "cortical irregularity of the distal radius" in shown
    assert "prior radiographs showed a torus fracture" in shown
    # Even with --show-text the printout is de-identified.
    assert "quxworth" not in shown.lower() and "[name]" in shown.lower()


def test_explain_unknown_id_and_llm_are_user_errors(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "report": "FINDINGS: Normal."}) + "\n")
    for extra in (["--explain", "zz"], ["--explain", "a", "--miner", "llm", "--model", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            main(["mine", "--manifest", str(manifest), *extra])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["mine", "--manifest", str(manifest)])
    assert e.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_explain_lines_match_the_miner_on_the_corpus():
    import os

    path = os.path.join(os.path.dirname(__file__), "data", "report_corpus.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:60]
    for row in rows:
        regions, g = mine_report(row["report"])
        lines = _field_lines("\n".join(explain_lines(row["report"])))
        for name, r in regions.items():
            assert json.dumps(r["fracture"]) in lines[f"{name}.fracture"]
            for k, v in r.items():
                if v not in (None, False, "absent"):
                    assert f"{name}.{k}" in lines, (row["id"], name, k)
        for k, v in g.items():
            if v not in (None, False):
                assert f"global.{k}" in lines, (row["id"], k)
