"""Canonical captions from structured findings: one global caption and one per region.

Captions are the text the encoders are trained on. They are a deterministic function of the
structured record (no report free text survives mining), written in a fixed canonical order, so
identical findings always give identical captions and distinct findings give distinct captions.
`caption_id` hashes a caption into a stable 31-bit id; the data pipeline stores it so that two
items with equal captions are never treated as negatives of each other.
"""

from __future__ import annotations

import hashlib
from typing import Any

from wristmir_jax.schema import REGION_DISPLAY, REGIONS, validate_findings

_PATTERN_TEXT = {
    "buckle": "buckle fracture",
    "greenstick": "greenstick fracture",
    "complete": "complete fracture",
    "avulsion": "avulsion fracture",
    "plastic_bowing": "plastic bowing fracture",
    None: "fracture",
}
_SH_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V"}


def _fracture_phrase(r: dict[str, Any]) -> str:
    """The finding of one region without its name: 'buckle fracture, nondisplaced'."""
    if r["fracture"] == "absent":
        return "no fracture"
    if r["pattern"] == "salter_harris":
        grade = r["salter_harris"]
        core = ("Salter-Harris type " + _SH_ROMAN[grade] + " fracture") if grade else "Salter-Harris fracture"
    else:
        core = _PATTERN_TEXT[r["pattern"]]
    if r["fracture"] == "uncertain":
        core = "possible " + core
    parts = [core]
    if r["displaced"] is not None:
        parts.append("displaced" if r["displaced"] else "nondisplaced")
    if r["angulated"] is not None:
        parts.append("angulated" if r["angulated"] else "nonangulated")
    if r["healing"]:
        parts.append("healing")
    return ", ".join(parts)


def region_caption(name: str, r: dict[str, Any]) -> str:
    """'distal radius: buckle fracture, nondisplaced' / 'distal radius: no fracture'."""
    return f"{REGION_DISPLAY[name]}: {_fracture_phrase(r)}"


def global_caption(regions: dict[str, dict[str, Any]], global_: dict[str, Any]) -> str:
    """All findings in one sentence list, canonical order: side, regions (REGIONS order), fracture
    elsewhere, soft tissues, cast, hardware. Regions without fracture are summarised together."""
    side = global_["laterality"]
    head = f"{side} wrist" if side else "wrist"
    involved = [n for n in REGIONS if regions[n]["fracture"] != "absent"]
    parts = [region_caption(n, regions[n]) for n in involved]
    if not involved:
        parts.append("no fracture of the distal radius, distal ulna or ulnar styloid")
    if global_["other_fracture"]:
        parts.append("fracture elsewhere")
    if global_["soft_tissue_swelling"]:
        parts.append("soft-tissue swelling")
    if global_["cast"]:
        parts.append("cast")
    if global_["hardware"]:
        parts.append("orthopedic hardware")
    return head + ". " + ". ".join(parts) + "."


def captions(regions: dict[str, dict[str, Any]], global_: dict[str, Any]) -> dict[str, str]:
    """{"global": ..., "distal_radius": ..., "distal_ulna": ..., "ulnar_styloid": ...}.

    Validates the findings first (schema.SchemaError on bad input).
    """
    validate_findings(regions, global_)
    out = {"global": global_caption(regions, global_)}
    for name in REGIONS:
        out[name] = region_caption(name, regions[name])
    return out


def caption_id(text: str) -> int:
    """A stable 31-bit non-negative id of a caption (BLAKE2b, independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF
