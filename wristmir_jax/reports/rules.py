"""The default report miner: rule-based, offline, deterministic and fast.

`mine_report(text) -> (regions, global_)` reads a free-text pediatric wrist radiograph report and
returns findings in the schema of `wristmir_jax.schema`. The steps:

1. Normalise: lower case, expand abbreviations ("dist." -> distal, "fx" -> fracture, "w/o" ->
   without, "DRF" -> distal radius fracture), correct typos of key terms within one edit
   (Damerau; "fracure", "buckel", "styliod"), via a deletion index built once at import.
2. Sections: INDICATION / HISTORY / REASON / COMPARISON statements are not current findings and
   are skipped; so are PLAN / RECOMMENDATION sections and any sentence that recommends or plans
   ("recommend splint", "thumb spica cast recommended", "will be placed in a cast"): a recommended
   cast is not a cast in place. A TECHNIQUE / EXAM line counts for laterality and cast only (lines
   after it without a heading are findings); FINDINGS, IMPRESSION and text before any heading are
   mined.
3. Each sentence becomes a token stream from one precompiled alternation: concepts (fracture
   words, patterns, displacement, angulation, healing, locations, cast, hardware, swelling),
   negation and uncertainty triggers (pre- and post-), clause terminators, prepositions,
   coordinators and plain words.
4. Finding mentions are runs of fracture / pattern words ("nondisplaced buckle fracture"). Each
   is negated or hedged by NegEx-style scopes at clause level: a pre-negation ("no", "without",
   "negative for") covers the first finding after it and further findings joined to it by
   "or"/"and"/","; a post-negation ("is not seen", "excluded") covers the finding before it;
   uncertainty ("possible", "questionable", "may represent", "cannot exclude", "suspicious for",
   "probable") covers the findings it modifies on either side within its clause: the rest of the
   clause (pre), the finding before it (post), backwards when it closes the clause ("..., suspected"),
   forwards when nothing precedes it ("This is questionable for a fracture"), and the antecedent of a
   "which" clause. A hedged reading of a sign in the same sentence hedges the sign too ("buckling of
   the distal radial and ulnar metaphyses, possibly representing buckle fractures": both bones
   uncertain), and "possibly also involving the distal ulna" adds a hedged finding there.
   Temporal scope: "old", "remote", "healed and remodelled", "completely healed" mark a finding of a
   past injury (not present, not healing); a hedged finding "previously questioned" is dropped unless
   this study confirms it ("now confirmed", callus).
5. A mention is attached to a location: the one after it through a preposition ("fracture of the
   distal radius"), else the one just before it ("distal radius buckle fracture"), else the nearest
   in the sentence, else the location of the previous finding (discourse: "The fracture is
   nondisplaced."). Coordinated locations ("distal radius and ulna") attach together. Shaft /
   diaphysis, carpal bones, metacarpals and other bones are "elsewhere": they set other_fracture
   and never leak into the three regions.
6. Displacement, angulation and healing words attach to the nearest finding in their clause
   (their own negation flips them: "without displacement or angulation"); a bone named again next
   to the word restricts it to that bone ("the radius with 4 mm of displacement and the ulna
   nondisplaced"); "Neither fracture is angulated" / "Both are displaced" and a bare "No
   displacement." apply to every finding of the section.
7. Per region: present beats uncertain beats absent, so a global negation ("no acute fracture")
   only affects regions not positively described. Every ulnar styloid fracture has pattern
   "avulsion" (AO pediatric ..u-E/7, ..u-M/7, as the GRAZPEDWRI-DX importer maps it). Hardware
   that was removed ("K-wires removed", "pin tracts") is no hardware now; a removed cast is no cast.
   Laterality: technique line, then findings, then the indication (also "L wrist", "R arm", "(L)",
   "Pain, R."), then the comparison.
8. `mine_report(text, trace)` fills `trace` with the sentence index and lexicon words behind each
   field (`wristmir mine --explain ID`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from wristmir_jax.schema import REGIONS, empty_global, empty_region

# ---------------------------------------------------------------------------------------------
# 1. Normalisation: abbreviations and typos
# ---------------------------------------------------------------------------------------------
_ABBREVIATION_LIST: tuple[tuple[str, str], ...] = (
        (r"\bdist\.(?=\s|$)|\bdist\b", "distal"),
        (r"\bprox\.(?=\s|$)|\bprox\b", "proximal"),
        (r"\bapprox\.", "approximately"),
        (r"\bvs\.", "versus"),
        (r"\be\.g\.", "for example"),
        (r"\bi\.e\.", "that is"),
        (r"\bdrf\b", "distal radius fracture"),
        (r"\bs\.\s?h\.", "sh"),
        (r"\bfx'?s\b|\bfx\b|\bfxr?\b", "fracture"),
        (r"\bw/o\b", "without"),
        (r"\bw/(?=\s|[a-z])", "with "),
        (r"\bc/w\b", "consistent with"),
        (r"\bs/p\b", "status post"),
        (r"\bsts\b", "soft tissue swelling"),
        (r"\bpq\b", "pronator quadratus"),
        (r"\bk-wire", "kirschner wire"),
        (r"\blt\.?(?=\s)", "left"),
        (r"\brt\.?(?=\s)", "right"),
        (r"\bnon-?disp\b\.?", "nondisplaced"),
        (r"\bdispl?\b\.?", "displacement"),
        (r"\bdisloc\b\.?", "dislocation"),
        (r"\bang\b\.?", "angulation"),
        (r"\bdeg\b\.?", "degrees"),
        (r"\binj\b\.?", "injury"),
        (r"\bposs\b\.?", "possible"),
        (r"\brec\b\.?", "recommend"),
        (r"\bf/u\b", "follow-up"),
        (r"\bwnl\b", "normal"),
        (r"\bnl\b", "normal"),
)
_ABBREVIATIONS = re.compile("(?<![a-z0-9])(?=[a-z])(?:" + "|".join(f"(?P<a{i}>{p})" for i, (p, _) in enumerate(_ABBREVIATION_LIST)) + ")")
# Words whose presence means an abbreviation may occur (a cheap test before the regex pass).
_ABBREVIATION_TRIGGERS = frozenset(("dist", "prox", "approx", "vs", "e", "i", "drf", "s", "fx", "fxr", "fxs",
                                    "w", "c", "sts", "pq", "k", "lt", "rt", "non", "nondisp", "disp",
                                    "displ", "disloc", "ang", "deg", "inj", "poss", "rec", "f", "wnl", "nl"))
_ABBREVIATION_REPL = {f"a{i}": r for i, (_, r) in enumerate(_ABBREVIATION_LIST)}

KEY_TERMS: tuple[str, ...] = (
    "fracture", "fractures", "fractured", "buckle", "buckled", "buckling", "torus", "greenstick",
    "salter", "harris", "physeal", "physis", "physes", "epiphysis", "epiphyseal", "metaphysis",
    "metaphyseal", "diaphysis", "diaphyseal", "radius", "radial", "ulnar", "styloid", "avulsion",
    "avulsed", "displaced", "displacement", "nondisplaced", "undisplaced", "angulated",
    "angulation", "nonangulated", "callus", "periosteal", "reaction", "healing", "healed",
    "swelling", "swollen", "scaphoid", "metacarpal", "questionable", "possible", "possibly",
    "probable", "probably", "suspicious", "suspected", "negative", "without", "cannot", "exclude",
    "excluded", "transverse", "oblique", "comminuted", "bowing", "plastic", "deformity",
    "hardware", "screws", "kirschner", "splint", "plaster", "fiberglass", "distal", "proximal",
    "identified", "evidence", "impression", "findings", "technique", "comparison", "history",
    "indication", "cortex", "cortical", "dorsal", "volar", "alignment", "anatomic", "remodeling",
    "consolidation", "periostitis", "subacute", "interval", "lateral", "tissue", "tissues",
    "pronator", "quadratus", "triquetrum", "lunate", "hamate", "capitate", "trapezium",
    "trapezoid", "pisiform", "phalanx", "humerus", "midshaft", "forearm", "visualized",
    "demonstrated", "appreciated", "wrist", "remodeled", "remodelled", "confirmed",
)
# Real words one edit away from a key term that must not be "corrected".
_PROTECTED = frozenset((
    "calls", "called", "plates", "place", "plane", "heading", "dealing", "sealing", "hearing",
    "heated", "radios", "racial", "physics", "literal", "reactive", "tours", "misplaced",
    "tissues", "torso", "dorsum", "volarly", "exclusive", "cortices", "possibility", "healthy",
    "tissue", "sealed", "leaning", "history", "mistory", "distil", "identifies",
    "wrists", "write", "writs", "confirms", "conformed", "screw", "tract", "tracts",
))
_KEY_SET = frozenset(KEY_TERMS)


def _deletes(word: str) -> set[str]:
    return {word[:i] + word[i + 1:] for i in range(len(word))}


def _build_delete_index(terms) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for t in terms:
        index.setdefault(t, set()).add(t)
        for d in _deletes(t):
            index.setdefault(d, set()).add(t)
    return index


_DELETE_INDEX = _build_delete_index(KEY_TERMS)


def _osa_distance(a: str, b: str) -> int:
    """Optimal string alignment (Damerau-Levenshtein with adjacent transpositions)."""
    la, lb = len(a), len(b)
    d = [[0] * (lb + 1) for _ in range(la + 1)]
    for i in range(la + 1):
        d[i][0] = i
    for j in range(lb + 1):
        d[0][j] = j
    for i in range(1, la + 1):
        for j in range(1, lb + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[la][lb]


@lru_cache(maxsize=1 << 16)
def correct_token(token: str) -> str:
    """A key term within one edit of `token` (unique, same first letter preferred), else token."""
    if len(token) < 5 or token in _KEY_SET or token in _PROTECTED:
        return token
    cands = set(_DELETE_INDEX.get(token, ()))
    for d in _deletes(token):
        cands |= _DELETE_INDEX.get(d, set())
    cands = sorted(c for c in cands if len(c) >= 5 and _osa_distance(token, c) <= 1)
    if not cands:
        return token
    same_start = [c for c in cands if c[0] == token[0]]
    if len(same_start) == 1:
        return same_start[0]
    return cands[0] if len(cands) == 1 else token


_WORD = re.compile(r"[a-z]+")
_SPACES = re.compile(r"[ \t]+")
_TRAILING_QUERY = re.compile(r"(?<=[a-z0-9)])\s*\?(?=\s|$)")


def normalize(text: str) -> str:
    """Lower case, abbreviations expanded, key-term typos corrected, whitespace collapsed."""
    t = text.lower().replace("\r", "\n")
    words = set(_WORD.findall(t))
    if any(correct_token(w) != w for w in words):
        t = _WORD.sub(lambda m: correct_token(m.group(0)), t)
    if not _ABBREVIATION_TRIGGERS.isdisjoint(words):
        t = _ABBREVIATIONS.sub(lambda m: _ABBREVIATION_REPL[m.lastgroup], t)
    # A question mark closing a statement is a query: "buckle fracture of the radius?"
    t = _TRAILING_QUERY.sub(" questioned.", t)
    return _SPACES.sub(" ", t)


# ---------------------------------------------------------------------------------------------
# 2. Sections and sentences
# ---------------------------------------------------------------------------------------------
_SECTION_KIND = {
    "clinical history": "history", "clinical indication": "history", "clinical indications": "history",
    "clinical information": "history", "clinical details": "history", "clinical data": "history",
    "indication": "history", "indications": "history", "history": "history",
    "reason for exam": "history", "reason for study": "history", "reason for examination": "history",
    "reason for referral": "history", "clinical": "history", "hx": "history", "clinical hx": "history",
    "reason": "history", "comparison studies": "comparison", "comparison study": "comparison",
    "comparison": "comparison", "comparisons": "comparison", "prior": "comparison",
    "technique": "technique", "procedure": "technique", "exam": "technique",
    "examination": "technique", "views": "technique", "study": "technique",
    "findings": "findings", "finding": "findings", "report": "findings", "result": "findings",
    "impression": "impression", "conclusion": "impression", "conclusions": "impression",
    "opinion": "impression", "summary": "impression", "interpretation": "impression",
    "diagnosis": "impression", "imp": "impression", "ind": "history",
    # Plans and recommendations describe what is to be done, not what the images show.
    "plan": "plan", "recommendation": "plan", "recommendations": "plan", "advice": "plan",
    "management": "plan",
}
_MAX_HEADING_WORDS = max(len(k.split()) for k in _SECTION_KIND)
_HEADING_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz ")
# A question mark closing a statement became " questioned." in normalize(); one left over opens a
# query ("? subtle buckle") and stays inside its sentence.
_SENTENCE_SPLIT = re.compile(r"\.(?!\d)|\n+|!")


def _headings(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) of "FINDINGS:" headings anywhere and of headings alone on a line
    ("FINDINGS\n"). Looking back from each colon is much cheaper than scanning for every name."""
    found = []
    pos = text.find(":")
    while pos != -1:
        j, lo = pos, max(0, pos - 40)
        while j > lo and text[j - 1] in _HEADING_CHARS:
            j -= 1
        words = text[j:pos].split()
        if words:
            for k in range(min(_MAX_HEADING_WORDS, len(words)), 0, -1):
                name = " ".join(words[-k:])
                if name in _SECTION_KIND:
                    start = text.rfind(words[-k], 0, pos)
                    if start == 0 or not text[start - 1].isalnum():
                        found.append((start, pos + 1, _SECTION_KIND[name]))
                    break
        pos = text.find(":", pos + 1)
    offset = 0
    for line in text.split("\n"):
        name = line.strip()
        if name in _SECTION_KIND:
            found.append((offset + line.index(name), offset + len(line), _SECTION_KIND[name]))
        offset += len(line) + 1
    return sorted(found)


