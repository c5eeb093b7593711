"""Transformer building blocks shared by the ViT and the BERT-style text tower: a linear layer with
logical axis names, multi-head attention, the MLP, one block (pre-LN as in ViT or post-LN as in
BERT) and a depth-`n` stack with per-block rematerialisation and `nn.scan` switches.

Parameters are fp32 (`param_dtype`); `dtype` is the compute dtype. Attention logits and softmax
are always computed in fp32. Every parameter is created with `nn.with_logical_partitioning`, so
`init` yields boxed values whose names the model unboxes into a logical-axes pytree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NEG_INF = -1e9  # additive attention bias for padded keys (finite: fully padded rows stay NaN-free)


def logical(init, names: Sequence[str | None]):
    """Initializer carrying logical axis names (one per parameter dimension)."""
    return nn.with_logical_partitioning(init, tuple(names))


def fan_in_init(n_in_dims: int, n_out_dims: int, scale: float = 1.0, mode: str = "fan_avg",
                distribution: str = "uniform"):
    """Variance-scaling init for a kernel whose first `n_in_dims` dims are contracted."""
    in_axis = tuple(range(n_in_dims))
    out_axis = tuple(range(n_in_dims, n_in_dims + n_out_dims))
    return jax.nn.initializers.variance_scaling(scale, mode, distribution, in_axis=in_axis,
                                                out_axis=out_axis)


def _declare_linear(module: nn.Module, in_shape, features, in_names, out_names, use_bias,
                    kernel_init, bias_init):
    """Creates `module`'s "kernel" (in_shape + features) and "bias" (features) parameters."""
    init = kernel_init or fan_in_init(len(in_names), len(features))
    kernel = module.param("kernel", logical(init, tuple(in_names) + tuple(out_names)),
                          tuple(in_shape) + tuple(features), jnp.float32)
    bias = None
    if use_bias:
        bias = module.param("bias", logical(bias_init, tuple(out_names)), tuple(features),
                            jnp.float32)
    return kernel, bias


class Linear(nn.Module):
    """y = x . kernel + bias, contracting the last `len(in_names)` dims of x.

    `features` is the output shape (a tuple for multi-head projections); `in_names`/`out_names`
    are the logical names of the contracted and produced dims.
    """

    features: tuple[int, ...]
    in_names: tuple[str | None, ...]
    out_names: tuple[str | None, ...]
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Any = None
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        n_in = len(self.in_names)
        kernel, bias = _declare_linear(self, x.shape[x.ndim - n_in:], self.features,
                                       self.in_names, self.out_names, self.use_bias,
                                       self.kernel_init, self.bias_init)
        x = x.astype(self.dtype)
        lhs = "".join(chr(ord("a") + i) for i in range(x.ndim))
        contracted = lhs[x.ndim - n_in:]
        outs = "".join(chr(ord("A") + i) for i in range(len(self.features)))
        y = jnp.einsum(f"{lhs},{contracted}{outs}->{lhs[:x.ndim - n_in]}{outs}", x,
                       kernel.astype(self.dtype))
        if bias is not None:
            y = y + bias.astype(self.dtype)
        return y


class HeadProjection(nn.Module):
    """The parameters of a multi-head projection (kernel [embed, heads, kv], bias [heads, kv]),
    returned rather than applied, under the same names as a `Linear`: projections of one input
    then run as one wider matmul (`project_heads`)."""

    heads: int
    head_dim: int

    @nn.compact
    def __call__(self, in_dim: int):
        return _declare_linear(self, (in_dim,), (self.heads, self.head_dim), ("embed",),
                               ("heads", "kv"), True, None, nn.initializers.zeros)


def project_heads(x, params, dtype: Dtype):
    """[B,T,E] through several (kernel [E,N,H], bias [N,H]) projections in one matmul (the
    kernels stacked on a new axis, not concatenated, so a "heads" sharding carries through);
    returns one [B,T,N,H] array per projection."""
    w = jnp.stack([k for k, _ in params], axis=1).astype(dtype)          # [E, P, N, H]
    b = jnp.stack([b for _, b in params], axis=0).astype(dtype)          # [P, N, H]
    y = jnp.einsum("bte,epnh->btpnh", x.astype(dtype), w) + b
    return [y[:, :, i] for i in range(len(params))]


def layer_norm(eps: float, dtype: Dtype, name: str, axis_name: str = "embed") -> nn.LayerNorm:
    # Two-pass variance (use_fast_variance=False) to match PyTorch's LayerNorm in fp32.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                        scale_init=logical(nn.initializers.ones, (axis_name,)),
                        bias_init=logical(nn.initializers.zeros, (axis_name,)), name=name)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """Static description of one transformer block."""

    width: int
    heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-6
    post_ln: bool = False  # True: BERT (x = LN(x + f(x))); False: ViT (x = x + f(LN(x)))
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    deterministic: bool = True


