"""`wristmir doctor PATH` on a healthy raw dataset, DATA_DIR, workdir and index (exit 0), then
on each damaged in one way (exit 1, the failing check named)."""

import json
import os
import shutil

import numpy as np
import pytest

from wristmir_jax.cli.main import main


def _doctor(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        main(["doctor", *argv, "--json"])
    out = capsys.readouterr()
    rep = json.loads(out.out) if out.out.strip().startswith("{") else None
    return e.value.code, rep, out.err


def _failed(rep):
    return [c["check"] for c in rep["checks"] if not c["ok"]]


def test_doctor_healthy_then_damaged(tiny_demo_folder, tmp_path, capsys):
    root = tmp_path / "copy"
    shutil.copytree(tiny_demo_folder, root, ignore=shutil.ignore_patterns(".verified.json"))
    # the index records its workdir's absolute path: point the copies at the copied workdir
    for name in ("index_train", "index_test"):
        fpp = root / name / "fingerprint.json"
        fp = json.loads(fpp.read_text())
        fp["model"]["workdir"] = str(root / "workdir")
        fpp.write_text(json.dumps(fp))
    for path, kind in ((root / "in", "raw"), (root / "data", "data"), (root / "workdir", "workdir"),
                       (root / "index_test", "index")):
        code, rep, err = _doctor(capsys, str(path))
        assert code == 0, (kind, rep, err)
        assert rep["kind"] == kind and rep["ok"] and rep["checks"]

    # raw: an image that no longer decodes
    img = sorted((root / "in" / "images").iterdir())[0]
    img.write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken")
    code, rep, _ = _doctor(capsys, str(root / "in"))
    assert code == 1 and _failed(rep) == ["images"]
    # DATA_DIR: a shard cut short
    shard = next(p for p in (root / "data").rglob("*array_record*") if p.is_file())
    shard.write_bytes(shard.read_bytes()[:-50])
    code, rep, _ = _doctor(capsys, str(root / "data"))
    assert code == 1 and "TFDS info and shards" in _failed(rep)
    # index: permuted rows of one file
    p = root / "index_test" / "global_img.npy"
    x = np.load(p)
    np.save(p, x[::-1].copy())
    code, rep, _ = _doctor(capsys, str(root / "index_test"))
    assert code == 1 and _failed(rep) == ["files: content SHA-256 (hashed afresh)"]
    # workdir: the checkpoint's metadata deleted; the index's model check fails with it
    meta = next((root / "workdir" / "checkpoints").glob("*/state/_METADATA"))
    os.remove(meta)
    code, rep, _ = _doctor(capsys, str(root / "workdir"))
    assert code == 1 and any(c.startswith("checkpoint ") and c.endswith("restores") for c in _failed(rep))
    code, rep, _ = _doctor(capsys, str(root / "index_train"))
    assert code == 1 and _failed(rep) == ["model fingerprint"]
    # not a known folder: exit 2, one line
    code, rep, err = _doctor(capsys, str(tmp_path))
    assert code == 2 and rep is None and len(err.strip().splitlines()) == 1
