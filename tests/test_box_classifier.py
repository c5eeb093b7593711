"""Box classifier pieces without a model: the sampled training boxes (jittered boxes stay on
their bone, "other" boxes overlap none), the head against a numpy MLP, and the saved folder
(round trip, another model's classifier refused, not a classifier folder)."""

import numpy as np
import pytest

from wristmir_jax.errors import UserError
from wristmir_jax.retrieval import box_classifier as B


def test_sampled_boxes():
    rng = np.random.default_rng(0)
    bones = {"distal_radius": [100, 200, 200, 330], "distal_ulna": [210, 210, 270, 300],
             "ulnar_styloid": [240, 205, 270, 240]}
    pairs = [p for _ in range(20) for p in B.sample_boxes(bones, 512, 512, rng)]
    for box, label in pairs:
        assert 0 <= box[0] < box[2] <= 512 and 0 <= box[1] < box[3] <= 512
        if label == B.OTHER:
            assert all(B.iou(box, b) < 0.1 for b in bones.values())
        else:
            own = bones[B.CLASSES[label]]
            assert B.iou(box, own) > 0.3
    labels = [label for _, label in pairs]
    assert set(labels) == {0, 1, 2, 3}


def test_head_matches_numpy_and_folder_roundtrip(tmp_path):

    rng = np.random.default_rng(1)
    head = B._init_head(3, 12, hidden=8)
    clf = B.BoxClassifier(head, {"classes": list(B.CLASSES), "params_sha256": "a" * 64, "margin": 0.2})
    x = rng.normal(size=(5, 12)).astype(np.float32)
    h = x @ head["w1"] + head["b1"]
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))  # jax.nn.gelu (tanh form)
    logits = h @ head["w2"] + head["b2"]
    ref = np.exp(logits - logits.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(clf.predict_features(x), ref, rtol=1e-4, atol=1e-5)
    clf.save(str(tmp_path / "bc"))
    back = B.BoxClassifier.load(str(tmp_path / "bc"), "a" * 64)
    np.testing.assert_allclose(back.predict_features(x), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(UserError, match="another model"):
        B.BoxClassifier.load(str(tmp_path / "bc"), "b" * 64)
    with pytest.raises(UserError, match="not a box classifier"):
        B.BoxClassifier.load(str(tmp_path))


@pytest.mark.parametrize("laterality", ["right", "left"])
def test_roi_features_pool_the_cells_a_box_covers(laterality):
    """A box (original pixels) that covers whole cells of the global spatial map pools exactly those
    cells' embeddings; a left wrist's box is mirrored into the canonical frame first."""
    import jax

    from wristmir_jax.imaging.preprocess import geometry_for, prepare
    from wristmir_jax.models.model import build
    from wristmir_jax.models.presets import model_config

    model = build(model_config("tiny_resnet"))
    size = model.image_size
    params, _ = model.init(jax.random.key(0), model.dummy_batch(1))
    img = np.random.default_rng(0).random((2 * size, 2 * size)).astype(np.float32)  # scale 1/2, no padding
    prepared = np.round(prepare(img, laterality, size)[0] * 255) / 255.0
    sp = np.asarray(model.encode_spatial(params, prepared[None, ..., None].astype(np.float32)))[0]
    h, w, _ = sp.shape
    cell = 2 * size / w                                          # a cell in original pixels
    geo = geometry_for(2 * size, 2 * size, laterality, size)
    first_col = lambda box: int(round(geo.box_to_processed(box)[0] / (size / w)))
    box_one = [2 * cell, 3 * cell, 3 * cell, 4 * cell]           # one cell (row 3)
    box_two = [2 * cell, 3 * cell, 4 * cell, 4 * cell]           # two cells side by side
    got = B.roi_features(model, params, img, [box_one, box_two, [0.0, 0.0, 0.0, 0.0]], laterality)
    one = sp[3, first_col(box_one)]
    np.testing.assert_allclose(got[0], one / np.linalg.norm(one), rtol=1e-4, atol=1e-5)
    j = first_col(box_two)
    two = sp[3, j] + sp[3, j + 1]
    np.testing.assert_allclose(got[1], two / np.linalg.norm(two), rtol=1e-4, atol=1e-5)
    assert not np.any(got[2])                                    # an empty box pools nothing
    desc = B.box_descriptors(model, params, img, [box_one], laterality)
    np.testing.assert_allclose(desc[0, 5:], got[0], rtol=1e-6)
    assert B.box_descriptors(model, params, img, [box_one], laterality, roi=False).shape == (1, 5)
