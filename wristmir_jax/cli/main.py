"""Entry point of `wristmir` (and `python -m wristmir_jax`)."""

from __future__ import annotations

import argparse
import glob
import importlib
import importlib.util
import os
import sys

from wristmir_jax.config import split_overrides
from wristmir_jax.errors import UserError

# name -> (module, one-line help). Modules are imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("wristmir_jax.cli.synth", "generate the procedural radiograph + report dataset"),
    "mine": ("wristmir_jax.cli.mine", "mine reports into structured findings, captions (mined.jsonl)"),
    "import-grazpedwri": ("wristmir_jax.cli.import_grazpedwri", "import a GRAZPEDWRI-DX-style dataset"),
    "localize": ("wristmir_jax.cli.localize", "train / predict / evaluate the bone localizer"),
    "build": ("wristmir_jax.cli.build", "build the TFDS ArrayRecord dataset for training"),
    "train": ("wristmir_jax.cli.train", "train the global + local contrastive encoders"),
    "embed": ("wristmir_jax.cli.embed", "embed a split into a retrieval index"),
    "search": ("wristmir_jax.cli.search", "query an index (image, text or id), optionally per bone"),
    "explain": ("wristmir_jax.cli.explain", "a preliminary finding for one bone from the retrieved cases"),
    "box-classifier": ("wristmir_jax.cli.box_classifier", "train the anatomy classifier of drawn boxes"),
    "evaluate": ("wristmir_jax.cli.evaluate", "retrieval and diagnosis metrics for an index"),
    "compare": ("wristmir_jax.cli.compare", "two evaluations query by query: paired difference, interval, p"),
    "aot": ("wristmir_jax.cli.aot", "compile the train step for a TPU topology: fits in HBM? FLOPs"),
    "bench": ("wristmir_jax.cli.bench", "throughput / memory benchmarks (JSON)"),
    "demo": ("wristmir_jax.cli.demo", "the whole pipeline on synthetic data, ending in report.md"),
    "doctor": ("wristmir_jax.cli.doctor", "check a dataset, workdir or index (files, ids, checkpoints, digests)"),
}


def _top_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wristmir",
        description="Region-aware retrieval of pediatric wrist radiographs, trained from reports.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<18} {v[1]}" for k, v in COMMANDS.items())
        + "\n\n`wristmir COMMAND --help` shows a command's options.",
    )
    p.add_argument("command", nargs="?", help="one of the commands below")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def skip_absent_tpu(environ=os.environ) -> None:
    """With libtpu installed (the `tpu` extra, which `wristmir aot` uses on any machine) but no TPU
    attached, every JAX process would probe libtpu, print a page of TPU-initialisation errors and
    fall back to CPU. Without a TPU device node and without a GPU plugin, JAX is told to use the
    CPU; an explicit JAX_PLATFORMS always wins (`wristmir aot` compiles for TPU either way)."""
    if "JAX_PLATFORMS" in environ or importlib.util.find_spec("libtpu") is None:
        return
    if glob.glob("/dev/accel*") or os.path.exists("/dev/vfio"):
        return
    if any(importlib.util.find_spec(m) is not None
           for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin")):
        return
    environ["JAX_PLATFORMS"] = "cpu"


def main(argv: list[str] | None = None) -> None:
    if argv is None:
        # As a program only: a Python caller (tests, a notebook) owns its process's allocator.
        from wristmir_jax.utils.host_memory import keep_freed_memory

        keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    skip_absent_tpu()
    top = _top_parser()
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        from wristmir_jax import __version__

        print(__version__)
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"wristmir: error: unknown command {name!r} (try `wristmir --help`)", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"wristmir {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    try:
        rest, overrides = split_overrides(rest)
    except UserError as e:
        print(f"wristmir {name}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    args = parser.parse_args(rest)
    args.config_overrides = overrides
    try:
        code = module.run(args)
    except UserError as e:
        print(f"wristmir {name}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(f"wristmir {name}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))


if __name__ == "__main__":
    main()
