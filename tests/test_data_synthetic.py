"""The in-memory synthetic source: Batch contract, determinism, records consistent with captions."""

import numpy as np
import pytest

from wristmir_jax import schema
from wristmir_jax.data.synthetic import (CLS_ID, PAD_ID, SEP_ID, SyntheticSource, hash_tokenize,
                                         synthetic_batches)
from wristmir_jax.reports.captions import caption_id, captions


def test_batch_matches_the_contract():
    b = next(synthetic_batches(4, image_size=64, crop_size=32, max_len=16, vocab_size=100, seed=3))
    expect = {
        "image": (np.float32, (4, 64, 64, 1)), "crops": (np.float32, (4, 3, 32, 32, 1)),
        "crop_mask": (np.float32, (4, 3)), "boxes": (np.float32, (4, 3, 4)), "global_tokens": (np.int32, (4, 16)),
        "global_mask": (np.int32, (4, 16)), "region_tokens": (np.int32, (4, 3, 16)),
        "region_mask": (np.int32, (4, 3, 16)), "record": (np.int32, (4, schema.RECORD_LEN)),
        "global_caption_id": (np.int32, (4,)), "region_caption_id": (np.int32, (4, 3)),
    }
    assert set(b) == set(expect) | {"id"}
    for k, (dt, shape) in expect.items():
        assert b[k].dtype == dt and b[k].shape == shape, k
    assert b["id"].shape == (4,) and b["id"].dtype.kind == "U"
    assert len(set(b["id"].tolist())) == 4
    assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
    assert 0.0 <= b["crops"].min() and b["crops"].max() <= 1.0
    assert b["global_tokens"].max() < 100 and b["region_tokens"].max() < 100
    # Masked-out crops and their boxes are zero; the others lie on the image.
    assert np.all(b["crops"][b["crop_mask"] == 0] == 0) and np.all(b["boxes"][b["crop_mask"] == 0] == 0)
    real = b["boxes"][b["crop_mask"] > 0]
    assert np.all(real[:, 2:] > real[:, :2]) and real.min() >= -0.1 * 64 and real.max() <= 1.1 * 64


def test_same_seed_same_batches_and_other_seed_differs():
    a = list(synthetic_batches(3, 48, 24, 12, 64, seed=5, num_batches=2))
    b = list(synthetic_batches(3, 48, 24, 12, 64, seed=5, num_batches=2))
    c = next(synthetic_batches(3, 48, 24, 12, 64, seed=6))
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert not np.array_equal(a[0]["image"], c["image"])
    # Batch k holds examples k*B .. (k+1)*B-1 of the random-access source.
    src = SyntheticSource(1 << 20, image_size=48, crop_size=24, max_len=12, vocab_size=64, seed=5)
    ex = src[4]
    for k in ex:
        np.testing.assert_array_equal(a[1][k][1], ex[k])


def test_records_captions_and_tokens_agree():
    src = SyntheticSource(40, image_size=32, crop_size=16, max_len=40, vocab_size=500, seed=1)
    statuses = set()
    for i in range(len(src)):
        ex = src[i]
        regions, g = schema.decode_record(ex["record"])
        assert (regions, g) == src.findings(i)
        caps = captions(regions, g)
        assert ex["global_caption_id"] == caption_id(caps["global"])
        ids, mask = hash_tokenize(caps["global"], 40, 500)
        np.testing.assert_array_equal(ex["global_tokens"], ids)
        np.testing.assert_array_equal(ex["global_mask"], mask)
        for j, name in enumerate(schema.REGIONS):
            assert ex["region_caption_id"][j] == caption_id(caps[name])
            np.testing.assert_array_equal(ex["region_tokens"][j], hash_tokenize(caps[name], 40, 500)[0])
            statuses.add(regions[name]["fracture"])
    assert statuses == {"absent", "present", "uncertain"}
    with pytest.raises(IndexError):
        src[40]


def test_hash_tokenize_layout():
    ids, mask = hash_tokenize("Distal radius: buckle fracture.", 10, 50)
    n = int(mask.sum())
    assert n == 2 + 6  # distal radius : buckle fracture .
    assert ids[0] == CLS_ID and ids[n - 1] == SEP_ID and np.all(ids[n:] == PAD_ID)
    assert np.all(ids[1:n - 1] >= 5)
    same, _ = hash_tokenize("distal RADIUS : buckle fracture .", 10, 50)
    np.testing.assert_array_equal(ids, same)
    cut, cmask = hash_tokenize("a b c d e f g h i j k", 6, 50)
    assert cmask.sum() == 6 and cut[-1] == SEP_ID


def test_fracture_darkens_the_bone():
    # A fracture draws a lucent band: the image differs from the same case without it exactly
    # where the radius metaphysis is, and is darker there.
    from wristmir_jax.data.synthetic import _draw

    regions, g = schema.empty_findings()
    normal = _draw(np.random.default_rng(0), regions, g, 64, (0.0, 0.0))
    regions["distal_radius"].update(fracture="present", pattern="complete")
    broken = _draw(np.random.default_rng(0), regions, g, 64, (0.0, 0.0))
    diff = broken - normal
    rows = np.nonzero(np.abs(diff).sum(1) > 0)[0]
    assert diff.sum() < 0 and rows.min() >= int(0.42 * 64) and rows.max() <= int(0.48 * 64)
