"""Training logs: TensorBoard event files (tensorboardX) under W/tb, one JSON line per logged
step in W/metrics.jsonl, and a console progress bar (rich, only on a terminal). Process 0 only:
other processes get a logger that writes nothing.

For a URL workdir (gs://...) both are written to a local folder and uploaded (utils.fs.SyncedDir)
at most every SYNC_EVERY_S seconds and at close: tensorboardX writes gs:// only through extra
packages, and an object cannot be appended to."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from wristmir_jax.utils import progress
from wristmir_jax.utils.fs import SyncedDir
from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.train")

SYNC_EVERY_S = 30.0


def _clean(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if float(f).is_integer() and not isinstance(v, float) and abs(f) < 2**53:
        return int(f)
    return f if math.isfinite(f) else str(f)


class MetricsLogger:
    def __init__(self, workdir: str, *, enabled: bool, total_steps: int, start_step: int = 0):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        self._bar = None
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._dir = SyncedDir(workdir, only=("tb", "metrics.jsonl"))
        self._synced = time.monotonic()
        self._tb = SummaryWriter(os.path.join(self._dir.local, "tb"))
        self._jsonl = open(os.path.join(self._dir.local, "metrics.jsonl"), "a", encoding="utf-8")
        if progress.enabled():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[info]}"))
            self._bar.start()
            self._task = self._bar.add_task("train", total=total_steps, completed=start_step, info="")

    def write(self, step: int, metrics: dict, split: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: _clean(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row, sort_keys=True) + "\n")
        self._jsonl.flush()
        for k, v in row.items():
            if k in ("step", "split") or isinstance(v, str):
                continue
            self._tb.add_scalar(f"{split}/{k}", v, int(step))
        self._tb.flush()
        if time.monotonic() - self._synced >= SYNC_EVERY_S:
            self._dir.sync()
            self._synced = time.monotonic()
        msg = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row.items()
                       if k in ("loss", "lr", "grad_norm", "examples_per_s", "mean_iou", "min_hit_rate"))
        if self._bar is not None:
            self._bar.update(self._task, info=f"{split} {msg}")
        else:
            log.info("step %d %s %s", step, split, msg)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.stop()
        self._tb.close()
        self._jsonl.close()
        self._dir.close()
