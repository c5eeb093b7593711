"""Training configs load, every field is overridable from the command line, bad overrides and
bad mesh specs are one-line user errors."""

import os

import pytest

from wristmir_jax.config import load_config, split_overrides
from wristmir_jax.errors import UserError
from wristmir_jax.train.mesh import resolve_axis_sizes
from wristmir_jax.train.setup import resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ("seed", "data", "model", "loss", "optim", "train", "mesh", "sharding_rules")


@pytest.mark.parametrize("spec", ["configs/tiny.py", "configs/cpu_demo.py", "configs/cpu_demo.py:quick",
                                  "configs/cpu_demo.py:vit,quick", "configs/vit_b16_pod.py", "configs/vit_b16_pod.py:gpu8",
                                  "configs/vit_b16_pod.py:small"])
def test_configs_load_with_all_sections(spec):
    c = load_config(os.path.join(ROOT, spec))
    for s in SECTIONS:
        assert s in c, s
    for f in ("steps", "log_every", "eval_every", "checkpoint_every", "keep", "grad_accum",
              "max_consecutive_nonfinite"):
        assert f in c.train
    assert c.data.global_batch_size % max(c.train.grad_accum, 1) == 0


def test_cpu_demo_variants():
    quick_vit = load_config(os.path.join(ROOT, "configs/cpu_demo.py:vit,quick"))
    full = load_config(os.path.join(ROOT, "configs/cpu_demo.py"))
    assert quick_vit.model.image.name == "vit" and full.model.image.name == "resnet"
    assert quick_vit.train.steps < full.train.steps
    # The demo trains the location-conditioned word attention; :nogrounding is the comparison run.
    plain = load_config(os.path.join(ROOT, "configs/cpu_demo.py:nogrounding"))
    assert full.loss.terms["region_grounding"] == 1.0 and full.model.region_words and full.model.word_features
    assert "region_grounding" not in plain.loss.terms and not plain.model.region_words
    assert not plain.model.word_features
    with pytest.raises(Exception, match="unknown cpu_demo variant"):
        load_config(os.path.join(ROOT, "configs/cpu_demo.py:fast"))


def test_overrides_reach_every_section():
    rest, ov = split_overrides(["--workdir", "w", "--config.optim.lr=3e-4", "--config.mesh.fsdp", "2",
                                "--config.loss.terms.global_clip=0.25", "--config.seed=7",
                                "--config.optim.freeze=('^text/',)", "--config.model.dtype=bfloat16",
                                "--config.train.async_checkpoint=false"])
    assert rest == ["--workdir", "w"]
    c = load_config(os.path.join(ROOT, "configs/tiny.py"), ov)
    assert c.optim.lr == 3e-4 and c.mesh.fsdp == 2 and c.loss.terms.global_clip == 0.25
    assert c.seed == 7 and c.optim.freeze == ("^text/",) and c.model.dtype == "bfloat16"
    assert c.train.async_checkpoint is False


@pytest.mark.parametrize("bad", ["--config.optim.nope=1", "--config.train.steps=many",
                                 "--config.nosection.x=1"])
def test_bad_overrides_are_user_errors(bad):
    with pytest.raises(UserError):
        load_config(os.path.join(ROOT, "configs/tiny.py"), [bad])


def test_mesh_axis_inference():
    assert resolve_axis_sizes({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert resolve_axis_sizes({"data": 2, "fsdp": 1, "tensor": -1}, 8) == (2, 1, 4)
    for spec in ({"data": -1, "fsdp": -1}, {"data": 3, "fsdp": 1, "tensor": 1}, {"data": -1, "fsdp": 3},
                 {"batch": 2}):
        with pytest.raises(UserError):
            resolve_axis_sizes(spec, 8)


def test_tfds_source_needs_a_built_dataset(tmp_path):
    c = load_config(os.path.join(ROOT, "configs/cpu_demo.py"))
    with pytest.raises(UserError, match="data.dir"):
        resolve_config(c)
    c.data.dir = str(tmp_path)
    with pytest.raises(UserError, match="wristmir_meta.json"):
        resolve_config(c)
