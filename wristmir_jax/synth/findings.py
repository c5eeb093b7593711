"""Sampling the cohort: patients, studies, views, gold findings and the per-study geometry of
each fracture (what the renderer draws and the report describes).

Everything here is a pure function of an explicit numpy Generator; `plan_dataset` turns
(seed, n_images) into a list of study dicts that are plain JSON-able data, so worker processes
can render any image from (study, view, image index) alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from wristmir_jax.schema import REGIONS, empty_global, empty_region, validate_findings


@dataclass(frozen=True)
class Prevalence:
    """Target rates per study (regions overlap within one study)."""

    distal_radius: float = 0.50
    distal_ulna: float = 0.18
    ulnar_styloid: float = 0.13
    normal: float = 0.12          # no fracture of the three regions
    other_fracture: float = 0.06  # scaphoid / metacarpal confounders
    uncertain: float = 0.05       # share of studies with a hedged (uncertain) region finding
    cast: float = 0.10
    hardware: float = 0.03
    follow_up: float = 0.15       # patients with a fracture who return for a healing check

    @classmethod
    def from_any(cls, value: "Prevalence | dict | None") -> "Prevalence":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise TypeError("prevalence must be a Prevalence, a dict or None")
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown prevalence field(s): {', '.join(unknown)}")
        out = cls(**{k: float(v) for k, v in value.items()})
        for k, v in asdict(out).items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"prevalence {k}={v} is outside [0, 1]")
        return out


REGION_PATTERNS: dict[str, tuple[tuple[str | None, float], ...]] = {
    # (pattern, weight) for young (< 10 y) children; older children shift toward physeal and
    # complete fractures (see _region_pattern).
    "distal_radius": (("buckle", 0.50), ("greenstick", 0.15), ("complete", 0.15), ("salter_harris", 0.20)),
    "distal_ulna": (("buckle", 0.30), ("greenstick", 0.20), ("complete", 0.20), ("salter_harris", 0.12),
                    ("plastic_bowing", 0.18)),
    # The AO pediatric classification codes every ulnar styloid fracture as an avulsion
    # (..u-E/7, ..u-M/7); reports often just say "ulnar styloid fracture".
    "ulnar_styloid": (("avulsion", 1.0),),
}
SH_GRADES = ((1, 0.15), (2, 0.65), (3, 0.08), (4, 0.10), (5, 0.02))
# Share of the cohort (ages 2-17, gamma-distributed around 9.5 y) whose ulnar styloid has ossified.
STYLOID_OSSIFIED_SHARE = 0.6
COMPANION = {"distal_radius": {"distal_ulna": 0.05, "ulnar_styloid": 0.06},
             "distal_ulna": {"distal_radius": 0.15, "ulnar_styloid": 0.0},
             "ulnar_styloid": {"distal_radius": 0.25, "distal_ulna": 0.0}}
VIEW_SETS = ((("pa", "lateral"), 0.55), (("pa", "lateral", "oblique"), 0.45))


def _choice(rng: np.random.Generator, items):
    vals = [v for v, _ in items]
    w = np.array([p for _, p in items], dtype=float)
    return vals[int(rng.choice(len(vals), p=w / w.sum()))]


def _tri(rng: np.random.Generator, p_true: float, p_false: float) -> bool | None:
    u = rng.random()
    return True if u < p_true else (False if u < p_true + p_false else None)


def sample_anatomy(rng: np.random.Generator) -> dict[str, Any]:
    """Per-patient variation: size, ossification timing, physeal closure, soft tissue."""
    return {
        "size_jitter": float(rng.normal(1.0, 0.05)),
        "closure_age": float(rng.uniform(14.8, 17.8)),
        "ossif_shift": float(rng.normal(0.0, 0.6)),        # years, early/late maturer
        "ulnar_variance": float(rng.normal(0.0, 0.8)),     # mm at adult scale
        "radial_incl_deg": float(rng.uniform(6.0, 12.0)),  # physis tilt in PA
        "volar_tilt_deg": float(rng.uniform(6.0, 14.0)),
        "soft_margin": float(rng.uniform(7.0, 12.0)),      # mm of soft tissue beyond the bones
        "carpal_jitter": rng.normal(0.0, 0.6, size=(8, 2)).round(4).tolist(),
        "bone_density": float(rng.uniform(0.9, 1.1)),
    }


def _region_pattern(rng: np.random.Generator, region: str, age: float, physis_open: bool,
                    ulna_epi: bool) -> str | None:
    items = list(REGION_PATTERNS[region])
    if region != "ulnar_styloid" and age >= 10:
        items = [(p, w * (1.8 if p in ("salter_harris", "complete") else 0.7)) for p, w in items]
    if not physis_open or (region == "distal_ulna" and not ulna_epi):
        items = [(p, w) for p, w in items if p != "salter_harris"]
    return _choice(rng, items)


def sample_region(rng: np.random.Generator, region: str, age: float, physis_open: bool,
                  ulna_epi: bool, uncertain: bool) -> dict[str, Any]:
    """One region's gold finding (fracture present or uncertain)."""
    r = empty_region()
    if uncertain:
        r["fracture"] = "uncertain"
        if region == "distal_radius" and rng.random() < 0.6:
            r["pattern"] = "buckle"
        elif region == "ulnar_styloid":
            r["pattern"] = "avulsion"
        return r
    r["fracture"] = "present"
    p = _region_pattern(rng, region, age, physis_open, ulna_epi)
    r["pattern"] = p
    if p == "buckle":
        r["displaced"] = _tri(rng, 0.0, 0.35)
        r["angulated"] = _tri(rng, 0.0, 0.25)
    elif p == "greenstick":
        r["displaced"] = _tri(rng, 0.0, 0.35)
        r["angulated"] = _tri(rng, 0.7, 0.15)
    elif p == "complete":
        r["displaced"] = _tri(rng, 0.45, 0.4)
        r["angulated"] = _tri(rng, 0.4, 0.4)
    elif p == "salter_harris":
        r["salter_harris"] = int(_choice(rng, SH_GRADES))
        r["displaced"] = _tri(rng, 0.4, 0.45)
        r["angulated"] = _tri(rng, 0.15, 0.2)
    elif p == "avulsion":
        r["displaced"] = _tri(rng, 0.4, 0.4)
    elif p is None:
        r["displaced"] = _tri(rng, 0.0, 0.5)
    return r


