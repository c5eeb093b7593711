"""Free-text radiology reports written from gold findings in varied radiologist style.

A report is composed from parts with a seeded Generator: sections present or absent and in
varying order, synonyms (torus/buckle, SH II/Salter-Harris 2), negations in many forms, hedges
for uncertain findings (before, after and around the finding), history lines that raise fracture
questions on normal studies or name old healed fractures, comparison lines, measurements and
occasional typos in filler words. Real reports' traps are written too: old remodelled fractures
in the findings, recommendations and plans (a recommended splint is not a cast in place),
removed K-wires with pin tracts (no hardware now), ulnar styloid fractures without the word
"avulsion", and a side given only as a letter in the indication ("L wrist"). The contract: the
report states every finding gold holds and none that it does not. History/indication lines are
always labelled so a reader can set them apart from findings.
"""

from __future__ import annotations


import numpy as np

from wristmir_jax.schema import REGIONS

ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V"}
NUM_WORD = {2: "two", 3: "three"}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


# ---------------------------------------------------------------------------------------------
# Section headers and framing lines.
HISTORY_HEADERS = ("HISTORY:", "INDICATION:", "CLINICAL HISTORY:", "Clinical information:",
                   "Reason for exam:", "Hx:", "Indication:", "History:")
COMPARISON_HEADERS = ("COMPARISON:", "Comparison:", "PRIOR:", "Comparison studies:")
TECHNIQUE_HEADERS = ("TECHNIQUE:", "Technique:", "VIEWS:", "Procedure:")
FINDINGS_HEADERS = ("FINDINGS:", "Findings:", "REPORT:", "FINDINGS")
IMPRESSION_HEADERS = ("IMPRESSION:", "Impression:", "CONCLUSION:", "Summary:", "OPINION:")

MECHANISMS = ("fell on outstretched hand", "FOOSH", "fall from monkey bars", "trampoline injury",
              "fell off a scooter", "fall from bicycle", "injured playing football",
              "fall while roller skating", "fell from a trampoline", "wrist caught during rugby tackle",
              "fall from playground equipment", "twisting injury", "fell down stairs")
SYMPTOMS = ("wrist pain", "pain and swelling", "distal forearm tenderness",
            "pain over the distal radius", "reduced range of motion", "tender over the ulnar side",
            "point tenderness at the wrist", "refusing to use the arm", "snuffbox tenderness")
QUESTIONS = ("r/o fracture", "?fracture", "evaluate for fracture", "query buckle fracture",
             "assess for distal radius fracture", "concern for growth plate injury",
             "?scaphoid fracture", "exclude fracture", "fracture?", "rule out Salter-Harris injury",
             "clinically suspected torus fracture")
OLD_FRACTURE_HISTORY = ("previous distal radius fracture {y} years ago", "history of healed buckle fracture age {a}",
                        "old ulnar styloid fracture", "distal forearm fracture treated in a cast {y} years ago",
                        "remote wrist fracture, healed")
REMOTE_FINDING = {
    "distal_radius": ("Old healed fracture of the distal radius, fully remodeled.",
                      "Healed and remodeled deformity of the distal radius from a remote injury.",
                      "Remote distal radius fracture has completely healed and remodeled."),
    "distal_ulna": ("Old healed fracture of the distal ulna, fully remodeled.",
                    "Remote healed and remodeled fracture of the distal ulna."),
}
PLANS_FRACTURE = ("Recommend splint immobilization and fracture clinic follow-up.",
                  "Suggest cast immobilization for 3-4 weeks.",
                  "Recommend orthopedic referral.",
                  "Removable wrist splint is recommended.")
PLANS_NORMAL = ("If clinical concern for an occult fracture persists, consider a splint and repeat radiographs in 10-14 days.",
                "Recommend thumb spica splint if snuffbox tenderness persists.",
                "Suggest splint for comfort and clinical review.")
HARDWARE_REMOVED = ("The K-wires have been removed; pin tracts are seen in the distal radius.",
                    "Interval removal of the Kirschner wires with residual pin tracts.",
                    "Hardware has been removed. Pin tracts remain visible.")
FOLLOW_HISTORY = ("follow-up of known fracture", "cast check", "interval follow-up",
                  "follow up wrist fracture", "{w} weeks post injury, review healing",
                  "known fracture, routine follow-up")

