"""Miner accuracy against gold findings: fracture-status macro-F1 and per-field accuracy.

`field_accuracy(mined, gold)` compares rows ({"id", "regions", "global"}) matched by id. Fracture
status F1 is computed per status class (absent, present, uncertain) pooled over the three regions,
and macro-averaged over the classes that occur in gold or mined; every region field and global
field gets its own accuracy, and `min_field_accuracy` is the worst of them.

`evaluate_corpus(path)` mines a gold corpus (JSON lines {"id", "report", "regions", "global"}, e.g.
the hand-written tests/data/report_corpus.jsonl) with the rule miner and scores it the same way;
`field_accuracy_mean` is the mean over fields (the worst field is reported as well).
"""

from __future__ import annotations

from typing import Any, Iterable

from wristmir_jax.errors import UserError
from wristmir_jax.schema import FRACTURE_STATUS, GLOBAL_KEYS, REGION_KEYS, REGIONS, SchemaError, validate_findings


def _by_id(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in rows}


def field_accuracy(mined: Iterable[dict[str, Any]], gold: Iterable[dict[str, Any]],
                   ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Scores mined rows against gold rows on the ids both have (or on `ids`)."""
    m, g = _by_id(mined), _by_id(gold)
    common = sorted(set(m) & set(g)) if ids is None else [i for i in ids if i in m and i in g]
    if not common:
        raise ValueError("no ids in common between mined and gold rows")
    correct: dict[str, int] = {}
    pairs = []
    for i in common:
        for region in REGIONS:
            a, b = m[i]["regions"][region], g[i]["regions"][region]
            pairs.append((b["fracture"], a["fracture"]))
            for k in REGION_KEYS:
                key = f"{region}.{k}"
                correct[key] = correct.get(key, 0) + int(a[k] == b[k])
        for k in GLOBAL_KEYS:
            key = f"global.{k}"
            correct[key] = correct.get(key, 0) + int(m[i]["global"][k] == g[i]["global"][k])
    n = len(common)
    acc = {k: v / n for k, v in sorted(correct.items())}
    f1 = {}
    for c in FRACTURE_STATUS:
        tp = sum(1 for t, p in pairs if t == c and p == c)
        fp = sum(1 for t, p in pairs if t != c and p == c)
        fn = sum(1 for t, p in pairs if t == c and p != c)
        if tp + fp + fn == 0:
            continue
        f1[c] = 2 * tp / (2 * tp + fp + fn)
    exact = sum(1 for i in common
                if all(m[i]["regions"][r] == g[i]["regions"][r] for r in REGIONS)
                and all(m[i]["global"][k] == g[i]["global"][k] for k in GLOBAL_KEYS))
    worst = min(acc, key=acc.get)
    return {"n": n, "field_accuracy_mean": sum(acc.values()) / len(acc), "fracture_macro_f1": sum(f1.values()) / len(f1), "fracture_f1": f1,
            "field_accuracy": acc, "min_field_accuracy": acc[worst], "worst_field": worst,
            "exact_match": exact / n}


def evaluate_files(mined_path: str, gold_path: str, manifest_path: str | None = None,
                   split: str | None = None) -> dict[str, Any]:
    """`field_accuracy` on files; with a manifest and a split, only that split's ids count."""
    from wristmir_jax.utils.jsonl import read_jsonl_strict

    ids = None
    if manifest_path is not None and split is not None:
        ids = [str(r["id"]) for r in read_jsonl_strict(manifest_path) if r.get("split") == split]
    return field_accuracy(read_jsonl_strict(mined_path), read_jsonl_strict(gold_path), ids)


def evaluate_corpus(corpus_path: str) -> dict[str, Any]:
    """Rule-mines every report of a gold corpus and scores it (`field_accuracy` plus the ids that
    disagree on any field, never report text)."""
    from wristmir_jax.reports.mining import mine_text_rules
    from wristmir_jax.utils.jsonl import read_jsonl_strict

    gold = read_jsonl_strict(corpus_path)
    mined = []
    for lineno, row in enumerate(gold, start=1):
        missing = [k for k in ("id", "report", "regions", "global") if not isinstance(row, dict) or k not in row]
        if missing:
            raise UserError(f"corpus row lacks {', '.join(missing)}", path=corpus_path, line=lineno)
        try:
            validate_findings(row["regions"], row["global"])
        except SchemaError as e:
            raise UserError(f"gold findings: {e}", path=corpus_path, line=lineno) from None
        regions, g = mine_text_rules(row["report"])
        mined.append({"id": str(row["id"]), "regions": regions, "global": g})
    res = field_accuracy(mined, gold)
    by_id = {str(r["id"]): r for r in gold}
    res["disagreements"] = {
        m["id"]: sorted([f"{r}.{k}" for r in REGIONS for k in REGION_KEYS
                         if m["regions"][r][k] != by_id[m["id"]]["regions"][r][k]]
                        + [f"global.{k}" for k in GLOBAL_KEYS if m["global"][k] != by_id[m["id"]]["global"][k]])
        for m in mined}
    res["disagreements"] = {k: v for k, v in res["disagreements"].items() if v}
    return res


def main(argv: list[str] | None = None) -> None:
    """`python -m wristmir_jax.reports.evaluate --mined M --gold G [--manifest MAN --split test]`
    or `... --corpus tests/data/report_corpus.jsonl` (mines the corpus with the rule miner)."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m wristmir_jax.reports.evaluate", description=__doc__)
    p.add_argument("--mined", default=None)
    p.add_argument("--gold", default=None)
    p.add_argument("--corpus", default=None, help="gold corpus with report text: mine it and score")
    p.add_argument("--manifest", default=None, help="needed with --split")
    p.add_argument("--split", default=None, choices=("train", "val", "test"))
    a = p.parse_args(argv)
    if a.split and not a.manifest:
        p.error("--split needs --manifest")
    if a.corpus:
        print(json.dumps(evaluate_corpus(a.corpus), indent=1, sort_keys=True))
        return
    if not (a.mined and a.gold):
        p.error("give --mined and --gold, or --corpus")
    print(json.dumps(evaluate_files(a.mined, a.gold, a.manifest, a.split), indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
