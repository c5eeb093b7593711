"""Range and enumeration checks of a training config, run before anything is built or written:
every numeric option in range, every named choice known (data.source/order/val_split, loss
terms), each failure one UserError line naming the `--config.` field."""

from __future__ import annotations

from typing import Any

from wristmir_jax.errors import UserError
from wristmir_jax.schema import SPLITS

# field -> (minimum, maximum or None); ints unless the default is a float
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "seed": (0, None),
    "data.global_batch_size": (1, None),
    "data.worker_count": (0, 256),
    "data.eval_batches": (0, None),
    "data.synthetic.num_train": (1, None),
    "data.synthetic.num_val": (1, None),
    "optim.warmup_steps": (-1, None),  # -1: a tenth of the steps (optim.schedule)
    "train.steps": (1, None),
    "train.log_every": (1, None),
    "train.eval_every": (0, None),
    "train.checkpoint_every": (1, None),
    "train.keep": (1, None),
    "train.keep_best": (0, None),
    "train.grad_accum": (1, None),
    "train.max_consecutive_nonfinite": (1, None),
    "model.embed_dim": (1, None),
    "model.image.image_size": (8, 8192),
    "model.local.crop_size": (8, 8192),
    "model.text.max_len": (1, None),
    "model.text.vocab_size": (2, None),
}
_FLOAT_RANGES: dict[str, tuple[float, float | None]] = {
    "optim.lr": (0.0, None),
    "optim.end_lr_factor": (0.0, 1.0),
    "optim.b1": (0.0, 1.0),
    "optim.b2": (0.0, 1.0),
    "optim.eps": (0.0, None),
    "optim.weight_decay": (0.0, None),
    "optim.clip_norm": (0.0, None),
    "optim.ema_decay": (0.0, 1.0),
    "model.dropout": (0.0, 1.0),
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "data.source": ("tfds", "synthetic"),
    "data.order": ("grain", "global"),
    "data.val_split": SPLITS,
}


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not hasattr(node, "get") or part not in node:
            return None
        node = node[part]
    return node


def check_train_config(cfg: Any) -> None:
    """Raises UserError (one line naming the field) for the first out-of-range or unknown value."""
    for name, (lo, hi) in _INT_RANGES.items():
        v = _get(cfg, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise UserError(f"--config.{name}={v!r}: expected an integer")
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise UserError(f"--config.{name}={v}: must be {rng}")
    for name, (lo, hi) in _FLOAT_RANGES.items():
        v = _get(cfg, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            raise UserError(f"--config.{name}={v!r}: expected a number")
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise UserError(f"--config.{name}={v}: must be {rng}")
    for name, allowed in _CHOICES.items():
        v = _get(cfg, name)
        if v is not None and v not in allowed:
            raise UserError(f"--config.{name}={v!r}: must be one of {', '.join(allowed)}")
    _check_loss(cfg)


def _check_loss(cfg: Any) -> None:
    from wristmir_jax.losses import registry

    if _get(cfg, "loss") is None:  # a task without contrastive loss terms (the localizer's)
        return
    terms = _get(cfg, "loss.terms")
    if terms is None or not hasattr(terms, "items"):
        raise UserError("--config.loss.terms: expected a mapping of loss term -> weight")
    known = registry.names()
    for name, w in terms.items():
        if name not in known:
            raise UserError(f"--config.loss.terms: unknown loss term {name!r} "
                            f"(known: {', '.join(known)})")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise UserError(f"--config.loss.terms.{name}={w!r}: weight must be a number >= 0")
    if not any(float(w) > 0 for w in terms.values()):
        raise UserError("--config.loss.terms: no term has a positive weight")
    params = _get(cfg, "loss.params")
    for name in (params.keys() if hasattr(params, "keys") else ()):
        if name not in known:
            raise UserError(f"--config.loss.params: unknown loss term {name!r} "
                            f"(known: {', '.join(known)})")
