"""`wristmir explain --index I (--image P | --id ID) --region R [-k 10] [--json] [--llm DIR]`:
a preliminary finding per schema field for one bone from the top-k retrieved prior cases
(similarity-weighted vote, agreement, the cases behind each statement) and a short paragraph;
`--llm DIR` has a local causal LM phrase it from those facts only (checked back; the templated
text when it claims anything the facts do not support). See retrieval/explain.py."""

from __future__ import annotations

import argparse
import json

from wristmir_jax.schema import REGIONS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="INDEX_DIR written by `wristmir embed`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="query radiograph (PNG, JPEG or DICOM)")
    q.add_argument("--id", help="an item of the index as the query")
    p.add_argument("--region", required=True, choices=REGIONS, help="the bone to explain")
    p.add_argument("-k", type=int, default=10, help="retrieved cases that vote (default 10)")
    p.add_argument("--method", choices=("two_stage", "global", "region", "exhaustive"), default="two_stage")
    p.add_argument("--llm", default=None, metavar="DIR", help="local causal LM folder to phrase the paragraph")
    p.add_argument("--max-new-tokens", type=int, default=120, help="LLM output length (default 120)")
    p.add_argument("--laterality", choices=("left", "right"), default=None, help="side of the query image")
    p.add_argument("--localizer", default=None, help="localizer workdir for the query image's bone boxes")
    p.add_argument("--workdir", default=None, help="model workdir (default: the one recorded in the index)")
    p.add_argument("--data", default=None, help="DATA_DIR (default: the one recorded in the index)")
    p.add_argument("--include-same-patient", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from wristmir_jax.cli.search import explain_result, search

    for name, default in (("text", None), ("where", None), ("report", False), ("box", None),
                          ("panel", None), ("explain", True), ("box_classifier", None)):
        setattr(args, name, default)
    phraser = None
    if args.llm:
        from wristmir_jax.retrieval.explain import LLMPhraser

        phraser = LLMPhraser(args.llm, max_new_tokens=args.max_new_tokens)  # bad folder: exit 2 before the search
    res = search(args)
    res.pop("_qinfo", None)
    expl = explain_result(res, args, phraser)
    if args.json:
        print(json.dumps({"query": res["query"], **expl}, indent=2))
    else:
        print(expl["paragraph"])
    return 0
