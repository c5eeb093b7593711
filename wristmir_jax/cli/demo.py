"""`wristmir demo --out DIR [--quick]`: the whole system on the built-in synthetic dataset.

synth -> mine -> localize (train + predict) -> build -> train -> embed (database + queries)
-> evaluate -> report.md. Each stage runs as its own `wristmir` subprocess (the same commands a
user would type), writes into DIR, and leaves a marker `DIR/.stages/<stage>.json` holding its
arguments; a rerun skips every stage whose marker matches, so an interrupted demo resumes (see
`run` for what is redone when an argument changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from wristmir_jax.errors import UserError
from wristmir_jax.utils.fs import atomic_write

# Sizes: the full demo takes 19-32 min on 2 CPU cores, by the CPU (target 25), --quick 3-5 min
# (target 5).
# The bone crops come from the original 512 px image, so 64 px crops keep the fracture detail while
# the 128 px global image (like a thumbnail) does not: the point of the region stage.
# The captions are tokenised for the packaged all-MiniLM-L6-v2 text tower cpu_demo uses (frozen).
FULL = dict(n=2000, image_size=512, localizer_config="localizer", localizer_steps=1000,
            localizer_batch=16, data_image_size=128, data_crop_size=64, tokenizer="minilm",
            train_config="cpu_demo", train_overrides=())
# --quick (configs/localizer.py:quick) skips the styloid refiner (its compile and steps cost
# ~30 s of a 5-minute budget).
QUICK = dict(n=400, image_size=512, localizer_config="localizer:quick", localizer_steps=100,
             localizer_batch=16, data_image_size=128, data_crop_size=64,
             tokenizer="minilm", train_config="cpu_demo:quick", train_overrides=())


CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "configs")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--quick", action="store_true", help="small sizes (under 5 minutes on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rerun every stage")


def _config_arg(config_dir: str, name: str) -> str:
    """"cpu_demo:quick" -> "<config_dir>/cpu_demo.py:quick"."""
    base, sep, arg = name.partition(":")
    return os.path.join(config_dir, base + ".py") + sep + arg


def _stage_plan(out: str, sizes: dict, seed: int, config_dir: str) -> list[tuple[str, list[str], list[str]]]:
    """(stage, wristmir argv, the paths the stage writes: removed before it reruns from scratch)."""
    synth = os.path.join(out, "synth")
    manifest = os.path.join(synth, "manifest.jsonl")
    mined = os.path.join(out, "mined.jsonl")
    loc = os.path.join(out, "localizer")
    boxes = os.path.join(out, "boxes.jsonl")
    data = os.path.join(out, "data")
    work = os.path.join(out, "workdir")
    cfg_arg = _config_arg(config_dir, sizes["train_config"])
    return [
        ("synth", ["synth", "--out", synth, "--n", str(sizes["n"]), "--seed", str(seed),
                   "--image-size", str(sizes["image_size"]), "--overwrite"], [synth]),
        ("mine", ["mine", "--manifest", manifest, "--out", mined], [mined]),
        ("localize-train", ["localize", "train", "--config", _config_arg(config_dir, sizes["localizer_config"]),
                            "--workdir", loc, f"--config.data.manifest={manifest}",
                            f"--config.data.boxes={os.path.join(synth, 'gold.jsonl')}",
                            f"--config.train.steps={sizes['localizer_steps']}",
                            f"--config.data.global_batch_size={sizes['localizer_batch']}"], [loc]),
        ("localize-predict", ["localize", "predict", "--manifest", manifest, "--workdir", loc,
                              "--out", boxes], [boxes]),
        ("localize-eval", ["localize", "eval", "--manifest", manifest,
                           "--boxes", os.path.join(synth, "gold.jsonl"), "--pred", boxes,
                           "--split", "test", "--out", os.path.join(out, "localizer_eval.json")],
         [os.path.join(out, "localizer_eval.json")]),
        ("build", ["build", "--manifest", manifest, "--mined", mined, "--boxes", boxes,
                   "--out", data, "--image-size", str(sizes["data_image_size"]),
                   "--crop-size", str(sizes["data_crop_size"]), "--tokenizer", sizes["tokenizer"],
                   "--overwrite"], [data]),
        ("train", ["train", "--config", cfg_arg, "--workdir", work,
                   f"--config.data.dir={data}", *sizes["train_overrides"]], [work]),
        # One process for both indexes: one restore and one compile instead of two.
        ("embed", ["embed", "--workdir", work, "--data", data, "--split", "train,test",
                   "--out", os.path.join(out, "index_{split}")],
         [os.path.join(out, "index_train"), os.path.join(out, "index_test")]),
        ("evaluate", ["evaluate", "--index", os.path.join(out, "index_test"),
                      "--train-index", os.path.join(out, "index_train"), "--queries", "test",
                      "--out", os.path.join(out, "eval", "metrics.json"),
                      "--grounding-boxes", os.path.join(synth, "gold.jsonl"),
                      "--gold", os.path.join(synth, "gold.jsonl")], [os.path.join(out, "eval")]),
    ]


def _marker(out: str, stage: str, suffix: str = "") -> str:
    return os.path.join(out, ".stages", f"{stage}{suffix}.json")


def _matches(path: str, argv: list[str]) -> bool:
    try:
        with open(path) as f:
            return json.load(f).get("argv") == argv
    except (OSError, ValueError):
        return False


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def run(args: argparse.Namespace) -> int:
    """Runs the plan. A stage is skipped when its marker holds the same argv and nothing before it
    ran in this invocation. A stage that was started with the same argv but not finished (an
    interrupted run) is run again over its partial output, so training resumes from its last
    checkpoint; any other stage that runs starts from scratch (its outputs are removed first)."""
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError("exists and is not a directory", path=out)
    os.makedirs(os.path.join(out, ".stages"), exist_ok=True)
    sizes = QUICK if args.quick else FULL
    plan = _stage_plan(out, sizes, args.seed, CONFIG_DIR)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t_all = time.time()
    upstream_ran = bool(args.force)
    for i, (stage, argv, outputs) in enumerate(plan, start=1):
        head = f"[{i}/{len(plan) + 1}] {stage}"
        if not upstream_ran and _matches(_marker(out, stage), argv):
            print(f"{head}: done earlier, skipped", flush=True)
            continue
        resume = not upstream_ran and _matches(_marker(out, stage, ".started"), argv)
        upstream_ran = True
        _remove(_marker(out, stage))
        if not resume:
            for path in outputs:
                _remove(path)
        with atomic_write(_marker(out, stage, ".started")) as f:
            json.dump({"argv": argv}, f)
        print(f"{head}: {'resuming ' if resume else ''}wristmir {' '.join(shlex.quote(a) for a in argv)}",
              flush=True)
        t0 = time.time()
        log_path = os.path.join(out, "logs", f"{stage}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "a" if resume else "w") as log:
            proc = subprocess.run([sys.executable, "-m", "wristmir_jax", *argv], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        dt = time.time() - t0
        if proc.returncode != 0:
            tail = _tail(log_path, 15)
            print(tail, file=sys.stderr)
            raise UserError(f"stage {stage} failed with exit code {proc.returncode} "
                            f"(full log: {log_path})")
        print(f"{head}: finished in {dt:.0f}s", flush=True)
        with atomic_write(_marker(out, stage)) as f:
            json.dump({"argv": argv, "seconds": dt}, f)
    print(f"[{len(plan) + 1}/{len(plan) + 1}] report", flush=True)
    from wristmir_jax.eval.demo_report import write_report

    report = write_report(out, quick=args.quick, stage_seconds=_all_timings(out, [p[0] for p in plan]))
    print(f"demo finished in {time.time() - t_all:.0f}s; report: {report}")
    return 0


def _all_timings(out: str, stages: list[str]) -> dict:
    """Seconds per stage from the markers (in plan order), including stages of earlier runs."""
    res = {}
    for stage in stages:
        try:
            with open(_marker(out, stage)) as f:
                res[stage] = round(json.load(f).get("seconds", 0.0), 1)
        except (OSError, ValueError):
            continue
    return res


def _tail(path: str, n: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])
