"""`wristmir embed` end to end on a tiny built dataset and an untrained tiny model: the index
holds what the model computes example by example, its fingerprint matches the model, and
search (image, text, id) and evaluate run on it; a model mismatch is a one-line error."""

import json
import os

import numpy as np
import pytest

from wristmir_jax.data.synthetic import write_raw_inputs as write_inputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_workdir):
    from wristmir_jax.data.builder import BuildConfig, build_dataset

    root = tmp_path_factory.mktemp("embed")
    inp = write_inputs(str(root / "in"), n=10)
    data = str(root / "data")
    build_dataset(inp["paths"]["manifest"], inp["paths"]["mined"], inp["paths"]["boxes"], data,
                  cfg=BuildConfig(image_size=32, crop_size=32, max_len=16))
    work = str(tiny_workdir(data, root / "work"))
    return root, inp, data, work


def _main(capsys, argv):
    from wristmir_jax.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_embed_search_evaluate(setup, capsys):
    import jax

    from wristmir_jax.data.source import DatasetSource
    from wristmir_jax.retrieval.store import load_index
    from wristmir_jax.train.checkpoint import params_sha256, restore_for_inference

    root, inp, data, work = setup
    idx_dir = str(root / "idx")
    code, out, err = _main(capsys, ["embed", "--workdir", work, "--data", data, "--split", "train",
                                    "--out", idx_dir, "--batch-size", "4", "--dtype", "float32"])
    assert code == 0, err
    index = load_index(idx_dir)
    model, params, _ = restore_for_inference(work)
    assert index.fingerprint["model"]["params_sha256"] == params_sha256(params)
    # reference: the model applied example by example, unsharded
    src = DatasetSource(data, "train")
    assert index.count == len(src) == 6
    enc = jax.jit(model.encode)
    for i in range(len(src)):
        ex = src[i]
        b = {k: np.asarray(v)[None] for k, v in ex.items() if k != "id"}
        e = enc(params, b)
        assert index.arrays.ids[i] == ex["id"]
        np.testing.assert_allclose(index.arrays.global_img[i], np.asarray(e["global_img"])[0], atol=2e-5)
        np.testing.assert_allclose(index.arrays.region_img[i], np.asarray(e["region_img"])[0], atol=2e-5)
        np.testing.assert_allclose(index.arrays.region_txt[i], np.asarray(e["region_txt"])[0], atol=2e-5)
        np.testing.assert_array_equal(index.arrays.records[i], ex["record"])
        assert index.arrays.patients[i] == src.stored(i)["patient_hash"].decode()

    img = os.path.join(str(root / "in"), inp["manifest"][0]["image"])
    code, out, err = _main(capsys, ["search", "--index", idx_dir, "--image", img, "--region",
                                    "distal_radius", "-k", "3", "--json"])
    assert code == 0, err
    assert len(json.loads(out)["results"]) == 3
    code, out, err = _main(capsys, ["search", "--index", idx_dir, "--text", "distal radius: buckle fracture",
                                    "--region", "distal_radius", "-k", "2", "--json"])
    assert code == 0, err
    assert json.loads(out)["method"] == "text"
    code, _, err = _main(capsys, ["search", "--index", idx_dir, "--image", str(root / "missing.png")])
    assert code == 2 and "missing.png" in err and len(err.strip().splitlines()) == 1

    code, out, err = _main(capsys, ["evaluate", "--index", idx_dir, "--queries", "train",
                                    "--out", str(root / "eval" / "metrics.json"), "--ks", "1,3"])
    assert code == 0, err
    m = json.load(open(root / "eval" / "metrics.json"))
    assert m["queries"] == 6 and "two_stage" in m["retrieval"]["distal_radius"]

    # an index whose fingerprint names another model: image queries refuse it
    fp_path = os.path.join(idx_dir, "fingerprint.json")
    fp = json.load(open(fp_path))
    fp["model"]["params_sha256"] = "0" * 64
    json.dump(fp, open(fp_path, "w"))
    code, _, err = _main(capsys, ["search", "--index", idx_dir, "--image", img])
    assert code == 2 and "another model" in err


def test_several_splits_in_one_run_equal_one_run_each(setup, capsys):
    from wristmir_jax.retrieval.store import load_index

    root, _, data, work = setup
    one = {}
    for split in ("train", "test"):
        one[split] = str(root / f"one_{split}")
        code, _, err = _main(capsys, ["embed", "--workdir", work, "--data", data, "--split", split,
                                      "--out", one[split], "--batch-size", "4"])
        assert code == 0, err
    pattern = str(root / "both_{split}")
    code, out, err = _main(capsys, ["embed", "--workdir", work, "--data", data, "--split",
                                    "train,test", "--out", pattern, "--batch-size", "4"])
    assert code == 0, err
    assert out.count("wrote ") == 2
    for split in ("train", "test"):
        a, b = load_index(one[split]), load_index(pattern.replace("{split}", split))
        assert a.fingerprint["split"] == b.fingerprint["split"] == split
        for key in ("global_img", "region_img", "global_txt", "region_txt", "records", "ids"):
            np.testing.assert_array_equal(getattr(a.arrays, key), getattr(b.arrays, key), err_msg=key)

    # several splits need {split} in --out; a repeated split is refused; nothing is written
    for splits, out_dir, needle in (("train,test", str(root / "flat"), "{split}"),
                                    ("train,train", str(root / "rep_{split}"), "distinct")):
        code, _, err = _main(capsys, ["embed", "--workdir", work, "--data", data, "--split",
                                      splits, "--out", out_dir])
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
        assert not os.path.exists(out_dir.replace("{split}", "train"))
    # an existing output folder stops the run before any split is written
    code, _, err = _main(capsys, ["embed", "--workdir", work, "--data", data, "--split",
                                  "val,train", "--out", str(root / "one_{split}")])
    assert code == 2 and "one_train" in err and not os.path.exists(root / "one_val")
