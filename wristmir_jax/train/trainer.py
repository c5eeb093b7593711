"""The trainer, big_vision style: one readable function cut into sections
(config, mesh + `build_run` (train/setup.py), data, restore, compile, loop, summary).

`train(cfg, workdir)` is what `wristmir train --config configs/X.py --workdir W` runs. It resumes
from W's latest checkpoint automatically, so re-running the same command after a crash (or a
SIGKILL) continues the run; the final parameters are bit-identical to an uninterrupted run's
(the data order, dropout keys and optimizer state all come from the checkpoint).
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.train import checkpoint as ckpt
from wristmir_jax.train.distributed import is_primary
from wristmir_jax.train.evaluators import build_evaluators, floats as _floats, host as _host
from wristmir_jax.train.inputs import SourceBatches
from wristmir_jax.train.mesh import make_mesh
from wristmir_jax.train.metrics_log import MetricsLogger
from wristmir_jax.train.setup import build_run, data_sources, resolve_config
from wristmir_jax.train.state import inference_params
from wristmir_jax.train.validate import check_train_config
from wristmir_jax.utils import fs
from wristmir_jax.utils.fs import atomic_write, read_json_or_none
from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.train")


class NonFiniteStop(UserError):
    """Too many consecutive non-finite steps; the last good checkpoint is left as it was."""


def _prefill_text(cache, sources) -> None:
    """Encodes the distinct captions of built splits before the loop, so the frozen text tower
    never runs between train steps (TextFeatureCache.prefill_split says which splits)."""
    t0 = time.time()
    for src in sources:
        cache.prefill_split(src)
    if cache.computed:
        log.info("text features of %d distinct captions in %d tower calls (%.1fs)", cache.computed,
                 cache.chunks, time.time() - t0)


def _write_json(path: str, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)


def _better(value: float, best: dict, metric: str, mode: str) -> bool:
    if best.get("metric") != metric or "value" not in best:
        return True  # no best yet, or one chosen by another metric (the config changed)
    return value > best["value"] if mode == "max" else value < best["value"]


def train(cfg: ml_collections.ConfigDict, workdir: str, sources: tuple | None = None) -> dict:
    """Trains to cfg.train.steps (resuming from workdir) and returns the summary dict.
    `sources` = (train, val) already built from the config's data (e.g. `localize train` loads
    the images once for both of its stages); default: the task's `data_sources(cfg)`."""
    t_start = time.time()
    # --- config -----------------------------------------------------------------------------
    workdir = fs.absolute(workdir)  # a gs:// URL stays a URL
    cfg = resolve_config(cfg)
    check_train_config(cfg)  # ranges, choices, loss terms: before anything is built or written
    primary = is_primary()
    if not primary:
        log.setLevel("WARNING")
    total = int(cfg.train.steps)
    gbs = int(cfg.data.global_batch_size)
    ckpt.check_resume_compatible(workdir, cfg.to_dict())  # before anything is written

    # --- mesh, model, objective, optimizer, state, shardings, steps (train/setup.py) ---------
    mesh = make_mesh(cfg.mesh)
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
             jax.process_count())
    run = build_run(cfg, mesh)
    log.info("model: %.2fM parameters", run.num_params / 1e6)

    # --- data --------------------------------------------------------------------------------
    sources = train_source, val_source = sources or data_sources(cfg)
    train_it = run.task.train_iterator(cfg, train_source)
    evaluators = build_evaluators(run, run.task, sources)
    best_metric = str(cfg.train.best_metric)
    best_mode = str(cfg.train.best_mode)

    # --- restore -----------------------------------------------------------------------------
    manager = ckpt.make_manager(workdir, save_every=int(cfg.train.checkpoint_every),
                                keep=int(cfg.train.keep), keep_best=int(cfg.train.keep_best),
                                async_save=bool(cfg.train.async_checkpoint),
                                best_metric=best_metric, best_mode=best_mode)
    abstract = ckpt.abstract_like(run.state, run.shardings)
    latest, restored, skipped = ckpt.restore_newest_good(
        manager, lambda s: ckpt.restore(manager, s, abstract, train_it), where=workdir)
    if latest is not None:
        run.use_state(restored)
        log.info("resumed from step %d", latest)
    if skipped and primary:  # out of the way of the next saves, kept for inspection
        ckpt.quarantine_steps(workdir, skipped)
    if skipped:
        manager.reload()
    if primary:  # only after a successful restore (a failed resume leaves it as it was)
        fs.makedirs(workdir)
        _write_json(fs.join(workdir, "config.json"), cfg.to_dict())
    state = run.state
    start = int(_host(state["step"]))
    best = read_json_or_none(fs.join(workdir, "best.json")) or {}
    if run.text_cache is not None:
        _prefill_text(run.text_cache, sources)

    # --- compile -----------------------------------------------------------------------------
    next_host = next(train_it) if start < total else None
    probe = next_host if next_host is not None else dict(next(iter(
        SourceBatches(val_source, gbs, seed=0, shuffle=False))))
    compiled = run.compile(run.global_batch(probe))
    log.info("train step compiled in %.1fs; memory: %s", run.compile_s, run.memory)

    # --- loop --------------------------------------------------------------------------------
    logger = MetricsLogger(workdir, enabled=primary, total_steps=total, start_step=start)
    inject = {int(s) for s in cfg.train.inject_nonfinite_steps}
    limit = int(cfg.train.max_consecutive_nonfinite)
    last: dict = {}
    last_evals: dict[str, dict] = {}
    stop: NonFiniteStop | None = None
    try:
        for step in range(start, total):
            t_data0 = time.perf_counter()
            host = next_host if next_host is not None else next(train_it)
            next_host = None
            if step in inject:
                host = {**host, "image": np.full_like(host["image"], np.nan)}
            batch = run.global_batch(host)
            t_data = time.perf_counter() - t_data0
            t_step0 = time.perf_counter()
            state, metrics = compiled(state, batch)
            m = _floats(metrics)
            t_step = time.perf_counter() - t_step0
            s = step + 1
            m.update(step_time_s=t_step, data_wait_s=t_data, examples_per_s=gbs / max(t_step, 1e-9))
            last = m
            logger.advance(s)
            if not m["finite"]:
                log.warning("step %d: non-finite loss or gradient, update skipped "
                            "(%d in a row, %d in total)", s, int(m["nonfinite_run"]),
                            int(m["nonfinite_total"]))
                logger.write(s, m)
                if m["nonfinite_run"] >= limit:
                    raise NonFiniteStop(f"{int(m['nonfinite_run'])} consecutive non-finite steps "
                                        f"(train.max_consecutive_nonfinite={limit}); stopped at "
                                        f"step {s}, last checkpoint kept: "
                                        f"{manager.latest_step()}")
                continue
            if s % int(cfg.train.log_every) == 0 or s == total:
                logger.write(s, m)
            ran, ckpt_metrics = False, None
            for ev in evaluators:
                if not ev.due(s, total):
                    continue
                ran = True
                t_eval = time.perf_counter()
                res = ev.run(inference_params(state))
                last_evals[ev.name] = res
                logger.write(s, {**res, "seconds": time.perf_counter() - t_eval}, split=ev.name)
                value = {f"{ev.name}/{k}": v for k, v in res.items()}.get(best_metric)
                if value is None:
                    continue
                ckpt_metrics = {best_metric: value}
                if primary and _better(value, best, best_metric, best_mode):
                    best = {"step": s, "metric": best_metric, "value": value}
                    _write_json(fs.join(workdir, "best.json"), best)
            ckpt.save(manager, s, state, train_it, metrics=ckpt_metrics, force=ran or s == total)
    except NonFiniteStop as e:
        stop = e
    finally:
        manager.wait_until_finished()
        manager.close()
        logger.close()
        if hasattr(train_it, "close"):
            train_it.close()

    # --- summary -----------------------------------------------------------------------------
    final_step = int(_host(state["step"]))
    summary = {"status": "stopped_nonfinite" if stop else "completed", "step": final_step, "metrics": last, "evals": last_evals,
               "best": best, "params_sha256": ckpt.params_sha256(inference_params(state)),
               "num_params": run.num_params, "nonfinite_total": int(_host(state["nonfinite_total"])),
               "global_batch_size": gbs, "devices": mesh.size, "processes": jax.process_count(),
               "wall_s": round(time.time() - t_start, 2)}
    if run.text_cache is not None:
        tc = run.text_cache
        summary["text_feature_cache"] = {"captions": len(tc), "encoded": tc.computed,
                                         "tower_calls": tc.chunks}
    if primary:
        _write_json(fs.join(workdir, "summary.json"), summary)
    if stop is not None:
        raise stop
    log.info("done: step %d, params sha256 %s", final_step, summary["params_sha256"][:16])
    return summary
