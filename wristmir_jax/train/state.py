"""The train state's pieces: the task named by the config, its model, abstract params and their
logical axes, the state dict, and the abstract state used to restore checkpoints.
`train/setup.py` assembles them into a sharded initial state."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from wristmir_jax.errors import UserError
from wristmir_jax.train import optim
from wristmir_jax.train.mesh import BATCH_AXES

DEFAULT_TASK = "wrist_contrastive"


def task_module(cfg: ml_collections.ConfigDict):
    """The module `wristmir_jax.tasks.<cfg.task>` (model, objective, data sources, evaluators).
    Looked up by name, big_vision style: tasks sit above train, so train never imports one
    statically."""
    name = str(cfg.get("task", DEFAULT_TASK) or DEFAULT_TASK)
    try:
        return importlib.import_module(f"wristmir_jax.tasks.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"wristmir_jax.tasks.{name}":
            raise
        tasks_pkg = importlib.import_module("wristmir_jax.tasks")
        known = sorted(m.name for m in pkgutil.iter_modules(tasks_pkg.__path__)
                       if not m.name.startswith("_") and m.name != "common")
        raise UserError(f"config task {name!r}: no such task (known: {', '.join(known)})") from None


def build_model(cfg: ml_collections.ConfigDict):
    return task_module(cfg).build_model(cfg)


def abstract_params(model, batch: dict, rng) -> tuple[Any, Any]:
    """(ShapeDtypeStructs of params, logical axes) without allocating anything; `batch` is the
    task's init batch."""
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


def base_rng(seed: int) -> jax.Array:
    return jax.random.PRNGKey(int(seed))


def abstract_train_state(cfg: ml_collections.ConfigDict):
    """(model, abstract state) for restoring a checkpoint without initialising anything."""
    task = task_module(cfg)
    model = task.build_model(cfg)
    rng = base_rng(cfg.seed)
    init_key, state_key = jax.random.split(rng)
    abstract, _ = abstract_params(model, task.init_batch(cfg), init_key)
    tx, _ = optim.make_optimizer(cfg.optim, abstract, int(cfg.train.steps))
    opt_abstract = jax.eval_shape(tx.init, abstract)
    ema = abstract if uses_ema(cfg) else None
    state = jax.eval_shape(lambda p, o, k, e: state_from(p, o, k, e), abstract, opt_abstract,
                           state_key, ema)
    return model, state


def batch_shardings(batch: dict, mesh: Mesh) -> dict:
    return {k: NamedSharding(mesh, P(BATCH_AXES, *([None] * (np.ndim(v) - 1))))
            for k, v in batch.items()}
