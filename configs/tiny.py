"""Tests: the tiny model (32 px, width 32) on in-memory synthetic data, a few steps."""

from wristmir_jax.train.defaults import base_config


def get_config(arg=None):
    if arg:
        raise ValueError(f"tiny has no variants (got {arg!r})")
    c = base_config("tiny")
    c.data.source = "synthetic"
    c.data.order = "global"
    c.data.global_batch_size = 16
    c.data.augment = False
    c.data.eval_batches = 2
    c.data.synthetic.num_train = 64
    c.data.synthetic.num_val = 32
    c.loss.terms = {"global_clip": 1.0, "local_clip": 0.5}
    c.loss.params = {}
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 2
    c.train.steps = 6
    c.train.log_every = 1
    c.train.eval_every = 3
    c.train.checkpoint_every = 1
    c.train.keep = 2
    c.train.async_checkpoint = True
    return c
