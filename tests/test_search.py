"""`wristmir search` on a tiny index built in the test from random embeddings + records: JSON
output against a numpy reference, same-patient exclusion, the panel, and one-line errors."""

import json
import os

import numpy as np
import pytest

from wristmir_jax.cli.main import main
from wristmir_jax.schema import fracture_labels
from test_eval import make_index


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "idx"
    arr, patients = make_index(path, np.random.default_rng(11), n=80, d=16, n_patients=25)
    return str(path), arr, patients


def _run(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_search_json_global_matches_numpy(tiny, capsys):
    path, arr, patients = tiny
    code, out, _ = _run(capsys, ["search", "--index", path, "--id", "img00003", "--method", "global",
                                 "-k", "7", "--json"])
    assert code == 0
    res = json.loads(out)
    g = arr.global_img.astype(np.float64)
    sim = g @ g[3]
    sim[patients == patients[3]] = -np.inf
    want = np.argsort(-sim, kind="stable")[:7]
    assert [r["id"] for r in res["results"]] == [f"img{j:05d}" for j in want]
    np.testing.assert_allclose([r["score"] for r in res["results"]], sim[want], atol=1e-5)
    lab = fracture_labels(arr.records)
    assert [r["fracture"]["distal_radius"] for r in res["results"]] == lab[want, 0].tolist()


@pytest.mark.parametrize("override,alpha", [([], 0.25),
                                            (["--config.retrieval.region_alpha=2.0"], 2.0)])
def test_search_json_two_stage_region_matches_numpy(tiny, capsys, override, alpha):
    path, arr, patients = tiny
    code, out, _ = _run(capsys, ["search", "--index", path, "--id", "img00010", "--region",
                                 "distal_ulna", "-k", "5", "--json", *override])
    assert code == 0
    res = json.loads(out)
    # N < coarse_k: every other-patient item is a candidate; score = weighted mean of the
    # available similarities (region_alpha, default 0.25, for global, weight 1 for distal_ulna)
    g = arr.global_img.astype(np.float64) @ arr.global_img[10].astype(np.float64)
    r = arr.region_img[:, 1].astype(np.float64) @ arr.region_img[10, 1].astype(np.float64)
    w = arr.crop_mask[:, 1] * arr.crop_mask[10, 1]
    score = (alpha * g + w * r) / (alpha + w)
    score[patients == patients[10]] = -np.inf
    want = np.argsort(-score, kind="stable")[:5]
    assert [x["id"] for x in res["results"]] == [f"img{j:05d}" for j in want]
    assert all(x["findings"].startswith("distal ulna") for x in res["results"])


def test_search_same_patient_exclusion_and_panel(tiny, capsys, tmp_path):
    path, arr, patients = tiny
    code, out, _ = _run(capsys, ["search", "--index", path, "--id", "img00000", "-k", "79", "--json",
                                 "--panel", str(tmp_path / "p.png")])
    assert code == 0
    ids = [r["id"] for r in json.loads(out)["results"]]
    same = {f"img{j:05d}" for j in np.flatnonzero(patients == patients[0])}
    assert not same & set(ids) and len(ids) == 80 - len(same)
    assert os.path.getsize(tmp_path / "p.png") > 1000
    code, out, _ = _run(capsys, ["search", "--index", path, "--id", "img00000", "-k", "80", "--json",
                                 "--include-same-patient", "--method", "global"])
    assert same <= {r["id"] for r in json.loads(out)["results"]}


def test_search_table_output(tiny, capsys):
    code, out, _ = _run(capsys, ["search", "--index", tiny[0], "--id", "img00001", "-k", "3"])
    assert code == 0 and "img0" in out and "rank" in out


@pytest.mark.parametrize("argv,msg", [
    (["--id", "img00001", "--region", "scaphoid"], "unknown region"),
    (["--id", "img00001", "-k", "0"], "-k must be a positive"),
    (["--id", "nope"], "not in this index"),
])
def test_search_errors_are_one_line_exit_2(tiny, capsys, argv, msg):
    code, _, err = _run(capsys, ["search", "--index", tiny[0], *argv])
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_search_on_truncated_index_exit_2(tiny, capsys, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny[0], bad)
    f = bad / "global_img.npy"
    f.write_bytes(f.read_bytes()[:-10])
    code, _, err = _run(capsys, ["search", "--index", str(bad), "--id", "img00001"])
    assert code == 2 and "truncated" in err and len(err.strip().splitlines()) == 1
