"""Plain loss terms against independent numpy references (explicit loops), gradients against
central finite differences of those references (float64), the documented masking of missing
crops and identical captions, and the registry / weighted objective."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import assert_grad_matches_fd

from wristmir_jax import losses

B, D = 8, 5


def make_inputs(seed=0, b=B, d=D, dup_captions=True, missing=True):
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    emb = {
        "global_img": unit(rng.normal(size=(b, d))), "global_txt": unit(rng.normal(size=(b, d))),
        "region_img": unit(rng.normal(size=(b, 3, d))),
        "region_txt": unit(rng.normal(size=(b, 3, d))),
        "global_scale": 4.0, "global_bias": -1.5, "local_scale": 3.0, "local_bias": -0.7,
    }
    crop_mask = np.ones((b, 3))
    if missing:
        crop_mask[1, 0] = 0.0
        crop_mask[[0, 3, 6], 2] = 0.0
    if dup_captions:
        gcid = rng.integers(0, 4, b)
        rcid = rng.integers(0, 3, (b, 3))
    else:
        gcid = np.arange(b)
        rcid = np.tile(np.arange(b)[:, None], (1, 3))
    batch = {"crop_mask": crop_mask, "global_caption_id": gcid.astype(np.int32),
             "region_caption_id": rcid.astype(np.int32),
             "relevance": rng.uniform(size=(4, b, b)),
             "record": np.zeros((b, 23), np.int32)}
    return emb, batch


def to_jax(tree, dtype):
    return {k: (jnp.asarray(v, dtype) if np.asarray(v).dtype.kind == "f" else jnp.asarray(v))
            for k, v in tree.items()}


# ---------------------------------------------------------------- numpy references (float64)

def ref_sets(emb, batch, view):
    """Pair sets as plain dicts: one for the global view, one per bone for the local view."""
    if view == "global":
        return [dict(img=emb["global_img"], txt=emb["global_txt"],
                     valid=np.ones(len(emb["global_img"]), bool), cid=batch["global_caption_id"],
                     rel=batch["relevance"][3], scale=emb["global_scale"],
                     bias=emb["global_bias"])]
    return [dict(img=emb["region_img"][:, r], txt=emb["region_txt"][:, r],
                 valid=batch["crop_mask"][:, r] > 0.5, cid=batch["region_caption_id"][:, r],
                 rel=batch["relevance"][r], scale=emb["local_scale"], bias=emb["local_bias"])
            for r in range(3)]


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def eff_rel(s, i, j):
    return 1.0 if (i == j or s["cid"][i] == s["cid"][j]) else float(s["rel"][i, j])


def ref_clip(sets, threshold=None):
    i2t = t2i = 0.0
    count = 0
    for s in sets:
        n = len(s["img"])
        logit = lambda i, j: s["scale"] * float(np.dot(s["img"][i], s["txt"][j]))  # noqa: E731

        def keep(i, j):  # image i, text j in the denominators?
            if i == j:
                return True
            if s["cid"][i] == s["cid"][j]:
                return False
            return threshold is None or s["rel"][i, j] < threshold

        for i in range(n):
            if not s["valid"][i]:
                continue
            count += 1
            i2t += lse([logit(i, j) for j in range(n) if s["valid"][j] and keep(i, j)]) - logit(i, i)
            t2i += lse([logit(j, i) for j in range(n) if s["valid"][j] and keep(j, i)]) - logit(i, i)
    return 0.5 * (i2t + t2i) / max(count, 1)


def ref_siglip(sets):
    total, count = 0.0, 0
    for s in sets:
        n = len(s["img"])
        for i in range(n):
            if not s["valid"][i]:
                continue
            count += 1
            for j in range(n):
                if not s["valid"][j]:
                    continue
                z = 1.0 if (i == j or s["cid"][i] == s["cid"][j]) else -1.0
                x = z * (s["scale"] * float(np.dot(s["img"][i], s["txt"][j])) + s["bias"])
                total += -math.log(1.0 / (1.0 + math.exp(-x)))
    return total / max(count, 1)


def _soft_ce(query_logits, cand_logits_all, target_rels, tau):
    """-sum_c t_c log softmax(all)_c with t = softmax(target_rels / tau) over the target set."""
    z = lse(cand_logits_all)
    tz = lse([r / tau for r in target_rels])
    return -sum(math.exp(r / tau - tz) * (q - z) for r, q in zip(target_rels, query_logits))


def ref_soft(sets, temperature=0.1):
    i2t = t2i = 0.0
    count = 0
    for s in sets:
        n = len(s["img"])
        V = [j for j in range(n) if s["valid"][j]]
        logit = lambda i, j: s["scale"] * float(np.dot(s["img"][i], s["txt"][j]))  # noqa: E731
        for i in V:
            count += 1
            row = [logit(i, j) for j in V]
            i2t += _soft_ce(row, row, [eff_rel(s, i, j) for j in V], temperature)
            col = [logit(j, i) for j in V]
            t2i += _soft_ce(col, col, [eff_rel(s, j, i) for j in V], temperature)
    return 0.5 * (i2t + t2i) / max(count, 1)


def ref_supcon(sets, threshold=0.75, temperature=0.1):
    total, count = 0.0, 0
    for s in sets:
        V = [j for j in range(len(s["img"])) if s["valid"][j]]
        for i in V:
            others = [k for k in V if k != i]
            pos = [j for j in others if s["cid"][i] == s["cid"][j] or s["rel"][i, j] >= threshold]
            if not pos:
                continue
            logit = lambda j: float(np.dot(s["img"][i], s["img"][j])) / temperature  # noqa: E731
            z = lse([logit(k) for k in others])
            total += -sum(logit(j) - z for j in pos) / len(pos)
            count += 1
    return total / max(count, 1)


def ref_rank(sets, relevance_gap=0.25, margin=0.1):
    total, count = 0.0, 0
    for s in sets:
        n = len(s["img"])
        V = [j for j in range(n) if s["valid"][j]]
        cos = lambda i, j: float(np.dot(s["img"][i], s["txt"][j]))  # noqa: E731
        for a in V:
            for j in V:
                for k in V:
                    if s["cid"][j] == s["cid"][k]:
                        continue
                    if eff_rel(s, a, j) - eff_rel(s, a, k) >= relevance_gap:   # image anchor
                        total += max(0.0, margin - (cos(a, j) - cos(a, k)))
                        count += 1
                    if eff_rel(s, j, a) - eff_rel(s, k, a) >= relevance_gap:   # text anchor
                        total += max(0.0, margin - (cos(j, a) - cos(k, a)))
                        count += 1
    return total / max(count, 1)


def ref_anatomy(sets, temperature=0.1):
    items = [(r, i) for r, s in enumerate(sets) for i in range(len(s["img"])) if s["valid"][i]]
    scale = sets[0]["scale"]
    logit = lambda q, c: scale * float(np.dot(sets[q[0]]["img"][q[1]],  # noqa: E731
                                              sets[c[0]]["txt"][c[1]]))
    i2t = t2i = 0.0
    for q in items:
        r, i = q
        own = [c for c in items if c[0] == r]
        i2t += _soft_ce([logit(q, c) for c in own], [logit(q, c) for c in items],
                        [eff_rel(sets[r], i, c[1]) for c in own], temperature)
        t2i += _soft_ce([logit(c, q) for c in own], [logit(c, q) for c in items],
                        [eff_rel(sets[r], c[1], i) for c in own], temperature)
    return 0.5 * (i2t + t2i) / max(len(items), 1)


REFERENCES = {
    "global_clip": lambda e, b, p: ref_clip(ref_sets(e, b, "global")),
    "local_clip": lambda e, b, p: ref_clip(ref_sets(e, b, "local")),
    "global_siglip": lambda e, b, p: ref_siglip(ref_sets(e, b, "global")),
    "local_siglip": lambda e, b, p: ref_siglip(ref_sets(e, b, "local")),
    "global_multipos": lambda e, b, p: ref_clip(ref_sets(e, b, "global"), p["threshold"]),
    "local_multipos": lambda e, b, p: ref_clip(ref_sets(e, b, "local"), p["threshold"]),
    "global_soft": lambda e, b, p: ref_soft(ref_sets(e, b, "global"), p["temperature"]),
    "local_soft": lambda e, b, p: ref_soft(ref_sets(e, b, "local"), p["temperature"]),
    "global_rank": lambda e, b, p: ref_rank(ref_sets(e, b, "global"), p["relevance_gap"],
                                            p["margin"]),
    "local_rank": lambda e, b, p: ref_rank(ref_sets(e, b, "local"), p["relevance_gap"],
                                           p["margin"]),
    "anatomy_soft": lambda e, b, p: ref_anatomy(ref_sets(e, b, "local"), p["temperature"]),
    "global_supcon": lambda e, b, p: ref_supcon(ref_sets(e, b, "global"), p["threshold"], p["temperature"]),
    "local_supcon": lambda e, b, p: ref_supcon(ref_sets(e, b, "local"), p["threshold"], p["temperature"]),
}
PARAMS = {
    "global_multipos": {"threshold": 0.75}, "local_multipos": {"threshold": 0.6},
    "global_soft": {"temperature": 0.2}, "local_soft": {"temperature": 0.1},
    "global_rank": {"relevance_gap": 0.25, "margin": 0.3, "chunk": 3},
    "local_rank": {"relevance_gap": 0.4, "margin": 0.2, "chunk": 4},
    "anatomy_soft": {"temperature": 0.25},
    "global_supcon": {"threshold": 0.6, "temperature": 0.2}, "local_supcon": {"threshold": 0.75, "temperature": 0.1},
}
GLOBAL_FIELDS = ("global_img", "global_txt", "global_scale", "global_bias")
LOCAL_FIELDS = ("region_img", "region_txt", "local_scale", "local_bias")


def test_every_plain_term_has_a_reference():
    # word_region and region_grounding have their own reference and finite-difference tests
    # (tests/test_word_region.py, tests/test_region_grounding.py).
    plain = {n for n in losses.names() if not n.endswith("_ring")} - {"word_region", "region_grounding"}
    assert plain == set(REFERENCES)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("seed", [0, 1])
def test_term_matches_numpy_reference(name, seed):
    emb, batch = make_inputs(seed)
    params = PARAMS.get(name, {})
    want = REFERENCES[name](emb, batch, params)
    got, aux = jax.jit(lambda e, b: losses.get(name)(e, b, params))(
        to_jax(emb, jnp.float32), to_jax(batch, jnp.float32))
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert all(np.ndim(v) == 0 for v in aux.values())


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_gradient_matches_finite_differences(name):
    emb, batch = make_inputs(3)
    params = PARAMS.get(name, {})
    fields = GLOBAL_FIELDS if name.startswith("global") else LOCAL_FIELDS
    with jax.enable_x64(True):
        grad = jax.jit(jax.grad(lambda e, b: losses.get(name)(e, b, params)[0]))(
            to_jax(emb, jnp.float64), to_jax(batch, jnp.float64))
        grad = {k: np.asarray(v) for k, v in grad.items()}
    scalars = tuple(f for f in fields if np.shape(emb[f]) == ())
    assert_grad_matches_fd(grad, emb, lambda e: REFERENCES[name](e, batch, params), scalars=scalars,
                           fields=tuple(f for f in fields if f not in scalars), per_field=3, seed=7,
                           atol=1e-7, min_moved=3)
    # Terms never touch the other level's embeddings.
    other = LOCAL_FIELDS if fields is GLOBAL_FIELDS else GLOBAL_FIELDS
    if name != "anatomy_soft":
        assert all(not np.any(grad[f]) for f in other)


# ---------------------------------------------------------------- documented masking behaviour

_JITTED = {}


def _value_and_grad(name, params):
    key = (name, tuple(sorted((params or {}).items())))
    if key not in _JITTED:
        fn = losses.get(name)
        _JITTED[key] = jax.jit(jax.value_and_grad(lambda e, b: fn(e, b, params)[0]))
    return _JITTED[key]


def _value(name, emb, batch, params=None):
    v, _ = _value_and_grad(name, params)(to_jax(emb, jnp.float32), to_jax(batch, jnp.float32))
    return float(v)


@pytest.mark.parametrize("name", ["local_clip", "local_siglip", "local_multipos", "local_soft",
                                  "local_rank", "anatomy_soft"])
def test_missing_crops_are_neither_queries_nor_candidates(name):
    emb, batch = make_inputs(4)
    params = PARAMS.get(name, {})
    before = _value(name, emb, batch, params)
    changed = {k: np.array(v) for k, v in emb.items()}
    rng = np.random.default_rng(9)
    for b_idx, r in zip(*np.nonzero(batch["crop_mask"] < 0.5)):
        changed["region_img"][b_idx, r] = rng.normal(size=D)
        changed["region_txt"][b_idx, r] = rng.normal(size=D)
    assert _value(name, changed, batch, params) == pytest.approx(before, rel=1e-6)
    _, grad = _value_and_grad(name, params)(to_jax(emb, jnp.float32), to_jax(batch, jnp.float32))
    missing = batch["crop_mask"] < 0.5
    assert not np.any(np.asarray(grad["region_img"])[missing])
    assert not np.any(np.asarray(grad["region_txt"])[missing])
    assert np.any(np.asarray(grad["region_img"])[~missing])


def test_clip_identical_captions_leave_the_denominator():
    emb, batch = make_inputs(5, dup_captions=False)
    assert _value("global_clip", emb, batch) > 0.1
    same = dict(batch, global_caption_id=np.zeros(B, np.int32))
    # Every off-diagonal pair shares the caption: only the positive is left, loss exactly 0.
    assert _value("global_clip", emb, same) == pytest.approx(0.0, abs=1e-6)
    # Two rows sharing a caption: text 1 is no negative of image 0 nor text 0 of image 1.
    two = dict(batch, global_caption_id=np.array([0, 0, 2, 3, 4, 5, 6, 7], np.int32))
    assert _value("global_clip", emb, two) == pytest.approx(
        ref_clip(ref_sets(emb, two, "global")), rel=1e-5)
    assert _value("global_clip", emb, two) < _value("global_clip", emb, batch)


def test_siglip_identical_captions_are_positives():
    emb, batch = make_inputs(6, dup_captions=False)
    same = dict(batch, global_caption_id=np.zeros(B, np.int32))
    logits = emb["global_scale"] * emb["global_img"] @ emb["global_txt"].T + emb["global_bias"]
    want = np.sum(np.log1p(np.exp(-logits))) / B          # every pair labelled +1
    assert _value("global_siglip", emb, same) == pytest.approx(want, rel=1e-5)


def test_multipos_threshold_limits():
    emb, batch = make_inputs(7)
    # threshold above 1: nothing removed beyond identical captions, i.e. plain CLIP
    assert _value("global_multipos", emb, batch, {"threshold": 1.01}) == pytest.approx(
        _value("global_clip", emb, batch), rel=1e-6)
    # threshold 0: every other pair removed, only the positive is left
    assert _value("global_multipos", emb, batch, {"threshold": 0.0}) == pytest.approx(0.0, abs=1e-6)
    assert _value("global_multipos", emb, batch, {"threshold": 0.75}) < _value(
        "global_clip", emb, batch)


def test_soft_targets_follow_relevance():
    emb, batch = make_inputs(8, dup_captions=False)
    # With relevance = identity the soft targets are one-hot at low temperature: CLIP.
    eye = dict(batch, relevance=np.broadcast_to(np.eye(B), (4, B, B)).copy())
    assert _value("global_soft", emb, eye, {"temperature": 0.01}) == pytest.approx(
        _value("global_clip", emb, eye), rel=1e-5)
    # Identical captions get the true pair's target: with all captions equal the targets are
    # uniform whatever the relevance says.
    same = dict(batch, global_caption_id=np.zeros(B, np.int32))
    flat = dict(same, relevance=np.zeros((4, B, B)))
    assert _value("global_soft", emb, same) == pytest.approx(_value("global_soft", emb, flat),
                                                             rel=1e-6)


def test_rank_orders_by_relevance():
    emb, batch = make_inputs(10, dup_captions=False)
    rel = np.zeros((4, B, B))
    rel[3] = np.eye(B)
    ordered = {k: np.array(v) for k, v in emb.items()}
    ordered["global_txt"] = ordered["global_img"].copy()   # every positive is the most similar
    params = {"relevance_gap": 0.5, "margin": 0.0}
    b2 = dict(batch, relevance=rel)
    assert _value("global_rank", ordered, b2, params) == pytest.approx(0.0, abs=1e-7)
    assert _value("global_rank", emb, b2, params) > 0.0


def test_rank_rejects_zero_gap():
    emb, batch = make_inputs(0)
    with pytest.raises(ValueError, match="relevance_gap"):
        losses.get("global_rank")(to_jax(emb, jnp.float32), to_jax(batch, jnp.float32),
                                  {"relevance_gap": 0.0})


def test_relevance_terms_need_relevance():
    emb, batch = make_inputs(0)
    del batch["relevance"]
    with pytest.raises(ValueError, match="relevance"):
        losses.get("global_multipos")(to_jax(emb, jnp.float32), to_jax(batch, jnp.float32), {})


# ---------------------------------------------------------------- registry and objective

def test_objective_is_the_weighted_sum():
    emb, batch = make_inputs(11)
    e, b = to_jax(emb, jnp.float32), to_jax(batch, jnp.float32)
    cfg = {"terms": {"global_clip": 2.0, "local_siglip": 0.5, "global_soft": 0.0,
                     "global_multipos": 1.5},
           "params": {"global_multipos": {"threshold": 0.5}}}
    total, aux = jax.jit(losses.objective(cfg))(e, b)
    clip = _value("global_clip", emb, batch)
    sig = _value("local_siglip", emb, batch)
    mp = _value("global_multipos", emb, batch, {"threshold": 0.5})
    assert float(total) == pytest.approx(2.0 * clip + 0.5 * sig + 1.5 * mp, rel=1e-6)
    assert float(aux["global_clip"]) == pytest.approx(clip, rel=1e-6)
    assert float(aux["global_multipos"]) == pytest.approx(mp, rel=1e-6)
    assert float(aux["total"]) == pytest.approx(float(total))
    assert "global_clip/i2t" in aux
    assert "global_soft" not in aux                        # weight 0: not computed


def test_objective_accepts_config_dict_and_custom_terms():
    name = "test_mean_cosine"
    if name not in losses.names():
        @losses.register(name)
        def mean_cosine(emb, batch, cfg):
            w = cfg.get("power", 1.0)
            return jnp.mean(jnp.sum(emb["global_img"] * emb["global_txt"], -1)) ** w, {}
    with pytest.raises(ValueError, match="already registered"):
        losses.register(name)(lambda e, b, c: (0.0, {}))
    cfg = ml_collections.ConfigDict({"terms": {name: 3.0, "global_clip": 1.0},
                                     "params": {name: {"power": 1.0}}})
    emb, batch = make_inputs(12)
    total, aux = losses.objective(cfg)(to_jax(emb, jnp.float32), to_jax(batch, jnp.float32))
    cos = np.mean(np.sum(emb["global_img"] * emb["global_txt"], -1))
    assert float(aux[name]) == pytest.approx(cos, rel=1e-5)
    assert float(total) == pytest.approx(3 * cos + _value("global_clip", emb, batch), rel=1e-5)


def test_objective_config_errors():
    with pytest.raises(KeyError, match="unknown loss term 'nope'"):
        losses.objective({"terms": {"nope": 1.0}})
    with pytest.raises(ValueError, match="nonzero"):
        losses.objective({"terms": {"global_clip": 0.0}})
    with pytest.raises(ValueError, match="terms"):
        losses.objective({})
