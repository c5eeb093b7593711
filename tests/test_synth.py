"""The procedural dataset: determinism, schema, patient-level splits, report/gold consistency
(checked by an independent keyword reader written here), box validity, locality of fracture signs
and bad-input handling."""

import copy
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wristmir_jax import schema
from wristmir_jax.errors import UserError
from wristmir_jax.synth import compose_report, generate, plan_dataset
from wristmir_jax.synth import dataset as dataset_mod
from wristmir_jax.synth.render import attenuation_map, render_image

SIZE = 128
N = 24


def _read(folder):
    with open(os.path.join(folder, "manifest.jsonl")) as f:
        manifest = [json.loads(line) for line in f]
    with open(os.path.join(folder, "gold.jsonl")) as f:
        gold = [json.loads(line) for line in f]
    return manifest, gold


def _digest(folder):
    """sha256 of every file under folder, keyed by relative path."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = generate(out, n=N, seed=3, image_size=SIZE, workers=1)
    return str(out), summary


def test_writes_exactly_the_specified_files(dataset):
    out, summary = dataset
    manifest, gold = _read(out)
    assert sorted(os.listdir(out)) == ["contact_sheet.png", "gold.jsonl", "images", "manifest.jsonl"]
    assert len(manifest) == len(gold) == N == summary["n_images"]
    assert sorted(os.listdir(os.path.join(out, "images"))) == sorted(os.path.basename(m["image"]) for m in manifest)
    assert Image.open(os.path.join(out, "contact_sheet.png")).mode == "RGB"
    # The summary's counts agree with the files; it holds counts, never report text.
    assert sum(v["images"] for v in summary["splits"].values()) == N
    for split, v in summary["splits"].items():
        assert v["images"] == sum(m["split"] == split for m in manifest)
        assert v["patients"] == len({m["patient_id"] for m in manifest if m["split"] == split})
    assert summary["n_studies"] == len({m["study_id"] for m in manifest})
    assert summary["views"] == {v: sum(m["view"] == v for m in manifest) for v in summary["views"]}
    text = json.dumps(summary)
    assert not any(m["report"].strip()[:30] in text for m in manifest)


def test_same_seed_is_byte_identical_any_worker_count_and_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    generate(again, n=N, seed=3, image_size=SIZE, workers=2)
    assert _digest(out) == _digest(again)
    other = tmp_path / "other"
    generate(other, n=N, seed=4, image_size=SIZE, workers=1)
    a, b = _digest(out), _digest(other)
    assert a["manifest.jsonl"] != b["manifest.jsonl"] and a["gold.jsonl"] != b["gold.jsonl"]
    assert sum(a[k] != b.get(k) for k in a if k.startswith("images")) >= N - 1


def test_manifest_and_gold_follow_the_schema(dataset):
    out, _ = dataset
    manifest, gold = _read(out)
    keys = {"id", "patient_id", "study_id", "image", "report", "view", "laterality", "age_years", "split"}
    for m, g in zip(manifest, gold):
        assert set(m) == keys and m["id"] == g["id"]
        assert m["view"] in schema.VIEWS and m["laterality"] in schema.LATERALITY
        assert m["split"] in schema.SPLITS and 2.0 <= m["age_years"] <= 17.2
        assert isinstance(m["report"], str) and len(m["report"]) > 20
        assert set(g) == {"id", "regions", "global", "boxes"}
        schema.validate_findings(g["regions"], g["global"])
        assert g["global"]["laterality"] == m["laterality"]
        assert set(g["boxes"]) == set(schema.REGIONS)
        for r, box in g["boxes"].items():
            schema.validate_box(box, SIZE, SIZE, where=r)
        im = Image.open(os.path.join(out, m["image"]))
        assert im.mode == "I;16" and im.size == (SIZE, SIZE)
        arr = np.asarray(im)
        assert arr.dtype == np.uint16 and arr.max() > 40000 and arr.min() < 12000


def test_split_is_by_patient_and_views_of_a_study_share_report_and_gold(dataset):
    out, _ = dataset
    manifest, gold = _read(out)
    split_of, studies = {}, {}
    for m, g in zip(manifest, gold):
        assert split_of.setdefault(m["patient_id"], m["split"]) == m["split"]
        studies.setdefault(m["study_id"], []).append((m, g))
    for items in studies.values():
        views = [m["view"] for m, _ in items]
        assert len(set(views)) == len(views)
        assert len({m["report"] for m, _ in items}) == 1
        assert len({json.dumps([g["regions"], g["global"]], sort_keys=True) for _, g in items}) == 1
        assert len({(m["patient_id"], m["laterality"]) for m, _ in items}) == 1
    assert len(studies) < len(manifest)  # several views per study


def test_patient_split_proportions_on_a_large_plan():
    studies = plan_dataset(0, 6000)
    patients = {}
    for st in studies:
        assert patients.setdefault(st["patient_index"], st["patient_split"]) == st["patient_split"]
    frac = {s: sum(v == s for v in patients.values()) / len(patients) for s in schema.SPLITS}
    assert abs(frac["train"] - 0.70) < 0.04 and abs(frac["val"] - 0.15) < 0.03 and abs(frac["test"] - 0.15) < 0.03
    assert sum(len(st["views"]) for st in studies) == 6000


def test_default_prevalence_is_near_the_targets_and_configurable():
    studies = plan_dataset(1, 8000)
    n = len(studies)

    def rate(region):
        return sum(st["findings"]["regions"][region]["fracture"] != "absent" for st in studies) / n

    assert 0.48 <= rate("distal_radius") <= 0.68
    assert 0.14 <= rate("distal_ulna") <= 0.28
    assert 0.09 <= rate("ulnar_styloid") <= 0.18
    normal = sum(all(st["findings"]["regions"][r]["fracture"] == "absent" for r in schema.REGIONS)
                 and not st["findings"]["global"]["other_fracture"] for st in studies) / n
    assert 0.08 <= normal <= 0.16
    unc = sum(any(r["fracture"] == "uncertain" for r in st["findings"]["regions"].values()) for st in studies) / n
    assert 0.02 <= unc <= 0.09
    cast = sum(st["findings"]["global"]["cast"] for st in studies) / n
    hardware = sum(st["findings"]["global"]["hardware"] for st in studies) / n
    assert 0.06 <= cast <= 0.18 and 0.015 <= hardware <= 0.05
    # Every region finding fits the schema and its pattern fits the region.
    allowed = {"distal_radius": {"buckle", "greenstick", "complete", "salter_harris", None},
               "distal_ulna": {"buckle", "greenstick", "complete", "salter_harris", "plastic_bowing", None},
               "ulnar_styloid": {"avulsion", None}}
    for st in studies:
        schema.validate_findings(st["findings"]["regions"], st["findings"]["global"])
        for r, v in st["findings"]["regions"].items():
            assert v["pattern"] in allowed[r]
    all_normal = plan_dataset(1, 300, {"normal": 1.0, "other_fracture": 0.0, "hardware": 0.0, "uncertain": 0.0})
    assert all(st["findings"]["regions"][r]["fracture"] == "absent" for st in all_normal for r in schema.REGIONS)
    with pytest.raises(UserError):
        generate("/nonexistent-never-created", n=2, prevalence={"bogus": 0.1})


# ---------------------------------------------------------------------------------------------
# An independent reader of the reports: keywords and negations, no templates.
HISTORY = re.compile(r"^\s*(history|indication|clinical history|clinical information|reason for exam|hx)\b",
                     re.I)
PATTERN_WORDS = {
    "buckle": re.compile(r"buckle|torus"),
    "greenstick": re.compile(r"greenstick"),
    "complete": re.compile(r"complete|transverse|bicortical"),
    "salter_harris": re.compile(r"salter|\bsh ?[1-5iv]"),
    "avulsion": re.compile(r"avuls|styloid[^.]*fracture|fracture[^.]*styloid"),
    "plastic_bowing": re.compile(r"bowing|plastic"),
}
HEDGE = re.compile(r"possibl|questionable|cannot exclude|cannot be excluded|suspected|suspicious|equivocal|may represent")
# Sentences that describe no current finding: plans, removed hardware, old remodelled fractures.
PLAN = re.compile(r"recommend|suggest|consider|plan:")
REMOVED = re.compile(r"removed|removal|tracts")
REMOTE = re.compile(r"remodel|remote|old healed")
REGION_WORDS = {
    "distal_radius": re.compile(r"radius|radial (metaphysis|metadiaphysis|physis|growth plate)"),
    "distal_ulna": re.compile(r"\bulna\b|ulnar (metaphysis|metadiaphysis|physis|growth plate|shaft|diaphysis)"),
    "ulnar_styloid": re.compile(r"styloid"),
}
FRACTURE_WORD = re.compile(r"fracture|injury|deformity|lucency|irregularity")
NEGATED = re.compile(r"^(no|otherwise no|there is no)\b|is intact|are intact|unremarkable|: normal|: no fracture"
                     r"|no radiographic evidence|negative")
GRADE = re.compile(r"(salter[- ]harris|\bsh)\s*(type\s*)?(iv|v|i{1,3}|[1-5])\b")
ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5}


def _sentences(report):
    body = [line for line in report.lower().splitlines() if not HISTORY.match(line)]
    text = "\n".join(body)
    return text, [s.strip() for s in re.split(r"(?<!\d)\.(?!\d)|\n|(?:^|\s)\d\.\s", text) if s.strip()]


def check_report(report, regions, g):
    """Returns a list of disagreements between a report and gold findings."""
    text, sents = _sentences(report)
    side_text = report.lower()  # the side may be given only in the indication ("L wrist pain")
    sents = [s for s in sents if not PLAN.search(s) and not REMOTE.search(s)]
    text = "\n".join(sents)
    errs = []
    gold_patterns = {r["pattern"] for r in regions.values() if r["fracture"] != "absent"}
    for p, rx in PATTERN_WORDS.items():
        if any(rx.search(s) and not NEGATED.search(s) for s in sents) != (p in gold_patterns):
            errs.append(f"pattern {p}: text {bool(rx.search(text))} gold {p in gold_patterns}")
    unc = any(r["fracture"] == "uncertain" for r in regions.values())
    if bool(HEDGE.search(text)) != unc:
        errs.append(f"hedge: text {bool(HEDGE.search(text))} gold {unc}")
    healing = any(r["healing"] for r in regions.values())
    if bool(re.search(r"callus|periosteal|healing", text)) != healing:
        errs.append("healing")
    if bool(re.search(r"cast|plaster", text)) != g["cast"]:
        errs.append("cast")
    if any(re.search(r"k-wire|kirschner|\bpins?\b|hardware", s) and not REMOVED.search(s) for s in sents) != g["hardware"]:
        errs.append("hardware")
    swelling = any("swelling" in s and not NEGATED.search(s) for s in sents)
    if swelling != g["soft_tissue_swelling"]:
        errs.append("swelling")
    other = any(re.search(r"scaphoid|metacarpal", s) and "fracture" in s and not NEGATED.search(s) for s in sents)
    if other != g["other_fracture"]:
        errs.append("other_fracture")
    side, opposite = g["laterality"], {"left": "right", "right": "left"}[g["laterality"]]
    if not re.search(rf"\b{side}\b|\b{side[0]} (?:wrist|arm)\b", side_text) or re.search(rf"\b{opposite}\b", side_text):
        errs.append("laterality")
    neg_disp = re.compile(r"nondisplaced|non-displaced|undisplaced|without displacement|no displacement")
    pos_disp = any(re.search(r"displace", neg_disp.sub("", s)) for s in sents)
    if pos_disp != any(r["displaced"] is True for r in regions.values()):
        errs.append("displaced true")
    if bool(neg_disp.search(text)) != any(r["displaced"] is False for r in regions.values()):
        errs.append("displaced false")
    neg_ang = re.compile(r"without angulation|no angulation|no significant angulation|nonangulated")
    pos_ang = any(re.search(r"angulat", neg_ang.sub("", s)) for s in sents)
    if pos_ang != any(r["angulated"] is True for r in regions.values()):
        errs.append("angulated true")
    if bool(neg_ang.search(text)) != any(r["angulated"] is False for r in regions.values()):
        errs.append("angulated false")
    grades = {ROMAN.get(m.group(3), None) or int(m.group(3)) for m in GRADE.finditer(text)}
    if grades != {r["salter_harris"] for r in regions.values() if r["salter_harris"]}:
        errs.append(f"sh grades {grades}")
    stated = set()
    for s in sents:
        if FRACTURE_WORD.search(s) and not NEGATED.search(s):
            stated |= {r for r, rx in REGION_WORDS.items() if rx.search(s)}
    positive = {r for r, v in regions.items() if v["fracture"] != "absent"}
    if stated != positive:
        errs.append(f"regions stated {sorted(stated)} gold {sorted(positive)}")
    return errs


def test_reports_state_every_gold_finding_and_nothing_else(dataset):
    out, _ = dataset
    manifest, gold = _read(out)
    for m, g in zip(manifest, gold):
        assert check_report(m["report"], g["regions"], g["global"]) == [], m["id"]
    # A larger sample straight from the planner and the report writer.
    studies = plan_dataset(11, 2500)
    bad = []
    for st in studies:
        rep = compose_report(np.random.default_rng([11, 1, st["study_index"]]), st)
        errs = check_report(rep, st["findings"]["regions"], st["findings"]["global"])
        if errs:
            bad.append((st["study_index"], errs))
    assert bad == []


def test_the_reader_catches_a_report_that_disagrees_with_gold():
    st = next(s for s in plan_dataset(5, 400)
              if s["findings"]["regions"]["distal_radius"]["pattern"] == "buckle"
              and s["findings"]["regions"]["distal_radius"]["fracture"] == "present")
    rep = compose_report(np.random.default_rng(0), st)
    regions = copy.deepcopy(st["findings"]["regions"])
    assert check_report(rep, regions, st["findings"]["global"]) == []
    regions["distal_radius"] = schema.empty_region()
    assert check_report(rep, regions, st["findings"]["global"]) != []


def test_reports_vary_in_wording_and_layout():
    studies = plan_dataset(2, 1500)
    reps = [compose_report(np.random.default_rng([2, 1, s["study_index"]]), s) for s in studies]
    first_lines = {r.splitlines()[0].split(":")[0].lower() for r in reps}
    assert len(first_lines) >= 8
    assert len(set(reps)) == len(reps)
    normal_history = [r for r, s in zip(reps, studies)
                      if all(v["fracture"] == "absent" for v in s["findings"]["regions"].values())
                      and re.search(r"fracture", "\n".join(l for l in r.lower().splitlines() if HISTORY.match(l)))]
    assert normal_history, "history lines should raise fracture on some normal studies"


# ---------------------------------------------------------------------------------------------
# Boxes and images.

def test_boxes_cover_bone(dataset):
    out, _ = dataset
    manifest, gold = _read(out)
    for m, g in zip(manifest, gold):
        if g["global"]["cast"]:
            continue
        img = np.asarray(Image.open(os.path.join(out, m["image"])), dtype=np.float64)
        x0, y0, x1, y1 = (int(round(v)) for v in g["boxes"]["distal_radius"])
        inside = img[y0:y1, x0:x1].mean()
        # Bone in the radius box is brighter than the image (air and soft tissue) on average and
        # than the soft tissue just outside the forearm: the dimmest decile of a wider frame.
        assert inside > 1.3 * img.mean(), m["id"]
        x0u, y0u, x1u, y1u = (int(round(v)) for v in g["boxes"]["distal_ulna"])
        assert img[y0u:y1u, x0u:x1u].mean() > 1.2 * img.mean(), m["id"]
        areas = {r: (b[2] - b[0]) * (b[3] - b[1]) for r, b in g["boxes"].items()}
        assert 0.01 * SIZE * SIZE < areas["distal_radius"] < 0.3 * SIZE * SIZE
        assert areas["ulnar_styloid"] < areas["distal_radius"]


def _without(study, region):
    st = copy.deepcopy(study)
    st["findings"]["regions"][region] = schema.empty_region()
    st["findings"]["global"].update(hardware=False, soft_tissue_swelling=False)
    return st


def test_fracture_signs_stay_inside_their_region_box():
    """Rendering a study with and without one region's fracture changes attenuation only inside
    that region's box (same RNG, swelling and wires off)."""
    studies = plan_dataset(7, 500)
    checked = {r: 0 for r in schema.REGIONS}
    for st in studies:
        for region in schema.REGIONS:
            if st["findings"]["regions"][region]["fracture"] == "absent" or checked[region] >= 6:
                continue
            base = copy.deepcopy(st)
            base["findings"]["global"].update(hardware=False, soft_tissue_swelling=False)
            for view, index in st["views"][:2]:
                a1, boxes, _, _ = attenuation_map(base, view, np.random.default_rng(index), SIZE * 2)
                a0, _, _, _ = attenuation_map(_without(st, region), view, np.random.default_rng(index), SIZE * 2)
                diff = np.abs(a1 - a0) > 1e-4
                if region == "ulnar_styloid" and not diff.any():
                    continue  # unossified styloid: nothing to draw (gold then has no styloid fracture)
                assert diff.any(), (st["study_index"], region, view)
                x0, y0, x1, y1 = boxes[region]
                mask = np.zeros_like(diff)
                mask[max(0, int(y0) - 1):int(np.ceil(y1)) + 1, max(0, int(x0) - 1):int(np.ceil(x1)) + 1] = True
                assert not (diff & ~mask).any(), (st["study_index"], region, view, int((diff & ~mask).sum()))
            checked[region] += 1
    assert all(v >= 3 for v in checked.values()), checked


