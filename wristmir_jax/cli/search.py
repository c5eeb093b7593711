"""`wristmir search --index INDEX_DIR (--image PATH | --text "..." | --id ID) [--region R] [-k 10]
[--json] [--panel out.png]`: the most similar prior cases. An image or an indexed id searches
image->image (two-stage by default: global + bone top-K, reranked for the chosen bone);
`--report` searches image->report instead; a text searches text->image (with --region: a region
caption against that bone's crops). Without --region the bones come from words
(reports.anatomy): those a --text names ("DRUJ", "ulnar styloid", typos) or those `--where "..."`
names for an image query; a text naming none is global. Rerank settings: the `retrieval` section
of the index's training config, `--config FILE`, and `--config.retrieval.alpha=...` overrides.
Same-patient results are excluded unless --include-same-patient.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from wristmir_jax.errors import UserError
from wristmir_jax.schema import REGIONS
from wristmir_jax.utils.log import get_logger

log = get_logger("wristmir.search")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="INDEX_DIR written by `wristmir embed`")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="query radiograph (PNG, JPEG or DICOM)")
    q.add_argument("--text", help="free text or a region caption, e.g. 'distal radius: buckle fracture'")
    q.add_argument("--id", help="an item of the index as the query")
    p.add_argument("--region", default=None,
                   help=f"bone(s) of interest: {', '.join(REGIONS)}, comma-separated, or all")
    p.add_argument("--where", default=None, metavar="TEXT",
                   help="with --image/--id: the bone(s) in words, e.g. 'ulnar styloid' or 'DRUJ' (--region overrides)")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--method", choices=("two_stage", "global", "region", "exhaustive"), default="two_stage")
    p.add_argument("--report", action="store_true", help="image->report: rank the database's reports")
    p.add_argument("--box", default=None, metavar="X0,Y0,X1,Y1",
                   help="with --image: a box (original pixels); its bone is --region's, else the box classifier's")
    p.add_argument("--box-classifier", default=None, metavar="DIR",
                   help="box classifier folder (default: WORKDIR/box_classifier of the index's model)")
    p.add_argument("--laterality", choices=("left", "right"), default=None, help="side of the query image")
    p.add_argument("--localizer", default=None, help="localizer workdir for the query image's bone boxes")
    p.add_argument("--workdir", default=None, help="model workdir (default: the one recorded in the index)")
    p.add_argument("--data", default=None, help="DATA_DIR (default: the one recorded in the index)")
    p.add_argument("--include-same-patient", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--config", default=None,
                   help="config file for the retrieval settings (default: the training config of "
                        "the index's workdir); --config.retrieval.alpha=... overrides either")
    p.add_argument("--explain", action="store_true",
                   help="add a preliminary finding for the bone from the results (one bone: --region/--where/--box)")
    p.add_argument("--panel", default=None, help="write a PNG panel of the query and results")


def _parse_box(text: str) -> list[float]:
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"--box {text!r}: expected four numbers X0,Y0,X1,Y1") from None
    if len(box) != 4:
        raise UserError(f"--box {text!r}: expected four numbers X0,Y0,X1,Y1")
    return box


def _bones_from_words(text: str, option: str) -> tuple[str, ...]:
    from wristmir_jax.reports.anatomy import bones_in_text

    if not text.strip():
        raise UserError(f"{option} is empty: name a bone (e.g. 'distal radius', 'ulnar styloid', 'DRUJ')")
    bones = bones_in_text(text)
    if not bones:
        raise UserError(f"{option} {text!r} names none of the bones {', '.join(REGIONS)}")
    return bones


def _classify_box(qm, index, args, box) -> tuple[str | None, dict]:
    """(bone or None for "other", {"class", "probabilities"}) from the box classifier."""
    import os

    from wristmir_jax.retrieval.box_classifier import classify_box_file
    from wristmir_jax.train.checkpoint import params_sha256

    folder = args.box_classifier
    if folder is None:
        workdir = args.workdir or index.fingerprint["model"].get("workdir")
        folder = os.path.join(workdir, "box_classifier") if workdir else None
    if folder is None or not os.path.isdir(folder):
        raise UserError("--box without --region needs a box classifier (`wristmir box-classifier`) "
                        "or --region naming the bone", path=folder)
    cls, probs = classify_box_file(qm.model, qm.params, params_sha256(qm.params), args.image, box,
                                   args.laterality, folder)
    return (None if cls == "other" else cls), {"class": cls, "probabilities": probs}


def search(args: argparse.Namespace) -> dict:
    """Runs the query; returns the JSON-able result (also used by tests and the demo)."""
    from wristmir_jax.eval.panels import findings_text
    from wristmir_jax.retrieval.query import Retriever
    from wristmir_jax.retrieval.rerank import parse_condition, run_config, settings
    from wristmir_jax.retrieval.store import load_index

    if args.k <= 0:
        raise UserError(f"-k must be a positive integer, got {args.k}")
    anatomy_from = "region" if args.region is not None else None
    if args.where is not None:
        if args.text is not None:
            raise UserError("--where goes with --image or --id (a --text names its own anatomy)")
        bones = _bones_from_words(args.where, "--where")
        if args.region is None:
            args.region, anatomy_from = ",".join(bones), "where"
    names = parse_condition(args.region)  # validates region names before any heavy work
    single = names[0] if len(names) == 1 else None
    index = load_index(args.index)
    cfg = run_config(index.fingerprint, getattr(args, "config", None),
                     getattr(args, "config_overrides", ()))
    retr = Retriever(index, settings(cfg))
    k = min(args.k, index.count)
    qinfo: dict = {}
    query_region = single
    if args.id is not None:
        from wristmir_jax.retrieval.encode import QueryModel

        pos = index.position(args.id)
        # The answer needs only stored embeddings, but an index whose model is not the one in
        # its workdir (retrained, damaged) must not answer either: the same check as image
        # queries. An index shipped without its workdir can only be checked for its content.
        wd = args.workdir or index.fingerprint["model"].get("workdir")
        if args.workdir or (wd and os.path.isdir(wd)):
            QueryModel(index, workdir=args.workdir, data_dir=args.data)
        else:
            log.warning("model not checked: the index's workdir is not available (pass --workdir)")
        q = retr.from_index_items([pos])
        if args.include_same_patient:
            q.groups = None
        qinfo = {"kind": "id", "id": args.id, "ref": str(index.arrays.images[pos]),
                 "boxes": index.arrays.boxes[pos].tolist(),
                 "findings": findings_text(index.arrays.records[pos], query_region)}
    else:
        from wristmir_jax.retrieval.encode import QueryModel

        qm = QueryModel(index, workdir=args.workdir, data_dir=args.data)
        if args.text is not None:
            if args.report or args.box:
                raise UserError("--report and --box need an image query")
            if len(names) > 1 and args.region not in (None, "all"):
                raise UserError("a text query can name one region at most")
            if args.region is None:
                from wristmir_jax.reports.anatomy import bones_in_text

                bones = bones_in_text(args.text)
                if bones:
                    g = qm.encode_text(args.text)
                    reg = np.zeros((1, len(REGIONS), g.shape[-1]), np.float32)
                    for b in bones:
                        reg[0, REGIONS.index(b)] = qm.encode_text(args.text, b)
                    method = "global" if args.method == "global" else args.method
                    s, i = retr.text_to_image_conditioned(g, reg, bones, k=k, method=method)
                    args.region = ",".join(bones)
                    qinfo = {"kind": "text", "region": args.region, "anatomy_from": "text"}
                    return _result(index, qinfo, s[0], i[0], bones[0] if len(bones) == 1 else None, args)
            t = qm.encode_text(args.text, single)
            s, i = retr.text_to_image(t, region=single, k=k)
            qinfo = {"kind": "text", "region": single, "anatomy_from": "region" if single else None}
            return _result(index, qinfo, s[0], i[0], query_region, args, qm=qm)
        box = _parse_box(args.box) if args.box else None
        qinfo_box = None
        if box is not None and single is None:
            if args.region is not None:
                raise UserError("--box outlines one bone: --region must name one (or leave it out)")
            single, qinfo_box = _classify_box(qm, index, args, box)
            if single is None:
                print(f"wristmir search: warning: the box looks like none of the bones "
                      f"(p(other) = {qinfo_box['probabilities']['other']:.2f}); searching the whole image",
                      file=sys.stderr)
                box = None
            else:
                args.region, query_region, anatomy_from = single, single, "box"
        q, info = qm.encode_image_file(args.image, laterality=args.laterality, localizer=args.localizer,
                                       box=box, box_region=single)
        qinfo = {"kind": "image", "path": args.image, "crop_source": info["crop_source"],
                 "prepared": info["prepared"], "boxes": info["boxes"]}
        if qinfo_box is not None:
            qinfo["box_class"] = qinfo_box
    qinfo["anatomy_from"] = anatomy_from
    if args.report:
        s, i = retr.image_to_report(q, k=k)
    else:
        s, i = retr.image_to_image(q, region=args.region, k=k, method=args.method,
                                   exclude_same_patient=not args.include_same_patient)
    return _result(index, qinfo, s[0], i[0], query_region, args)


def _result(index, qinfo, scores, idx, region, args, qm=None) -> dict:
    from wristmir_jax.eval.panels import findings_text

    a = index.arrays
    rows = []
    for rank, (s, j) in enumerate(zip(scores.tolist(), idx.tolist()), start=1):
        if j < 0:
            continue
        rows.append({"rank": rank, "id": str(a.ids[j]), "score": round(float(s), 6),
                     "findings": findings_text(a.records[j], region),
                     "fracture": {r: int(v) for r, v in zip(REGIONS, _labels(a.records[j]))},
                     "ref": str(a.images[j]),
                     "boxes": np.round(np.where(np.isfinite(a.boxes[j]), a.boxes[j], -1), 1).tolist()})
    query = {k: v for k, v in qinfo.items() if k not in ("prepared", "boxes", "ref")}
    if getattr(args, "where", None) is not None:
        query["where"] = args.where
    if args.text is not None:
        query["text"] = args.text
    return {"query": query, "region": args.region or "all", "method": "report" if args.report else
            ("text" if args.text is not None else args.method), "k": args.k, "results": rows,
            "_qinfo": qinfo}


def _labels(record):
    from wristmir_jax.schema import fracture_labels

    return fracture_labels(np.asarray(record))


def _print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    q = res["query"]
    title = {"id": f"query id {q.get('id')}", "image": f"query image {q.get('path')}",
             "text": "text query"}[q["kind"]]
    t = Table(title=f"{title} | region {res['region']} | {res['method']}")
    t.add_column("rank", justify="right")
    t.add_column("id")
    t.add_column("score", justify="right")
    for r in REGIONS:
        t.add_column(r.replace("_", " "), justify="center")
    t.add_column("findings")
    for row in res["results"]:
        t.add_row(str(row["rank"]), row["id"], f"{row['score']:.4f}",
                  *("fx" if row["fracture"][r] else "-" for r in REGIONS), row["findings"])
    Console(file=sys.stdout, width=160).print(t)


def _panel(res: dict, index, path: str, data_dir: str | None) -> None:
    from wristmir_jax.eval.panels import ImageStore, draw_panel

    store = ImageStore(data_dir or index.fingerprint.get("data_dir"))
    qi = res["_qinfo"]
    region = res["region"] if res["region"] in REGIONS else None
    if qi["kind"] == "text":
        query = {"title": "query (text)", "image": None, "placeholder": qi.get("text") or "", "text": ""}
        query["placeholder"] = "\n".join(__import__("textwrap").wrap(res["query"].get("text", ""), 24))
    else:
        img = qi.get("prepared") if qi["kind"] == "image" else store.get(qi["ref"])
        query = {"title": "query" + (f" {qi.get('id')}" if qi.get("id") else ""), "image": img,
                 "boxes": qi.get("boxes"), "text": qi.get("findings", "")}
    tiles = [{"title": f"#{r['rank']} {r['id']} ({r['score']:.3f})", "image": store.get(r["ref"]),
              "boxes": [None if b[0] < 0 else b for b in r["boxes"]], "text": r["findings"]}
             for r in res["results"]]
    draw_panel(path, query, tiles, region=region)


def explain_result(res: dict, args: argparse.Namespace, phraser=None) -> dict:
    """The explanation (retrieval/explain.py) of a search result for its one bone."""
    from wristmir_jax.retrieval.explain import explain_neighbours, paragraph
    from wristmir_jax.retrieval.store import load_index

    region = res["region"]
    if region not in REGIONS:
        raise UserError("--explain needs one bone (--region, --where or a classified --box)")
    index = load_index(args.index)
    rows = res["results"]
    pos = [index.position(r["id"]) for r in rows]
    recs = index.arrays.records[pos] if pos else np.zeros((0, index.arrays.records.shape[1]), np.int32)
    expl = explain_neighbours(recs, [r["id"] for r in rows], [r["score"] for r in rows], region)
    text = phraser.phrase(expl) if phraser is not None else paragraph(expl)
    out = {"explanation": expl.to_json(), "paragraph": text}
    if phraser is not None:
        out["paragraph_source"] = phraser.last
    return out


def run(args: argparse.Namespace) -> int:
    if args.explain and (args.report or args.text is not None):
        raise UserError("--explain goes with an image or id query (image->image)")
    res = search(args)
    if args.panel:
        from wristmir_jax.retrieval.store import load_index

        _panel(res, load_index(args.index), args.panel, args.data)
    res.pop("_qinfo", None)
    if args.explain:
        res.update(explain_result(res, args))
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        _print_table(res)
        if args.explain:
            print(res["paragraph"])
        if args.panel:
            print(f"wrote {args.panel}")
    return 0
