"""The train state's pieces: the model from config, abstract params and their logical axes, the
state dict, pretrained weights placed in the params' shardings, and the abstract state used to
restore checkpoints. `train/setup.py` assembles them into a sharded initial state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wristmir_jax import schema
from wristmir_jax.train import optim, sharding
from wristmir_jax.train.mesh import BATCH_AXES


def dummy_batch(model_cfg: ml_collections.ConfigDict, batch_size: int = 2) -> dict:
    """Zeros with the shapes and dtypes of BUILD_NOTES "Batch" for `model_cfg` (init only)."""
    s = int(model_cfg.image.image_size)
    c = int(model_cfg.local.crop_size)
    L = int(model_cfg.text.max_len)
    b, r = int(batch_size), schema.NUM_REGIONS
    f32, i32 = np.float32, np.int32
    return {"image": np.zeros((b, s, s, 1), f32), "crops": np.zeros((b, r, c, c, 1), f32),
            "crop_mask": np.ones((b, r), f32), "global_tokens": np.zeros((b, L), i32),
            "global_mask": np.ones((b, L), i32), "region_tokens": np.zeros((b, r, L), i32),
            "region_mask": np.ones((b, r, L), i32), "record": np.zeros((b, schema.RECORD_LEN), i32),
            "global_caption_id": np.arange(b, dtype=i32),
            "region_caption_id": np.arange(b * r, dtype=i32).reshape(b, r)}


def build_model(cfg: ml_collections.ConfigDict):
    from wristmir_jax import models

    return models.build(cfg.model, int(cfg.model.text.vocab_size))


def abstract_params(model, model_cfg, rng) -> tuple[Any, Any]:
    """(ShapeDtypeStructs of params, logical axes) without allocating anything."""
    batch = dummy_batch(model_cfg)
    if hasattr(model, "init_params") and hasattr(model, "logical_axes"):
        return jax.eval_shape(model.init_params, rng, batch), model.logical_axes(batch)
    holder = {}

    def init(key):
        params, axes = model.init(key, batch)
        holder["axes"] = axes
        return params

    shapes = jax.eval_shape(init, rng)
    return shapes, holder["axes"]


def state_from(params, opt_state, rng, ema_params=None) -> dict:
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": opt_state,
             "rng": rng, "nonfinite_run": jnp.zeros((), jnp.int32),
             "nonfinite_total": jnp.zeros((), jnp.int32)}
    if ema_params is not None:
        state["ema_params"] = ema_params
    return state


def uses_ema(cfg: ml_collections.ConfigDict) -> bool:
    return float(cfg.optim.get("ema_decay", 0.0)) > 0.0


def inference_params(state: dict):
    """The params validation and inference use: the moving average when the state keeps one."""
    return state.get("ema_params", state["params"])


def with_pretrained(params: Any, model_cfg: ml_collections.ConfigDict, p_shard: Any) -> Any:
    """Params with the checkpoint weights of every tower whose `pretrained` is set, placed with
    the params' shardings (every process reads the same files, so each fills its own shards)."""
    towers = (model_cfg.text, model_cfg.image, model_cfg.local)
    if not any(t.get("pretrained") for t in towers):
        return params
    from wristmir_jax.models.hf_import import apply_pretrained

    loaded = apply_pretrained(params, model_cfg)

    def place(new, old, sh):
        if new is old:
            return old
        host = np.asarray(new)
        return jax.make_array_from_callback(host.shape, sh, lambda idx: host[idx])

    return jax.tree.map(place, loaded, params, p_shard)


def base_rng(seed: int) -> jax.Array:
    return jax.random.PRNGKey(int(seed))


def abstract_train_state(cfg: ml_collections.ConfigDict):
    """(model, abstract state) for restoring a checkpoint without initialising anything."""
    model = build_model(cfg)
    rng = base_rng(cfg.seed)
    init_key, state_key = jax.random.split(rng)
    abstract, _ = abstract_params(model, cfg.model, init_key)
    tx, _ = optim.make_optimizer(cfg.optim, abstract, int(cfg.train.steps))
    opt_abstract = jax.eval_shape(tx.init, abstract)
    ema = abstract if uses_ema(cfg) else None
    state = jax.eval_shape(lambda p, o, k, e: state_from(p, o, k, e), abstract, opt_abstract,
                           state_key, ema)
    return model, state


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    return {k: NamedSharding(mesh, P(BATCH_AXES, *([None] * (np.ndim(v) - 1))))
            for k, v in batch.items()}
