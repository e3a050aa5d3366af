"""`linesight up` (run the embedded stack in the foreground) and `linesight down` (stop a stack).

Flags override LINESIGHT_* variables, which override the defaults in linesight.common.settings.
Every error a user can cause (unknown variable, occupied port, stale or live pid file, server that
dies on start) ends with a one-paragraph message and exit code 1 (2 for bad configuration), with
nothing left running.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from linesight.common.embedded.config import SettingsError, embedded_settings, load_settings
from linesight.common.embedded.process import EmbeddedError
from linesight.common.embedded.stack import SERVICE_MODULES, Stack, StopReport, stop_state_dir
from linesight.common.settings import Settings
from linesight.labeling.service import first_admin_password_path

EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    up = subparsers.add_parser(
        "up",
        help="start NATS, PostgreSQL, S3 and every service; Ctrl-C stops all",
        description="Start the embedded stack in the foreground. State lives in --state-dir and "
        "survives restarts. Ports: flags here or LINESIGHT_* variables.",
    )
    up.add_argument(
        "--state-dir", type=Path, help="state directory (LINESIGHT_STATE_DIR, default .linesight)"
    )
    up.add_argument("--host", help="address to bind (LINESIGHT_HOST)")
    up.add_argument("--nats-port", type=int, help="NATS client port (LINESIGHT_NATS_PORT)")
    up.add_argument("--pg-port", type=int, help="PostgreSQL port (LINESIGHT_PG_PORT)")
    up.add_argument("--s3-port", type=int, help="S3 port (LINESIGHT_S3_PORT)")
    up.add_argument(
        "--services",
        help=f"comma-separated services to run (default all: {','.join(SERVICE_MODULES)})",
    )
    up.add_argument("--no-services", action="store_true", help="start only the servers")
    up.add_argument("--triton", action="store_true", help="also start the Triton inference server")
    up.add_argument("--timeout", type=float, help="seconds to wait for each component to become ready")
    up.set_defaults(func=run_up)

    down = subparsers.add_parser("down", help="stop a stack started by `linesight up` (uses its pid files)")
    down.add_argument(
        "--state-dir", type=Path, help="state directory (LINESIGHT_STATE_DIR, default .linesight)"
    )
    down.set_defaults(func=run_down)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults < LINESIGHT_* environment < flags; pg_dsn / nats_url / s3_endpoint follow the ports."""
    over: dict[str, Any] = {}
    for name in ("state_dir", "host", "nats_port", "pg_port", "s3_port"):
        value = getattr(args, name, None)
        if value is not None:
            over[name] = value
    over.setdefault("mes_opcua", os.environ.get("LINESIGHT_MES_OPCUA", "true"))  # MES serves OPC UA
    return embedded_settings(triton=bool(getattr(args, "triton", False)), **over)


def run_up(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        print(f"linesight up: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.no_services:
        services: list[str] = []
    elif args.services:
        services = [s.strip() for s in args.services.split(",") if s.strip()]
    else:
        services = list(SERVICE_MODULES)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            stop.set()
            raise KeyboardInterrupt  # interrupts a start-up in progress; the handler below cleans up

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    stack = Stack(settings, triton=args.triton)
    code = 0
    ran = False  # a refused start (stack already running, port taken) started and stopped nothing
    try:
        try:
            stack.start(services, timeout=args.timeout)
            ran = True
            print_urls(stack)
            if not stack.wait(stop):
                code = 1
        except KeyboardInterrupt:
            ran = True
            print("\nstopping ...", file=sys.stderr)
        except EmbeddedError as exc:
            print(f"linesight up: {exc}", file=sys.stderr)
            code = 1
    finally:
        # A second Ctrl-C must not interrupt the orderly stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if ran:
        print("stopped; state kept in " + str(stack.state_dir), file=sys.stderr)
    return code


def print_urls(stack: Stack) -> None:
    width = max(len(k) for k in stack.urls())
    print("\nLineSight is up:")
    for name, url in stack.urls().items():
        print(f"  {name:<{width}}  {url}")
    if (password_file := first_admin_password_path(stack.state_dir)).exists():
        print(f"First sign-in: user 'admin', one-time password in {password_file}")
    print("Press Ctrl-C to stop everything.\n", flush=True)


def run_down(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(**({"state_dir": args.state_dir} if args.state_dir else {}))
    except SettingsError as exc:
        print(f"linesight down: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    state_dir = Path(settings.state_dir).absolute()
    report = stop_state_dir(state_dir, on_event=lambda m: print(m, file=sys.stderr))
    print(down_message(report, state_dir))
    return 0


def down_message(report: StopReport, state_dir: Path) -> str:
    """One line on what `down` stopped: the stack (the supervisor takes its children along)
    and/or processes a killed supervisor left behind."""
    parts = []
    if report.supervisor_pid is not None:
        pid = report.supervisor_pid
        parts.append(f"stopped the LineSight stack (supervisor pid {pid} with its servers and services)")
    if report.leftovers:
        parts.append(f"stopped {len(report.leftovers)} left-over process(es): {', '.join(report.leftovers)}")
    if not parts:
        return f"nothing was running from {state_dir}"
    return "; ".join(parts) + f" (state dir {state_dir})"
