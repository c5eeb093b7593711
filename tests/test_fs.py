"""utils/fs on local paths and on an fsspec URL (memory://, fsspec's own in-process store):
URLs stay URLs, outputs appear whole with their marker file last, a failed output leaves
nothing, remote folders are copied locally and re-copied when they change."""

import json
import os
import uuid

import fsspec
import pytest

from wristmir_jax.errors import UserError
from wristmir_jax.utils import fs


@pytest.fixture
def url():
    base = f"memory://wristmir-test-{uuid.uuid4().hex}"
    yield base
    mem = fsspec.filesystem("memory")
    if mem.exists(base):
        mem.rm(base, recursive=True)


def test_urls_are_not_made_local_paths(tmp_path):
    assert fs.absolute("gs://bucket/w/") == "gs://bucket/w"
    assert fs.join("gs://bucket/w", "checkpoints") == "gs://bucket/w/checkpoints"
    assert fs.dirname("gs://bucket/w/metrics.json") == "gs://bucket/w"
    assert fs.absolute("rel") == os.path.abspath("rel")
    assert fs.absolute(f"file://{tmp_path}") == str(tmp_path)
    assert not fs.is_url(str(tmp_path)) and fs.is_url("s3://b/k")


def test_atomic_output_dir_uploads_marker_last_and_refuses_a_full_folder(url, monkeypatch):
    order = []
    real_put = fsspec.filesystem("memory").put_file

    def put(self, lpath, rpath, *a, **k):
        order.append(rpath.rsplit("/", 1)[1])
        return real_put(lpath, rpath, *a, **k)

    monkeypatch.setattr(type(fsspec.filesystem("memory")), "put_file", put)
    out = fs.join(url, "index")
    with fs.atomic_output_dir(out, last=("fingerprint.json",)) as tmp:
        for name in ("fingerprint.json", "a.npy", "z.npy"):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(name)
        os.makedirs(os.path.join(tmp, "scann"))
        with open(os.path.join(tmp, "scann", "x.pb"), "w") as f:
            f.write("x")
    assert order[-1] == "fingerprint.json" and sorted(order) == sorted(
        ["fingerprint.json", "a.npy", "z.npy", "x.pb"])
    assert fs.listdir(out) == ["a.npy", "fingerprint.json", "scann", "z.npy"]
    assert fs.read_text(fs.join(out, "scann", "x.pb")) == "x"
    with pytest.raises(UserError, match="not empty"):
        with fs.atomic_output_dir(out):
            pass
    with fs.atomic_output_dir(out, overwrite=True) as tmp:
        with open(os.path.join(tmp, "only.txt"), "w") as f:
            f.write("new")
    assert fs.listdir(out) == ["only.txt"]


def test_failed_output_leaves_nothing(url, tmp_path):
    out = fs.join(url, "data")
    with pytest.raises(RuntimeError):
        with fs.atomic_output_dir(out) as tmp:
            with open(os.path.join(tmp, "part.bin"), "w") as f:
                f.write("half")
            raise RuntimeError("generation failed")
    assert not fs.exists(out)
    local = str(tmp_path / "data")
    with pytest.raises(RuntimeError):
        with fs.atomic_output_dir(local):
            raise RuntimeError("generation failed")
    assert not os.path.exists(local) and os.listdir(tmp_path) == []


def test_local_dir_copies_and_refreshes(url, tmp_path, monkeypatch):
    monkeypatch.setenv("WRISTMIR_CACHE_DIR", str(tmp_path / "cache"))
    d = fs.join(url, "ds")
    fs.write_bytes(fs.join(d, "meta.json"), json.dumps({"n": 1}).encode())
    fs.write_bytes(fs.join(d, "shards", "s0"), b"abc")
    a = fs.local_dir(d)
    assert open(os.path.join(a, "shards", "s0"), "rb").read() == b"abc"
    assert fs.local_dir(d) == a
    fs.write_bytes(fs.join(d, "shards", "s0"), b"abcd")  # changed remotely: copied again
    assert open(os.path.join(fs.local_dir(d), "shards", "s0"), "rb").read() == b"abcd"
    with pytest.raises(UserError, match="not found"):
        fs.local_dir(fs.join(url, "missing"))
    assert fs.local_dir(str(tmp_path)) == str(tmp_path)


def test_synced_dir_appends_across_sessions(url):
    w = fs.join(url, "w")
    s = fs.SyncedDir(w, only=("metrics.jsonl",))
    with open(os.path.join(s.local, "metrics.jsonl"), "a") as f:
        f.write("1\n")
    with open(os.path.join(s.local, "other.bin"), "w") as f:
        f.write("not mirrored")
    s.close()
    s = fs.SyncedDir(w, only=("metrics.jsonl",))
    with open(os.path.join(s.local, "metrics.jsonl"), "a") as f:
        f.write("2\n")
    s.close()
    assert fs.read_text(fs.join(w, "metrics.jsonl")) == "1\n2\n"
    assert fs.listdir(w) == ["metrics.jsonl"]


def test_bad_credentials_file_is_a_user_error(tmp_path):
    bad = tmp_path / "key.json"
    bad.write_text("{nope")
    with pytest.raises(UserError, match="credential error"):
        fs.check_credentials({"GOOGLE_APPLICATION_CREDENTIALS": str(bad)})
    with pytest.raises(UserError, match="unreadable"):
        fs.check_credentials({"GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "none.json")})
    bad.write_text(json.dumps({"type": "service_account"}))
    fs.check_credentials({"GOOGLE_APPLICATION_CREDENTIALS": str(bad)})


def test_upload_failing_midway_removes_what_it_sent(url, monkeypatch):
    mem_cls = type(fsspec.filesystem("memory"))
    real_put = mem_cls.put_file
    sent = []

    def put(self, lpath, rpath, *a, **k):
        if len(sent) == 2:
            raise OSError(5, "connection reset")
        sent.append(rpath)
        return real_put(self, lpath, rpath, *a, **k)

    monkeypatch.setattr(mem_cls, "put_file", put)
    out = fs.join(url, "index")
    with pytest.raises(UserError, match="connection reset"):
        with fs.atomic_output_dir(out, last=("fingerprint.json",)) as tmp:
            for name in ("a.npy", "b.npy", "c.npy", "fingerprint.json"):
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(name)
    assert len(sent) == 2 and not any(fs.exists(p if "://" in p else f"memory://{p}") for p in sent)
    assert not fs.exists(fs.join(out, "fingerprint.json"))


def test_move_a_folder(url, tmp_path):
    fs.write_bytes(fs.join(url, "c", "7", "x"), b"1")
    fs.move(fs.join(url, "c", "7"), fs.join(url, "bad", "7"))
    assert not fs.exists(fs.join(url, "c", "7", "x"))
    assert fs.read_bytes(fs.join(url, "bad", "7", "x")) == b"1"
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_text("z")
    fs.move(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b" / "f").read_text() == "z" and not (tmp_path / "a").exists()
