"""FLOPs per example, two ways, for MFU figures in the performance benchmarks:

- analytic: 2 x multiply-adds of every matmul and convolution of each tower, from its spec
  (`tower_forward_flops`, `model_forward_flops`, `clip_forward_flops`); elementwise work
  (LayerNorm, GELU, softmax) is not counted, as in MFU conventions and PyTorch's FlopCounterMode;
- XLA's cost analysis of the compiled encode (and of a training-style forward+backward), which
  also counts elementwise operations.

Counts are "model FLOPs": taken from the equivalent model without scan and without remat (XLA's
cost analysis counts a scanned while-loop body once, and remat recomputation is not useful
work). Only shapes are used: params and batch may be arrays or jax.ShapeDtypeStruct.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp

from wristmir_jax.models.model import WristModel
from wristmir_jax.models.params import count_params


def transformer_flops(tokens: int, width: int, depth: int, mlp_dim: int) -> float:
    """Forward matmul FLOPs of `depth` pre/post-LN blocks over `tokens` tokens (one example):
    q, k, v and output projections, the two attention products, the two MLP layers."""
    per_block = 2 * (4 * tokens * width * width + 2 * tokens * tokens * width
                     + 2 * tokens * width * mlp_dim)
    return float(depth * per_block)


def vit_flops(spec, embed_dim: int = 0) -> dict:
    """{"patch_embed", "blocks", "head", "total"} for a ViTSpec (one image); "head" is the MAP
    head when pool == "map", "proj" the projection to `embed_dim`."""
    n = spec.grid * spec.grid
    out = {"patch_embed": 2.0 * n * spec.patch * spec.patch * spec.channels * spec.width,
           "blocks": transformer_flops(n + 1, spec.width, spec.depth, spec.mlp_dim), "head": 0.0,
           "proj": 2.0 * spec.width * embed_dim}
    if spec.pool == "map":  # one query: q proj, k/v projections of all tokens, products, MLP
        w, t = spec.width, n + 1
        out["head"] = 2.0 * (w * w + 2 * t * w * w + 2 * t * w + w * w + 2 * w * spec.mlp_dim)
    out["total"] = sum(out.values())
    return out


def text_flops(spec, length: int | None = None, embed_dim: int = 0) -> dict:
    """{"blocks", "proj", "total"} for a TextSpec (one caption of `length` tokens)."""
    t = int(length or spec.max_len)
    out = {"blocks": transformer_flops(t, spec.width, spec.depth, spec.mlp_dim),
           "proj": 2.0 * spec.width * embed_dim}
    out["total"] = sum(out.values())
    return out


def _conv_out(size: int, stride: int) -> int:
    return -(-size // stride)  # SAME padding


def resnet_flops(spec, image_size: int, embed_dim: int = 0) -> dict:
    """{"convs", "proj", "total"} for a ResNetSpec (models/resnet.py: stem, basic blocks with a
    1x1 projection shortcut where the shape changes) on one square image. Every output position
    counts the full kernel (XLA's cost analysis skips taps on the SAME padding: ~1-2% less)."""
    s, c, f = image_size, spec.channels, 0.0
    if spec.stem_stride == 1:
        k, stride = 3, 1
    else:
        k, stride = 7, 2
    s = _conv_out(s, stride)
    f += 2.0 * s * s * k * k * c * spec.widths[0]
    c = spec.widths[0]
    if spec.stem_stride == 4:
        s = _conv_out(s, 2)
    for i, (n, w) in enumerate(zip(spec.stages, spec.widths)):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            so = _conv_out(s, stride)
            f += 2.0 * so * so * 9 * c * w + 2.0 * so * so * 9 * w * w
            if c != w or stride != 1:
                f += 2.0 * so * so * c * w
            s, c = so, w
    out = {"convs": f, "proj": 2.0 * spec.widths[-1] * embed_dim}
    out["total"] = sum(out.values())
    return out


def tower_forward_flops(spec, image_size: int = 0, embed_dim: int = 0) -> dict:
    """Analytic forward FLOPs of one image tower (ViTSpec or ResNetSpec) on one input."""
    if hasattr(spec, "patch"):
        return vit_flops(spec, embed_dim)
    return resnet_flops(spec, image_size, embed_dim)


def model_forward_flops(model: WristModel, text_len: int | None = None,
                        text_cached: bool = False) -> dict:
    """Analytic forward FLOPs per example of the whole WristModel, per tower: the global image,
    the three crops, the global caption and the three region captions (0 when `text_cached`:
    a frozen tower's features come precomputed, only the projections run)."""
    s, e = model.spec, model.spec.embed_dim
    img = tower_forward_flops(s.global_image, model.image_size, e)["total"]
    crop = tower_forward_flops(s.local_image, model.crop_size, e)["total"]
    if text_cached:
        txt = 2.0 * s.text.width * e
    else:
        txt = text_flops(s.text, text_len, e)["total"]
    out = {"image": img, "crops": 3 * crop, "global_text": txt, "region_text": 3 * txt}
    out["total"] = sum(out.values())
    return out


def clip_forward_flops(arch: dict) -> dict:
    """Analytic forward FLOPs per example of a CLIP with one image and one text tower, from the
    plain sizes of bench/clip_parity.arch_of (so it serves both sides of the comparison)."""
    n = (arch["image_size"] // arch["patch"]) ** 2
    w, e = arch["width"], arch["embed_dim"]
    mlp = int(round(w * arch["mlp_ratio"]))
    image = (2.0 * n * arch["patch"] ** 2 * arch["channels"] * w
             + transformer_flops(n + 1, w, arch["depth"], mlp) + 2.0 * w * e)
    text = (transformer_flops(arch["context"], arch["text_width"], arch["text_depth"],
                              arch["text_mlp"]) + 2.0 * arch["text_width"] * e)
    return {"image": image, "text": text, "total": image + text}


def xla_flops(fn, *abstract_args) -> float:
    """XLA's cost-analysis FLOPs of `fn` compiled for these abstract arguments."""
    return _cost(fn, *abstract_args)["flops"]


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jax.numpy.shape(x), x.dtype), tree)


