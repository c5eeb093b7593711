"""The architecture of `wristmir bench --suite clip-parity`: the open_clip CLIP it is compared
with, expressed as our model. CLIP embedding 256; a ViT 224/16 image tower (width 384, depth 6,
6 heads, MLP 1536, CLS pooling); a text tower with context 64 (width 384, depth 6, 6 heads,
vocabulary 30,522, first-token pooling, one token type). The benchmark runs only the global image
and text towers (bench/clip_parity.GlobalTowers) with a plain CLIP loss and AdamW.

Variants: `:tiny` shrinks every size (the tests' parity check); `:bf16` computes in bfloat16.
"""

from wristmir_jax.train.defaults import base_config


def _vit(image_size, patch, width, depth, heads):
    from wristmir_jax.models.presets import _vit as vit

    return vit(image_size, patch, width, depth, heads, 4.0, pool="cls")


def get_config(arg=None):
    from wristmir_jax.models.presets import _local, _text

    variants = set((arg or "").split(",")) - {""}
    unknown = variants - {"tiny", "bf16"}
    if unknown:
        raise ValueError(f"unknown clip_parity variant(s) {sorted(unknown)} (use tiny and/or bf16)")
    c = base_config("tiny")
    if "tiny" in variants:
        image, text, embed = _vit(32, 8, 32, 2, 2), _text(512, 32, 2, 2, 128, 16), 32
    else:
        image, text, embed = _vit(224, 16, 384, 6, 6), _text(30522, 384, 6, 6, 1536, 64), 256
    text["type_vocab_size"] = 1
    c.model.image = image
    c.model.local = _local(_vit(32, 8, 32, 1, 2))  # built but never run by the parity step
    c.model.text = text
    c.model.embed_dim = embed
    c.model.local.region_embedding = False
    if "bf16" in variants:
        c.model.dtype = "bfloat16"
    c.data.source = "synthetic"
    c.data.order = "global"
    c.data.global_batch_size = 32
    c.data.augment = False
    c.loss.terms = {"global_clip": 1.0}
    c.loss.params = {}
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 0
    c.optim.b2 = 0.98
    c.optim.weight_decay = 0.1
    c.optim.clip_norm = 0.0
    c.train.steps = 1000
    return c