def sample_geometry(rng: np.random.Generator, region: str, r: dict[str, Any]) -> dict[str, Any]:
    """How a region's finding is drawn: level, side, amplitudes, displacement, angle (mm/deg at
    adult scale; the renderer scales by the patient's size). Shared by every view of a study."""
    unc = r["fracture"] == "uncertain"
    geo: dict[str, Any] = {
        "level": float(rng.uniform(0.3, 0.62)),       # fraction of the metaphysis box height
        "side": int(rng.choice([-1, 1])),             # which cortex (radial/ulnar, volar/dorsal)
        "both_sides": bool(rng.random() < 0.5),
        "bulge": float(rng.uniform(0.55, 0.8) if unc else rng.uniform(1.6, 2.3)),
        "line_width": float(rng.uniform(0.35, 0.5) if unc else rng.uniform(0.7, 1.1)),
        "line_contrast": float(rng.uniform(0.25, 0.4) if unc else rng.uniform(0.8, 0.97)),
        "line_slope": float(rng.uniform(-0.18, 0.18)),
        "greenstick_depth": float(rng.uniform(0.55, 0.8)),
        "shift": 0.0,
        "angle_deg": 0.0,
        "sh_offset": float(rng.uniform(0.3, 0.7)),    # where a vertical SH III/IV line crosses
        "bow": float(rng.uniform(2.2, 3.2)),
        "avulsion_gap": float(rng.uniform(0.9, 1.4)),
        "callus": float(rng.uniform(1.4, 2.4)),
    }
    if r["displaced"]:
        geo["shift"] = float(rng.uniform(2.0, 4.5)) * float(rng.choice([-1, 1]))
    if r["angulated"]:
        geo["angle_deg"] = float(rng.uniform(10.0, 24.0)) * float(rng.choice([-1, 1]))
    elif r["pattern"] == "greenstick":
        geo["angle_deg"] = float(rng.uniform(4.0, 7.0)) * geo["side"]
    return geo