def _technique_line(kind: str, body: str) -> list[tuple[str, str]]:
    """A TECHNIQUE / EXAM heading names the views on one line; lines after it without a heading of
    their own ("Distal radius: buckle fracture.") are findings, kept as preamble."""
    if kind != "technique":
        return [(kind, body)]
    lead = len(body) - len(body.lstrip())
    cut = body.find("\n", lead)
    if cut == -1:
        return [(kind, body)]
    return [(kind, body[:cut]), ("preamble", body[cut:])]


def split_sections(text: str) -> list[tuple[str, str]]:
    """[(kind, text)] with kind in history, comparison, technique, findings, impression, plan,
    preamble."""
    out = []
    pos, kind = 0, "preamble"
    for start, end, new_kind in _headings(text):
        if start < pos:
            continue
        if start > pos:
            out.extend(_technique_line(kind, text[pos:start]))
        kind = new_kind
        pos = end
    out.extend(_technique_line(kind, text[pos:]))
    return [(k, s) for k, s in out if s.strip()]


# ---------------------------------------------------------------------------------------------
# 3. Tokenisation into concepts
# ---------------------------------------------------------------------------------------------
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5, "1": 1, "2": 2, "3": 3, "4": 4, "5": 5}
_GRADE = r"(?:v|iv|iii|ii|i|[1-5])"
_DIRECTIONAL = (r"side|aspect|cortex|cortical|border|deviation|margin|surface|collateral|nerve|artery|"
                r"variance|sided|direction|translation|inclination|length|height|tilt|half|edge|"
                r"fat|soft")
_SHAFT_BONE = r"(?:radius|radial|ulna|ulnar|forearm|radii|ulnae)"

