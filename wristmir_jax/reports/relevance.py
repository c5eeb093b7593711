"""Report-derived graded relevance (after RadIR): how similar two mined records are, per region
and globally, as a jittable function of the integer-encoded records (schema.encode_record).

The formula (all values in [0, 1]; statuses 0 absent, 1 present, 2 uncertain):

Per region r, for records a and b:
  S(sa, sb) = STATUS_SIM[sa, sb] with STATUS_SIM = [[1, 0, .25], [0, 1, .5], [.25, .5, 1]]
  If both are absent:          rel_r = 1
  If exactly one is absent:    rel_r = S(sa, sb)            (0 vs present, .25 vs uncertain)
  Otherwise (both fractured):  rel_r = S(sa, sb) * (0.5 + 0.5 * D)
    D = 0.40 * pattern + 0.20 * displaced + 0.15 * angulated + 0.25 * healing, where
      pattern   = PATTERN_SIM[pa, pb] (1 on the diagonal; 0.5 between the incomplete patterns
                  buckle, greenstick, plastic bowing; 0.5 when one pattern is unknown and the
                  other known; 0 otherwise), and for two Salter-Harris fractures it is the grade
                  similarity instead: 1 - |ga - gb| / 4 with both grades known, 1 with both
                  unknown, 0.5 with one unknown;
      displaced, angulated = 1 if equal, 0.5 if exactly one is unknown, 0 if opposite;
      healing   = 1 if equal else 0.
  So fracture status dominates: two fractures of the same region never score below 0.5 (both
  present), a normal region against a fracture scores 0, and the details refine within [0.5, 1].

Global (row 3):
  The fracture part P averages rel_r over the regions involved in the pair (a region is involved
  when either record has a non-absent status there) together with a pseudo-region "fracture
  elsewhere" (involved when either has other_fracture; its relevance is 1 if both have it, else
  0). With nothing involved (two normal studies) P = 1.
  The ancillary part A is the fraction of agreeing flags among cast, hardware and soft-tissue
  swelling. Global = P * (0.75 + 0.25 * A). Laterality is ignored: a left buckle fracture is as
  relevant to a right buckle fracture as any other.

Identical records give 1 in every row; a normal study against a displaced radius fracture gives 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wristmir_jax.schema import (FIELD_INDEX, GLOBAL_INDEX, NUM_REGIONS, PATTERNS, RECORD_LEN,
                                 region_offset)

STATUS_SIM = np.array([[1.0, 0.0, 0.25],
                       [0.0, 1.0, 0.5],
                       [0.25, 0.5, 1.0]], np.float32)

DETAIL_WEIGHTS = {"pattern": 0.40, "displaced": 0.20, "angulated": 0.15, "healing": 0.25}
ANCILLARY_FLAGS = ("cast", "hardware", "soft_tissue_swelling")
SH_CODE = 1 + PATTERNS.index("salter_harris")
_INCOMPLETE = ("buckle", "greenstick", "plastic_bowing")


def _pattern_sim_matrix() -> np.ndarray:
    """PATTERN_SIM over pattern codes (0 = unknown, 1 + PATTERNS.index otherwise)."""
    n = len(PATTERNS) + 1
    m = np.zeros((n, n), np.float32)
    for i in range(n):
        for j in range(n):
            if i == j:
                m[i, j] = 1.0
            elif i == 0 or j == 0:
                m[i, j] = 0.5
            elif PATTERNS[i - 1] in _INCOMPLETE and PATTERNS[j - 1] in _INCOMPLETE:
                m[i, j] = 0.5
    return m


PATTERN_SIM = _pattern_sim_matrix()


def _tri_sim(x, y):
    """Similarity of two tri-state ints (0 unknown, 1 false, 2 true)."""
    return jnp.where(x == y, 1.0, jnp.where((x == 0) | (y == 0), 0.5, 0.0))


def _region_relevance(a, b, r: int):
    """a: int[A,1,F], b: int[1,B,F] -> f32[A,B] for region index r."""
    o = region_offset(r)
    sa, sb = a[..., o + FIELD_INDEX["fracture"]], b[..., o + FIELD_INDEX["fracture"]]
    pa, pb = a[..., o + FIELD_INDEX["pattern"]], b[..., o + FIELD_INDEX["pattern"]]
    ga, gb = a[..., o + FIELD_INDEX["salter_harris"]], b[..., o + FIELD_INDEX["salter_harris"]]
    status = jnp.asarray(STATUS_SIM)[sa, sb]
    both_sh = (pa == SH_CODE) & (pb == SH_CODE)
    grade = jnp.where((ga > 0) & (gb > 0), 1.0 - jnp.abs(ga - gb).astype(jnp.float32) / 4.0,
                      jnp.where((ga == 0) & (gb == 0), 1.0, 0.5))
    pattern = jnp.where(both_sh, grade, jnp.asarray(PATTERN_SIM)[pa, pb])
    disp = _tri_sim(a[..., o + FIELD_INDEX["displaced"]], b[..., o + FIELD_INDEX["displaced"]])
    ang = _tri_sim(a[..., o + FIELD_INDEX["angulated"]], b[..., o + FIELD_INDEX["angulated"]])
    heal = (a[..., o + FIELD_INDEX["healing"]] == b[..., o + FIELD_INDEX["healing"]]).astype(jnp.float32)
    detail = (DETAIL_WEIGHTS["pattern"] * pattern + DETAIL_WEIGHTS["displaced"] * disp
              + DETAIL_WEIGHTS["angulated"] * ang + DETAIL_WEIGHTS["healing"] * heal)
    a_abs, b_abs = sa == 0, sb == 0
    rel = jnp.where(a_abs & b_abs, 1.0,
                    jnp.where(a_abs | b_abs, status, status * (0.5 + 0.5 * detail)))
    involved = ~(a_abs & b_abs)
    return rel.astype(jnp.float32), involved


@jax.jit
def relevance(rec_a: jax.Array, rec_b: jax.Array) -> jax.Array:
    """int32[A, RECORD_LEN] x int32[B, RECORD_LEN] -> f32[4, A, B] in [0, 1].

    Rows 0..2: per region in schema.REGIONS order; row 3: global. See the module docstring for
    the formula. A single record (1-D) is treated as a batch of one.
    """
    rec_a = jnp.asarray(rec_a, jnp.int32)
    rec_b = jnp.asarray(rec_b, jnp.int32)
    if rec_a.ndim == 1:
        rec_a = rec_a[None]
    if rec_b.ndim == 1:
        rec_b = rec_b[None]
    if rec_a.shape[-1] != RECORD_LEN or rec_b.shape[-1] != RECORD_LEN:
        raise ValueError(f"records must have last dimension {RECORD_LEN}, got "
                         f"{rec_a.shape} and {rec_b.shape}")
    a, b = rec_a[:, None, :], rec_b[None, :, :]
    rows, inv = [], []
    for r in range(NUM_REGIONS):
        rel, involved = _region_relevance(a, b, r)
        rows.append(rel)
        inv.append(involved)
    oa, ob = a[..., GLOBAL_INDEX["other_fracture"]], b[..., GLOBAL_INDEX["other_fracture"]]
    rows_fx = rows + [(oa == ob).astype(jnp.float32)]
    inv_fx = inv + [(oa > 0) | (ob > 0)]
    inv_f = jnp.stack(inv_fx).astype(jnp.float32)
    rel_f = jnp.stack(rows_fx)
    n_inv = inv_f.sum(0)
    fracture_part = jnp.where(n_inv > 0, (inv_f * rel_f).sum(0) / jnp.maximum(n_inv, 1.0), 1.0)
    agree = [(a[..., GLOBAL_INDEX[k]] == b[..., GLOBAL_INDEX[k]]).astype(jnp.float32)
             for k in ANCILLARY_FLAGS]
    ancillary = sum(agree) / len(agree)
    glob = fracture_part * (0.75 + 0.25 * ancillary)
    return jnp.stack(rows + [glob]).astype(jnp.float32)
