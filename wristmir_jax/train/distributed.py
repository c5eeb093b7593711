"""Multi-process start-up: `jax.distributed.initialize` from flags or the environment.

Sources, first match wins:
  1. explicit arguments (the `wristmir train --coordinator/--num-processes/--process-id` flags);
  2. WRISTMIR_COORDINATOR, WRISTMIR_NUM_PROCESSES, WRISTMIR_PROCESS_ID (launch/local_multiprocess.sh);
  3. a detected cluster: SLURM (SLURM_JOB_ID with SLURM_NTASKS > 1), Cloud TPU pod slices
     (TPU_WORKER_HOSTNAMES / MEGASCALE / multi-host TPU env), Open MPI / PMI ranks -- JAX's own
     cluster detection then fills in the coordinator and ranks (`initialize()` without args);
  4. otherwise a single process: nothing to initialise.
On CPU, cross-process collectives use gloo (jax's default `jax_cpu_collectives_implementation`).
Only process 0 logs progress and writes files (`is_primary`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax

from wristmir_jax.errors import UserError


@dataclass(frozen=True)
class ClusterSpec:
    source: str  # "flags", "env", "slurm", "tpu", "mpi" or "single"
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def detect(coordinator: str | None = None, num_processes: int | None = None,
           process_id: int | None = None, env: dict | None = None) -> ClusterSpec:
    env = os.environ if env is None else env
    if coordinator or num_processes is not None or process_id is not None:
        if not (coordinator and num_processes is not None and process_id is not None):
            raise UserError("multi-process flags need all of --coordinator, --num-processes, "
                            "--process-id")
        return ClusterSpec("flags", coordinator, int(num_processes), int(process_id))
    if env.get("WRISTMIR_COORDINATOR"):
        try:
            return ClusterSpec("env", env["WRISTMIR_COORDINATOR"], int(env["WRISTMIR_NUM_PROCESSES"]),
                               int(env["WRISTMIR_PROCESS_ID"]))
        except (KeyError, ValueError):
            raise UserError("WRISTMIR_COORDINATOR needs integer WRISTMIR_NUM_PROCESSES and "
                            "WRISTMIR_PROCESS_ID") from None
    if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return ClusterSpec("slurm")
    if env.get("TPU_WORKER_HOSTNAMES") and "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return ClusterSpec("tpu")
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return ClusterSpec("tpu")
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1 or int(env.get("PMI_SIZE", "1") or 1) > 1:
        return ClusterSpec("mpi")
    return ClusterSpec("single")


_INITIALIZED = {"spec": None}


def initialize(spec: ClusterSpec) -> ClusterSpec:
    """Starts jax.distributed for a multi-process spec (idempotent; single: no-op)."""
    if spec.source == "single" or _INITIALIZED["spec"] is not None:
        return spec
    if spec.source in ("flags", "env"):
        jax.distributed.initialize(coordinator_address=spec.coordinator,
                                   num_processes=spec.num_processes, process_id=spec.process_id)
    else:
        jax.distributed.initialize()
    _INITIALIZED["spec"] = spec
    return spec


def is_primary() -> bool:
    return jax.process_index() == 0
