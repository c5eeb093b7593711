"""Damaged checkpoints: a newest step that fails to restore is skipped with a warning naming it
(train resumes from the newest good step and moves the bad one aside; embed restores the newest
good one); a resume with another model shape is refused before anything is touched."""

import hashlib
import json
import os

import pytest

from wristmir_jax.errors import UserError
from wristmir_jax.train import checkpoint as ckpt

from .conftest import tiny_cfg

pytestmark = pytest.mark.slow


def _truncate_arrays(step_dir):
    n = 0
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        if os.path.basename(root) == "d":
            for f in files:
                p = os.path.join(root, f)
                with open(p, "r+b") as fh:
                    fh.truncate(os.path.getsize(p) // 2)
                n += 1
    assert n > 0


def _tree_digest(path):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            h.update(os.path.relpath(p, path).encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def test_train_skips_truncated_newest_step_and_resumes_identically(workdir_copy, wristmir_log):
    from wristmir_jax.train.trainer import train

    w, ref = workdir_copy
    _truncate_arrays(os.path.join(w, "checkpoints", "4"))
    got = train(tiny_cfg(), w)
    assert got["step"] == 4
    assert got["params_sha256"] == ref["params_sha256"]  # step 4 recomputed from step 3
    assert any("step 4 does not restore" in m for m in wristmir_log)
    assert any("moved unrestorable checkpoint step 4" in m for m in wristmir_log)
    assert os.path.isdir(os.path.join(w, "unrestorable", "4"))  # kept, not deleted


def test_inference_skips_step_without_metadata(workdir_copy, wristmir_log):
    w, ref = workdir_copy
    os.remove(os.path.join(w, "checkpoints", "4", "state", "_METADATA"))
    _, params, _ = ckpt.restore_for_inference(w, step="latest")
    _, p3, _ = ckpt.restore_for_inference(w, step=3)
    assert ckpt.params_sha256(params) == ckpt.params_sha256(p3)
    assert any("step 4 does not restore" in m for m in wristmir_log)
    with pytest.raises(UserError, match="step 4"):  # an explicit step has no substitute
        ckpt.restore_for_inference(w, step=4)
    assert os.path.isdir(os.path.join(w, "checkpoints", "4"))  # read-only: nothing moved


def test_every_step_damaged_is_one_line_error(workdir_copy):
    w, _ = workdir_copy
    for s in (3, 4):
        _truncate_arrays(os.path.join(w, "checkpoints", str(s)))
    with pytest.raises(UserError) as e:
        ckpt.restore_for_inference(w, step="latest")
    assert "no checkpoint restores" in str(e.value) and "\n" not in str(e.value)


def test_resume_with_other_model_shape_is_refused_untouched(workdir_copy):
    from wristmir_jax.train.trainer import train

    w, _ = workdir_copy
    before = _tree_digest(w)
    with pytest.raises(UserError) as e:
        train(tiny_cfg("--config.model.embed_dim=64"), w)
    msg = str(e.value)
    assert "resume refused" in msg and "model.embed_dim" in msg and "\n" not in msg
    assert _tree_digest(w) == before
    cfg = json.load(open(os.path.join(w, "config.json")))
    assert cfg["model"]["embed_dim"] != 64