FILLER_TYPOS = {"unremarkable": "unremarkble", "preserved": "preseved", "identified": "indentified",
                "visualized": "visualised", "appropriate": "appropiate", "evidence": "evidense",
                "obtained": "obtianed", "normal": "normla", "seen": "sen", "maintained": "maintaned"}


def _views_phrase(rng: np.random.Generator, views: list[str], side: str) -> str:
    n = len(views)
    names = {"pa": "PA", "lateral": "lateral", "oblique": "oblique"}
    listed = ", ".join(names[v] for v in views[:-1]) + " and " + names[views[-1]]
    return _pick(rng, (
        f"{NUM_WORD.get(n, n)} views of the {side} wrist.",
        f"{listed} views of the {side} wrist.",
        f"{_cap(side)} wrist, {n} views.",
        f"Radiographs of the {side} wrist ({n} views) were obtained.",
        f"{_cap(side)} wrist: {listed} projections.",
        f"{n}V {side.upper()} WRIST",
    ))


def _history(rng: np.random.Generator, study: dict) -> str:
    age = study["age"]
    if study["follow_up"]:
        w = max(2, int(round(study["interval_days"] / 7)))
        line = _pick(rng, FOLLOW_HISTORY).format(w=w)
    else:
        parts = []
        if rng.random() < 0.8:
            parts.append(_pick(rng, MECHANISMS))
        if rng.random() < 0.7:
            parts.append(_pick(rng, SYMPTOMS))
        if rng.random() < 0.75 or not parts:
            parts.append(_pick(rng, QUESTIONS))
        if rng.random() < 0.12:
            parts.append(_pick(rng, OLD_FRACTURE_HISTORY).format(y=int(rng.integers(1, 4)),
                                                                  a=max(2, int(age) - int(rng.integers(1, 4)))))
        line = _pick(rng, (", ", ". ", "; ")).join(parts)
    if study.get("side_letter"):
        line = _pick(rng, (f"{study['side_letter']} wrist pain", f"{study['side_letter']} arm injury",
                           f"{study['side_letter']} wrist")) + ", " + line[:1].lower() + line[1:]
    if rng.random() < 0.5:
        line = _pick(rng, (f"{int(age)}-year-old, ", f"{int(age)}yo ", f"{int(age)} y/o child, ",
                           "Child, ")) + line
    return _cap(line.strip())


def _comparison(rng: np.random.Generator, study: dict, side: str) -> str:
    if study["follow_up"]:
        d = study["interval_days"]
        return _pick(rng, (f"{_cap(side)} wrist radiographs {d} days prior.",
                           f"Prior study from {max(2, round(d / 7))} weeks ago.",
                           f"Initial injury films ({d} days earlier).",
                           f"Previous {side} wrist series."))
    return _pick(rng, ("None.", "None available.", "No prior studies.", "None", "Nil."))


# ---------------------------------------------------------------------------------------------
# Region findings.
REGION_NAMES = {
    "distal_radius": ("distal radius", "distal radial metaphysis", "distal radius metaphysis",
                      "distal radial metadiaphysis", "distal end of the radius"),
    "distal_ulna": ("distal ulna", "distal ulnar metaphysis", "distal ulna metaphysis",
                    "distal ulnar metadiaphysis"),
    "ulnar_styloid": ("ulnar styloid", "ulnar styloid process", "tip of the ulnar styloid",
                      "base of the ulnar styloid"),
}
PHYSIS_NAMES = {"distal_radius": ("distal radial physis", "distal radius growth plate",
                                  "distal radial growth plate"),
                "distal_ulna": ("distal ulnar physis", "distal ulna growth plate",
                                "distal ulnar growth plate")}
CORTEX_REGIONS = ("distal_radius", "distal_ulna")


def _pattern_noun(rng: np.random.Generator, region: str, r: dict) -> str:
    p = r["pattern"]
    if p == "buckle":
        return _pick(rng, ("buckle fracture", "torus fracture", "buckle (torus) fracture",
                           "torus-type fracture", "buckle-type fracture", "torus buckle fracture"))
    if p == "greenstick":
        return _pick(rng, ("greenstick fracture", "greenstick injury", "greenstick-type fracture"))
    if p == "complete":
        return _pick(rng, ("complete transverse fracture", "transverse fracture",
                           "complete fracture", "complete bicortical fracture",
                           "transverse complete fracture"))
    if p == "salter_harris":
        g = r["salter_harris"]
        return _pick(rng, (f"Salter-Harris type {ROMAN[g]} fracture", f"Salter-Harris {g} fracture",
                           f"SH {ROMAN[g]} fracture", f"SH{g} fracture",
                           f"Salter Harris {ROMAN[g]} injury", f"Salter-Harris {ROMAN[g]} physeal fracture"))
    if p == "avulsion":
        # Reports often leave the pattern implicit: "fracture of the ulnar styloid".
        return _pick(rng, ("avulsion fracture", "small avulsion fracture", "avulsion-type fracture",
                           "fracture", "fracture"))
    if p == "plastic_bowing":
        return _pick(rng, ("plastic bowing deformity", "plastic bowing fracture",
                           "bowing deformity (plastic deformation)"))
    return _pick(rng, ("fracture", "small fracture", "fracture line", "fracture lucency"))


