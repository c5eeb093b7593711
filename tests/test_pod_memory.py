"""The pod train step's memory on 8 simulated CPU devices, compiled (never run) by the same path
as `wristmir aot`: configs/vit_b16_pod.py's ring multi-positive loss with the tiny towers in
place of ViT-B/16. Per-device temp memory grows at most linearly with the global batch, and no
array with two global-batch-sized dimensions lives on one device (relevance included)."""

import re

import jax
import pytest

from wristmir_jax.config import load_config
from wristmir_jax.models.presets import model_config
from wristmir_jax.train import aot
from wristmir_jax.train.mesh import make_mesh

from conftest import ROOT

BATCHES = (1024, 2048, 4096, 8192)


def pod_with_tiny_towers(batch):
    cfg = load_config(str(ROOT / "configs" / "vit_b16_pod.py"))
    cfg.model = model_config("tiny")
    cfg.data.source = "synthetic"
    cfg.data.global_batch_size = batch
    cfg.mesh.data, cfg.mesh.fsdp = 4, 2
    return cfg


def two_batch_dims(hlo_text, b):
    out = []
    for m in re.finditer(r"\b(?:f32|bf16|f16|s32|pred|u32|s8|u8)\[([0-9,]+)\]", hlo_text):
        dims = [int(d) for d in m.group(1).split(",") if d]
        if sum(d >= b for d in dims) >= 2:
            out.append(m.group(0))
    return out


@pytest.mark.slow
def test_pod_step_memory_is_linear_in_the_global_batch():
    mesh = make_mesh({"data": 4, "fsdp": 2, "tensor": 1}, devices=jax.devices()[:8])
    temp = {}
    for batch in BATCHES:
        _, compiled, _ = aot.compile_step(pod_with_tiny_towers(batch), mesh)
        temp[batch] = compiled.memory_analysis().temp_size_in_bytes
        if batch == BATCHES[-1]:
            local = batch // 8
            wide = two_batch_dims(compiled.as_text(), local)
            assert not wide, wide[:5]
            # the relevance really is computed inside the ring, per [b, chunk] block
            assert f"f32[4,{local},256]" in compiled.as_text()
    inc = [temp[b2] - temp[b1] for b1, b2 in zip(BATCHES, BATCHES[1:])]
    # each doubling of B adds at most ~2x the previous increment (quadratic growth gives 4x)
    assert all(i > 0 for i in inc), temp
    assert inc[2] <= 2.5 * inc[1] and inc[1] <= 2.5 * inc[0], temp
    assert temp[8192] <= 8 * temp[1024], temp
