"""The bone localizer (task `bone_localizer`, localize/localizer.py) and, in its `refiner`
section, the second-stage refiner (configs/refiner.py): `wristmir localize train --config
configs/localizer.py[:quick] --workdir W --config.data.manifest=M --config.data.boxes=B`.

Defaults are those of the former argparse flags: 1500 steps, batch 32, lr 3e-3 (AdamW, warmup a
tenth of the steps up to 200, cosine to 2%, clip 1.0, weight decay 1e-4), 256 px canonical
square, random shifts up to an eighth of it (data.max_shift -1). `refine` False trains the first
stage only (was --no-refine). The `box_iou` evaluator scores the validation split every
`train.eval_every` steps; its mean IoU picks the checkpoint `localize predict` uses.
`:quick` (the demo's --quick): 100 steps, no refiner.
"""

import os

import ml_collections

from wristmir_jax.config import load_config
from wristmir_jax.localize.localizer import LocalizerConfig

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
    if arg not in (None, "quick"):
        raise ValueError(f"localizer variants: quick (got {arg!r})")
    c = ml_collections.ConfigDict()
    c.task = "bone_localizer"
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        manifest="", boxes="", classes="", workers=2, strict=False, global_batch_size=32,
        max_shift=-1, eval_batches=0))
    lc = LocalizerConfig()
    c.model = ml_collections.ConfigDict(dict(
        image_size=lc.image_size, widths=tuple(lc.widths), head_width=lc.head_width,
        fine_width=lc.fine_width, clip=tuple(lc.clip)))
    # both stages share the optimizer, the trainer settings and the (replicated) mesh
    refiner = load_config(os.path.join(HERE, "refiner.py"))
    for section in ("optim", "train", "mesh"):
        c[section] = ml_collections.ConfigDict(refiner[section].to_dict())
    c.train.steps = 1500
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.best_metric = "box_iou/mean_iou"
    c.train.best_mode = "max"
    c.evals = ml_collections.ConfigDict({"box_iou": {"type": "box_iou", "every": 0}})
    c.refine = True
    c.refiner = refiner
    if arg == "quick":
        c.train.steps = 100
        c.train.eval_every = 50
        c.refine = False
    return c
