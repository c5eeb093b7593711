"""Rule-based de-identification of report text, applied before anything derived from a report is
stored or mined: personal names (after titles, after labels such as "Patient:", "referred by",
"mother", before an age "John Smith, 9 y/o", "SMITH, JOHN", and any common given name followed by
a capitalised word), MRN / accession / record / hospital / NHS numbers, dates, phone numbers
(incl. "(555)867-5309"), street addresses, P.O. boxes, city-state-ZIP, e-mail addresses. Each is
replaced by a bracketed tag ([NAME], [ID], [DATE], [PHONE], [ADDRESS], [EMAIL]) so the clinical
text around it keeps its structure. Capitalised clinical words ("Left", "Distal", "Salter") are
never taken for names, and an eponym ("Smith fracture") stays.

The scrubber is deliberately conservative (it may remove a few harmless numbers); clinical
measurements with units ("3 mm", "15 degrees") and Salter-Harris grades are left alone.
"""

from __future__ import annotations

import re
from typing import Any

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|"
           r"aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")

# A name token: "Smith", "McDonald", "O'Neil", an initial "J.", or an all-caps surname that is not
# a report section heading.
_NAME = (r"(?:[A-Z](?:[a-z'\-]+(?:[A-Z][a-z'\-]+)?|\.)|"
         r"(?!(?:FINDINGS|IMPRESSION|HISTORY|INDICATION|COMPARISON|TECHNIQUE|CLINICAL|EXAM)\b)[A-Z][A-Z'\-]+\b)")

# Capitalised words of reports that are never names (sentence starts, headings, eponyms' context).
_NOT_NAMES = frozenset("""
a an the and or but of to in on at by for with from as is was were are be been has had have no not
left right bilateral wrist wrists hand hands forearm arm elbow finger fingers thumb radius radial ulna
ulnar styloid distal proximal mid metaphysis metaphyseal physis physeal epiphysis diaphysis cortex
cortical carpal carpals scaphoid lunate bone bones joint fracture fractures fx buckle torus greenstick
complete salter harris avulsion plastic bowing type grade displaced nondisplaced angulated angulation
healing healed callus cast splint hardware plate screw pin soft tissue swelling pain tenderness fall
fell fall injury trauma history indication indications comparison comparisons findings finding
impression impressions technique clinical exam examination views view xr x-ray radiograph radiographs
study studies pa ap lateral oblique male female boy girl child patient pt year years old yo y/o age
x mother father parent guardian son daughter referred referring ordered requested dictated signed read
reported reviewed transcribed attending resident radiologist technologist name cc contact discussed
normal abnormal unremarkable stable acute chronic mild moderate severe small large minimal possible
probable likely suspected subtle no there this that these those it its he she his her they them
presented presents presenting seen follow-up followup recommend recommended correlate clinically
again also otherwise additional alignment mineralization joints space spaces growth plate plates
foosh query reason views obtained summary conclusion conclusions information info
dr mr mrs ms miss prof md do phd rn np pa-c emergency department er ed clinic hospital orthopedics
ortho pediatrics pediatric radiology report reports addendum final preliminary prelim note notes
january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday today yesterday tomorrow
""".split())

# Given names common in English, Spanish, German, French, Italian, Polish, Arabic, Indian, Chinese and
# Nigerian naming (romanised); English words that are also names (May, Will, Grace, Hope, Mark,
# June, Bill, Rose, Faith, Joy) are left out: a capitalised one starts too many sentences.
_GIVEN = frozenset("""
aaron abigail adam adrian ahmed aiden aisha alejandro alexander alexandra alice amelia amir amy ana
andrea andrew angela anna anthony antonio arjun ava benjamin brandon brian camila carlos caroline
charlotte chen chloe christopher daniel david diana diego dmitri ella elena elijah elizabeth emily
emma eric ethan eva fatima felix fernando finn gabriel george hannah harper harry henry ibrahim isaac
isabella jacob james jan jason javier jennifer jessica john jonathan jorge jose joseph joshua juan
julia julian kai karen katarzyna kevin laura leah leo liam lily lucas lucia luis luka maria mariam
martin mateo matthew maya mei mia michael mohammed muhammad nathan nicholas noah nora oliver olivia
omar oscar pablo patrick paul peter piotr priya rahul rachel rebecca ryan samuel sara sarah sebastian
sofia sophia sophie stefan steven susan thomas tyler valentina victoria william wei xin yusuf zoe
chinedu ngozi oluwaseun aditya ananya hiroshi yuki sven lars ingrid giulia marco francesca lukas jonas
leon mila noor hamza zainab tomasz agnieszka mateusz zofia emeka amara kofi ama
""".split())

