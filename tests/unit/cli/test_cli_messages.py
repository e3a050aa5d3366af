"""What the CLI tells a newcomer: `down` and `reset` messages, the demo's training progress,
its per-run state, and help texts a user can act on."""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from linesight.cli import cmd_demo, cmd_reset
from linesight.cli.cmd_up import down_message
from linesight.cli.main import build_parser
from linesight.common.embedded import AlreadyRunningError
from linesight.common.embedded.stack import StopReport


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in [k for k in os.environ if k.startswith("LINESIGHT_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _pretend_running(state_dir: Path) -> None:
    """A supervisor pid file naming this (live) test process."""
    (state_dir / "run").mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    (state_dir / "run" / "supervisor.pid").write_text(
        json.dumps({"pid": me.pid, "create_time": me.create_time()})
    )


def test_down_says_it_stopped_the_stack_not_one_process(tmp_path: Path) -> None:
    whole = down_message(StopReport(supervisor_pid=42), tmp_path)
    assert "stopped the LineSight stack" in whole and "42" in whole and "1 process" not in whole
    left = down_message(StopReport(leftovers=("nats pid 7", "s3 pid 8")), tmp_path)
    assert "2 left-over process(es): nats pid 7, s3 pid 8" in left
    assert down_message(StopReport(), tmp_path) == f"nothing was running from {tmp_path}"


def test_eta_from_the_pace_so_far() -> None:
    assert cmd_demo.eta_text(0.0, 10.0) == "--:--"
    assert cmd_demo.eta_text(0.5, 90.0) == "1:30"
    assert cmd_demo.eta_text(0.25, 60.0) == "3:00"
    assert cmd_demo.eta_text(1.0, 60.0) == "0:00"


def test_progress_without_a_terminal_is_one_line_per_stage() -> None:
    said: list[str] = []
    view = cmd_demo.ProgressView(said.append, Console(file=io.StringIO()))
    view._t0 = 0.0
    for stage, fraction, now in [("features", 0.1, 10.0), ("features", 0.2, 20.0), ("heads", 0.5, 60.0)]:
        view.update(stage, fraction, now=now)
    view.close()
    assert said == ["training: features 10% (ETA 1:30)", "training: heads 50% (ETA 1:00)"]


def test_progress_on_a_terminal_is_a_bar_with_stage_percent_and_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    view = cmd_demo.ProgressView(lambda _m: pytest.fail("a terminal gets a bar, not lines"), console)
    view._t0 = 0.0
    view.update("patchcore", 0.4, now=40.0)
    assert view._bar is not None
    view._bar.refresh()
    text = out.getvalue()
    view.close()
    assert "patchcore" in text and "40%" in text and "ETA 1:00" in text


def test_each_demo_run_starts_from_fresh_state_with_the_plants_gate(clean_env: Path) -> None:
    base = clean_env / ".linesight"
    first = cmd_demo.fresh_demo_state(base)
    assert first == base / "demo"
    for sub in ("postgres/data", "logs", "s3/data"):
        (first / sub).mkdir(parents=True)
    (first / "postgres" / "data" / "results").write_text("240 results of the first run")
    (base / "datasets" / "synthetic").mkdir(parents=True)
    (base / "release_gate.yaml").write_text("max_false_reject_rate: 0.1\n")

    second = cmd_demo.fresh_demo_state(base)
    assert second == first
    assert sorted(p.name for p in second.iterdir()) == ["release_gate.yaml"]
    assert (second / "release_gate.yaml").read_text() == "max_false_reject_rate: 0.1\n"
    assert (base / "datasets" / "synthetic").is_dir(), "the cached dataset survives"

    (base / "release_gate.yaml").unlink()
    assert list(cmd_demo.fresh_demo_state(base).iterdir()) == [], "no stale copy of a removed gate"


def test_demo_refuses_to_clear_the_state_of_a_running_stack(clean_env: Path) -> None:
    demo = clean_env / ".linesight" / "demo"
    (demo / "postgres").mkdir(parents=True)
    _pretend_running(demo)
    with pytest.raises(AlreadyRunningError, match="linesight down"):
        cmd_demo.fresh_demo_state(clean_env / ".linesight")
    assert (demo / "postgres").is_dir()


def _reset(*args: str) -> int:
    parsed: argparse.Namespace = build_parser().parse_args(["reset", *args])
    code: int = parsed.func(parsed)
    return code


def test_reset_asks_refuses_while_running_and_keeps_the_gate(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = clean_env / ".linesight"
    for sub in ("postgres", "logs", "demo/s3"):
        (state / sub).mkdir(parents=True)
    (state / "release_gate.yaml").write_text("min_defect_recall: 0.8\n")

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))  # not a terminal: no means no
    assert _reset() == 1 and "--yes" in capsys.readouterr().err
    monkeypatch.setattr(cmd_reset.sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda _q: "n")
    assert _reset() == 1 and "cancelled" in capsys.readouterr().err
    assert (state / "postgres").is_dir()

    _pretend_running(state)
    assert _reset("--yes") == 1
    err = capsys.readouterr().err
    assert "running" in err and "linesight down" in err and (state / "postgres").is_dir()
    (state / "run" / "supervisor.pid").unlink()

    monkeypatch.setattr("builtins.input", lambda _q: "y")
    assert _reset() == 0
    assert sorted(p.name for p in state.iterdir()) == ["release_gate.yaml"]
    assert _reset("--yes") == 0


def test_help_texts_do_not_point_at_tracker_items() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = sub.format_help().lower()
        assert "issue " not in text and "ticket" not in text, (
            f"`linesight {name} --help` names a tracker item"
        )
    assert "reset" in subparsers.choices
