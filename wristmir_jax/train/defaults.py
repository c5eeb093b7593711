"""The training config's sections and their defaults; `configs/*.py` start from `base_config`.

Sections (every field can be overridden: `--config.optim.lr=3e-4`):
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
  train.steps, log_every, eval_every, checkpoint_every, keep (last N), keep_best (best N by val
                           loss), grad_accum, max_consecutive_nonfinite, async_checkpoint,
                           inject_nonfinite_steps (fault injection for tests: these steps get
                           a NaN image batch)
  mesh.data/fsdp/tensor    mesh axis sizes, one may be -1 (all remaining devices)
  sharding_rules           ((logical name, mesh axes or None), ...); see train/sharding.py
"""

from __future__ import annotations

import ml_collections

from wristmir_jax.train.sharding import DEFAULT_RULES


def base_config(model: str) -> ml_collections.ConfigDict:
    from wristmir_jax.models.presets import model_config

    c = ml_collections.ConfigDict()
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

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000
    c.train.log_every = 10
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.train.keep = 2
    c.train.keep_best = 1
    c.train.grad_accum = 1
    c.train.max_consecutive_nonfinite = 5
    c.train.async_checkpoint = True
    c.train.inject_nonfinite_steps = ()

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = tuple(DEFAULT_RULES)
    return c
