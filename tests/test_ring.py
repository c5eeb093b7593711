"""Ring (shard_map + ppermute) losses on 8 simulated CPU devices: same value and gradients as
the plain terms (<= 1e-5 relative, fp32), no global [B, B] array in the compiled program, and
the mesh / axis plumbing through the objective."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from wristmir_jax import losses

B, D = 32, 16
KINDS = ("clip", "siglip", "multipos")


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "tests/conftest.py should simulate 8 CPU devices"
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def make_inputs(seed, b=B):
    rng = np.random.default_rng(seed)

    def unit(x):
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    emb = {"global_img": unit(rng.normal(size=(b, D))), "global_txt": unit(rng.normal(size=(b, D))),
           "region_img": unit(rng.normal(size=(b, 3, D))),
           "region_txt": unit(rng.normal(size=(b, 3, D))),
           "global_scale": np.float32(12.0), "global_bias": np.float32(-4.0),
           "local_scale": np.float32(8.0), "local_bias": np.float32(-2.5)}
    crop_mask = (rng.uniform(size=(b, 3)) > 0.25).astype(np.float32)
    crop_mask[:, 2] = 0.0
    crop_mask[5, 2] = 1.0                       # a bone almost always missing
    batch = {"crop_mask": crop_mask,
             "global_caption_id": rng.integers(0, 6, b).astype(np.int32),
             "region_caption_id": rng.integers(0, 4, (b, 3)).astype(np.int32),
             "relevance": rng.uniform(size=(4, b, b)).astype(np.float32),
             "record": np.zeros((b, 23), np.int32)}
    return emb, batch


def shard(tree, mesh):
    def put(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return jax.device_put(x, NamedSharding(mesh, P()))
        if x.ndim == 3 and x.shape[0] == 4 and x.shape[1] == x.shape[2]:   # relevance [4,B,B]
            return jax.device_put(x, NamedSharding(mesh, P(None, "data", None)))
        return jax.device_put(x, NamedSharding(mesh, P("data")))
    return {k: put(v) for k, v in tree.items()}


def value_and_grad(name, emb, batch, params):
    fn = losses.get(name)
    return jax.jit(jax.value_and_grad(lambda e, b: fn(e, b, params)[0]))(emb, batch)


def assert_close_rel(got, want, tol=1e-5, what=""):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
    assert err <= tol, f"{what}: relative error {err:.2e}"


@pytest.mark.parametrize("view", ["global", "local"])
@pytest.mark.parametrize("kind", KINDS)
def test_ring_equals_plain(mesh, kind, view):
    emb, batch = make_inputs(0)
    params = {"threshold": 0.7}
    v0, g0 = value_and_grad(f"{view}_{kind}", emb, batch, params)
    v1, g1 = value_and_grad(f"{view}_{kind}_ring", shard(emb, mesh), shard(batch, mesh),
                            dict(params, mesh=mesh))
    assert_close_rel(v1, v0, what="value")
    for k in g0:
        assert_close_rel(g1[k], g0[k], what=f"d/d{k}")
    used = [k for k in g0 if k.startswith("global" if view == "global" else ("region", "local"))]
    assert all(np.any(np.asarray(g0[k])) for k in used if not k.endswith("bias") or kind == "siglip")


def test_ring_aux_matches_plain(mesh):
    emb, batch = make_inputs(1)
    _, aux0 = losses.get("local_clip")(emb, batch, {})
    _, aux1 = jax.jit(lambda e, b: losses.get("local_clip_ring")(e, b, {"mesh": mesh}))(
        shard(emb, mesh), shard(batch, mesh))
    assert set(aux0) == set(aux1)
    for k in aux0:
        assert_close_rel(aux1[k], aux0[k], what=k)


def test_ring_program_holds_no_global_logits(mesh):
    emb, batch = make_inputs(2, b=64)
    fn = losses.get("global_clip_ring")
    lowered = jax.jit(jax.grad(lambda e, b: fn(e, b, {"mesh": mesh})[0])).lower(
        shard(emb, mesh), shard(batch, mesh))
    text = lowered.compile().as_text()
    assert "f32[1,8,8]" in text               # one block of logits per ring step
    assert "[64,64]" not in text and "[1,64,64]" not in text
    plain = jax.jit(jax.grad(lambda e, b: losses.get("global_clip")(e, b, {})[0])).lower(
        emb, batch).compile().as_text()
    assert "[1,64,64]" in plain or "[64,64]" in plain   # the check above can fail


def test_ring_through_objective_and_context_mesh(mesh):
    emb, batch = make_inputs(3)
    cfg = {"terms": {"global_clip_ring": 1.0, "local_siglip_ring": 0.5}}
    plain_cfg = {"terms": {"global_clip": 1.0, "local_siglip": 0.5}}
    want, _ = losses.objective(plain_cfg)(emb, batch)
    got, aux = jax.jit(losses.objective(cfg, mesh=mesh))(shard(emb, mesh), shard(batch, mesh))
    assert_close_rel(got, want)
    with jax.set_mesh(mesh):
        got2, _ = jax.jit(losses.objective(cfg))(shard(emb, mesh), shard(batch, mesh))
    assert_close_rel(got2, want)


def test_ring_over_two_mesh_axes():
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    emb, batch = make_inputs(4)
    v0, g0 = value_and_grad("global_multipos", emb, batch, {})
    v1, g1 = value_and_grad("global_multipos_ring", emb, batch,
                            {"mesh": mesh, "axis": ("data", "fsdp")})
    assert_close_rel(v1, v0)
    for k in g0:
        assert_close_rel(g1[k], g0[k], what=k)
    # ring over "data" only (fsdp devices replicate the work): same numbers
    v2, _ = value_and_grad("global_multipos_ring", emb, batch, {"mesh": mesh, "axis": "data"})
    assert_close_rel(v2, v0)


def test_ring_errors(mesh):
    emb, batch = make_inputs(5, b=12)
    with pytest.raises(ValueError, match="divisible"):
        losses.get("global_clip_ring")(emb, batch, {"mesh": mesh})
    with pytest.raises(ValueError, match="no axis 'model'"):
        losses.get("global_clip_ring")(emb, batch, {"mesh": mesh, "axis": "model"})
    with pytest.raises(ValueError, match="needs a mesh"):
        losses.get("global_clip_ring")(emb, batch, {})


def test_loss_memory_bench_measures_ring_below_plain():
    from wristmir_jax.bench import loss_memory
    result = loss_memory._measure(batch=1024, dim=32, devices=8)
    assert set(result["terms"]) == {"global_clip", "global_siglip", "global_multipos"}
    for name, row in result["terms"].items():
        # per-device plain logits are [128, 1024]; ring blocks [128, 128]
        assert row["ring_grad_temp_bytes"] < 0.5 * row["plain_grad_temp_bytes"], name
        assert row["plain_grad_temp_bytes"] >= 4 * 128 * 1024, name


def test_ring_of_one_device_and_bf16_embeddings():
    one = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                        devices=jax.devices()[:1])
    emb, batch = make_inputs(6, b=8)
    v0, g0 = value_and_grad("local_multipos", emb, batch, {})
    v1, g1 = value_and_grad("local_multipos_ring", emb, batch, {"mesh": one})
    assert_close_rel(v1, v0)
    for k in g0:
        assert_close_rel(g1[k], g0[k], what=k)
    # bf16 embeddings: the ring computes in float32, so it equals the plain loss on the
    # bf16-rounded embeddings, and returns bf16 gradients.
    mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    emb16 = {k: (jnp.asarray(v, jnp.bfloat16) if np.ndim(v) else v) for k, v in emb.items()}
    rounded = {k: (np.asarray(jnp.asarray(v, jnp.float32)) if np.ndim(v) else v)
               for k, v in emb16.items()}
    v2, g2 = value_and_grad("global_clip_ring", emb16, batch, {"mesh": mesh8})
    v3, _ = value_and_grad("global_clip", rounded, batch, {})
    assert g2["global_img"].dtype == jnp.bfloat16
    assert_close_rel(v2, v3)


def random_records(rng, b):
    """Integer-encoded records in the schema's value ranges, few distinct values so that many
    pairs reach the multipos threshold."""
    from wristmir_jax.schema import (GLOBAL_OFFSET, NUM_REGIONS, PATTERNS, RECORD_LEN,
                                     REGION_FIELD_LEN)

    rec = np.zeros((b, RECORD_LEN), np.int32)
    highs = (3, 1 + len(PATTERNS), 6, 3, 3, 2)
    for r in range(NUM_REGIONS):
        status = rng.choice(3, size=b, p=[0.6, 0.3, 0.1])
        for f, hi in enumerate(highs):
            rec[:, r * REGION_FIELD_LEN + f] = rng.integers(0, hi, b) * (status > 0)
        rec[:, r * REGION_FIELD_LEN] = status
    rec[:, GLOBAL_OFFSET] = rng.integers(0, 3, b)
    rec[:, GLOBAL_OFFSET + 1:] = rng.integers(0, 2, (b, RECORD_LEN - GLOBAL_OFFSET - 1))
    return rec


@pytest.mark.parametrize("view", ["global", "local"])
@pytest.mark.parametrize("chunk", [3, 256])
def test_ring_blockwise_relevance_equals_dense(mesh, view, chunk):
    """Relevance computed per [b, c] chunk from travelling records (chunk 3 -> c = 2, four chunks
    per visiting block of 8) gives the plain term's value and gradients on the dense relevance."""
    from wristmir_jax.reports.relevance import relevance

    emb, batch = make_inputs(7)
    batch["record"] = random_records(np.random.default_rng(7), B)
    batch["relevance"] = np.asarray(relevance(batch["record"], batch["record"]))
    near = batch["relevance"] >= 0.7
    assert 0.05 < near.mean() < 0.95          # the threshold masks some pairs, not all
    v0, g0 = value_and_grad(f"{view}_multipos", emb, batch, {"threshold": 0.7})
    ring_batch = shard({k: v for k, v in batch.items() if k != "relevance"}, mesh)
    v1, g1 = value_and_grad(f"{view}_multipos_ring", shard(emb, mesh), ring_batch,
                            {"threshold": 0.7, "mesh": mesh, "relevance_fn": relevance,
                             "chunk": chunk})
    assert_close_rel(v1, v0, what="value")
    for k in g0:
        assert_close_rel(g1[k], g0[k], what=f"d/d{k}")
    # and the threshold matters: a different threshold gives a different value
    v2, _ = value_and_grad(f"{view}_multipos_ring", shard(emb, mesh), ring_batch,
                           {"threshold": 0.99, "mesh": mesh, "relevance_fn": relevance,
                            "chunk": chunk})
    assert abs(float(v2) - float(v1)) > 1e-4


