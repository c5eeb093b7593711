"""`wristmir aot`: the pod recipe with tiny towers compiled for a v5e:2x2 TPU topology on this
CPU machine (libtpu from the `tpu` extra), its per-chip report and FLOPs, a config that does not
fit (exit 2 naming the largest buffer) and an unknown topology (one line, exit 2)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) compiles for TPU topologies")


def aot(*args, tmp_path=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "wristmir_jax.cli.main", "aot", *args],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=1200)


def test_unknown_topology_is_one_line_exit_2():
    p = aot("--config", "configs/vit_b16_pod.py:tiny", "--topology", "v9z:4x4")
    assert p.returncode == 2
    err = [l for l in p.stderr.splitlines() if l.startswith("wristmir aot")]
    assert len(err) == 1 and "v9z:4x4" in err[0] and "unknown topology" in err[0]


@pytest.mark.slow
def test_aot_compiles_the_pod_step_for_v5e(tmp_path):
    out = tmp_path / "aot.json"
    p = aot("--config", "configs/vit_b16_pod.py:tiny", "--topology", "v5e:2x2", "--json", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    (r,) = json.loads(out.read_text())
    assert r["chips"] == 4 and r["devices"] == 4 and r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert r["fits"] and r["hbm_bytes"] == 16 * 1024 ** 3
    assert r["per_chip_bytes"] == (r["argument_bytes"] + r["output_bytes"] - r["alias_bytes"]
                                   + r["temp_bytes"] + r["generated_code_bytes"])
    assert r["alias_bytes"] > 0                      # the state is donated
    assert "fits" in p.stdout and "v5e:2x2" in p.stdout

    # Independent FLOPs reference: the encoders' forward + backward from models/flops.py (its own
    # compile of a different program, on CPU) times the global batch; the step adds the ring
    # loss and the optimizer, a few percent at this size.
    from wristmir_jax.config import load_config
    from wristmir_jax.models import flops
    from wristmir_jax.train.state import build_model, task_module

    cfg = load_config(str(ROOT / "configs" / "vit_b16_pod.py") + ":tiny")
    model = build_model(cfg)
    batch = task_module(cfg).init_batch(cfg, 8)
    params = jax.eval_shape(model.init_params, jax.random.key(0), batch)
    ref = flops.flops_per_example(model, params, batch)["train_flops"] * r["global_batch_size"]
    assert 0.8 * ref <= r["flops_per_step"] <= 1.6 * ref, (r["flops_per_step"], ref)
    assert np.isclose(r["step_s_at_peak"], r["flops_per_step"] / (4 * 197e12))
    assert np.isclose(r["days_at_40pct_mfu"], r["step_s_at_peak"] / 0.4 * 100 / 86400)


@pytest.mark.slow
def test_aot_exit_2_when_the_step_does_not_fit(tmp_path):
    # a 100M-word vocabulary: 6.4 GB of embedding per chip (half of it, FSDP), x4 with Adam
    # moments and gradients
    p = aot("--config", "configs/vit_b16_pod.py:tiny", "--topology", "v5e:2x2", "--no-flops",
            "--config.model.text.vocab_size=100000000", "--json", str(tmp_path / "r.json"))
    assert p.returncode == 2, p.stderr[-2000:]
    (r,) = json.loads((tmp_path / "r.json").read_text())
    assert not r["fits"] and r["per_chip_bytes"] > r["hbm_bytes"]
    assert r["largest_buffers"][0]["bytes"] >= 100_000_000 * 32 * 4 // 2
    assert "word_embed" in r["largest_buffers"][0]["name"]
    line = [l for l in p.stderr.splitlines() if l.startswith("wristmir aot")]
    assert len(line) == 1 and "does not fit" in line[0] and "v5e:2x2" in line[0]
    assert "DOES NOT FIT" in p.stdout


def test_table_pairs_remat_reports_and_names_commands(tmp_path):
    # Two reports of one config + topology (remat on, with FLOPs; remat off, --no-flops) and one
    # of another topology: the table has one row per config + topology, both memories in the
    # first, and the step time / days of the report that counted FLOPs.
    GIB = 1024 ** 3
    base = {"config": "configs/vit_b16_pod.py", "slices": 1, "chip": "TPU v5e", "chips": 256,
            "devices": 256, "mesh": {"data": 32, "fsdp": 8, "tensor": 1},
            "global_batch_size": 16384, "params": 283_400_000, "train_steps": 40000,
            "hbm_bytes": 16 * GIB, "topology": "v5e:16x16"}
    flops = 3.1e18
    peak = flops / (256 * 197e12)
    on = {**base, "remat": True, "per_chip_bytes": int(9.5 * GIB), "fits": True,
          "overrides": [], "command": "wristmir aot --config configs/vit_b16_pod.py "
          "--topology v5e:16x16", "flops_per_step": flops, "step_s_at_peak": peak,
          "step_s_at_40pct_mfu": peak / 0.4, "days_at_peak": peak * 40000 / 86400,
          "days_at_40pct_mfu": peak / 0.4 * 40000 / 86400}
    off = {**base, "remat": False, "per_chip_bytes": int(21.25 * GIB), "fits": False,
           "overrides": ["--config.model.remat=False"],
           "command": "wristmir aot --config configs/vit_b16_pod.py --topology v5e:16x16 "
           "--no-flops --config.model.remat=False"}
    other = {**on, "topology": "v5p:4x4x8", "chip": "TPU v5p", "chips": 128, "hbm_bytes": 95 * GIB,
             "command": "wristmir aot --config configs/vit_b16_pod.py --topology v5p:4x4x8"}
    (tmp_path / "a.json").write_text(json.dumps([on, off]))
    # no FLOPs of its own: the same program's FLOPs (row 1), at its own 64 chips' peak
    small = {k: v for k, v in off.items() if k != "command"}
    small.update(topology="v5e:8x8", chips=64, remat=True, command="wristmir aot v5e:8x8")
    (tmp_path / "b.json").write_text(json.dumps([other, small]))
    p = aot("--table", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [l for l in p.stdout.splitlines() if l.startswith("| ") and l[2].isdigit()]
    assert len(rows) == 3
    last = [c.strip() for c in rows[2].strip("|").split("|")]
    assert last[7].endswith("(row 1)") and float(last[7].split()[0]) == pytest.approx(flops, 1e-3)
    assert float(last[11]) == pytest.approx(flops / (64 * 197e12), abs=1e-3)
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == "v5e:16x16" and cells[5] == "16,384" and cells[6] == "283.4M"
    assert cells[8] == "9.50 GiB (fits)" and cells[9] == "21.25 GiB (DOES NOT FIT)"
    assert float(cells[7]) == pytest.approx(flops, rel=1e-3)
    assert float(cells[11]) == pytest.approx(peak, abs=1e-3)
    assert float(cells[14]) == pytest.approx(peak / 0.4 * 40000 / 86400, abs=0.01)
    assert [c.strip() for c in rows[1].strip("|").split("|")][9] == "-"
    assert "`" + off["command"] + "`" in p.stdout and "`" + other["command"] + "`" in p.stdout

    (tmp_path / "bad.json").write_text("{}")
    p = aot("--table", str(tmp_path / "bad.json"))
    assert p.returncode == 2 and "bad.json" in p.stderr


def test_flops_extrapolation_is_exact_for_a_quadratic_in_the_batch():
    from wristmir_jax.train.aot import quadratic_through

    rng = np.random.default_rng(0)
    e, a, c = rng.uniform(1e9, 1e11), rng.uniform(1e10, 1e11), rng.uniform(1e3, 1e5)
    points = [(b, e + a * b + c * b * b) for b in (1024, 2048, 4096)]
    ref = np.polyval(np.polyfit([p[0] for p in points], [p[1] for p in points], 2), 16384)
    got = quadratic_through(points, 16384)
    assert got == pytest.approx(ref, rel=1e-9)
    assert got == pytest.approx(e + a * 16384 + c * 16384 ** 2, rel=1e-9)
