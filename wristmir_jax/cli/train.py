"""`wristmir train --config configs/X.py[:arg] --workdir W [--config.a.b=v ...]`.

Trains (or resumes) the config's task (`cfg.task`, default the global + local contrastive
encoders) with the one trainer, wristmir_jax/train/trainer.py; evaluators (`cfg.evals`) run in
the loop and `train.best_metric` picks the checkpoint `embed` uses.
Multi-process: --coordinator HOST:PORT --num-processes N --process-id I, or the WRISTMIR_* /
SLURM / TPU environment (train/distributed.py); launch/local_multiprocess.sh runs N on one host.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="config file, e.g. configs/cpu_demo.py[:arg]")
    p.add_argument("--workdir", required=True, help="checkpoints, logs, summary.json (resumable)")
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (multi-process)")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.config import load_config
    from wristmir_jax.train import distributed

    distributed.initialize(distributed.detect(args.coordinator, args.num_processes, args.process_id))
    cfg = load_config(args.config, getattr(args, "config_overrides", ()))
    # after distributed.initialize: nothing may start the JAX backend before it
    from wristmir_jax.train.trainer import train

    summary = train(cfg, args.workdir)
    if distributed.is_primary():
        print(f"trained to step {summary['step']}; params sha256 {summary['params_sha256']}; "
              f"summary: {args.workdir}/summary.json")
    return 0
