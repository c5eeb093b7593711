"""The bone localizer (localize/localizer.py: centre heatmaps + box regression for the distal
radius, distal ulna and ulnar styloid) as a task of the shared trainer; configs/localizer.py.

Data: `data.manifest` + `data.boxes`, loaded once per process (localize/localizer_train.
load_data), images kept as uint8 in the canonical square. A training batch is a pure function of
(seed, batch number): a seeded permutation (train/inputs.SourceBatches) and a random translation
that keeps every box inside the square (`localizer_train.translate`), so a resumed run sees the
batches an uninterrupted one would. The random gamma is drawn on device from the step's key.

Evaluators: `box_iou` (per-bone hit rate at IoU >= 0.5 and mean IoU on the validation split, in
original pixels, as `localize eval` scores them) and `val_loss`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.localize.localizer import (LocalizerConfig, apply, init_params, localizer_loss,
                                            predict_prepared, result_record)
from wristmir_jax.localize.localizer_train import (LocalizeData, PreparedSet, box_metrics, load_data,
                                                  translate)
from wristmir_jax.schema import NUM_REGIONS, REGIONS
from wristmir_jax.train.evaluators import Evaluator, ValLoss, host
from wristmir_jax.train.inputs import SourceBatches
from wristmir_jax.train.mesh import replicated
from wristmir_jax.train.sharding import replicated_axes


def localizer_config(cfg: ml_collections.ConfigDict) -> LocalizerConfig:
    return LocalizerConfig.from_dict(cfg.model.to_dict())


def resolve_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A checked copy (idempotent)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    s = int(cfg.model.image_size)
    if s < 64 or s % 32:
        raise UserError(f"--config.model.image_size must be a multiple of 32 and >= 64, got {s}")
    return cfg


class LocalizerModel:
    """The trainer's model interface around localize/localizer.py's pure functions."""

    def __init__(self, cfg: LocalizerConfig):
        self.cfg = cfg

    def init(self, key, batch):
        params = init_params(self.cfg, key=key)
        return params, replicated_axes(params)  # a small conv net: on every device

    def encode(self, params, batch, train: bool = False, rng=None):
        x = batch["image"].astype(jnp.float32) / 255.0
        if train:  # photometric augmentation: a random gamma per image
            log_gamma = jax.random.uniform(rng, (x.shape[0], 1, 1), minval=-0.35, maxval=0.35)
            x = jnp.power(x, jnp.exp(log_gamma))
        heat, reg = apply(self.cfg, params, x)
        return {"heat": heat, "reg": reg}


def build_model(cfg: ml_collections.ConfigDict) -> LocalizerModel:
    return LocalizerModel(localizer_config(cfg))


def init_batch(cfg: ml_collections.ConfigDict, batch_size: int = 2) -> dict:
    s, b = int(cfg.model.image_size), int(batch_size)
    return {"image": np.zeros((b, s, s), np.uint8),
            "boxes": np.tile(np.array([0, 0, 8, 8], np.float32), (b, NUM_REGIONS, 1)),
            "has_box": np.ones((b, NUM_REGIONS), np.float32)}


def objective(cfg: ml_collections.ConfigDict, mesh):
    lcfg = localizer_config(cfg)

    def fn(outputs: dict, batch: dict):
        return localizer_loss(lcfg, outputs["heat"], outputs["reg"], batch["boxes"],
                              batch["has_box"])

    return fn


class PreparedSource:
    """A loaded split as a random-access source: {"image" u8[S, S], "boxes" f32[3, 4] prepared
    px, "has_box" f32[3]}; `gold` holds the original-pixel boxes by id (for `box_iou`)."""

    def __init__(self, prepared: PreparedSet, gold: dict):
        self.prepared, self.gold = prepared, gold

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, i: int) -> dict:
        p = self.prepared
        return {"image": p.images[i], "boxes": p.boxes[i], "has_box": p.has_box[i]}


def sources_from(data: LocalizeData) -> tuple[PreparedSource, PreparedSource]:
    """(train, val) sources of loaded data (localizer_train.load_data)."""
    return PreparedSource(data.train, data.boxes), PreparedSource(data.val, data.boxes)


def data_sources(cfg: ml_collections.ConfigDict):
    return sources_from(load_data(cfg.data, int(cfg.model.image_size), tuple(cfg.model.clip)))


class TranslatedBatches(SourceBatches):
    """SourceBatches whose batch k is also shifted at random (seeded by (seed, k)); resumable
    through SourceBatches' state."""

    def __init__(self, source, global_batch_size: int, *, seed: int, max_shift: int):
        super().__init__(source, global_batch_size, seed=seed)
        self.max_shift = int(max_shift)

    def __next__(self) -> dict:
        k = self._batch
        b = super().__next__()
        rng = np.random.default_rng([self.seed, 1, k, self.process_index])
        b["image"], b["boxes"] = translate(b["image"], b["boxes"], b["has_box"], rng, self.max_shift)
        return b


def train_iterator(cfg: ml_collections.ConfigDict, source):
    shift = int(cfg.data.max_shift)
    return TranslatedBatches(source, int(cfg.data.global_batch_size), seed=int(cfg.seed),
                             max_shift=int(cfg.model.image_size) // 8 if shift < 0 else shift)


class BoxIou(Evaluator):
    """Boxes predicted for the validation split, scored against its gold boxes in original
    pixels (localizer_train.box_metrics, what `localize eval` reports): `mean_iou`,
    `min_hit_rate`, and per bone `hit_rate/<bone>` (IoU >= 0.5) and `mean_iou/<bone>`."""

    def __init__(self, name, run, sources, every: int = 0):
        super().__init__(name, run, sources, every)
        lcfg = run.model.cfg
        self._predict = jax.jit(
            lambda p, b: predict_prepared(lcfg, p, b["image"].astype(jnp.float32) / 255.0),
            out_shardings=replicated(run.mesh))

    def run(self, params) -> dict[str, float]:
        val: PreparedSource = self.val_source
        n = len(val)
        if n == 0:
            return {}
        gbs = int(self.run_.cfg.data.global_batch_size)
        it = SourceBatches(val, gbs, seed=0, shuffle=False)
        boxes, scores = [], []
        for _ in range(math.ceil(n / gbs)):
            b, s = self._predict(params, self.run_.global_batch(next(it)))
            boxes.append(host(b))
            scores.append(host(s))
        boxes, scores = np.concatenate(boxes)[:n], np.concatenate(scores)[:n]  # last batch wraps
        rows, geos = val.prepared.rows, val.prepared.geos
        preds = {r.id: result_record(boxes[i], scores[i], geos[i])["boxes"]
                 for i, r in enumerate(rows)}
        m = box_metrics(preds, {r.id: val.gold[r.id] for r in rows})
        out = {"mean_iou": m["mean_iou"], "min_hit_rate": m["min_hit_rate"]}
        for r in REGIONS:
            out[f"hit_rate/{r}"] = m["per_region"][r]["hit_rate"]
            out[f"mean_iou/{r}"] = m["per_region"][r]["mean_iou"]
        return {k: float(v) for k, v in out.items() if v is not None}


EVALUATORS = {"box_iou": BoxIou, "val_loss": ValLoss}
