"""A damaged index never answers: swapped files, permuted rows, flipped bytes and an altered
records.npy are refused with one line (the content SHA-256 of each file is in fingerprint.json);
an index whose workdir holds another model is refused by every query path, `search --id` too."""

import json
import os
import shutil

import numpy as np
import pytest

from wristmir_jax.cli.main import main
from wristmir_jax.retrieval import store


def _run(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture
def index_copy(tiny_demo_folder, tmp_path):
    dst = tmp_path / "index_test"
    shutil.copytree(tiny_demo_folder / "index_test", dst)
    return str(dst)


def _swap(a, b):
    tmp = a + ".swap"
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)


def _permute_rows(p):
    x = np.load(p)
    np.save(p, x[::-1].copy())


def _flip_byte(p):
    with open(p, "r+b") as f:
        f.seek(os.path.getsize(p) - 3)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x10]))


def _alter_records(p):
    x = np.load(p)
    x[0, 0] = x[0, 0] + 1
    np.save(p, x)


DAMAGE = {
    "swap_img_txt": lambda d: _swap(os.path.join(d, "global_img.npy"), os.path.join(d, "global_txt.npy")),
    "permute_rows": lambda d: _permute_rows(os.path.join(d, "region_img.npy")),
    "flip_byte": lambda d: _flip_byte(os.path.join(d, "global_img.npy")),
    "altered_records": lambda d: _alter_records(os.path.join(d, "records.npy")),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_index_refused_by_search_and_evaluate(index_copy, kind, capsys, tmp_path):
    store.load_index(index_copy)  # verified and cached first: the cache must not hide damage
    DAMAGE[kind](index_copy)
    ids = np.load(os.path.join(index_copy, "ids.npy"))
    for argv in (["search", "--index", index_copy, "--id", str(ids[0]), "--json"],
                 ["evaluate", "--index", index_copy, "--queries", "test",
                  "--out", str(tmp_path / "m.json"), "--no-trec"]):
        code, out, err = _run(capsys, argv)
        assert code == 2, (kind, argv[0], err)
        assert "content differs from the fingerprint" in err and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err and out == ""
    assert not (tmp_path / "m.json").exists()


def test_verified_cache_skips_rehash_until_a_file_changes(index_copy):
    fp = store.read_fingerprint(index_copy)
    os.remove(os.path.join(index_copy, store.VERIFIED_CACHE))
    first = store.verify_digests(index_copy, fp)
    again = store.verify_digests(index_copy, fp)
    assert first["hashed"] == len(fp["files"]) and again == {"hashed": 0, "cached": len(fp["files"]),
                                                            "bytes": 0}
    p = os.path.join(index_copy, "crop_mask.npy")
    os.utime(p)  # same bytes, new mtime: hashed again, still accepted
    third = store.verify_digests(index_copy, fp)
    assert third["hashed"] == 1
    # the digest is the file's plain SHA-256 (hashlib over the bytes read here)
    import hashlib

    assert fp["files"]["crop_mask.npy"]["sha256"] == hashlib.sha256(open(p, "rb").read()).hexdigest()


def test_search_id_checks_the_model(index_copy, tiny_demo_folder, capsys):
    fpp = os.path.join(index_copy, store.FINGERPRINT)
    fp = json.load(open(fpp))
    ids = np.load(os.path.join(index_copy, "ids.npy"))
    code, out, err = _run(capsys, ["search", "--index", index_copy, "--id", str(ids[0]), "--json"])
    assert code == 0, err
    fp["model"]["params_sha256"] = "0" * 64  # as if the workdir had been retrained since
    json.dump(fp, open(fpp, "w"))
    code, out, err = _run(capsys, ["search", "--index", index_copy, "--id", str(ids[0]), "--json"])
    assert code == 2 and "another model" in err and len(err.strip().splitlines()) == 1