def _cost(fn, *args) -> dict:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": float(analysis.get("flops", 0.0)),
            "bytes": float(analysis.get("bytes accessed", 0.0))}


def _contrastive_loss(emb: dict) -> jax.Array:
    """Softmax InfoNCE on the global and the local pairs (the shape of a real objective)."""
    def infonce(a, b, scale):
        logits = scale * a @ b.T
        labels = jnp.arange(a.shape[0])
        lsm_a = jax.nn.log_softmax(logits, axis=1)[labels, labels]
        lsm_b = jax.nn.log_softmax(logits, axis=0)[labels, labels]
        return -(lsm_a.mean() + lsm_b.mean()) / 2

    d = emb["region_img"].shape[-1]
    local = infonce(emb["region_img"].reshape(-1, d), emb["region_txt"].reshape(-1, d),
                    emb["local_scale"])
    return infonce(emb["global_img"], emb["global_txt"], emb["global_scale"]) + local


def _plain_model(model: WristModel) -> WristModel:
    if not (model.cfg.scan_layers or model.cfg.remat):
        return model
    cfg = copy.deepcopy(model.cfg)
    with cfg.unlocked():
        cfg.scan_layers = False
        cfg.remat = False
    return WristModel(cfg)


def flops_per_example(model: WristModel, params: Any, batch: dict, *, backward: bool = True,
                      per_tower: bool = False) -> dict:
    """{"forward_flops", "train_flops" (forward+backward of a contrastive loss), "forward_bytes",
    "batch_size", "params"}, FLOPs divided by the batch size; with per_tower also the forward
    FLOPs per example of each retrieval entry point ("image", "crops", "global_text",
    "region_text" (three captions))."""
    plain = _plain_model(model)
    inputs = _abstract(model._model_inputs(batch))
    b = int(inputs["image"].shape[0])
    if plain is model:
        p = _abstract(params)
    else:
        p = jax.eval_shape(plain.init_params, jax.random.key(0), inputs)
    fwd = _cost(plain.encode, p, inputs)
    out = {"batch_size": b, "params": count_params(p), "forward_flops": fwd["flops"] / b,
           "forward_bytes": fwd["bytes"] / b}
    if backward:
        def train_step(q, x):
            return jax.value_and_grad(lambda q_: _contrastive_loss(plain.encode(q_, x)))(q)
        out["train_flops"] = _cost(train_step, p, inputs)["flops"] / b
    if per_tower:
        rt, rm = inputs["region_tokens"], inputs["region_mask"]
        length = rt.shape[-1]
        flat = jax.ShapeDtypeStruct((b * 3, length), rt.dtype)
        flat_mask = jax.ShapeDtypeStruct((b * 3, length), rm.dtype)
        ids = jax.ShapeDtypeStruct((b * 3,), jnp.int32)
        out["image"] = _cost(plain.encode_image, p, inputs["image"])["flops"] / b
        out["crops"] = _cost(plain.encode_crops, p, inputs["crops"])["flops"] / b
        out["global_text"] = _cost(plain.encode_global_text, p, inputs["global_tokens"],
                                   inputs["global_mask"])["flops"] / b
        out["region_text"] = _cost(plain.encode_region_text, p, flat, flat_mask, ids)["flops"] / b
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m wristmir_jax.models.flops --preset cpu_demo --batch 32 [--time 5]`: JSON with
    params, FLOPs per example and (with --time N) the median wall time of N jitted
    forward+backward steps of the contrastive loss on random inputs."""
    import argparse
    import json
    import time

    import numpy as np

    from wristmir_jax.models import build, model_config

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--preset", default="cpu_demo")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-len", type=int, default=None)
    ap.add_argument("--time", type=int, default=0, help="time N train steps (0: FLOPs only)")
    args = ap.parse_args(argv)
    model = build(model_config(args.preset))
    batch = model.dummy_batch(args.batch, args.text_len)
    abstract = jax.eval_shape(model.init_params, jax.random.key(0), batch)
    out = {"preset": args.preset, "backend": jax.default_backend(),
           **flops_per_example(model, abstract, batch, per_tower=True)}
    if args.time:
        rng = np.random.default_rng(0)
        batch["image"] = rng.random(batch["image"].shape, dtype=np.float32)
        batch["crops"] = rng.random(batch["crops"].shape, dtype=np.float32)
        vocab = int(model.cfg.text.vocab_size)
        batch["global_tokens"] = rng.integers(1, vocab, batch["global_tokens"].shape, np.int32)
        batch["region_tokens"] = rng.integers(1, vocab, batch["region_tokens"].shape, np.int32)
        params = jax.jit(model.init_params)(jax.random.key(0), batch)
        step = jax.jit(jax.value_and_grad(lambda p, b: _contrastive_loss(model.encode(p, b))))
        jax.block_until_ready(step(params, batch))
        times = []
        for _ in range(args.time):
            t0 = time.perf_counter()
            jax.block_until_ready(step(params, batch))
            times.append(time.perf_counter() - t0)
        out["train_step_s"] = float(np.median(times))
        out["achieved_gflops"] = out["train_flops"] * args.batch / out["train_step_s"] / 1e9
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
