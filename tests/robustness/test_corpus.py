"""The bad-input corpus, generated here: one case per kind of bad input listed in issue 23 and per
command that reads user data (mine, localize, build, train, embed, search, evaluate,
import-grazpedwri). Each case asserts the exit code, the one-line message (no traceback), and
where the run goes on, the rejects file and the count invariant read = accepted + rejected."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from wristmir_jax.cli.main import main

from .conftest import ROOT


def _run(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if l.startswith("wristmir")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _rejects(path):
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


# --- mine ---------------------------------------------------------------------------------------
def test_mine_bad_lines_rejected_counts_add(tmp_path, capsys):
    m = tmp_path / "manifest.jsonl"
    m.write_text("\n".join([json.dumps({"id": "a", "report": "FINDINGS: Buckle fracture of the distal radius."}),
                            "{broken json",
                            json.dumps({"id": "b", "report": 42}),
                            json.dumps({"report": "no id"}),
                            json.dumps({"id": "c", "report": "FINDINGS: No fracture."})]) + "\n")
    out = tmp_path / "mined.jsonl"
    code, so, err = _run(capsys, ["mine", "--manifest", str(m), "--out", str(out)])
    assert code == 0, err
    rej = _rejects(tmp_path / "mined.rejects.jsonl")
    mined = [json.loads(l) for l in open(out)]
    assert len(mined) == 2 and len(rej) == 3 and "read 5 = mined 2 + rejected 3" in so
    code, _, err = _run(capsys, ["mine", "--manifest", str(tmp_path / "nope.jsonl"), "--out", str(out)])
    _one_line_error(code, err, "nope.jsonl")


# --- config / train -----------------------------------------------------------------------------
TRAIN_CASES = {
    "variant typo": (["--config", os.path.join(ROOT, "configs/cpu_demo.py:quik")], "quik"),
    "override without value": (["--config.train.steps"], "has no value"),
    "negative steps": (["--config.train.steps=-5"], "train.steps"),
    "zero batch": (["--config.data.global_batch_size=0"], "global_batch_size"),
    "unknown loss term": (["--config.loss.terms.global_clipp=1.0"], "global_clipp"),
    "unknown data order": (["--config.data.order=random"], "data.order"),
    "val split typo": (["--config.data.val_split=vall"], "val_split"),
}


@pytest.mark.parametrize("kind", sorted(TRAIN_CASES))
def test_train_bad_config_is_one_line_and_writes_nothing(kind, tmp_path, capsys):
    extra, needle = TRAIN_CASES[kind]
    argv = ["train", "--workdir", str(tmp_path / "w")]
    if extra[0] != "--config":
        argv += ["--config", os.path.join(ROOT, "configs/tiny.py")]
    code, _, err = _run(capsys, argv + extra)
    _one_line_error(code, err, needle)
    assert not (tmp_path / "w").exists()


# --- import-grazpedwri ----------------------------------------------------------------------------
HEADER = ("filestem,patient_id,study_number,timehash,gender,age,laterality,projection,initial_exam,"
          "ao_classification,fracture_visible,metal,cast,diagnosis_uncertain")


def test_import_grazpedwri_bad_rows_and_images_rejected(tmp_path, capsys, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    grad = (np.arange(48 * 40, dtype=np.uint32).reshape(48, 40) * 30).astype(np.uint16)
    rows = {"ok1": ("L", "1", "9.5"), "ok2": ("R", "2", "12"), "corrupt": ("L", "1", "8"),
            "constant": ("L", "1", "8"), "latx": ("X", "1", "8"), "proj9": ("R", "9", "8"),
            "age_neg": ("R", "1", "-5"), "huge": ("R", "1", "8")}
    for stem in rows:
        if stem == "corrupt":
            (images / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
        elif stem == "constant":
            Image.fromarray(np.full((48, 40), 7, np.uint16)).save(images / f"{stem}.png")
        elif stem == "huge":
            Image.new("1", (600, 300)).save(images / f"{stem}.png")  # limit lowered below
        else:
            Image.fromarray(grad).save(images / f"{stem}.png")
    lines = [HEADER] + [f"{s},P{i},1,0,M,{age},{lat},{proj},1,23r-M/2.1,1,0,0,0"
                        for i, (s, (lat, proj, age)) in enumerate(rows.items())]
    csv = tmp_path / "dataset.csv"
    csv.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("WRISTMIR_MAX_IMAGE_SIDE", "512")
    out = tmp_path / "out"
    code, so, err = _run(capsys, ["import-grazpedwri", "--csv", str(csv), "--images", str(images),
                                  "--out", str(out)])
    assert code == 0, err
    rej = _rejects(out / "manifest.rejects.jsonl")
    got = {r["id"]: r["reason"] for r in rej}
    assert set(got) == set(rows) - {"ok1", "ok2"}
    assert "laterality" in got["latx"] and "projection" in got["proj9"] and "age" in got["age_neg"]
    assert "constant" in got["constant"] and "pixel limit" in got["huge"]
    manifest = [json.loads(l) for l in open(out / "manifest.jsonl")]
    assert [m["id"] for m in manifest] == ["ok1", "ok2"]
    assert f"read {len(rows)} rows = imported 2 + rejected {len(rows) - 2}" in so


# --- build ----------------------------------------------------------------------------------------
def test_build_rejects_corrupt_and_oversized_images_counts_add(tmp_path, capsys, monkeypatch):
    from wristmir_jax.data.synthetic import write_raw_inputs

    inp = write_raw_inputs(str(tmp_path / "in"), n=8)
    man = [json.loads(l) for l in open(inp["paths"]["manifest"])]
    (tmp_path / "in" / man[0]["image"]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    Image.new("1", (700, 200)).save(tmp_path / "in" / man[1]["image"])
    monkeypatch.setenv("WRISTMIR_MAX_IMAGE_SIDE", "512")
    out = tmp_path / "data"
    code, so, err = _run(capsys, ["build", "--manifest", inp["paths"]["manifest"], "--mined",
                                  inp["paths"]["mined"], "--boxes", inp["paths"]["boxes"], "--out", str(out),
                                  "--image-size", "32", "--crop-size", "32", "--max-len", "16",
                                  "--workers", "1"])
    assert code == 0, err
    res = json.loads(so[so.index("{"):])
    rej = _rejects(out / "build.rejects.jsonl")
    reasons = {r.get("id"): r["reason"] for r in rej}
    assert man[0]["id"] in reasons and "pixel limit" in reasons[man[1]["id"]]
    c = res["counts"]["manifest"]
    assert c["read"] == len(man) and c["read"] == c["used"] + c["rejected"]
    assert c["used"] == sum(res["counts"]["written"].values()) == len(man) - 2


# --- localize ---------------------------------------------------------------------------------------
def test_localize_predict_split_typo_and_eval_duplicates(tmp_path, capsys):
    from wristmir_jax.data.synthetic import write_raw_inputs

    inp = write_raw_inputs(str(tmp_path / "in"), n=6, splits=("test",))
    code, _, err = _run(capsys, ["localize", "predict", "--manifest", inp["paths"]["manifest"],
                                 "--workdir", str(tmp_path / "no_localizer"), "--out",
                                 str(tmp_path / "b.jsonl"), "--split", "holdout"])
    _one_line_error(code, err, "holdout")
    assert not (tmp_path / "b.jsonl").exists()
    gold = inp["paths"]["boxes"]
    rows = [json.loads(l) for l in open(gold)]
    pred = tmp_path / "pred.jsonl"
    conflicting = {**rows[0], "boxes": {k: [0, 0, 5, 5] for k in rows[0]["boxes"]}}
    pred.write_text("\n".join(json.dumps(r) for r in rows + [conflicting, rows[1]]) + "\n")
    code, so, err = _run(capsys, ["localize", "eval", "--manifest", inp["paths"]["manifest"], "--boxes",
                                  gold, "--pred", str(pred), "--split", "test",
                                  "--out", str(tmp_path / "m.json")])
    assert code == 0, err
    m = json.loads(so)
    assert m["pred_rejected"] == 2  # both repeats counted; the first lines are scored
    rej = _rejects(tmp_path / "m.rejects.jsonl")
    assert sum("conflicting" in r["reason"] for r in rej) == 1 and sum("same" in r["reason"] for r in rej) == 1
    # the first (gold-equal) predictions are the ones scored: perfect IoU
    assert all(v == pytest.approx(1.0) for k, v in m.items() if k.endswith("mean_iou") and v == v)


# --- embed / search / evaluate ----------------------------------------------------------------------
def test_embed_search_evaluate_bad_options(tiny_demo_folder, tmp_path, capsys):
    root = tiny_demo_folder
    idx = str(root / "index_test")
    w, d = str(root / "workdir"), str(root / "data")
    cases = [
        (["embed", "--workdir", w, "--data", d, "--split", "holdout", "--out", str(tmp_path / "i")], "holdout"),
        (["embed", "--workdir", w, "--data", d, "--split", "test", "--out", str(tmp_path / "i"),
          "--batch-size", "0"], "batch-size"),
        (["embed", "--workdir", str(tmp_path / "nowork"), "--data", d, "--split", "test", "--out",
          str(tmp_path / "i")], "nowork"),
        (["search", "--index", idx, "--id", "nope"], "nope"),
        (["search", "--index", idx, "--id", "x", "-k", "0"], "-k"),
        (["search", "--index", idx, "--id", "x", "--region", "elbow"], "elbow"),
        (["evaluate", "--index", idx, "--out", str(tmp_path / "e.json"), "--knn-k", "0"], "knn-k"),
        (["evaluate", "--index", idx, "--out", str(tmp_path / "e.json"), "--queries", "holdout"], "holdout"),
        (["evaluate", "--index", idx, "--out", str(tmp_path / "e.json"), "--ks", "0,5"], "ks"),
    ]
    for argv, needle in cases:
        code, out, err = _run(capsys, argv)
        _one_line_error(code, err, needle)
    assert not (tmp_path / "i").exists() and not (tmp_path / "e.json").exists()