def test_objective_hands_relevance_to_ring_terms_only(mesh):
    from wristmir_jax.reports.relevance import relevance

    ring = losses.objective({"terms": {"global_multipos_ring": 1.0, "local_clip_ring": 1.0}},
                            mesh=mesh)
    assert ring.reads_dense_relevance                   # no relevance_fn yet: dense fallback
    bound = ring.with_relevance_fn(relevance)
    assert not bound.reads_dense_relevance
    mixed = losses.objective({"terms": {"global_multipos_ring": 1.0, "local_soft": 1.0}},
                             mesh=mesh, relevance_fn=relevance)
    assert mixed.reads_dense_relevance                  # local_soft reads batch["relevance"]
    assert not losses.objective({"terms": {"global_clip": 1.0}}).reads_dense_relevance


def test_ring_blockwise_program_holds_no_batch_square(mesh):
    """B = 256 on 8 devices (b = 32), chunk 8: the compiled gradient holds [.., 32, 8] blocks and
    no array with two dimensions of 32 or more (relevance included)."""
    from wristmir_jax.reports.relevance import relevance

    emb, batch = make_inputs(8, b=256)
    batch["record"] = random_records(np.random.default_rng(8), 256)
    batch.pop("relevance")
    fn = losses.get("local_multipos_ring")
    params = {"mesh": mesh, "relevance_fn": relevance, "chunk": 8}
    text = jax.jit(jax.grad(lambda e, b: fn(e, b, params)[0])).lower(
        shard(emb, mesh), shard(batch, mesh)).compile().as_text()
    shapes = batch_square_shapes(text, 32)
    assert not shapes, shapes[:5]
    assert "f32[3,32,8]" in text
    dense = jax.jit(jax.grad(lambda e, b: fn(e, b, {**params, "chunk": 32})[0])).lower(
        shard(emb, mesh), shard(batch, mesh)).compile().as_text()
    assert batch_square_shapes(dense, 32)               # the check above can fail


def batch_square_shapes(hlo_text, b):
    """Array shapes in an HLO text with two or more dimensions >= b."""
    import re

    out = []
    for m in re.finditer(r"\b(?:f32|bf16|f16|s32|pred|u32|s8|u8)\[([0-9,]+)\]", hlo_text):
        dims = [int(d) for d in m.group(1).split(",") if d]
        if sum(d >= b for d in dims) >= 2:
            out.append(m.group(0))
    return out
