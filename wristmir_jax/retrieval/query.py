"""Queries against an index: image->image (global-only, region-only, two-stage: coarse top-K from
the global searcher and the searcher of each bone the condition weights, merged, then the region
reranker; exhaustive: the reranker over every item, the reference the two-stage search approximates), text->image (free text against global image embeddings, a
region caption against that region's image embeddings), and image->report (against the
database's report text embeddings). Same-patient results are excluded by default.

Everything here works on embeddings; `encode.py` turns an image file, a box or a text into them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.retrieval.coarse import CoarseSearcher, union_candidates
from wristmir_jax.retrieval.exact import ExactSearcher
from wristmir_jax.retrieval.rerank import (Reranker, RerankSettings, condition_weights,
                                           parse_condition)
from wristmir_jax.retrieval.store import Index
from wristmir_jax.schema import NUM_REGIONS, REGION_INDEX

METHODS = ("global", "region", "two_stage", "exhaustive")


@dataclasses.dataclass
class QueryEmbeddings:
    """A batch of image queries. global_ f[Q,D], region f[Q,3,D], crop_mask f[Q,3];
    groups int32[Q] patient codes of the database (-1: an outside query, nothing excluded)."""

    global_: np.ndarray
    region: np.ndarray
    crop_mask: np.ndarray
    groups: np.ndarray | None = None

    def __post_init__(self):
        self.global_ = np.atleast_2d(np.asarray(self.global_, np.float32))
        self.region = np.asarray(self.region, np.float32).reshape(self.global_.shape[0], NUM_REGIONS, -1)
        self.crop_mask = np.asarray(self.crop_mask, np.float32).reshape(self.global_.shape[0], NUM_REGIONS)


def _check_k(k: int) -> int:
    if int(k) <= 0:
        raise UserError(f"k must be a positive integer, got {k}")
    return int(k)


class Retriever:
    """An index with its coarse searcher, reranker and lazily built exact searchers."""

    def __init__(self, index: Index, settings: RerankSettings = RerankSettings()):
        self.index = index
        self.settings = settings
        self.codes = index.patient_codes()
        self.coarse = CoarseSearcher.from_index(index)
        a = index.arrays
        self.reranker = Reranker(a.global_img, a.region_img, a.crop_mask)
        self._exact: dict[str, ExactSearcher] = {}
        self._region_coarse: dict[int, CoarseSearcher] = {}

    # -- helpers ---------------------------------------------------------------------------------
    def _searcher(self, name: str) -> ExactSearcher:
        if name not in self._exact:
            a = self.index.arrays
            if name == "report":
                self._exact[name] = ExactSearcher(a.global_txt, groups=self.codes)
            elif name.startswith("region:"):
                r = int(name.split(":")[1])
                self._exact[name] = ExactSearcher(a.region_img[:, r], groups=self.codes,
                                                  valid=a.crop_mask[:, r] > 0)
        return self._exact[name]

    def region_coarse(self, r: int) -> CoarseSearcher:
        """The coarse searcher over region r's embeddings (ScaNN when the index has one)."""
        if r not in self._region_coarse:
            from wristmir_jax.schema import REGIONS

            self._region_coarse[r] = CoarseSearcher.region_from_index(self.index, REGIONS[r])
        return self._region_coarse[r]

    def coarse_candidates(self, q: "QueryEmbeddings", w: np.ndarray, kc: int, groups) -> np.ndarray:
        """int32[Q, <= kc * (1 + bones)] candidates: the global top-kc, united (when
        settings.coarse_union) with the top-kc of each weighted bone's region searcher for the
        queries that have that crop."""
        _, cand = self.coarse.search(q.global_, kc, query_groups=groups)
        if not self.settings.coarse_union:
            return cand
        lists = [cand]
        for r in np.flatnonzero(np.asarray(w) > 0).tolist():
            has = q.crop_mask[:, r] > 0
            if not has.any():
                continue
            ci = np.full((q.global_.shape[0], kc), -1, np.int32)
            _, found = self.region_coarse(r).search(
                q.region[has, r], kc, query_groups=None if groups is None else np.asarray(groups)[has])
            ci[has] = found
            lists.append(ci)
        return union_candidates(*lists) if len(lists) > 1 else cand

    def from_index_items(self, positions) -> QueryEmbeddings:
        """Queries that are items of this index (their own patient is excluded)."""
        pos = np.atleast_1d(np.asarray(positions))
        a = self.index.arrays
        return QueryEmbeddings(a.global_img[pos], a.region_img[pos], a.crop_mask[pos], self.codes[pos])

    # -- image -> image --------------------------------------------------------------------------
    def image_to_image(self, q: QueryEmbeddings, *, region=None, k: int = 10, method: str = "two_stage",
                       exclude_same_patient: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(scores f32[Q,k], idx int32[Q,k]) best first; idx -1 where fewer than k exist.

        method "global": global similarity only; "region": the condition's region similarity only
        (several regions: their weighted mean, masks renormalised); "two_stage": coarse top-K
        (settings.coarse_k per searcher: global + each weighted bone) reranked with alpha and the
        condition's weights; "exhaustive": that rerank over every database item.
        """
        k = _check_k(k)
        if method not in METHODS:
            raise UserError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
        groups = q.groups if exclude_same_patient else None
        if method == "global":
            return self.coarse.search(q.global_, k, query_groups=groups)
        names = parse_condition(region)
        if method == "region":
            return self.region_only(q, names, k, groups)
        alpha, w = condition_weights(names, self.settings)
        if method == "exhaustive":
            return self.rerank_all(q, alpha, w, k, groups)
        kc = min(max(k, self.settings.coarse_k), self.index.count)
        cand = self.coarse_candidates(q, w, kc, groups)
        return self.reranker({"global": q.global_, "region": q.region, "crop_mask": q.crop_mask},
                             cand, alpha, w, k)

    def region_only(self, q: QueryEmbeddings, names, k: int, groups) -> tuple[np.ndarray, np.ndarray]:
        """Exact search on region similarity. One region: that region's embeddings (items
        without the crop are not searchable); a query without the crop falls back to global.
        Several regions: the reranker with alpha = 0 over every database item."""
        if len(names) == 1:
            r = REGION_INDEX[names[0]]
            s, i = self._searcher(f"region:{r}").search(q.region[:, r], k, query_groups=groups)
            missing = q.crop_mask[:, r] <= 0
            if missing.any():
                gs, gi = self.coarse.search(q.global_[missing], k,
                                            query_groups=None if groups is None else groups[missing])
                s[missing], i[missing] = gs, gi
            return s, i
        _, w = condition_weights(names, self.settings)
        return self.rerank_all(q, 0.0, w, k, groups)

    def rerank_all(self, q: QueryEmbeddings, alpha: float, w: np.ndarray, k: int,
                   groups) -> tuple[np.ndarray, np.ndarray]:
        """The reranker with (alpha, w) over every database item (other patients only)."""
        n = self.index.count
        out_s, out_i = [], []
        for start in range(0, q.global_.shape[0], 64):
            sl = slice(start, start + 64)
            cand = np.broadcast_to(np.arange(n, dtype=np.int32), (q.global_[sl].shape[0], n)).copy()
            if groups is not None:
                g = groups[sl]
                cand[(self.codes[None, :] == g[:, None]) & (g[:, None] >= 0)] = -1
            s, i = self.reranker({"global": q.global_[sl], "region": q.region[sl],
                                  "crop_mask": q.crop_mask[sl]}, cand, alpha, w, k)
            out_s.append(s)
            out_i.append(i)
        return np.concatenate(out_s), np.concatenate(out_i)

    # -- text -> image, image -> report ----------------------------------------------------------
    def text_to_image(self, text_emb, *, region: str | None = None, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Free text (or a global caption) vs global image embeddings; a region caption's
        embedding (`region` given) vs that region's image embeddings."""
        k = _check_k(k)
        t = np.atleast_2d(np.asarray(text_emb, np.float32))
        if region is None:
            return self.coarse.search(t, k)
        names = parse_condition(region)
        if len(names) != 1:
            raise UserError("a text query can name one region at most")
        return self._searcher(f"region:{REGION_INDEX[names[0]]}").search(t, k)

    def text_to_image_conditioned(self, global_t, region_t, bones, *, k: int = 10,
                                  method: str = "two_stage") -> tuple[np.ndarray, np.ndarray]:
        """A free-text query about `bones` (e.g. from reports.anatomy): its global text embedding
        f[Q,D] and its region-caption embeddings f[Q,3,D] (rows of the named bones used) searched
        like an image query conditioned on those bones (same coarse union, rerank and weights),
        against the image embeddings of the shared space. No patient is excluded."""
        names = parse_condition(bones)
        g = np.atleast_2d(np.asarray(global_t, np.float32))
        mask = np.zeros((g.shape[0], NUM_REGIONS), np.float32)
        for n in names:
            mask[:, REGION_INDEX[n]] = 1.0
        q = QueryEmbeddings(g, region_t, mask, None)
        return self.image_to_image(q, region=list(names), k=k, method=method, exclude_same_patient=False)

    def image_to_report(self, q: QueryEmbeddings, *, k: int = 10,
                        exclude_same_patient: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Global image embedding vs the database's report (global caption) text embeddings."""
        k = _check_k(k)
        return self._searcher("report").search(q.global_, k,
                                               query_groups=q.groups if exclude_same_patient else None)
