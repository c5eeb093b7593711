"""`wristmir import-grazpedwri` on a small CSV in the public column layout with real-format AO
pediatric codes, tiny PNGs and YOLO label files."""

import json

import numpy as np
import pytest
from PIL import Image

from wristmir_jax.cli.main import main
from wristmir_jax.reports.captions import captions
from wristmir_jax.reports.grazpedwri import AOCodeError, findings_from_ao, parse_ao_code
from wristmir_jax.reports.rules import mine_report

HEADER = ("filestem,patient_id,study_number,timehash,gender,age,laterality,projection,initial_exam,"
          "ao_classification,cast,diagnosis_uncertain,osteopenia,fracture_visible,metal,pixel_spacing,"
          "device_manufacturer")
ROWS = [
    # stem, patient, study, age, side, projection, codes, cast, uncertain, visible, metal
    ("0001_a_01_WRI-L1_M014", "1", "1", "14.2", "L", "1", "23r-M/2.1", "", "", "1", ""),
    ("0001_a_01_WRI-L2_M014", "1", "1", "14.2", "L", "2", "23r-M/2.1", "", "", "1", ""),
    ("0002_b_01_WRI-R1_F009", "2", "1", "9.5", "R", "1", "23r-E/2.1; 23u-E/7", "1", "", "1", ""),
    ("0003_c_01_WRI-L1_M011", "3", "1", "11.0", "L", "1", "23-M/3.1", "", "", "1", "1"),
    ("0004_d_01_WRI-R1_F006", "4", "1", "6.1", "R", "1", "", "", "", "0", ""),
    ("0005_e_01_WRI-R1_M012", "5", "1", "12.0", "R", "3", "23u-M/2.1, 22r-D/4.1", "", "1", "1", ""),
    ("0006_f_01_WRI-L1_F010", "6", "1", "10.0", "L", "1", "23r-M/2.2", "", "", "0", ""),
    ("0007_g_01_WRI-L1_F010", "7", "1", "10.0", "L", "1", "23r-X/9", "", "", "1", ""),       # bad code
    ("0008_h_01_WRI-L1_F010", "8", "1", "10.0", "L", "1", "23r-M/2.1", "", "", "1", ""),     # no image
    ("0001_a_01_WRI-L1_M014", "1", "1", "14.2", "L", "1", "23r-M/2.1", "", "", "1", ""),     # duplicate
]


def _csv_line(r):
    stem, pid, study, age, side, proj, codes, cast, unc, vis, metal = r
    return ",".join([stem, pid, study, "123456", "M", age, side, proj, "1", f'"{codes}"', cast, unc, "",
                     vis, metal, "0.144", "Agfa"])