def _cortex(geo: dict) -> str | None:
    """The cortex the renderer bulged or broke (None when both sides are involved)."""
    if geo.get("both_sides"):
        return None
    return "dorsal" if geo.get("side", 1) > 0 else "volar"


def _location(rng: np.random.Generator, region: str, r: dict, geo: dict | None = None) -> str:
    """'of the dorsal cortex of the distal radial metaphysis' and similar."""
    geo = geo or {}
    p = r["pattern"]
    if p == "salter_harris" and region in PHYSIS_NAMES:
        phys = _pick(rng, PHYSIS_NAMES[region])
        extra = {1: "", 2: _pick(rng, ("", " with a metaphyseal fragment", " extending into the metaphysis")),
                 3: _pick(rng, ("", " extending into the epiphysis")),
                 4: _pick(rng, ("", " extending through the metaphysis and epiphysis")),
                 5: ""}[r["salter_harris"]]
        return _pick(rng, (f"of the {phys}", f"through the {phys}", f"involving the {phys}")) + extra
    if p == "plastic_bowing":
        return _pick(rng, ("of the distal ulna", "of the distal ulnar shaft", "involving the distal ulnar diaphysis"))
    name = _pick(rng, REGION_NAMES[region])
    cortex = _cortex(geo) if p == "buckle" else ("dorsal" if geo.get("side", 1) > 0 else "volar")
    if region in CORTEX_REGIONS and p in ("buckle", "greenstick") and cortex and rng.random() < 0.5:
        return f"of the {cortex} cortex of the {name}"
    return _pick(rng, (f"of the {name}", f"involving the {name}", f"at the {name}", f"through the {name}"))


def _displacement(rng: np.random.Generator, r: dict, geo: dict) -> tuple[str, str]:
    """(prefix adjective, trailing clause). Exactly one of them carries the statement."""
    d = r["displaced"]
    if d is None:
        return "", ""
    if d:
        mm = max(1, int(round(abs(geo.get("shift", 3.0)))))
        direction = ("dorsal" if geo.get("shift", 1.0) > 0 else "volar") if r["pattern"] != "avulsion" else ""
        direction = direction if rng.random() < 0.7 else ""
        clause = _pick(rng, (f"with {mm} mm of {direction + ' ' if direction else ''}displacement",
                             f"displaced by approximately {mm} mm",
                             f"with {direction + ' ' if direction else ''}displacement of the distal fragment",
                             f"displaced {_pick(rng, ('one-quarter', 'one-third', 'one-half'))} of the shaft width",
                             "with mild displacement"))
        if rng.random() < 0.3:
            return "displaced", ""
        return "", clause
    if rng.random() < 0.5:
        return _pick(rng, ("nondisplaced", "non-displaced", "undisplaced")), ""
    return "", _pick(rng, ("without displacement", "with no displacement", "in anatomic position without displacement"))


def _angulation(rng: np.random.Generator, r: dict, geo: dict) -> str:
    a = r["angulated"]
    if a is None:
        return ""
    if a:
        deg = max(5, int(round(abs(geo.get("angle_deg", 12.0)))))
        apex = _pick(rng, ("apex volar", "volar")) if geo.get("angle_deg", 1.0) > 0 else _pick(rng, ("apex dorsal", "dorsal"))
        return _pick(rng, (f"with {deg} degrees of {apex} angulation", f"angulated {deg} degrees",
                           f"with approximately {deg}° {apex} angulation", "with mild angulation",
                           f"with {apex} angulation"))
    return _pick(rng, ("without angulation", "with no angulation", "no significant angulation"))


def _healing(rng: np.random.Generator, r: dict) -> str:
    if not r["healing"]:
        return ""
    return _pick(rng, ("with periosteal new bone formation consistent with healing",
                       "with callus formation", "showing interval healing with callus",
                       "with periosteal reaction in keeping with healing", "which is healing",
                       "with early callus, healing"))


