"""Where the embedded stack's children put their state, and how it restarts them."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import psutil
import pytest

from linesight.common.backoff import Backoff
from linesight.common.embedded import AlreadyRunningError, EmbeddedError, process
from linesight.common.embedded.config import embedded_settings
from linesight.common.embedded.stack import (
    MAX_RESTARTS,
    RESTART_BACKOFF,
    ServiceProcess,
    Stack,
    _Watch,
    clear_state_dir,
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in [k for k in os.environ if k.startswith("LINESIGHT_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_relative_state_dir_is_resolved_once_for_service_work_dirs(clean_env: Path) -> None:
    settings = embedded_settings()  # state_dir = .linesight, relative to where the user runs
    proc = ServiceProcess("inference", settings)
    env = proc.env()
    work = Path(env["LINESIGHT_INFERENCE_WORK_DIR"])
    assert work == clean_env / ".linesight" / "inference"
    # The child runs inside the state dir; an absolute path does not move with its cwd.
    assert work.is_absolute() and proc.state_dir / work == work
    assert Path(env["LINESIGHT_STATE_DIR"]) == clean_env / ".linesight"
    assert not any(".linesight/.linesight" in value for value in env.values())


def test_a_work_dir_the_user_set_wins(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LINESIGHT_INFERENCE_WORK_DIR", "/srv/inference")
    env = ServiceProcess("inference", embedded_settings()).env()
    assert env["LINESIGHT_INFERENCE_WORK_DIR"] == "/srv/inference"


def test_restart_delays_follow_the_shared_backoff_policy(clean_env: Path) -> None:
    stack = Stack(embedded_settings())
    assert stack.restart_backoff is RESTART_BACKOFF and stack.max_restarts == MAX_RESTARTS
    assert [RESTART_BACKOFF.delay(n) for n in range(1, MAX_RESTARTS + 1)] == [0.25, 1.0, 4.0, 16.0, 16.0]
    events: list[str] = []
    fast = Stack(
        embedded_settings(), restart_backoff=Backoff(0.2, 0.2), max_restarts=1, on_event=events.append
    )
    fast.services["mes"] = ServiceProcess("mes", fast.settings)
    watch = _Watch()
    fast._crashed("mes", watch, "exited with code 1")
    assert "restarting in 0.2s (restart 1 of 1)" in events[-1] and fast.failed is None
    fast._crashed("mes", watch, "exited with code 1")
    assert fast.failed is not None and "giving up" in fast.failed


def test_clear_state_dir_keeps_configuration_and_refuses_foreign_folders(clean_env: Path) -> None:
    state = clean_env / "state"
    for sub in ("run", "logs", "postgres", "datasets/synthetic"):
        (state / sub).mkdir(parents=True)
    (state / "release_gate.yaml").write_text("min_defect_recall: 0.8\n")
    removed = clear_state_dir(state, keep=["datasets"])
    assert sorted(p.name for p in removed) == ["logs", "postgres", "run"]
    assert sorted(p.name for p in state.iterdir()) == ["datasets", "release_gate.yaml"]
    home = clean_env / "home"
    (home / "photos").mkdir(parents=True)
    with pytest.raises(EmbeddedError, match="does not look like a LineSight state dir"):
        clear_state_dir(home)
    assert (home / "photos").is_dir()


def test_clear_state_dir_refuses_while_a_stack_runs_from_it(clean_env: Path) -> None:
    state = clean_env / "state"
    (state / "run").mkdir(parents=True)
    me = psutil.Process()
    (state / "run" / "supervisor.pid").write_text(
        json.dumps({"pid": me.pid, "create_time": me.create_time()})
    )
    with pytest.raises(AlreadyRunningError, match="linesight down"):
        clear_state_dir(state)
    assert (state / "run" / "supervisor.pid").exists()


def test_free_ports_stay_out_of_the_range_the_kernel_gives_outgoing_connections() -> None:
    """A restarted server keeps its ports: one a client connection could have taken meanwhile (a
    local port from the kernel's range) would keep it from coming back."""
    low, high = process.ephemeral_ports()
    given: list[int] = []
    for also_free in ((), (10000,), (4000,)):
        for _ in range(30):
            port = process.free_port(also_free=also_free)
            for p in (port, *(port + off for off in also_free)):
                assert not low <= p <= high, (p, low, high)
                assert process.port_is_free("127.0.0.1", p)
                given.append(p)
    # drawn before any server binds them (as a test's settings are), they must still be distinct
    assert len(set(given)) == len(given)


def test_free_port_falls_back_to_the_kernel_and_never_hands_out_a_busy_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(process, "ephemeral_ports", lambda: (1024, 65535))
    port = process.free_port()
    assert 1024 <= port <= 65535 and process.port_is_free("127.0.0.1", port)
    with socket.socket() as held:  # a port in use is never handed out, whatever the draw
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        monkeypatch.setattr(process, "ephemeral_ports", lambda: (taken, taken))
        monkeypatch.setattr(process.random.SystemRandom, "randint", lambda _self, _a, _b: taken)
        with pytest.raises(EmbeddedError, match="free port"):
            process.free_port()