# (kind, value, pattern); order matters where two patterns can start at the same place.
_LEXICON: tuple[tuple[str, Any, str], ...] = (
    ("PSEUDO", None, r"no (?:interval |significant |appreciable )?change|not only|no longer|"
                     r"not (?:yet )?ossified|without change|oblique (?:views?|projections?)|"
                     r"(?:normal|preserved|maintained) (?:volar|palmar) tilt|"
                     r"(?:volar|palmar) tilt (?:is )?(?:normal|preserved|maintained)|growth plates?(?! (?:fracture|injury))"),
    ("NEGPOST", None, r"(?:is |are )?no longer (?:visible|seen|evident|identified|apparent|demonstrated)"),
    ("UNCPOST", None, r"(?:can ?not|can't|could not|not|cannot) (?:be )?(?:entirely |completely |definitely |confidently )?(?:excluded|ruled out)|"
                      r"(?:is |are )?(?:difficult|hard) to exclude|"
                      r"(?:is |are |was |were )(?:suspected|questioned|questionable|possible|probable|likely|unlikely|equivocal|not entirely excluded)|"
                      r"unlikely|questioned|(?:is |are )?(?:not definite|not definitely (?:seen|identified|present))|"
                      r"(?:is |are )?not excluded"),
    ("UNCCLAUSE", None, r"versus|or (?:a |an )?(?:nutrient|vascular) (?:canal|channel|foramen)|"
                        r"(?:nutrient|vascular) (?:canal|channel|foramen)|normal variant|"
                        r"(?:developmental|physiologic|physiological) variant|differential (?:diagnosis )?includes"),
    ("UNCPRE", None, r"cannot (?:exclude|rule out)|can't (?:exclude|rule out)|can not (?:exclude|rule out)|"
                     r"(?:could|may|might) (?:represent|reflect|be|indicate|relate to|correspond to|have)|"
                     r"questionabl[ey]|question of|possibl[ey]|probabl[ey]|likely|suspect(?:ed)?|"
                     r"suspicious (?:for|of)|suspicion (?:for|of)|concerning (?:for|of)|worrisome for|"
                     r"equivocal|indeterminate|presumed|presumably|suggestive of|suggests?|"
                     r"raises? (?:the )?(?:possibility|question|concern) (?:of|for)|query|rule out|r/o|occult"),
    ("UNCPRE", None, r"\?(?=\s*[a-z])"),
    ("NEGPOST", None, r"(?:is |are |was |were )?not (?:seen|identified|demonstrated|visuali[sz]ed|evident|"
                      r"appreciated|present|noted|detected|apparent|shown|confirmed|reproduced)|unconfirmed|"
                      r"(?:is |are |was |were )?(?:absent|excluded|ruled out)|none (?:seen|identified|noted)|"
                      r"(?:has |have )?resolved"),
    ("NEGPOST", None, r": ?none"),
    ("NEGPRE", None, r"no (?:radiographic |radiologic |plain film |imaging |definite |convincing )?(?:evidence|signs?|findings?) "
                     r"(?:of|to suggest|suggestive of|for)|negative for|free of|absence of|"
                     r"without(?: evidence of| signs? of)?|neither|nor|no|not|denies"),
    ("TERM", None, r";"),
    ("TERM", None, r"but|however|although|though|whereas|while|except(?: for)?|aside from|apart from|"
                   r"other than|which|that is|, and (?:there|the|a|an)|and there (?:is|are)|otherwise"),
    # Fixation and cast before generic words like "plate" and "removed".
    ("CAST", False, r"(?:casts?|splints?) (?:has been |have been |was |were )?removed|(?:cast|splint) removal|"
                    r"removal of (?:the )?(?:cast|splint)|out of (?:the )?(?:cast|splint)|cast[\s-]free|"
                    r"(?:after|post|following) (?:the )?(?:cast|splint)"),
    ("HW", False, r"(?:hardware|pins?|k-?wires?|kirschner wires?|screws?|plates?) (?:has been |have been |was |were )?removed|"
                  r"removal of (?:the )?(?:hardware|pins?|wires?|kirschner wires?|screws?|plates?)|"
                  r"(?:hardware|pin|wire|kirschner wire|screw|plate) removal|"
                  # Tracts and holes are what removed pins and screws leave behind.
                  r"(?:empty |residual )?(?:pins?|screws?|wires?) (?:tracts?|tracks?|holes?|sites?)"),
    ("PAT", "salter_harris", r"salter[\s-]*harris(?:[\s-]*(?:type|grade|class))?[\s-]*" + _GRADE + r"\b|"
                             r"(?:type|grade) " + _GRADE + r" salter[\s-]*harris|"
                             r"salter[\s-]*(?:type[\s-]*)?" + _GRADE + r"\b|"
                             r"s\.?[\s-]?h\.?[\s-]*(?:type[\s-]*)?" + _GRADE + r"\b|"
                             r"salter[\s-]*harris|physeal (?:fracture|injury|separation|widening)|transphyseal|"
                             r"growth plate (?:fracture|injury)|through the physis"),
    ("SWELL", True, r"soft[\s-]tissues? (?:swelling|edema|oedema|thickening|prominence|fullness)|"
                    r"soft[\s-]tissues? (?:are |is |appears? )?(?:swollen|edematous|thickened|prominent)|"
                    r"swelling|swollen|"
                    r"(?:displaced|elevated|bowed|obliterated|effaced) pronator(?: quadratus)?(?: fat)?(?: pad| line| stripe)?|"
                    r"pronator(?: quadratus)?(?: fat)?(?: pad| line| stripe)? (?:sign|displacement|elevation|bowing|"
                    r"obliteration|effacement|(?:is |are )?(?:displaced|elevated|bowed|obliterated|effaced|abnormal))|"
                    r"(?:positive )?pronator (?:quadratus )?sign|fat pad sign"),
    # The distal end of a shaft is still the distal forearm ("bowing of the distal ulnar diaphysis").
    ("LOC", "distal_radius", r"distal (?:radial|radius) (?:shafts?|diaphys[ie]s|metadiaphys[ie]s)|"
                             r"distal (?:shafts?|diaphys[ie]s) of (?:the )?radius"),
    ("LOC", "distal_ulna", r"distal (?:ulnar?) (?:shafts?|diaphys[ie]s|metadiaphys[ie]s)|"
                           r"distal (?:shafts?|diaphys[ie]s) of (?:the )?ulna"),
    # "shaft": a diaphyseal level; it turns radius/ulna locations next to it into "elsewhere".
    ("LOC", "shaft", r"(?:radial|ulnar|radius|ulna|forearm) (?:shafts?|diaphys[ie]s|midshaft)|"
                     r"(?:shafts?|diaphys[ie]s|midshaft|mid[\s-]shaft|middle third|mid[\s-]diaphysis) of (?:the )?(?:left |right )?"
                     + _SHAFT_BONE + r"|mid[\s-]?shaft|mid[\s-]?diaphys\w*|diaphys\w*|shafts?|both[\s-]bones?(?: forearm)?|"
                     r"mid[\s-]?forearm"),
    ("LOC", "other", r"radial (?:head|neck)|proximal (?:third of the |aspect of the |one[\s-]third of the )?" + _SHAFT_BONE + r"|"
                     r"scaphoid|navicular|lunate|triquetr\w*|pisiform|trapezi\w*|trapezoid|capitate|"
                     r"hook of (?:the )?hamate|hamate|carpal bones?|carpus|carpals?|metacarpals?|phalan\w*|thumb|"
                     r"fingers?|humer\w*|supracondylar|elbow|olecranon|clavicle|monteggia"),
    ("LOC", "ulnar_styloid", r"ulnar? styloids?(?: process(?:es)?)?|styloid (?:process )?of (?:the )?(?:left |right )?(?:distal )?ulna"),
    ("LOC", "distal_radius", r"radial styloid(?: process)?|radius|radii|radial(?! (?:" + _DIRECTIONAL + r")\b)"),
    ("LOC", "distal_ulna", r"ulnae?|ulnar(?! (?:" + _DIRECTIONAL + r")\b)"),
    ("LOC", "ulnar_styloid", r"styloid(?: process)?"),
    ("PAT", "buckle", r"buckle[ds]?|buckling|torus|bulge|bulging"),
    ("PAT", "greenstick", r"green[\s-]?stick"),
    ("PAT", "avulsion", r"avulsion|avulsed|avulsive"),
    ("PAT", "plastic_bowing", r"plastic (?:bowing|deformation|deformity)|bowing(?: deformity| fracture)?|bowed"),
    ("PAT", "complete", r"complete|transverse|oblique|spiral|comminuted|bicortical|segmental"),
    ("FX", None, r"fractures?|fractured|fracturing|breaks?|broken|cortical (?:break|disruption|breach|discontinuity)"),
    ("DISP", False, r"non[\s-]?displaced|undisplaced|anatomic(?:al)?(?:ally)? (?:aligned|alignment|position)|"
                    r"(?:alignment|position) (?:is |remains )?(?:anatomic(?:al)?|maintained|preserved|near[\s-]anatomic)|"
                    r"well[\s-]aligned|in (?:good|anatomic) (?:alignment|position)"),
    ("DISP", True, r"displaced|displacement|translat(?:ed|ion)|offset|shortening|shortened|overrid(?:ing|e)|"
                   r"bayonet|step[\s-]?off|distract(?:ed|ion)|malalign(?:ed|ment)"),
    ("ANG", False, r"non[\s-]?angulated|unangulated"),
    ("ANG", True, r"angulated|angulation|angled|apex[\s-](?:volar|dorsal|palmar|radial|ulnar|anterior|posterior)|"
                  r"(?:dorsal|volar|palmar) tilt(?:ing)?|tilted"),
    # An old, remodelled fracture is not a finding of the current injury.
    ("REMOTE", None, r"healed and remodel(?:l)?ed|(?:completely|fully|well) (?:healed|remodel(?:l)?ed)|"
                     r"remodel(?:l)?(?:ed|ing)|old|remote|longstanding|long-standing"),
    ("HEAL", True, r"callus|periosteal (?:reaction|new bone(?: formation)?|elevation|thickening)|periostitis|"
                   r"new bone formation|healing|healed|heals|consolidat\w*|subacute|bridging|"
                   r"sclerosis (?:along|at|of) the fracture(?: line)?|sclerotic (?:fracture )?margins?"),
    ("CAST", True, r"casts?|casted|casting|splints?|splinted|plaster|fiberglass|fibreglass|"
                   r"immobili[sz]ation|immobili[sz]ed|back[\s-]?slab"),
    ("HW", True, r"hardware|kirschner wires?|kirschner|(?:percutaneous |surgical |smooth )?pins?|pinning|pinned|"
                 r"(?:fixation |surgical )?screws?|(?:fixation |volar |dorsal |locking )?plates?|orif|crpp|"
                 r"open reduction(?: and)? internal fixation|internal fixation|external fixat(?:or|ion)|"
                 r"intramedullary (?:nail|rod|wire)s?|(?:elastic|tens|flexible) nails?|surgical fixation"),
    ("PREP", None, r"of|through|involving|involves|at|in|along|across|within|to|on|into|from|near|"
                   r"extending (?:into|to|through)|extends (?:into|to|through)"),
    ("COORD", None, r"and|or|&|as well as|plus"),
    ("COORD", None, r"/"),
    ("VERB", None, r"with|is|are|was|were|be|been|shows?|showed|demonstrates?|demonstrated|has|have|had|there|seen|"
                   r"noted|identified|appears?|remains?|present|visible|evident"),
    ("COMMA", None, r","),
    ("WORD", None, r"[a-z0-9]+(?:['-][a-z0-9]+)*"),
)


