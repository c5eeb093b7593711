"""Explanations from retrieved cases: a preliminary finding for the bone asked about, per schema
field, from the mined findings of the top-k retrieved prior cases.

For bone r and field f, every retrieved case votes for its own value of f with weight
w_i = max(similarity_i, 0) (uniform when no similarity is positive). The preliminary value is
the heaviest one; its agreement is its share of the weight, and the statement lists the cases
behind it (id, similarity), best first. The fields that describe a fracture (pattern, Salter-
Harris grade, displacement, angulation, healing) are voted among the cases with a fracture of
that bone (present or uncertain) and only when the preliminary fracture status is not "absent";
otherwise they are "not applicable". The global fields (cast, hardware, soft tissue swelling,
other fracture) are voted by every case.

`paragraph(expl)` writes a short templated text from these facts. `LLMPhraser` (optional) has a
local causal LM (reports.llm's plumbing) rephrase the facts; its text is mined back with the rule
miner and any claim the facts do not support (another status or pattern for the bone, a fracture
of another bone, a case id or number not in the facts) means the templated text is used.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

from wristmir_jax.schema import GLOBAL_FLAGS, REGION_DISPLAY, REGIONS, decode_record

FRACTURE_FIELDS = ("pattern", "salter_harris", "displaced", "angulated", "healing")
REGION_FIELDS = ("fracture",) + FRACTURE_FIELDS
NOT_APPLICABLE = "not applicable"


@dataclasses.dataclass
class FieldFinding:
    field: str
    value: Any                      # the schema value (str, int, bool or None), or NOT_APPLICABLE
    agreement: float                # share of the voting weight behind `value` (0 when not applicable)
    support: list[dict]             # [{"id", "similarity"}] of the cases with that value, best first
    votes: dict[str, float]         # value (as text) -> weight share

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Explanation:
    region: str
    k: int
    cases: list[dict]               # [{"id", "similarity"}] the retrieved cases, best first
    fields: dict[str, FieldFinding]

    def to_json(self) -> dict:
        return {"region": self.region, "k": self.k, "cases": self.cases,
                "fields": {f: v.to_json() for f, v in self.fields.items()}}

    def predicted(self) -> dict[str, Any]:
        return {f: v.value for f, v in self.fields.items()}


def _vote(field: str, values: list, weights: np.ndarray, ids: list[str], sims: list[float]) -> FieldFinding:
    if not values:
        return FieldFinding(field, NOT_APPLICABLE, 0.0, [], {})
    w = np.asarray(weights, np.float64)
    if w.sum() <= 0:
        w = np.ones_like(w)
    totals: dict[str, float] = {}
    first: dict[str, Any] = {}
    for v, wi in zip(values, w):
        key = str(v)
        totals[key] = totals.get(key, 0.0) + float(wi)
        first.setdefault(key, v)
    # the heaviest value; ties go to the value of the most similar case (values are in rank order)
    best = max(totals, key=lambda key: (totals[key], -list(first).index(key)))
    total = float(w.sum())
    support = [{"id": i, "similarity": round(float(s), 6)} for v, i, s in zip(values, ids, sims) if str(v) == best]
    return FieldFinding(field, first[best], round(totals[best] / total, 6), support,
                        {key: round(t / total, 6) for key, t in totals.items()})


def explain_neighbours(records: np.ndarray, ids, similarities, region: str) -> Explanation:
    """The explanation for `region` from the retrieved cases' records int[k, RECORD_LEN], ids [k]
    and similarities f[k] (best first; rows with id None or similarity -inf are skipped)."""
    if region not in REGIONS:
        from wristmir_jax.errors import UserError

        raise UserError(f"unknown region {region!r} (choose one of {', '.join(REGIONS)})")
    rows = [(np.asarray(r), str(i), float(s)) for r, i, s in zip(records, ids, similarities)
            if i is not None and np.isfinite(s)]
    decoded = [decode_record(r) for r, _, _ in rows]
    ids_ = [i for _, i, _ in rows]
    sims = [s for _, _, s in rows]
    w = np.maximum(np.asarray(sims, np.float64), 0.0)
    fields: dict[str, FieldFinding] = {}
    status = [d[0][region]["fracture"] for d in decoded]
    fields["fracture"] = _vote("fracture", status, w, ids_, sims)
    frac = [j for j, st in enumerate(status) if st != "absent"]
    for f in FRACTURE_FIELDS:
        if fields["fracture"].value == "absent" or not frac:
            fields[f] = FieldFinding(f, NOT_APPLICABLE, 0.0, [], {})
            continue
        fields[f] = _vote(f, [decoded[j][0][region][f] for j in frac], w[frac],
                          [ids_[j] for j in frac], [sims[j] for j in frac])
    for f in GLOBAL_FLAGS:
        fields[f] = _vote(f, [d[1][f] for d in decoded], w, ids_, sims)
    return Explanation(region, len(rows), [{"id": i, "similarity": round(s, 6)} for i, s in zip(ids_, sims)],
                       fields)


# --- text ------------------------------------------------------------------------------------
_PATTERN_TEXT = {"buckle": "buckle (torus)", "greenstick": "greenstick", "complete": "complete",
                 "salter_harris": "Salter-Harris", "avulsion": "avulsion", "plastic_bowing": "plastic bowing"}
_GLOBAL_TEXT = {"cast": "a cast", "hardware": "fixation hardware", "soft_tissue_swelling": "soft tissue swelling",
                "other_fracture": "a fracture of another bone"}


def _pct(x: float) -> str:
    return f"{round(100 * x)}%"


def _cases(ff: FieldFinding, n: int = 3) -> str:
    return ", ".join(f"{c['id']} ({c['similarity']:.2f})" for c in ff.support[:n])


def paragraph(expl: Explanation) -> str:
    """A short templated paragraph stating the preliminary findings and the cases behind them."""
    bone = REGION_DISPLAY[expl.region]
    f = expl.fields
    if expl.k == 0:
        return f"No retrieved case to base a preliminary finding for the {bone} on."
    st = f["fracture"]
    lead = {"present": f"a fracture of the {bone}", "uncertain": f"a possible fracture of the {bone}",
            "absent": f"no fracture of the {bone}"}[st.value]
    out = [f"Preliminary finding from the {expl.k} most similar prior cases: {lead} "
           f"({_pct(st.agreement)} of the similarity-weighted vote; e.g. {_cases(st)})."]
    if st.value != "absent":
        details = []
        p = f["pattern"]
        if p.value not in (None, NOT_APPLICABLE):
            grade = f["salter_harris"].value
            name = _PATTERN_TEXT[p.value] + (f" type {grade}" if p.value == "salter_harris"
                                             and grade not in (None, NOT_APPLICABLE) else "")
            hedge = "possibly " if st.value == "uncertain" else ""  # keeps the text as hedged as the facts
            details.append(f"pattern {hedge}{name} ({_pct(p.agreement)})")
        for key, yes, no in (("displaced", "displaced", "not displaced"),
                             ("angulated", "angulated", "not angulated"), ("healing", "healing", "not healing")):
            v = f[key].value
            if v is True or v is False:
                details.append(f"{yes if v else no} ({_pct(f[key].agreement)})")
        if details:
            kind = "a possible fracture" if st.value == "uncertain" else "a fracture"
            out.append(f"Among the similar cases with {kind} there: " + "; ".join(details) + ".")
    extra = [f"{_GLOBAL_TEXT[g]} ({_pct(f[g].agreement)})" for g in GLOBAL_FLAGS if f[g].value is True]
    if extra:
        out.append("Most similar cases also show " + ", ".join(extra) + ".")
    out.append("This is a retrieval-based suggestion, not a diagnosis.")
    return " ".join(out)


def facts_text(expl: Explanation) -> str:
    """The structured facts, one per line, as the LLM is given them."""
    lines = [f"bone: {REGION_DISPLAY[expl.region]}", f"cases: {expl.k}"]
    for name, ff in expl.fields.items():
        if ff.value == NOT_APPLICABLE:
            continue
        lines.append(f"{name}: {ff.value} (agreement {_pct(ff.agreement)}; cases {_cases(ff)})")
    return "\n".join(lines)


def _patterns_read_as(pattern, region: str) -> set:
    """The fact's pattern and what the rule miner reads when that pattern is stated for the bone
    (the miner may normalise it, e.g. a Salter-Harris fracture of the styloid, which has no
    physis of its own, as an avulsion), so the template is never rejected for the miner's rules."""
    from wristmir_jax.reports.rules import mine_report

    if pattern in (None, NOT_APPLICABLE):
        return {pattern}
    read = mine_report(f"{_PATTERN_TEXT[pattern]} fracture of the {REGION_DISPLAY[region]}.")[0][region]["pattern"]
    return {pattern, read}


