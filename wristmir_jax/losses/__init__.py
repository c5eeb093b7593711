"""Losses: contrastive objectives as pure functions `loss(emb, batch, cfg) -> (scalar, aux)`,
a registry by name, the weighted objective, and a ring (shard_map + ppermute) variant whose
memory does not grow with the global batch. Imports only jax, numpy and the standard library.

Registered terms (parameters with defaults; see contrastive.py for the formulas and the handling
of identical captions and missing crops):
  global_clip, local_clip                  symmetric InfoNCE (CLIP); local = per bone, pooled
  global_siglip, local_siglip              sigmoid loss with learned bias (SigLIP)
  global_multipos, local_multipos          multi-positive InfoNCE        threshold=0.75
  global_soft, local_soft                  soft-target InfoNCE           temperature=0.1
  global_rank, local_rank                  relevance-ranking triplets    relevance_gap=0.25,
                                                                         margin=0.1, chunk=32
  global_supcon, local_supcon              image-image supervised contrastive, positives from
                                           report relevance    threshold=0.75, temperature=0.1
  anatomy_soft                             anatomy-conditioned soft InfoNCE over all bones
  word_region                              GLoRIA-style word <-> location attention between the
                                           global caption and the global image's spatial
                                           features, symmetric InfoNCE   agg=5.0
                                           (needs model.word_features; see word_region.py)
  region_grounding                         location-conditioned word attention: each bone's
                                           region-caption words attend over the global image,
                                           KL to the localizer's box (needs model.word_features
                                           and model.region_words; see region_grounding.py)
  {global,local}_{clip,siglip,multipos}_ring   the same values and gradients computed blockwise
                                           over the mesh's data axis    mesh=None, axis="data"
                                           (+ threshold for multipos)
The objective's config shape is documented in objective.py.
"""

from wristmir_jax.losses import contrastive, region_grounding, ring, word_region  # noqa: F401  (registers the terms)
from wristmir_jax.losses.objective import objective
from wristmir_jax.losses.registry import get, names, register

__all__ = ["objective", "register", "get", "names", "contrastive", "region_grounding", "ring", "word_region"]
