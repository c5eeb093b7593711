"""ViT-B/16-scale training on a TPU pod slice or GPU cluster: ViT-B/16 image and crop towers,
BERT-base text, bf16 compute, rematerialised scanned blocks, FSDP over 8-way shards, the ring
(shard_map + ppermute) multi-positive loss so no device holds the global logit matrix, and a
global batch of 16,384.

The multipos relevance is computed block by block inside the ring from the records, so the step
never holds the [4, B, B] relevance either; per-chip memory is checked without a pod by
`wristmir aot --config configs/vit_b16_pod.py --topology v5e:16x16 --topology v5p:4x4x8`.

Variants: `configs/vit_b16_pod.py:v5p_32k` (global batch 32,768 for a v5p slice),
`:gpu8` (one 8-GPU host, e.g. 8 x H100/H200 80+ GB: batch 1024 as 2 accumulated micro-batches
of 512, FSDP over the 8 GPUs, bf16 attention through cuDNN flash attention),
`:small` (a single accelerator smoke run: batch 64, 100 steps),
`:tiny` (the same recipe with the tiny test towers: `wristmir aot` and CI compile it).
Run with `wristmir train --config configs/vit_b16_pod.py --workdir gs://... --config.data.dir=...`
on every host (jax.distributed picks up the TPU / SLURM environment).
"""

from wristmir_jax.train.defaults import base_config


def get_config(arg=None):
    c = base_config("vit_b16")
    c.data.source = "tfds"
    c.data.order = "grain"
    c.data.global_batch_size = 16384
    c.data.worker_count = 16
    c.data.augment = True
    c.data.eval_batches = 8
    ring_axes = ("data", "fsdp")
    c.loss.terms = {"global_multipos_ring": 1.0, "local_multipos_ring": 1.0}
    c.loss.params = {"global_multipos_ring": {"threshold": 0.75, "axis": ring_axes},
                     "local_multipos_ring": {"threshold": 0.75, "axis": ring_axes}}
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2000
    c.optim.b2 = 0.95
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 1.0
    c.train.steps = 40000
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.train.keep = 3
    c.train.keep_best = 1
    c.train.grad_accum = 1
    c.mesh.data = -1
    c.mesh.fsdp = 8
    c.mesh.tensor = 1
    if arg == "gpu8":
        c.data.global_batch_size = 1024
        c.data.worker_count = 8
        c.train.grad_accum = 2
        c.mesh.fsdp = 8
        c.mesh.data = 1
    elif arg == "v5p_32k":
        c.data.global_batch_size = 32768
    elif arg == "tiny":
        from wristmir_jax.models.presets import model_config

        c.model = model_config("tiny")
        c.data.global_batch_size = 64
        c.mesh.fsdp = 2
        c.train.steps = 100
    elif arg == "small":
        c.data.global_batch_size = 64
        c.data.worker_count = 4
        c.mesh.fsdp = 1
        c.train.steps = 100
        c.optim.warmup_steps = 10
        c.train.eval_every = 50
        c.train.checkpoint_every = 50
    elif arg not in (None, ""):
        raise ValueError(f"unknown vit_b16_pod variant {arg!r} "
                         "(use v5p_32k, gpu8, small, tiny or nothing)")
    return c
