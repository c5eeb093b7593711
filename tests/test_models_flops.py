"""FLOPs per example from XLA cost analysis: consistent with an analytic matmul count, the
per-tower split adds up to the full forward, and forward+backward costs about 3x forward."""

import jax

from wristmir_jax.models import build, model_config
from wristmir_jax.models.flops import flops_per_example


def vit_matmul_flops(image, patch, width, depth, mlp, embed_dim, channels=1):
    """2 * multiply-adds of a ViT tower (CLS + patches) and its projection head."""
    n = (image // patch) ** 2
    t = n + 1
    per_layer = 2 * (4 * t * width * width + 2 * t * t * width + 2 * t * width * mlp)
    return 2 * n * patch * patch * channels * width + depth * per_layer + 2 * width * embed_dim


def test_flops_per_example_tiny():
    model = build(model_config("tiny"))
    batch = model.dummy_batch(2, 12)
    params = jax.eval_shape(model.init_params, jax.random.key(0), batch)  # shapes suffice
    f = flops_per_example(model, params, batch, per_tower=True)
    assert f["batch_size"] == 2 and f["params"] > 0
    towers = f["image"] + f["crops"] + f["global_text"] + f["region_text"]
    assert abs(towers - f["forward_flops"]) <= 0.01 * f["forward_flops"]
    # Matmuls dominate; XLA also counts LayerNorm, GELU, softmax (large share at width 32).
    analytic = vit_matmul_flops(32, 8, 32, 2, 64, 32)
    assert 1.0 <= f["image"] / analytic <= 1.5, (f["image"], analytic)
    # Three crops through the same-size tower cost three images (plus region-embedding adds).
    assert 2.9 <= f["crops"] / f["image"] <= 3.1
    assert 2.5 <= f["train_flops"] / f["forward_flops"] <= 4.0