_PUNCTUATION = frozenset((r",", r";", r"/", r"\?(?=\s*[a-z])"))


def _first_chars(pattern: str) -> set[str] | None:
    """Characters a match of `pattern` can start with (None: could be anything)."""
    import re._constants as C
    import re._parser as P

    def seq_first(seq):
        out = set()
        for op, av in seq:
            f, nullable = item_first(op, av)
            if f is None:
                return None, False
            out |= f
            if not nullable:
                return out, False
        return out, True

    def item_first(op, av):
        if op is C.LITERAL:
            return {chr(av)}, False
        if op is C.IN:
            out = set()
            for iop, iav in av:
                if iop is C.LITERAL:
                    out.add(chr(iav))
                elif iop is C.RANGE:
                    out |= {chr(x) for x in range(iav[0], iav[1] + 1)}
                else:
                    return None, False
            return out, False
        if op is C.SUBPATTERN:
            return seq_first(av[-1])
        if op is C.BRANCH:
            out, nullable = set(), False
            for alt in av[1]:
                f, n = seq_first(alt)
                if f is None:
                    return None, False
                out |= f
                nullable = nullable or n
            return out, nullable
        if op in (C.MAX_REPEAT, C.MIN_REPEAT, getattr(C, "POSSESSIVE_REPEAT", C.MAX_REPEAT)):
            f, n = seq_first(av[2])
            return f, (n or av[0] == 0)
        if op in (C.ASSERT, C.ASSERT_NOT, C.AT):
            return set(), True
        return None, False

    f, nullable = seq_first(P.parse(pattern))
    return None if f is None or nullable else f


def _compile_lexicon() -> dict[str, re.Pattern]:
    """Per first character, one alternation of the lexicon entries that can start with it (in
    lexicon order, so priorities hold). Dispatching on the first character keeps tokenisation
    fast: each position tries a handful of entries, not all."""
    groups = []
    for i, (_, _, pat) in enumerate(_LEXICON):
        first = _first_chars(pat)
        if pat in _PUNCTUATION or (first and not any(c.isalnum() for c in first)):
            groups.append((f"(?P<g{i}>{pat})", first))
        else:
            # The left and right boundaries stop "no" matching inside "piano" or "normal".
            groups.append((f"(?P<g{i}>(?<![a-z0-9])(?:{pat})(?![a-z0-9]))", _first_chars(pat)))
    starts = set()
    for _, f in groups:
        if f is None:
            raise ValueError("every lexicon entry needs a known first character")
        starts |= f
    return {c: re.compile("|".join(g for g, f in groups if c in f)) for c in sorted(starts)}


_BY_CHAR = _compile_lexicon()
_GROUP_INFO = {f"g{i}": (k, v) for i, (k, v, _) in enumerate(_LEXICON)}
_SH_WORDS = re.compile(r"salter|harris|type|grade|class|^s\.?[\s-]?h\.?")
_GRADE_IN = re.compile(r"(?<![a-z])(v|iv|iii|ii|i|[1-5])(?![a-z0-9])")

# Mention-capable patterns (a word like "oblique" alone is not a finding).
_STANDALONE_PATTERNS = frozenset(("buckle", "greenstick", "salter_harris", "avulsion", "plastic_bowing"))
_MENTION_FILLERS = frozenset((
    "type", "like", "pattern", "injury", "injuries", "acute", "subtle", "small", "tiny", "minimal",
    "minimally", "mild", "mildly", "slightly", "slight", "moderately", "moderate", "significantly",
    "significant", "severely", "incomplete", "linear", "impacted", "impaction", "cortical",
    "fracture-type", "nonunited", "new", "recent", "hairline", "nearly", "partially",
    "intra-articular", "intraarticular", "extra-articular", "extraarticular", "articular",
))
_SPECIFICITY = {"salter_harris": 5, "avulsion": 4, "plastic_bowing": 3, "greenstick": 3, "buckle": 2,
                "complete": 1}


@dataclass(slots=True)
class Tok:
    kind: str
    value: Any
    text: str
    clause: int = 0
    negated: bool = False
    uncertain: bool = False


@dataclass(slots=True)
class Mention:
    start: int                       # token index range [start, end)
    end: int
    clause: int
    pattern: str | None = None
    grade: int | None = None
    negated: bool = False
    uncertain: bool = False
    regions: tuple[str, ...] = ()
    displaced: list = field(default_factory=list)
    angulated: list = field(default_factory=list)
    healing: bool = False
    healing_only: bool = False
    remote: bool = False             # old / remodelled: not a finding of this study
    own_location: bool = False       # its location was named next to it (not the sentence's nearest)
    location_span: tuple[int, int] = (-1, -1)
    sentence: int = 0                # sentence index in the report (for --explain)
    words: str = ""
    heal_words: list = field(default_factory=list)


_WORD_REST = re.compile(r"[a-z0-9'-]*")
_AGE_UNITS = frozenset(("year", "years", "yr", "yrs", "y", "month", "months", "week", "weeks", "day", "days"))
_EARLY = frozenset(("early", "ongoing", "initial", "partial", "some", "mild"))


