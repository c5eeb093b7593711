"""`wristmir build`: the TFDS ArrayRecord dataset reads back field for field; inputs that
disagree are rejected with file and line and the counts add up; --strict stops; a corrupt
shard is named; the Grain pipeline runs over the built dataset."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from wristmir_jax import schema
from wristmir_jax.cli.main import main
from wristmir_jax.data.synthetic import write_raw_inputs as write_inputs
from wristmir_jax.errors import UserError

SIZE, CROP, MAX_LEN = 64, 32, 24


def _build(paths, out, *extra):
    argv = ["build", "--manifest", paths["manifest"], "--mined", paths["mined"],
            "--boxes", paths["boxes"], "--out", str(out), "--image-size", str(SIZE),
            "--crop-size", str(CROP), "--max-len", str(MAX_LEN), *extra]
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    inputs = write_inputs(str(root / "in"), n=10)
    out = root / "data"
    assert _build(inputs["paths"], out, "--num-shards", "2") == 0
    return inputs, str(out)


def test_reads_back_field_for_field(built):
    import tensorflow_datasets as tfds
    from transformers import AutoTokenizer

    from wristmir_jax.imaging.crops import extract_crops
    from wristmir_jax.imaging.io import load_image
    from wristmir_jax.imaging.preprocess import prepare
    from wristmir_jax.reports.captions import caption_id

    inputs, data_dir = built
    builder = tfds.builder_from_directory(data_dir)
    tok = AutoTokenizer.from_pretrained(os.path.join(data_dir, "tokenizer"), local_files_only=True)
    meta = json.load(open(os.path.join(data_dir, "wristmir_meta.json")))
    assert meta["vocab_size"] == len(tok) and meta["record_len"] == schema.RECORD_LEN
    assert (meta["image_size"], meta["crop_size"], meta["max_len"]) == (SIZE, CROP, MAX_LEN)
    man = {m["id"]: m for m in inputs["manifest"]}
    mined = {m["id"]: m for m in inputs["mined"]}
    boxes = {b["id"]: b for b in inputs["boxes"]}
    in_dir = os.path.dirname(inputs["paths"]["manifest"])
    seen = {}
    for split in builder.info.splits:
        ds = builder.as_data_source(split)
        for i in range(len(ds)):
            ex = ds[i]
            rid = ex["id"].decode()
            seen[rid] = split
            m, mi, bx = man[rid], mined[rid], boxes[rid]
            assert split == m["split"]
            assert ex["view"].decode() == m["view"] and ex["laterality"].decode() == (m["laterality"] or "")
            assert ex["age_years"] == pytest.approx(m["age_years"])
            assert ex["patient_hash"].decode() == hashlib.sha256(m["patient_id"].encode()).hexdigest()[:16]
            assert m["patient_id"].encode() not in json.dumps(
                {k: str(v) for k, v in ex.items()}).encode()
            img = load_image(os.path.join(in_dir, m["image"]))
            prepared, geo = prepare(img, m["laterality"], SIZE)
            np.testing.assert_array_equal(ex["image"][..., 0], np.round(prepared * 255).astype(np.uint8))
            cr = extract_crops(img, bx["boxes"], bx["scores"], m["laterality"], size=CROP,
                               margin=0.2, min_score=0.5, view=m["view"])
            np.testing.assert_array_equal(np.stack(ex["crops"])[..., 0],
                                          np.round(cr.crops * 255).astype(np.uint8))
            np.testing.assert_array_equal(ex["crop_mask"], np.ones(3, np.float32))
            np.testing.assert_array_equal(ex["crop_source"], np.zeros(3, np.int32))
            want_boxes = [geo.box_to_processed(bx["boxes"][r]) for r in schema.REGIONS]
            np.testing.assert_allclose(ex["boxes"], want_boxes, atol=1e-3)
            np.testing.assert_array_equal(ex["record"], schema.encode_record(mi["regions"], mi["global"]))
            np.testing.assert_array_equal(ex["fracture_labels"],
                                          schema.fracture_labels(ex["record"][None])[0])
            caps = mi["captions"]
            assert ex["global_caption"].decode() == caps["global"]
            assert [c.decode() for c in ex["region_captions"]] == [caps[r] for r in schema.REGIONS]
            assert ex["global_caption_id"] == caption_id(caps["global"])
            assert list(ex["region_caption_id"]) == [caption_id(caps[r]) for r in schema.REGIONS]
            texts = [caps["global"]] + [caps[r] for r in schema.REGIONS]
            enc = tok(texts, max_length=MAX_LEN, truncation=True, padding="max_length")
            np.testing.assert_array_equal(ex["global_tokens"], enc["input_ids"][0])
            np.testing.assert_array_equal(ex["global_mask"], enc["attention_mask"][0])
            np.testing.assert_array_equal(ex["region_tokens"], enc["input_ids"][1:])
            np.testing.assert_array_equal(ex["region_mask"], enc["attention_mask"][1:])
    assert seen == {k: v["split"] for k, v in man.items()}
    assert meta["splits"] == {s: sum(1 for v in seen.values() if v == s) for s in set(seen.values())}


def test_training_examples_and_pipeline_over_built_data(built):
    from wristmir_jax.data.pipeline import make_pipeline
    from wristmir_jax.data.source import DatasetSource
    from wristmir_jax.data.tokenizer import load, tokenize

    _, data_dir = built
    src = DatasetSource(data_dir, "train")
    assert len(src) == 6
    ex, stored = src[0], src.stored(0)
    np.testing.assert_allclose(ex["image"], stored["image"] / 255.0, atol=1e-6)
    assert ex["image"].dtype == np.float32 and ex["crops"].shape == (3, CROP, CROP, 1)
    assert str(ex["id"]) == stored["id"].decode()
    # Retrieval's text queries tokenize exactly like the stored captions.
    ids, mask = tokenize(load(data_dir), stored["global_caption"].decode(), MAX_LEN)
    np.testing.assert_array_equal(ids, ex["global_tokens"])
    np.testing.assert_array_equal(mask, ex["global_mask"])
    # the frozen text tower's prefill reads a split's captions from the stored records
    from wristmir_jax.models.text_cache import CAPTION_KEYS, caption_arrays

    caps = caption_arrays(src, 1, 4)
    for k in CAPTION_KEYS:
        np.testing.assert_array_equal(caps[k], np.stack([src[i][k] for i in range(1, 4)]), err_msg=k)
    it = make_pipeline(data_dir, "train", global_batch_size=2, seed=0, worker_count=0,
                       process_index=0, process_count=1)
    b = next(it)
    assert b["image"].shape == (2, SIZE, SIZE, 1) and b["record"].shape == (2, schema.RECORD_LEN)
    assert b["region_tokens"].shape == (2, 3, MAX_LEN) and b["id"].dtype.kind == "U"


_ORPHAN_SCRIPT = """
import glob, sys, time
from wristmir_jax.data.pipeline import make_pipeline
it = make_pipeline(sys.argv[1], "train", global_batch_size=2, seed=0, worker_count=1,
                   process_index=0, process_count=1)