def _measurement(rng: np.random.Generator, region: str, r: dict) -> str:
    if r["pattern"] in ("buckle", "greenstick", "complete") and region != "ulnar_styloid" and rng.random() < 0.3:
        cm = _pick(rng, ("1.5", "2", "2.5", "3"))
        return f"approximately {cm} cm proximal to the physis"
    return ""


def region_sentence(rng: np.random.Generator, region: str, r: dict, geo: dict, brief: bool = False) -> str:
    """One sentence stating a present or uncertain region finding with all its attributes."""
    noun = _pattern_noun(rng, region, r)
    loc = _location(rng, region, r, geo)
    if r["fracture"] == "uncertain":
        subtle = _pick(rng, ("subtle ", "", "faint "))
        hedged = _pick(rng, (
            f"Possible {subtle}{noun} {loc}.",
            f"Questionable {subtle}{noun} {loc}.",
            f"Subtle cortical irregularity {loc}, which may represent a {noun}.",
            f"Cannot exclude a {subtle}{noun} {loc}.",
            f"Findings are suspicious for a {subtle}{noun} {loc}.",
            f"Equivocal lucency {loc}, possibly a {noun}.",
            # Hedges after and around the finding.
            f"{_cap(noun)} {loc}, questionable.",
            f"Cortical irregularity {loc}, questionable, possibly representing a {subtle}{noun}.",
            f"A {subtle}{noun} {loc} cannot be excluded.",
            f"{_cap(subtle + noun)} {loc} is suspected but not definite.",
        ))
        if not brief and rng.random() < 0.6:
            hedged += " " + _pick(rng, ("Recommend follow-up radiographs in 7-10 days if symptoms persist.",
                                        "Clinical correlation and repeat imaging in 10 days suggested.",
                                        "Follow-up films may be helpful."))
        return hedged
    pre, disp = _displacement(rng, r, geo)
    ang = _angulation(rng, r, geo)
    heal = _healing(rng, r)
    meas = "" if brief else _measurement(rng, region, r)
    head = (pre + " " + noun).strip()
    clauses = [c for c in (meas, disp, ang, heal) if c]
    style = rng.random()
    if brief or style < 0.45:
        article = "An" if head[:1].lower() in "aeiou" else "A"
        start = _pick(rng, (f"{article} {head}", f"There is {article.lower()} {head}", _cap(head),
                            f"There is evidence of {article.lower()} {head}"))
        body = f"{start} {loc}"
        if clauses:
            body += ", " + ", ".join(clauses)
        return body + "."
    if style < 0.75:
        display = {"distal_radius": "distal radius", "distal_ulna": "distal ulna",
                   "ulnar_styloid": "ulnar styloid"}[region]
        return f"{_cap(display)}: " + ", ".join([head] + clauses) + "."
    article = "an" if head[:1].lower() in "aeiou" else "a"
    body = f"{_cap(_pick(rng, ('demonstrated is', 'seen is', 'noted is')))} {article} {head} {loc}"
    if clauses:
        body += " " + " and ".join(clauses)
    return body + "."


NEGATIVE_REGION = {
    "distal_radius": ("The distal radius is intact.", "No distal radius fracture.",
                      "No fracture of the distal radius.", "Distal radius: normal."),
    "distal_ulna": ("The distal ulna is intact.", "No fracture of the distal ulna.",
                    "Distal ulna unremarkable.", "No distal ulnar fracture is seen."),
    "ulnar_styloid": ("The ulnar styloid is intact.", "No ulnar styloid fracture.",
                      "Ulnar styloid: no fracture.", "No fracture of the ulnar styloid."),
}


def _other_fracture_sentence(rng: np.random.Generator, other: dict) -> str:
    if other["site"] == "scaphoid":
        return _pick(rng, ("There is a fracture through the scaphoid waist.",
                           "Scaphoid waist fracture is noted.",
                           "Lucent line across the scaphoid waist, in keeping with a scaphoid fracture.",
                           "Additional fracture of the scaphoid."))
    ordinal = {1: ("first", "1st"), 2: ("second", "2nd"), 3: ("third", "3rd"), 4: ("fourth", "4th"),
               5: ("fifth", "5th")}[other["metacarpal"]]
    o = _pick(rng, ordinal)
    return _pick(rng, (f"There is a fracture of the proximal {o} metacarpal shaft.",
                       f"Incidental fracture at the base of the {o} metacarpal.",
                       f"Fracture of the {o} metacarpal is also present.",
                       f"{_cap(o)} metacarpal fracture noted."))


