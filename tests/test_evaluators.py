"""Evaluators (`cfg.evals`) and the best checkpoint by `train.best_metric`: the knn_probe figures
equal a numpy/sklearn re-implementation on the same embeddings, the trainer keeps the best
checkpoint by the chosen metric and direction, bad evaluator configs are one-line errors, and
the base config's `retrieval` section matches the reranker's defaults and feeds its settings."""

import json

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from wristmir_jax.config import load_config
from wristmir_jax.errors import UserError
from wristmir_jax.schema import REGIONS, fracture_labels
from wristmir_jax.tasks.wrist_contrastive import KnnProbe
from wristmir_jax.train.evaluators import build_evaluators
from wristmir_jax.train.mesh import make_mesh
from wristmir_jax.train.setup import build_run, data_sources

SHALLOW = ["--config.model.image.depth=1", "--config.model.local.depth=1",
           "--config.model.text.depth=1"]


def _cfg(*overrides):
    return load_config("configs/tiny.py", SHALLOW + list(overrides))


@pytest.fixture(scope="module")
def run():
    mesh = make_mesh(dict(data=2, fsdp=1, tensor=1), devices=jax.devices()[:2])
    return build_run(_cfg(), mesh)


def _embed_all(run, source):
    enc = jax.jit(lambda p, b: run.model.encode(p, b))
    rows = [source[i] for i in range(len(source))]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0] if k != "id"}
    out = jax.device_get(enc(jax.device_get(run.state["params"]), batch))
    return out, batch


def test_knn_probe_equals_an_independent_implementation(run):
    train_src, val_src = data_sources(run.cfg)
    ev = KnnProbe("knn_probe", run, (train_src, val_src), knn_k=5)
    got = ev.run(run.state["params"])

    v, vb = _embed_all(run, val_src)
    t, tb = _embed_all(run, train_src)
    y = fracture_labels(vb["record"])
    g = np.asarray(v["global_img"], np.float64)
    reg = np.asarray(v["region_img"], np.float64)
    mask = np.asarray(vb["crop_mask"], np.float64)
    n = len(g)
    alpha = float(run.cfg.retrieval.region_alpha)  # a single bone's condition
    for r_i, bone in enumerate(REGIONS):
        sim_g = g @ g.T
        s_r = reg[:, r_i] @ reg[:, r_i].T
        w = mask[:, r_i][:, None] * mask[:, r_i][None, :]
        two = (alpha * sim_g + w * s_r) / (alpha + w)  # coarse_k (200) covers every item
        for method, sim in (("global", sim_g), ("two_stage", two)):
            sim = sim.copy()
            np.fill_diagonal(sim, -np.inf)  # each synthetic example is its own patient
            top = np.argsort(-sim, axis=1, kind="stable")[:, :5]
            pred = (y[top, r_i].mean(1) >= 0.5).astype(int)
            ref = f1_score(y[:, r_i], pred, zero_division=0)
            assert got[f"{method}_f1/{bone}"] == pytest.approx(ref, abs=1e-9)
        # the probe: two-stage features = [global, bone embedding x crop mask]
        yt = fracture_labels(tb["record"])[:, r_i]
        if yt.min() == yt.max() or y[:, r_i].min() == y[:, r_i].max():
            assert f"two_stage_auroc/{bone}" not in got
            continue
        feats = lambda e, b: np.concatenate(
            [e["global_img"], e["region_img"][:, r_i] * b["crop_mask"][:, r_i:r_i + 1]], 1)
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=0).fit(feats(t, tb), yt)
        ref = roc_auc_score(y[:, r_i], clf.predict_proba(feats(v, vb))[:, 1])
        assert got[f"two_stage_auroc/{bone}"] == pytest.approx(ref, abs=1e-6)
    assert n == len(val_src) and "two_stage_mean_auroc" in got


def test_trainer_keeps_the_best_checkpoint_by_the_metric_and_mode(tmp_path):
    from wristmir_jax.train import checkpoint as ckpt
    from wristmir_jax.train.trainer import train

    cfg = _cfg("--config.train.steps=6", "--config.train.eval_every=2", "--config.train.keep=1",
               "--config.train.checkpoint_every=100", "--config.mesh.data=2",
               "--config.train.best_metric=knn_probe/global_mean_f1",
               "--config.train.best_mode=max")
    cfg.evals.knn_probe = {"type": "knn_probe", "every": 0, "knn_k": 3, "probe": False}
    summary = train(cfg, str(tmp_path))
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    probe = {r["step"]: r["global_mean_f1"] for r in rows if r["split"] == "knn_probe"}
    assert sorted(probe) == [2, 4, 6] and "loss" in summary["evals"]["val"]
    best_step = max(sorted(probe), key=lambda s: probe[s])  # first of equals, as the trainer
    best = json.loads((tmp_path / "best.json").read_text())
    assert best == {"step": best_step, "metric": "knn_probe/global_mean_f1",
                    "value": probe[best_step]}
    m = ckpt.make_manager(str(tmp_path), save_every=1, keep=1, keep_best=0, read_only=True)
    assert set(m.all_steps()) == {best_step, 6}  # the best one and the last one
    m.close()


def test_bad_evaluator_configs_are_user_errors(run):
    cfg = run.cfg
    sources = data_sources(cfg)
    cfg.evals.bad = {"type": "no_such_evaluator"}
    try:
        with pytest.raises(UserError, match="evals.bad.type"):
            build_evaluators(run, run.task, sources)
        cfg.evals.bad = {"type": "val_loss", "unknown_option": 1}
        with pytest.raises(UserError, match="evals.bad"):
            build_evaluators(run, run.task, sources)
        del cfg.evals["bad"]
        cfg.train.best_metric = "probe/auroc"
        with pytest.raises(UserError, match="best_metric"):
            build_evaluators(run, run.task, sources)
    finally:
        cfg.train.best_metric = "val/loss"
        if "bad" in cfg.evals:
            del cfg.evals["bad"]


def test_retrieval_section_defaults_and_overrides(tmp_path):
    import dataclasses

    from wristmir_jax.eval.evaluate import DEFAULT_KNN_K
    from wristmir_jax.retrieval.rerank import RerankSettings, run_config, settings

    base = _cfg().retrieval
    assert settings(_cfg()) == RerankSettings() and base.knn_k == DEFAULT_KNN_K
    assert set(dataclasses.asdict(RerankSettings())) | {"knn_k"} == set(base)
    # an index embedded from a workdir: its training config, then the overrides
    work = tmp_path / "w"
    work.mkdir()
    trained = _cfg("--config.retrieval.alpha=2.0")
    (work / "config.json").write_text(json.dumps(trained.to_dict()))
    fp = {"model": {"workdir": str(work)}}
    assert settings(run_config(fp)).alpha == 2.0
    s = settings(run_config(fp, None, ["--config.retrieval.alpha=0.5",
                                       "--config.retrieval.region_weights=(1.0, 0.0, 2.0)"]))
    assert s.alpha == 0.5 and s.region_weights == (1.0, 0.0, 2.0)
    # an index without a workdir config: the defaults, still overridable
    assert settings(run_config({}, None, ["--config.retrieval.coarse_k=50"])).coarse_k == 50
    with pytest.raises(UserError, match="no config field"):
        run_config({}, None, ["--config.retrieval.nope=1"])