_CAP_TOKEN = re.compile(r"\b[A-Z][A-Za-z'\-]*")
_NAME_SEQ = rf"{_NAME}(?:,?[ \t]+{_NAME}){{0,3}}"
_LABELS = (r"(?:patient(?:'s)?(?:[ \t]+name)?|pt(?:[ \t]+name)?|name|child|son|daughter|mother|father|"
           r"parent|guardian|grand(?:mother|father)|brother|sister|referred[ \t]+by|referring"
           r"(?:[ \t]+(?:physician|doctor|clinician|provider))?|ordered[ \t]+by|requested[ \t]+by|"
           r"dictated[ \t]+by|(?:electronically[ \t]+)?signed[ \t]+by|read[ \t]+by|reported[ \t]+by|"
           r"reviewed[ \t]+by|transcribed[ \t]+by|attending|resident|radiologist|technologist|"
           r"cc|contact|discussed[ \t]+with|d/w|spoke[ \t]+(?:with|to)|accompanied[ \t]+by|"
           r"seen[ \t]+by|pcp|physician|provider)")
_EPONYM_AFTER = re.compile(r"\s*(?:'s)?\s*(?:fracture|fx|type|classification|sign|view|line|lesion|"
                           r"injury|deformity|disease|syndrome|angle|criteria)\b", re.IGNORECASE)
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|"
           r"Terrace|Ter|Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Crescent|Close|Gardens)")
_STREET_WORDS = frozenset(("street", "st", "avenue", "ave", "road", "rd", "boulevard", "blvd", "lane", "ln",
                           "drive", "dr", "court", "ct", "way", "place", "pl", "terrace", "ter", "circle",
                           "cir", "highway", "hwy", "parkway", "pkwy", "square", "sq", "crescent",
                           "close", "gardens", "box", "apt", "suite"))
_ADDRESS_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"\bP\.?[ \t]*O\.?[ \t]*Box[ \t]+\d+", re.IGNORECASE), "[ADDRESS]"),
    (re.compile(rf"\b\d{{1,6}}[A-Za-z]?[ \t]+(?:[NSEW]\.?[ \t]+)?(?:[A-Z][a-z]+\.?[ \t]+){{1,3}}{_STREET}\b\.?"
                r"(?:,?[ \t]*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?[ \t]*#?\w+)?"
                r"(?:,[ \t]*[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?)?(?:,?[ \t]*[A-Z]{2})?(?:[ \t]+\d{5}(?:-\d{4})?)?"),
     "[ADDRESS]"),
    (re.compile(r"\b[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?,[ \t]*[A-Z]{2}[ \t]+\d{5}(?:-\d{4})?\b"), "[ADDRESS]"),
)


def _is_name_token(tok: str) -> bool:
    parts = [p for p in tok.strip(".,").lower().split("-") if p]
    return bool(parts) and not any(p in _NOT_NAMES for p in parts)


def _names_in(span: str) -> str | None:
    """[NAME] when every capitalised token of `span` may be a name, else None."""
    toks = _CAP_TOKEN.findall(span)
    if toks and all(_is_name_token(t) for t in toks):
        return "[NAME]"
    return None


def _label_name(m: re.Match) -> str:
    # Trailing tokens that are clinical words are kept ("Patient John Smith Left wrist").
    label, sep, seq = m.group(1), m.group(2), m.group(3)
    toks = re.split(r"(,?[ \t]+)", seq)
    keep_upto = 0
    for i in range(0, len(toks), 2):
        if _is_name_token(toks[i]):
            keep_upto = i + 1
        else:
            break
    if keep_upto == 0 or _EPONYM_AFTER.match(m.string, m.start(3) + len("".join(toks[:keep_upto]))):
        return m.group(0)
    return f"{label}{sep}[NAME]{''.join(toks[keep_upto:])}"


def _given_name(m: re.Match) -> str:
    if _EPONYM_AFTER.match(m.string, m.end()):
        return m.group(0)
    return "[NAME]"


def _age_name(m: re.Match) -> str:
    return _names_in(m.group(1)) or m.group(1)


