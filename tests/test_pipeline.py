"""The Grain pipeline: determinism, exact resume from a saved iterator state (also through an
orbax checkpoint), per-process slices, per-epoch shuffling, augmentation, global arrays.
(Worker processes, and resuming them, are tested over a built dataset in test_build.py.)"""

import numpy as np
import pytest

from wristmir_jax.data.augment import AugmentConfig, augment_example
from wristmir_jax.data.pipeline import (iterator_state, make_pipeline, process_slice,
                                        restore_iterator, to_global_batch)
from wristmir_jax.data.synthetic import SyntheticSource

N = 24


@pytest.fixture(scope="module")
def src():
    return SyntheticSource(N, image_size=32, crop_size=16, max_len=8, vocab_size=64, seed=4)


def _take(it, k):
    return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _pipe(src, **kw):
    args = dict(global_batch_size=4, seed=7, worker_count=0, process_index=0, process_count=1)
    args.update(kw)
    return make_pipeline(src, "train", **args)


def test_same_seed_same_batches_other_seed_differs(src):
    a = _take(_pipe(src), 8)
    b = _take(_pipe(src), 8)
    _assert_batches_equal(a, b)
    c = _take(_pipe(src, seed=8), 8)
    assert [x["id"].tolist() for x in a] != [x["id"].tolist() for x in c]
    assert a[0]["image"].shape == (4, 32, 32, 1) and a[0]["crops"].shape == (4, 3, 16, 16, 1)


