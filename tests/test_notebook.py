"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on a demo-shaped folder: a tiny built
dataset, an untrained tiny checkpoint, train and test indexes written by `wristmir embed`, and the
tiny config for the few training steps with the notebook's own loss."""

import pathlib

import pytest

pytestmark = pytest.mark.slow

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