def _crop(img, box, out=128, margin=0.2):
    from PIL import Image as _I

    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    c = (max(0, x0 - margin * w), max(0, y0 - margin * h), min(img.shape[1], x1 + margin * w),
         min(img.shape[0], y1 + margin * h))
    return np.asarray(_I.fromarray(img.astype(np.float32)).crop(c).resize((out, out), _I.BILINEAR))


@pytest.mark.parametrize("region", schema.REGIONS)
def test_fractures_are_clear_in_a_bone_crop_and_small_in_the_whole_image(region):
    """At 512 px, a present fracture changes many pixels of the 128 px crop of its region box
    (+20% margin) but only a few of the whole image downsampled to 128 px."""
    studies = [s for s in plan_dataset(9, 1500)
               if s["findings"]["regions"][region]["fracture"] == "present"
               and not s["findings"]["global"]["cast"]][:4]
    assert len(studies) == 4
    for st in studies:
        view, index = st["views"][0]
        base = copy.deepcopy(st)
        base["findings"]["global"].update(hardware=False, soft_tissue_swelling=False)
        img1, boxes = render_image(base, view, np.random.default_rng(index), 512)
        img0, _ = render_image(_without(st, region), view, np.random.default_rng(index), 512)
        img1, img0 = img1.astype(np.float32) / 65535, img0.astype(np.float32) / 65535
        crop_diff = np.abs(_crop(img1, boxes[region]) - _crop(img0, boxes[region]))
        small = lambda a: np.asarray(Image.fromarray(a).resize((128, 128), Image.BILINEAR))
        whole_diff = np.abs(small(img1) - small(img0))
        changed_crop = int((crop_diff > 0.04).sum())
        changed_whole = int((whole_diff > 0.04).sum())
        pattern = st["findings"]["regions"][region]["pattern"]
        assert changed_crop >= 150, (st["study_index"], pattern, changed_crop)
        assert changed_whole < 0.35 * changed_crop, (changed_whole, changed_crop)
        assert changed_whole < 0.03 * 128 * 128


