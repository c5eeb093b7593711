"""Two JAX processes on 127.0.0.1 (jax.distributed, gloo CPU collectives, 2 devices each)
train identically to one process with 4 devices on the same global batches."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from wristmir_jax.train import checkpoint as ckpt
from wristmir_jax.train.distributed import detect

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Adam's eps is raised as in test_train_step: attention key biases have an exactly-zero
# gradient whose rounding noise (reduction order differs across processes) Adam would amplify.
ARGS = ["--config", os.path.join(ROOT, "configs/tiny.py"), "--config.train.steps=3",
        "--config.train.eval_every=0", "--config.optim.eps=1e-3",
        "--config.model.image.depth=1", "--config.model.local.depth=1",
        "--config.model.text.depth=1"]


def test_detect_sources():
    assert detect(env={}).source == "single"
    s = detect(env={"WRISTMIR_COORDINATOR": "h:1", "WRISTMIR_NUM_PROCESSES": "2",
                    "WRISTMIR_PROCESS_ID": "1"})
    assert (s.source, s.coordinator, s.num_processes, s.process_id) == ("env", "h:1", 2, 1)
    assert detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}).source == "slurm"
    assert detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).source == "single"
    assert detect(env={"TPU_WORKER_HOSTNAMES": "a,b"}).source == "tpu"
    assert detect("c:1", 2, 0, env={}).source == "flags"


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    multi = str(tmp_path / "multi")
    env = dict(os.environ, PORT=str(_free_port()), DEVICES_PER_PROCESS="2",
               LOG_DIR=str(tmp_path / "logs"), PYTHON=sys.executable, WRISTMIR_NO_PROGRESS="1")
    r = subprocess.run([os.path.join(ROOT, "launch/local_multiprocess.sh"), "2", *ARGS,
                        "--workdir", multi], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    logs = "".join(open(os.path.join(tmp_path, "logs", f"process_{i}.log")).read()[-2000:]
                   for i in range(2))
    assert r.returncode == 0, logs
    single = str(tmp_path / "single")
    env1 = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                JAX_PLATFORMS="cpu", WRISTMIR_NO_PROGRESS="1")
    subprocess.run([sys.executable, "-m", "wristmir_jax", "train", *ARGS, "--workdir", single],
                   env=env1, cwd=ROOT, check=True, capture_output=True, timeout=600)
    import json

    sm = json.load(open(os.path.join(multi, "summary.json")))
    ss = json.load(open(os.path.join(single, "summary.json")))
    assert sm["processes"] == 2 and ss["processes"] == 1 and sm["devices"] == ss["devices"] == 4
    np.testing.assert_allclose(sm["metrics"]["loss"], ss["metrics"]["loss"], rtol=1e-5)
    _, pm, _ = ckpt.restore_for_inference(multi, step="latest")
    _, ps, _ = ckpt.restore_for_inference(single, step="latest")
    for a, b in zip(jax.tree.leaves(pm), jax.tree.leaves(ps)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