def attention_implementation(dtype: Dtype, dropout: bool) -> str:
    """"cudnn" (`jax.nn.dot_product_attention`'s flash kernel) on GPU for the 16-bit dtypes it
    supports without attention dropout; "einsum" (`heads_major_attention`) everywhere else."""
    if (not dropout and jax.default_backend() == "gpu"
            and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)):
        return "cudnn"
    return "einsum"


def _masked_logits(q, k, bias, mask):
    """fp32 logits of heads-major q [B,N,T,H] against k [B,N,S,H]; the 1/sqrt(H) scale goes on
    q ([T,H] elements, not [T,S])."""
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum("bnqh,bnkh->bnqk", q * scale, k, preferred_element_type=jnp.float32)
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, NEG_INF)
    return logits


def _attention_forward(q, k, v, bias, mask, dtype):
    weights = jax.nn.softmax(_masked_logits(q, k, bias, mask), axis=-1)
    return jnp.einsum("bnqk,bnkh->bnqh", weights.astype(dtype), v), weights


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention_core(q, k, v, bias, mask, dtype):
    return _attention_forward(q, k, v, bias, mask, dtype)[0]


def _attention_core_fwd(q, k, v, bias, mask, dtype):
    out, weights = _attention_forward(q, k, v, bias, mask, dtype)
    return out, (q, k, v, out, weights, bias, mask)


def _attention_core_bwd(dtype, res, d_out):
    # Softmax backward with the output instead of the weights (FlashAttention's D = rowsum(dO * O)
    # replaces autodiff's rowsum(dP * P): a [T,H] product, not a [T,S] one); P is kept from the
    # forward pass, not recomputed: at these sequence lengths memory is not what limits.
    q, k, v, out, weights, bias, mask = res
    scale = jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    d_v = jnp.einsum("bnqk,bnqh->bnkh", weights.astype(dtype), d_out)
    d_weights = jnp.einsum("bnqh,bnkh->bnqk", d_out, v, preferred_element_type=jnp.float32)
    d_row = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    d_logits = weights * (d_weights - d_row)
    if mask is not None:
        d_logits = jnp.where(mask, d_logits, 0.0)
    d_scaled = d_logits.astype(dtype)
    d_q = jnp.einsum("bnqk,bnkh->bnqh", d_scaled, k) * scale
    d_k = jnp.einsum("bnqk,bnqh->bnkh", d_scaled, q * scale)
    d_bias = None
    if bias is not None:
        lead = d_logits.ndim - bias.ndim                       # bias broadcasts from the left
        d_bias = jnp.sum(d_logits, axis=tuple(range(lead)))
        broadcast = tuple(i for i, n in enumerate(bias.shape) if n == 1 != d_bias.shape[i])
        d_bias = jnp.sum(d_bias, axis=broadcast, keepdims=True).astype(bias.dtype)
    return d_q, d_k, d_v, d_bias, None


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def heads_major_attention(q, k, v, bias=None, mask=None, dtype: Dtype = jnp.float32,
                          dropout=None):
    """Multi-head attention on heads-major inputs q [B,N,T,H], k, v [B,N,S,H] -> [B,N,T,H], with
    fp32 logits and softmax; `bias` is added to the logits, `mask` (bool, True = attend) replaces
    masked logits by NEG_INF.

    Heads-major, both batched matmuls run over (B, N) contiguous [T,H] blocks with no transpose
    between them: on XLA:CPU forward + backward is ~1.5x faster than in the [B,T,N,H] layout of
    `jax.nn.dot_product_attention(implementation="xla")`. Without dropout the gradient is a
    hand-written one (`_attention_core_bwd`, ~10% faster than autodiff's on XLA:CPU); both in
    `wristmir bench --suite clip-parity`, "attention_core"."""
    if dropout is None:
        return _attention_core(q, k, v, bias, mask, dtype)
    return attention_autodiff(q, k, v, bias, mask, dtype, dropout)


def attention_autodiff(q, k, v, bias=None, mask=None, dtype: Dtype = jnp.float32, dropout=None):
    """`heads_major_attention` differentiated by JAX (the path with attention dropout, and the
    reference its hand-written gradient is tested and timed against)."""
    weights = jax.nn.softmax(_masked_logits(q, k, bias, mask), axis=-1)
    if dropout is not None:
        weights = dropout(weights)
    return jnp.einsum("bnqk,bnkh->bnqh", weights.astype(dtype), v)