def _matches(sentence: str):
    """Lexicon matches left to right. Most characters are spaces or token starts, so the loop
    steps over spaces itself and only calls the first-character regex at a possible start."""
    pos, n = 0, len(sentence)
    by_char = _BY_CHAR
    while pos < n:
        rx = by_char.get(sentence[pos])
        if rx is None:
            pos += 1
            continue
        m = rx.match(sentence, pos)
        if m is None or m.end() == pos:
            # Inside a word (e.g. "23r" where the lexicon wants a word start): skip the word.
            pos = max(_WORD_REST.match(sentence, pos + 1).end(), pos + 1)
            continue
        yield m
        pos = m.end()


def tokenize(sentence: str) -> list[Tok]:
    toks, clause = [], 0
    for m in _matches(sentence):
        kind, value = _GROUP_INFO[m.lastgroup]
        text = m.group(0)
        if kind == "TERM":
            clause += 1
            toks.append(Tok(kind, value, text, clause))
            continue
        if kind == "REMOTE" and text == "old" and toks and toks[-1].text in _AGE_UNITS:
            kind = "WORD"  # "8 year old", "two weeks old": an age, not an old fracture
        elif kind == "REMOTE" and text.startswith("remodel") and toks and toks[-1].text in _EARLY:
            kind, value = "HEAL", True  # "early remodelling" is part of healing
        if kind == "PAT" and value == "salter_harris":
            g = _GRADE_IN.findall(_SH_WORDS.sub(" ", text))
            value = ("salter_harris", _ROMAN[g[-1]] if g else None)
        toks.append(Tok(kind, value, text, clause))
    return toks


# ---------------------------------------------------------------------------------------------
# 4. Mentions and scopes
# ---------------------------------------------------------------------------------------------
def _pattern_name(tok: Tok) -> str | None:
    if tok.kind != "PAT":
        return None
    return tok.value[0] if isinstance(tok.value, tuple) else tok.value


def _find_mentions(toks: list[Tok]) -> list[Mention]:
    mentions, i, n = [], 0, len(toks)
    while i < n:
        t = toks[i]
        if t.kind in ("FX", "PAT", "DISP", "ANG", "HEAL") or (t.kind == "WORD" and t.text in _MENTION_FILLERS):
            j, has_head, pats, grade, fx_count = i, False, [], None, 0
            while j < n and (toks[j].kind in ("FX", "PAT", "DISP", "ANG", "HEAL")
                             or (toks[j].kind == "WORD" and toks[j].text in _MENTION_FILLERS)):
                tj = toks[j]
                if tj.kind == "FX":
                    if fx_count and toks[j - 1].kind != "FX":
                        break
                    fx_count += 1
                    has_head = True
                p = _pattern_name(tj)
                if p:
                    pats.append(p)
                    if p in _STANDALONE_PATTERNS:
                        has_head = True
                    if p == "salter_harris" and tj.value[1]:
                        grade = tj.value[1]
                j += 1
            if has_head:
                pattern = max(pats, key=lambda p: _SPECIFICITY[p]) if pats else None
                m = Mention(i, j, toks[i].clause, pattern, grade if pattern == "salter_harris" else None)
                for k in range(i, j):
                    if toks[k].kind == "DISP":
                        m.displaced.append((k, toks[k].value, None, 0, toks[k].text))
                    elif toks[k].kind == "ANG":
                        m.angulated.append((k, toks[k].value, None, 0, toks[k].text))
                    elif toks[k].kind == "HEAL":
                        m.healing = True
                mentions.append(m)
                i = j
                continue
            i = max(j, i + 1) if j > i else i + 1
            continue
        i += 1
    return mentions


_HEAD_KINDS = ("DISP", "ANG", "HEAL", "CAST", "HW", "SWELL")
# Contrast ends the reach of a hedge; a relative clause ("..., which may represent") does not.
_SOFT_TERMS = frozenset(("which", "that is"))


def _units(toks: list[Tok], mentions: list[Mention]):
    """Token stream with each mention collapsed into one unit: list of (kind, ref, clause)."""
    starts = {m.start: m for m in mentions}
    units, i = [], 0
    while i < len(toks):
        if i in starts:
            m = starts[i]
            units.append(("MENTION", m, m.clause))
            i = m.end
        else:
            units.append((toks[i].kind, toks[i], toks[i].clause))
            i += 1
    return units


def _mark(ref, attr: str) -> None:
    setattr(ref, attr, True)


def _scope_forward(units, start: int, attr: str, limit: int = 14) -> None:
    """NegEx pre-trigger: the first head after the trigger, plus heads coordinated with it."""
    seen_head = coord = False
    clause = units[start][2]
    window = units[start + 1: start + 1 + limit]
    for pos, (kind, ref, cl) in enumerate(window):
        if cl != clause or kind in ("TERM", "NEGPRE", "NEGPOST", "UNCPRE", "UNCPOST"):
            break
        if kind == "MENTION" or kind in _HEAD_KINDS:
            if seen_head and not coord:
                break
            # "without displacement and angulated 10 degrees": a participle joined to a negated
            # noun is a new positive statement, not part of the negated list.
            if seen_head and kind in ("DISP", "ANG") and ref.value is True and ref.text.endswith("ed"):
                break
            _mark(ref, attr)
            seen_head, coord = True, False
        elif kind == "COORD":
            coord = seen_head or coord
        elif kind == "COMMA" and seen_head:
            # A comma continues the negated list only if the list closes with and/or/nor
            # ("no fracture, dislocation or swelling"), not in "without displacement, angulated".
            coord = _list_continues(window[pos + 1:], clause)
            if not coord:
                break
        elif kind == "VERB" and seen_head:
            break


def _list_continues(rest, clause: int) -> bool:
    for kind, _, cl in rest:
        if cl != clause or kind in ("TERM", "VERB", "NEGPRE", "NEGPOST", "UNCPRE", "UNCPOST"):
            return False
        if kind == "COORD":
            return True
    return False


def _scope_backward(units, start: int, attr: str, limit: int = 14) -> bool:
    """Post-trigger ("is not seen", "cannot be excluded"): the head before it, plus heads joined to
    it by and/or. Returns whether it reached a head."""
    seen_head = coord = False
    clause = units[start][2]
    for kind, ref, cl in reversed(units[max(0, start - limit): start]):
        if cl != clause or kind in ("TERM", "NEGPRE", "NEGPOST", "UNCPRE", "UNCPOST"):
            break
        if kind == "MENTION" or kind in _HEAD_KINDS:
            if seen_head and not coord:
                break
            _mark(ref, attr)
            seen_head, coord = True, False
        elif kind == "COORD":
            coord = seen_head or coord
    return seen_head


def _apply_scopes(units) -> None:
    for idx, (kind, _, cl) in enumerate(units):
        if kind == "NEGPRE":
            _scope_forward(units, idx, "negated")
        elif kind == "NEGPOST":
            _scope_backward(units, idx, "negated")
        elif kind in ("UNCPOST", "UNCPRE"):
            # A hedge reaches the findings it modifies on either side within its clause: "is
            # questionable for a fracture" looks ahead; "buckle fracture of the radius,
            # questionable" looks back.
            after = [ref for k2, ref, cl2 in units[idx + 1:] if cl2 == cl and k2 == "MENTION"]
            if kind == "UNCPOST":
                if not _scope_backward(units, idx, "uncertain"):
                    for ref in after or _antecedent(units, cl):
                        ref.uncertain = True
                continue
            closes = not any(cl2 == cl and k2 in ("MENTION", "LOC") for k2, _, cl2 in units[idx + 1:])
            targets = after or ([ref for k2, ref, cl2 in units[:idx] if cl2 == cl and k2 == "MENTION"]
                                if closes else [])
            for ref in targets or (_antecedent(units, cl) if closes else []):
                ref.uncertain = True
        elif kind == "REMOTE":
            for k2, ref, cl2 in units:
                if cl2 == cl and k2 == "MENTION":
                    ref.remote = True
        elif kind == "UNCCLAUSE":
            own = [ref for k2, ref, cl2 in units if cl2 == cl and k2 == "MENTION"]
            for ref in own or _antecedent(units, cl):
                ref.uncertain = True


