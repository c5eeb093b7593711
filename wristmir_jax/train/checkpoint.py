"""Checkpoints: one orbax composite checkpoint per saved step holding the train state (params,
optimizer state, step, RNG, non-finite counters) and each process's data-iterator state; async
saves, a save interval, keep-last-N plus the best by `train.best_metric`; resume from the latest.

Also the run's fingerprint: `params_sha256` (SHA-256 over sorted parameter paths, dtypes, shapes
and raw little-endian bytes) and `restore_for_inference(workdir)` for the embedder.

Layout of a workdir W:
  W/config.json        the resolved config (written by the trainer, process 0)
  W/checkpoints/<step>/{state,data}/
  W/best.json          {"step", "metric", "value"} of the best checkpoint by train.best_metric
  W/summary.json       step, final metrics, params_sha256
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from wristmir_jax.errors import UserError
from wristmir_jax.train.sharding import path_str

CHECKPOINT_DIR = "checkpoints"


# --- the data-iterator item: each process writes its own iterator's state ------------------
class IteratorStateHandler(ocp.CheckpointHandler):
    """Saves `iterator.get_state()` (a JSON-able dict or bytes) of every process to
    `process_<i>-of-<n>.json`; restore calls `iterator.set_state(...)` on the given iterator."""

    def save(self, directory: epath.Path, args: "IteratorSave"):
        state = args.item.get_state()
        if isinstance(state, (bytes, bytearray)):
            payload = {"kind": "bytes", "state": bytes(state).decode("utf-8")}
        else:
            payload = {"kind": "json", "state": state}
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        (directory / name).write_text(json.dumps(payload, sort_keys=True))

    def restore(self, directory: epath.Path, args: "IteratorRestore"):
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        path = directory / name
        if not path.exists():
            raise UserError("checkpoint has no data-iterator state for this process count "
                            f"({name})", path=os.fspath(directory))
        payload = json.loads(path.read_text())
        state = payload["state"]
        if payload["kind"] == "bytes":
            state = state.encode("utf-8")
        args.item.set_state(state)
        return args.item

    def metadata(self, directory: epath.Path):
        return None

    def finalize(self, directory: epath.Path):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    item: Any


# --- the manager ---------------------------------------------------------------------------
def make_manager(workdir: str, *, save_every: int, keep: int, keep_best: int = 1,
                 async_save: bool = True, read_only: bool = False, best_metric: str = "val/loss",
                 best_mode: str = "min") -> ocp.CheckpointManager:
    """Keeps the last `keep` checkpoints and the `keep_best` best by `best_metric` (the metrics
    dict saved with a step; `best_mode` "min" or "max")."""
    if best_mode not in ("min", "max"):
        raise UserError(f"config train.best_mode must be 'min' or 'max', got {best_mode!r}")
    policies: list[Any] = [ocm.preservation_policy.LatestN(n=max(int(keep), 1))]
    if keep_best > 0:
        # reverse=True keeps the lowest values; a step saved with other metrics (an older run
        # chose by another one) ranks last
        worst = float("inf") if best_mode == "min" else float("-inf")
        policies.append(ocm.preservation_policy.BestN(
            get_metric_fn=lambda m: float(m.get(best_metric, worst)), reverse=best_mode == "min",
            n=int(keep_best), keep_checkpoints_without_metrics=False))
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               save_interval_steps=0,
                                               enable_async_checkpointing=False)
    else:
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(int(save_every), 1),
            preservation_policy=ocm.preservation_policy.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
                                 options=options, item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, iterator: Any | None, *,
         metrics: dict | None = None, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if iterator is not None:
        items["data"] = IteratorSave(iterator)
    return manager.save(int(step), args=ocp.args.Composite(**items), metrics=metrics, force=force)


def abstract_like(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, iterator: Any | None):
    """Restores the state (placed per the shardings in `abstract_state`) and, if given, sets
    the iterator's state. Returns the state."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
        items["data"] = IteratorRestore(iterator)
    out = manager.restore(int(step), args=ocp.args.Composite(**items))
    return out["state"]


# --- fingerprints --------------------------------------------------------------------------
def _host_array(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def params_sha256(params: Any) -> str:
    """SHA-256 over (path, dtype, shape, raw little-endian C-order bytes) of every leaf, in sorted
    path order: equal exactly when two runs produced bit-identical parameters."""
    leaves = [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]]
    h = hashlib.sha256()
    for name, x in sorted(leaves, key=lambda t: t[0]):
        a = np.ascontiguousarray(_host_array(x))
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        h.update(name.encode() + b"\0" + a.dtype.str.encode() + b"\0"
                 + ",".join(map(str, a.shape)).encode() + b"\0")
        h.update(a.tobytes())
    return h.hexdigest()


# --- inference -----------------------------------------------------------------------------
def read_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise UserError("not a training workdir (no config.json)", path=workdir)
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def best_step(workdir: str) -> int | None:
    path = os.path.join(workdir, "best.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(json.load(f)["step"])


def restore_for_inference(workdir: str, step: int | str | None = "best"):
    """(model, params, cfg) from a workdir: the best validated checkpoint when there is one
    (step="best"), else the latest; `step=int` picks one; "latest" the newest. Params only,
    replicated on the default device; the optimizer state is read as abstract shapes and
    dropped."""
    from wristmir_jax.train.state import abstract_train_state, inference_params  # (import cycle)

    cfg = read_config(workdir)
    manager = make_manager(workdir, save_every=1, keep=1, keep_best=0, async_save=False,
                           read_only=True)
    steps = manager.all_steps()
    if not steps:
        raise UserError("workdir has no checkpoint", path=workdir)
    if step == "best":
        b = best_step(workdir)
        step = b if b in steps else manager.latest_step()
    elif step in (None, "latest"):
        step = manager.latest_step()
    elif int(step) not in steps:
        raise UserError(f"no checkpoint for step {step} (have {sorted(steps)})", path=workdir)
    model, abstract = abstract_train_state(cfg)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract)
    out = manager.restore(int(step), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    manager.close()
    return model, inference_params(out["state"]), cfg