_GIVEN_ALT = "|".join(sorted((g.capitalize() for g in _GIVEN), key=len, reverse=True))
_GIVEN_UP = "|".join(sorted((g.upper() for g in _GIVEN), key=len, reverse=True))
_NAME_RULES: tuple[tuple[re.Pattern, Any], ...] = (
    # "Patient: John Smith", "referred by Smith, John", "mother Maria at bedside"
    (re.compile(rf"\b((?i:{_LABELS}))([ \t]*[:\-]?[ \t]*)({_NAME_SEQ})"), _label_name),
    # "SMITH, JOHN" / "Smith, John A." with a known given name after the comma
    (re.compile(rf"\b{_NAME},[ \t]*(?:{_GIVEN_ALT}|{_GIVEN_UP})\b(?:[ \t]+[A-Z]\.?(?![a-z]))?"), "[NAME]"),
    # a known given name, alone or with the following capitalised tokens / initials
    (re.compile(rf"\b(?:{_GIVEN_ALT}|{_GIVEN_UP})\b(?:[ \t]+(?:[A-Z]\.|(?!(?i:left|right|wrist|distal)\b)"
                rf"[A-Z][a-zA-Z'\-]+)){{0,2}}"), _given_name),
    # "BRANDAUER, XOCHITL": an all-caps "LAST, FIRST" whatever the given name
    (re.compile(r"^[ \t]*[A-Z][A-Z'\-]+,[ \t]*[A-Z][A-Z'\-]+\b(?:[ \t]+[A-Z]\.?(?![A-Za-z]))?", re.MULTILINE),
     lambda m: _names_in(m.group(0).title()) or m.group(0)),
    # "Xxx Yyy, 9 y/o", "Xxx Yyy (8 years)", "Xxx Yyy, a 10-year-old"
    (re.compile(rf"\b({_NAME}(?:[ \t]+{_NAME}){{1,2}})(?=,?[ \t]*\(?(?:an?[ \t]+)?\d{{1,2}}(?:\.\d)?[ \t-]*"
                r"(?:y\b|yo\b|y/o|yrs?\b|years?\b|-year|mo\b|months?\b))"), _age_name),
)

# Order matters: identifiers and e-mails before phones and dates (an MRN can look like a date).
_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "[EMAIL]"),
    # Titles followed by one to three capitalised name tokens (initials allowed).
    (re.compile(rf"\b(Dr|Mr|Mrs|Ms|Miss|Prof|DR\.|MR\.|MRS\.|MS\.|PROF\.)\.?[ \t]+{_NAME}(?:[ \t]+{_NAME}){{0,2}}"),
     lambda m: m.group(1).rstrip(".") + ". [NAME]"),
    # Labelled identifiers: MRN, accession, record, patient id, case number and the like.
    (re.compile(r"\b(?=[MmAaPpCcRrSsEeIiHhNnUuFfVv])(MRN|MR\s*#|M\.R\.N\.|med(?:ical|\.)?\s*rec(?:ord|\.)?(?: number| no\.?| #)?|"
                r"accession(?: number| no\.?| #)?|acc(?:\.|ession)?\s*#?|patient id|pt id|case(?: number| no\.?| #)|"
                r"record(?: number| no\.?| #)|hosp(?:ital|\.)?\s*(?:number|no\.?|#|id)|nhs(?: number| no\.?| #)?|"
                r"unit(?: number| no\.?| #)|chart(?: number| no\.?| #)|fin|csn|ssn|visit(?: number| no\.?| #)|"
                r"encounter(?: number| no\.?| #| id)?|study id|exam(?: number| no\.?| #)|id)\s*[:#]?\s*"
                r"[A-Z]{0,3}[-\s]?\d(?:[\d\-]|\s(?=\d)){3,}",
                re.IGNORECASE), r"\1: [ID]"),
    (re.compile(r"(?<![\w+(])(?=[\d(+])(?:\+?\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}\b"), "[PHONE]"),
    (re.compile(r"(?<![\w/.-])\d{3}[-.]\d{4}\b(?![/.-]\d)"), "[PHONE]"),
    (re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b"), "[DATE]"),
    (re.compile(rf"\b(?=[jfmasond])(?i:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b", re.IGNORECASE), "[DATE]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{2,4}}\b", re.IGNORECASE), "[DATE]"),
    (re.compile(rf"\b(?=[jfmasond])(?i:{_MONTHS})\.?,?\s+\d{{4}}\b", re.IGNORECASE), "[DATE]"),
    (re.compile(r"\b\d{1,2}/\d{4}\b"), "[DATE]"),
    # Long bare digit runs (7+) are identifiers in practice.
    (re.compile(r"\b\d{7,}\b"), "[ID]"),
)


