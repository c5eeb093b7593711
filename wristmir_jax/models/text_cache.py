"""Pooled features of a frozen text tower, computed once per distinct caption.

With `model.text.frozen` the text tower does not train, so its pooled output for a caption never
changes. Reports mined into templated captions repeat heavily (the demo's 2,000 studies have 404
distinct global and 131 distinct region captions for 8,000 caption slots), so running the tower
once per distinct caption instead of once per example removes almost all of its cost; that is
what makes a pretrained 6-layer MiniLM text tower affordable in a CPU training loop.

`TextFeatureCache(model, params).attach(batch) -> batch` adds `global_text_feat` f32[B,W] and
`region_text_feat` f32[B,3,W] to a host (numpy) batch; WristModel.encode projects those instead of
running the tower. Keys are the token ids themselves (plus the bone for region captions), so two
captions share an entry only when the tower would see identical inputs. New captions are encoded
in fixed-size chunks by one jitted function (one compilation per tower).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.schema import NUM_REGIONS


class TextFeatureCache:
    """Host-side cache of the frozen text tower's pooled features.

    `params` are copied on device at construction (the trainer donates its state's buffers every
    step; the frozen text leaves have the same values in both)."""

    def __init__(self, model: Any, params: Any, chunk: int = 64):
        self.model = model
        self.chunk = int(chunk)
        self._params = jax.tree.map(jnp.array, params)
        self._global_fn = jax.jit(model.global_text_features)
        self._region_fn = jax.jit(model.region_text_features)
        self._table: dict[tuple[int, bytes], np.ndarray] = {}
        self.computed = 0  # captions run through the tower so far

    def __len__(self) -> int:
        return len(self._table)

    @staticmethod
    def _key(region: int, tokens: np.ndarray, mask: np.ndarray) -> tuple[int, bytes]:
        ids = np.where(np.asarray(mask) > 0, np.asarray(tokens), -1).astype(np.int32)
        return region, ids.tobytes()

    def _fill(self, region: int, tokens: np.ndarray, mask: np.ndarray, keys: list) -> None:
        todo: dict[tuple[int, bytes], int] = {}
        for i, k in enumerate(keys):
            if k not in self._table and k not in todo:
                todo[k] = i
        if not todo:
            return
        rows = np.fromiter(todo.values(), np.int64)
        for s in range(0, len(rows), self.chunk):
            part = rows[s:s + self.chunk]
            n = len(part)
            tok = np.zeros((self.chunk, tokens.shape[-1]), np.int32)
            msk = np.zeros((self.chunk, mask.shape[-1]), np.int32)
            tok[:n], msk[:n] = tokens[part], mask[part]
            msk[n:, 0] = 1  # padding rows: one visible token keeps the masked mean finite
            if region < 0:
                feat = self._global_fn(self._params, tok, msk)
            else:
                feat = self._region_fn(self._params, tok, msk, np.full((self.chunk,), region, np.int32))
            feat = np.asarray(feat, np.float32)
            for j, r in enumerate(part):
                self._table[keys[r]] = feat[j]
            self.computed += n

    def features(self, tokens: np.ndarray, mask: np.ndarray, region: int = -1) -> np.ndarray:
        """f32[N,W] pooled features for captions tokens/mask int[N,L] (region -1: global)."""
        tokens, mask = np.asarray(tokens), np.asarray(mask)
        keys = [self._key(region, t, m) for t, m in zip(tokens, mask)]
        self._fill(region, tokens, mask, keys)
        return np.stack([self._table[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)

    def attach(self, batch: dict) -> dict:
        """A copy of a host batch with `global_text_feat` and `region_text_feat` added."""
        out = dict(batch)
        out["global_text_feat"] = self.features(batch["global_tokens"], batch["global_mask"])
        rt, rm = np.asarray(batch["region_tokens"]), np.asarray(batch["region_mask"])
        out["region_text_feat"] = np.stack(
            [self.features(rt[:, r], rm[:, r], region=r) for r in range(NUM_REGIONS)], axis=1)
        return out
