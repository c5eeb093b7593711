"""GRAZPEDWRI-DX support: AO/OTA pediatric (PCCF) fracture codes -> the findings schema, a
templated report per image written from those findings, and YOLO label files -> pixel boxes.

AO pediatric codes, e.g. `23r-M/2.1`:
  segment 23 = distal forearm (22 = forearm shaft, 21 = proximal forearm, 7x = hand/carpus);
  bone r = radius, u = ulna, none = both;
  zone E = epiphysis, M = metaphysis, D = diaphysis;
  child code after the slash: M/2 incomplete (M/2.1 buckle/torus, M/2.2 greenstick),
  M/3 complete (M/3.1 transverse, M/3.2 oblique/spiral), E/1..E/4 Salter-Harris I..IV,
  E/7 (and M/7) ligament avulsion; for the ulna that is the ulnar styloid avulsion.
Any segment other than 23, or zone D, is a fracture elsewhere (other_fracture) and never enters
the three regions; codes of other segments are accepted in any AO-like form ("72-A2", "77.1.2").
Several codes are separated by ';', ',', '&', '|' or spaces.
"""

from __future__ import annotations

import re
from typing import Any

from wristmir_jax.schema import REGIONS, empty_global, empty_region, validate_findings

_CODE = re.compile(r"^(?P<seg>\d{2})(?P<bone>[ru]?)\s*-\s*(?P<zone>[EMD])\s*/\s*(?P<child>\d)(?:\.(?P<sub>\d))?"
                   r"(?:\s*[A-Za-z0-9.]*)?$")
_OTHER_SEGMENT = re.compile(r"^((?!23)\d{2})[a-z]?\s*[-.]\s*[A-Za-z0-9./]+$")
# Codes are separated by ';', ',', '&' or '|', or just by spaces before the next "23r-"-like code.
_SPLIT = re.compile(r"[;,&|]|\s+(?=\d{2}[a-z]?\s*-)")
# YOLO class order of the public GRAZPEDWRI-DX release (meta.yaml).
YOLO_CLASSES: tuple[str, ...] = ("boneanomaly", "bonelesion", "foreignbody", "fracture", "metal",
                                 "periostealreaction", "pronatorsign", "softtissue", "text")
_SH_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V"}
_ELSEWHERE = {"21": "proximal forearm", "72": "scaphoid", "71": "lunate", "73": "capitate",
              "74": "hamate", "75": "trapezium", "77": "metacarpal", "78": "phalanx"}


class AOCodeError(ValueError):
    """An AO code that cannot be parsed; the message names the code."""


def parse_ao_code(code: str) -> dict[str, Any]:
    """One code -> {"segment", "bones": tuple of regions or (), "zone", "child", "sub",
    "pattern", "salter_harris", "elsewhere": bool}."""
    m = _CODE.match(code.strip())
    if not m:
        other = _OTHER_SEGMENT.match(code.strip())
        if other:  # a code of another bone (carpus, hand, proximal forearm): only "elsewhere" matters
            return {"segment": other.group(1), "zone": None, "child": None, "sub": None, "pattern": None,
                    "salter_harris": None, "elsewhere": True, "bones": ()}
        raise AOCodeError(f"unparseable AO code {code.strip()!r}")
    seg, bone, zone = m.group("seg"), m.group("bone"), m.group("zone")
    child, sub = int(m.group("child")), (int(m.group("sub")) if m.group("sub") else None)
    out = {"segment": seg, "zone": zone, "child": child, "sub": sub, "pattern": None,
           "salter_harris": None, "elsewhere": seg != "23" or zone == "D", "bones": ()}
    if out["elsewhere"]:
        return out
    if child in (7,):
        out["pattern"] = "avulsion"
        out["bones"] = {"u": ("ulnar_styloid",), "r": ("distal_radius",), "": ("distal_radius", "ulnar_styloid")}[bone]
        return out
    out["bones"] = {"r": ("distal_radius",), "u": ("distal_ulna",), "": ("distal_radius", "distal_ulna")}[bone]
    if zone == "E":
        if 1 <= child <= 4:
            out["pattern"], out["salter_harris"] = "salter_harris", child
        elif child in (5, 6):  # two-plane / triplane epiphyseal fractures: physeal, grade not I-IV
            out["pattern"] = "salter_harris"
    elif zone == "M":
        if child == 2:
            out["pattern"] = {1: "buckle", 2: "greenstick"}.get(sub)
        elif child == 3:
            out["pattern"] = "complete"
    return out


