"""The `linesight` command. Each sub-command lives in its own `cmd_*.py` module with a
`register(subparsers)` function, so a feature brings its command along."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "linesight.cli.cmd_up",
    "linesight.cli.cmd_reset",
    "linesight.cli.cmd_demo",
    "linesight.cli.cmd_synth",
    "linesight.cli.cmd_eval",
    "linesight.cli.cmd_capture",
    "linesight.cli.cmd_train",
    "linesight.cli.cmd_users",
    "linesight.cli.cmd_dataset",
    "linesight.cli.cmd_model",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linesight", description="AI visual quality inspection for lines.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
