"""The optimizer: optax AdamW with linear warmup + cosine decay, global-norm clipping, a
weight-decay mask, per-tower learning-rate multipliers and freezing, all chosen by regular
expressions over parameter paths ('img/blocks_0/attn/query/kernel').

Order of operations on a gradient: frozen leaves are zeroed (so they do not count in the clipping
norm), the global norm is clipped, then each parameter group (frozen / lr multiplier m) gets its
own AdamW whose learning rate is `m * schedule(count)`. Frozen groups get `set_to_zero`, so they
carry no Adam moments and weight decay never moves them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import ml_collections
import optax

from wristmir_jax.errors import UserError
from wristmir_jax.train.sharding import path_str

FROZEN = "frozen"


def _compile(patterns: Sequence[str], what: str) -> list[re.Pattern]:
    out = []
    for p in patterns or ():
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise UserError(f"optim.{what}: bad regular expression {p!r} ({e})") from None
    return out


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to lr, then cosine down to lr * end_lr_factor at total_steps.
    `warmup_steps` -1: a tenth of the steps, at most 200 (the localizer configs)."""
    warmup = int(cfg.warmup_steps)
    if warmup < 0:
        warmup = max(1, min(200, int(total_steps) // 10))
    warmup = min(warmup, max(int(total_steps) - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(cfg.lr), warmup_steps=warmup,
        decay_steps=max(int(total_steps), warmup + 1), end_value=float(cfg.lr) * float(cfg.end_lr_factor))


def decay_mask(params: Any, no_decay: Sequence[str]) -> Any:
    """True where weight decay applies: matrices/kernels, never vectors (biases, norm scales),
    scalars (temperatures) or paths matching a `no_decay` regex (embeddings, positions)."""
    pats = _compile(no_decay, "no_decay")

    def f(path, p):
        name = path_str(path)
        return bool(len(p.shape) >= 2 and not any(r.search(name) for r in pats))

    return jax.tree_util.tree_map_with_path(f, params)


def group_labels(params: Any, freeze: Sequence[str], lr_multipliers: Sequence[Sequence[Any]]) -> Any:
    """Each leaf's group: 'frozen', or 'lr_x<m>' from the first matching multiplier (default 1)."""
    freeze_pats = _compile(freeze, "freeze")
    mult = [(re.compile(r), float(m)) for r, m in lr_multipliers or ()]

    def f(path, _):
        name = path_str(path)
        if any(r.search(name) for r in freeze_pats):
            return FROZEN
        for r, m in mult:
            if r.search(name):
                return FROZEN if m == 0.0 else f"lr_x{m:g}"
        return "lr_x1"

    return jax.tree_util.tree_map_with_path(f, params)


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
    """Returns (optimizer, lr_at(count)) for `cfg` (the `optim` config section)."""
    sched = schedule(cfg, total_steps)
    labels = group_labels(params, tuple(cfg.freeze), tuple(tuple(x) for x in cfg.lr_multipliers))
    mask = decay_mask(params, tuple(cfg.no_decay))
    frozen_mask = jax.tree.map(lambda l: l == FROZEN, labels)
    groups: dict[str, optax.GradientTransformation] = {}
    for label in sorted(set(jax.tree.leaves(labels))):
        if label == FROZEN:
            groups[label] = optax.set_to_zero()
            continue
        m = float(label[len("lr_x"):])
        groups[label] = optax.adamw(lambda c, m=m: m * sched(c), b1=float(cfg.b1), b2=float(cfg.b2),
                                    eps=float(cfg.eps), weight_decay=float(cfg.weight_decay),
                                    mask=mask)
    parts = []
    if any(jax.tree.leaves(frozen_mask)):
        parts.append(optax.masked(optax.set_to_zero(), frozen_mask))
    if cfg.clip_norm and cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(cfg.clip_norm)))
    parts.append(optax.multi_transform(groups, labels))
    return optax.chain(*parts), sched


def trainable_mask(cfg: ml_collections.ConfigDict, params: Any) -> Any:
    """False for frozen leaves (used to report the gradient norm of what actually trains)."""
    labels = group_labels(params, tuple(cfg.freeze), tuple(tuple(x) for x in cfg.lr_multipliers))
    return jax.tree.map(lambda l: l != FROZEN, labels)
