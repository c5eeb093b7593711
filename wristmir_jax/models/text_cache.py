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
in fixed-size chunks by one jitted function (one compilation per tower); `prefill` encodes a
whole split's distinct captions up front (the trainer and `embed` do), so the tower runs in the
fewest chunks and never inside the training loop.

With `tokens=True` (the default when the model has `word_features`, i.e. the word-region term is
on) the cache also keeps each distinct global caption's token hidden states (up to its last real
token) and `attach` adds `global_token_feat` f32[B,L,W]. Those are L times larger than the pooled
features, so they live in a least-recently-used table of at most `max_token_entries` captions
(the pooled table is small and unbounded); an evicted caption is run through the tower again
when it comes back. With `region_tokens=True` (the default when the model has `region_words`)
`attach` also adds `region_token_feat` f32[B,3,L,W]: each region caption through the global tower
(the words grounding attends with), cached under the same keys as a global caption of the same
tokens, since the tower sees identical inputs.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.schema import NUM_REGIONS


class TextFeatureCache:
    """Host-side cache of the frozen text tower's pooled features.

    `params` are copied on device at construction (the trainer donates its state's buffers every
    step; the frozen text leaves have the same values in both)."""

    def __init__(self, model: Any, params: Any, chunk: int = 64, tokens: bool | None = None,
                 max_token_entries: int = 4096, region_tokens: bool | None = None):
        self.model = model
        self.chunk = int(chunk)
        self.region_tokens = bool(getattr(model, "region_words", False)
                                  if region_tokens is None else region_tokens)
        self.tokens = self.region_tokens or bool(
            getattr(model, "word_features", False) if tokens is None else tokens)
        self.max_token_entries = int(max_token_entries)
        if self.tokens and self.max_token_entries < self.chunk:
            raise ValueError(f"max_token_entries {max_token_entries} < chunk {chunk}")
        self._params = jax.tree.map(jnp.array, params)
        self._global_fn = jax.jit(model.global_text_states if self.tokens else model.global_text_features)
        self._region_fn = jax.jit(model.region_text_features)
        self._pooled_fn = None  # pooled-only global features, for captions beyond the token table
        self._table: dict[tuple[int, bytes], np.ndarray] = {}
        self._tok_table: OrderedDict[tuple[int, bytes], np.ndarray] = OrderedDict()
        self.computed = 0  # captions run through the tower so far
        self.chunks = 0  # tower calls so far

    def __len__(self) -> int:
        return len(self._table)

    @staticmethod
    def _key(region: int, tokens: np.ndarray, mask: np.ndarray) -> tuple[int, bytes]:
        ids = np.where(np.asarray(mask) > 0, np.asarray(tokens), -1).astype(np.int32)
        return region, ids.tobytes()

    def _fill(self, items: list[tuple[tuple[int, bytes], np.ndarray, np.ndarray]]) -> None:
        """Runs the tower on the captions of `items` (key, tokens, mask) not cached yet, global
        and region captions in separate fixed-size chunks (region chunks mix the bones: the bone
        is a per-row input)."""
        todo: dict[tuple[int, bytes], tuple[np.ndarray, np.ndarray]] = {}
        for k, t, m in items:
            if k in todo:
                continue
            if k not in self._table or (self.tokens and k[0] < 0 and k not in self._tok_table):
                todo[k] = (t, m)
        glob = [k for k in todo if k[0] < 0]
        reg = [k for k in todo if k[0] >= 0]
        for keys in (glob, reg):
            for s in range(0, len(keys), self.chunk):
                part = keys[s:s + self.chunk]
                n = len(part)
                length = todo[part[0]][0].shape[-1]
                tok = np.zeros((self.chunk, length), np.int32)
                msk = np.zeros((self.chunk, length), np.int32)
                for j, k in enumerate(part):
                    tok[j], msk[j] = todo[k]
                msk[n:, 0] = 1  # padding rows: one visible token keeps the masked mean finite
                hidden = None
                if part[0][0] < 0:
                    feat = self._global_fn(self._params, tok, msk)
                    if self.tokens:
                        feat, hidden = feat
                        hidden = np.asarray(hidden, np.float32)
                else:
                    bone = np.zeros((self.chunk,), np.int32)
                    bone[:n] = [k[0] for k in part]
                    feat = self._region_fn(self._params, tok, msk, bone)
                feat = np.asarray(feat, np.float32)
                for j, k in enumerate(part):
                    self._table[k] = feat[j]
                    if hidden is not None:
                        n_real = int(np.sum(todo[k][1] > 0))
                        self._tok_table[k] = hidden[j, :n_real].copy()
                self.chunks += 1
                self.computed += n

    def _evict(self, keep: set) -> None:
        """Drops the least recently used token entries beyond max_token_entries, never one of
        `keep` (the captions of the batch being attached)."""
        over = len(self._tok_table) - self.max_token_entries
        for k in list(self._tok_table):
            if over <= 0:
                break
            if k not in keep:
                del self._tok_table[k]
                over -= 1

    def _token_rows(self, items, length: int) -> np.ndarray:
        """f32[N,length,W] token hidden states of global caption items, zero past each one's
        last real token."""
        width = next(iter(self._table.values())).shape[-1]
        out = np.zeros((len(items), length, width), np.float32)
        for i, (k, _, _) in enumerate(items):
            h = self._tok_table[k]
            self._tok_table.move_to_end(k)
            out[i, :h.shape[0]] = h
        return out

    def _items(self, tokens: np.ndarray, mask: np.ndarray, region: int):
        return [(self._key(region, t, m), t, m) for t, m in zip(tokens, mask)]

    def prefill(self, captions: dict) -> int:
        """Encodes every distinct caption of `captions` (global_tokens/global_mask int[N,L],
        region_tokens/region_mask int[N,3,L], e.g. a whole split from `caption_arrays`) in
        as few chunks as possible, so later batches only look features up. Returns how many
        captions were new."""
        if not captions:
            return 0
        before = self.computed
        items = self._items(np.asarray(captions["global_tokens"]), np.asarray(captions["global_mask"]), -1)
        rt, rm = np.asarray(captions["region_tokens"]), np.asarray(captions["region_mask"])
        for r in range(NUM_REGIONS):
            items += self._items(rt[:, r], rm[:, r], r)
            if self.region_tokens:
                items += self._items(rt[:, r], rm[:, r], -1)
        if self.tokens:
            # Token states of more captions than the table holds would only be evicted again:
            # prefill the first max_token_entries, the rest fill lazily from the batches.
            seen, glob, rest = set(), [], []
            for it in items:
                if it[0][0] >= 0:
                    rest.append(it)
                elif it[0] not in seen:
                    seen.add(it[0])
                    glob.append(it)
            self._fill(glob[:self.max_token_entries] + rest)
            self._fill_pooled_only(glob[self.max_token_entries:])
            self._evict(set())
        else:
            self._fill(items)
        return self.computed - before

    def _fill_pooled_only(self, items) -> None:
        """Pooled features of global captions without keeping their token states."""
        if not items:
            return
        if self._pooled_fn is None:
            self._pooled_fn = jax.jit(self.model.global_text_features)
        keep, fn = self.tokens, self._global_fn
        self.tokens, self._global_fn = False, self._pooled_fn
        try:
            self._fill(items)
        finally:
            self.tokens, self._global_fn = keep, fn

    def features(self, tokens: np.ndarray, mask: np.ndarray, region: int = -1) -> np.ndarray:
        """f32[N,W] pooled features for captions tokens/mask int[N,L] (region -1: global)."""
        items = self._items(np.asarray(tokens), np.asarray(mask), region)
        self._fill(items)
        return np.stack([self._table[k] for k, _, _ in items]) if items else np.zeros((0, 0), np.float32)

    def attach(self, batch: dict) -> dict:
        """A copy of a host batch with `global_text_feat` and `region_text_feat` added (each
        caption's key is built once; new captions of all bones share the tower's chunks)."""
        out = dict(batch)
        glob = self._items(np.asarray(batch["global_tokens"]), np.asarray(batch["global_mask"]), -1)
        rt, rm = np.asarray(batch["region_tokens"]), np.asarray(batch["region_mask"])
        reg = [self._items(rt[:, r], rm[:, r], r) for r in range(NUM_REGIONS)]
        # Region captions through the global tower (their token states), keyed as global captions.
        words = [self._items(rt[:, r], rm[:, r], -1) for r in range(NUM_REGIONS)] if self.region_tokens else []
        self._fill(glob + [it for items in reg + words for it in items])
        out["global_text_feat"] = np.stack([self._table[k] for k, _, _ in glob])
        if self.tokens:
            out["global_token_feat"] = self._token_rows(glob, np.asarray(batch["global_tokens"]).shape[-1])
            if words:
                out["region_token_feat"] = np.stack([self._token_rows(items, rt.shape[-1]) for items in words],
                                                    axis=1)
            self._evict({k for items in [glob, *words] for k, _, _ in items})
        out["region_text_feat"] = np.stack(
            [np.stack([self._table[k] for k, _, _ in items]) for items in reg], axis=1)
        return out

    def prefill_split(self, source: Any, start: int = 0, stop: int | None = None) -> bool:
        """`prefill` with the captions of stored examples [start, stop) of a built split (a
        source with `stored`), when it has at most PREFILL_MAX_EXAMPLES of them; other sources
        (in-memory synthetic ones, whose reading renders images) and larger slices fill the
        cache lazily from the batches. Returns whether it prefilled."""
        stop = len(source) if stop is None else stop
        if not hasattr(source, "stored") or not 0 < stop - start <= PREFILL_MAX_EXAMPLES:
            return False
        self.prefill(caption_arrays(source, start, stop))
        return True


CAPTION_KEYS = ("global_tokens", "global_mask", "region_tokens", "region_mask")
# Prefilling reads every stored record of a split once more (~1.5 ms each on 2 cores); beyond
# this many examples the cache fills lazily from the batches instead.
PREFILL_MAX_EXAMPLES = 200_000


def caption_arrays(source: Any, start: int = 0, stop: int | None = None) -> dict[str, np.ndarray]:
    """The tokenized captions of examples [start, stop) of a split source (a data.source
    DatasetSource, whose stored records are read without building training examples, or any
    sequence of training examples), stacked: the input of `TextFeatureCache.prefill`."""
    stop = len(source) if stop is None else stop
    read = getattr(source, "stored", None) or source.__getitem__
    rows = [read(i) for i in range(start, stop)]
    if not rows:
        return {}
    return {k: np.stack([np.asarray(r[k], np.int32) for r in rows]) for k in CAPTION_KEYS}
