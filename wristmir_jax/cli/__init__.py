"""The `wristmir` command line: thin wiring from arguments to the stage packages.

Each subcommand lives in its own module here with two functions:
  add_arguments(parser: argparse.ArgumentParser) -> None
  run(args: argparse.Namespace) -> int | None
Modules are imported only when their command runs, so `wristmir synth` never imports JAX.
"""
