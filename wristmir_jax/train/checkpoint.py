"""Checkpoints: one orbax composite checkpoint per saved step holding the train state (params,
optimizer state, step, RNG, non-finite counters) and each process's data-iterator state; async
saves, a save interval, keep-last-N plus the best by `train.best_metric`; resume from the latest.

Also the run's fingerprint: `params_sha256` (SHA-256 over sorted parameter paths, dtypes, shapes
and raw little-endian bytes) and `restore_for_inference(workdir)` for the embedder.

A newest step that fails to restore (a truncated array file, a deleted _METADATA) is skipped with
a warning naming it and the next older step is tried; the trainer moves such steps to
W/unrestorable/ (saying so) so later saves cannot collide with them; nothing is deleted.

Layout of a workdir W:
  W/config.json        the resolved config (written by the trainer, process 0, after a
                       successful restore; a resume whose model or data shapes differ is refused)
  W/checkpoints/<step>/{state,data}/
  W/best.json          {"step", "metric", "value"} of the best checkpoint by train.best_metric
  W/summary.json       step, final metrics, params_sha256
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as ocm

from wristmir_jax.errors import UserError
from wristmir_jax.train.sharding import path_str
from wristmir_jax.utils import fs
from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.checkpoint")
CHECKPOINT_DIR = "checkpoints"
UNRESTORABLE_DIR = "unrestorable"
# Fields whose change makes a checkpoint's arrays or data-iterator state meaningless to a resume.
SHAPE_FIELDS_PREFIXES = ("model.",)
SHAPE_FIELDS = ("data.global_batch_size", "data.source", "data.order")
RESUMABLE_MODEL_FIELDS = ("model.remat", "model.dropout")  # change no array or iterator state


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
        # reverse=True keeps the lowest values
        policies.append(ocm.preservation_policy.BestN(
            get_metric_fn=lambda m: float(m[best_metric]), reverse=best_mode == "min",
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
    # orbax writes gs:// itself (tensorstore); fs.absolute leaves URLs as they are.
    return ocp.CheckpointManager(fs.join(fs.absolute(workdir), CHECKPOINT_DIR),
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160] if text else ''}"


def _quiet_orphaned_reads() -> None:
    """A failed orbax read leaves sibling asyncio reads whose errors asyncio prints as
    'Task exception was never retrieved' tracebacks at exit; the warning above already said it."""
    lg = logging.getLogger("asyncio")
    if not any(getattr(f, "_wristmir", False) for f in lg.filters):
        f = logging.Filter()
        f.filter = lambda r: "exception was never retrieved" not in r.getMessage()
        f._wristmir = True
        lg.addFilter(f)


def restore_newest_good(manager: ocp.CheckpointManager, restore_fn: Callable[[int], Any],
                        steps: list[int] | None = None, *, where: str = ""
                        ) -> tuple[int | None, Any, list[int]]:
    """Tries `restore_fn(step)` for `steps` (default: every step, newest first) and returns
    (step, restored, skipped steps). A step that fails to restore is skipped with a warning
    naming it; UserErrors (wrong process count, ...) are not restore failures and propagate.
    When every step fails it is a UserError listing them (never a silent fresh start)."""
    steps = sorted(manager.all_steps(), reverse=True) if steps is None else list(steps)
    skipped: list[int] = []
    reasons: list[str] = []
    for step in steps:
        try:
            return step, restore_fn(int(step)), skipped
        except UserError:
            raise
        except Exception as e:  # orbax/tensorstore raise bare Exception/ValueError on damage
            path = os.path.join(os.fspath(manager.directory), str(step))
            log.warning("checkpoint step %d does not restore (%s): skipped, trying an older step; "
                        "%s", step, _first_line(e), path)
            _quiet_orphaned_reads()
            skipped.append(int(step))
            reasons.append(f"step {step} ({_first_line(e)})")
    if steps:
        raise UserError("no checkpoint restores: " + "; ".join(reasons)[:400], path=where or None)
    return None, None, skipped


def quarantine_steps(workdir: str, steps: list[int]) -> list[str]:
    """Moves unrestorable step folders to W/unrestorable/<step>[-n] (logged, never deleted),
    so that saving those step numbers again does not collide with them. Returns the new paths."""
    moved = []
    for step in steps:
        src = fs.join(workdir, CHECKPOINT_DIR, str(step))
        if not fs.isdir(src):
            continue
        dst_root = fs.join(workdir, UNRESTORABLE_DIR)
        fs.makedirs(dst_root)
        dst, n = fs.join(dst_root, str(step)), 1
        while fs.exists(dst):
            dst, n = fs.join(dst_root, f"{step}-{n}"), n + 1
        fs.move(src, dst)
        log.warning("moved unrestorable checkpoint step %d to %s (kept for inspection)", step, dst)
        moved.append(dst)
    return moved


def has_checkpoints(workdir: str) -> bool:
    d = fs.join(workdir, CHECKPOINT_DIR)
    return fs.isdir(d) and any(n.isdigit() for n in fs.listdir(d))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (d.items() if isinstance(d, dict) else ()):
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def shape_differences(old: dict, new: dict) -> list[str]:
    """`field: old -> new` for every model field and data-shape field that differs between two
    resolved configs (dicts)."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in set(a) | set(b)
                  if (k.startswith(SHAPE_FIELDS_PREFIXES) or k in SHAPE_FIELDS)
                  and k not in RESUMABLE_MODEL_FIELDS)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