def _antecedent(units, clause: int) -> list:
    """The finding a relative clause modifies: "subtle buckle of the radius, which may be a normal
    variant" hedges the buckle. Only a clause opened by "which" / "that is" has one."""
    opens = [ref for k, ref, cl in units if k == "TERM" and cl == clause]
    if not opens or opens[0].text not in _SOFT_TERMS:
        return []
    before = [ref for k, ref, cl in units if k == "MENTION" and cl == clause - 1]
    return before[-1:]


# ---------------------------------------------------------------------------------------------
# 5. Locations
# ---------------------------------------------------------------------------------------------
_SINGULAR_VERBS = frozenset(("is", "was", "appears", "remains", "shows", "demonstrates", "has"))
_ADJACENT_WORDS = frozenset(("the", "distal", "left", "right", "dorsal", "volar", "palmar"))


def _location_groups(toks: list[Tok]) -> list[tuple[int, int, tuple[str, ...]]]:
    """Coordinated location runs: (first token, last token, regions incl. 'other')."""
    groups, i, n = [], 0, len(toks)
    while i < n:
        if toks[i].kind != "LOC":
            i += 1
            continue
        regs, j, last = [toks[i].value], i + 1, i
        while j < n:
            k = toks[j].kind
            if k == "LOC":
                regs.append(toks[j].value)
                last = j
                j += 1
            elif k in ("COORD", "COMMA") or (k == "WORD" and toks[j].text in ("the", "distal", "both")):
                j += 1
            else:
                break
        # "fracture of the radius and the ulna is intact": a singular verb after a coordinated
        # group means its last location starts a new statement.
        if len(regs) > 1 and last + 1 < n and toks[last + 1].text in _SINGULAR_VERBS:
            locs = [k for k in range(i, last + 1) if toks[k].kind == "LOC"]
            groups.append((i, locs[-2], tuple(dict.fromkeys(regs[:-1]))))
            groups.append((last, last, (regs[-1],)))
        else:
            groups.append((i, last, tuple(dict.fromkeys(regs))))
        i = last + 1
    return groups


_SKIP_RIGHT = ("PREP", "VERB", "WORD", "COMMA")
_SKIP_LEFT = ("VERB", "WORD", "PREP")


def _attach(m: Mention, toks: list[Tok], groups, mentions: list[Mention]) -> tuple[str, ...]:
    """The regions of mention `m`; sets m.own_location and m.location_span when the location is
    named next to it (not merely the sentence's nearest)."""
    by_start = {g[0]: g for g in groups}
    by_end = {g[1]: g for g in groups}
    other_spans = [(o.start, o.end) for o in mentions if o is not m]

    def inside_other(k: int) -> bool:
        return any(s <= k < e for s, e in other_spans)

    def right():
        saw_prep, adjacent = False, True
        for k in range(m.end, min(len(toks), m.end + 9)):
            if k in by_start:
                if saw_prep or adjacent:
                    return by_start[k]
                return None
            t = toks[k]
            adjacent = adjacent and t.kind == "WORD" and t.text in _ADJACENT_WORDS
            if inside_other(k) or t.kind == "TERM" or t.kind not in _SKIP_RIGHT + ("DISP", "ANG", "HEAL"):
                return None
            if t.kind == "COMMA" and not saw_prep:
                return None
            saw_prep = saw_prep or t.kind == "PREP"
        return None

    def left():
        for k in range(m.start - 1, max(-1, m.start - 8), -1):
            if k in by_end:
                return by_end[k]
            t = toks[k]
            if inside_other(k) or t.kind == "TERM" or t.kind not in _SKIP_LEFT + ("DISP", "ANG", "HEAL"):
                return None
        return None

    nxt = toks[m.end].kind if m.end < len(toks) else None
    order = (right, left) if nxt in ("PREP", "VERB", "LOC") else (left, right)
    got: tuple[str, ...] = ()
    for f in order:
        g = f()
        if g:
            got, m.own_location, m.location_span = g[2], True, (g[0], g[1])
            break
    if not got and groups:
        def dist(g):
            return min(abs(g[0] - m.start), abs(g[1] - (m.end - 1)), abs(g[0] - (m.end - 1)), abs(g[1] - m.start))
        g = min(groups, key=dist)
        got, m.location_span = g[2], (g[0], g[1])
    # A shaft level in the location or just before the mention ("mid-shaft fractures of the
    # radius and ulna") moves radius/ulna findings elsewhere.
    near_shaft = any(toks[k].kind == "LOC" and toks[k].value == "shaft" for k in range(max(0, m.start - 2), m.start))
    if "shaft" in got or near_shaft:
        got = tuple(dict.fromkeys("other" if r in ("distal_radius", "distal_ulna", "shaft") else r for r in got)) or ("other",)
    return got


# ---------------------------------------------------------------------------------------------
# 6. The miner
# ---------------------------------------------------------------------------------------------
_LATERALITY = re.compile(r"(?<![a-z])(left|right)(?![a-z])|"
                         r"(?<![a-z])([lr])\.? (?:wrist|hand|forearm|arm|upper limb|distal|radius|ulna|side)\b|"
                         r"\(([lr])\)")
# In an indication, a side may be a lone letter closing a phrase: "Pain, R." / "forearm fracture, L".
_LATERALITY_LONE = re.compile(r"(?:^|[,;:(]) ?([lr])\.?\s*(?=$|[.,;)\n])", re.M)


def _laterality(sections: list[tuple[str, str]]) -> tuple[str | None, str, str]:
    """(side, section kind, matched words): the technique line first, then the findings, then the
    indication, then the comparison (a prior study is almost always of the same side)."""
    for wanted in (("technique",), ("preamble", "findings", "impression"), ("history",), ("comparison",)):
        for kind, text in sections:
            if kind in wanted:
                m = _LATERALITY.search(text)
                if not m and kind in ("history", "technique"):
                    m = _LATERALITY_LONE.search(text)
                if m:
                    side = next(g for g in m.groups() if g)
                    return ("left" if side.startswith("l") else "right"), kind, m.group(0).strip()
    return None, "", ""


# A sentence that recommends or plans ("recommend splint", "thumb spica cast recommended", "will be
# placed in a cast", "consider immobilisation if ...") describes no finding of these images.
_PLAN = re.compile(r"^\s*(?:please |we )?(?:recommend|suggest|consider|advise|refer|plan\b)|"
                   r"\b(?:recommended|recommend|recommendation|recommends|suggested|is advised|are advised|"
                   r"advised|advise|consider|to be (?:placed|applied|treated)|will be (?:placed|applied|treated)|"
                   r"should be (?:placed|applied|treated)|if (?:clinical\w*|symptoms|there is|occult|concern|pain|still))\b")
_PLAN_HINTS = ("recommend", "suggest", "consider", "advis", "plan", "refer", " be ", "if ")
# Words that make a previously described (hedged) finding a finding of this study again.
_CONFIRMS = re.compile(r"(?<!not )(?<!un)\bconfirm(?:ed|ing|s)\b|\bagain (?:seen|noted|identified|demonstrated)\b|"
                       r"\bpersist\w*|\bremains?\b|\bunchanged\b|\bstable\b|\bnow (?:seen|evident|visible|apparent)\b")
_PRIOR_WORDS = frozenset(("previously", "prior", "earlier", "initially", "formerly"))


def _nearest_mention(pos: int, clause: int, mentions: list[Mention]) -> Mention | None:
    """An attribute at token `pos` modifies the mention it is inside, else the nearest preceding
    mention in its clause, else the nearest following one in its clause, else the nearest one."""
    for m in mentions:
        if m.start <= pos < m.end:
            return m
    same = [m for m in mentions if m.clause == clause]
    before = [m for m in same if m.end <= pos]
    if before:
        return max(before, key=lambda m: m.end)
    if same:
        return min(same, key=lambda m: m.start)
    if mentions:
        return min(mentions, key=lambda m: min(abs(m.start - pos), abs(m.end - 1 - pos)))
    return None


