"""The demo: global + local encoders (small GroupNorm ResNets, 2-layer text tower) on the built
synthetic dataset (~1400 training images, 128 px images, 64 px crops), about 7 minutes on 2 CPU
cores.

Variants (comma-separated): `configs/cpu_demo.py:quick` is the demo's --quick run (40 steps);
`:vit` swaps in the ViT towers of the `cpu_demo_vit` preset (e.g. `:vit,quick`).
`--config.data.source=synthetic` trains on in-memory synthetic data instead of DATA_DIR.
"""

from wristmir_jax.train.defaults import base_config


def get_config(arg=None):
    c = base_config("cpu_demo")
    c.data.source = "tfds"
    c.data.order = "grain"
    c.data.global_batch_size = 32
    c.data.worker_count = 1
    c.data.augment = True
    c.data.eval_batches = 4
    c.data.synthetic.num_train = 1400
    c.data.synthetic.num_val = 128
    c.loss.terms = {"global_multipos": 1.0, "local_multipos": 1.0}
    c.loss.params = {"global_multipos": {"threshold": 0.75}, "local_multipos": {"threshold": 0.75}}
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 40
    c.optim.weight_decay = 0.05
    c.train.steps = 300
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.checkpoint_every = 50
    c.train.keep = 2
    c.train.keep_best = 1
    variants = set((arg or "").split(",")) - {""}
    unknown = variants - {"quick", "vit"}
    if unknown:
        raise ValueError(f"unknown cpu_demo variant(s) {sorted(unknown)} (use quick and/or vit)")
    if "vit" in variants:
        from wristmir_jax.models.presets import model_config

        c.model = model_config("cpu_demo_vit")
    if "quick" in variants:
        c.train.steps = 40
        c.optim.warmup_steps = 10
        c.train.eval_every = 20
        c.train.checkpoint_every = 20
    return c