def findings_from_ao(codes: str, *, laterality: str | None = None, cast: bool = False,
                     metal: bool = False, uncertain: bool = False, healing: bool = False,
                     soft_tissue_swelling: bool = False) -> tuple[dict, dict, list[dict]]:
    """A CSV cell of codes (possibly empty) plus flags -> (regions, global_, parsed codes)."""
    regions = {r: empty_region() for r in REGIONS}
    g = empty_global()
    g.update(laterality=laterality, cast=bool(cast), hardware=bool(metal),
             soft_tissue_swelling=bool(soft_tissue_swelling))
    parsed = [parse_ao_code(c) for c in _SPLIT.split(codes or "") if c.strip()]
    for p in parsed:
        if p["elsewhere"]:
            g["other_fracture"] = True
            continue
        for name in p["bones"]:
            r = regions[name]
            r["fracture"] = "uncertain" if uncertain else "present"
            # The most specific pattern wins when two codes name the same region.
            if p["pattern"] and (r["pattern"] is None or p["pattern"] == "salter_harris"):
                r["pattern"] = p["pattern"]
                r["salter_harris"] = p["salter_harris"] if p["pattern"] == "salter_harris" else None
            r["healing"] = bool(healing)
    validate_findings(regions, g)
    return regions, g, parsed


_PATTERN_PHRASE = {"buckle": "buckle fracture", "greenstick": "greenstick fracture",
                   "complete": "complete fracture", "avulsion": "avulsion fracture",
                   "plastic_bowing": "plastic bowing deformity", None: "fracture"}
_REGION_PHRASE = {"distal_radius": "distal radius", "distal_ulna": "distal ulna",
                  "ulnar_styloid": "ulnar styloid"}
_VIEW_TEXT = {"pa": "PA", "lateral": "lateral", "oblique": "oblique", None: "single"}


def templated_report(regions: dict, g: dict, parsed: list[dict], view: str | None) -> str:
    """A plain report written from the findings (deterministic; no identifiers)."""
    side = g["laterality"] or "unspecified"
    lines = [f"TECHNIQUE: {_VIEW_TEXT.get(view, 'single')} view of the {side} wrist."]
    findings = []
    for name in REGIONS:
        r = regions[name]
        if r["fracture"] == "absent":
            findings.append(f"No fracture of the {_REGION_PHRASE[name]}.")
            continue
        if r["pattern"] == "salter_harris":
            phrase = (f"Salter-Harris type {_SH_ROMAN[r['salter_harris']]} fracture" if r["salter_harris"]
                      else "physeal fracture")
        else:
            phrase = _PATTERN_PHRASE[r["pattern"]]
        text = f"{phrase} of the {_REGION_PHRASE[name]}"
        if r["healing"]:
            text += " with periosteal reaction, healing"
        text = ("Possible " + text) if r["fracture"] == "uncertain" else text[0].upper() + text[1:]
        findings.append(text + ".")
    for p in parsed:
        if p["elsewhere"]:
            if p["segment"] == "22" or p["zone"] == "D":
                where = "forearm shaft"
            else:
                where = _ELSEWHERE.get(p["segment"], "carpus")
            findings.append(f"Fracture of the {where}.")
    if g["soft_tissue_swelling"]:
        findings.append("Soft tissue swelling.")
    if g["cast"]:
        findings.append("Cast in place.")
    if g["hardware"]:
        findings.append("Orthopedic hardware in place.")
    lines.append("FINDINGS: " + " ".join(findings))
    return "\n".join(lines) + "\n"


def parse_yolo_line(line: str, width: int, height: int) -> tuple[str, list[float]]:
    """'class xc yc w h' (normalised) -> (class name, [x0, y0, x1, y1] in pixels, clipped)."""
    parts = line.split()
    if len(parts) != 5:
        raise ValueError(f"expected 5 fields, got {len(parts)}")
    try:
        cls = int(parts[0])
        xc, yc, w, h = (float(v) for v in parts[1:])
    except ValueError:
        raise ValueError("fields must be numbers") from None
    if not 0 <= cls < len(YOLO_CLASSES):
        raise ValueError(f"class {cls} outside 0..{len(YOLO_CLASSES) - 1}")
    if not all(0.0 <= v <= 1.0 for v in (xc, yc, w, h)) or w <= 0 or h <= 0:
        raise ValueError("coordinates must be normalised to [0, 1] with positive size")
    x0, x1 = max(0.0, (xc - w / 2) * width), min(float(width), (xc + w / 2) * width)
    y0, y1 = max(0.0, (yc - h / 2) * height), min(float(height), (yc + h / 2) * height)
    return YOLO_CLASSES[cls], [round(x0, 2), round(y0, 2), round(x1, 2), round(y1, 2)]
