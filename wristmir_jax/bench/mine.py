"""Rule-miner throughput on one core: reports/s over a corpus of hand-written reports and
combinatorial variants of them (side, bone, pattern, hedge, typo), with de-identification
included, as `wristmir mine` runs it. Target: >= 2,000 reports/s (`meets_target`)."""

from __future__ import annotations

import itertools
import random
import time

from wristmir_jax.reports.captions import captions
from wristmir_jax.reports.mining import mine_text_rules

TARGET_REPORTS_PER_S = 2000.0

HAND_WRITTEN = (
    "INDICATION: Fall on outstretched hand, r/o fracture. TECHNIQUE: 3 views of the left wrist. "
    "FINDINGS: Buckle fracture of the dorsal cortex of the distal radial metaphysis, no displacement. "
    "The distal ulna and ulnar styloid are intact. Mild dorsal soft tissue swelling. "
    "IMPRESSION: Torus fracture of the distal radius.",
    "CLINICAL HISTORY: Wrist pain. COMPARISON: None. FINDINGS: No acute fracture or dislocation. "
    "The physes are normal. Joint spaces preserved. IMPRESSION: Normal right wrist.",
    "FINDINGS: Salter-Harris type II fracture of the distal radius with 4 mm dorsal displacement of the "
    "epiphysis and 20 degrees of apex volar angulation. Avulsion fracture of the ulnar styloid tip. "
    "IMPRESSION: SH II distal radius fracture, displaced. Ulnar styloid avulsion.",
    "Findings: Subtle lucency at the base of the ulnar styloid which may represent a nondisplaced "
    "fracture. No other fracture. Impression: Possible ulnar styloid fracture; recommend follow-up "
    "radiographs in 7-10 days.",
    "FINDINGS: Interval healing of the distal radius greenstick fracture with periosteal reaction and "
    "callus. Alignment is maintained. The cast has been removed.",
    "FINDINGS: Fiberglass cast in place. Transverse fractures of the distal radial and ulnar "
    "metaphyses with mild dorsal angulation, without displacement. Kirschner wires transfix the radius.",
    "FINDINGS: Nondisplaced fracture of the scaphoid waist. No fracture of the distal radius or ulna. "
    "IMPRESSION: Scaphoid fracture.",
    "FINDINGS: Mid-shaft fractures of the radius and ulna with apex volar angulation. The distal radius "
    "and ulna are otherwise intact.",
)

_BONES = ("distal radius", "distal radial metaphysis", "distal ulna", "ulnar styloid")
_PATTERNS = ("buckle fracture", "torus fracture", "greenstick fracture", "Salter-Harris II fracture",
             "transverse fracture", "avulsion fracture", "fracture")
_HEDGES = ("", "possible ", "questionable ", "no ")
_SIDES = ("left", "right")
_TYPOS = ("", "fracure", "buckel")


def corpus(n: int, seed: int = 0) -> list[str]:
    """n reports: the hand-written ones plus combinatorial variants, shuffled deterministically."""
    rng = random.Random(seed)
    combos = list(itertools.product(_BONES, _PATTERNS, _HEDGES, _SIDES, _TYPOS))
    out = list(HAND_WRITTEN)
    while len(out) < n:
        bone, pat, hedge, side, typo = combos[rng.randrange(len(combos))]
        if typo:
            pat = pat.replace("fracture", typo) if typo == "fracure" else pat.replace("buckle", typo)
        out.append(f"CLINICAL HISTORY: Fall on outstretched hand, pain over the wrist, r/o fracture.\n"
                   f"COMPARISON: None.\nTECHNIQUE: Three views of the {side} wrist.\nFINDINGS: "
                   f"{hedge.capitalize()}{pat} of the {bone}, approximately 2 cm proximal to the physis. "
                   f"The remaining bones are intact. Joint spaces are preserved. Physes are normal for age. "
                   f"Soft tissues unremarkable.\n"
                   f"IMPRESSION: {rng.choice(HAND_WRITTEN).split('IMPRESSION:')[-1].strip()}")
    return out[:n]


def run(quick: bool = False) -> dict:
    """Throughput in reports per CPU-second of this process (time.process_time), which is what
    one core delivers even when other jobs share the machine; wall-clock rates are reported too."""
    n = 3000 if quick else 30000
    reports = corpus(n)
    for r in reports[:200]:  # warm the typo cache and the regex engine
        mine_text_rules(r)
    t0, c0 = time.perf_counter(), time.process_time()
    for r in reports:
        mine_text_rules(r)
    mine_wall, mine_cpu = time.perf_counter() - t0, time.process_time() - c0
    c0 = time.process_time()
    for r in reports:
        captions(*mine_text_rules(r))
    with_captions_cpu = time.process_time() - c0
    rate = n / mine_cpu
    return {
        "n_reports": n,
        "mean_report_chars": round(sum(map(len, reports)) / n, 1),
        "rules_reports_per_cpu_s": round(rate, 1),
        "rules_reports_per_wall_s": round(n / mine_wall, 1),
        "rules_with_captions_reports_per_cpu_s": round(n / with_captions_cpu, 1),
        "target_reports_per_s": TARGET_REPORTS_PER_S,
        "ratio_to_target": round(rate / TARGET_REPORTS_PER_S, 3),
        "meets_target": bool(rate >= TARGET_REPORTS_PER_S),
    }
