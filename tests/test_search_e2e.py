"""`wristmir search` end to end on a demo-shaped folder (conftest.tiny_demo_folder: a tiny built
dataset, an untrained tiny model, its indexes): free text conditioned on the bones it names,
`--report`, `--box` with and without `--region` (the box classifier trained here by
`wristmir box-classifier`), against numpy references, and the bad boxes."""

import json
import os

import numpy as np
import pytest

from wristmir_jax.cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_demo_folder")]


def _run(capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.fixture(scope="module")
def demo(tiny_demo_folder, tmp_path_factory):
    from wristmir_jax.retrieval.encode import QueryModel
    from wristmir_jax.retrieval.store import load_index

    root = tiny_demo_folder
    index_dir = str(root / "index_test")
    index = load_index(index_dir)
    qm = QueryModel(index)
    manifest = [json.loads(x) for x in open(root / "in" / "manifest.jsonl")]
    return root, index_dir, index, qm, manifest


def _rerank_ref(index, g, reg, mask, alpha, w):
    a = index.arrays
    sg = a.global_img.astype(np.float64) @ g.astype(np.float64)
    sr = np.einsum("nrd,rd->nr", a.region_img.astype(np.float64), reg.astype(np.float64))
    we = w[None] * mask[None] * a.crop_mask
    den = alpha + we.sum(1)
    return np.where(den > 0, (alpha * sg + (we * sr).sum(1)) / np.where(den > 0, den, 1), sg)


def test_text_conditioned_on_named_bones_and_global(demo, capsys):
    root, index_dir, index, qm, _ = demo
    text = "buckle fx of the dist. radial metaphysis"
    code, out, err = _run(capsys, ["search", "--index", index_dir, "--text", text, "-k", "3", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["region"] == "distal_radius" and res["query"]["anatomy_from"] == "text"
    g = qm.encode_text(text)
    reg = np.zeros((3, g.shape[0]), np.float32)
    reg[0] = qm.encode_text(text, "distal_radius")
    score = _rerank_ref(index, g, reg, np.array([1.0, 0, 0]), 0.25, np.array([1.0, 0, 0]))
    want = np.argsort(-score, kind="stable")[:3]
    assert [r["id"] for r in res["results"]] == index.arrays.ids[want].tolist()
    np.testing.assert_allclose([r["score"] for r in res["results"]], score[want], atol=1e-4)

    code, out, err = _run(capsys, ["search", "--index", index_dir, "--text", "normal study", "-k", "3", "--json"])
    assert code == 0, err
    res = json.loads(out)
    assert res["region"] == "all"
    sim = index.arrays.global_img.astype(np.float64) @ qm.encode_text("normal study").astype(np.float64)
    assert [r["id"] for r in res["results"]] == index.arrays.ids[np.argsort(-sim, kind="stable")[:3]].tolist()


def test_report_search_matches_numpy(demo, capsys):
    root, index_dir, index, qm, manifest = demo
    img = str(root / "in" / manifest[0]["image"])
    code, out, err = _run(capsys, ["search", "--index", index_dir, "--image", img, "--report", "-k", "4", "--json"])
    assert code == 0, err
    res = json.loads(out)
    q, _ = qm.encode_image_file(img)
    sim = index.arrays.global_txt.astype(np.float64) @ q.global_[0].astype(np.float64)
    assert res["method"] == "report"
    assert [r["id"] for r in res["results"]] == index.arrays.ids[np.argsort(-sim, kind="stable")[:4]].tolist()


def test_box_with_and_without_region(demo, capsys, tmp_path):
    from wristmir_jax.retrieval.box_classifier import BoxClassifier, box_crop, box_descriptors, classify_crops
    from wristmir_jax.train.checkpoint import params_sha256

    root, index_dir, index, qm, manifest = demo
    clf_dir = str(tmp_path / "bc")
    code, out, err = _run(capsys, ["box-classifier", "--workdir", str(root / "workdir"), "--manifest",
                                   str(root / "in" / "manifest.jsonl"), "--boxes", str(root / "in" / "boxes.jsonl"),
                                   "--steps", "20", "--out", clf_dir])
    assert code == 0, err
    meta = json.load(open(os.path.join(clf_dir, "meta.json")))
    assert 0.0 <= meta["test_accuracy"]["jittered_bone_boxes"] <= 1.0 and meta["test_boxes"] > 0
    assert meta["roi"] is True  # ROI-pooled global features by default
    boxed = {json.loads(line)["id"] for line in open(root / "in" / "boxes.jsonl")}
    test_views = {m.get("view") or "unknown" for m in manifest if m.get("split") == "test" and m["id"] in boxed}
    per_view = meta["jittered_bone_boxes_per_view"]
    assert set(per_view) == test_views and all(0.0 <= a <= 1.0 for a in per_view.values())

    m = manifest[1]
    img = str(root / "in" / m["image"])
    box = json.loads(open(root / "in" / "boxes.jsonl").readlines()[1])["boxes"]["distal_radius"]
    box_arg = ",".join(f"{v:.1f}" for v in box)
    code, out, err = _run(capsys, ["search", "--index", index_dir, "--image", img, "--box", box_arg,
                                   "--laterality", m["laterality"], "--box-classifier", clf_dir, "-k", "3", "--json"])
    assert code == 0, err
    res = json.loads(out)
    # the class is what the saved classifier says for that crop
    from wristmir_jax.imaging.io import load_image

    clf = BoxClassifier.load(clf_dir, params_sha256(qm.params))
    pixels = load_image(img)
    b = [float(v) for v in box_arg.split(",")]
    crop = box_crop(pixels, b, m["laterality"], qm.model.crop_size, clf.meta["margin"])
    desc = box_descriptors(qm.model, qm.params, pixels, [b], m["laterality"], roi=True)
    assert desc.shape == (1, 5 + qm.model.embed_dim)
    probs = classify_crops(clf, qm.model, qm.params, crop[None, ..., None].astype(np.float32), desc)[0]
    cls = ("distal_radius", "distal_ulna", "ulnar_styloid", "other")[int(probs.argmax())]
    assert res["query"]["box_class"]["class"] == cls
    if cls == "other":
        assert res["region"] == "all" and "warning" in err
        explicit = ["--method", "two_stage"]
    else:
        assert res["region"] == cls and res["query"]["anatomy_from"] == "box"
        explicit = ["--box", box_arg, "--region", cls]
    code, out2, err = _run(capsys, ["search", "--index", index_dir, "--image", img, "--laterality", m["laterality"],
                                    *explicit, "-k", "3", "--json"])
    assert code == 0, err
    assert [r["id"] for r in json.loads(out2)["results"]] == [r["id"] for r in res["results"]]

    # --box --region: the drawn box replaces that bone's crop
    code, out, err = _run(capsys, ["search", "--index", index_dir, "--image", img, "--box", box_arg,
                                   "--region", "distal_ulna", "-k", "2", "--json"])
    assert code == 0, err and json.loads(out)["query"]["crop_source"][1] == "drawn"
    h, w = load_image(img).shape
    for bad, msg in ((f"0,0,{w + 50},{h}", "outside"), ("10,10,10,30", "x0 < x1"), ("1,2,3", "four numbers")):
        code, _, err = _run(capsys, ["search", "--index", index_dir, "--image", img, "--box", bad,
                                     "--box-classifier", clf_dir])
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
