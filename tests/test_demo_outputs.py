"""What the demo hands a user, on a demo-shaped folder (conftest.tiny_demo_folder: a tiny built
dataset, an untrained tiny checkpoint, train and test indexes written by `wristmir embed`):
report.md written from a real evaluation, and notebooks/quickstart.ipynb run top to bottom
(nbclient) with the tiny config for its few training steps. Both tests share one xdist group so
the folder is built once (`make test` runs with --dist loadgroup)."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("tiny_demo_folder")]

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tiny_demo_folder, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WRISTMIR_DEMO_OUT", str(tiny_demo_folder))
    monkeypatch.setenv("WRISTMIR_NB_CONFIG", str(ROOT / "configs" / "tiny.py"))
    monkeypatch.setenv("WRISTMIR_NB_STEPS", "3")
    nb = nbformat.read(str(ROOT / "notebooks" / "quickstart.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    # the search printed ranked results, the metric cell one line per bone, training 3 steps
    assert "#1 " in text
    for region in ("distal_radius", "distal_ulna", "ulnar_styloid"):
        assert f"{region} " in text and "two_stage F1" in text
    steps = [line for line in text.splitlines() if line.startswith("step ") and "global_hinge" in line]
    assert len(steps) == 3, text
    assert "status: completed" in text, text
    # the panel was displayed as a PNG
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


def test_report_from_a_real_evaluation(tiny_demo_folder, tmp_path):
    from wristmir_jax.eval.demo_report import pick_panel_queries, write_report
    from wristmir_jax.eval.evaluate import evaluate_index, write_outputs
    from wristmir_jax.eval.grounding import evaluate_grounding
    from wristmir_jax.retrieval.store import load_index
    from wristmir_jax.schema import REGION_DISPLAY, REGIONS, fracture_labels

    out = str(tmp_path / "demo")
    shutil.copytree(tiny_demo_folder, out)
    res = evaluate_index(os.path.join(out, "index_test"), os.path.join(out, "index_train"),
                         out_dir=os.path.join(out, "eval"), ks=(1, 5, 10))
    res["grounding"] = evaluate_grounding(os.path.join(out, "index_test"),
                                          os.path.join(out, "in", "boxes.jsonl"),
                                          out_dir=os.path.join(out, "eval"), overlays=2)
    write_outputs(res, os.path.join(out, "eval", "metrics.json"))
    path = write_report(out, quick=True, stage_seconds={"train": 12.0})
    text = open(path).read()
    knn = res["diagnosis_knn"]
    head = json.load(open(os.path.join(out, "headline.json")))
    assert head["knn_mean_f1_gain"] == pytest.approx(knn["two_stage"]["mean_f1"] - knn["global"]["mean_f1"])
    assert f"**{knn['two_stage']['mean_f1']:.3f}**" in text and f"**{knn['global']['mean_f1']:.3f}**" in text
    # the judged figures carry a fourth decimal, so 0.8999 never reads as a met 0.900
    assert f"mean F1: **{head['knn_mean_f1_gain']:.4f}**" in text
    # one panel per bone that has a definite fracture among the test items
    test = load_index(os.path.join(out, "index_test"))
    labels = fracture_labels(np.asarray(test.arrays.records), uncertain_as_positive=False)
    expected = [r for i, r in enumerate(REGIONS) if labels[:, i].any()]
    assert expected, "the tiny folder should hold at least one fracture"
    chosen = pick_panel_queries(np.asarray(test.arrays.records), test.arrays.ids)
    assert sorted(chosen) == sorted(expected)
    for r, pos in chosen.items():
        assert labels[pos, REGIONS.index(r)]
        assert os.path.getsize(os.path.join(out, "panels", f"{r}.png")) > 1000
        assert f"panels/{r}.png" in text
    # phrase grounding: every test item with its three (localizer-file) boxes, overlays linked
    g = res["grounding"]
    assert all(v["n"] == test.count for v in g["per_bone"].values())
    assert "Phrase grounding" in text and f"| {g['mean_pointing_game']:.3f}" in text.replace("**", "")
    for p in g["overlays"]:
        assert f"eval/{p}" in text and os.path.getsize(os.path.join(out, "eval", p)) > 1000
    # explanations: the per-field accuracy table from evaluate, and under each panel the paragraph
    # retrieval/explain.py writes for that query's two-stage neighbours
    acc = res["explanation_accuracy"]
    assert "## Explanations from retrieved cases" in text
    for r in REGIONS:
        row = acc[r]["vs_mined"]
        assert f"| {REGION_DISPLAY[r]} | {row['fracture']:.3f} | {row['pattern']:.3f} |" in text
    from wristmir_jax.eval.demo_report import EXPLAIN_K
    from wristmir_jax.retrieval.explain import explain_neighbours, paragraph
    from wristmir_jax.retrieval.query import QueryEmbeddings, Retriever
    from wristmir_jax.retrieval.rerank import settings

    train = load_index(os.path.join(out, "index_train"))
    retr = Retriever(train, settings(None))
    ta = test.arrays
    for r, pos in chosen.items():
        q = QueryEmbeddings(ta.global_img[[pos]], ta.region_img[[pos]], ta.crop_mask[[pos]], None)
        s, i = retr.image_to_image(q, region=r, k=EXPLAIN_K, method="two_stage")
        keep = i[0] >= 0
        expl = explain_neighbours(np.asarray(train.arrays.records)[i[0][keep]],
                                  train.arrays.ids[i[0][keep]].tolist(), s[0][keep].tolist(), r)
        assert f"*{paragraph(expl)}*" in text
