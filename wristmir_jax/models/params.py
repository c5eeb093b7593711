"""Parameter-tree helpers: split Flax's logically-partitioned boxes into (plain params, logical
axes), convert between per-layer (`layers_0..n-1`) and scanned (`layers`, stacked) encoder
layouts, and count parameters. All pure functions on nested dicts."""

from __future__ import annotations

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def split_boxed(boxed: Any) -> tuple[Any, Any]:
    """(params, logical_axes) from a tree of nn.Partitioned boxes; raises if a leaf has no names."""
    missing = []

    def names(path, x):
        if isinstance(x, nn.Partitioned):
            return tuple(x.names)
        missing.append(jax.tree_util.keystr(path))
        return None

    logical = jax.tree_util.tree_map_with_path(names, boxed, is_leaf=_is_box)
    if missing:
        raise ValueError(f"parameters without logical axis names: {', '.join(missing[:5])}")
    params = jax.tree.map(lambda x: x.value if _is_box(x) else x, boxed, is_leaf=_is_box)
    return _to_dict(params), _to_dict(logical)


def _to_dict(tree: Any) -> Any:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree


def is_axes_leaf(x: Any) -> bool:
    """True for a logical-axes leaf: a tuple of axis names (str or None), () for scalars."""
    return isinstance(x, tuple) and all(isinstance(a, str) or a is None for a in x)


def stack_layers(tree: Any, axes: bool = False) -> Any:
    """Per-layer encoder params (`layers_0..n-1`) -> scanned layout (`layers`, leading axis).

    With `axes=True` the tree holds logical axes: "layers" is prepended to every name tuple."""
    if not isinstance(tree, dict):
        return tree
    keys = list(tree)
    if keys and all(_LAYER_KEY.match(k) for k in keys):
        order = sorted(keys, key=lambda k: int(_LAYER_KEY.match(k).group(1)))
        if axes:
            return {"layers": jax.tree.map(lambda a: ("layers",) + a, tree[order[0]],
                                           is_leaf=is_axes_leaf)}
        layers = [tree[k] for k in order]
        return {"layers": jax.tree.map(
            lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs),
            *layers)}
    return {k: stack_layers(v, axes) for k, v in tree.items()}


def unstack_layers(tree: Any, encoder_key: str = "encoder") -> Any:
    """Scanned layout (`encoder/layers`, stacked) -> per-layer `encoder/layers_i` (params only)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        if k == encoder_key and isinstance(v, dict) and set(v) == {"layers"}:
            stacked = v["layers"]
            n = jax.tree.leaves(stacked)[0].shape[0]
            out[k] = {f"layers_{i}": jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(n)}
        else:
            out[k] = unstack_layers(v, encoder_key)
    return out


def count_params(params: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))
