"""JSON round trip shared by the imaging stage's frozen config dataclasses (localizer, refiner,
refiner jitter): tuples are written as lists and read back as tuples whose items take the type of
the field default's items; unknown keys (from a newer version) are ignored."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


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
