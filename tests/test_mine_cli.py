"""`wristmir mine`: output rows, bad input with line numbers, counts that add up, --strict, ordered
multi-process mining, and no report text in the output."""

import json

import pytest

from wristmir_jax.cli.main import main
from wristmir_jax.reports.captions import captions
from wristmir_jax.reports.rules import mine_report
from wristmir_jax.schema import validate_findings

GOOD = [
    ("a1", "Dr. Jane Doe. TECHNIQUE: left wrist. FINDINGS: Buckle fracture of the distal radius."),
    ("a2", "FINDINGS: No fracture. Soft tissue swelling."),
    ("a3", "FINDINGS: Possible avulsion fracture of the ulnar styloid."),
]


def _write_manifest(path):
    lines = [json.dumps({"id": i, "report": r}).encode() for i, r in GOOD[:2]]
    lines.append(json.dumps({"id": "e1", "report": "   "}).encode())        # 3: empty report
    lines.append(b'{"id": "b1", "report": "caf\xe9 fracture"}')             # 4: not UTF-8
    lines.append(b"{not json")                                              # 5: not JSON
    lines.append(json.dumps({"report": "FINDINGS: fracture"}).encode())     # 6: missing id
    lines.append(json.dumps({"id": "a1", "report": "FINDINGS: normal"}).encode())  # 7: duplicate id
    lines.append(json.dumps({"id": GOOD[2][0], "report": GOOD[2][1]}).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")


def _run(argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


def test_mine_writes_rows_and_rejects_with_line_numbers(tmp_path, capsys):
    manifest, out = tmp_path / "manifest.jsonl", tmp_path / "mined.jsonl"
    _write_manifest(manifest)
    assert _run(["mine", "--manifest", str(manifest), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a1", "a2", "a3"]
    for r, (rid, rep) in zip(rows, GOOD):
        assert set(r) == {"id", "regions", "global", "captions", "miner"}
        validate_findings(r["regions"], r["global"])
        assert (r["regions"], r["global"]) == mine_report(rep)
        assert r["captions"] == captions(r["regions"], r["global"])
        assert r["miner"] == "rules"
    assert rows[0]["regions"]["distal_radius"]["pattern"] == "buckle"
    assert rows[0]["global"]["laterality"] == "left"
    assert rows[2]["regions"]["ulnar_styloid"]["fracture"] == "uncertain"
    text = out.read_text()
    assert "Jane" not in text and "Buckle fracture of the distal radius" not in text
    rejects = [json.loads(line) for line in (tmp_path / "mined.rejects.jsonl").read_text().splitlines()]
    by_line = {r["line"]: r["reason"] for r in rejects}
    assert set(by_line) == {3, 4, 5, 6, 7}
    assert by_line[3] == "empty report"
    assert "UTF-8" in by_line[4]
    assert "JSON" in by_line[5]
    assert by_line[6] == "missing id"
    assert "duplicate id" in by_line[7] and "line 1" in by_line[7]
    assert "read 8 = mined 3 + rejected 5" in capsys.readouterr().out


def test_strict_stops_at_first_bad_line(tmp_path, capsys):
    manifest, out = tmp_path / "manifest.jsonl", tmp_path / "mined.jsonl"
    _write_manifest(manifest)
    assert _run(["mine", "--manifest", str(manifest), "--out", str(out), "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:3: empty report" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_manifest_and_llm_without_model_are_user_errors(tmp_path, capsys):
    assert _run(["mine", "--manifest", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "report": "normal"}) + "\n")
    assert _run(["mine", "--manifest", str(manifest), "--out", str(tmp_path / "o.jsonl"), "--miner", "llm"]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.slow
def test_workers_keep_input_order(tmp_path):
    from wristmir_jax.bench.mine import corpus

    reports = corpus(60, seed=3)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i:03d}", "report": r}) + "\n" for i, r in enumerate(reports)))
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"mined{workers}.jsonl"
        assert _run(["mine", "--manifest", str(manifest), "--out", str(out), "--workers", workers]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1]
    assert [json.loads(line)["id"] for line in outs[1].splitlines()] == [f"r{i:03d}" for i in range(60)]
