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
