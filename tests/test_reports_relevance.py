"""Captions (canonical, deterministic, injective on findings) and the jitted graded relevance,
checked against an independent per-pair Python loop over decoded dict records that implements
the formula in the relevance module's docstring."""

import itertools
import random

import jax
import numpy as np
import pytest

from wristmir_jax.reports.captions import caption_id, captions
from wristmir_jax.reports.relevance import relevance
from wristmir_jax.schema import (PATTERNS, REGIONS, decode_record, empty_global, empty_region,
                                 encode_record, validate_findings)


def random_findings(rng: random.Random):
    regions = {}
    for name in REGIONS:
        r = empty_region()
        status = rng.choice(["absent", "absent", "present", "uncertain"])
        r["fracture"] = status
        if status != "absent":
            r["pattern"] = rng.choice([None, *PATTERNS])
            if r["pattern"] == "salter_harris":
                r["salter_harris"] = rng.choice([None, 1, 2, 3, 4, 5])
            r["displaced"] = rng.choice([None, True, False])
            r["angulated"] = rng.choice([None, True, False])
            r["healing"] = rng.random() < 0.3
        regions[name] = r
    g = empty_global()
    g["laterality"] = rng.choice([None, "left", "right"])
    for k in ("cast", "hardware", "soft_tissue_swelling", "other_fracture"):
        g[k] = rng.random() < 0.3
    validate_findings(regions, g)
    return regions, g


# ---- the reference: the documented formula, written out per pair ---------------------------------
STATUS = {("absent", "absent"): 1.0, ("present", "present"): 1.0, ("uncertain", "uncertain"): 1.0,
          ("absent", "present"): 0.0, ("absent", "uncertain"): 0.25, ("present", "uncertain"): 0.5}
INCOMPLETE = {"buckle", "greenstick", "plastic_bowing"}


def ref_status(a, b):
    return STATUS.get((a, b), STATUS.get((b, a)))


def ref_tri(a, b):
    if a == b:
        return 1.0
    return 0.5 if (a is None or b is None) else 0.0


def ref_pattern(ra, rb):
    pa, pb = ra["pattern"], rb["pattern"]
    if pa == "salter_harris" and pb == "salter_harris":
        ga, gb = ra["salter_harris"], rb["salter_harris"]
        if ga is not None and gb is not None:
            return 1.0 - abs(ga - gb) / 4.0
        return 1.0 if ga == gb else 0.5
    if pa == pb:
        return 1.0
    if pa is None or pb is None:
        return 0.5
    return 0.5 if (pa in INCOMPLETE and pb in INCOMPLETE) else 0.0


def ref_region(ra, rb):
    sa, sb = ra["fracture"], rb["fracture"]
    if sa == "absent" and sb == "absent":
        return 1.0
    s = ref_status(sa, sb)
    if sa == "absent" or sb == "absent":
        return s
    d = (0.40 * ref_pattern(ra, rb) + 0.20 * ref_tri(ra["displaced"], rb["displaced"])
         + 0.15 * ref_tri(ra["angulated"], rb["angulated"]) + 0.25 * float(ra["healing"] == rb["healing"]))
    return s * (0.5 + 0.5 * d)


def ref_relevance(fa, fb):
    (ra, ga), (rb, gb) = fa, fb
    rows = [ref_region(ra[n], rb[n]) for n in REGIONS]
    involved = [rows[i] for i, n in enumerate(REGIONS)
                if ra[n]["fracture"] != "absent" or rb[n]["fracture"] != "absent"]
    if ga["other_fracture"] or gb["other_fracture"]:
        involved.append(1.0 if ga["other_fracture"] == gb["other_fracture"] else 0.0)
    p = sum(involved) / len(involved) if involved else 1.0
    anc = sum(float(ga[k] == gb[k]) for k in ("cast", "hardware", "soft_tissue_swelling")) / 3.0
    return rows + [p * (0.75 + 0.25 * anc)]


def test_relevance_matches_the_per_pair_reference():
    rng = random.Random(0)
    fa = [random_findings(rng) for _ in range(9)]
    fb = [random_findings(rng) for _ in range(7)]
    rec_a = np.stack([encode_record(*f) for f in fa])
    rec_b = np.stack([encode_record(*f) for f in fb])
    got = np.asarray(relevance(rec_a, rec_b))
    assert got.shape == (4, 9, 7) and got.dtype == np.float32
    ref = np.zeros((4, 9, 7))
    for i, j in itertools.product(range(9), range(7)):
        # the reference reads the decoded records, as a consumer of the integer encoding would
        ref[:, i, j] = ref_relevance(decode_record(rec_a[i]), decode_record(rec_b[j]))
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert got.min() >= 0.0 and got.max() <= 1.0