def sample_study_findings(rng: np.random.Generator, prev: Prevalence, age: float, anat: dict[str, Any], laterality: str) -> dict[str, Any]:
    """Gold findings + drawing geometry of one acute (first-visit) study."""
    physis_open = age < anat["closure_age"] - 0.3
    ulna_epi = age >= 6.0 + anat["ossif_shift"]
    styloid_ossified = age >= 8.2 + anat["ossif_shift"]
    regions = {name: empty_region() for name in REGIONS}
    g = empty_global()
    g["laterality"] = laterality
    g["other_fracture"] = bool(rng.random() < prev.other_fracture)
    # Follow-up visits only add fracture studies, so first visits are normal a little more often.
    normal = rng.random() < min(1.0, prev.normal * (1 + prev.follow_up * (1 - prev.normal)))
    chosen: list[str] = []
    if not normal and not (g["other_fracture"] and rng.random() < 0.5):
        # A primary region (weights = target rates; styloid fractures need an ossified styloid,
        # so its weight is raised among older children), then common companions: distal radius
        # with distal ulna or styloid, and the radius with either ulnar injury.
        eligible = [n for n in REGIONS if n != "ulnar_styloid" or styloid_ossified]
        w = [(n, getattr(prev, n) / (STYLOID_OSSIFIED_SHARE if n == "ulnar_styloid" else 1.0))
             for n in eligible]
        primary = _choice(rng, w)
        chosen = [primary]
        for n in eligible:
            if n != primary and rng.random() < COMPANION[primary][n]:
                chosen.append(n)
        chosen.sort(key=REGIONS.index)
    hardware = bool(rng.random() < prev.hardware)
    if hardware and "distal_radius" not in chosen:
        chosen.insert(0, "distal_radius")
    uncertain_region = None
    if chosen and rng.random() < prev.uncertain / max(1e-6, 1 - prev.normal):
        uncertain_region = chosen[int(rng.integers(len(chosen)))]
    elif normal and not hardware and rng.random() < 2 * prev.uncertain:
        uncertain_region = str(rng.choice(["distal_radius", "distal_ulna"]))
        chosen = [uncertain_region]
    geometry = {}
    for name in chosen:
        unc = name == uncertain_region and not (hardware and name == "distal_radius")
        r = sample_region(rng, name, age, physis_open, ulna_epi, unc)
        if hardware and name == "distal_radius":
            if r["pattern"] not in ("complete", "salter_harris"):
                r["pattern"] = "complete"
                r["salter_harris"] = None
            r["displaced"], r["angulated"] = False, _tri(rng, 0.0, 0.5)
        regions[name] = r
        geometry[name] = sample_geometry(rng, name, r)
        if rng.random() < 0.06:
            regions[name]["healing"] = r["fracture"] == "present"
    any_frac = bool(chosen) or g["other_fracture"]
    g["hardware"] = hardware
    g["cast"] = bool(hardware or rng.random() < (prev.cast * (0.95 if any_frac else 0.3)))
    acute = any(regions[n]["fracture"] == "present" and not regions[n]["healing"] for n in REGIONS)
    g["soft_tissue_swelling"] = bool(acute and rng.random() < 0.55) or bool(not acute and rng.random() < 0.03)
    other = None
    if g["other_fracture"]:
        scaphoid_ok = age >= 7.5 + anat["ossif_shift"]
        other = {"site": "scaphoid" if scaphoid_ok and rng.random() < 0.5 else "metacarpal",
                 "metacarpal": int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.1, 0.1, 0.15, 0.5])),
                 "level": float(rng.uniform(0.15, 0.45)), "slope": float(rng.uniform(-0.3, 0.3))}
    swelling_side = int(rng.choice([-1, 1]))
    cast_type = "plaster" if rng.random() < 0.35 else "fiberglass"
    validate_findings(regions, g)
    return {"regions": regions, "global": g, "geometry": geometry, "other": other,
            "swelling_side": swelling_side, "cast_type": cast_type}


