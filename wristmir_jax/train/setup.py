"""One training setup for the trainer, the benches and the tests: `build_run(cfg, mesh) -> Run`.

The sequence task (`cfg.task`, tasks/) -> resolved config -> mesh -> model -> objective ->
optimizer -> sharded state -> jitted train and eval steps lives here only. The train step is jitted once with explicit
input/output shardings and donates the state; `Run.compile(batch)` lowers and compiles it for
that batch's shapes before the loop (MaxText style), so the loop never compiles.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from wristmir_jax.errors import UserError
from wristmir_jax.models.text_cache import TextFeatureCache
from wristmir_jax.train.checkpoint import abstract_like
from wristmir_jax.train.inputs import to_global
from wristmir_jax.train import optim, sharding
from wristmir_jax.train.mesh import data_parallel_size, make_mesh, replicated
from wristmir_jax.train.state import (abstract_params, base_rng, batch_shardings, state_from,
                                      task_module, uses_ema)
from wristmir_jax.train.step import make_eval_step, make_train_step

def resolve_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config as the task resolves it (sizes from the data); idempotent."""
    return task_module(cfg).resolve_config(cfg)


def data_sources(cfg: ml_collections.ConfigDict):
    """(train source, val source) of the config's task."""
    return task_module(cfg).data_sources(cfg)


@dataclasses.dataclass
class Run:
    """Everything a training loop (or a bench, or a test) needs, built once from a config.

    `train_step(state, batch) -> (state, metrics)` is jitted with the state's and the batch's
    shardings (the batch's once `compile` has seen one; before that it follows its inputs) and
    donates the state; `eval_step(params, batch) -> metrics` likewise without donation.
    `step_fn` / `eval_fn` are the pure functions behind them."""

    cfg: ml_collections.ConfigDict
    mesh: Mesh
    task: Any
    model: Any
    objective: Callable
    tx: optax.GradientTransformation
    schedule: Callable
    trainable: Any
    logical_axes: Any
    state: dict
    shardings: dict
    step_fn: Callable
    eval_fn: Callable
    train_step: Callable = None
    eval_step: Callable = None
    batch_shardings: dict | None = None
    text_cache: TextFeatureCache | None = None
    compile_s: float | None = None
    memory: Any = None

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state["params"]))

    def use_state(self, state: dict) -> None:
        """Adopts `state` (a restored checkpoint); the frozen text features follow its params."""
        self.state = state
        if getattr(self.model, "text_frozen", False):
            self.text_cache = TextFeatureCache(self.model, state["params"])

    def host_batch(self, batch: dict) -> dict:
        """A host batch as the step reads it (the frozen text tower's features attached)."""
        return self.text_cache.attach(batch) if self.text_cache is not None else batch

    def global_batch(self, batch: dict) -> dict:
        """host batch -> global jax.Arrays over the mesh."""
        return to_global(self.host_batch(batch), self.mesh)

    def compile(self, batch: dict):
        """Lowers and compiles the train step for `batch`'s shapes (a global batch or its
        abstract shapes); afterwards `train_step` is the compiled executable (it takes exactly
        such batches) and `eval_step` is jitted with the same batch shardings."""
        self.batch_shardings = batch_shardings(batch, self.mesh)
        self._jit(self.batch_shardings)
        t0 = time.perf_counter()
        compiled = self.train_step.lower(abstract_like(self.state, self.shardings),
                                         abstract_like(batch, self.batch_shardings)).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = compiled.memory_analysis()
        self.train_step = compiled
        return compiled

    def _jit(self, b_shard: dict | None) -> None:
        rep = replicated(self.mesh)
        self.train_step = jax.jit(self.step_fn, in_shardings=(self.shardings, b_shard),
                                  out_shardings=(self.shardings, rep), donate_argnums=(0,))
        self.eval_step = jax.jit(self.eval_fn, in_shardings=(self.shardings["params"], b_shard),
                                 out_shardings=rep)


def build_run(cfg: ml_collections.ConfigDict, mesh: Mesh | None = None, *,
              batch: dict | None = None) -> Run:
    """The Run of `cfg` (resolved here) on `mesh` (default: `cfg.mesh` over every device).
    With `batch` (a global batch or its abstract shapes) the train step is compiled now."""
    task = task_module(cfg)
    cfg = task.resolve_config(cfg)
    mesh = make_mesh(cfg.mesh) if mesh is None else mesh
    gbs, accum = int(cfg.data.global_batch_size), int(cfg.train.grad_accum)
    dp = data_parallel_size(mesh)
    if gbs % (dp * accum):
        raise UserError(f"data.global_batch_size {gbs} must be divisible by the data-parallel "
                        f"size {dp} x train.grad_accum {accum}")
    model = task.build_model(cfg)
    objective = task.objective(cfg, mesh)

    # Params and optimizer state are initialised by jitted functions whose outputs are placed
    # by the rules table, so every process computes the same values for its shards.
    init_key, state_key = jax.random.split(base_rng(cfg.seed))
    init_batch = task.init_batch(cfg)
    abstract, axes = abstract_params(model, init_batch, init_key)
    p_shard = sharding.param_shardings(abstract, axes, mesh, cfg.get("sharding_rules"))
    init_fn = model.init_params if hasattr(model, "init_params") else (lambda k, b: model.init(k, b)[0])
    params = jax.jit(init_fn, out_shardings=p_shard)(init_key, init_batch)
    if hasattr(task, "load_pretrained"):  # optional: a task trained from scratch has none
        params = task.load_pretrained(params, cfg, p_shard)
    tx, schedule = optim.make_optimizer(cfg.optim, abstract, int(cfg.train.steps))
    o_shard = sharding.follow_params(jax.eval_shape(tx.init, abstract), abstract, p_shard, mesh)
    opt_state = jax.jit(tx.init, out_shardings=o_shard)(params)
    rep = replicated(mesh)
    # The average starts at the initial params, in its own buffers (the step donates the state).
    ema = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=p_shard)(params) \
        if uses_ema(cfg) else None
    state = state_from(params, opt_state, jax.device_put(state_key, rep), ema)
    shardings = {k: rep for k in state}
    shardings.update(params=p_shard, opt_state=o_shard)
    if ema is not None:
        shardings["ema_params"] = p_shard
    state = {k: (v if k in ("params", "opt_state", "ema_params") else jax.device_put(v, rep))
             for k, v in state.items()}
    trainable = optim.trainable_mask(cfg.optim, abstract)

    step_fn = make_train_step(model, objective, tx, schedule, grad_accum=accum,
                              trainable=trainable, ema_decay=float(cfg.optim.ema_decay))
    run = Run(cfg=cfg, mesh=mesh, task=task, model=model, objective=objective, tx=tx,
              schedule=schedule, trainable=trainable, logical_axes=axes, state=state,
              shardings=shardings, step_fn=step_fn,
              eval_fn=make_eval_step(model, objective))
    run.use_state(state)
    run._jit(None)
    if batch is not None:
        run.compile(batch)
    return run
