"""Configs are ml_collections files in `configs/` exposing `get_config(arg: str | None)`.

`load_config("configs/cpu_demo.py:quick", ["--config.optim.lr=3e-4"])` imports the file, calls
get_config with the text after ':' (if any), then applies the overrides. Override values are
parsed as Python literals when possible and must keep the field's type (ConfigDict enforces it);
`--config.a.b=none` sets None where the field allows it.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from typing import Iterable

import ml_collections

from wristmir_jax.errors import UserError

OVERRIDE_PREFIX = "--config."


def split_overrides(argv: Iterable[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.x=v` (and `--config.x v`) overrides from other arguments."""
    rest, overrides = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith(OVERRIDE_PREFIX):
            if "=" not in a:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise UserError(f"override {a} has no value (expected {a}=VALUE)")
                a = f"{a}={argv[i + 1]}"
                i += 1
            overrides.append(a)
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def _parse_value(text: str, current):
    if text.lower() in ("none", "null"):
        return None
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        v = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    if isinstance(current, float) and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if isinstance(current, tuple) and isinstance(v, list):
        v = tuple(v)
    return v


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
    for ov in overrides:
        if not ov.startswith(OVERRIDE_PREFIX) or "=" not in ov:
            raise UserError(f"bad override {ov!r}: expected --config.field=value")
        key, text = ov[len(OVERRIDE_PREFIX):].split("=", 1)
        parts = key.split(".")
        node = cfg
        for p in parts[:-1]:
            if p not in node:
                raise UserError(f"bad override {ov!r}: no config field {key!r}")
            node = node[p]
        leaf = parts[-1]
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or leaf not in node:
            raise UserError(f"bad override {ov!r}: no config field {key!r}")
        try:
            value = _parse_value(text, node[leaf])
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"bad override {ov!r}: {e}") from None
    return cfg


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and applies overrides. Errors are one-line UserErrors."""
    path, _, arg = spec.partition(":")
    if not os.path.exists(path):
        # Allow bare names resolved against the repository's configs/ folder.
        here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
        cand = os.path.join(here, path if path.endswith(".py") else path + ".py")
        if os.path.exists(cand):
            path = cand
        else:
            raise UserError("config file not found", path=path)
    mod_name = "wristmir_config_" + os.path.splitext(os.path.basename(path))[0]
    spec_ = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec_)
    try:
        spec_.loader.exec_module(module)
    except Exception as e:  # a config file with a bug: say which file
        raise UserError(f"config failed to load: {type(e).__name__}: {e}", path=path) from None
    if not hasattr(module, "get_config"):
        raise UserError("config file has no get_config()", path=path)
    try:
        cfg = module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # an unknown variant ("cpu_demo.py:quik") or a bug in the file
        what = f"variant {arg!r}" if arg else "get_config()"
        raise UserError(f"config {what} failed: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}"[:300], path=path) from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        cfg = ml_collections.ConfigDict(cfg)
    return apply_overrides(cfg, overrides)
