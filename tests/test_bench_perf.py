"""The throughput benchmarks: open_clip (PyTorch, the independent reference) and our model have
the same parameter count and forward matmul FLOPs for the clip-parity architecture; the
analytic FLOP counts agree with XLA's cost analysis; the suites write valid JSON and a PNG.
Behaviour only: no wall-clock assertions."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from wristmir_jax.bench import clip_parity as cp
from wristmir_jax.models import build, flops as model_flops, model_config
from wristmir_jax.models.params import count_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_clip_parity_tiny_same_params_and_flops_as_open_clip():
    torch = pytest.importorskip("torch")
    cfg = cp.load_parity_config("tiny")
    arch = cp.arch_of(cfg)
    data = cp.synthetic_batch(arch, 2)
    model = build(cfg.model, int(cfg.model.text.vocab_size))
    towers = cp.GlobalTowers(model)
    params = towers.prune(jax.eval_shape(model.init_params, jax.random.PRNGKey(0),
                                         model.dummy_batch(2)))
    oc = cp.build_open_clip(arch)
    images, tokens = cp.torch_batch(data)
    assert count_params(params) == cp.torch_param_count(oc)
    torch_fwd = cp.torch_forward_flops(oc, images, tokens)
    assert model_flops.clip_forward_flops(arch)["total"] == pytest.approx(torch_fwd, rel=1e-9)
    # Both models run: finite, L2-normalised embeddings of the CLIP width.
    emb = towers.encode(_real_params(model, cfg, towers), cp.our_batch(data))
    assert emb["global_img"].shape == (2, arch["embed_dim"])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(emb["global_txt"]), axis=-1), 1.0,
                               rtol=1e-5)
    with torch.no_grad():
        assert oc.encode_image(images, normalize=True).shape == (2, arch["embed_dim"])


def _real_params(model, cfg, towers):
    return towers.prune(jax.jit(model.init_params)(jax.random.PRNGKey(0), model.dummy_batch(2)))


def test_analytic_flops_close_to_xla_cost_analysis():
    # XLA also counts LayerNorm, GELU, softmax and adds: above the matmul count, not far above;
    # for convolutions it skips the taps that fall on SAME padding (1-2% below at 32 px).
    for preset in ("tiny", "tiny_resnet"):
        model = build(model_config(preset))
        batch = model.dummy_batch(2, 16)
        params = jax.eval_shape(model.init_params, jax.random.key(0), batch)
        xla = model_flops.flops_per_example(model, params, batch, backward=False, per_tower=True)
        analytic = model_flops.model_forward_flops(model, text_len=16)
        for tower in ("image", "crops", "global_text", "region_text"):
            ratio = xla[tower] / analytic[tower]
            assert 0.95 <= ratio <= 1.6, (preset, tower, ratio)


def _bench(tmp_path, *args):
    out = tmp_path / "b.json"
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)  # one device, as a user runs it
    proc = subprocess.run([sys.executable, "-m", "wristmir_jax.cli.main", "bench", *args,
                           "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return result


@pytest.mark.slow
def test_clip_parity_suite_writes_json_and_png(tmp_path):
    r = _bench(tmp_path, "--suite", "clip-parity", "--quick", "--repeats", "1", "--profile")
    assert r["check"]["params_equal"] and r["check"]["forward_flops_equal"]
    row = r["batches"]["8"]
    for side in ("ours", "open_clip"):
        assert row[side]["examples_per_s"] > 0 and 0 < row[side]["mfu"]
        assert row[side]["page_faults_per_step"] >= 0 and row[side]["kernel_cpu_s_per_step"] >= 0
        prof = row[side]["profile"]
        # both sides' profiles see their matmuls (XLA's per-op events were switched on)
        assert prof["by_kind"]["matmul"]["ms_per_step"] > 0, prof["by_kind"]
        assert sum(k["share"] for k in prof["by_kind"].values()) == pytest.approx(1.0)
    assert row["ours"]["profile"]["per_op_events"] is True
    core = r["attention_core"]
    assert core["shape_bnth"] == [8, 2, 17, 16]  # :tiny: 32 px / 8 px patches + CLS, 2 heads of 16
    assert set(core["fwd_bwd_ms"]) == {"ours_heads_major", "ours_heads_major_autodiff",
                                       "jax_dot_product_attention_xla", "torch_sdpa"}
    assert all(v > 0 for v in core["fwd_bwd_ms"].values())
    assert r["host_memory"]["applied"] is True
    assert r["ratio_examples_per_s"] == pytest.approx(
        row["open_clip"]["step_s"] / row["ours"]["step_s"])


@pytest.mark.slow
def test_train_suite_any_config_writes_json_and_png(tmp_path):
    r = _bench(tmp_path, "--suite", "train", "--quick", "--config", "configs/tiny.py",
               "--batch", "8", "--steps", "1")
    assert r["global_batch_size"] == 8 and r["steps"] == 1
    assert r["step_s"] == pytest.approx(r["data_wait_s"] + r["compute_s"])
    f = r["flops"]
    assert 1.0 <= f["xla_over_analytic_forward"] <= 1.6
    assert r["memory"]["argument_bytes"] > 0 and r["compile_s"] > 0


def test_cli_refuses_options_a_suite_does_not_take():
    from wristmir_jax.cli import bench as cli_bench
    from wristmir_jax.errors import UserError
    import argparse

    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    with pytest.raises(UserError, match="--steps"):
        cli_bench.run(p.parse_args(["--suite", "synth", "--steps", "3"]))
    with pytest.raises(UserError, match="--profile"):
        cli_bench.run(p.parse_args(["--suite", "synth", "--profile"]))