def follow_up_findings(rng: np.random.Generator, first: dict[str, Any]) -> dict[str, Any]:
    """The same fractures 2-5 weeks later: healing, swelling gone, cast sometimes still on."""
    regions = {n: dict(r) for n, r in first["regions"].items()}
    for n, r in regions.items():
        if r["fracture"] == "present":
            r["healing"] = True
        elif r["fracture"] == "uncertain":
            # A hedged finding is either confirmed as healing or resolved as normal on follow-up.
            if rng.random() < 0.5:
                regions[n] = dict(r, fracture="present", healing=True,
                                  pattern=r["pattern"] or ("buckle" if n == "distal_radius" else None))
            else:
                regions[n] = empty_region()
    g = dict(first["global"])
    g["soft_tissue_swelling"] = False
    g["cast"] = bool(g["cast"] or rng.random() < 0.2)
    # K-wires come out at 3-6 weeks: half the follow-ups of pinned fractures show only pin tracts.
    hardware_removed = bool(g["hardware"] and rng.random() < 0.5)
    if hardware_removed:
        g["hardware"] = False
    geometry = {}
    for n, r in regions.items():
        if r["fracture"] != "absent":
            geo = dict(first["geometry"][n])
            if first["regions"][n]["fracture"] == "uncertain":
                geo.update(bulge=1.6, line_width=0.8, line_contrast=0.7)
            geometry[n] = geo
    validate_findings(regions, g)
    return {"regions": regions, "global": g, "geometry": geometry, "other": first["other"],
            "swelling_side": first["swelling_side"], "cast_type": first["cast_type"],
            "hardware_removed": hardware_removed}


def plan_dataset(seed: int, n_images: int, prevalence: Prevalence | dict | None = None) -> list[dict]:
    """Patients -> studies -> views until exactly `n_images` images are planned.

    Returns study dicts: study_index, patient_index, patient_split, age, laterality, views (list
    of [view, image_index]), findings (regions, global, geometry, other, swelling_side, cast_type), anat,
    follow_up (bool), interval_days, prior_study_index. Prefix-stable: a larger n extends a
    smaller one's plan except for the truncated last study.
    """
    prev = Prevalence.from_any(prevalence)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    studies: list[dict] = []
    n_planned = 0
    patient_index = 0
    while n_planned < n_images:
        age = float(np.clip(rng.gamma(9.0, 1.05), 2.0, 17.0))
        u = rng.random()
        split = "train" if u < 0.70 else ("val" if u < 0.85 else "test")
        anat = sample_anatomy(rng)
        laterality = "left" if rng.random() < 0.5 else "right"
        first = sample_study_findings(rng, prev, age, anat, laterality)
        visits = [(first, age, False, 0)]
        has_frac = any(r["fracture"] != "absent" for r in first["regions"].values())
        if has_frac and rng.random() < prev.follow_up:
            days = int(rng.integers(14, 36))
            visits.append((follow_up_findings(rng, first), age + days / 365.25, True, days))
        prior = None
        for findings, visit_age, follow, days in visits:
            if n_planned >= n_images:
                break
            views = list(_choice(rng, VIEW_SETS))
            views = views[: n_images - n_planned]
            study_index = len(studies)
            studies.append({
                "study_index": study_index, "patient_index": patient_index, "patient_split": split,
                "age": round(visit_age, 2), "laterality": laterality,
                "views": [[v, n_planned + k] for k, v in enumerate(views)],
                "findings": findings, "anat": anat, "follow_up": follow, "interval_days": days,
                "prior_study_index": prior,
            })
            prior = study_index
            n_planned += len(views)
        patient_index += 1
    return studies