def _earlier_targets(state: dict, groups, idx: int, toks: list[Tok]) -> list[Mention]:
    """Findings of earlier sentences that an attribute-only sentence refers to: those at the
    location it names ("5 mm displacement of the distal radial epiphysis"); with no location and no
    fracture word ("No displacement.") every finding of the section; else the last ones."""
    if groups:
        nearest = min(groups, key=lambda g: min(abs(g[0] - idx), abs(g[1] - idx)))[2]
        named = [m for m in state["mentions"] if not m.negated and set(m.regions) & set(nearest)]
        if named:
            return named
    elif not any(t.kind == "FX" for t in toks):
        return [m for m in state["section"] if not m.negated and not m.remote] or state["last"]
    return state["last"]


def _named_bone(idx: int, owner: Mention, toks: list[Tok]) -> str | None:
    """A bone named again just before an attribute, after its finding and outside the finding's own
    location ("radius and ulna fractures, the radius with 4 mm of displacement and the ulna
    nondisplaced"): the attribute belongs to that bone only."""
    if len(owner.regions) < 2:
        return None
    for k in range(idx - 1, max(-1, idx - 7), -1):
        t = toks[k]
        if t.kind == "TERM" or owner.start <= k < owner.end or k < owner.end:
            break
        if t.kind == "LOC":
            if owner.location_span[0] <= k <= owner.location_span[1]:
                break
            return t.value if t.value in owner.regions else None
        if t.kind not in ("WORD", "VERB", "PREP", "DISP", "ANG"):
            break
    # "... with dorsal displacement of the radial fragment": the bone named right after it.
    if idx + 1 < len(toks) and toks[idx + 1].kind == "PREP" and toks[idx + 1].text == "of":
        for k in range(idx + 2, min(len(toks), idx + 5)):
            t = toks[k]
            if t.kind == "LOC":
                inside = owner.location_span[0] <= k <= owner.location_span[1]
                return t.value if t.value in owner.regions and not inside else None
            if t.kind != "WORD":
                break
    return None


def _distributive(toks: list[Tok]) -> str | None:
    """"Neither fracture is angulated" / "Both fractures are nondisplaced" / "Neither is displaced":
    returns "neither" or "both" when the sentence's subject is all the findings described."""
    k = 0
    while k < len(toks) and toks[k].kind == "WORD" and toks[k].text in ("the", "and"):
        k += 1
    if k + 1 >= len(toks) or toks[k].text not in ("neither", "both"):
        return None
    nxt = toks[k + 1]
    if nxt.kind == "FX" or (nxt.kind == "VERB" and nxt.text in ("is", "are", "was", "were", "show", "remain", "appear")) \
            or nxt.text in ("of", "the"):
        return toks[k].text
    return None


def _words(toks: list[Tok], a: int, b: int) -> str:
    return " ".join(t.text for t in toks[a:b])


def _add_attr(m: Mention, kind: str, idx: int, value, region, sent: int, word: str) -> None:
    (m.displaced if kind == "DISP" else m.angulated).append((idx, value, region, sent, word))


def _flag(flags: dict, trace: dict, key: str, value: bool, sent: int, word: str) -> None:
    flags[key] = flags[key] or value
    trace.setdefault(f"global.{key}", []).append((sent, word))


def _mine_sentence(toks: list[Tok], state: dict, flags: dict, allow_findings: bool, sent: int) -> None:
    mentions = _find_mentions(toks) if allow_findings else []
    for m in mentions:
        m.sentence, m.words = sent, _words(toks, m.start, m.end)
        m.displaced = [(k, v, r, sent, w) for k, v, r, _, w in m.displaced]
        m.angulated = [(k, v, r, sent, w) for k, v, r, _, w in m.angulated]
    units = _units(toks, mentions)
    _apply_scopes(units)
    for kind, ref, _ in units:
        if kind == "CAST" and not ref.negated and not ref.uncertain:
            if ref.value is False:
                flags["cast_removed"] = True
                state["trace"].setdefault("global.cast", []).append((sent, ref.text))
            else:
                _flag(flags, state["trace"], "cast", True, sent, ref.text)
        elif kind == "HW" and not ref.negated and not ref.uncertain:
            if ref.value is False:
                flags["hardware_removed"] = True
                state["trace"].setdefault("global.hardware", []).append((sent, ref.text))
            else:
                _flag(flags, state["trace"], "hardware", True, sent, ref.text)
        elif kind == "SWELL" and allow_findings and not ref.negated:
            _flag(flags, state["trace"], "soft_tissue_swelling", True, sent, ref.text)
    if not allow_findings:
        return
    groups = _location_groups(toks)
    distributive = _distributive(toks)
    if distributive:
        _mine_distributive(toks, state, distributive, sent)
        return
    # Healing words with a location and no fracture word in the sentence describe a healing fracture.
    if not mentions:
        for idx, t in enumerate(toks):
            if t.kind == "HEAL" and not t.negated and (groups or state["last"]):
                if any(u.kind == "REMOTE" and u.clause == t.clause for u in toks):
                    break
                m = Mention(idx, idx + 1, t.clause, healing=True, healing_only=True, sentence=sent, words=t.text)
                m.uncertain = t.uncertain
                m.heal_words.append((sent, t.text))
                mentions.append(m)
                break
    for m in mentions:
        regs = _attach(m, toks, groups, mentions)
        if not regs and not m.negated:
            # "The fracture has healed with remodelling. ... Healed fracture.": a finding without a
            # location after only old ones refers to them.
            if not state["last"] and any(o.remote for o in state["mentions"]):
                m.remote = True
            regs = state["last_regions"] or (("ulnar_styloid",) if m.pattern == "avulsion" else ("distal_radius",))
        m.regions = regs
        m.heal_words.extend((sent, toks[k].text) for k in range(m.start, m.end) if toks[k].kind == "HEAL")
    if any(m.uncertain for m in mentions) or any(t.kind == "UNCPRE" for t in toks):
        mentions.extend(_hedged_extensions(toks, groups, mentions, sent))
        _share_hedges(toks, mentions)
        _prior_mentions(toks, mentions)
    # Attributes outside mentions attach to the nearest mention, or to the previous sentence's.
    for idx, t in enumerate(toks):
        if t.kind not in ("DISP", "ANG", "HEAL"):
            continue
        if any(m.start <= idx < m.end for m in mentions):
            continue
        owner = _nearest_mention(idx, t.clause, [m for m in mentions if not m.negated and not m.remote])
        targets = [owner] if owner is not None else _earlier_targets(state, groups, idx, toks)
        for o in targets:
            if t.kind in ("DISP", "ANG"):
                region = _named_bone(idx, o, toks) if owner is not None else None
                _add_attr(o, t.kind, idx, False if t.negated else t.value, region, sent, t.text)
            elif t.kind == "HEAL" and not t.negated:
                o.healing = True
                o.heal_words.append((sent, t.text))
    # "Healed distal radius fracture" restating an old, remodelled one is that old fracture.
    old = state["old_regions"]
    for m in mentions:
        if old and m.healing and old & set(m.regions) and all(w == "healed" for _, w in m.heal_words):
            m.remote = True
    old.update(r for m in mentions if m.remote and not m.negated for r in m.regions)
    located = [m for m in mentions if not m.negated and not m.remote]
    state["mentions"].extend(mentions)
    state["section"].extend(mentions)
    if located:
        state["last"] = located
        state["last_regions"] = tuple(dict.fromkeys(r for m in located for r in m.regions if r != "other")) \
            or state["last_regions"]


def _mine_distributive(toks: list[Tok], state: dict, which: str, sent: int) -> None:
    """Attributes of a "neither / both" sentence go to every current finding of the section."""
    targets = [m for m in state["section"] if not m.negated and not m.remote
               and set(m.regions) & set(REGIONS)] or state["last"]
    for idx, t in enumerate(toks):
        if t.kind not in ("DISP", "ANG", "HEAL"):
            continue
        value = False if which == "neither" or t.negated else t.value
        for o in targets:
            if t.kind == "HEAL":
                if value:
                    o.healing = True
                    o.heal_words.append((sent, t.text))
            else:
                _add_attr(o, t.kind, idx, value, None, sent, f"{which} ... {t.text}")


