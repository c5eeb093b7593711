"""Checkpoints: keep-last-N plus best-by-validation, composite state + iterator restore, the
params fingerprint, resume after SIGKILL (bit-identical final params), non-finite stop."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wristmir_jax.config import load_config
from wristmir_jax.train import checkpoint as ckpt
from wristmir_jax.train.inputs import SourceBatches
from wristmir_jax.train.trainer import NonFiniteStop, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHALLOW = ["--config.model.image.depth=1", "--config.model.local.depth=1",
           "--config.model.text.depth=1"]


class _Counter:
    def __init__(self):
        self.n = 0

    def get_state(self):
        return {"n": self.n}

    def set_state(self, s):
        self.n = int(s["n"])


@pytest.mark.parametrize("mode", ["min", "max"])
def test_keep_last_n_plus_best_and_iterator_state(tmp_path, mode):
    m = ckpt.make_manager(str(tmp_path), save_every=1, keep=2, keep_best=1, async_save=True,
                          best_metric="probe/auroc", best_mode=mode)
    it = _Counter()
    vals = {2: 1.0, 4: 0.5, 6: 0.9}
    for step in range(1, 8):
        it.n = 10 * step
        state = {"w": jnp.full((3,), float(step)), "step": jnp.int32(step)}
        met = {"probe/auroc": vals[step]} if step in vals else None
        ckpt.save(m, step, state, it, metrics=met, force=met is not None)
    m.wait_until_finished()
    best = min(vals, key=vals.get) if mode == "min" else max(vals, key=vals.get)
    assert sorted(m.all_steps()) == sorted([best, 6, 7])  # last two + the best validated
    it2 = _Counter()
    abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)}
    out = ckpt.restore(m, best, abstract, it2)
    assert it2.n == 10 * best and float(out["w"][0]) == best and int(out["step"]) == best
    m.close()


def test_params_sha256_is_canonical():
    a = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": {"x": np.ones(2, np.int32)}}
    # independent reference: the documented definition written out with hashlib
    h = hashlib.sha256()
    for name, x in (("a/x", a["a"]["x"]), ("b", a["b"])):
        h.update(name.encode() + b"\0" + x.dtype.str.encode() + b"\0"
                 + ",".join(map(str, x.shape)).encode() + b"\0")
        h.update(x.tobytes())
    assert ckpt.params_sha256(a) == h.hexdigest()
    assert ckpt.params_sha256({"a": a["a"], "b": a["b"]}) == h.hexdigest()  # order-free
    b = {"b": a["b"].copy(), "a": a["a"]}
    b["b"][1, 2] = np.nextafter(b["b"][1, 2], np.float32(9))
    assert ckpt.params_sha256(b) != h.hexdigest()


def test_source_batches_resume_and_process_split():
    src = list(range(10))
    src = [{"x": np.int32(i)} for i in src]
    it = SourceBatches(src, 4, seed=1)
    first = [next(it)["x"].tolist() for _ in range(5)]
    flat = sum(first[:2], []) + first[2][:2]
    assert sorted(flat) == list(range(10))  # an epoch is a permutation
    it2 = SourceBatches(src, 4, seed=1)
    it2.set_state(json.loads(json.dumps(it.get_state())))
    it.set_state({**it.get_state(), "batch": 3})
    it2.set_state({**it2.get_state(), "batch": 3})
    assert next(it2)["x"].tolist() == first[3]
    halves = [SourceBatches(src, 4, seed=1, process_index=p, process_count=2) for p in (0, 1)]
    for k in range(5):
        assert sum((next(h)["x"].tolist() for h in halves), []) == first[k]


def _tiny(*extra):
    return load_config(os.path.join(ROOT, "configs/tiny.py"),
                       SHALLOW + ["--config.mesh.data=2", "--config.train.eval_every=0"] + list(extra))


@pytest.mark.slow
def test_nonfinite_steps_skipped_counted_and_stop(tmp_path):
    w1 = str(tmp_path / "w1")
    s = train(_tiny("--config.train.steps=4", "--config.train.inject_nonfinite_steps=(1,)"), w1)
    assert s["status"] == "completed" and s["nonfinite_total"] == 1 and s["step"] == 4
    rows = [json.loads(l) for l in open(os.path.join(w1, "metrics.jsonl"))]
    assert [r["finite"] for r in rows if r["split"] == "train"] == [1, 0, 1, 1]
    # inference restore returns the final params
    _, params, _ = ckpt.restore_for_inference(w1, step="latest")
    assert ckpt.params_sha256(params) == s["params_sha256"]

    w2 = str(tmp_path / "w2")
    cfg = _tiny("--config.train.steps=6", "--config.train.inject_nonfinite_steps=(2,3,4)",
                "--config.train.max_consecutive_nonfinite=2")
    with pytest.raises(NonFiniteStop):
        train(cfg, w2)
    summary = json.load(open(os.path.join(w2, "summary.json")))
    assert summary["status"] == "stopped_nonfinite" and summary["step"] == 4
    m = ckpt.make_manager(w2, save_every=1, keep=1, read_only=True)
    assert m.latest_step() == 2  # nothing saved during the non-finite streak
    _, p2, _ = ckpt.restore_for_inference(w2, step="latest")
    assert ckpt.params_sha256(p2) == summary["params_sha256"]  # skipped steps changed nothing


@pytest.mark.slow
def test_ema_checkpoint_holds_both_and_inference_restores_the_average(tmp_path):
    import orbax.checkpoint as ocp

    from wristmir_jax.train.state import abstract_train_state

    w = str(tmp_path / "w")
    s = train(_tiny("--config.train.steps=3", "--config.optim.ema_decay=0.5"), w)
    _, params, cfg = ckpt.restore_for_inference(w, step="latest")
    assert ckpt.params_sha256(params) == s["params_sha256"]
    _, abstract = abstract_train_state(cfg)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract)
    m = ckpt.make_manager(w, save_every=1, keep=1, read_only=True)
    raw = m.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    m.close()
    assert ckpt.params_sha256(raw["ema_params"]) == s["params_sha256"]
    assert ckpt.params_sha256(raw["params"]) != s["params_sha256"]


def _env(cache):
    env = dict(os.environ)
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               WRISTMIR_NO_PROGRESS="1", JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


def _cmd(workdir, steps):
    return [sys.executable, "-m", "wristmir_jax", "train", "--config",
            os.path.join(ROOT, "configs/tiny.py"), "--workdir", workdir,
            f"--config.train.steps={steps}", "--config.train.eval_every=4", *SHALLOW]


def _last_train_step(workdir):
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            steps = [json.loads(l)["step"] for l in f if l.strip().endswith("}")]
        return max(steps) if steps else 0
    except (OSError, ValueError):
        return 0


@pytest.mark.slow
def test_sigkill_three_times_then_resume_gives_identical_params(tmp_path):
    steps = 10
    cache = str(tmp_path / "jax_cache")
    env = _env(cache)
    ref = str(tmp_path / "ref")
    subprocess.run(_cmd(ref, steps), env=env, check=True, capture_output=True, cwd=ROOT)
    ref_sha = json.load(open(os.path.join(ref, "summary.json")))["params_sha256"]

    seed = random.randrange(1 << 30)
    kills = sorted(random.Random(seed).sample(range(2, steps), 3))
    work = str(tmp_path / "work")
    for target in kills:
        p = subprocess.Popen(_cmd(work, steps), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while _last_train_step(work) < target and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert p.poll() is None, f"run finished before the kill at step {target} (seed {seed})"
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not os.path.exists(os.path.join(work, "summary.json"))
    subprocess.run(_cmd(work, steps), env=env, check=True, capture_output=True, cwd=ROOT)
    got = json.load(open(os.path.join(work, "summary.json")))
    assert got["step"] == steps
    assert got["params_sha256"] == ref_sha, f"kills at {kills} (seed {seed})"
