"""`wristmir bench --suite clip-parity`: our train step and open_clip's on the identical CLIP
architecture (configs/clip_parity.py), in one process, same batch, same thread count, AdamW on
both sides, a plain symmetric CLIP loss.

Our side: the global image and text towers of WristModel only (GlobalTowers below), the trainer's
own step (train/step.make_train_step) and optimizer (train/optim), donated state, jitted once.
open_clip side: open_clip.model.CLIP built from the same sizes, open_clip.loss.ClipLoss,
torch.optim.AdamW, eager PyTorch on CPU, the loop of open_clip's training/train.py without AMP.

Making the two architectures identical (both directions are checked: parameter count equal, and
forward matmul FLOPs from PyTorch's FlopCounterMode equal to models/flops.py's analytic count):
  open_clip  no_ln_pre, CLS-token pooling; text: no causal mask, first-token pooling, projection
             bias; grayscale patch embedding with a bias (our radiographs are one channel);
             a bias after the image projection and a learned token-type vector added to the
             token embeddings (our BERT-style text tower has one token type);
             init_logit_bias (our global_bias; neither loss uses it).
  ours       CLS pooling, one token type, full-length captions (the padding bias is all zeros).
LayerNorm placement differs (our text tower is post-LN like BERT, open_clip's pre-LN): the same
parameters and FLOPs.

torchvision from PyPI does not import with the CPU torch wheel, and open_clip imports it at
package level; this module loads open_clip's model and loss modules without the package's
__init__ and provides the one torchvision name they import (FrozenBatchNorm2d, used only to
freeze ResNet towers), in this process only.

Timing: the two sides alternate step by step (two warm-up steps each first), `repeats` rounds
per batch size; the figure is the median per side and the ratio of medians, so a neighbour's load
hits both. Both sides run with the host allocator of utils/host_memory (one process, one
allocator); each side's page faults and kernel CPU time per step are recorded beside its time.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import resource
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.bench import peak
from wristmir_jax.models import flops as model_flops
from wristmir_jax.utils.host_memory import keep_freed_memory

_OURS_KEYS = ("global_image", "text", "global_image_proj", "global_text_proj",
              "global_log_scale", "global_bias")


# ----------------------------------------------------------------------------- our side

class GlobalTowers:
    """WristModel restricted to the global image and global text towers: `encode` returns
    global_img, global_txt and the global logit scale/bias, and takes params holding only those
    towers' subtrees (`prune`)."""

    def __init__(self, model):
        self.model = model
        self.cfg = model.cfg

    @staticmethod
    def prune(params: dict) -> dict:
        return {k: params[k] for k in _OURS_KEYS}

    def _full(self, params):
        # WristNet.setup declares the local logit scalars; they are constants here (not trained).
        return {**params, "local_log_scale": jnp.zeros((), jnp.float32),
                "local_bias": jnp.zeros((), jnp.float32)}

    def encode(self, params, batch, *, train=False, rng=None):
        m = self.model
        full = self._full(params)
        img = m._apply(full, batch["image"], method="embed_image", train=train, rng=rng)
        txt = m._apply(full, batch["global_tokens"], batch["global_mask"],
                       method="embed_global_text", train=train, rng=rng)
        lp = m._apply(full, method="logit_params")
        return {"global_img": img, "global_txt": txt, "global_scale": lp["global_scale"],
                "global_bias": lp["global_bias"]}


def load_parity_config(variant: str = "", overrides: list[str] | None = None):
    from wristmir_jax.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "configs", "clip_parity.py") + (f":{variant}" if variant else "")
    return load_config(path, list(overrides or []))


def arch_of(cfg) -> dict:
    """The sizes both sides are built from."""
    m = cfg.model
    return {"embed_dim": int(m.embed_dim), "image_size": int(m.image.image_size),
            "patch": int(m.image.patch), "channels": 1, "width": int(m.image.width),
            "depth": int(m.image.depth), "heads": int(m.image.heads),
            "mlp_ratio": float(m.image.mlp_ratio), "context": int(m.text.max_len),
            "vocab": int(m.text.vocab_size), "text_width": int(m.text.width),
            "text_depth": int(m.text.depth), "text_heads": int(m.text.heads),
            "text_mlp": int(m.text.mlp_dim)}


def synthetic_batch(arch: dict, batch: int, seed: int = 0) -> dict:
    """Images in [0,1] and full-length token rows (numpy), the same for both sides."""
    rng = np.random.default_rng(seed)
    s, c = arch["image_size"], arch["channels"]
    return {"image": rng.random((batch, s, s, c), dtype=np.float32),
            "tokens": rng.integers(1, arch["vocab"], (batch, arch["context"]), dtype=np.int32)}


