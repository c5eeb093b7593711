"""The device mesh: axes (data, fsdp, tensor) from config, one size may be -1 (inferred)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from wristmir_jax.errors import UserError

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
# Activations and batches are split over every data-parallel axis.
BATCH_AXES: tuple[str, ...] = ("data", "fsdp")


def resolve_axis_sizes(spec: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Sizes for MESH_AXES from a config mapping; at most one -1, inferred from num_devices."""
    unknown = [k for k in spec if k not in MESH_AXES]
    if unknown:
        raise UserError(f"mesh: unknown axis {unknown[0]!r} (axes are {', '.join(MESH_AXES)})")
    sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise UserError("mesh: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh: axis sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % known:
            raise UserError(f"mesh: {num_devices} devices are not divisible by the fixed axes "
                            f"(product {known})")
        sizes[free[0]] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise UserError(f"mesh: axes {dict(zip(MESH_AXES, sizes))} need {math.prod(sizes)} "
                        f"devices, {num_devices} available")
    return tuple(sizes)


def make_mesh(spec: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over all (or the given) devices with Auto axis types, so GSPMD propagates
    shardings between the explicitly sharded inputs and outputs of the jitted step."""
    spec = dict(spec)
    if devices is None:
        devices = jax.devices()
        fixed = [int(spec.get(a, 1)) for a in MESH_AXES]
        # A fully fixed mesh smaller than a single process's devices uses the first ones.
        if -1 not in fixed and jax.process_count() == 1 and math.prod(fixed) < len(devices):
            devices = devices[: math.prod(fixed)]
    devices = list(devices)
    sizes = resolve_axis_sizes(spec, len(devices))
    return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))