def unsupported_claims(text: str, expl: Explanation) -> list[str]:
    """Claims in `text` the facts do not support: the rule miner's reading of the text disagrees
    with the fracture status or pattern of the bone, names a fracture of another bone, or the
    text holds a case id or a number that is not in the facts."""
    from wristmir_jax.reports.rules import mine_report

    problems = []
    regions, _ = mine_report(text)
    f = expl.fields
    mined = regions[expl.region]
    if mined["fracture"] != "absent" and mined["fracture"] != f["fracture"].value:
        problems.append(f"fracture {mined['fracture']} (facts: {f['fracture'].value})")
    if f["fracture"].value != "absent" and mined["fracture"] == "absent" and re.search(r"\bno\b|\bwithout\b", text.lower()):
        problems.append("denies the fracture")
    if mined["pattern"] is not None and mined["pattern"] not in _patterns_read_as(f["pattern"].value, expl.region):
        problems.append(f"pattern {mined['pattern']} (facts: {f['pattern'].value})")
    for other in REGIONS:
        if other != expl.region and regions[other]["fracture"] != "absent":
            problems.append(f"a fracture of the {REGION_DISPLAY[other]}")
    known = facts_text(expl)
    for token in re.findall(r"[A-Za-z0-9_-]*\d[A-Za-z0-9_.-]*", text):
        token = token.rstrip(".")
        if token and token not in known:
            problems.append(f"{token!r} is not in the facts")
    return problems