next(it)
kids = set()
for f in glob.glob("/proc/self/task/*/children"):
    kids |= {int(x) for x in open(f).read().split()}
print(" ".join(map(str, sorted(kids))), flush=True)
time.sleep(600)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_worker_processes_exit_when_the_trainer_is_killed(built):
    import signal
    import subprocess
    import sys
    import time

    _, data_dir = built
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, data_dir], stdout=subprocess.PIPE,
                            text=True)
    try:
        kids = [int(x) for x in proc.stdout.readline().split()]
        assert kids and all(_alive(k) for k in kids)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(k) for k in kids):
        time.sleep(0.5)
    assert not any(_alive(k) for k in kids), f"orphaned worker processes {kids}"


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_resume_exactly(built):
    """2 worker processes reading the ArrayRecord shards give the in-process stream; stopped
    at step k, their saved state restores into fresh workers that continue it exactly."""
    from wristmir_jax.data.pipeline import iterator_state, make_pipeline, restore_iterator

    _, data_dir = built
    kw = dict(global_batch_size=2, seed=3, process_index=0, process_count=1)
    ref = make_pipeline(data_dir, "train", worker_count=0, **kw)
    want = [next(ref) for _ in range(7)]
    k = 3
    it = make_pipeline(data_dir, "train", worker_count=2, **kw)
    try:
        head = [next(it) for _ in range(k)]
        state = iterator_state(it)
    finally:
        it.close()
    it2 = restore_iterator(make_pipeline(data_dir, "train", worker_count=2, **kw), state)
    try:
        tail = [next(it2) for _ in range(len(want) - k)]
    finally:
        it2.close()
    for x, y in zip(head + tail, want):
        assert set(x) == set(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


@pytest.fixture()
def messy(tmp_path):
    """Inputs that disagree in every way the issue lists, with the expected reject lines."""
    inp = write_inputs(str(tmp_path / "in"), n=10)
    p = inp["paths"]
    man, mined, boxes = inp["manifest"], inp["mined"], inp["boxes"]
    man = man + [dict(man[3])]                                   # case003 twice in the manifest
    mined = [r for r in mined if r["id"] != "case001"]           # case001 has no mined record
    mined.append({**mined[0], "id": "ghost"})                    # a mined id the manifest lacks
    bad = json.loads(json.dumps(mined[3]))                       # case004 breaks the schema
    assert bad["id"] == "case004"
    bad["regions"]["distal_radius"]["fracture"] = "maybe"
    mined[3] = bad
    boxes = [r for r in boxes if r["id"] != "case002"]           # case002 has no boxes
    boxes = boxes + ["{not json"]                                # a broken line
    os.remove(os.path.join(tmp_path, "in", man[5]["image"]))     # case005's image is gone
    with open(os.path.join(tmp_path, "in", man[6]["image"]), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")                    # case006's image is corrupt
    _write_jsonl(p["manifest"], man)
    _write_jsonl(p["mined"], mined)
    _write_jsonl(p["boxes"], boxes)
    return p, len(man), len(mined), len(boxes)


def test_disagreeing_inputs_are_rejected_and_counts_add_up(messy, tmp_path):
    import tensorflow_datasets as tfds

    p, n_man, n_mined, n_boxes = messy
    out = tmp_path / "data"
    assert _build(p, out) == 0
    builder = tfds.builder_from_directory(str(out))
    written = set()
    for s in builder.info.splits:
        ds = builder.as_data_source(s)
        written |= {ds[i]["id"].decode() for i in range(len(ds))}
    assert written == {"case000", "case007", "case008", "case009"}
    rejects = [json.loads(line) for line in open(out / "build.rejects.jsonl")]
    by = {}
    for r in rejects:
        by.setdefault((os.path.basename(r["source"]), r.get("id")), []).append(r)
        assert r["line"] >= 1 and r["reason"]
    assert [r["line"] for r in by[("manifest.jsonl", "case003")]] == [4, 11]
    assert "duplicate id" in by[("manifest.jsonl", "case003")][0]["reason"]
    assert by[("manifest.jsonl", "case001")][0]["reason"] == "id not in the mined file"
    assert by[("manifest.jsonl", "case002")][0]["reason"] == "id not in the boxes file"
    assert "fracture" in by[("mined.jsonl", "case004")][0]["reason"]
    assert by[("manifest.jsonl", "case004")][0]["reason"] == "mined record rejected"
    assert "file not found" in by[("manifest.jsonl", "case005")][0]["reason"]
    assert "case006" in by[("manifest.jsonl", "case006")][0]["reason"]  # names the image file
    assert by[("mined.jsonl", "ghost")][0]["reason"] == "id not in the manifest"
    assert "not valid JSON" in by[("boxes.jsonl", None)][0]["reason"]
    assert by[("boxes.jsonl", None)][0]["line"] == n_boxes
    meta = json.load(open(out / "wristmir_meta.json"))
    c = meta["counts"]
    assert (c["manifest"]["read"], c["mined"]["read"], c["boxes"]["read"]) == (n_man, n_mined, n_boxes)
    for name in ("manifest", "mined", "boxes"):
        assert c[name]["read"] == c[name]["used"] + c[name]["rejected"], name
        assert c[name]["rejected"] == sum(1 for r in rejects if os.path.basename(r["source"]) == name + ".jsonl")
    assert c["manifest"]["used"] == len(written) == sum(meta["splits"].values())
    assert c["images_rejected"] == 2


def test_threaded_build_equals_one_thread(messy, tmp_path):
    """--workers only changes speed: the same records in the same order, the same rejects.
    Both builds use the first one's tokenizer: the word-piece trainer breaks ties between
    merges differently in each process (BUILD_NOTES "Known gaps")."""
    import tensorflow_datasets as tfds

    p, *_ = messy
    first, second = tmp_path / "data_w1", tmp_path / "data_w3"
    assert _build(p, first, "--workers", "1") == 0
    assert _build(p, second, "--workers", "3", "--tokenizer", str(first / "tokenizer")) == 0
    b1, b3 = tfds.builder_from_directory(str(first)), tfds.builder_from_directory(str(second))
    assert set(b1.info.splits) == set(b3.info.splits)
    for s in b1.info.splits:
        d1, d3 = b1.as_data_source(s), b3.as_data_source(s)
        assert len(d1) == len(d3) > 0
        for i in range(len(d1)):
            x, y = d1[i], d3[i]
            assert set(x) == set(y)
            for key in x:
                np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)
    r1, r3 = ((o / "build.rejects.jsonl").read_text() for o in (first, second))
    assert r1 == r3 and r1.count("\n") >= 2


def test_ordered_map_keeps_order_and_bounds_the_look_ahead():
    import threading
    import time

    from wristmir_jax.data.builder import ordered_map

    started = []
    lock = threading.Lock()

    def fn(i):
        with lock:
            started.append(i)
        time.sleep(0.001 * (i % 3))
        return i * i

    it = ordered_map(fn, list(range(100)), 2)
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    time.sleep(0.05)
    assert len(started) <= 5 + 4 * 2  # never the whole list ahead of the consumer
    assert list(it) == [i * i for i in range(5, 100)]
    assert list(ordered_map(fn, [3, 1], 1)) == [9, 1]


def test_strict_stops_at_the_first_problem(messy, tmp_path, capsys):
    p, *_ = messy
    out = tmp_path / "strict"
    assert _build(p, out, "--strict") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wristmir build: error:" in err[0]
    assert ".jsonl:" in err[0]  # file and line
    assert not out.exists()


def test_existing_output_needs_overwrite(built, tmp_path):
    inputs, _ = built
    out = tmp_path / "again"
    out.mkdir()
    (out / "x").write_text("keep")
    assert _build(inputs["paths"], out) == 2
    assert (out / "x").read_text() == "keep"


def test_corrupt_shard_is_named(built, tmp_path):
    import tensorflow_datasets as tfds

    from wristmir_jax.data.pipeline import make_pipeline
    from wristmir_jax.data.source import DatasetSource, check_shards

    _, data_dir = built
    d = tmp_path / "copy"
    shutil.copytree(data_dir, d)
    shards = sorted(f for f in os.listdir(d) if "-train.array_record-" in f)
    assert len(shards) == 2
    victim = d / shards[1]
    raw = victim.read_bytes()
    # Bytes flipped inside a chunk: the shard opens, a record read fails.
    victim.write_bytes(raw[:100] + bytes(64) + raw[164:])
    src = DatasetSource(str(d), "train")
    bad = [i for i in range(len(src)) if src.shard_of(i).endswith(shards[1])]
    with pytest.raises(UserError, match=shards[1]):
        src[bad[0]]
    with pytest.raises(UserError, match=shards[1]):
        check_shards(tfds.builder_from_directory(str(d)), "train", full=True)
    with pytest.raises(UserError, match=shards[1]):
        list(make_pipeline(str(d), "train", global_batch_size=1, num_epochs=1, worker_count=0,
                           process_index=0, process_count=1))
    # Truncated: caught when the source opens.
    victim.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(UserError, match=shards[1]):
        DatasetSource(str(d), "train")
    victim.unlink()
    with pytest.raises(UserError, match="shard missing"):
        DatasetSource(str(d), "train")


def test_pretrained_tokenizer_folder_is_used(built, tmp_path):
    from transformers import AutoTokenizer

    from wristmir_jax.data.tokenizer import build_wordpiece

    inputs, _ = built
    tok_dir = tmp_path / "tok"
    texts = ["the wrist is normal", "a buckle fracture of the distal radius"] * 5
    build_wordpiece(texts, tok_dir, vocab_size=120)
    out = tmp_path / "data"
    assert _build(inputs["paths"], out, "--tokenizer", str(tok_dir)) == 0
    meta = json.load(open(out / "wristmir_meta.json"))
    ref = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    assert meta["tokenizer"] == "pretrained" and meta["vocab_size"] == len(ref)
    from wristmir_jax.data.source import DatasetSource

    st = DatasetSource(str(out), "train").stored(0)
    enc = ref(st["global_caption"].decode(), max_length=MAX_LEN, truncation=True, padding="max_length")
    np.testing.assert_array_equal(st["global_tokens"], enc["input_ids"])
    with pytest.raises(UserError, match="tokenizer folder not found"):
        from wristmir_jax.data.tokenizer import load_pretrained

        load_pretrained(tmp_path / "nowhere")


def test_build_from_the_synthetic_generator(tmp_path):
    """The real generator's output (16-bit PNGs, gold findings and boxes) builds, and every
    example's record and crops source follow its gold row."""
    from wristmir_jax.data.source import DatasetSource
    from wristmir_jax.reports.captions import captions
    from wristmir_jax.synth.dataset import generate

    generate(str(tmp_path / "synth"), n=8, seed=1, image_size=96, workers=1)
    gold = [json.loads(line) for line in open(tmp_path / "synth" / "gold.jsonl")]
    mined = [{"id": g["id"], "regions": g["regions"], "global": g["global"],
              "captions": captions(g["regions"], g["global"]), "miner": "gold"} for g in gold]
    boxes = [{"id": g["id"], "boxes": g["boxes"],
              "scores": {r: 1.0 for r in g["boxes"] if g["boxes"][r] is not None}} for g in gold]
    paths = {"manifest": str(tmp_path / "synth" / "manifest.jsonl"),
             "mined": str(tmp_path / "mined.jsonl"), "boxes": str(tmp_path / "boxes.jsonl")}
    _write_jsonl(paths["mined"], mined)
    _write_jsonl(paths["boxes"], boxes)
    out = tmp_path / "data"
    assert _build(paths, out) == 0
    meta = json.load(open(out / "wristmir_meta.json"))
    assert sum(meta["splits"].values()) == len(gold) == meta["counts"]["manifest"]["read"]
    by_id = {g["id"]: g for g in gold}
    for split in meta["splits"]:
        src = DatasetSource(str(out), split)
        for i in range(len(src)):
            st = src.stored(i)
            g = by_id[st["id"].decode()]
            np.testing.assert_array_equal(st["record"], schema.encode_record(g["regions"], g["global"]))
            present = [g["boxes"].get(r) is not None for r in schema.REGIONS]
            assert [s == 0 for s in st["crop_source"]] == present  # gold boxes are "detected"
            assert st["image"].std() > 0
