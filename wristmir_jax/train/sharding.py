"""One rules table from logical axis names to mesh axes (MaxText / big_vision style).

The model names each parameter dimension (`("embed", "mlp")`, `("vocab", "embed")`, ...); the
table below maps a name to a mesh axis (or a tuple of axes, or None = replicated). A dimension
whose size the mesh axes do not divide, or whose mesh axis another dimension of the same
parameter already uses, stays replicated. Optimizer-state leaves inherit their parameter's
sharding by matching key paths; everything else (step counters, scalars) is replicated.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# (logical name, mesh axes). Names absent from the table are replicated.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("channels", None),
    ("length", None),
    ("layers", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("proj", "fsdp"),
)


def rules_dict(rules: Iterable[Sequence[Any]] | None) -> dict[str, Any]:
    out = {}
    for name, axes in (DEFAULT_RULES if rules is None else rules):
        if isinstance(axes, list):
            axes = tuple(axes)
        out[str(name)] = axes
    return out


def _mesh_axes_tuple(axes: Any) -> tuple[str, ...]:
    if axes is None:
        return ()
    if isinstance(axes, str):
        return (axes,)
    return tuple(axes)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, Any]) -> P:
    """PartitionSpec for one parameter from its logical axis names and shape."""
    if len(logical) != len(shape):
        raise ValueError(f"logical axes {tuple(logical)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical, shape):
        axes = tuple(a for a in _mesh_axes_tuple(rules.get(name) if name else None)
                     if a in mesh.shape and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes) if axes else 1
        if not axes or used.intersection(axes) or dim % size:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def _is_axes_leaf(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(a, str) or a is None for a in x)


def replicated_axes(params: Any) -> Any:
    """Logical axes naming no dimension for every leaf: the params are replicated."""
    return jax.tree.map(lambda p: (None,) * p.ndim, params)


def param_shardings(abstract_params: Any, logical_axes: Any, mesh: Mesh,
                    rules: Iterable[Sequence[Any]] | None = None) -> Any:
    """NamedShardings for a params pytree (arrays or ShapeDtypeStructs) from its logical axes."""
    table = rules_dict(rules)
    axes_leaves = jax.tree.leaves(logical_axes, is_leaf=_is_axes_leaf)
    p_leaves, treedef = jax.tree.flatten(abstract_params)
    if len(axes_leaves) != len(p_leaves):
        raise ValueError(f"logical_axes has {len(axes_leaves)} leaves, params {len(p_leaves)}")
    out = [NamedSharding(mesh, logical_to_spec(ax, p.shape, mesh, table))
           for ax, p in zip(axes_leaves, p_leaves)]
    return jax.tree.unflatten(treedef, out)


def _key_str(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_str(path: Sequence[Any]) -> str:
    """'img/blocks_0/mlp/kernel' style name of a pytree key path."""
    return "/".join(_key_str(k) for k in path)


def tree_paths(tree: Any) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def follow_params(tree: Any, params: Any, p_shardings: Any, mesh: Mesh) -> Any:
    """Shardings for a pytree whose leaves mirror parameters (Adam moments etc.): a leaf whose
    key path ends with a parameter's path and has its shape gets that parameter's sharding."""
    by_path = {}
    for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree.leaves(p_shardings)):
        by_path[tuple(_key_str(k) for k in path)] = (tuple(p.shape), s)
    rep = NamedSharding(mesh, P())

    def pick(path, leaf):
        keys = tuple(_key_str(k) for k in path)
        shape = tuple(getattr(leaf, "shape", ()))
        for i in range(len(keys)):
            hit = by_path.get(keys[i:])
            if hit is not None and hit[0] == shape:
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(pick, tree)
