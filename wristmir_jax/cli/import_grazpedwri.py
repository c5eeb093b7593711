"""`wristmir import-grazpedwri --csv dataset.csv --images DIR [--labels YOLO_DIR] --out OUT`:
the public GRAZPEDWRI-DX layout becomes our files.

OUT/manifest.jsonl  one row per image (id = filestem, patient_id, study_id, absolute image path,
                    a templated report written from the AO codes, view, laterality, age, split by
                    patient: hash of patient_id, 80/10/10 train/val/test).
OUT/mined.jsonl     findings parsed from the AO codes (miner "ao_codes") with captions.
OUT/boxes.jsonl     only with --labels. GRAZPEDWRI-DX has no per-bone boxes (its YOLO classes
                    are findings: fracture, periosteal reaction, soft tissue, metal, text, ...), so
                    `boxes` and `scores` stay empty and the YOLO objects are kept, in original-image
                    pixels, under `objects` [{"label", "box"}]; a fracture box is not a bone box.
                    The labels also set soft_tissue_swelling (softtissue, pronatorsign) and healing
                    of the coded regions (periostealreaction).
A coded fracture is "uncertain" when diagnosis_uncertain is 1 or fracture_visible is 0.
Bad rows (wrong field count, missing or duplicate filestem, unparseable AO code, missing image,
an image that does not decode or is constant or above the pixel limit, age outside 0..120,
laterality other than L/R, projection other than 1/2/3 or a view name) and bad label lines go to
OUT/manifest.rejects.jsonl with line numbers; --strict stops at the first (exit 2). Every image is
decoded once here, so `build` never meets an image the import accepted but cannot read.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os

from wristmir_jax.errors import UserError
from wristmir_jax.imaging.io import ImageError, load_image
from wristmir_jax.reports.grazpedwri import AOCodeError, findings_from_ao, parse_yolo_line, templated_report
from wristmir_jax.reports.mining import mined_row
from wristmir_jax.utils.fs import atomic_output_dir
from wristmir_jax.utils.jsonl import Rejects, dumps, rejects_path
from wristmir_jax.utils.log import get_logger
from wristmir_jax.utils.progress import track

REQUIRED = ("filestem", "patient_id", "study_number", "laterality", "projection", "ao_classification")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
_VIEWS = {"1": "pa", "2": "lateral", "3": "oblique", "ap": "pa", "pa": "pa", "lat": "lateral",
          "lateral": "lateral", "obl": "oblique", "oblique": "oblique"}
_SIDES = {"l": "left", "r": "right", "left": "left", "right": "right"}
_EMPTY = ("", "nan", "none", "na")
MAX_AGE_YEARS = 120.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--csv", required=True, help="GRAZPEDWRI-DX dataset.csv")
    p.add_argument("--images", required=True, help="folder with <filestem>.png images")
    p.add_argument("--labels", default=None, help="folder with YOLO <filestem>.txt label files")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row (exit 2)")


def _flag(v: str | None) -> bool | None:
    v = (v or "").strip().lower()
    if v in ("", "nan", "none", "na"):
        return None
    if v in ("1", "1.0", "true", "yes", "y"):
        return True
    if v in ("0", "0.0", "false", "no", "n"):
        return False
    raise ValueError(f"expected 0/1, got {v!r}")


def _split(patient_id: str) -> str:
    h = int.from_bytes(hashlib.blake2b(patient_id.encode(), digest_size=4).digest(), "big") % 10
    return "train" if h < 8 else ("val" if h == 8 else "test")


def _find_image(folder: str, stem: str) -> str | None:
    for ext in IMAGE_EXTENSIONS:
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return os.path.abspath(p)
    return None


def _read_labels(labels_dir: str, stem: str, size: tuple[int, int], rejects: Rejects) -> tuple[list[dict], int, int]:
    """YOLO objects of one image (size: width, height) in pixels; returns (objects, lines read,
    lines rejected)."""
    path = os.path.join(labels_dir, stem + ".txt")
    if not os.path.isfile(path):
        return [], 0, 0
    width, height = size
    objects, n, bad = [], 0, 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            n += 1
            try:
                label, box = parse_yolo_line(raw.decode("utf-8"), width, height)
            except (UnicodeDecodeError, ValueError) as e:
                bad += 1
                rejects.add(lineno, f"label file {path}: {e}", id=stem)
                continue
            objects.append({"label": label, "box": box})
    return objects, n, bad


def _rows(csv_path: str, rejects: Rejects):
    """Yields (line, dict) per CSV data row; bad bytes and wrong field counts are rejected."""
    if not os.path.isfile(csv_path):
        raise UserError("file not found", path=csv_path)
    with open(csv_path, "rb") as f:
        raw_lines = f.read().splitlines()
    if not raw_lines:
        raise UserError("empty CSV", path=csv_path)
    try:
        header = next(csv.reader([raw_lines[0].decode("utf-8-sig")]))
    except UnicodeDecodeError:
        raise UserError("header is not valid UTF-8", path=csv_path, line=1) from None
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise UserError(f"missing column(s) {', '.join(missing)}", path=csv_path, line=1)
    for lineno, raw in enumerate(raw_lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rejects.add(lineno, f"not valid UTF-8 (byte {e.start})")
            continue
        fields = next(csv.reader([text]))
        if len(fields) != len(header):
            rejects.add(lineno, f"expected {len(header)} fields, got {len(fields)}")
            continue
        yield lineno, dict(zip(header, (v.strip() for v in fields)))


def run(args: argparse.Namespace) -> int:
    log = get_logger("import-grazpedwri")
    if not os.path.isdir(args.images):
        raise UserError("images folder not found", path=args.images)
    if args.labels is not None and not os.path.isdir(args.labels):
        raise UserError("labels folder not found", path=args.labels)
    rejects = Rejects(source=os.fspath(args.csv), strict=args.strict)
    manifest, mined, boxes = [], [], []
    seen: dict[str, int] = {}
    label_lines, label_bad = 0, 0
    rows = list(_rows(args.csv, rejects))
    n_read = len(rows) + len(rejects)
    for lineno, row in track(rows, total=len(rows), desc="importing"):
        stem = row["filestem"]
        if not stem:
            rejects.add(lineno, "missing filestem")
            continue
        if stem in seen:
            rejects.add(lineno, f"duplicate filestem (first seen on line {seen[stem]})", id=stem)
            continue
        image = _find_image(args.images, stem)
        if image is None:
            rejects.add(lineno, "image not found in --images", id=stem)
            continue
        try:
            cast, metal = _flag(row.get("cast")), _flag(row.get("metal"))
            uncertain, visible = _flag(row.get("diagnosis_uncertain")), _flag(row.get("fracture_visible"))
            age = float(row["age"]) if (row.get("age") or "").lower() not in _EMPTY else None
        except ValueError as e:
            rejects.add(lineno, f"bad value: {e}", id=stem)
            continue
        if age is not None and not (0.0 <= age <= MAX_AGE_YEARS):
            rejects.add(lineno, f"age {row['age']!r} outside 0..{MAX_AGE_YEARS:g} years", id=stem)
            continue
        lat_text, proj_text = row["laterality"].lower(), row["projection"].lower().removesuffix(".0")
        side = _SIDES.get(lat_text)
        if side is None and lat_text not in _EMPTY:
            rejects.add(lineno, f"laterality {row['laterality']!r} is not L or R", id=stem)
            continue
        view = _VIEWS.get(proj_text)
        if view is None and proj_text not in _EMPTY:
            rejects.add(lineno, f"projection {row['projection']!r} is not 1 (pa), 2 (lateral) or "
                                "3 (oblique)", id=stem)
            continue
        try:  # decoded once here: corrupt, constant or oversized images are rejected now
            img = load_image(image)
        except ImageError as e:
            rejects.add(lineno, f"image {os.path.basename(image)}: {e.reason}", id=stem)
            continue
        objects: list[dict] = []
        if args.labels is not None:
            objects, n, bad = _read_labels(args.labels, stem, (img.shape[1], img.shape[0]), rejects)
            label_lines, label_bad = label_lines + n, label_bad + bad
        labels = {o["label"] for o in objects}
        try:
            regions, g, parsed = findings_from_ao(
                row["ao_classification"], laterality=side, cast=bool(cast), metal=bool(metal),
                uncertain=bool(uncertain) or visible is False,
                healing="periostealreaction" in labels,
                soft_tissue_swelling=bool(labels & {"softtissue", "pronatorsign"}))
        except AOCodeError as e:
            rejects.add(lineno, str(e), id=stem)
            continue
        seen[stem] = lineno
        pid = row["patient_id"]
        manifest.append({"id": stem, "patient_id": pid, "study_id": f"{pid}_{row['study_number']}",
                         "image": image, "report": templated_report(regions, g, parsed, view), "view": view,
                         "laterality": side, "age_years": age, "split": _split(pid)})
        mined.append(mined_row(stem, regions, g, "ao_codes"))
        if args.labels is not None:
            boxes.append({"id": stem, "boxes": {}, "scores": {}, "objects": objects})
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        for name, rows_out in (("manifest.jsonl", manifest), ("mined.jsonl", mined)) + (
                (("boxes.jsonl", boxes),) if args.labels is not None else ()):
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                for r in rows_out:
                    f.write(dumps(r) + "\n")
        rejects.write(rejects_path(os.path.join(tmp, "manifest.jsonl")))
    n_rejected_rows = len(rejects) - label_bad
    log.info("imported %d images from %d patients", len(manifest), len({m["patient_id"] for m in manifest}))
    print(f"read {n_read} rows = imported {len(manifest)} + rejected {n_rejected_rows}"
          + (f"; label lines read {label_lines} = used {label_lines - label_bad} + rejected {label_bad}"
             if args.labels is not None else "") + f"; wrote {args.out}")
    return 0
