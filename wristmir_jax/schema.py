"""The findings schema: the project's contract between the generator's gold labels, the report
miners, the GRAZPEDWRI-DX importer, the dataset, the losses and evaluation.

A case's findings are two dicts:
  regions = {region: R for region in REGIONS}
    R = {"fracture": "present"|"absent"|"uncertain",
         "pattern": one of PATTERNS or None,
         "salter_harris": 1..5 or None,      # only with pattern "salter_harris"
         "displaced": bool or None,          # None = not stated / not applicable
         "angulated": bool or None,
         "healing": bool}
  global_ = {"laterality": "left"|"right"|None, "cast": bool, "hardware": bool,
             "soft_tissue_swelling": bool, "other_fracture": bool}

`encode_record` turns findings into a fixed-length int32 vector (RECORD_LEN) so that batched,
jittable functions (report-derived relevance inside the train step, evaluation) can read them.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

REGIONS: tuple[str, ...] = ("distal_radius", "distal_ulna", "ulnar_styloid")
NUM_REGIONS = len(REGIONS)
REGION_INDEX = {r: i for i, r in enumerate(REGIONS)}
REGION_DISPLAY = {"distal_radius": "distal radius", "distal_ulna": "distal ulna",
                  "ulnar_styloid": "ulnar styloid"}

FRACTURE_STATUS: tuple[str, ...] = ("absent", "present", "uncertain")
PATTERNS: tuple[str, ...] = ("buckle", "greenstick", "complete", "salter_harris", "avulsion",
                             "plastic_bowing")
LATERALITY: tuple[str, ...] = ("left", "right")
VIEWS: tuple[str, ...] = ("pa", "lateral", "oblique")
SPLITS: tuple[str, ...] = ("train", "val", "test")
GLOBAL_FLAGS: tuple[str, ...] = ("cast", "hardware", "soft_tissue_swelling", "other_fracture")
REGION_KEYS: tuple[str, ...] = ("fracture", "pattern", "salter_harris", "displaced", "angulated",
                                "healing")
GLOBAL_KEYS: tuple[str, ...] = ("laterality",) + GLOBAL_FLAGS


class SchemaError(ValueError):
    """Findings that do not fit the schema; the message names the field."""


def empty_region() -> dict[str, Any]:
    return {"fracture": "absent", "pattern": None, "salter_harris": None, "displaced": None,
            "angulated": None, "healing": False}


def empty_global() -> dict[str, Any]:
    return {"laterality": None, "cast": False, "hardware": False, "soft_tissue_swelling": False,
            "other_fracture": False}


def empty_findings() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    return {r: empty_region() for r in REGIONS}, empty_global()


def _check_opt_bool(where: str, v: Any) -> None:
    if v is not None and not isinstance(v, bool):
        raise SchemaError(f"{where}: expected true, false or null, got {v!r}")


def validate_region(name: str, r: Any) -> None:
    """Raises SchemaError if one region's findings break the schema or its internal rules."""
    if not isinstance(r, dict):
        raise SchemaError(f"regions.{name}: expected an object")
    missing = [k for k in REGION_KEYS if k not in r]
    extra = [k for k in r if k not in REGION_KEYS]
    if missing:
        raise SchemaError(f"regions.{name}: missing {', '.join(missing)}")
    if extra:
        raise SchemaError(f"regions.{name}: unknown field {', '.join(extra)}")
    if r["fracture"] not in FRACTURE_STATUS:
        raise SchemaError(f"regions.{name}.fracture: {r['fracture']!r} not in {FRACTURE_STATUS}")
    if r["pattern"] is not None and r["pattern"] not in PATTERNS:
        raise SchemaError(f"regions.{name}.pattern: {r['pattern']!r} not in {PATTERNS}")
    sh = r["salter_harris"]
    if sh is not None and (isinstance(sh, bool) or not isinstance(sh, int) or not 1 <= sh <= 5):
        raise SchemaError(f"regions.{name}.salter_harris: expected 1..5 or null, got {sh!r}")
    _check_opt_bool(f"regions.{name}.displaced", r["displaced"])
    _check_opt_bool(f"regions.{name}.angulated", r["angulated"])
    if not isinstance(r["healing"], bool):
        raise SchemaError(f"regions.{name}.healing: expected true or false")
    if r["fracture"] == "absent":
        if r["pattern"] is not None or sh is not None or r["displaced"] or r["angulated"] or r["healing"]:
            raise SchemaError(f"regions.{name}: fracture absent but a pattern/grade/displacement/healing is set")
    if sh is not None and r["pattern"] != "salter_harris":
        raise SchemaError(f"regions.{name}: salter_harris grade set with pattern {r['pattern']!r}")


def validate_global(g: Any) -> None:
    if not isinstance(g, dict):
        raise SchemaError("global: expected an object")
    missing = [k for k in GLOBAL_KEYS if k not in g]
    extra = [k for k in g if k not in GLOBAL_KEYS]
    if missing:
        raise SchemaError(f"global: missing {', '.join(missing)}")
    if extra:
        raise SchemaError(f"global: unknown field {', '.join(extra)}")
    if g["laterality"] is not None and g["laterality"] not in LATERALITY:
        raise SchemaError(f"global.laterality: {g['laterality']!r} not in {LATERALITY} or null")
    for k in GLOBAL_FLAGS:
        if not isinstance(g[k], bool):
            raise SchemaError(f"global.{k}: expected true or false")


def validate_findings(regions: Any, global_: Any) -> None:
    if not isinstance(regions, dict):
        raise SchemaError("regions: expected an object")
    missing = [r for r in REGIONS if r not in regions]
    extra = [r for r in regions if r not in REGIONS]
    if missing:
        raise SchemaError(f"regions: missing {', '.join(missing)}")
    if extra:
        raise SchemaError(f"regions: unknown region {', '.join(extra)}")
    for name in REGIONS:
        validate_region(name, regions[name])
    validate_global(global_)


