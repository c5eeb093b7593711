"""Rule-based de-identification of report text, applied before anything derived from a report is
stored or mined: personal names after titles, MRN / accession / record numbers, dates, phone
numbers, e-mail addresses. Each is replaced by a bracketed tag ([NAME], [ID], [DATE], [PHONE],
[EMAIL]) so the clinical text around it keeps its structure.

The scrubber is deliberately conservative (it may remove a few harmless numbers); clinical
measurements with units ("3 mm", "15 degrees") and Salter-Harris grades are left alone.
"""

from __future__ import annotations

import re

_MONTHS = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|jun(?:e)?|jul(?:y)?|"
           r"aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")

# A name token: "Smith", "McDonald", "O'Neil", an initial "J.", or an all-caps surname that is not
# a report section heading.
_NAME = (r"(?:[A-Z](?:[a-z'\-]+(?:[A-Z][a-z'\-]+)?|\.)|"
         r"(?!(?:FINDINGS|IMPRESSION|HISTORY|INDICATION|COMPARISON|TECHNIQUE|CLINICAL|EXAM)\b)[A-Z][A-Z'\-]+\b)")

# Order matters: identifiers and e-mails before phones and dates (an MRN can look like a date).
_RULES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), "[EMAIL]"),
    # Titles followed by one to three capitalised name tokens (initials allowed).
    (re.compile(rf"\b(Dr|Mr|Mrs|Ms|Miss|Prof|DR\.|MR\.|MRS\.|MS\.|PROF\.)\.?[ \t]+{_NAME}(?:[ \t]+{_NAME}){{0,2}}"),
     lambda m: m.group(1).rstrip(".") + ". [NAME]"),
    # Labelled identifiers: MRN, accession, record, patient id, case number and the like.
    (re.compile(r"\b(?=[MmAaPpCcRrSsEeIi])(MRN|M\.R\.N\.|medical record(?: number| no\.?| #)?|accession(?: number| no\.?| #)?|"
                r"acc(?:\.|ession)?\s*#?|patient id|pt id|case(?: number| no\.?| #)|record(?: number| no\.?| #)|"
                r"study id|exam(?: number| no\.?| #)|id)\s*[:#]?\s*[A-Z]{0,3}[-\s]?\d[\d\-]{3,}",
                re.IGNORECASE), r"\1: [ID]"),
    (re.compile(r"(?<![\w+(])(?=[\d(+])(?:\+?\d{1,2}[\s.-]?)?\(?\b\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}\b"), "[PHONE]"),
    (re.compile(r"\b\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}\b"), "[DATE]"),
    (re.compile(rf"\b(?=[jfmasond])(?i:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}\b", re.IGNORECASE), "[DATE]"),
    (re.compile(rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{2,4}}\b", re.IGNORECASE), "[DATE]"),
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


def deidentify(text: str) -> str:
    """Returns `text` with names after titles, identifiers, dates, phones and e-mails replaced."""
    words = set(_WORDS.findall(text.lower()))
    if "@" in text:
        text = _RULES[0][0].sub(_RULES[0][1], text)
    if not _TITLE_WORDS.isdisjoint(words):
        text = _RULES[1][0].sub(_RULES[1][1], text)
    has_digits = any(c.isdigit() for c in text)
    if has_digits and not _ID_WORDS.isdisjoint(words):
        text = _RULES[2][0].sub(_RULES[2][1], text)
    if has_digits and (_DIGIT_RUN.search(text) or not _MONTH_WORDS.isdisjoint(words)):
        for pattern, repl in _RULES[3:]:
            text = pattern.sub(repl, text)
    return _SPACES.sub(" ", text)