# Each family of rules runs only when its trigger is present: a title word, an identifier label,
# a month name, or a run of 5+ digit/separator characters. Most reports hold none ("3 mm" and
# "7-10 days" do not trigger), so one word-set pass replaces eight regex scans.
_WORDS = re.compile(r"[a-z]+")
_DIGIT_RUN = re.compile(r"\d[\d/.\-() ]{3,}\d")
_TITLE_WORDS = frozenset(("dr", "mr", "mrs", "ms", "miss", "prof"))
_ID_WORDS = frozenset(("mrn", "m", "record", "accession", "acc", "id", "case", "exam", "study"))
_MONTH_WORDS = frozenset(("jan", "january", "feb", "february", "mar", "march", "apr", "april", "may", "jun",
                          "june", "jul", "july", "aug", "august", "sep", "sept", "september", "oct", "october",
                          "nov", "november", "dec", "december"))
_SPACES = re.compile(r"[ \t]{2,}")


_LABEL_WORDS = frozenset(("patient", "pt", "name", "child", "son", "daughter", "mother", "father",
                          "parent", "guardian", "grandmother", "grandfather", "brother", "sister",
                          "referred", "referring", "ordered", "requested", "dictated", "signed",
                          "read", "reported", "reviewed", "transcribed", "attending", "resident",
                          "radiologist", "technologist", "cc", "contact", "discussed", "w", "spoke",
                          "accompanied", "seen", "pcp", "physician", "provider"))
_AGE_HINT = re.compile(r"\d(?:\.\d)?[ \t-]*(?:y\b|yo\b|y/o|yrs?\b|years?\b|-year|mo\b|months?\b)")
_BEFORE_AGE = re.compile(rf"({_NAME}(?:[ \t]+{_NAME}){{1,2}}),?[ \t]*\(?(?:an?[ \t]+)?[\d.]*$")


def _label_then_capital(text: str, labels: set[str]) -> bool:
    """Cheap precheck of the label rule: some label word is followed (after spaces, ':' or '-')
    by a capital letter. Most reports mention "patient" or "child" without a name after it."""
    low = text.lower()
    for w in labels:
        i = low.find(w)
        while i >= 0:
            j = i + len(w)
            for _ in range(2):  # "referred by", "patient name:", "spoke to"
                while j < len(text) and text[j] in " \t:-":
                    j += 1
                if j < len(text) and "A" <= text[j] <= "Z":
                    return True
                for joiner in ("by", "with", "to", "name"):
                    if low.startswith(joiner, j):
                        j += len(joiner)
                        break
                else:
                    break
            i = low.find(w, i + 1)
    return False


def _names_before_ages(text: str) -> str:
    """'John Smith, 9 y/o', 'Xxx Yyy (8 years)', 'Xxx Yyy, a 10-year-old': looks back from each
    age (few per report) instead of scanning the whole text for name pairs."""
    out, last = [], 0
    for m in _AGE_HINT.finditer(text):
        start = max(last, m.start() - 80)
        window = text[start:m.start() + 1]
        nm = _BEFORE_AGE.search(window)
        if nm and _names_in(nm.group(1)):
            a = start + nm.start(1)
            out.append(text[last:a] + "[NAME]")
            last = start + nm.end(1)
    return "".join(out) + text[last:] if out else text


def deidentify(text: str) -> str:
    """Returns `text` with names, identifiers, dates, phones, addresses and e-mails replaced."""
    words = set(_WORDS.findall(text.lower()))
    if "@" in text:
        text = _RULES[0][0].sub(_RULES[0][1], text)
    if not _TITLE_WORDS.isdisjoint(words):
        text = _RULES[1][0].sub(_RULES[1][1], text)
    has_digits = any(c.isdigit() for c in text)
    if has_digits and not _ID_WORDS.isdisjoint(words):
        text = _RULES[2][0].sub(_RULES[2][1], text)
    if has_digits and not _STREET_WORDS.isdisjoint(words):
        for pattern, repl in _ADDRESS_RULES:
            text = pattern.sub(repl, text)
    elif has_digits and re.search(r"\d{5}", text):
        text = _ADDRESS_RULES[2][0].sub(_ADDRESS_RULES[2][1], text)
    if has_digits and (_DIGIT_RUN.search(text) or not _MONTH_WORDS.isdisjoint(words)):
        for pattern, repl in _RULES[3:]:
            text = pattern.sub(repl, text)
    labels = _LABEL_WORDS.intersection(words)
    if labels and _label_then_capital(text, labels):
        text = _NAME_RULES[0][0].sub(_NAME_RULES[0][1], text)
    if not _GIVEN.isdisjoint(words):
        for pattern, repl in _NAME_RULES[1:3]:
            text = pattern.sub(repl, text)
    if "," in text:
        text = _NAME_RULES[3][0].sub(_NAME_RULES[3][1], text)
    if has_digits:
        text = _names_before_ages(text)
    return _SPACES.sub(" ", text)