def check_resume_compatible(workdir: str, cfg_dict: dict) -> None:
    """Refuses (UserError, nothing touched) a resume whose model or data shapes differ from the
    config the workdir's checkpoints were written with."""
    path = fs.join(workdir, "config.json")
    if not has_checkpoints(workdir) or not fs.exists(path):
        return
    try:
        old = json.loads(fs.read_text(path))
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable config.json of the checkpoints ({type(e).__name__})",
                        path=path) from None
    diff = shape_differences(old, cfg_dict)
    if diff:
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        raise UserError("resume refused: the checkpoints were written with another model/data "
                        f"shape: {'; '.join(diff[:3])}{more} (use a new --workdir)", path=workdir)


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

    path = fs.join(workdir, "config.json")
    if not fs.exists(path):
        raise UserError("not a training workdir (no config.json)", path=workdir)
    return ml_collections.ConfigDict(json.loads(fs.read_text(path)))


def best_step(workdir: str) -> int | None:
    path = fs.join(workdir, "best.json")
    if not fs.exists(path):
        return None
    return int(json.loads(fs.read_text(path))["step"])


def restore_for_inference(workdir: str, step: int | str | None = "best"):
    """(model, params, cfg) from a workdir: the best validated checkpoint when there is one
    (step="best"), else the latest; `step=int` picks one; "latest" the newest. Params only,
    replicated on the default device; the optimizer state is read as abstract shapes and
    dropped."""
    from wristmir_jax.train.state import abstract_train_state, inference_params  # (import cycle)

    cfg = read_config(workdir)
    manager = make_manager(workdir, save_every=1, keep=1, keep_best=0, async_save=False,
                           read_only=True)
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
        raise UserError("workdir has no checkpoint", path=workdir)
    if step == "best":
        b = best_step(workdir)
        order = ([b] if b in steps else []) + [s for s in steps if s != b]
    elif step in (None, "latest"):
        order = steps
    elif int(step) not in steps:
        raise UserError(f"no checkpoint for step {step} (have {sorted(steps)})", path=workdir)
    else:
        order = [int(step)]  # an explicit step: no silent substitute
    model, abstract = abstract_train_state(cfg)
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), abstract)

    def _restore(s: int):
        return manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))

    try:
        _, out, _ = restore_newest_good(manager, _restore, order, where=workdir)
    finally:
        manager.close()
    return model, inference_params(out["state"]), cfg
