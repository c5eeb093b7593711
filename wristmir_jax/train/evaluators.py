"""Evaluators for every task: the interface, the validation-loss evaluator, building
`cfg.evals`, and host-side helpers for reading the values of replicated arrays.

`cfg.evals = {name: {type, every, ...}}`: each entry becomes `EVALUATORS[type](name, run,
sources, **rest)` of the run's task; `every` 0 means `train.eval_every`. Every evaluator also
runs at the last step. `run(params) -> {metric: float}`; the trainer logs them under the
evaluator's name (TensorBoard `name/metric`) and `train.best_metric` ("name/metric") picks the
best checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.train.inputs import SourceBatches


def host(x: Any) -> np.ndarray:
    """A replicated jax.Array's value (works when other processes hold other devices)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def floats(m: dict) -> dict:
    return {k: float(host(v)) for k, v in m.items()}


class Evaluator:
    """`run(params) -> {metric: float}` every `every` steps (and at the last step)."""

    def __init__(self, name: str, run: Any, sources: tuple, every: int = 0):
        self.name, self.run_ = name, run
        self.train_source, self.val_source = sources
        self.every = int(every) or int(run.cfg.train.eval_every)

    def due(self, step: int, total: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or step == total

    def run(self, params) -> dict[str, float]:
        raise NotImplementedError


class ValLoss(Evaluator):
    """The objective and its terms on the validation split (no dropout), averaged over
    `data.eval_batches` batches (0: the whole split) in a fixed order."""

    def __init__(self, name, run, sources, every: int = 0, batches: int = 0):
        super().__init__(name, run, sources, every)
        gbs = int(run.cfg.data.global_batch_size)
        self.gbs = gbs
        self.batches = int(batches) or int(run.cfg.data.eval_batches) or max(
            1, len(self.val_source) // gbs)

    def run(self, params) -> dict[str, float]:
        it = SourceBatches(self.val_source, self.gbs, seed=0, shuffle=False)
        sums: dict[str, float] = {}
        for _ in range(self.batches):
            m = floats(self.run_.eval_step(params, self.run_.global_batch(next(it))))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / self.batches for k, v in sums.items()}


def build_evaluators(run: Any, task: Any, sources: tuple) -> list[Evaluator]:
    """`cfg.evals` -> evaluators, in config order; a bad entry is a one-line UserError."""
    out = []
    for name, spec in (run.cfg.get("evals") or {}).items():
        spec = dict(spec.to_dict() if isinstance(spec, ml_collections.ConfigDict) else spec)
        kind = spec.pop("type", None)
        known = getattr(task, "EVALUATORS", {})
        if kind not in known:
            raise UserError(f"config evals.{name}.type {kind!r}: not an evaluator of task "
                            f"{run.cfg.get('task')!r} (known: {', '.join(sorted(known))})")
        try:
            out.append(known[kind](name, run, sources, **spec))
        except TypeError as e:
            raise UserError(f"config evals.{name}: {e}") from None
    best = str(run.cfg.train.get("best_metric", "") or "")
    if best and best.split("/")[0] not in {e.name for e in out}:
        raise UserError(f"config train.best_metric {best!r} names no evaluator of cfg.evals "
                        f"({', '.join(e.name for e in out) or 'none'})")
    return out
