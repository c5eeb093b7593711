"""The demo's plumbing: which stages a rerun skips, resumes or redoes from scratch, with a fake
stage runner (report.md itself is tested in test_demo_outputs.py, on a real evaluation)."""

import os
import types

import pytest

from wristmir_jax.cli import demo


class FakeStages:
    """Stands in for subprocess.run: records each stage's argv and writes a file into its outputs."""

    def __init__(self, out):
        self.out = out
        self.ran = []

    def __call__(self, cmd, stdout=None, stderr=None, env=None):
        argv = cmd[3:]
        plan = {tuple(a): (name, outs) for name, a, outs in demo._stage_plan(
            self.out, demo.QUICK, 0, demo.CONFIG_DIR)}
        name, outs = plan[tuple(argv)]
        self.ran.append(name)
        for path in outs:
            target = path if not os.path.splitext(path)[1] else os.path.dirname(path)
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, f"{name}.written"), "a") as f:
                f.write("x")
        return types.SimpleNamespace(returncode=0)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    out = str(tmp_path / "demo")
    stages = FakeStages(out)
    monkeypatch.setattr(demo.subprocess, "run", stages)
    import wristmir_jax.eval.demo_report as report

    monkeypatch.setattr(report, "write_report", lambda out, quick, stage_seconds: os.path.join(out, "report.md"))
    return out, stages


def _run(out, **kw):
    args = types.SimpleNamespace(out=out, quick=True, seed=0, force=False, **kw)
    assert demo.run(args) == 0


def test_rerun_skips_finished_stages(fake):
    out, stages = fake
    names = [p[0] for p in demo._stage_plan(out, demo.QUICK, 0, demo.CONFIG_DIR)]
    _run(out)
    assert stages.ran == names
    stages.ran.clear()
    _run(out)
    assert stages.ran == []


def test_interrupted_stage_resumes_and_later_stages_redo(fake):
    out, stages = fake
    _run(out)
    work = os.path.join(out, "workdir")
    os.remove(demo._marker(out, "train"))  # train was killed: started, never finished
    stages.ran.clear()
    _run(out)
    names = [p[0] for p in demo._stage_plan(out, demo.QUICK, 0, demo.CONFIG_DIR)]
    assert stages.ran == names[names.index("train"):]
    # resumed over its partial output (the checkpoint), not wiped: written twice now
    with open(os.path.join(work, "train.written")) as f:
        assert f.read() == "xx"
    with open(os.path.join(out, "index_test", "embed.written")) as f:
        assert f.read() == "x"  # a later stage starts from scratch


def test_changed_arguments_redo_the_stage_from_scratch(fake, monkeypatch):
    out, stages = fake
    _run(out)
    monkeypatch.setattr(demo, "QUICK", dict(demo.QUICK, data_crop_size=48))
    stages.ran.clear()
    _run(out)
    names = [p[0] for p in demo._stage_plan(out, demo.QUICK, 0, demo.CONFIG_DIR)]
    assert stages.ran == names[names.index("build"):]
    for path, name in ((os.path.join(out, "data"), "build"), (os.path.join(out, "workdir"), "train")):
        with open(os.path.join(path, f"{name}.written")) as f:
            assert f.read() == "x"  # removed and rewritten, not appended to
    with open(os.path.join(out, "localize-predict.written")) as f:
        assert f.read() == "x"  # untouched upstream stage


def test_failed_stage_is_a_user_error(tmp_path, monkeypatch):
    from wristmir_jax.errors import UserError

    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: types.SimpleNamespace(returncode=3))
    with pytest.raises(UserError, match="stage synth failed with exit code 3"):
        _run(str(tmp_path / "d"))