def our_batch(b: dict) -> dict:
    n = b["image"].shape[0]
    return {"image": b["image"], "global_tokens": b["tokens"],
            "global_mask": np.ones_like(b["tokens"]),
            "global_caption_id": np.arange(n, dtype=np.int32),
            "record": np.zeros((n, _record_len()), np.int32)}


def _record_len() -> int:
    from wristmir_jax import schema

    return int(schema.RECORD_LEN)


def build_ours(cfg, batch: dict):
    """(compiled step(state, batch) -> (state, metrics), state, device batch, compile seconds,
    GlobalTowers) on one device: the trainer's step with donation."""
    from wristmir_jax import losses
    from wristmir_jax.train import optim
    from wristmir_jax.train.state import build_model, state_from
    from wristmir_jax.train.step import make_train_step

    # Not train/setup.build_run: that builds the whole WristModel's state; here only the global
    # towers' params exist (GlobalTowers.prune), with the trainer's optimizer and state layout.
    model = build_model(cfg)
    towers = GlobalTowers(model)
    params = towers.prune(jax.jit(model.init_params)(jax.random.PRNGKey(int(cfg.seed)),
                                                      model.dummy_batch(2)))
    tx, sched = optim.make_optimizer(cfg.optim, params, int(cfg.train.steps))
    state = state_from(params, tx.init(params), jax.random.PRNGKey(1))
    objective = losses.objective(cfg.loss)
    step = jax.jit(make_train_step(towers, objective, tx, sched), donate_argnums=(0,))
    dev_batch = jax.device_put(our_batch(batch))
    t0 = time.perf_counter()
    compiled = step.lower(state, dev_batch).compile()
    compile_s = time.perf_counter() - t0
    return compiled, state, dev_batch, compile_s, towers


def our_forward_flops(towers: GlobalTowers, arch: dict, params, batch: dict) -> dict:
    """Forward FLOPs per example: analytic dot FLOPs (models/flops) and XLA's cost analysis."""
    analytic = model_flops.clip_forward_flops(arch)
    b = our_batch(batch)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    xla = model_flops.xla_flops(lambda p, x: towers.encode(p, x), abstract,
                                {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in b.items()})
    n = batch["image"].shape[0]
    return {"analytic": analytic["total"], "analytic_per_tower": analytic,
            "xla_cost_analysis": xla / n}


# ----------------------------------------------------------------------------- open_clip side

def import_open_clip():
    """(open_clip.model, open_clip.loss) without open_clip/__init__ (which imports torchvision's
    transforms); torchvision.ops.misc.FrozenBatchNorm2d is provided for this process only when
    the real torchvision is unusable."""
    import torch  # noqa: F401  (heavy optional dependency: the `bench` extra)

    if "open_clip.loss" in sys.modules:
        return sys.modules["open_clip.model"], sys.modules["open_clip.loss"]
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed (pip install -e '.[bench]')")
    try:
        import torchvision.ops.misc  # noqa: F401
    except Exception:
        try:  # open_clip.hf_model imports transformers, which probes torchvision once: before
            import transformers  # noqa: F401  the stand-in below exists
        except ImportError:
            pass
        _provide_frozen_batchnorm()
    if "open_clip" not in sys.modules:
        pkg = types.ModuleType("open_clip")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__package__ = "open_clip"
        pkg.__spec__ = spec
        sys.modules["open_clip"] = pkg
    return importlib.import_module("open_clip.model"), importlib.import_module("open_clip.loss")


def _provide_frozen_batchnorm() -> None:
    import torch
    from torch import nn

    class FrozenBatchNorm2d(nn.Module):
        """BatchNorm2d with fixed statistics and affine parameters (torchvision's definition)."""

        def __init__(self, num_features: int, eps: float = 1e-5):
            super().__init__()
            self.eps = eps
            for name, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                               ("running_var", 1.0)):
                self.register_buffer(name, torch.full((num_features,), fill))

        def forward(self, x):
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale[None, :, None, None] + shift[None, :, None, None]

    for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
        sys.modules.pop(name, None)
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules["torchvision"].ops = sys.modules["torchvision.ops"]
    sys.modules["torchvision.ops"].misc = sys.modules["torchvision.ops.misc"]
    sys.modules["torchvision.ops.misc"].FrozenBatchNorm2d = FrozenBatchNorm2d


