"""Bone box annotations and the manifest rows the localizer reads.

Box sources, all turned into {id: {region: [x0, y0, x1, y1] in original pixels}}:
  - JSON lines (`gold.jsonl` from the generator, or a `boxes.jsonl` from `localize predict`):
    lines {"id", "boxes": {region: box or null}}.
  - COCO JSON: `images` (id, file_name, width, height), `annotations` (image_id, category_id,
    bbox [x, y, w, h]), `categories` (id, name). Images match manifest rows by file name (or by
    stem = manifest id).
  - YOLO txt: a folder of `<image stem>.txt` files with lines `class cx cy w h` (normalised to
    the image), class names from `classes.txt` or `data.yaml` (`names:`) in that folder, else
    REGIONS order.
Category names map to regions through REGION_ALIASES; other categories (GRAZPEDWRI-DX's
"fracture", "text", ...) are ignored and counted. A box outside the image (by more than
BOX_TOLERANCE_PX, which absorbs rounding in normalised YOLO coordinates; within it the box is
clipped), with x1 <= x0 or y1 <= y0, or not finite, is rejected with the file, line and reason.
A second box for a region of the same image is rejected as a duplicate.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.io import ImageError
from wristmir_jax.schema import LATERALITY, REGIONS, SchemaError, validate_box
from wristmir_jax.utils.jsonl import BadLine, Rejects, iter_jsonl

BOX_TOLERANCE_PX = 1.0
REGION_ALIASES = {
    "distal_radius": "distal_radius", "radius": "distal_radius", "dr": "distal_radius",
    "distal_ulna": "distal_ulna", "ulna": "distal_ulna", "du": "distal_ulna",
    "ulnar_styloid": "ulnar_styloid", "ulna_styloid": "ulnar_styloid",
    "styloid": "ulnar_styloid", "us": "ulnar_styloid",
}


def region_from_name(name: Any) -> str | None:
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    return REGION_ALIASES.get(key)


@dataclass
class ManifestRow:
    """What the localizer needs from a manifest line."""

    id: str
    image: str          # absolute path
    laterality: str | None
    split: str | None
    view: str | None
    line: int


def read_manifest(path: str, rejects: Rejects, split: str | None = None) -> list[ManifestRow]:
    """Manifest lines -> rows (image paths resolved against the manifest's folder).

    Lines without an id or image, with a bad laterality, or repeating an id are rejected.
    """
    base = os.path.dirname(os.path.abspath(path))
    rows: list[ManifestRow] = []
    seen: set[str] = set()
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj, BadLine):
            rejects.add(lineno, obj.reason)
            continue
        rid, image = obj.get("id"), obj.get("image")
        if not isinstance(rid, str) or not rid:
            rejects.add(lineno, "missing or non-string 'id'")
            continue
        if not isinstance(image, str) or not image:
            rejects.add(lineno, "missing or non-string 'image'", id=rid)
            continue
        lat = obj.get("laterality")
        if lat is not None and lat not in LATERALITY:
            rejects.add(lineno, f"laterality {lat!r} is not left, right or null", id=rid)
            continue
        if rid in seen:
            rejects.add(lineno, "duplicate id", id=rid)
            continue
        row_split = obj.get("split")
        if split is not None and row_split != split:
            continue
        seen.add(rid)
        img_path = image if os.path.isabs(image) else os.path.join(base, image)
        rows.append(ManifestRow(rid, img_path, lat, row_split, obj.get("view"), lineno))
    return rows


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file header, without decoding pixels."""
    with open(path, "rb") as f:
        head = f.read(132)
    if (len(head) >= 132 and head[128:132] == b"DICM") or path.lower().endswith((".dcm", ".dicom")):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as e:
            raise ImageError(f"cannot read DICOM header ({str(e)[:120]})", path=path) from None
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:
        raise ImageError(f"cannot read image header ({str(e)[:120]})", path=path) from None


def _check(box, width: int, height: int, where: str) -> list[float]:
    """Validates a box against its image; clips sub-pixel overshoot (raises SchemaError)."""
    validate_box(box, where=where)
    x0, y0, x1, y1 = (float(v) for v in box)
    tol = BOX_TOLERANCE_PX
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise SchemaError(f"{where}: {[round(v, 2) for v in (x0, y0, x1, y1)]} lies outside the "
                          f"{width}x{height} image")
    return [max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))]