@pytest.fixture()
def dataset(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for r in ROWS:
        if r[0].startswith("0008"):
            continue
        # a gradient: the import decodes every image and rejects constant ones
        grad = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
        Image.fromarray(grad).save(images / f"{r[0]}.png")
    # fracture + soft tissue boxes, a periosteal reaction, and one malformed line
    (labels / "0001_a_01_WRI-L1_M014.txt").write_text("3 0.5 0.5 0.2 0.1\n7 0.25 0.75 0.1 0.2\nbad line\n")
    (labels / "0006_f_01_WRI-L1_F010.txt").write_text("5 0.5 0.4 0.5 0.5\n")
    csv_path = tmp_path / "dataset.csv"
    csv_path.write_text(HEADER + "\n" + "\n".join(_csv_line(r) for r in ROWS) + "\n")
    return tmp_path


def test_ao_codes_map_into_the_schema():
    p = parse_ao_code("23r-M/2.1")
    assert p["bones"] == ("distal_radius",) and p["pattern"] == "buckle"
    assert parse_ao_code("23r-M/2.2")["pattern"] == "greenstick"
    assert parse_ao_code("23-M/3.1")["bones"] == ("distal_radius", "distal_ulna")
    assert parse_ao_code("23-M/3.1")["pattern"] == "complete"
    sh = parse_ao_code("23r-E/2.1")
    assert (sh["pattern"], sh["salter_harris"]) == ("salter_harris", 2)
    assert parse_ao_code("23u-E/7")["bones"] == ("ulnar_styloid",)
    assert parse_ao_code("23u-E/7")["pattern"] == "avulsion"
    assert parse_ao_code("22r-D/4.1")["elsewhere"] and parse_ao_code("72-A2")["elsewhere"]
    for bad in ("23r-X/9", "banana", "23r-M"):
        with pytest.raises(AOCodeError):
            parse_ao_code(bad)
    regions, _, _ = findings_from_ao("23r-M/2.1 23u-E/7")  # space-separated codes
    assert regions["distal_radius"]["pattern"] == "buckle" and regions["ulnar_styloid"]["pattern"] == "avulsion"
    regions, g, _ = findings_from_ao("23u-M/2.1, 22r-D/4.1", laterality="right", uncertain=True)
    assert regions["distal_ulna"]["fracture"] == "uncertain" and regions["distal_radius"]["fracture"] == "absent"
    assert g["other_fracture"] and g["laterality"] == "right"


def test_import_writes_manifest_mined_boxes_and_rejects(dataset, capsys):
    out = dataset / "out"
    with pytest.raises(SystemExit) as e:
        main(["import-grazpedwri", "--csv", str(dataset / "dataset.csv"), "--images", str(dataset / "images"),
              "--labels", str(dataset / "labels"), "--out", str(out)])
    assert e.value.code == 0
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    mined = {r["id"]: r for r in map(json.loads, (out / "mined.jsonl").read_text().splitlines())}
    boxes = {r["id"]: r for r in map(json.loads, (out / "boxes.jsonl").read_text().splitlines())}
    rejects = [json.loads(x) for x in (out / "manifest.rejects.jsonl").read_text().splitlines()]
    assert [m["id"] for m in manifest] == [r[0] for r in ROWS[:7]]
    # rows 8, 9, 10 of the data (CSV lines 9, 10, 11) and the malformed label line
    row_rejects = {r["line"]: r["reason"] for r in rejects if "label file" not in r["reason"]}
    assert set(row_rejects) == {9, 10, 11}
    assert "unparseable AO code" in row_rejects[9]
    assert "image not found" in row_rejects[10]
    assert "duplicate filestem" in row_rejects[11]
    label_rejects = [r for r in rejects if "label file" in r["reason"]]
    assert len(label_rejects) == 1 and label_rejects[0]["line"] == 3
    summary = capsys.readouterr().out
    assert "read 10 rows = imported 7 + rejected 3" in summary
    assert "label lines read 4 = used 3 + rejected 1" in summary

    m0 = manifest[0]
    assert m0["patient_id"] == "1" and m0["study_id"] == "1_1" and m0["view"] == "pa"
    assert m0["laterality"] == "left" and m0["age_years"] == 14.2 and m0["split"] in ("train", "val", "test")
    assert manifest[1]["view"] == "lateral" and manifest[0]["split"] == manifest[1]["split"]
    r = mined["0002_b_01_WRI-R1_F009"]
    assert r["regions"]["distal_radius"]["salter_harris"] == 2
    assert r["regions"]["ulnar_styloid"]["pattern"] == "avulsion" and r["global"]["cast"]
    assert r["miner"] == "ao_codes" and r["captions"] == captions(r["regions"], r["global"])
    r = mined["0003_c_01_WRI-L1_M011"]
    assert r["regions"]["distal_ulna"]["pattern"] == "complete" and r["global"]["hardware"]
    assert all(v["fracture"] == "absent" for v in mined["0004_d_01_WRI-R1_F006"]["regions"].values())
    r = mined["0005_e_01_WRI-R1_M012"]
    assert r["regions"]["distal_ulna"]["fracture"] == "uncertain" and r["global"]["other_fracture"]
    assert r["regions"]["distal_radius"]["fracture"] == "absent"  # the shaft code never leaks
    r = mined["0006_f_01_WRI-L1_F010"]
    assert r["regions"]["distal_radius"]["fracture"] == "uncertain"  # fracture_visible = 0
    assert r["regions"]["distal_radius"]["healing"]                  # periosteal reaction box
    assert mined["0001_a_01_WRI-L1_M014"]["global"]["soft_tissue_swelling"]  # soft tissue box

    # YOLO boxes -> pixels of the 60x40 image, computed here independently
    b = boxes["0001_a_01_WRI-L1_M014"]
    assert b["boxes"] == {} and b["scores"] == {}
    assert b["objects"][0]["label"] == "fracture"
    np.testing.assert_allclose(b["objects"][0]["box"], [0.4 * 60, 0.45 * 40, 0.6 * 60, 0.55 * 40])
    np.testing.assert_allclose(b["objects"][1]["box"], [0.2 * 60, 0.65 * 40, 0.3 * 60, 0.85 * 40])

    # The templated reports, mined by the rule miner, give back the AO-derived findings.
    for m in manifest:
        regions, g = mine_report(m["report"])
        assert regions == mined[m["id"]]["regions"], m["id"]
        assert g == mined[m["id"]]["global"], m["id"]


def test_import_strict_and_missing_columns(dataset, capsys):
    with pytest.raises(SystemExit) as e:
        main(["import-grazpedwri", "--csv", str(dataset / "dataset.csv"), "--images", str(dataset / "images"),
              "--out", str(dataset / "out2"), "--strict"])
    assert e.value.code == 2
    assert "dataset.csv:9: unparseable AO code" in capsys.readouterr().err
    assert not (dataset / "out2").exists()
    bad = dataset / "bad.csv"
    bad.write_text("filestem,patient_id\nx,1\n")
    with pytest.raises(SystemExit) as e:
        main(["import-grazpedwri", "--csv", str(bad), "--images", str(dataset / "images"), "--out",
              str(dataset / "out3")])
    assert e.value.code == 2
    assert "missing column" in capsys.readouterr().err
