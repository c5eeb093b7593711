"""The pod config's wiring at tiny scale: ring loss over (data, fsdp), FSDP parameter sharding,
scanned + rematerialised bf16 blocks and GradCache accumulation, on a 2x2 (data x fsdp) mesh; its
loss equals the plain (non-ring) objective's on the same state and batch."""

import os

import jax
import numpy as np
import pytest

from wristmir_jax import losses
from wristmir_jax.config import load_config
from wristmir_jax.data.synthetic import synthetic_batches
from wristmir_jax.models.presets import model_config
from wristmir_jax.train.inputs import to_global
from wristmir_jax.train.mesh import make_mesh
from wristmir_jax.train.setup import build_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_pod_config_at_tiny_scale():
    cfg = load_config(os.path.join(ROOT, "configs/vit_b16_pod.py"),
                      ["--config.data.global_batch_size=16", "--config.mesh.data=2",
                       "--config.data.source=synthetic",
                       "--config.mesh.fsdp=2",
                       "--config.train.grad_accum=2", "--config.train.steps=10"])
    tiny = model_config("tiny")
    for tower in (tiny.image, tiny.local, tiny.text):
        tower.depth = 2  # scan over 2 blocks
    tiny.scan_layers, tiny.remat, tiny.dtype = True, True, "bfloat16"
    cfg.model = tiny
    mesh = make_mesh(cfg.mesh)
    # 4 of the 8 simulated devices: the ring's in-process collectives abort on a rendezvous
    # timeout when 8 device threads starve on a heavily shared 2-core machine
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 1}
    run = build_run(cfg, mesh)
    model, state = run.model, run.state
    assert any("layers" in a for a in jax.tree.leaves(run.logical_axes,
                                                      is_leaf=lambda x: isinstance(x, tuple)))
    m = cfg.model
    host = next(synthetic_batches(16, m.image.image_size, m.local.crop_size, m.text.max_len,
                                  m.text.vocab_size, seed=5))
    batch = to_global(host, mesh)
    # the state is donated: keep a host copy for the comparisons below
    before = jax.device_get(state)
    new_state, metrics = run.compile(batch)(state, batch)
    assert int(metrics["finite"]) == 1
    moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                zip(jax.tree.leaves(new_state["params"]), jax.tree.leaves(before["params"])))
    assert moved > 0.0 or float(metrics["lr"]) == 0.0
    # the ring objective's value equals the plain objective on the same embeddings
    plain = losses.objective({"terms": {"global_multipos": 1.0, "local_multipos": 1.0},
                              "params": {"global_multipos": {"threshold": 0.75},
                                         "local_multipos": {"threshold": 0.75}}})
    from wristmir_jax.reports.relevance import relevance
    from wristmir_jax.train.step import device_batch

    b = device_batch(batch)
    b = {**b, "relevance": relevance(b["record"], b["record"])}
    ref = jax.jit(lambda p: plain(model.encode(p, b), b)[0])(before["params"])
    np.testing.assert_allclose(float(metrics["loss"]), float(ref), rtol=1e-3)