def build_open_clip(arch: dict, seed: int = 0):
    """open_clip CLIP with the sizes of `arch`, adjusted as the module docstring lists."""
    import torch
    from torch import nn

    oc_model, _ = import_open_clip()
    torch.manual_seed(seed)
    vision = oc_model.CLIPVisionCfg(
        layers=arch["depth"], width=arch["width"], head_width=arch["width"] // arch["heads"],
        mlp_ratio=arch["mlp_ratio"], patch_size=arch["patch"], image_size=arch["image_size"],
        no_ln_pre=True, pool_type="tok")
    text = oc_model.CLIPTextCfg(
        context_length=arch["context"], vocab_size=arch["vocab"], width=arch["text_width"],
        heads=arch["text_heads"], layers=arch["text_depth"],
        mlp_ratio=arch["text_mlp"] / arch["text_width"], no_causal_mask=True, pool_type="first",
        proj_bias=True)
    model = oc_model.CLIP(arch["embed_dim"], vision, text, quick_gelu=False, init_logit_bias=-10.0)
    p = arch["patch"]
    model.visual.conv1 = nn.Conv2d(arch["channels"], arch["width"], p, p, bias=True)
    model.visual = _BiasedProjection(model.visual, arch["embed_dim"])
    model.token_embedding = _TypedEmbedding(arch["vocab"], arch["text_width"])
    return model


def _torch_modules():
    from torch import nn
    import torch

    class BiasedProjection(nn.Module):
        def __init__(self, visual, dim):
            super().__init__()
            self.inner = visual
            self.proj_bias = nn.Parameter(torch.zeros(dim))

        def forward(self, x):
            return self.inner(x) + self.proj_bias

    class TypedEmbedding(nn.Embedding):
        """Token embedding plus the (single) token-type embedding, as BERT adds it."""

        def __init__(self, vocab, width):
            super().__init__(vocab, width)
            nn.init.normal_(self.weight, std=0.02)
            self.type_embed = nn.Parameter(torch.randn(width) * 0.02)

        def forward(self, tokens):
            return super().forward(tokens) + self.type_embed

    return BiasedProjection, TypedEmbedding


def _BiasedProjection(visual, dim):
    return _torch_modules()[0](visual, dim)


def _TypedEmbedding(vocab, width):
    return _torch_modules()[1](vocab, width)


def torch_batch(b: dict):
    import torch

    return (torch.from_numpy(np.ascontiguousarray(b["image"].transpose(0, 3, 1, 2))),
            torch.from_numpy(b["tokens"].astype(np.int64)))


def make_open_clip_step(model, cfg):
    """open_clip's training/train.py step without AMP: forward, ClipLoss, backward, AdamW."""
    import torch

    _, oc_loss = import_open_clip()
    loss_fn = oc_loss.ClipLoss()
    o = cfg.optim
    opt = torch.optim.AdamW(model.parameters(), lr=float(o.lr), betas=(float(o.b1), float(o.b2)),
                            eps=float(o.eps), weight_decay=float(o.weight_decay))
    model.train()

    def step(images, tokens):
        opt.zero_grad(set_to_none=True)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        loss = loss_fn(img, txt, model.logit_scale.exp())
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, float(np.log(100.0)))
        return float(loss.detach())

    return step


def torch_forward_flops(model, images, tokens) -> float:
    """Forward FLOPs per example counted by PyTorch's FlopCounterMode (matmuls, convolutions,
    attention), the independent reference for the analytic count."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The math backend spells attention as two bmm's, which the counter sees on every build
    # (the fused CPU flash kernel is not in its table).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.encode_image(images, normalize=True)
        model.encode_text(tokens, normalize=True)
    return counter.get_total_flops() / images.shape[0]


def torch_profile(step, images, tokens, steps: int = 2) -> dict:
    """open_clip's step under torch.profiler: self CPU milliseconds per step by operator (the
    top 25) and grouped like bench/profile's kinds (matmul: mm/addmm/bmm/linear; attention:
    the fused SDPA kernels; the rest elementwise/other)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(images, tokens)
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()]
    total = sum(ms for _, ms in rows) or 1.0

    def kind(name: str) -> str:
        if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"):
            return "matmul"
        if "scaled_dot_product" in name:
            return "attention"
        if "convolution" in name:
            return "convolution"
        return "other"

    kinds: dict[str, float] = {}
    for name, ms in rows:
        kinds[kind(name)] = kinds.get(kind(name), 0.0) + ms
    top = sorted(rows, key=lambda r: -r[1])[:25]
    return {"steps": steps, "op_ms_per_step": total,
            "by_kind": {k: {"ms_per_step": v, "share": v / total}
                        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"name": n, "kind": kind(n), "ms_per_step": ms, "share": ms / total}
                        for n, ms in top]}