def test_epochs_cover_the_split_and_reshuffle(src):
    batches = _take(_pipe(src, augment=False), 2 * N // 4)
    ids = [i for b in batches for i in b["id"].tolist()]
    e1, e2 = ids[:N], ids[N:]
    expected = sorted(str(src[i]["id"]) for i in range(N))
    assert sorted(e1) == expected and sorted(e2) == expected
    assert e1 != e2  # a new permutation each epoch
    # Without augmentation the examples are exactly the source's.
    by_id = {str(src[i]["id"]): src[i] for i in range(N)}
    for j, rid in enumerate(batches[0]["id"].tolist()):
        for k in ("image", "crops", "record", "region_tokens"):
            np.testing.assert_array_equal(batches[0][k][j], by_id[rid][k])


def test_finite_epochs_stop(src):
    it = _pipe(src, num_epochs=1, global_batch_size=5, augment=False, shuffle=False)
    batches = list(it)
    assert len(batches) == N // 5  # the last partial batch is dropped
    assert [i for b in batches for i in b["id"].tolist()] == [str(src[i]["id"]) for i in range(20)]


def test_augmentation_is_per_example_and_epoch(src):
    plain = _take(_pipe(src, augment=False, shuffle=False), 2 * N // 4)
    aug = _take(_pipe(src, augment=True, shuffle=False), 2 * N // 4)
    x0, x1 = aug[0]["image"][0], aug[N // 4]["image"][0]   # example 0 in epochs 1 and 2
    assert aug[0]["id"][0] == aug[N // 4]["id"][0]
    assert not np.array_equal(x0, x1)
    assert not np.array_equal(x0, plain[0]["image"][0])
    for b in aug:
        assert b["image"].min() >= 0 and b["image"].max() <= 1
        assert np.all(b["crops"][b["crop_mask"] == 0] == 0)
        assert np.isfinite(b["crops"]).all()
    # Labels and tokens are untouched by augmentation.
    np.testing.assert_array_equal(aug[0]["record"], plain[0]["record"])


def test_augment_example_properties():
    ex = SyntheticSource(2, image_size=48, crop_size=24, seed=1, p_missing_styloid=1.0)[0]
    rng = np.random.default_rng(0)
    none = AugmentConfig(rotate_deg=0, scale=0, translate=0, crop_translate=0, crop_scale=0,
                         brightness=0, contrast=0, gamma=0, noise_std=0)
    same = augment_example(ex, rng, none)
    np.testing.assert_allclose(same["image"], ex["image"], atol=1e-6)
    np.testing.assert_allclose(same["crops"], ex["crops"], atol=1e-6)
    # Brightness alone adds one constant to every unclipped pixel of the image and the crops.
    bright = AugmentConfig(rotate_deg=0, scale=0, translate=0, crop_translate=0, crop_scale=0,
                           brightness=0.2, contrast=0, gamma=0, noise_std=0)
    out = augment_example(ex, np.random.default_rng(3), bright)
    delta = out["image"] - ex["image"]
    inside = (ex["image"] > 0.25) & (ex["image"] < 0.75)
    assert inside.sum() > 100
    assert np.ptp(delta[inside]) < 1e-5 and abs(float(delta[inside].mean())) > 1e-3
    cdelta = (out["crops"] - ex["crops"])[:2]
    cin = (ex["crops"][:2] > 0.25) & (ex["crops"][:2] < 0.75)
    np.testing.assert_allclose(cdelta[cin], delta[inside].mean(), atol=1e-5)
    assert np.all(out["crops"][2] == 0)  # the missing styloid crop stays zero


def test_resume_from_state_matches_uninterrupted(src):
    k = 5
    full = _take(_pipe(src), k + 6)
    it = _pipe(src)
    _take(it, k)
    state = iterator_state(it)
    resumed = restore_iterator(_pipe(src), state)
    _assert_batches_equal(_take(resumed, 6), full[k:])


def test_resume_through_orbax_composite_checkpoint(src, tmp_path):
    import grain
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    k = 4
    full = _take(_pipe(src), k + 3)
    it = _pipe(src)
    _take(it, k)
    params = {"w": jnp.arange(3.0)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(k, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                             data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    fresh = _pipe(src)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        got = mngr.restore(k, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params), data=grain.checkpoint.CheckpointRestore(fresh)))
    np.testing.assert_array_equal(got["params"]["w"], params["w"])
    _assert_batches_equal(_take(got["data"], 3), full[k:])


@pytest.mark.parametrize("n,drop", [(10, True), (11, True), (11, False)])
def test_two_processes_see_disjoint_slices_covering_the_split(n, drop):
    # Per-process batches of 1, so batching drops nothing: one epoch shows each process's slice.
    src = SyntheticSource(n, image_size=16, crop_size=8, max_len=8, vocab_size=64, seed=3)
    seen = []
    for p in range(2):
        it = make_pipeline(src, "train", global_batch_size=2, seed=1, num_epochs=1, augment=False,
                           worker_count=0, process_index=p, process_count=2, drop_remainder=drop)
        ids = [i for b in it for i in b["id"].tolist()]
        assert len(set(ids)) == len(ids)
        start, end = process_slice(n, p, 2, drop)
        assert sorted(ids) == sorted(str(src[i]["id"]) for i in range(start, end))
        seen.append(ids)
    assert not set(seen[0]) & set(seen[1])
    everything = sorted(str(src[i]["id"]) for i in range(n))
    if drop:  # equal step counts on every process; at most process_count - 1 examples unused
        assert len(seen[0]) == len(seen[1]) == n // 2
        assert set(seen[0]) | set(seen[1]) <= set(everything)
    else:
        assert sorted(seen[0] + seen[1]) == everything


def test_global_batch_size_must_divide_over_processes(src):
    from wristmir_jax.errors import UserError

    with pytest.raises(UserError, match="multiple of the process count"):
        _pipe(src, global_batch_size=5, process_count=2)
    with pytest.raises(UserError, match="fewer than one batch"):
        _pipe(src, global_batch_size=64)


def test_to_global_batch_shards_over_data_axis(src):
    import jax
    from jax.sharding import AxisType

    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
    host = next(_pipe(src, global_batch_size=8, augment=False))
    g = to_global_batch(host, mesh, data_axes=("data", "fsdp"))
    assert "id" not in g and set(g) == set(host) - {"id"}
    for k, v in g.items():
        assert v.shape == host[k].shape and v.dtype == host[k].dtype
        np.testing.assert_array_equal(np.asarray(v), host[k])
        # Each device holds one example (8 devices over the batch axis).
        assert {s.data.shape[0] for s in v.addressable_shards} == {1}
    g2 = to_global_batch(host, mesh)  # data axis only: 2 examples per device, fsdp replicated
    assert {s.data.shape[0] for s in g2["image"].addressable_shards} == {2}
