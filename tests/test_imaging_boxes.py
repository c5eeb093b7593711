"""Box annotations: gold/boxes JSON lines, COCO JSON and YOLO txt, with bad boxes rejected."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.boxes import box_iou, read_boxes, read_manifest
from wristmir_jax.utils.jsonl import Rejects

W, H = 80, 60


@pytest.fixture()
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (H, W)).astype(np.uint8)).save(tmp_path / f"images/c{i}.png")
        lines.append({"id": f"c{i}", "image": f"images/c{i}.png", "laterality": "left", "split": "train"})
    lines.append({"id": "c0", "image": "images/c0.png", "laterality": "left"})        # duplicate id
    lines.append({"id": "c9", "image": "images/c9.png", "laterality": "up"})          # bad laterality
    path = tmp_path / "manifest.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    return path


def test_manifest_rejects_add_up(manifest):
    rej = Rejects(str(manifest))
    rows = read_manifest(str(manifest), rej)
    assert [r.id for r in rows] == ["c0", "c1", "c2"]
    assert rows[0].image.endswith("images/c0.png") and rows[0].laterality == "left"
    reasons = [r["reason"] for r in rej.rows]
    assert len(rows) + len(rej) == 6
    assert any("duplicate id" in t for t in reasons) and any("laterality" in t for t in reasons)
    assert any("not valid JSON" in t for t in reasons)
    with pytest.raises(UserError, match=r"manifest\.jsonl:4: duplicate id"):
        read_manifest(str(manifest), Rejects(str(manifest), strict=True))


def test_jsonl_boxes(tmp_path, manifest):
    rows = read_manifest(str(manifest), Rejects(str(manifest)))
    gold = tmp_path / "gold.jsonl"
    gold.write_text("\n".join(json.dumps(x) for x in [
        {"id": "c0", "boxes": {"distal_radius": [1, 2, 30, 40], "distal_ulna": None,
                               "ulnar_styloid": [70, 5, 80.4, 9]}},   # 0.4 px over: clipped
        {"id": "c1", "boxes": {"distal_radius": [30, 2, 10, 40]}},    # x1 < x0
        {"id": "c2", "boxes": {"distal_radius": [1, 2, 30, 90]}},     # outside the image
        {"id": "other", "boxes": {}},
    ]) + "\n")
    rej = Rejects(str(gold))
    out = read_boxes(str(gold), rows, rej)
    assert out == {"c0": {"distal_radius": [1.0, 2.0, 30.0, 40.0], "ulnar_styloid": [70.0, 5.0, 80.0, 9.0]}}
    reasons = {r["id"]: r["reason"] for r in rej.rows}
    assert "x0 < x1" in reasons["c1"] and "outside the 80x60 image" in reasons["c2"]
    assert all(r["source"] == str(gold) for r in rej.rows)
    with pytest.raises(UserError, match=r"gold\.jsonl:2: .*x0 < x1"):
        read_boxes(str(gold), rows, Rejects(str(gold), strict=True))


def test_coco(tmp_path, manifest):
    rows = read_manifest(str(manifest), Rejects(str(manifest)))
    coco = {
        "images": [{"id": 1, "file_name": "c0.png", "width": W, "height": H},
                   {"id": 2, "file_name": "sub/c1.png", "width": W, "height": H},
                   {"id": 3, "file_name": "c2.png", "width": 10, "height": 10}],
        "categories": [{"id": 7, "name": "Distal Radius"}, {"id": 8, "name": "ulnar styloid"},
                       {"id": 9, "name": "fracture"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 3, 20, 30]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [0, 0, 5, 5]},      # not a bone
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [4, 3, 20, 30]},    # duplicate
            {"id": 4, "image_id": 2, "category_id": 8, "bbox": [70, 50, 20, 20]},  # outside
            {"id": 5, "image_id": 2, "category_id": 8, "bbox": [60, 40, 5, 6]},
            {"id": 6, "image_id": 3, "category_id": 8, "bbox": [1, 1, 2, 2]},      # size mismatch
        ]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(coco))
    rej = Rejects(str(path))
    out = read_boxes(str(path), rows, rej)
    assert out == {"c0": {"distal_radius": [2.0, 3.0, 22.0, 33.0]},
                   "c1": {"ulnar_styloid": [60.0, 40.0, 65.0, 46.0]}}
    reasons = " | ".join(r["reason"] for r in rej.rows)
    assert len(rej) == 3
    assert "duplicate box for distal_radius" in reasons and "annotations[3]" in reasons
    assert "COCO says the image is 10x10, the file is 80x60" in reasons


def test_yolo(tmp_path, manifest):
    rows = read_manifest(str(manifest), Rejects(str(manifest)))
    folder = tmp_path / "labels"
    folder.mkdir()
    (folder / "data.yaml").write_text("path: .\nnames:\n  0: text\n  1: radius\n  2: ulna\n")
    (folder / "c0.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.1 0.1 0.1 0.1\n2 0.9 0.9 0.5 0.5\n")
    (folder / "c1.txt").write_text("2 0.5 0.5 0.1 0.1 extra\n5 0.5 0.5 0.1 0.1\n")
    rej = Rejects(str(folder))
    out = read_boxes(str(folder), rows, rej)
    assert out["c0"] == {"distal_radius": [30.0, 15.0, 50.0, 45.0]}
    assert out["c1"] == {}
    by_line = {(r["source"].rsplit("/", 1)[1], r["line"]): r["reason"] for r in rej.rows}
    assert "outside the 80x60 image" in by_line[("c0.txt", 3)]
    assert by_line[("c1.txt", 1)] == "expected 'class cx cy w h'"
    assert "class 5 is not in the 3 class names" in by_line[("c1.txt", 2)]


def test_box_iou_matches_numpy_area_computation():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = np.sort(rng.uniform(0, 10, (2, 2)), axis=0).T.ravel()[[0, 2, 1, 3]]
        b = np.sort(rng.uniform(0, 10, (2, 2)), axis=0).T.ravel()[[0, 2, 1, 3]]
        # Rasterise both boxes on a fine grid as an independent reference.
        g = np.linspace(0, 10, 801)[:-1] + 10 / 1600
        xx, yy = np.meshgrid(g, g)
        ina = (xx >= a[0]) & (xx < a[2]) & (yy >= a[1]) & (yy < a[3])
        inb = (xx >= b[0]) & (xx < b[2]) & (yy >= b[1]) & (yy < b[3])
        ref = (ina & inb).sum() / max((ina | inb).sum(), 1)
        assert abs(box_iou(list(a), list(b)) - ref) < 0.03
    assert box_iou(None, [0, 0, 1, 1]) == 0.0