def torch_param_count(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------------- attention alone

def attention_core(arch: dict, batch: int, repeats: int = 9) -> dict:
    """Forward + backward milliseconds of the image tower's attention core alone (softmax(QK^T)V
    at the tower's tokens, heads and head width; loss sum(out^2)): ours (models/layers'
    heads-major einsums with the hand-written gradient, and differentiated by JAX),
    `jax.nn.dot_product_attention(implementation="xla")` on [B,T,N,H], and
    PyTorch's `scaled_dot_product_attention` (open_clip's path) on [B,N,T,H]; median of
    `repeats` rounds (interleaved) after one warm-up."""
    import torch

    from wristmir_jax.models.layers import attention_autodiff, heads_major_attention

    t = (arch["image_size"] // arch["patch"]) ** 2 + 1
    n, h = arch["heads"], arch["width"] // arch["heads"]
    x = np.random.default_rng(0).standard_normal((3, batch, n, t, h)).astype(np.float32)

    def jax_grad(attn, layout):
        g = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attn(q, k, v) ** 2), argnums=(0, 1, 2)))
        args = [jnp.asarray(a if layout == "bnth" else a.transpose(0, 2, 1, 3)) for a in x]
        return lambda: jax.block_until_ready(g(*args))

    qkv = [torch.from_numpy(a.copy()).requires_grad_() for a in x]

    def torch_step():
        torch.nn.functional.scaled_dot_product_attention(*qkv).pow(2).sum().backward()

    fns = {"ours_heads_major": jax_grad(heads_major_attention, "bnth"),
           "ours_heads_major_autodiff": jax_grad(attention_autodiff, "bnth"),
           "jax_dot_product_attention_xla": jax_grad(
               lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
               "btnh"),
           "torch_sdpa": torch_step}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()                                                          # compile / warm up
    for _ in range(repeats):                                          # rounds interleaved
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    flops = 3 * 4 * batch * n * t * t * h
    ms = {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}
    return {"shape_bnth": [batch, n, t, h], "fwd_bwd_ms": ms,
            "fwd_bwd_gflop_per_s": {k: flops / v / 1e6 for k, v in ms.items()}}


# ----------------------------------------------------------------------------- the suite

