"""The second-stage box refiner (localize/refiner.py; by default the ulnar styloid) as a task of
the shared trainer; configs/refiner.py (`localize train` fills its data section from the
localizer's config and trains it after the first stage).

Data: windows around the gold boxes of the refined regions, cut while the images are loaded
(localize/refiner_train.WindowCollector via localizer_train.load_data; `localize train` hands
the trainer the load its first stage used). A training batch k is a pure function of (seed, k):
a seeded permutation of the windows, stand-in first-stage boxes jittered around the gold ones
(`jitter_boxes`, `jitter` section) and the patches cut around them. A validation example i is jittered with a
seed of its own, so `val_loss` sees the same patches at every evaluation. Gamma and pixel noise
are drawn on device from the step's key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wristmir_jax.localize.localizer_train import LocalizeData, load_data
from wristmir_jax.localize.refiner import (RefinerConfig, apply, init_params, refiner_loss,
                                          to_patch)
from wristmir_jax.localize.refiner_train import (JitterConfig, RefineSet, WindowCollector,
                                                jitter_boxes, window_patches)
from wristmir_jax.train.evaluators import ValLoss
from wristmir_jax.train.inputs import SourceBatches
from wristmir_jax.train.sharding import replicated_axes


def refiner_config(cfg: ml_collections.ConfigDict) -> RefinerConfig:
    return RefinerConfig.from_dict(cfg.model.to_dict())


def jitter_config(cfg: ml_collections.ConfigDict) -> JitterConfig:
    return JitterConfig.from_dict(cfg.jitter.to_dict())


def resolve_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A checked copy (idempotent)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    refiner_config(cfg).check()
    return cfg


class RefinerModel:
    """The trainer's model interface around localize/refiner.py's pure functions."""

    def __init__(self, cfg: RefinerConfig):
        self.cfg = cfg

    def init(self, key, batch):
        params = init_params(self.cfg, key=key)
        return params, replicated_axes(params)  # a small conv net: on every device

    def encode(self, params, batch, train: bool = False, rng=None):
        x = batch["patch"]
        if train:  # photometric augmentation: a random gamma and a little noise per patch
            k1, k2 = jax.random.split(rng)
            log_gamma = jax.random.uniform(k1, (x.shape[0], 1, 1), minval=-0.35, maxval=0.35)
            x = jnp.power(jnp.clip(x, 1e-6, 1.0), jnp.exp(log_gamma))
            x = x + 0.01 * jax.random.normal(k2, x.shape)
        heat, reg = apply(self.cfg, params, x, batch["region"])
        return {"heat": heat, "reg": reg}


def build_model(cfg: ml_collections.ConfigDict) -> RefinerModel:
    return RefinerModel(refiner_config(cfg))


def init_batch(cfg: ml_collections.ConfigDict, batch_size: int = 2) -> dict:
    p, b = int(cfg.model.patch_size), int(batch_size)
    return {"patch": np.zeros((b, p, p), np.float32), "region": np.zeros((b,), np.int32),
            "gold": np.tile(np.array([p / 4, p / 4, 3 * p / 4, 3 * p / 4], np.float32), (b, 1))}


def objective(cfg: ml_collections.ConfigDict, mesh):
    rcfg = refiner_config(cfg)

    def fn(outputs: dict, batch: dict):
        return refiner_loss(rcfg, outputs["heat"], outputs["reg"], batch["gold"])

    return fn


def _patches(rs: RefineSet, idx: np.ndarray, rcfg: RefinerConfig, jitter: JitterConfig,
             rng: np.random.Generator) -> dict:
    boxes = jitter_boxes(rs.gold[idx], jitter, rng)
    patches, squares, _ = window_patches(rs, idx, boxes, rcfg)
    gold = to_patch(rs.gold[idx], squares, rcfg.patch_size).astype(np.float32)
    return {"patch": patches, "region": rs.region[idx].astype(np.int32), "gold": gold}


class WindowSource:
    """The windows of one split; example i is a patch around gold box i jittered with its own
    seed (the validation split's fixed patches). The training iterator cuts its own."""

    def __init__(self, rs: RefineSet, rcfg: RefinerConfig, jitter: JitterConfig, seed: int):
        self.rs, self.rcfg, self.jitter, self.seed = rs, rcfg, jitter, int(seed)

    def __len__(self) -> int:
        return len(self.rs)

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, 2, int(i)])
        return {k: v[0] for k, v in _patches(self.rs, np.array([i]), self.rcfg, self.jitter,
                                             rng).items()}


def sources_from(data: LocalizeData, cfg: ml_collections.ConfigDict):
    """(train, val) sources of loaded data whose windows were cut by this config's
    WindowCollector (localizer_train.load_data(..., keep=...))."""
    rcfg, jitter, seed = refiner_config(cfg), jitter_config(cfg), int(cfg.seed)
    return (WindowSource(RefineSet.from_extras(data.train.extras), rcfg, jitter, seed),
            WindowSource(RefineSet.from_extras(data.val.extras), rcfg, jitter, seed))


def data_sources(cfg: ml_collections.ConfigDict):
    keep = WindowCollector(refiner_config(cfg), jitter_config(cfg))
    return sources_from(load_data(cfg.data, int(cfg.data.image_size), tuple(cfg.data.clip),
                                  keep=keep), cfg)


class JitteredBatches(SourceBatches):
    """Batch k: SourceBatches' indices for k, jittered and cut with a generator seeded by
    (seed, k); resumable through SourceBatches' state."""

    def __next__(self) -> dict:
        k = self._batch
        idx = np.asarray(self.batch_indices(k))
        self._batch += 1
        src: WindowSource = self.source
        rng = np.random.default_rng([self.seed, 3, k, self.process_index])
        return _patches(src.rs, idx, src.rcfg, src.jitter, rng)


def train_iterator(cfg: ml_collections.ConfigDict, source: WindowSource):
    return JitteredBatches(source, int(cfg.data.global_batch_size), seed=int(cfg.seed))


EVALUATORS = {"val_loss": ValLoss}
