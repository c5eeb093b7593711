"""reports.anatomy: bones named in free text (the miner's vocabulary, query shorthand, typos);
words that name no bone, or only a shaft or a carpal bone, give none."""

import pytest

from wristmir_jax.reports.anatomy import bones_in_text, locations_in_text

R, U, S = "distal_radius", "distal_ulna", "ulnar_styloid"


@pytest.mark.parametrize("text,bones", [
    ("ulnar styloid avulsion", (S,)),
    ("buckle fracture of the distal radial metaphysis", (R,)),
    ("DRUJ widening", (R, U)),
    ("distal radioulnar joint", (R, U)),
    ("dist. rad fx", (R,)),
    ("DR buckle", (R,)),
    ("US avulsion", (S,)),
    ("fracure of the raduis", (R,)),
    ("ulner stiloid fracture", (S,)),
    ("styloid process of the ulna", (S,)),
    ("greenstick fractures of the distal radius and ulna", (R, U)),
    ("radial styloid", (R,)),
    ("scaphoid fracture", ()),
    ("radial shaft fracture", ()),
    ("radial side soft tissue swelling", ()),
    ("normal wrist", ()),
    ("", ()),
    ("shows us nothing", ()),
])
def test_bones_in_text(text, bones):
    assert bones_in_text(text) == bones


def test_locations_keep_non_bone_sites():
    locs = locations_in_text("scaphoid and distal radius fractures")
    assert "other" in locs and R in locs