def read_boxes(path: str, rows: list[ManifestRow], rejects: Rejects,
               sizes: Mapping[str, tuple[int, int]] | None = None,
               classes: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    """Reads box annotations for the manifest rows; returns {id: {region: box}} (original px).

    `sizes` maps id -> (width, height) when already known; otherwise image headers are read.
    Annotations for ids not in `rows` are skipped silently (another split).
    """
    by_id = {r.id: r for r in rows}
    size_cache: dict[str, tuple[int, int]] = dict(sizes or {})

    def size_of(rid: str) -> tuple[int, int]:
        if rid not in size_cache:
            size_cache[rid] = image_size(by_id[rid].image)
        return size_cache[rid]

    if not os.path.exists(path):
        raise UserError("box annotations not found", path=path)
    if os.path.isdir(path):
        return _read_yolo(path, by_id, size_of, rejects, classes)
    if path.endswith(".json"):
        return _read_coco(path, by_id, size_of, rejects)
    return _read_jsonl(path, by_id, size_of, rejects)


def _add(out: dict, rid: str, region: str, box: list[float], rejects: Rejects, line, src=None):
    regions = out.setdefault(rid, {})
    if region in regions:
        rejects.add(line, f"duplicate box for {region} (the first one is kept)", id=rid)
        return
    regions[region] = box


def _read_jsonl(path, by_id, size_of, rejects) -> dict:
    out: dict[str, dict[str, list[float]]] = {}
    first_line: dict[str, int] = {}
    first_seen: dict[str, object] = {}
    for lineno, obj in iter_jsonl(path):
        if isinstance(obj, BadLine):
            rejects.add(lineno, obj.reason)
            continue
        rid = obj.get("id")
        if not isinstance(rid, str) or rid not in by_id:
            continue
        if rid in first_line:  # counted, never a silent overwrite: the first line is kept
            same = obj.get("boxes") == first_seen[rid]
            rejects.add(lineno, f"duplicate id ({'same' if same else 'conflicting'} boxes; line "
                                f"{first_line[rid]} is kept)", id=rid)
            continue
        first_line[rid] = lineno
        first_seen[rid] = obj.get("boxes")
        boxes = obj.get("boxes")
        if not isinstance(boxes, dict):
            rejects.add(lineno, "missing 'boxes' object", id=rid)
            continue
        try:
            w, h = size_of(rid)
        except ImageError as e:
            rejects.add(lineno, e.reason, id=rid)
            continue
        good = {}
        bad = False
        for name, box in boxes.items():
            region = region_from_name(name)
            if region is None:
                rejects.add(lineno, f"unknown region {name!r}", id=rid)
                bad = True
                break
            if box is None:
                continue
            try:
                good[region] = _check(box, w, h, f"boxes.{name}")
            except SchemaError as e:
                rejects.add(lineno, str(e), id=rid)
                bad = True
                break
        if not bad:
            out[rid] = good
    return out


def _read_coco(path, by_id, size_of, rejects) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"not a readable COCO JSON file ({str(e)[:120]})", path=path) from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise UserError("COCO JSON needs 'images', 'annotations' and 'categories' lists", path=path)
    cats = {}
    for c in coco["categories"]:
        if isinstance(c, dict) and "id" in c:
            cats[c["id"]] = region_from_name(c.get("name", ""))
    # Manifest rows by image file name, and by id (COCO exports often name files after ids).
    by_file = {os.path.basename(r.image): r.id for r in by_id.values()}
    images = {}
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            rejects.add(None, f"images[{i}]: needs 'id' and 'file_name'")
            continue
        name = os.path.basename(str(im["file_name"]))
        rid = by_file.get(name) or (os.path.splitext(name)[0]
                                    if os.path.splitext(name)[0] in by_id else None)
        if rid is not None:
            images[im["id"]] = (rid, im.get("width"), im.get("height"))
    out: dict[str, dict[str, list[float]]] = {}
    for i, ann in enumerate(coco["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict):
            rejects.add(None, f"{where}: not an object")
            continue
        if ann.get("image_id") not in images:
            continue
        rid, cw, ch = images[ann["image_id"]]
        region = cats.get(ann.get("category_id"))
        if region is None:
            continue  # a category that is not one of our bones
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            rejects.add(None, f"{where}: bbox must be [x, y, w, h]", id=rid)
            continue
        try:
            w, h = size_of(rid)
        except ImageError as e:
            rejects.add(None, f"{where}: {e.reason}", id=rid)
            continue
        if (cw, ch) != (None, None) and (cw, ch) != (w, h):
            rejects.add(None, f"{where}: COCO says the image is {cw}x{ch}, the file is {w}x{h}",
                        id=rid)
            continue
        try:
            x, y, bw, bh = (float(v) for v in bbox)
            box = _check([x, y, x + bw, y + bh], w, h, f"{where}.bbox")
        except (TypeError, ValueError) as e:
            rejects.add(None, str(e) if isinstance(e, SchemaError) else f"{where}: bbox must be numbers",
                        id=rid)
            continue
        _add(out, rid, region, box, rejects, None)
    return out


def _yolo_classes(folder: str, classes: list[str] | None) -> list[str | None]:
    if classes:
        names = classes
    elif os.path.exists(os.path.join(folder, "classes.txt")):
        with open(os.path.join(folder, "classes.txt"), encoding="utf-8") as f:
            names = [t.strip() for t in f if t.strip()]
    elif os.path.exists(os.path.join(folder, "data.yaml")):
        names = _yaml_names(os.path.join(folder, "data.yaml"))
    else:
        names = list(REGIONS)
    return [region_from_name(n) for n in names]


def _yaml_names(path: str) -> list[str]:
    """`names:` of a YOLO data.yaml, as a flow list ([a, b]) or a block map/list."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("names:"):
            rest = line.split(":", 1)[1].strip()
            if rest.startswith("["):
                return [t.strip().strip("'\"") for t in rest.strip("[]").split(",") if t.strip()]
            names = []
            for sub in lines[i + 1:]:
                s = sub.strip()
                if not sub.startswith((" ", "\t", "-")) or not s:
                    break
                s = s[1:].strip() if s.startswith("-") else s.split(":", 1)[1].strip()
                names.append(s.strip("'\""))
            return names
    raise UserError("data.yaml has no 'names:' entry", path=path)


def _read_yolo(folder, by_id, size_of, rejects, classes) -> dict:
    cls_regions = _yolo_classes(folder, classes)
    by_stem = {os.path.splitext(os.path.basename(r.image))[0]: r.id for r in by_id.values()}
    out: dict[str, dict[str, list[float]]] = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".txt") or name == "classes.txt":
            continue
        stem = name[:-4]
        rid = by_stem.get(stem) or (stem if stem in by_id else None)
        if rid is None:
            continue
        fpath = os.path.join(folder, name)
        file_rejects = Rejects(fpath, strict=rejects.strict)
        try:
            w, h = size_of(rid)
        except ImageError as e:
            file_rejects.add(None, e.reason, id=rid)
            rejects.rows.extend(file_rejects.rows)
            continue
        out.setdefault(rid, {})
        with open(fpath, encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    if len(parts) != 5:
                        raise ValueError
                    c = int(parts[0])
                    cx, cy, bw, bh = (float(t) for t in parts[1:])
                except ValueError:
                    file_rejects.add(lineno, "expected 'class cx cy w h'", id=rid)
                    continue
                if not 0 <= c < len(cls_regions):
                    file_rejects.add(lineno, f"class {c} is not in the {len(cls_regions)} class names",
                                     id=rid)
                    continue
                region = cls_regions[c]
                if region is None:
                    continue
                box = [(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h]
                try:
                    box = _check(box, w, h, f"class {c}")
                except SchemaError as e:
                    file_rejects.add(lineno, str(e), id=rid)
                    continue
                _add(out, rid, region, box, file_rejects, lineno)
        rejects.rows.extend(file_rejects.rows)
    return out


def box_iou(a, b) -> float:
    """IoU of two [x0, y0, x1, y1] boxes (0 when either is missing)."""
    if a is None or b is None:
        return 0.0
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 and math.isfinite(union) else 0.0