class LLMPhraser:
    """Rephrases an explanation with a local causal LM; the templated paragraph when the LM's
    text makes an unsupported claim (or is empty). `last` records what happened."""

    def __init__(self, model_dir: str, *, max_new_tokens: int = 120):
        from wristmir_jax.reports.llm import LLMMiner

        self._lm = LLMMiner(model_dir, max_new_tokens=max_new_tokens)
        self.last: dict[str, Any] = {}

    def prompt(self, expl: Explanation) -> str:
        return ("You write one short paragraph for a radiologist. Use only these facts about the most "
                "similar prior pediatric wrist radiographs; do not add findings, bones, numbers or "
                "case ids that are not listed.\n" + facts_text(expl) + "\nParagraph:")

    def phrase(self, expl: Explanation) -> str:
        text = self._lm.generate(self.prompt(expl)).strip()
        problems = ["empty text"] if not text else unsupported_claims(text, expl)
        if problems:
            self.last = {"source": "template", "rejected": problems[:5]}
            return paragraph(expl)
        self.last = {"source": "llm"}
        return text


def field_accuracy(predicted: list[dict[str, Any]], gold_records: np.ndarray, region: str) -> dict[str, float]:
    """Per field, the fraction of queries whose preliminary value equals the gold value (a field
    judged "not applicable" counts as right when the gold bone has no fracture, or for the
    fracture fields when gold states nothing)."""
    out: dict[str, float] = {}
    gold = [decode_record(r) for r in np.asarray(gold_records)]
    for field in REGION_FIELDS + GLOBAL_FLAGS:
        right = 0
        for pred, (g_reg, g_glob) in zip(predicted, gold):
            gv = g_glob[field] if field in GLOBAL_FLAGS else g_reg[region][field]
            pv = pred[field]
            if pv == NOT_APPLICABLE:
                ok = g_reg[region]["fracture"] == "absent" or gv is None
            else:
                ok = pv == gv
            right += int(ok)
        out[field] = right / max(len(predicted), 1)
    return out
