"""Anatomy named in free text: which of the schema's bones (distal radius, distal ulna, ulnar
styloid) a query such as "buckle of the dist. radial metaphysis" or "DRUJ widening" is about.

The words are read with the rule miner's own vocabulary (reports.rules): its normalisation
(abbreviations such as "dist." and "drf", one-edit typo correction of key terms) and its
location lexicon ("ulnar styloid", "radial", "styloid process of the ulna", shaft and carpal
locations that are *not* one of the three bones). On top of it, query-specific shorthand the
miner does not need ("DRUJ", "rad", "uln", upper-case "DR", "DU", "US") and a fuzzier typo pass (difflib, ratio >= 0.8)
over the anatomy words only, since a query is a few words with no context to recover from.

`bones_in_text(text) -> tuple[str, ...]`: the bones named, in schema.REGIONS order; () when none
(then a search is global). A shaft, carpal or other bone named alone also gives ().
"""

from __future__ import annotations

import difflib
import re

from wristmir_jax.reports import rules
from wristmir_jax.schema import REGIONS

# Shorthand seen in queries (not in reports, so the miner does not expand it). Applied to the
# lower-cased text before the miner's normalisation; DRUJ (distal radioulnar joint) names both
# the distal radius and the distal ulna.
_QUERY_SHORTHAND: tuple[tuple[str, str], ...] = (
    (r"\bdruj\b|\bdistal radio[\s-]?ulnar joint\b|\bradio[\s-]?ulnar joint\b", "distal radius and distal ulna"),
    (r"\bradio[\s-]?ulnar\b", "radius and ulna"),
    (r"\brad\.?(?=\s|$)", "radius"),
    (r"\buln\.?(?=\s|$)", "ulna"),
    (r"\bstyl\.?(?=\s|$)", "styloid"),
    (r"\bmetaph\.?(?=\s|$)", "metaphysis"),
)
_SHORTHAND = [(re.compile(p), r) for p, r in _QUERY_SHORTHAND]
# Upper-case initialisms, matched before lower-casing ("us" and "dr" are ordinary words).
_INITIALISMS = re.compile(r"\b(?:(?P<us>U\.?S\.?|UST)|(?P<dr>D\.?R\.?)|(?P<du>D\.?U\.?))(?=[\s,;:)]|$)")
_INITIALISM_WORDS = {"us": "ulnar styloid", "dr": "distal radius", "du": "distal ulna"}
# The anatomy words a typo is corrected towards (the miner's location words for the three bones).
ANATOMY_WORDS: tuple[str, ...] = ("radius", "radial", "ulna", "ulnar", "styloid", "metaphysis",
                                  "metaphyseal", "epiphysis", "physis", "distal", "radioulnar")
_WORD = re.compile(r"[a-z]+")


def _fuzzy_word(word: str) -> str:
    if len(word) < 4 or word in ANATOMY_WORDS:
        return word
    close = difflib.get_close_matches(word, ANATOMY_WORDS, n=1, cutoff=0.8)
    return close[0] if close else word


def normalize_query(text: str) -> str:
    """Lower case, query shorthand expanded, anatomy typos corrected, then the miner's normalisation."""
    t = _INITIALISMS.sub(lambda m: _INITIALISM_WORDS[m.lastgroup], text).lower()
    for rx, repl in _SHORTHAND:
        t = rx.sub(repl, t)
    t = _WORD.sub(lambda m: _fuzzy_word(m.group(0)), t)
    return rules.normalize(t)


def locations_in_text(text: str) -> list[str]:
    """Every location the miner's lexicon finds, in order: the three bones, "shaft", "other"."""
    out = []
    for sentence in re.split(r"[.;\n]+", normalize_query(text)):
        out += [tok.value for tok in rules.tokenize(sentence) if tok.kind == "LOC"]
    return out


def bones_in_text(text: str) -> tuple[str, ...]:
    """The schema bones named in text, in schema.REGIONS order; () when none is named."""
    named = set(locations_in_text(text))
    return tuple(r for r in REGIONS if r in named)
