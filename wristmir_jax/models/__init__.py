"""Models: functional Flax towers (ViT, ResNet, BERT-style text), the global and local two-tower
models, Hugging Face safetensors import, and FLOPs from XLA cost analysis.

    from wristmir_jax.models import build, model_config
    model = build(model_config("tiny"), vocab_size=tokenizer.vocab_size)
    params, logical_axes = model.init(jax.random.key(0), model.dummy_batch(2))
    emb = jax.jit(model.encode)(params, batch)

FLOPs: `wristmir_jax.models.flops.flops_per_example` (kept out of this namespace so that
`python -m wristmir_jax.models.flops` runs cleanly).
"""

from wristmir_jax.models.hf_import import apply_pretrained, load_tokenizer
from wristmir_jax.models.model import WristModel, build
from wristmir_jax.models.presets import PRESETS, model_config

__all__ = ["PRESETS", "WristModel", "apply_pretrained", "build", "load_tokenizer", "model_config"]