# ---------------------------------------------------------------------------------------------
# Bad input.

def _leftovers(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n]


def test_bad_input_is_a_user_error_and_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match="--n"):
        generate(tmp_path / "a", n=0)
    with pytest.raises(UserError, match="--n"):
        generate(tmp_path / "a", n=-3)
    with pytest.raises(UserError, match="image-size"):
        generate(tmp_path / "a", n=2, image_size=8)
    assert not (tmp_path / "a").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        generate(busy, n=2, image_size=64, workers=1)
    assert os.listdir(busy) == ["keep.txt"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot create"):
        generate(blocker / "sub", n=2, image_size=64, workers=1)
    # --overwrite replaces the folder.
    generate(busy, n=2, image_size=64, workers=1, overwrite=True)
    assert "keep.txt" not in os.listdir(busy)
    assert _leftovers(tmp_path) == []


def test_failure_midway_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = dataset_mod._render_task

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(task)

    monkeypatch.setattr(dataset_mod, "_render_task", flaky)
    with pytest.raises(RuntimeError):
        generate(tmp_path / "out", n=6, image_size=64, workers=1)
    assert os.listdir(tmp_path) == []


def test_cli_prints_a_summary_without_report_text(tmp_path):
    out = tmp_path / "cli"
    env = dict(os.environ, WRISTMIR_NO_PROGRESS="1")
    p = subprocess.run([sys.executable, "-m", "wristmir_jax", "synth", "--out", str(out), "--n", "5",
                        "--seed", "1", "--image-size", "64", "--workers", "1"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "train" in p.stdout and "distal_radius" in p.stdout
    manifest, _ = _read(out)
    for m in manifest:
        for line in m["report"].splitlines():
            body = line.split(":", 1)[-1].strip()
            if len(body) > 12:
                assert body not in p.stdout and body not in p.stderr
    bad = subprocess.run([sys.executable, "-m", "wristmir_jax", "synth", "--out", str(tmp_path / "z"),
                          "--n", "0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--n" in bad.stderr
    assert not (tmp_path / "z").exists()