def _findings_sentences(rng: np.random.Generator, study: dict, side: str) -> list[str]:
    f = study["findings"]
    regions, g, geo = f["regions"], f["global"], f["geometry"]
    positive = [n for n in REGIONS if regions[n]["fracture"] != "absent"]
    order = list(positive)
    if len(order) > 1 and rng.random() < 0.3:
        order = order[::-1]
    out: list[str] = []
    if g["cast"] and rng.random() < 0.5:
        kind = f.get("cast_type", "fiberglass")
        out.append(_pick(rng, ("Evaluation is limited by an overlying cast.",
                               f"Examination through {kind} cast limits fine bony detail.",
                               f"A {kind} cast is in place, obscuring fine detail.")))
    if g["hardware"]:
        out.append(_pick(rng, ("Two K-wires transfix the distal radius.",
                               "Percutaneous Kirschner wires cross the distal radial fracture.",
                               "K-wire fixation of the distal radius is noted.",
                               "Smooth pins are seen traversing the distal radius (hardware in situ).")))
    if f.get("hardware_removed"):
        out.append(_pick(rng, HARDWARE_REMOVED))
    for n in order:
        out.append(region_sentence(rng, n, regions[n], geo.get(n, {})))
    if f["other"] is not None:
        out.append(_other_fracture_sentence(rng, f["other"]))
    negatives = [n for n in REGIONS if regions[n]["fracture"] == "absent"]
    if not positive and not g["other_fracture"]:
        out.append(_pick(rng, ("No acute fracture or dislocation.", "No fracture is identified.",
                               "There is no radiographic evidence of fracture.",
                               "Bones are intact without fracture.", "No acute osseous injury.")))
        if rng.random() < 0.6:
            out.append(_pick(rng, ("Alignment is anatomic.", "Normal alignment.",
                                   "Alignment is maintained.")))
    elif negatives:
        if rng.random() < 0.45 and positive:
            out.append(_pick(rng, ("No other fracture is identified.", "No additional fracture.",
                                   "No further fracture is seen.", "Otherwise no fracture.")))
        else:
            for n in negatives:
                out.append(_pick(rng, NEGATIVE_REGION[n]))
    remote = [n for n in ("distal_radius", "distal_ulna") if regions[n]["fracture"] == "absent"]
    if remote and not study["follow_up"] and rng.random() < 0.07:
        out.append(_pick(rng, REMOTE_FINDING[_pick(rng, remote)]))
    physeal = any(regions[n]["pattern"] == "salter_harris" for n in positive)
    if rng.random() < 0.5:
        if physeal:
            out.append(_pick(rng, ("The remaining physes are normal.", "Other growth plates are unremarkable.")))
        elif study["age"] < study["anat"]["closure_age"] - 0.3:
            out.append(_pick(rng, ("The physes are open and normal.", "Physes appear normal for age.",
                                   "Growth plates are unremarkable.")))
        else:
            out.append(_pick(rng, ("The distal radial physis is closing.", "Physes are fused.",
                                   "Physes are nearly closed.")))
    if rng.random() < 0.3:
        out.append(_pick(rng, ("Carpal ossification centres are appropriate for age.",
                               "Joint spaces are preserved.", "The carpal bones are unremarkable.",
                               "Radiocarpal joint is preserved.")))
    if g["soft_tissue_swelling"]:
        s = _pick(rng, ("dorsal", "ulnar-sided") if f["swelling_side"] > 0 else ("volar", "radial-sided"))
        out.append(_pick(rng, (f"There is {s} soft tissue swelling.", "Soft tissue swelling about the wrist.",
                               f"Associated {s} soft-tissue swelling.",
                               "Overlying soft tissue swelling is present.")))
    elif rng.random() < 0.35:
        out.append(_pick(rng, ("Soft tissues are unremarkable.", "No soft tissue swelling.",
                               "Soft tissues are normal.", "No significant soft tissue abnormality.")))
    if g["cast"] and not any("cast" in s for s in out):
        out.append(_pick(rng, ("Cast in situ.", "Forearm cast in place.", f"Overlying {f.get('cast_type', 'fiberglass')} cast.",
                               "The wrist is immobilised in a cast.")))
    return out


