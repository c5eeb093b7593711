"""Shared test setup: 8 simulated CPU devices (set before JAX is imported), no progress bars."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WRISTMIR_NO_PROGRESS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


import json  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def assert_grad_matches_fd(grad: dict, emb: dict, value, scalars=(), fields=(), per_field: int = 4,
                           seed: int = 5, eps: float = 1e-6, atol: float = 1e-8, min_moved: int = 4) -> None:
    """Central finite differences of `value(emb)` (float64, an independent reference) at the scalar
    leaves `scalars` and at `per_field` random coordinates of each array in `fields` equal the
    analytic `grad` (dict of numpy arrays); at least `min_moved` of them must move."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coords = [(f, ()) for f in scalars]
    for f in fields:
        for _ in range(per_field):
            coords.append((f, tuple(int(rng.integers(0, s)) for s in np.shape(emb[f]))))
    moved = 0
    for f, idx in coords:
        plus = {k: np.array(v, np.float64) for k, v in emb.items()}
        minus = {k: np.array(v, np.float64) for k, v in emb.items()}
        plus[f][idx] += eps
        minus[f][idx] -= eps
        fd = (value(plus) - value(minus)) / (2 * eps)
        np.testing.assert_allclose(grad[f][idx], fd, rtol=1e-5, atol=atol, err_msg=f"{f}{idx}")
        moved += abs(fd) > 1e-6
    assert moved >= min_moved, "finite differences saw almost no signal"


def untrained_workdir(data_dir: str, work: pathlib.Path) -> pathlib.Path:
    """`work` holding configs/tiny.py on `data_dir` (resolved config.json) and its untrained
    state saved as step 1: what `embed` and `search` read from a trained workdir."""
    from wristmir_jax.config import load_config
    from wristmir_jax.train import checkpoint as ckpt
    from wristmir_jax.train.setup import build_run

    cfg = load_config(str(ROOT / "configs" / "tiny.py"))
    cfg.data.source = "tfds"
    cfg.data.dir = data_dir
    run = build_run(cfg)
    work.mkdir()
    (work / "config.json").write_text(json.dumps(run.cfg.to_dict()))
    manager = ckpt.make_manager(str(work), save_every=1, keep=1, keep_best=0, async_save=False)
    ckpt.save(manager, 1, run.state, None, force=True)
    manager.wait_until_finished()
    manager.close()
    return work


@pytest.fixture(scope="session")
def tiny_workdir():
    """`untrained_workdir` for tests in other files (a fixture, since tests do not import
    conftest)."""
    return untrained_workdir


@pytest.fixture(scope="session")
def tiny_demo_folder(tmp_path_factory):
    """A folder shaped like `wristmir demo`'s output, made in about a minute: a tiny built
    dataset (data/), an untrained tiny checkpoint (workdir/), and index_train/ + index_test/
    written by `wristmir embed`."""
    from wristmir_jax.cli.main import main
    from wristmir_jax.data.builder import BuildConfig, build_dataset
    from wristmir_jax.data.synthetic import write_raw_inputs

    out = tmp_path_factory.mktemp("demo")
    inp = write_raw_inputs(str(out / "in"), n=20, splits=("train", "train", "val", "test"))
    data = str(out / "data")
    build_dataset(inp["paths"]["manifest"], inp["paths"]["mined"], inp["paths"]["boxes"], data,
                  cfg=BuildConfig(image_size=32, crop_size=32, max_len=16))
    work = untrained_workdir(data, out / "workdir")
    for split in ("train", "test"):
        with pytest.raises(SystemExit) as e:
            main(["embed", "--workdir", str(work), "--data", data, "--split", split,
                  "--out", str(out / f"index_{split}"), "--batch-size", "4"])
        assert e.value.code == 0
    return out


