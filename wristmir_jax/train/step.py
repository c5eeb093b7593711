"""The pure train step `train_step(state, batch) -> (state, metrics)` and the eval step.

The state is a dict pytree:
  step             int32  batches consumed (skipped ones included)
  params           the model parameters (fp32)
  opt_state        the optax state (its own update count excludes skipped steps)
  rng              uint32[2] base key; step s uses fold_in(rng, s), so a resumed run draws the
                   same dropout masks as an uninterrupted one
  nonfinite_run    consecutive skipped (non-finite) steps; the trainer stops at a config limit
  nonfinite_total  all skipped steps
  ema_params       (only with optim.ema_decay > 0) the moving average of params that
                   validation, the best checkpoint and inference use

Gradient accumulation (grad_accum = k > 1) is exact for contrastive losses, GradCache style
(Gao et al. 2021): (1) embed all k micro-batches without gradients, (2) compute the full-batch
loss and its gradient with respect to the embeddings, (3) re-run each micro-batch's forward
pass under `jax.vjp` and pull its slice of the embedding gradient back to the parameters,
summing over micro-batches. Every example sees every other example of the global batch as a
negative, exactly as with k = 1; only activation memory shrinks to one micro-batch. Scalar
embedding outputs (logit scales and biases) depend on the parameters only, so each micro-batch
pulls back 1/k of their gradient. Micro-batch j takes examples j, j+k, j+2k, ... so that each
stays spread evenly over the data-parallel devices.

A non-finite loss or gradient norm leaves params and optimizer state untouched (the step
counter and the non-finite counters still advance).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax


HOST_ONLY_KEYS = ("id",)


def device_batch(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in HOST_ONLY_KEYS}


def _split(x: jax.Array, k: int) -> jax.Array:
    b = x.shape[0]
    return jnp.swapaxes(x.reshape((b // k, k) + x.shape[1:]), 0, 1)


def _merge(x: jax.Array) -> jax.Array:
    k, m = x.shape[:2]
    return jnp.swapaxes(x, 0, 1).reshape((k * m,) + x.shape[2:])


def gradcache_value_and_grad(encode: Callable, objective: Callable, params: Any, batch: dict,
                             rng: jax.Array, k: int):
    """(loss, aux, emb, grads) of objective(encode(params, batch), batch) with k micro-batches."""
    b = batch["record"].shape[0]
    if b % k:
        raise ValueError(f"global batch {b} is not divisible by grad_accum {k}")
    enc_batch = {kk: v for kk, v in batch.items() if kk != "relevance"}
    micro = jax.tree.map(lambda x: _split(x, k), enc_batch)
    idx = jnp.arange(k)

    def embed(xs):
        mb, i = xs
        return encode(jax.lax.stop_gradient(params), mb, jax.random.fold_in(rng, i))

    stacked = jax.lax.map(embed, (micro, idx))
    emb = {kk: (v[0] if v.ndim == 1 else _merge(v)) for kk, v in stacked.items()}
    (loss, aux), g_emb = jax.value_and_grad(objective, has_aux=True)(emb, batch)
    g_stacked = {kk: (jnp.broadcast_to(g / k, (k,)) if g.ndim == 0 else _split(g, k))
                 for kk, g in g_emb.items()}

    def accumulate(acc, xs):
        mb, i, g_mb = xs
        _, pull = jax.vjp(lambda p: encode(p, mb, jax.random.fold_in(rng, i)), params)
        (g_params,) = pull(g_mb)
        return jax.tree.map(jnp.add, acc, g_params), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(accumulate, zeros, (micro, idx, g_stacked))
    return loss, aux, emb, grads


def _scalar_metrics(aux: Any) -> dict:
    out = {}
    if isinstance(aux, dict):
        for name, v in aux.items():
            v = jnp.asarray(v)
            if v.ndim == 0 and jnp.issubdtype(v.dtype, jnp.number):
                out[f"loss/{name}"] = v.astype(jnp.float32)
    return out


def _temperatures(emb: dict) -> dict:
    out = {}
    for key in ("global_scale", "local_scale", "global_bias", "local_bias"):
        if key in emb and jnp.ndim(emb[key]) == 0:
            out[f"logit/{key}"] = jnp.asarray(emb[key], jnp.float32)
    return out


def make_train_step(model: Any, objective: Callable, tx: optax.GradientTransformation,
                    lr_schedule: Callable, *, grad_accum: int = 1,
                    trainable: Any = None, ema_decay: float = 0.0) -> Callable:
    """The pure step. `trainable` (a bool pytree like params) restricts the reported gradient
    norm to parameters that train. A state with "ema_params" (optim.ema_decay > 0) also updates
    that average: decay min(ema_decay, (1 + t) / (10 + t)) at update t, so the first updates are
    not dominated by the initial params; frozen leaves are copied."""
    k = int(grad_accum)
    ema_decay = float(ema_decay)
    def encode(params, batch, rng):
        return model.encode(params, batch, train=True, rng=rng)

    def train_step(state: dict, batch: dict):
        batch = device_batch(batch)
        params = state["params"]
        rng = jax.random.fold_in(state["rng"], state["step"])
        if k == 1:
            def loss_fn(p):
                emb = encode(p, batch, jax.random.fold_in(rng, 0))
                total, aux = objective(emb, batch)
                return total, (aux, emb)

            (loss, (aux, emb)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        else:
            loss, aux, emb, grads = gradcache_value_and_grad(encode, objective, params, batch, rng, k)
        counted = grads if trainable is None else jax.tree.map(
            lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        grad_norm = optax.global_norm(counted)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, new_opt = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)
        count = state["step"] - state["nonfinite_total"]
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "rng": state["rng"],
            "nonfinite_run": jnp.where(ok, 0, state["nonfinite_run"] + 1).astype(jnp.int32),
            "nonfinite_total": (state["nonfinite_total"] + (~ok).astype(jnp.int32)).astype(jnp.int32),
        }
        if "ema_params" in state:
            if ema_decay <= 0.0:
                raise ValueError("the state keeps ema_params: pass ema_decay > 0 (optim.ema_decay)")
            t = count.astype(jnp.float32)
            d = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
            ema = jax.tree.map(lambda e, p: (e * d + p * (1.0 - d)).astype(e.dtype),
                               state["ema_params"], new_params)
            if trainable is not None:
                ema = jax.tree.map(lambda e, p, tr: e if tr else p, ema, new_params, trainable)
            new_state["ema_params"] = keep(ema, state["ema_params"])
        metrics = {"loss": loss.astype(jnp.float32), "grad_norm": grad_norm.astype(jnp.float32),
                   "lr": jnp.asarray(lr_schedule(count), jnp.float32),
                   "finite": ok.astype(jnp.int32), "nonfinite_total": new_state["nonfinite_total"],
                   "nonfinite_run": new_state["nonfinite_run"],
                   **_scalar_metrics(aux), **_temperatures(emb)}
        return new_state, metrics

    return train_step


def make_eval_step(model: Any, objective: Callable) -> Callable:
    """`eval_step(params, batch) -> metrics` (validation loss and its terms, no dropout)."""

    def eval_step(params, batch):
        batch = device_batch(batch)
        emb = model.encode(params, batch, train=False, rng=None)
        total, aux = objective(emb, batch)
        return {"loss": total.astype(jnp.float32), **_scalar_metrics(aux)}

    return eval_step