def validate_box(box: Any, width: int | None = None, height: int | None = None, where: str = "box") -> None:
    """A box is [x0, y0, x1, y1] in pixels of the original image, x0 < x1, y0 < y1, inside it."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise SchemaError(f"{where}: expected [x0, y0, x1, y1]")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        raise SchemaError(f"{where}: coordinates must be numbers") from None
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise SchemaError(f"{where}: coordinates must be finite")
    if x1 <= x0 or y1 <= y0:
        raise SchemaError(f"{where}: needs x0 < x1 and y0 < y1, got {list(box)}")
    if width is not None and height is not None:
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise SchemaError(f"{where}: {list(box)} lies outside the {width}x{height} image")


# ---------------------------------------------------------------------------------------------
# Integer encoding. Per region (REGION_FIELDS, 6 ints), then global (GLOBAL_FIELDS, 5 ints).
#   fracture: 0 absent, 1 present, 2 uncertain
#   pattern: 0 none, 1 + PATTERNS.index
#   salter_harris: 0 none, 1..5
#   displaced / angulated: 0 unknown(None), 1 false, 2 true
#   healing: 0/1
#   laterality: 0 unknown, 1 left, 2 right; flags 0/1
# ---------------------------------------------------------------------------------------------
REGION_FIELDS: tuple[str, ...] = REGION_KEYS
GLOBAL_FIELDS: tuple[str, ...] = GLOBAL_KEYS
REGION_FIELD_LEN = len(REGION_FIELDS)
RECORD_LEN = NUM_REGIONS * REGION_FIELD_LEN + len(GLOBAL_FIELDS)
# Offsets a jitted function can use: record[..., region_offset(r) + FIELD_INDEX["pattern"]].
FIELD_INDEX = {k: i for i, k in enumerate(REGION_FIELDS)}
GLOBAL_OFFSET = NUM_REGIONS * REGION_FIELD_LEN
GLOBAL_INDEX = {k: GLOBAL_OFFSET + i for i, k in enumerate(GLOBAL_FIELDS)}


def region_offset(region: str | int) -> int:
    i = REGION_INDEX[region] if isinstance(region, str) else int(region)
    return i * REGION_FIELD_LEN


def _tri(v: bool | None) -> int:
    return 0 if v is None else (2 if v else 1)


def _untri(v: int) -> bool | None:
    return None if v == 0 else bool(v == 2)


def encode_record(regions: dict, global_: dict) -> np.ndarray:
    """Findings -> int32[RECORD_LEN]. Validates first (SchemaError on bad input)."""
    validate_findings(regions, global_)
    out = np.zeros(RECORD_LEN, np.int32)
    for i, name in enumerate(REGIONS):
        r = regions[name]
        o = i * REGION_FIELD_LEN
        out[o + 0] = FRACTURE_STATUS.index(r["fracture"])
        out[o + 1] = 0 if r["pattern"] is None else 1 + PATTERNS.index(r["pattern"])
        out[o + 2] = 0 if r["salter_harris"] is None else int(r["salter_harris"])
        out[o + 3] = _tri(r["displaced"])
        out[o + 4] = _tri(r["angulated"])
        out[o + 5] = int(bool(r["healing"]))
    g = global_
    out[GLOBAL_OFFSET + 0] = 0 if g["laterality"] is None else 1 + LATERALITY.index(g["laterality"])
    for j, k in enumerate(GLOBAL_FLAGS, start=1):
        out[GLOBAL_OFFSET + j] = int(bool(g[k]))
    return out


def decode_record(rec: np.ndarray) -> tuple[dict, dict]:
    """int[RECORD_LEN] -> (regions, global_). Inverse of encode_record."""
    rec = np.asarray(rec).astype(int)
    if rec.shape != (RECORD_LEN,):
        raise SchemaError(f"record: expected shape ({RECORD_LEN},), got {rec.shape}")
    regions = {}
    for i, name in enumerate(REGIONS):
        o = i * REGION_FIELD_LEN
        regions[name] = {
            "fracture": FRACTURE_STATUS[rec[o + 0]],
            "pattern": None if rec[o + 1] == 0 else PATTERNS[rec[o + 1] - 1],
            "salter_harris": None if rec[o + 2] == 0 else int(rec[o + 2]),
            "displaced": _untri(rec[o + 3]),
            "angulated": _untri(rec[o + 4]),
            "healing": bool(rec[o + 5]),
        }
    g = {"laterality": None if rec[GLOBAL_OFFSET] == 0 else LATERALITY[rec[GLOBAL_OFFSET] - 1]}
    for j, k in enumerate(GLOBAL_FLAGS, start=1):
        g[k] = bool(rec[GLOBAL_OFFSET + j])
    return regions, g


def fracture_labels(records: np.ndarray, uncertain_as_positive: bool = True) -> np.ndarray:
    """int[..., RECORD_LEN] -> int[..., NUM_REGIONS] binary fracture labels per region.

    "uncertain" (hedged reports: "possible", "cannot exclude") counts as positive by default, the
    clinically conservative reading; pass False to count only "present".
    """
    records = np.asarray(records)
    status = records[..., [i * REGION_FIELD_LEN for i in range(NUM_REGIONS)]]
    pos = status == 1
    if uncertain_as_positive:
        pos = pos | (status == 2)
    return pos.astype(np.int32)


def deep_copy_findings(regions: dict, global_: dict) -> tuple[dict, dict]:
    return copy.deepcopy(regions), copy.deepcopy(global_)
