"""The loss registry: terms are registered by name and looked up by the objective.

A term is a pure function `fn(emb: dict, batch: dict, cfg) -> (scalar f32, aux: dict[str, scalar])`;
`cfg` is any mapping-like object (dict, ml_collections.ConfigDict, or None) holding that term's
parameters. Users add their own terms with `@register("my_term")`.
"""

from __future__ import annotations

from typing import Callable

LossFn = Callable[..., tuple]

_REGISTRY: dict[str, LossFn] = {}


def register(name: str, replace: bool = False) -> Callable[[LossFn], LossFn]:
    """Decorator: registers `fn` under `name`. Registering a taken name is an error unless
    `replace=True` (for notebooks, where a cell defining a term is run again)."""

    def deco(fn: LossFn) -> LossFn:
        if name in _REGISTRY and _REGISTRY[name] is not fn and not replace:
            raise ValueError(f"loss term {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def get(name: str) -> LossFn:
    """The term registered as `name`; an unknown name raises KeyError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown loss term {name!r}; known: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)