def test_relevance_identity_symmetry_and_extremes():
    rng = random.Random(1)
    recs = np.stack([encode_record(*random_findings(rng)) for _ in range(16)])
    rel = np.asarray(jax.jit(relevance)(recs, recs))
    for row in range(4):
        np.testing.assert_allclose(np.diag(rel[row]), 1.0, atol=1e-6)
        np.testing.assert_allclose(rel[row], rel[row].T, atol=1e-6)
    normal = encode_record({r: empty_region() for r in REGIONS}, empty_global())
    regions = {r: empty_region() for r in REGIONS}
    regions["distal_radius"].update(fracture="present", pattern="complete", displaced=True, angulated=True)
    displaced = encode_record(regions, empty_global())
    rel = np.asarray(relevance(normal[None], displaced[None]))[:, 0, 0]
    assert rel[0] == 0.0 and rel[3] <= 0.1
    assert rel[1] == 1.0 and rel[2] == 1.0  # the other regions agree (both normal)


def test_relevance_orders_closer_findings_higher():
    def rec(**upd):
        regions = {r: empty_region() for r in REGIONS}
        regions["distal_radius"].update(upd)
        return encode_record(regions, empty_global())

    q = rec(fracture="present", pattern="buckle", displaced=False)
    same_pattern_other_detail = rec(fracture="present", pattern="buckle", displaced=True)
    other_pattern = rec(fracture="present", pattern="salter_harris", salter_harris=2, displaced=True)
    hedged = rec(fracture="uncertain", pattern="buckle", displaced=False)
    normal = rec(fracture="absent")
    cands = np.stack([q, same_pattern_other_detail, other_pattern, hedged, normal])
    r = np.asarray(relevance(q[None], cands))[0, 0]
    assert r[0] > r[1] > r[2] > r[4] and r[0] > r[3] > r[4]
    assert r[2] >= 0.5  # a fracture of the same region never scores below 0.5


def test_captions_are_canonical_and_distinguish_findings():
    regions = {r: empty_region() for r in REGIONS}
    regions["distal_radius"].update(fracture="present", pattern="buckle", displaced=False)
    g = empty_global()
    g["laterality"] = "left"
    c = captions(regions, g)
    assert c["distal_radius"] == "distal radius: buckle fracture, nondisplaced"
    assert c["distal_ulna"] == "distal ulna: no fracture"
    assert c["global"].startswith("left wrist.") and "distal radius: buckle fracture" in c["global"]
    regions2 = {r: empty_region() for r in REGIONS}
    regions2["distal_radius"].update(fracture="present", pattern="salter_harris", salter_harris=2)
    assert captions(regions2, g)["distal_radius"] == "distal radius: Salter-Harris type II fracture"

    rng = random.Random(2)
    seen: dict[tuple, tuple] = {}
    for _ in range(400):
        f = random_findings(rng)
        key = tuple(encode_record(*f).tolist())
        cap = captions(*f)
        assert captions(*f) == cap
        region_caps = tuple(cap[r] for r in REGIONS)
        if key in seen:
            assert seen[key] == (cap["global"], region_caps)
        seen[key] = (cap["global"], region_caps)
    # distinct findings (ignoring nothing) give distinct global captions
    by_caption = {}
    for key, (gcap, _) in seen.items():
        assert by_caption.setdefault(gcap, key) == key


def test_caption_id_is_stable_31_bit():
    ids = {caption_id(t) for t in ("distal radius: no fracture", "distal ulna: no fracture", "")}
    assert len(ids) == 3
    assert all(0 <= i < 2**31 for i in ids)
    assert caption_id("distal radius: no fracture") == caption_id("distal radius: no fracture")
    import hashlib
    expected = int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "big") & 0x7FFFFFFF
    assert caption_id("abc") == expected


def test_relevance_rejects_wrong_record_length():
    with pytest.raises(ValueError):
        relevance(np.zeros((2, 5), np.int32), np.zeros((2, 5), np.int32))
