"""A small end-to-end run (mine -> build -> train -> embed -> search, plus failing commands) on
reports, patient ids and bad lines full of planted identifiers: no identifier appears in any
output file (logs, TensorBoard, rejects, metrics, DATA_DIR, INDEX_DIR), in stdout/stderr or in an
exception message."""

import json
import os

import pytest

from wristmir_jax.cli.main import main

from .conftest import ROOT, SHALLOW

pytestmark = pytest.mark.slow

PLANTED = ["Xochitl", "Brandauer", "Okonkwo", "Thandiwe", "Lindqvist", "(555)867-5309",
           "867-5309", "41645216", "03/14/2019", "Haverford", "1234 Birch Lane", "Springfield",
           "xochitl.b@example.org", "MRN-77311", "Evander"]


def _report(i):
    return (f"Patient: Xochitl Brandauer. MRN: 41645216. DOB 03/14/2019.\n"
            f"Referred by Thandiwe Okonkwo, call (555)867-5309 or 867-5309.\n"
            f"Mother Evander Lindqvist lives at 1234 Birch Lane, Springfield, IL 62704; "
            f"xochitl.b@example.org.\n"
            f"FINDINGS: {'Buckle fracture of the distal radius.' if i % 2 else 'No acute fracture.'}\n"
            f"Dictated by: Haverford, Evander")


def _run(capsys, argv, transcript):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    transcript.append(out.out + out.err)
    return e.value.code


def test_no_planted_identifier_in_any_output(tmp_path, capsys, wristmir_log):
    from wristmir_jax.data.synthetic import write_raw_inputs

    inp = write_raw_inputs(str(tmp_path / "in"), n=16, splits=("train", "train", "val", "test"))
    man_path = inp["paths"]["manifest"]
    rows = [json.loads(l) for l in open(man_path)]
    for i, r in enumerate(rows):
        r["report"] = _report(i)
        r["patient_id"] = f"MRN-77311-Brandauer-{i // 2}"
    with open(man_path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        # bad lines carrying identifiers: broken JSON, a report that is not text, no id
        f.write('{"id": "bad1", "report": "Xochitl Brandauer (555)867-5309\n')
        f.write(json.dumps({"id": "bad2", "report": ["Haverford", 41645216]}) + "\n")
        f.write(json.dumps({"report": "Okonkwo"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    t: list[str] = []
    mined = str(out / "mined.jsonl")
    assert _run(capsys, ["mine", "--manifest", man_path, "--out", mined], t) == 0
    # a failing --strict run: the exception message names the line, not its content
    assert _run(capsys, ["mine", "--manifest", man_path, "--out", str(out / "m2.jsonl"), "--strict"], t) == 2
    data = str(out / "data")
    assert _run(capsys, ["build", "--manifest", man_path, "--mined", mined, "--boxes",
                         inp["paths"]["boxes"], "--out", data, "--image-size", "32", "--crop-size", "32",
                         "--max-len", "16", "--workers", "1"], t) == 0
    work = str(out / "work")
    assert _run(capsys, ["train", "--config", os.path.join(ROOT, "configs/tiny.py"), "--workdir", work,
                         "--config.data.source=tfds", f"--config.data.dir={data}",
                         "--config.train.steps=2", "--config.train.eval_every=2",
                         "--config.data.global_batch_size=8", "--config.data.eval_batches=1",
                         "--config.mesh.data=2", *SHALLOW], t) == 0
    index = str(out / "index")
    assert _run(capsys, ["embed", "--workdir", work, "--data", data, "--split", "train", "--out", index,
                         "--batch-size", "4"], t) == 0
    ids = [r["id"] for r in rows if r["split"] == "train"]
    assert _run(capsys, ["search", "--index", index, "--id", ids[0], "--json"], t) == 0
    echo: list[str] = []  # a text query's own answer echoes the user's query text
    assert _run(capsys, ["search", "--index", index, "--text", "Xochitl Brandauer buckle fracture",
                         "--json"], echo) == 0
    t.append(echo[0].replace('"text": "Xochitl Brandauer buckle fracture"', ""))

    texts = {"transcript": "\n".join(t), "log": "\n".join(wristmir_log)}
    for root, _, files in os.walk(out):
        for f in files:
            p = os.path.join(root, f)
            texts[p] = open(p, "rb").read().decode("utf-8", "replace")
    # the search --text query is the user's own input, echoed in its own JSON answer only
    leaks = [(name, s) for name, txt in texts.items() for s in PLANTED if s in txt]
    assert not leaks, leaks[:10]
    assert any("tb" in p for p in texts)  # TensorBoard files were among those searched
