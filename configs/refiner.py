"""The second-stage box refiner (task `styloid_refiner`, localize/refiner.py): re-estimates small
boxes (by default the ulnar styloid) on original-resolution patches around the first stage's.

`wristmir localize train` trains it after the localizer with this config as the localizer
config's `refiner` section (`--config.refiner.train.steps=N`); its `data` section is then filled
from the localizer's (manifest, boxes, classes, workers, strict, image size, clip). The defaults
are those of the former `--refine-*` flags: 800 steps, batch 32, lr 3e-3 (AdamW, warmup a tenth
of the steps up to 200, cosine to 2%, clip 1.0, weight decay 1e-4).
"""

import ml_collections

from wristmir_jax.localize.refiner import RefinerConfig
from wristmir_jax.localize.refiner_train import JitterConfig
from wristmir_jax.train.defaults import train_defaults


def optim_section(lr: float = 3e-3) -> ml_collections.ConfigDict:
    """The AdamW both localizer stages train with (warmup_steps -1: a tenth of the steps, at
    most 200)."""
    return ml_collections.ConfigDict(dict(
        lr=lr, warmup_steps=-1, end_lr_factor=0.02, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=1e-4, clip_norm=1.0, no_decay=(), lr_multipliers=(), freeze=(),
        ema_decay=0.0))


def get_config(arg=None):
    if arg:
        raise ValueError(f"refiner has no variants (got {arg!r})")
    c = ml_collections.ConfigDict()
    c.task = "styloid_refiner"
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        manifest="", boxes="", classes="", workers=2, strict=False, image_size=256,
        clip=(0.5, 99.5), global_batch_size=32, eval_batches=0))
    c.model = ml_collections.ConfigDict(RefinerConfig().to_dict())
    c.model.widths = tuple(c.model.widths)
    c.model.regions = tuple(c.model.regions)
    c.jitter = ml_collections.ConfigDict(JitterConfig().to_dict())
    c.jitter.scale = tuple(c.jitter.scale)
    c.optim = optim_section()
    c.train = train_defaults()
    c.train.steps = 800
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.checkpoint_every = 200
    c.evals = ml_collections.ConfigDict({"val": {"type": "val_loss", "every": 0}})
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    return c