def _impression(rng: np.random.Generator, study: dict, side: str, complete: bool) -> list[str]:
    """Impression lines; `complete` (no findings section) states every global finding too."""
    f = study["findings"]
    regions, g, geo = f["regions"], f["global"], f["geometry"]
    positive = [n for n in REGIONS if regions[n]["fracture"] != "absent"]
    out = [region_sentence(rng, n, regions[n], geo.get(n, {}), brief=True) for n in positive]
    if f["other"] is not None:
        out.append(_other_fracture_sentence(rng, f["other"]))
    if not positive and not g["other_fracture"]:
        out.append(_pick(rng, (f"No acute fracture of the {side} wrist.", f"Normal {side} wrist.",
                               "No radiographic evidence of fracture.", "No fracture.",
                               "Negative study.")))
    if g["hardware"] and (complete or rng.random() < 0.5):
        out.append(_pick(rng, ("K-wires in satisfactory position.", "Hardware intact.")))
    if g["cast"] and (complete or rng.random() < 0.4):
        out.append(_pick(rng, ("Cast in place.", "In cast.")))
    if g["soft_tissue_swelling"] and (complete or rng.random() < 0.4):
        out.append("Soft tissue swelling.")
    if not g["cast"] and rng.random() < 0.2:
        out.append(_pick(rng, PLANS_FRACTURE if positive else PLANS_NORMAL))
    return out


def _typo(rng: np.random.Generator, text: str) -> str:
    candidates = [w for w in FILLER_TYPOS if f" {w}" in text]
    if not candidates:
        return text
    w = _pick(rng, candidates)
    return text.replace(f" {w}", f" {FILLER_TYPOS[w]}", 1)


def compose_report(rng: np.random.Generator, study: dict) -> str:
    """The free-text report of one study (all its views share it)."""
    side = study["laterality"]
    views = [v for v, _ in study["views"]]
    sections: list[tuple[str, str]] = []
    upper = rng.random() < 0.3
    # Some departments give the side only as a letter in the indication ("L wrist pain").
    side_letter = rng.random() < 0.08
    if side_letter:
        study = dict(study, side_letter=side[0].upper())
    if side_letter or rng.random() < 0.85:
        sections.append(("history", _pick(rng, HISTORY_HEADERS) + " " + _history(rng, study)))
    technique = _views_phrase(rng, views, side)
    has_technique = not side_letter and rng.random() < 0.7
    findings = _findings_sentences(rng, study, side)
    use_findings = rng.random() < 0.9
    impression = _impression(rng, study, side, complete=not use_findings)
    use_impression = (not use_findings) or rng.random() < 0.85
    if not has_technique and not side_letter:
        # Laterality must be stated somewhere: an exam title line.
        sections.insert(0, ("exam", _pick(rng, ("EXAM:", "Examination:", "XR")) + " "
                            + _pick(rng, (f"{side.upper()} WRIST", f"{_cap(side)} wrist radiographs",
                                          f"Wrist ({side})"))))
    body = []
    if study["follow_up"] or rng.random() < 0.35:
        body.append(("comparison", _pick(rng, COMPARISON_HEADERS) + " " + _comparison(rng, study, side)))
    if has_technique:
        body.append(("technique", _pick(rng, TECHNIQUE_HEADERS) + " " + technique))
        if len(body) == 2 and rng.random() < 0.3:
            body.reverse()
    join = " " if rng.random() < 0.6 else "\n"
    if use_findings:
        fh = _pick(rng, FINDINGS_HEADERS)
        body.append(("findings", fh + ("\n" if fh.endswith(":") is False or rng.random() < 0.4 else " ")
                     + join.join(findings)))
    if use_impression:
        ih = _pick(rng, IMPRESSION_HEADERS)
        if len(impression) > 1 and rng.random() < 0.5:
            imp = "\n".join(f"{i}. {s}" for i, s in enumerate(impression, start=1))
            body.append(("impression", ih + "\n" + imp))
        else:
            body.append(("impression", ih + " " + " ".join(impression)))
    if use_impression and rng.random() < 0.15:
        # Impression-first layout used by some departments.
        imp = body.pop()
        body.insert(0, imp)
    sections.extend(body)
    text = "\n".join(s for _, s in sections)
    if rng.random() < 0.2:
        text = _typo(rng, text)
    if upper:
        text = text.upper()
    if rng.random() < 0.1:
        text = text.replace(". ", ".  ", 1)
    return text.strip() + "\n"