class MultiHeadAttention(nn.Module):
    """Multi-head attention; q/k/v kernels [embed, heads, kv], output kernel [heads, kv, embed].

    Projections of the same input run as one matmul (q, k and v in self-attention; k and v when
    a probe attends over tokens). Attention is `heads_major_attention`, or cuDNN's flash kernel
    through `jax.nn.dot_product_attention` where `attention_implementation` picks it. `bias` is
    added to the logits (the text tower's NEG_INF on padded keys, shape [B,1,1,S]); a bool array
    (True = attend) is accepted as a mask instead."""

    width: int
    heads: int
    dtype: Dtype = jnp.float32
    dropout: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x_q, x_kv, bias=None):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        head_dim = self.width // self.heads
        names = ("query", "key", "value")
        params = [HeadProjection(self.heads, head_dim, name=n)(x.shape[-1])
                  for n, x in zip(names, (x_q, x_kv, x_kv))]
        if x_q is x_kv:
            q, k, v = project_heads(x_q, params, self.dtype)
        else:
            (q,) = project_heads(x_q, params[:1], self.dtype)
            k, v = project_heads(x_kv, params[1:], self.dtype)
        mask = None
        if bias is not None and jnp.issubdtype(bias.dtype, jnp.bool_):
            mask, bias = bias, None
        use_dropout = self.dropout > 0.0 and not self.deterministic
        if attention_implementation(self.dtype, use_dropout) == "cudnn":
            if bias is not None:
                bias = bias.astype(self.dtype)
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                               implementation="cudnn")
        else:
            drop = nn.Dropout(self.dropout, deterministic=False) if use_dropout else None
            heads_major = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
            out = jnp.swapaxes(heads_major_attention(*heads_major, bias, mask, self.dtype, drop),
                               1, 2)
        return Linear(features=(self.width,), in_names=("heads", "kv"), out_names=("embed",),
                      dtype=self.dtype, name="out")(out.astype(self.dtype))


class Mlp(nn.Module):
    width: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        h = Linear(features=(self.mlp_dim,), in_names=("embed",), out_names=("mlp",),
                   dtype=self.dtype, name="fc1")(x)
        h = nn.gelu(h, approximate=False)  # exact erf GELU, as BERT and HF ViT ("gelu")
        if self.dropout > 0.0 and not self.deterministic:
            h = nn.Dropout(self.dropout, deterministic=False)(h)
        return Linear(features=(self.width,), in_names=("mlp",), out_names=("embed",),
                      dtype=self.dtype, name="fc2")(h)


class Block(nn.Module):
    """One transformer block. Call signature `(x, bias) -> (x, None)` so it scans directly."""

    spec: BlockSpec

    @nn.compact
    def __call__(self, x, bias):
        s = self.spec
        drop = (lambda h: nn.Dropout(s.dropout, deterministic=False)(h)) \
            if (s.dropout > 0.0 and not s.deterministic) else (lambda h: h)
        attn = MultiHeadAttention(s.width, s.heads, s.dtype, s.dropout, s.deterministic, name="attn")
        mlp = Mlp(s.width, s.mlp_dim, s.dtype, s.dropout, s.deterministic, name="mlp")
        ln_attn = layer_norm(s.layer_norm_eps, s.dtype, "ln_attn")
        ln_mlp = layer_norm(s.layer_norm_eps, s.dtype, "ln_mlp")
        if s.post_ln:
            x = ln_attn(x + drop(attn(x, x, bias)))
            x = ln_mlp(x + drop(mlp(x)))
        else:
            h = ln_attn(x)
            x = x + drop(attn(h, h, bias))
            x = x + drop(mlp(ln_mlp(x)))
        return x.astype(s.dtype), None


class Encoder(nn.Module):
    """`depth` blocks. Plain: params `layers_0 .. layers_{n-1}`; scan: one `layers` subtree whose
    leaves carry a leading stacked axis named "layers" (see params.stack_layers)."""

    spec: BlockSpec
    depth: int
    remat: bool = False
    scan: bool = False

    @nn.compact
    def __call__(self, x, bias=None):
        block = Block
        if self.remat:
            block = nn.remat(Block, prevent_cse=not self.scan)
        if self.scan:
            stack = nn.scan(block, variable_axes={"params": 0},
                            split_rngs={"params": True, "dropout": True},
                            in_axes=nn.broadcast, length=self.depth,
                            metadata_params={nn.PARTITION_NAME: "layers"})
            x, _ = stack(self.spec, name="layers")(x, bias)
        else:
            for i in range(self.depth):
                x, _ = block(self.spec, name=f"layers_{i}")(x, bias)
        return x


class MapHead(nn.Module):
    """Multihead attention pooling (a learned probe attends over the tokens), as in SigLIP."""

    width: int
    heads: int
    mlp_dim: int
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        probe = self.param("probe", logical(nn.initializers.xavier_uniform(), (None, "embed")),
                           (1, self.width), jnp.float32)
        q = jnp.broadcast_to(probe.astype(self.dtype)[None], (x.shape[0], 1, self.width))
        y = MultiHeadAttention(self.width, self.heads, self.dtype, name="attn")(q, x)
        h = layer_norm(self.layer_norm_eps, self.dtype, "ln")(y)
        y = y + Mlp(self.width, self.mlp_dim, self.dtype, name="mlp")(h)
        return y[:, 0]
