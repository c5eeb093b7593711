"""Fault injection: SIGKILL (of the whole process group, as a preemption does) at random moments
during `build`, `train` with the Grain pipeline and a worker process (once while an async
checkpoint save is in flight), `embed` and ScaNN index writing. The rerun of the same command
completes, its outputs equal an uninterrupted run's (train: final params SHA-256; build, embed,
index: SHA-256 of every file, the fingerprint's wall-clock fields aside) and no temporary of the
killed runs is left. Random moments come from a logged seed."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, SHALLOW

pytestmark = pytest.mark.slow
TIMING_KEYS = ("build_s", "embed_s")


def _env(tmp_path):
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               WRISTMIR_NO_PROGRESS="1", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _wristmir(*argv):
    return [sys.executable, "-m", "wristmir_jax", *argv]


def _digests(root):
    """{relative path: sha256} of every file; fingerprint.json without its timing fields; the
    digest-check cache (inode/ctime keyed) left out."""
    out = {}
    for r, _, files in os.walk(root):
        for f in files:
            p = os.path.join(r, f)
            rel = os.path.relpath(p, root)
            if f == ".verified.json":
                continue
            data = open(p, "rb").read()
            if f == "fingerprint.json":
                fp = json.loads(data)
                for k in TIMING_KEYS:
                    fp.pop(k, None)
                if fp.get("scann"):
                    fp["scann"].pop("build_s", None)
                data = json.dumps(fp, sort_keys=True).encode()
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


def _data_digests(root):
    """_digests of a DATA_DIR with each ArrayRecord shard replaced by a digest of its decoded
    records in order: the bytes of a shard vary run to run (tf.train.Example serialises its
    feature map in hash order: same records, same lengths, entries permuted)."""
    import numpy as np

    from wristmir_jax.data.source import DatasetSource

    out = {k: v for k, v in _digests(root).items() if "array_record" not in k}
    for split in ("train", "val", "test"):
        src = DatasetSource(root, split)
        h = hashlib.sha256()
        for i in range(len(src)):
            rec = src.stored(i)
            for k in sorted(rec):
                a = np.asarray(rec[k])
                h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
        out[f"{split} records"] = h.hexdigest()
    return out


def _strays(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n]


def _kill_when(cmd, env, ready, delay_s, timeout=300):
    """Starts cmd in its own session, waits for ready() (or exit), sleeps delay_s, then SIGKILLs
    the whole group. Returns True when it was killed while running."""
    p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + timeout
    while not ready() and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    time.sleep(delay_s)
    running = p.poll() is None
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    return running


def _tmp_exists(parent, prefix):
    def ready():
        try:
            return any(n.startswith(prefix) for n in os.listdir(parent))
        except OSError:
            return False
    return ready


def test_build_killed_twice_then_rerun_equals_uninterrupted(tmp_path):
    from wristmir_jax.data.synthetic import write_raw_inputs

    env = _env(tmp_path)
    inp = write_raw_inputs(str(tmp_path / "in"), n=120, width=96, height=112)

    def cmd(out):
        # the packaged MiniLM tokenizer: a built word-piece vocabulary is not reproducible
        # (the tokenizers trainer breaks frequency ties in hash order)
        return _wristmir("build", "--manifest", inp["paths"]["manifest"], "--mined", inp["paths"]["mined"],
                         "--boxes", inp["paths"]["boxes"], "--out", out, "--image-size", "64",
                         "--crop-size", "32", "--max-len", "16", "--tokenizer", "minilm",
                         "--workers", "2")

    ref = str(tmp_path / "ref")
    t0 = time.time()
    subprocess.run(cmd(ref), env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.time() - t0
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    out = str(tmp_path / "data")
    killed = 0
    for _ in range(6):
        killed += _kill_when(cmd(out), env, _tmp_exists(str(tmp_path), ".data.tmp-"),
                             rng.uniform(0.0, 0.4) * wall)
        if os.path.exists(out):
            # the build finished before the kill (or just as it came): start over, as the
            # point is a rerun after kills
            shutil.rmtree(out)
        if killed >= 2:
            break
    assert killed, f"no kill landed while building (seed {seed})"
    subprocess.run(cmd(out), env=env, cwd=ROOT, check=True, capture_output=True)
    assert _data_digests(out) == _data_digests(ref), f"seed {seed}"
    assert _strays(str(tmp_path)) == [], f"seed {seed}"


def test_embed_and_scann_writing_killed_then_rerun_equal(tiny_demo_folder, tmp_path):
    env = _env(tmp_path)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    root = str(tiny_demo_folder)
    out = str(tmp_path / "index_train")

    def cmd_to(path):
        return _wristmir("embed", "--workdir", os.path.join(root, "workdir"), "--data",
                         os.path.join(root, "data"), "--split", "train", "--out", path,
                         "--batch-size", "4", "--overwrite")

    ref_index = str(tmp_path / "ref_index")
    t0 = time.time()
    subprocess.run(cmd_to(ref_index), env=env, cwd=ROOT, check=True, capture_output=True)
    wall = time.time() - t0
    cmd = cmd_to(out)
    # at random moments of a run (startup, restore, encoding; the compile cache is warm now, so
    # a run may be quicker than the reference) until one lands, then as the index folder is
    # written (it may exist for less than the polling interval: that one need not land)
    killed = 0
    for _ in range(8):
        killed += _kill_when(cmd, env, lambda: True, rng.uniform(0.05, 0.3) * wall)
        if killed:
            break
    _kill_when(cmd, env, _tmp_exists(str(tmp_path), ".index_train.tmp-"), 0.0)
    assert killed, f"no kill landed while embedding (seed {seed})"
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    assert _digests(out) == _digests(ref_index), f"seed {seed}"
    assert _strays(str(tmp_path)) == []

    # ScaNN searcher writing (an index large enough to take a moment)
    script = ("import sys, numpy as np; sys.path.insert(0, %r); from test_retrieval import _random_arrays; "
              "from wristmir_jax.retrieval import store; "
              "a = _random_arrays(np.random.default_rng(3), 30000, 32, dtype='float32'); "
              "store.write_index(sys.argv[1], a, model={'params_sha256': 'c' * 64}, config=None, "
              "split='train', build_scann=True, overwrite=True)") % os.path.join(ROOT, "tests")
    ref, got = str(tmp_path / "scann_ref"), str(tmp_path / "scann")
    subprocess.run([sys.executable, "-c", script, ref], env=env, cwd=ROOT, check=True, capture_output=True)
    killed = 0
    for _ in range(2):
        killed += _kill_when([sys.executable, "-c", script, got], env,
                             _tmp_exists(str(tmp_path), ".scann.tmp-"), rng.uniform(0.0, 0.8))
    assert killed, f"no kill landed while writing (seed {seed})"
    subprocess.run([sys.executable, "-c", script, got], env=env, cwd=ROOT, check=True, capture_output=True)
    # ScaNN's own training is not reproducible (two uninterrupted builds differ too), so the
    # searcher is checked for what it must do: it verifies, loads, and finds the exact top-10
    d_ref, d_got = _digests(ref), _digests(got)
    # (scann/ and the per-bone scann_<bone>/ searchers; their row maps are deterministic)
    same = {k for k in d_ref if k != "fingerprint.json" and not (
        k.split("/")[0].startswith("scann") and not k.endswith("positions.npy"))}
    assert same and all(d_got[k] == d_ref[k] for k in same), f"seed {seed}"
    import numpy as np

    from wristmir_jax.retrieval import coarse, store

    idx = store.load_index(got)
    cs = coarse.CoarseSearcher.from_index(idx)
    assert cs.kind == "scann"
    g = np.asarray(idx.arrays.global_img, np.float32)
    q = g[:50]
    exact = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :10]
    _, found = cs.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    assert recall >= 0.9, recall
    assert _strays(str(tmp_path)) == []


def _train_cmd(workdir, steps):
    return _wristmir("train", "--config", os.path.join(ROOT, "configs/tiny.py"), "--workdir", workdir,
                     f"--config.train.steps={steps}", "--config.train.eval_every=0",
                     "--config.data.order=grain", "--config.data.worker_count=1",
                     "--config.data.augment=True", "--config.train.checkpoint_every=1",
                     "--config.train.async_checkpoint=True", "--config.mesh.data=2", *SHALLOW)


def _saving(workdir):
    d = os.path.join(workdir, "checkpoints")

    def ready():
        try:
            return any("tmp" in n for n in os.listdir(d))
        except OSError:
            return False
    return ready


def _at_step(workdir, target):
    def ready():
        try:
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                return any(json.loads(l).get("step", 0) >= target for l in f if l.strip().endswith("}"))
        except (OSError, ValueError):
            return False
    return ready


def test_grain_train_killed_during_async_save_resumes_bit_identical(tmp_path):
    env = _env(tmp_path)
    steps = 6
    ref = str(tmp_path / "ref")
    subprocess.run(_train_cmd(ref, steps), env=env, cwd=ROOT, check=True, capture_output=True)
    ref_sha = json.load(open(os.path.join(ref, "summary.json")))["params_sha256"]
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    work = str(tmp_path / "work")
    # 1: the moment an async checkpoint folder appears (the save is in flight)
    assert _kill_when(_train_cmd(work, steps), env, _saving(work), 0.0), f"seed {seed}"
    # 2: at a random step with a random delay
    target = rng.randrange(2, steps - 1)
    assert _kill_when(_train_cmd(work, steps), env, _at_step(work, target), rng.uniform(0, 0.3)), f"seed {seed}"
    assert not os.path.exists(os.path.join(work, "summary.json"))
    r = subprocess.run(_train_cmd(work, steps), env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.load(open(os.path.join(work, "summary.json")))
    assert got["step"] == steps and got["params_sha256"] == ref_sha, f"seed {seed}, target {target}"
    assert not [n for n in os.listdir(os.path.join(work, "checkpoints")) if "tmp" in n]


def _localize_cmd(workdir, data):
    return _wristmir("localize", "train", "--workdir", workdir,
                     f"--config.data.manifest={data / 'manifest.jsonl'}",
                     f"--config.data.boxes={data / 'gold.jsonl'}", "--config.data.workers=1",
                     "--config.model.image_size=64", "--config.data.global_batch_size=8",
                     "--config.train.steps=8", "--config.train.checkpoint_every=1",
                     "--config.train.eval_every=4", "--config.refiner.train.steps=2",
                     "--config.refiner.data.global_batch_size=8")


def test_localize_train_killed_resumes_bit_identical(tmp_path):
    """`localize train` (both stages through the shared trainer) killed at a random step of the
    first stage: the rerun's localizer and refiner params equal an uninterrupted run's."""
    from wristmir_jax.synth import generate

    data = tmp_path / "synth"
    generate(data, 40, seed=3, image_size=96, workers=1)
    env = _env(tmp_path)
    ref = str(tmp_path / "ref")
    subprocess.run(_localize_cmd(ref, data), env=env, cwd=ROOT, check=True, capture_output=True)
    want = json.load(open(os.path.join(ref, "summary.json")))
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    work = str(tmp_path / "work")
    target = rng.randrange(2, 7)
    assert _kill_when(_localize_cmd(work, data), env, _at_step(os.path.join(work, "localizer"), target),
                      rng.uniform(0, 0.3)), f"seed {seed}"
    assert not os.path.exists(os.path.join(work, "summary.json"))
    r = subprocess.run(_localize_cmd(work, data), env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.load(open(os.path.join(work, "summary.json")))
    stage1 = json.load(open(os.path.join(work, "localizer", "summary.json")))
    assert stage1["step"] == 8 and stage1["params_sha256"] == json.load(
        open(os.path.join(ref, "localizer", "summary.json")))["params_sha256"], f"seed {seed}, target {target}"
    assert got["params_sha256"] == want["params_sha256"], f"seed {seed}, target {target}"
    assert got["refiner"]["params_sha256"] == want["refiner"]["params_sha256"]
    assert got["val"] == want["val"]
