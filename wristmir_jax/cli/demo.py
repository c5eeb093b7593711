"""`wristmir demo --out DIR [--quick]`: the whole system on the built-in synthetic dataset.

synth -> mine -> localize (train + predict) -> build -> train -> embed (database + queries)
-> evaluate -> report.md. Each stage runs as its own `wristmir` subprocess (the same commands a
user would type), writes into DIR, and leaves a marker `DIR/.stages/<stage>.json` holding its
arguments; a rerun skips every stage whose marker matches, so an interrupted demo resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

from wristmir_jax.errors import UserError
from wristmir_jax.utils.fs import atomic_write

# Sizes: the full demo targets ~25 min on 2 CPU cores, --quick ~5 min.
FULL = dict(n=2000, image_size=512, localizer_steps=1500, train_config="cpu_demo", train_overrides=())
QUICK = dict(n=400, image_size=512, localizer_steps=400, train_config="cpu_demo:quick", train_overrides=())


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--quick", action="store_true", help="small sizes (~5 minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rerun every stage")


def _stage_plan(out: str, sizes: dict, seed: int, config_dir: str) -> list[tuple[str, list[str]]]:
    synth = os.path.join(out, "synth")
    manifest = os.path.join(synth, "manifest.jsonl")
    mined = os.path.join(out, "mined.jsonl")
    loc = os.path.join(out, "localizer")
    boxes = os.path.join(out, "boxes.jsonl")
    data = os.path.join(out, "data")
    work = os.path.join(out, "workdir")
    cfg = os.path.join(config_dir, sizes["train_config"].split(":")[0] + ".py")
    cfg_arg = cfg + (":" + sizes["train_config"].split(":")[1] if ":" in sizes["train_config"] else "")
    return [
        ("synth", ["synth", "--out", synth, "--n", str(sizes["n"]), "--seed", str(seed),
                   "--image-size", str(sizes["image_size"]), "--overwrite"]),
        ("mine", ["mine", "--manifest", manifest, "--out", mined]),
        ("localize-train", ["localize", "train", "--manifest", manifest,
                            "--boxes", os.path.join(synth, "gold.jsonl"), "--workdir", loc,
                            "--steps", str(sizes["localizer_steps"])]),
        ("localize-predict", ["localize", "predict", "--manifest", manifest, "--workdir", loc,
                              "--out", boxes]),
        ("localize-eval", ["localize", "eval", "--manifest", manifest,
                           "--boxes", os.path.join(synth, "gold.jsonl"), "--pred", boxes,
                           "--split", "test", "--out", os.path.join(out, "localizer_eval.json")]),
        ("build", ["build", "--manifest", manifest, "--mined", mined, "--boxes", boxes,
                   "--out", data, "--overwrite"]),
        ("train", ["train", "--config", cfg_arg, "--workdir", work,
                   f"--config.data.dir={data}", *sizes["train_overrides"]]),
        ("embed-train", ["embed", "--workdir", work, "--data", data, "--split", "train",
                         "--out", os.path.join(out, "index_train")]),
        ("embed-test", ["embed", "--workdir", work, "--data", data, "--split", "test",
                        "--out", os.path.join(out, "index_test")]),
        ("evaluate", ["evaluate", "--index", os.path.join(out, "index_test"),
                      "--train-index", os.path.join(out, "index_train"), "--queries", "test",
                      "--out", os.path.join(out, "eval", "metrics.json")]),
    ]


def _marker(out: str, stage: str) -> str:
    return os.path.join(out, ".stages", f"{stage}.json")


def _done(out: str, stage: str, argv: list[str]) -> bool:
    try:
        with open(_marker(out, stage)) as f:
            return json.load(f).get("argv") == argv
    except (OSError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError("exists and is not a directory", path=out)
    os.makedirs(os.path.join(out, ".stages"), exist_ok=True)
    sizes = QUICK if args.quick else FULL
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_dir = os.path.join(root, "configs")
    plan = _stage_plan(out, sizes, args.seed, config_dir)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    t_all = time.time()
    timings = {}
    for i, (stage, argv) in enumerate(plan, start=1):
        head = f"[{i}/{len(plan) + 1}] {stage}"
        if not args.force and _done(out, stage, argv):
            print(f"{head}: done earlier, skipped", flush=True)
            continue
        print(f"{head}: wristmir {' '.join(shlex.quote(a) for a in argv)}", flush=True)
        t0 = time.time()
        log_path = os.path.join(out, "logs", f"{stage}.log")
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, "-m", "wristmir_jax", *argv], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)
        dt = time.time() - t0
        timings[stage] = round(dt, 1)
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

    report = write_report(out, quick=args.quick, stage_seconds=_all_timings(out))
    print(f"demo finished in {time.time() - t_all:.0f}s; report: {report}")
    return 0


def _all_timings(out: str) -> dict:
    res = {}
    stages = os.path.join(out, ".stages")
    for name in sorted(os.listdir(stages)):
        try:
            with open(os.path.join(stages, name)) as f:
                res[name[:-5]] = round(json.load(f).get("seconds", 0.0), 1)
        except (OSError, ValueError):
            continue
    return res


def _tail(path: str, n: int) -> str:
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])
