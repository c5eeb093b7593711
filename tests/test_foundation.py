"""The shared foundation: findings schema and its integer encoding, config overrides,
JSON-lines reading with line numbers, atomic outputs, and CLI error handling."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wristmir_jax import schema
from wristmir_jax.config import apply_overrides, load_config, split_overrides
from wristmir_jax.errors import UserError
from wristmir_jax.utils.fs import atomic_output_dir, atomic_write
from wristmir_jax.utils.jsonl import BadLine, Rejects, iter_jsonl, rejects_path


def _all_region_values():
    yield schema.empty_region()
    for status in ("present", "uncertain"):
        for pattern in schema.PATTERNS + (None,):
            grades = (1, 2, 5) if pattern == "salter_harris" else (None,)
            for sh, disp, ang, heal in itertools.product(grades, (None, True, False), (None, True), (False, True)):
                yield {"fracture": status, "pattern": pattern, "salter_harris": sh,
                       "displaced": disp, "angulated": ang, "healing": heal}


def test_record_encoding_round_trips_every_region_value():
    g = {"laterality": "left", "cast": True, "hardware": False, "soft_tissue_swelling": True,
         "other_fracture": False}
    seen = set()
    for r in _all_region_values():
        regions = {"distal_radius": r, "distal_ulna": schema.empty_region(),
                   "ulnar_styloid": dict(r)}
        rec = schema.encode_record(regions, g)
        assert rec.shape == (schema.RECORD_LEN,) and rec.dtype == np.int32
        back_regions, back_g = schema.decode_record(rec)
        assert back_regions == regions and back_g == g
        seen.add(rec.tobytes())
    # Distinct findings give distinct codes (the encoding loses nothing).
    assert len(seen) == sum(1 for _ in _all_region_values())


def test_offsets_address_the_documented_fields():
    regions, g = schema.empty_findings()
    regions["distal_ulna"] = {"fracture": "present", "pattern": "salter_harris", "salter_harris": 2,
                              "displaced": True, "angulated": False, "healing": False}
    g["laterality"] = "right"
    rec = schema.encode_record(regions, g)
    o = schema.region_offset("distal_ulna")
    assert rec[o + schema.FIELD_INDEX["fracture"]] == schema.FRACTURE_STATUS.index("present")
    assert rec[o + schema.FIELD_INDEX["pattern"]] == 1 + schema.PATTERNS.index("salter_harris")
    assert rec[o + schema.FIELD_INDEX["salter_harris"]] == 2
    assert rec[schema.GLOBAL_INDEX["laterality"]] == 2
    labels = schema.fracture_labels(rec[None])
    assert labels.tolist() == [[0, 1, 0]]


@pytest.mark.parametrize("mutate,needle", [
    (lambda r, g: r["distal_radius"].update(fracture="broken"), "fracture"),
    (lambda r, g: r["distal_radius"].update(pattern="buckle"), "fracture absent"),
    (lambda r, g: r["distal_radius"].update(fracture="present", pattern="buckle", salter_harris=2), "salter_harris"),
    (lambda r, g: r["distal_radius"].update(fracture="present", salter_harris=7, pattern="salter_harris"), "1..5"),
    (lambda r, g: r.pop("ulnar_styloid"), "missing"),
    (lambda r, g: g.update(cast="yes"), "global.cast"),
    (lambda r, g: g.update(laterality="both"), "laterality"),
    (lambda r, g: r["distal_ulna"].update(extra=1), "unknown field"),
])
def test_validation_names_the_bad_field(mutate, needle):
    regions, g = schema.empty_findings()
    mutate(regions, g)
    with pytest.raises(schema.SchemaError, match=needle):
        schema.validate_findings(regions, g)


def test_box_validation():
    schema.validate_box([1, 2, 30, 40], 64, 64)
    for bad in ([5, 5, 4, 10], [0, 0, 70, 10], [0, 0, float("nan"), 1], [1, 2, 3]):
        with pytest.raises(schema.SchemaError):
            schema.validate_box(bad, 64, 64)


def test_config_file_and_overrides(tmp_path):
    p = tmp_path / "c.py"
    p.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.optim = ml_collections.ConfigDict(dict(lr=1e-3, steps=10, name='adamw', freeze=('a',)))\n"
        "    c.flag = False\n"
        "    c.variant = arg or 'base'\n"
        "    return c\n")
    rest, ov = split_overrides(["--workdir", "w", "--config.optim.lr=3e-4", "--config.flag", "true",
                                "--config.optim.steps=20", "--config.optim.freeze=['x','y']"])
    assert rest == ["--workdir", "w"]
    cfg = load_config(f"{p}:quick", ov)
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.steps == 20 and cfg.flag is True
    assert tuple(cfg.optim.freeze) == ("x", "y") and cfg.variant == "quick"
    with pytest.raises(UserError, match="no config field"):
        apply_overrides(cfg, ["--config.optim.nope=1"])
    with pytest.raises(UserError, match="bad override"):
        apply_overrides(cfg, ["--config.optim.steps=abc"])
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "missing.py"))


def test_jsonl_reports_bad_lines_with_numbers(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_bytes(b'{"id": "a"}\n\nnot json\n[1, 2]\n{"id": "\xff"}\n' + b'\xff\xfe{"id": 1}\n')
    out = list(iter_jsonl(p))
    assert [ln for ln, _ in out] == [1, 3, 4, 5, 6]
    assert out[0][1] == {"id": "a"}
    kinds = [type(o).__name__ for _, o in out]
    assert kinds == ["dict", "BadLine", "BadLine", "BadLine", "BadLine"]
    assert "JSON" in out[1][1].reason and "object" in out[2][1].reason and "UTF-8" in out[4][1].reason
    assert isinstance(out[3][1], BadLine)


def test_rejects_count_and_strict(tmp_path):
    rj = Rejects("m.jsonl")
    rj.add(3, "empty report", id="x")
    assert len(rj) == 1
    path = rejects_path(str(tmp_path / "mined.jsonl"))
    assert path.endswith("mined.rejects.jsonl")
    rj.write(path)
    rows = [json.loads(l) for l in open(path)]
    assert rows == [{"source": "m.jsonl", "line": 3, "reason": "empty report", "id": "x"}]
    with pytest.raises(UserError, match=r"m.jsonl:7: bad"):
        Rejects("m.jsonl", strict=True).add(7, "bad")


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            open(os.path.join(tmp, "half.txt"), "w").write("x")
            raise RuntimeError("boom")
    assert not out.exists() and os.listdir(tmp_path) == []
    with atomic_output_dir(out) as tmp:
        open(os.path.join(tmp, "done.txt"), "w").write("x")
    assert os.listdir(out) == ["done.txt"]
    with pytest.raises(UserError, match="not empty"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, overwrite=True) as tmp:
        open(os.path.join(tmp, "new.txt"), "w").write("y")
    assert os.listdir(out) == ["new.txt"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")
    with pytest.raises(ValueError):
        with atomic_write(p) as f:
            f.write("new")
            raise ValueError
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_cli_unknown_command_and_help_exit_codes():
    run = lambda *a: subprocess.run([sys.executable, "-m", "wristmir_jax", *a], capture_output=True, text=True)
    r = run("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr
    r = run("--help")
    assert r.returncode == 0 and "synth" in r.stdout and "demo" in r.stdout
    r = run()
    assert r.returncode == 2


def test_cli_uses_the_cpu_when_libtpu_is_installed_without_a_tpu():
    import importlib.util

    from wristmir_jax.cli import main as cli_main

    env = {}
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    cli_main.skip_absent_tpu(env)
    import glob
    import os
    tpu_attached = bool(glob.glob("/dev/accel*")) or os.path.exists("/dev/vfio")
    assert env == ({"JAX_PLATFORMS": "cpu"} if has_libtpu and not tpu_attached else {})
    explicit = {"JAX_PLATFORMS": "tpu"}
    cli_main.skip_absent_tpu(explicit)
    assert explicit == {"JAX_PLATFORMS": "tpu"}