class _Timed:
    """Appends the block's wall seconds to `times` and its (minor page faults, kernel CPU
    seconds) to `kernel`: page faults are where a host allocator that returns freed memory
    shows (utils/host_memory)."""

    def __init__(self, times: list, kernel: list):
        self.times, self.kernel = times, kernel

    def __enter__(self):
        self.r0, self.t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()

    def __exit__(self, *exc):
        self.times.append(time.perf_counter() - self.t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.kernel.append((r1.ru_minflt - self.r0.ru_minflt, r1.ru_stime - self.r0.ru_stime))


def _kernel_summary(kernel: list) -> dict:
    return {"page_faults_per_step": float(np.median([k[0] for k in kernel])),
            "kernel_cpu_s_per_step": float(np.median([k[1] for k in kernel]))}


def compare(cfg, batch_sizes=(32, 64), repeats: int = 3, threads: int | None = None,
            peak_sizes=peak.DEFAULT_SIZES, profile: bool = False) -> dict:
    import torch

    from wristmir_jax.models.params import count_params

    threads = int(threads or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    arch = arch_of(cfg)
    mm = peak.matmul_peak(peak_sizes, str(cfg.model.dtype))
    out = {"architecture": arch, "threads": {"torch": torch.get_num_threads(), "xla": threads},
           "matmul_peak": mm, "torch_matmul_peak": peak.torch_matmul_peak(peak_sizes),
           "batches": {}}
    check = None
    for bs in batch_sizes:
        data = synthetic_batch(arch, bs)
        compiled, state, dev_batch, compile_s, towers = build_ours(cfg, data)
        oc = build_open_clip(arch)
        images, tokens = torch_batch(data)
        oc_step = make_open_clip_step(oc, cfg)
        if check is None:
            ours_fwd = our_forward_flops(towers, arch, state["params"], data)
            torch_fwd = torch_forward_flops(oc, images, tokens)
            n_ours, n_torch = count_params(state["params"]), torch_param_count(oc)
            check = {"params_ours": n_ours, "params_open_clip": n_torch,
                     "params_equal": n_ours == n_torch,
                     "forward_flops_analytic": ours_fwd["analytic"],
                     "forward_flops_open_clip_counter": torch_fwd,
                     "forward_flops_xla_cost_analysis": ours_fwd["xla_cost_analysis"],
                     "forward_flops_equal": abs(ours_fwd["analytic"] - torch_fwd)
                     <= 1e-6 * torch_fwd,
                     "analytic_per_tower": ours_fwd["analytic_per_tower"]}
        # warm-up: two steps each (our compile is done; first-touch of the step's host buffers,
        # torch's oneDNN primitives)
        for _ in range(2):
            state, m = compiled(state, dev_batch)
            jax.block_until_ready(m)
            oc_step(images, tokens)
        t_ours, t_oc, k_ours, k_oc = [], [], [], []
        for _ in range(repeats):
            with _Timed(t_ours, k_ours):
                state, m = compiled(state, dev_batch)
                jax.block_until_ready(m)
            with _Timed(t_oc, k_oc):
                oc_loss = oc_step(images, tokens)
        train_flops = 3.0 * check["forward_flops_analytic"] * bs
        so, st = float(np.median(t_ours)), float(np.median(t_oc))
        out["batches"][str(bs)] = {
            "ours": {"step_s": so, "step_s_all": t_ours, "examples_per_s": bs / so,
                     "flops_per_s": train_flops / so, "mfu": train_flops / so / mm["flops_per_s"],
                     "compile_s": compile_s, "loss": float(np.asarray(m["loss"])),
                     **_kernel_summary(k_ours)},
            "open_clip": {"step_s": st, "step_s_all": t_oc, "examples_per_s": bs / st,
                          "flops_per_s": train_flops / st,
                          "mfu": train_flops / st / mm["flops_per_s"], "loss": oc_loss,
                          **_kernel_summary(k_oc)},
            "ratio_examples_per_s": st / so,
            "train_flops_per_step": train_flops}
        if profile:
            from wristmir_jax.bench.profile import profile_step

            state, ours_profile = profile_step(compiled, state, dev_batch, steps=2)
            out["batches"][str(bs)]["ours"]["profile"] = ours_profile
            out["batches"][str(bs)]["open_clip"]["profile"] = torch_profile(oc_step, images,
                                                                            tokens)
        del compiled, state, oc
    out["check"] = check
    out["attention_core"] = attention_core(arch, min(batch_sizes))
    out["ratio_examples_per_s"] = min(v["ratio_examples_per_s"] for v in out["batches"].values())
    out["mfu_basis"] = ("3 x analytic forward matmul FLOPs per example (forward + backward), "
                        "against the best dense fp32 matmul of 2048^3 / 4096^3 in this run")
    return out


def run(quick: bool = False, config: str | None = None, batch: int | None = None,
        repeats: int | None = None, profile: bool = False) -> dict:
    """--quick: the `:tiny` architecture at batch 8 and small peak matmuls (a smoke run);
    --config: a clip_parity variant as `configs/clip_parity.py:VARIANT` (e.g. `:bf16`)."""
    variant = ""
    if config:
        path, _, variant = config.partition(":")
        if os.path.basename(path) != "clip_parity.py":
            from wristmir_jax.errors import UserError

            raise UserError(f"--config {config}: clip-parity runs configs/clip_parity.py[:variant]")
    if quick and not variant:
        variant = "tiny"
    cfg = load_parity_config(variant)
    host_memory = keep_freed_memory()  # both sides share this process's allocator
    sizes = (batch,) if batch else ((8,) if quick else (32, 64))
    out = compare(cfg, sizes, repeats or (2 if quick else 3),
                  peak_sizes=(256, 512) if quick else peak.DEFAULT_SIZES, profile=profile)
    out["variant"] = variant
    out["host_memory"] = host_memory
    if not (out["check"]["params_equal"] and out["check"]["forward_flops_equal"]):
        out["warning"] = "the two models differ in parameter count or forward FLOPs"
    return out


def plot(result: dict) -> list[dict]:
    from wristmir_jax.bench.plots import panel

    bs = sorted(result["batches"], key=int)
    rows = [result["batches"][b] for b in bs]
    groups = [f"batch {b}" for b in bs]
    return [panel("clip-parity: train examples/s", "examples / s", groups,
                  {"ours (JAX)": [r["ours"]["examples_per_s"] for r in rows],
                   "open_clip (PyTorch)": [r["open_clip"]["examples_per_s"] for r in rows]}),
            panel("clip-parity: MFU (vs dense matmul peak)", "MFU", groups,
                  {"ours (JAX)": [r["ours"]["mfu"] for r in rows],
                   "open_clip (PyTorch)": [r["open_clip"]["mfu"] for r in rows]})]