def _hedged_extensions(toks: list[Tok], groups, mentions: list[Mention], sent: int) -> list[Mention]:
    """"Buckle fracture of the distal radius, possibly also involving the distal ulna": a hedge
    followed by a location that no finding claims is a hedged finding there, of the same pattern."""
    out = []
    claimed = {m.location_span for m in mentions if m.own_location}
    by_start = {g[0]: g for g in groups}
    for u, t in enumerate(toks):
        if t.kind != "UNCPRE":
            continue
        earlier = [m for m in mentions if m.end <= u and m.clause <= t.clause and not m.negated]
        if not earlier:
            continue
        for k in range(u + 1, min(len(toks), u + 6)):
            if k in by_start:
                g = by_start[k]
                if (g[0], g[1]) not in claimed and not any(m.start <= k < m.end or m.start > u and m.start < k
                                                           for m in mentions):
                    src = earlier[-1]
                    m = Mention(g[0], g[1] + 1, t.clause, src.pattern, src.grade, uncertain=True,
                                regions=g[2], own_location=True, location_span=(g[0], g[1]), sentence=sent,
                                words=f"{t.text} ... {_words(toks, g[0], g[1] + 1)}")
                    out.append(m)
                break
            if toks[k].kind not in ("WORD", "PREP", "VERB"):
                break
    return out


def _share_hedges(toks: list[Tok], mentions: list[Mention]) -> None:
    """A hedged reading of a sign describes the same finding as the sign: "buckling of the distal
    radius, possibly representing a buckle fracture" / "cortical buckle of the radius - a torus
    fracture is not excluded". An unhedged finding takes the hedge of a hedged one in its sentence
    when nothing contrasts them and the hedged one names no other bone."""
    hedged = [h for h in mentions if h.uncertain and not h.negated]
    for m in mentions:
        if m.uncertain or m.negated or m.remote:
            continue
        for h in hedged:
            a, b = (m, h) if m.end <= h.start else (h, m)
            between = toks[a.end:b.start]
            if any(t.kind == "TERM" and t.text not in _SOFT_TERMS for t in between):
                continue
            if any(t.kind in ("NEGPRE", "NEGPOST") for t in between):
                continue
            if set(h.regions) & set(m.regions) if h.own_location else True:
                m.uncertain = True
                break


def _prior_mentions(toks: list[Tok], mentions: list[Mention]) -> None:
    """"The previously questioned buckle fracture ...": the hedge belongs to the earlier study. The
    finding is current only if this sentence confirms it (or it heals); otherwise it is dropped."""
    confirmed = None
    for m in mentions:
        if m.negated or not m.uncertain:
            continue
        if any(toks[k].text in _PRIOR_WORDS for k in range(max(0, m.start - 4), m.start)):
            if confirmed is None:
                confirmed = bool(_CONFIRMS.search(" ".join(t.text for t in toks))) \
                    or any(t.kind == "HEAL" and not t.negated for t in toks)
            if confirmed:
                m.uncertain = False
            else:
                m.remote = True


def _resolve(mentions: list[Mention], trace: dict) -> tuple[dict, bool]:
    regions = {r: empty_region() for r in REGIONS}
    other = False
    for name in REGIONS:
        ms = [m for m in mentions if name in m.regions and not m.negated and not m.remote]
        if not ms:
            dropped = [(m.sentence, f"{m.words} ({'negated' if m.negated else 'old / not confirmed'})")
                       for m in mentions if name in m.regions and (m.negated or m.remote)]
            if dropped:
                trace[f"{name}.fracture"] = dropped
            continue
        present = [m for m in ms if not m.uncertain]
        status = "present" if present else "uncertain"
        use = present or ms
        r = regions[name]
        r["fracture"] = status
        trace[f"{name}.fracture"] = [(m.sentence, m.words) for m in use]
        pats = [(m.pattern, m) for m in use if m.pattern] or [(m.pattern, m) for m in ms if m.pattern]
        if pats:
            best = max(_SPECIFICITY[p] for p, _ in pats)
            ranked = [p for p, _ in pats if _SPECIFICITY[p] == best]
            r["pattern"] = max(sorted(set(ranked)), key=ranked.count)
            trace[f"{name}.pattern"] = [(m.sentence, m.words) for p, m in pats if p == r["pattern"]]
        if name == "ulnar_styloid":
            # The AO pediatric classification codes every ulnar styloid fracture as an avulsion
            # (..u-E/7, ..u-M/7); the GRAZPEDWRI-DX importer maps them so.
            if r["pattern"] != "avulsion":
                trace[f"{name}.pattern"] = trace.get(f"{name}.fracture", []) + [(-1, "ulnar styloid: avulsion (AO)")]
            r["pattern"] = "avulsion"
        if r["pattern"] == "salter_harris":
            grades = [m for m in ms if m.grade]
            r["salter_harris"] = grades[0].grade if grades else None
            if grades:
                trace[f"{name}.salter_harris"] = [(grades[0].sentence, grades[0].words)]
        for key in ("displaced", "angulated"):
            attrs = [a for m in use for a in getattr(m, key) if a[2] is None or a[2] == name]
            vals = [a[1] for a in attrs]
            r[key] = True if True in vals else (False if False in vals else None)
            if r[key] is not None:
                trace[f"{name}.{key}"] = [(a[3], a[4]) for a in attrs if a[1] == r[key]]
        heal = [w for m in ms if m.healing for w in m.heal_words]
        r["healing"] = any(m.healing for m in ms)
        if r["healing"]:
            trace[f"{name}.healing"] = heal
    for m in mentions:
        if "other" in m.regions and not m.negated and not m.remote:
            other = True
            trace.setdefault("global.other_fracture", []).append((m.sentence, m.words))
    return regions, other


def sentences(text: str) -> list[tuple[str, str]]:
    """[(section kind, normalised sentence)] in report order; indices are those of `explain`."""
    out = []
    for kind, body in split_sections(normalize(text)):
        for sent in _SENTENCE_SPLIT.split(body):
            if sent.strip():
                out.append((kind, sent))
    return out


def mine_report(text: str, trace: dict | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Free-text report -> (regions, global_) in the findings schema (deterministic).

    With a `trace` dict, fills it with {field: [(sentence index, words), ...]}: the sentences (by
    index in `sentences(text)`) and the words that set each non-default field, plus "skipped":
    [(sentence index, section or "plan")] for sentences read as history, comparison or a plan."""
    t = normalize(text)
    sections = split_sections(t)
    tr: dict[str, Any] = {} if trace is None else trace
    state: dict[str, Any] = {"mentions": [], "section": [], "last": [], "last_regions": (), "trace": tr,
                             "old_regions": set()}
    flags = {"cast": False, "hardware": False, "soft_tissue_swelling": False}
    skipped = tr.setdefault("skipped", [])
    sent_idx = 0
    for kind, body in sections:
        state["section"] = []
        for sent in _SENTENCE_SPLIT.split(body):
            if not sent.strip():
                continue
            if kind in ("history", "comparison", "plan"):
                skipped.append((sent_idx, kind))
            elif any(h in sent for h in _PLAN_HINTS) and _PLAN.search(sent):
                skipped.append((sent_idx, "plan"))
            else:
                _mine_sentence(tokenize(sent), state, flags, kind != "technique", sent_idx)
            sent_idx += 1
    regions, other = _resolve(state["mentions"], tr)
    g = empty_global()
    side, where, words = _laterality(sections)
    g["laterality"] = side
    if side:
        tr["global.laterality"] = [(-1, f"{where}: {words}")]
    # A removal ("K-wires removed", "pin tracts", "cast removed") outranks mentions of the device.
    g["cast"] = bool(flags["cast"]) and not flags.get("cast_removed")
    g["hardware"] = bool(flags["hardware"]) and not flags.get("hardware_removed")
    g["soft_tissue_swelling"] = bool(flags["soft_tissue_swelling"])
    g["other_fracture"] = other
    return regions, g
