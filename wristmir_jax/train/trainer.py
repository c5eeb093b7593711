"""The trainer, big_vision style: one readable function cut into sections
(config, mesh, data, model, optimizer + state + shardings, restore, compile, loop, summary).

`train(cfg, workdir)` is what `wristmir train --config configs/X.py --workdir W` runs. It resumes
from W's latest checkpoint automatically, so re-running the same command after a crash (or a
SIGKILL) continues the run; the final parameters are bit-identical to an uninterrupted run's
(the data order, dropout keys and optimizer state all come from the checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.train import checkpoint as ckpt
from wristmir_jax.train.distributed import is_primary
from wristmir_jax.train.inputs import SourceBatches, to_global
from wristmir_jax.train.mesh import data_parallel_size, make_mesh, replicated
from wristmir_jax.train.metrics_log import MetricsLogger
from wristmir_jax.train.state import (batch_shardings, build_model, create_train_state,
                                      inference_params)
from wristmir_jax.train.step import make_eval_step, make_train_step
from wristmir_jax.train.validate import check_train_config
from wristmir_jax.utils.fs import atomic_write, read_json_or_none
from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.train")


class NonFiniteStop(UserError):
    """Too many consecutive non-finite steps; the last good checkpoint is left as it was."""


FROZEN_TEXT_PATTERNS = (r"^text/", r"^local_text/")


def resolve_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with the model's input sizes taken from the data (DATA_DIR meta for tfds)."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    if cfg.data.source == "tfds":
        if not cfg.data.dir:
            raise UserError("data.dir is empty: pass --config.data.dir=DATA_DIR (built by "
                            "`wristmir build`)")
        from wristmir_jax.data.source import read_meta

        meta = read_meta(cfg.data.dir)
        cfg.model.image.image_size = int(meta["image_size"])
        cfg.model.local.crop_size = int(meta["crop_size"])
        cfg.model.text.max_len = int(meta["max_len"])
        cfg.model.text.vocab_size = int(meta["vocab_size"])
    elif cfg.data.source != "synthetic":
        raise UserError(f"data.source must be 'tfds' or 'synthetic', got {cfg.data.source!r}")
    if cfg.model.text.get("frozen"):
        # The text tower(s) do not train (their features come from TextFeatureCache); written
        # into the resolved config so a restore builds the same optimizer.
        cfg.optim.freeze = tuple(dict.fromkeys(tuple(cfg.optim.freeze) + FROZEN_TEXT_PATTERNS))
    return cfg


def _prefill_text(cache, sources) -> None:
    """Encodes the distinct captions of built splits before the loop, so the frozen text tower
    never runs between train steps (TextFeatureCache.prefill_split says which splits)."""
    t0 = time.time()
    for src in sources:
        cache.prefill_split(src)
    if cache.computed:
        log.info("text features of %d distinct captions in %d tower calls (%.1fs)", cache.computed,
                 cache.chunks, time.time() - t0)


def _sources(cfg):
    """(train source, val source): random-access sources for the two splits."""
    if cfg.data.source == "synthetic":
        from wristmir_jax.data.synthetic import SyntheticSource

        s = cfg.data.synthetic
        kw = dict(image_size=cfg.model.image.image_size, crop_size=cfg.model.local.crop_size,
                  max_len=cfg.model.text.max_len, vocab_size=cfg.model.text.vocab_size)
        return (SyntheticSource(s.num_train, seed=s.seed, **kw),
                SyntheticSource(s.num_val, seed=s.seed + 1000, **kw))
    from wristmir_jax.data.source import DatasetSource

    return DatasetSource(cfg.data.dir, "train"), DatasetSource(cfg.data.dir, cfg.data.val_split)


def make_train_iterator(cfg, source):
    """`data.order`: "global" (SourceBatches: the same global batches for any process count)
    or "grain" (data.pipeline: per-process shards, worker processes, augmentation)."""
    if cfg.data.order == "global":
        return SourceBatches(source, cfg.data.global_batch_size, seed=cfg.seed)
    if cfg.data.order != "grain":
        raise UserError(f"data.order must be 'global' or 'grain', got {cfg.data.order!r}")
    from wristmir_jax.data.pipeline import make_pipeline

    return make_pipeline(source, "train", global_batch_size=cfg.data.global_batch_size,
                         seed=cfg.seed, augment=bool(cfg.data.augment),
                         worker_count=int(cfg.data.worker_count))


def _write_json(path: str, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=float)


def _host(x: Any) -> np.ndarray:
    """A replicated jax.Array's value (works when other processes hold other devices)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _floats(m: dict) -> dict:
    return {k: float(_host(v)) for k, v in m.items()}


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains to cfg.train.steps (resuming from workdir) and returns the summary dict."""
    t_start = time.time()
    # --- config -----------------------------------------------------------------------------
    workdir = os.path.abspath(workdir)
    cfg = resolve_config(cfg)
    check_train_config(cfg)  # ranges, choices, loss terms: before anything is built or written
    primary = is_primary()
    if not primary:
        log.setLevel("WARNING")
    total = int(cfg.train.steps)
    gbs = int(cfg.data.global_batch_size)
    ckpt.check_resume_compatible(workdir, cfg.to_dict())  # before anything is written

    # --- mesh --------------------------------------------------------------------------------
    mesh = make_mesh(cfg.mesh)
    dp = data_parallel_size(mesh)
    if gbs % (dp * int(cfg.train.grad_accum)):
        raise UserError(f"data.global_batch_size {gbs} must be divisible by the data-parallel "
                        f"size {dp} x train.grad_accum {cfg.train.grad_accum}")
    log.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size,
             jax.process_count())

    # --- data --------------------------------------------------------------------------------
    train_source, val_source = _sources(cfg)
    train_it = make_train_iterator(cfg, train_source)
    n_eval = int(cfg.data.eval_batches) or max(1, len(val_source) // gbs)

    # --- model and objective -----------------------------------------------------------------
    from wristmir_jax import losses

    model = build_model(cfg)
    objective = losses.objective(cfg.loss, mesh=mesh)

    # --- optimizer, state and shardings ------------------------------------------------------
    state, shardings, tx, sched, trainable, _ = create_train_state(cfg, model, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    log.info("model: %.2fM parameters", n_params / 1e6)

    # --- restore -----------------------------------------------------------------------------
    manager = ckpt.make_manager(workdir, save_every=int(cfg.train.checkpoint_every),
                                keep=int(cfg.train.keep), keep_best=int(cfg.train.keep_best),
                                async_save=bool(cfg.train.async_checkpoint))
    abstract = ckpt.abstract_like(state, shardings)
    latest, restored, skipped = ckpt.restore_newest_good(
        manager, lambda s: ckpt.restore(manager, s, abstract, train_it), where=workdir)
    if latest is not None:
        state = restored
        log.info("resumed from step %d", latest)
    if skipped and primary:  # out of the way of the next saves, kept for inspection
        ckpt.quarantine_steps(workdir, skipped)
    if skipped:
        manager.reload()
    if primary:  # only after a successful restore (a failed resume leaves it as it was)
        os.makedirs(workdir, exist_ok=True)
        _write_json(os.path.join(workdir, "config.json"), cfg.to_dict())
    start = int(_host(state["step"]))
    best = read_json_or_none(os.path.join(workdir, "best.json")) or {}
    if model.text_frozen:
        from wristmir_jax.models.text_cache import TextFeatureCache

        text_cache = TextFeatureCache(model, state["params"])
        with_text = text_cache.attach
        _prefill_text(text_cache, (train_source, val_source))
    else:
        text_cache, with_text = None, (lambda b: b)

    # --- compile -----------------------------------------------------------------------------
    next_host = with_text(next(train_it)) if start < total else None
    probe = next_host if next_host is not None else with_text(dict(next(iter(
        SourceBatches(val_source, gbs, seed=0, shuffle=False)))))
    probe_global = to_global(probe, mesh)
    b_shard = batch_shardings(probe_global, mesh)
    step_fn = jax.jit(make_train_step(model, objective, tx, sched,
                                      grad_accum=int(cfg.train.grad_accum), trainable=trainable,
                                      ema_decay=float(cfg.optim.ema_decay)),
                      in_shardings=(shardings, b_shard), out_shardings=(shardings, replicated(mesh)),
                      donate_argnums=(0,))
    abstract_state = ckpt.abstract_like(state, shardings)
    abstract_batch = ckpt.abstract_like(probe_global, b_shard)
    t0 = time.time()
    compiled = step_fn.lower(abstract_state, abstract_batch).compile()
    mem = compiled.memory_analysis()
    log.info("train step compiled in %.1fs; memory: %s", time.time() - t0, mem)
    eval_fn = jax.jit(make_eval_step(model, objective),
                      in_shardings=(shardings["params"], b_shard), out_shardings=replicated(mesh))

    def evaluate(params) -> dict:
        it = SourceBatches(val_source, gbs, seed=0, shuffle=False)
        sums: dict[str, float] = {}
        for _ in range(n_eval):
            m = _floats(eval_fn(params, to_global(with_text(next(it)), mesh)))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / n_eval for k, v in sums.items()}

    # --- loop --------------------------------------------------------------------------------
    logger = MetricsLogger(workdir, enabled=primary, total_steps=total, start_step=start)
    inject = {int(s) for s in cfg.train.inject_nonfinite_steps}
    limit = int(cfg.train.max_consecutive_nonfinite)
    last: dict = {}
    last_val: dict = {}
    stop: NonFiniteStop | None = None
    try:
        for step in range(start, total):
            t_data0 = time.perf_counter()
            host = next_host if next_host is not None else with_text(next(train_it))
            next_host = None
            if step in inject:
                host = {**host, "image": np.full_like(host["image"], np.nan)}
            batch = to_global(host, mesh)
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
            val_metrics = None
            if (cfg.train.eval_every and s % int(cfg.train.eval_every) == 0) or s == total:
                last_val = evaluate(inference_params(state))
                val_metrics = {"val_loss": last_val["loss"]}
                logger.write(s, last_val, split="val")
                if primary and (not best or last_val["loss"] < best["val_loss"]):
                    best = {"step": s, "val_loss": last_val["loss"]}
                    _write_json(os.path.join(workdir, "best.json"), best)
            ckpt.save(manager, s, state, train_it, metrics=val_metrics,
                      force=val_metrics is not None or s == total)
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
    summary = {"status": "stopped_nonfinite" if stop else "completed", "step": final_step, "metrics": last, "val": last_val,
               "best": best, "params_sha256": ckpt.params_sha256(inference_params(state)),
               "num_params": n_params, "nonfinite_total": int(_host(state["nonfinite_total"])),
               "global_batch_size": gbs, "devices": mesh.size, "processes": jax.process_count(),
               "wall_s": round(time.time() - t_start, 2)}
    if text_cache is not None:
        summary["text_feature_cache"] = {"captions": len(text_cache), "encoded": text_cache.computed,
                                         "tower_calls": text_cache.chunks}
    if primary:
        _write_json(os.path.join(workdir, "summary.json"), summary)
    if stop is not None:
        raise stop
    log.info("done: step %d, params sha256 %s", final_step, summary["params_sha256"][:16])
    return summary
