"""Coarse search over one kind of embedding (the global image embeddings, or one bone's region
embeddings): ScaNN (k-means tree + anisotropic asymmetric
hashing + int8 reordering) for large databases, exact jitted search below EXACT_SEARCH_LIMIT.

Parameter rule (`params_for_size`, every field overridable):
  num_leaves        = clip(round(2 * sqrt(N)), 16, N // 50)     (2000 leaves at N = 1M)
  leaves_to_search  = max(24, ceil(LEAF_FRACTION * num_leaves)) (LEAF_FRACTION = 0.035: 70 of 2000)
  dims_per_block    = 2 (LUT16 asymmetric hashing: 4 bits per 2 dims = 64 bytes at D = 256)
  anisotropic threshold 0.2 (score-aware quantisation for inner products)
  reorder           = 250 candidates re-scored with int8 vectors (D bytes + D float multipliers
                      shared by the whole database), so a 256-d vector costs ~330 bytes in the
                      searcher instead of the 1 KB a float32 reordering copy would take.
  training_sample   = min(N, 250000)
The rule's recall and speed at 1M x 256 are measured by `wristmir bench --suite search`.

A bone-conditioned query draws its candidates from the global searcher AND that bone's region
searcher (`union_candidates`): a case whose bone looks like the query's but whose whole image does
not is still reranked (the global top-K alone dropped such cases before the rerank saw them).

ScaNN searchers are saved with `searcher.serialize(dir)` and loaded with `load_searcher`, after
the store has checked every file's size against the fingerprint. A ScaNN docids pickle is never
written and a folder holding one is refused (no pickle loading of user data).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np

from wristmir_jax.errors import UserError

EXACT_SEARCH_LIMIT = 10_000
LEAF_FRACTION = 0.035
MIN_LEAVES_TO_SEARCH = 24
_DOCIDS_PICKLE = "scann_docids.pkl"


@dataclasses.dataclass(frozen=True)
class ScannParams:
    num_leaves: int
    leaves_to_search: int
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder: int = 250
    reorder_dtype: str = "int8"  # int8 | bfloat16 | float32
    training_sample_size: int = 250_000
    num_neighbors: int = 10


def params_for_size(n: int, dim: int, overrides: dict[str, Any] | None = None) -> ScannParams:
    """The documented size rule (module docstring), with explicit overrides applied on top."""
    leaves = int(round(2.0 * math.sqrt(max(n, 1))))
    leaves = max(1, min(max(16, leaves), max(1, n // 50)))
    to_search = min(leaves, max(MIN_LEAVES_TO_SEARCH, int(math.ceil(LEAF_FRACTION * leaves))))
    dpb = 2 if dim % 2 == 0 else 1
    p = ScannParams(num_leaves=leaves, leaves_to_search=to_search, dims_per_block=dpb,
                    training_sample_size=int(min(n, 250_000)))
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(ScannParams)}
        if unknown:
            raise UserError(f"unknown ScaNN parameter {sorted(unknown)[0]!r}")
        p = dataclasses.replace(p, **overrides)
        if p.reorder_dtype not in ("int8", "bfloat16", "float32"):
            raise UserError(f"reorder_dtype {p.reorder_dtype!r} not in int8|bfloat16|float32")
        if not 1 <= p.leaves_to_search <= p.num_leaves:
            raise UserError(f"leaves_to_search {p.leaves_to_search} must be in 1..{p.num_leaves}")
    return p


def build_scann(database: np.ndarray, params: ScannParams, threads: int = 0):
    """Builds a dot-product ScaNN searcher over database f32[N,D]. Returns (searcher, seconds)."""
    from scann.scann_ops.py import scann_builder, scann_ops_pybind

    database = np.ascontiguousarray(database, np.float32)
    rtype = {"int8": scann_builder.ReorderType.INT8, "bfloat16": scann_builder.ReorderType.BFLOAT16,
             "float32": scann_builder.ReorderType.FLOAT32}[params.reorder_dtype]
    t0 = time.perf_counter()
    b = scann_ops_pybind.builder(database, params.num_neighbors, "dot_product")
    b = b.tree(num_leaves=params.num_leaves, num_leaves_to_search=params.leaves_to_search,
               training_sample_size=params.training_sample_size)
    b = b.score_ah(params.dims_per_block, anisotropic_quantization_threshold=params.anisotropic_threshold,
                   training_sample_size=params.training_sample_size)
    b = b.reorder(params.reorder, quantize=rtype)
    if threads:
        b = b.set_n_training_threads(threads)
    searcher = b.build()
    return searcher, time.perf_counter() - t0


def save_scann(searcher, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    searcher.serialize(folder, relative_path=True)
    stray = os.path.join(folder, _DOCIDS_PICKLE)
    if os.path.exists(stray):
        os.remove(stray)


def load_scann(folder: str):
    """Loads a serialised searcher (the store has already checked its files)."""
    from scann.scann_ops.py import scann_ops_pybind

    if os.path.exists(os.path.join(folder, _DOCIDS_PICKLE)):
        raise UserError("ScaNN folder holds a docids pickle; refusing to load it", path=folder)
    try:
        return scann_ops_pybind.load_searcher(folder, assets_backcompat_shim=False)
    except (ValueError, RuntimeError, OSError) as e:
        raise UserError(f"cannot load the ScaNN searcher ({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                        path=folder) from None


class CoarseSearcher:
    """Top-k by one kind of embedding over the database, excluding a query's own group when asked.

    kind "exact": ExactSearcher (exclusion and validity inside the jitted scan). kind "scann":
    ScaNN asked for k + the largest group size (so that k remain after removing a query's group),
    then filtered. `positions` maps a ScaNN searcher built over a subset (the items that have a
    region crop) back to index positions; results are always index positions.
    """

    def __init__(self, database, *, groups=None, scann_searcher=None, params: ScannParams | None = None,
                 valid=None, positions=None):
        from wristmir_jax.retrieval.exact import ExactSearcher

        database = np.asarray(database)
        self.count, self.dim = database.shape
        self.groups = None if groups is None else np.asarray(groups, np.int32)
        self.max_group = 1 if self.groups is None or self.groups.size == 0 else int(
            np.bincount(self.groups[self.groups >= 0]).max(initial=1))
        self.params = params
        self.positions = None if positions is None else np.asarray(positions, np.int64)
        if scann_searcher is not None:
            self.kind = "scann"
            self._scann = scann_searcher
            want = self.count if self.positions is None else self.positions.size
            if int(scann_searcher.size()) != want:
                raise UserError(f"ScaNN searcher holds {scann_searcher.size()} vectors, the index {want}")
        else:
            self.kind = "exact"
            self._exact = ExactSearcher(database, groups=self.groups, valid=valid)

    @classmethod
    def from_index(cls, index) -> "CoarseSearcher":
        from wristmir_jax.retrieval.store import SCANN_DIR

        groups = index.patient_codes()
        if index.has_scann:
            s = load_scann(os.path.join(index.path, SCANN_DIR))
            return cls(index.arrays.global_img, groups=groups, scann_searcher=s,
                       params=ScannParams(**index.fingerprint["scann"]["params"]))
        return cls(index.arrays.global_img, groups=groups)

    @classmethod
    def region_from_index(cls, index, region: str) -> "CoarseSearcher":
        """Searcher over one bone's region embeddings (items without that crop are never found):
        the index's ScaNN searcher for that bone when it has one, else exact search."""
        from wristmir_jax.retrieval.store import POSITIONS, SCANN_DIR
        from wristmir_jax.schema import REGION_INDEX

        r = REGION_INDEX[region]
        a = index.arrays
        groups = index.patient_codes()
        info = index.region_scann(region)
        if info is not None:
            folder = os.path.join(index.path, f"{SCANN_DIR}_{region}")
            pos = np.load(os.path.join(folder, POSITIONS), allow_pickle=False)
            if pos.ndim != 1 or pos.size != info.get("count") or (pos.size and (
                    pos.min() < 0 or pos.max() >= index.count)):
                raise UserError("ScaNN positions do not match the index", path=folder)
            s = load_scann(folder)  # reads only the files its assets list, not positions.npy
            return cls(a.region_img[:, r], groups=groups, scann_searcher=s, positions=pos,
                       params=ScannParams(**info["params"]))
        return cls(a.region_img[:, r], groups=groups, valid=np.asarray(a.crop_mask[:, r]) > 0)

    def search(self, queries, k: int, *, query_groups=None) -> tuple[np.ndarray, np.ndarray]:
        """queries f[Q,D] -> (scores f32[Q,k], idx int32[Q,k]); idx -1 where fewer than k exist."""
        queries = np.ascontiguousarray(queries, np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        if queries.shape[1] != self.dim:
            raise UserError(f"query dimension {queries.shape[1]} does not match the index dimension {self.dim}")
        if self.kind == "exact":
            return self._exact.search(queries, k, query_groups=query_groups)
        size = self.count if self.positions is None else self.positions.size
        extra = 0 if query_groups is None else self.max_group
        kk = min(size, k + extra)
        pre = max(self.params.reorder if self.params else 0, kk)
        idx, dist = self._scann.search_batched_parallel(queries, final_num_neighbors=kk,
                                                        pre_reorder_num_neighbors=pre)
        idx = np.asarray(idx, np.int64)
        if self.positions is not None:
            idx = np.where(idx >= 0, self.positions[np.clip(idx, 0, None)], -1)
        dist = np.asarray(dist, np.float32)
        out_s = np.full((queries.shape[0], k), -np.inf, np.float32)
        out_i = np.full((queries.shape[0], k), -1, np.int32)
        for q in range(queries.shape[0]):
            keep = idx[q] >= 0
            if query_groups is not None and query_groups[q] >= 0:
                keep &= self.groups[np.clip(idx[q], 0, None)] != query_groups[q]
            sel = np.flatnonzero(keep)[:k]
            out_i[q, :sel.size] = idx[q, sel]
            out_s[q, :sel.size] = dist[q, sel]
        return out_s, out_i


def union_candidates(*lists: np.ndarray) -> np.ndarray:
    """Candidate lists int[Q,K_i] (-1 = none) -> int32[Q, sum K_i]: their union per row, each
    index once, -1 padding. The rerank scores every candidate, so order does not matter."""
    cat = np.concatenate([np.asarray(c, np.int64) for c in lists], axis=1)
    srt = np.sort(cat, axis=1)
    dup = np.zeros_like(srt, bool)
    dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
    srt[dup] = -1
    return srt.astype(np.int32)
