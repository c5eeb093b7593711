"""JSON round trip shared by the imaging stage's frozen config dataclasses (localizer, refiner,
refiner jitter): tuples are written as lists and read back as tuples whose items take the type of
the field default's items; unknown keys (from a newer version) are ignored. `load_weights` reads a
config JSON with its safetensors weights and checks one against the other."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping


class JsonConfig:
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for k, v in d.items():
            if k not in fields:
                continue
            default = fields[k].default
            if isinstance(default, tuple) and default:
                v = tuple(type(default[0])(t) for t in v)
            out[k] = v
        return cls(**out)


def load_weights(config_path: str, params_path: str, config_cls: type,
                 init_shapes: Callable[[Any], Mapping[str, tuple[int, ...]]], what: str,
                 where: str):
    """-> (cfg, params) from `config_path` (JSON) and `params_path` (safetensors, '/'-joined
    keys). A UserError naming `where` when either cannot be read, and naming `params_path` when
    the weight shapes are not the ones `init_shapes(cfg)` builds (a different architecture)."""
    import json

    import jax.numpy as jnp
    from flax import traverse_util
    from safetensors.numpy import load_file

    from wristmir_jax.errors import UserError

    try:
        with open(config_path, encoding="utf-8") as f:
            cfg = config_cls.from_dict(json.load(f))
        flat = load_file(params_path)
    except Exception as e:
        raise UserError(f"cannot read the {what} ({str(e)[:160]})", path=where) from None
    if hasattr(cfg, "check"):
        cfg.check()
    if {k: tuple(v.shape) for k, v in flat.items()} != dict(init_shapes(cfg)):
        raise UserError(f"{what} weights do not match its config (different architecture)",
                        path=params_path)
    params = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    return cfg, params
