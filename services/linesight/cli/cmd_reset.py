"""`linesight reset`: delete the embedded stack's state (databases, bus, objects, models, logs).

For a clean slate after experiments; the state dir's configuration (release_gate.yaml) stays.
It stops nothing: while a stack runs from the state dir it refuses and says how to stop it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from linesight.common.embedded.config import SettingsError, load_settings
from linesight.common.embedded.process import EmbeddedError
from linesight.common.embedded.stack import clear_state_dir, running_processes

EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reset",
        help="delete the embedded stack's state (results, labels, models, logs); refuses while it runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--state-dir", type=Path, help="state directory (LINESIGHT_STATE_DIR, default .linesight)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=run_reset)


def run_reset(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    except SettingsError as exc:
        print(f"linesight reset: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    state_dir = Path(settings.state_dir).absolute()
    if not state_dir.exists():
        print(f"nothing to reset: {state_dir} does not exist")
        return 0
    running = running_processes(state_dir)
    if running:  # checked before asking, so nobody confirms a reset that cannot happen
        print(
            f"linesight reset: a LineSight stack is running from {state_dir} ({', '.join(running)}); "
            f"stop it first with `linesight down --state-dir {state_dir}`",
            file=sys.stderr,
        )
        return 1
    if not args.yes and not _confirm(
        f"Delete the LineSight state in {state_dir} (results, labels, models, logs)?"
    ):
        print("reset cancelled; nothing deleted", file=sys.stderr)
        return 1
    try:
        removed = clear_state_dir(state_dir)
    except (EmbeddedError, OSError) as exc:
        print(f"linesight reset: {exc}", file=sys.stderr)
        return 1
    print(f"reset {state_dir}: deleted {', '.join(p.name for p in removed) or 'nothing'}")
    return 0


def _confirm(question: str) -> bool:
    """Ask on the terminal; without one (a script, CI) the answer is no: pass --yes."""
    if not sys.stdin.isatty():
        print(f"{question} no terminal to ask on; pass --yes to reset without asking", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
