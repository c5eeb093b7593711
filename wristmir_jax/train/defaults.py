"""The training config's sections and their defaults; `configs/*.py` start from `base_config`.

Sections (every field can be overridden: `--config.optim.lr=3e-4`):
  task                     the task module under wristmir_jax/tasks/ (model, objective, data,
                           evaluators); "wrist_contrastive" here
  seed                     int; parameter init, dropout and data order derive from it
  data.source              "tfds" (DATA_DIR built by `wristmir build`) or "synthetic" (in memory)
  data.dir                 DATA_DIR for "tfds"; its wristmir_meta.json sets the model's image,
                           crop, text length and vocabulary sizes
  data.order               "grain" (data.pipeline: per-process shards, workers, augmentation) or
                           "global" (train/inputs.SourceBatches: identical global batches for
                           any process count; no augmentation)
  data.global_batch_size   examples per step over all processes
  data.worker_count        Grain worker processes (0 = in the main process)
  data.augment             random affine, crop jitter and photometric changes on training
                           images (data.augment; no flips)
  data.val_split           the split evaluated for validation loss and best-checkpoint choice
  data.eval_batches        validation batches per evaluation (0 = the whole split)
  data.synthetic.*         size of the in-memory synthetic train/val sets (source "synthetic")
  model                    models.presets.model_config(name)
  loss.terms / loss.params term name -> weight, term name -> its parameters (losses.objective)
  optim.*                  lr, warmup_steps, end_lr_factor (cosine floor), b1, b2, eps,
                           weight_decay, clip_norm, no_decay (regexes), lr_multipliers
                           ((regex, multiplier), ...; 0 freezes), freeze (regexes),
                           ema_decay (> 0 keeps an exponential moving average of the trainable
                           params in state["ema_params"]; validation, the best checkpoint and
                           inference then use it)
  train.steps, log_every, eval_every, checkpoint_every, keep (last N), keep_best (best N by
                           best_metric), grad_accum, max_consecutive_nonfinite, async_checkpoint,
                           inject_nonfinite_steps (fault injection for tests: these steps get
                           a NaN image batch)
  train.best_metric/mode   "evaluator/metric" choosing best.json and the kept best checkpoints
                           ("val/loss", "min" here; the demo: "knn_probe/two_stage_mean_auroc", "max")
  evals                    {name: {type, every (0: train.eval_every), ...}} run by the trainer
                           (train/evaluators.py; the task's EVALUATORS name the types)
  retrieval                alpha, region_weights, coarse_k, region_alpha, coarse_union
                           (retrieval.rerank), knn_k
                           (kNN diagnosis): read by the knn_probe evaluator, `search` and
                           `evaluate` (from the workdir's config.json; `--config.retrieval.x=v`)
  mesh.data/fsdp/tensor    mesh axis sizes, one may be -1 (all remaining devices)
  sharding_rules           ((logical name, mesh axes or None), ...); see train/sharding.py
"""

from __future__ import annotations

import ml_collections

from wristmir_jax.models.presets import model_config
from wristmir_jax.train.sharding import DEFAULT_RULES


def retrieval_defaults() -> ml_collections.ConfigDict:
    """The `retrieval` section (equal to retrieval.rerank.RerankSettings() and eval's kNN k,
    which a test checks)."""
    return ml_collections.ConfigDict(dict(alpha=1.0, region_weights=(1.0, 1.0, 1.0), coarse_k=200,
                                          region_alpha=0.25, coarse_union=True,
                                          knn_k=10))


def train_defaults() -> ml_collections.ConfigDict:
    """The `train` section every task shares (the loop, checkpoints, evaluation cadence)."""
    t = ml_collections.ConfigDict()
    t.steps = 1000
    t.log_every = 10
    t.eval_every = 200
    t.checkpoint_every = 200
    t.keep = 2
    t.keep_best = 1
    t.best_metric = "val/loss"
    t.best_mode = "min"
    t.grad_accum = 1
    t.max_consecutive_nonfinite = 5
    t.async_checkpoint = True
    t.inject_nonfinite_steps = ()
    return t


def base_config(model: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "wrist_contrastive"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"
    c.data.dir = ""
    c.data.order = "grain"
    c.data.global_batch_size = 32
    c.data.worker_count = 0
    c.data.augment = True
    c.data.val_split = "val"
    c.data.eval_batches = 0
    c.data.synthetic = ml_collections.ConfigDict(dict(num_train=1024, num_val=128, seed=1))

    c.model = model_config(model)

    c.loss = ml_collections.ConfigDict()
    c.loss.terms = ml_collections.ConfigDict({"global_multipos": 1.0, "local_multipos": 1.0})
    c.loss.params = ml_collections.ConfigDict({"global_multipos": {"threshold": 0.75},
                                               "local_multipos": {"threshold": 0.75}})

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.optim.end_lr_factor = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.98
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.05
    c.optim.clip_norm = 1.0
    c.optim.no_decay = (r"bias$", r"scale$", r"norm", r"embed", r"pos_emb", r"cls", r"probe",
                        r"log_scale", r"logit")
    c.optim.lr_multipliers = ()
    c.optim.freeze = ()
    c.optim.ema_decay = 0.0

    c.train = train_defaults()
    c.evals = ml_collections.ConfigDict({"val": {"type": "val_loss", "every": 0}})
    c.retrieval = retrieval_defaults()

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = tuple(DEFAULT_RULES)
    return c
