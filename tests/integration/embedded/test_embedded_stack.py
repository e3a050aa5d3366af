"""The supervisor (Stack) and `linesight up` / `down`: start, restart, stop with nothing left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import psycopg
import pytest

from linesight.common.backoff import Backoff
from linesight.common.embedded import EmbeddedError, PortInUseError
from linesight.common.embedded.config import SettingsError, load_settings, settings_env, unknown_env_vars
from linesight.common.embedded.stack import Stack

pytestmark = pytest.mark.integration

DUMMY = Path(__file__).with_name("dummy_service.py")
REPO = Path(__file__).resolve().parents[3]
CLI = (
    "import sys, argparse\n"
    "from linesight.cli import cmd_reset, cmd_up\n"
    "p = argparse.ArgumentParser(prog='linesight'); sub = p.add_subparsers(required=True)\n"
    "cmd_up.register(sub); cmd_reset.register(sub); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def _dummy(name: str, marker: Path | None = None) -> list[str]:
    return [sys.executable, str(DUMMY), name, *([str(marker)] if marker else [])]


def _wait(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_stack_starts_supervises_and_stops_everything(make_settings, pg_template, watch) -> None:
    settings = make_settings()
    marker = settings.state_dir.parent / "crash-mes"
    stack = Stack(
        settings,
        durable=False,
        service_commands={"labeling": _dummy("labeling"), "mes": _dummy("mes", marker)},
        restart_backoff=Backoff(base_s=0.2, cap_s=0.2),
        max_restarts=2,
        on_event=lambda m: None,
    )
    stack.postgres.template = pg_template
    try:
        stack.start(["labeling", "mes"])
        for p in (stack.nats, stack.postgres, stack.s3, *stack.services.values()):
            watch.add(p.pid)
        urls = stack.urls()
        assert urls["labeling UI"] == f"http://127.0.0.1:{settings.http_ports['labeling']}/"
        assert urls["PostgreSQL"] == settings.pg_dsn and "mes health" in urls
        assert set(stack.timings) == {"nats", "postgres", "s3", "labeling", "mes"}

        # A crashed service is restarted ...
        mes = stack.services["mes"]
        first = mes.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: mes.pid not in (None, first) and mes.is_healthy())
        watch.add(mes.pid)
        # ... but not forever: one that keeps crashing makes the stack give up.
        marker.touch()
        os.kill(mes.pid, signal.SIGKILL)
        assert stack.failed_event.wait(30)
        assert stack.failed is not None and "mes" in stack.failed
        assert stack.services["labeling"].is_running()
    finally:
        stack.stop()
    assert not watch.alive(), f"left behind: {watch.alive()}"
    assert not list((settings.state_dir / "run").glob("*.pid"))


def test_missing_service_module_fails_before_anything_starts(make_settings, monkeypatch) -> None:
    settings = make_settings()
    from linesight.common.embedded import stack as stack_mod

    monkeypatch.setitem(stack_mod.SERVICE_MODULES, "labeling", "linesight.no_such_service")
    stack = Stack(settings, on_event=lambda m: None)
    with pytest.raises(EmbeddedError, match=r"labeling \(linesight.no_such_service.__main__ not found\)"):
        stack.start(["labeling"])
    assert stack.nats.pid is None and not (settings.state_dir / "run" / "nats.pid").exists()


def test_occupied_service_port_fails_before_anything_starts(make_settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = make_settings(http_ports={"mes": port})
        stack = Stack(settings, service_commands={"mes": _dummy("mes")}, on_event=lambda m: None)
        with pytest.raises(PortInUseError) as err:
            stack.start(["mes"])
    assert f"127.0.0.1:{port} for mes" in str(err.value) and "LINESIGHT_HTTP_PORTS" in str(err.value)
    assert not stack.nats.is_running()


def test_unknown_linesight_variable_is_reported(monkeypatch) -> None:
    monkeypatch.setenv("LINESIGHT_NATS_PROT", "1")
    assert "LINESIGHT_NATS_PROT" in unknown_env_vars()
    with pytest.raises(SettingsError, match=r"LINESIGHT_NATS_PROT \(did you mean LINESIGHT_NATS_PORT\?\)"):
        load_settings()


def test_bad_value_is_reported(monkeypatch) -> None:
    monkeypatch.setenv("LINESIGHT_PG_PORT", "not-a-port")
    with pytest.raises(SettingsError, match="LINESIGHT_PG_PORT"):
        load_settings()


def _cli_env(settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINESIGHT_")}
    env.update(settings_env(settings))
    env.update(extra)
    return env


def _run_up(settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "up", "--no-services", *args],
        env=_cli_env(settings),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until_up(proc: subprocess.Popen[str]) -> str:
    out = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        out += line
        if "Press Ctrl-C" in line:
            return out
    raise AssertionError(f"linesight up ended early:\n{out}")


def test_up_ctrl_c_stops_everything_and_state_survives(make_settings) -> None:
    settings = make_settings()
    for round_ in range(2):
        proc = _run_up(settings)
        out = _read_until_up(proc)
        assert settings.pg_dsn in out and f"nats://127.0.0.1:{settings.nats_port}" in out
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3
        with psycopg.connect(settings.pg_dsn) as conn:
            if round_ == 0:
                conn.execute("CREATE TABLE kept (v text)")
                conn.execute("INSERT INTO kept VALUES ('survives')")
            else:
                assert conn.execute("SELECT v FROM kept").fetchone() == ("survives",)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left behind: {alive}"


def test_up_second_instance_and_down(make_settings) -> None:
    settings = make_settings()
    proc = _run_up(settings)
    _read_until_up(proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    second = subprocess.run(
        [sys.executable, "-c", CLI, "up", "--no-services"],
        env=_cli_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and "already running" in second.stderr and "linesight down" in second.stderr
    assert "stopped" not in second.stderr, "a refused start stopped nothing: " + second.stderr
    (settings.state_dir / "release_gate.yaml").write_text("min_defect_recall: 0.5\n")
    refused = _cli(settings, "reset", "--yes")
    assert refused.returncode == 1 and "running" in refused.stderr and "linesight down" in refused.stderr
    assert (settings.state_dir / "postgres").is_dir(), "a refused reset deleted state"
    down = _cli(settings, "down")
    assert down.returncode == 0, down.stderr
    assert "stopped the LineSight stack (supervisor pid" in down.stdout, down.stdout
    assert proc.wait(30) == 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive
    again = _cli(settings, "down")
    assert again.returncode == 0 and "nothing was running" in again.stdout, again.stdout
    unconfirmed = _cli(settings, "reset")  # no terminal to ask on: no
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert (settings.state_dir / "postgres").is_dir()
    reset = _cli(settings, "reset", "--yes")
    assert reset.returncode == 0, reset.stderr
    assert sorted(p.name for p in settings.state_dir.iterdir()) == ["release_gate.yaml"]


def _cli(settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLI, *args],
        env=_cli_env(settings),
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )


def test_up_unknown_variable_exits_2(make_settings) -> None:
    settings = make_settings()
    res = subprocess.run(
        [sys.executable, "-c", CLI, "up", "--no-services"],
        env=_cli_env(settings, LINESIGHT_S3_PROT="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "LINESIGHT_S3_PROT" in res.stderr
    assert not (settings.state_dir / "run" / "nats.pid").exists()


def test_killed_supervisor_takes_servers_along_and_next_up_recovers(make_settings) -> None:
    settings = make_settings()
    proc = _run_up(settings)
    _read_until_up(proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.kill()  # no chance to clean up: the parent-death signal must end the servers
    proc.wait(10)
    _, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, f"orphans: {alive}"
    assert (settings.state_dir / "run" / "supervisor.pid").exists()  # stale now
    again = _run_up(settings)
    _read_until_up(again)
    again.send_signal(signal.SIGINT)
    assert again.wait(60) == 0


def test_endpoints_follow_ports_unless_set(monkeypatch) -> None:
    from linesight.common.embedded.config import embedded_settings

    for k in [k for k in os.environ if k.startswith("LINESIGHT_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("LINESIGHT_PG_PORT", "25432")
    monkeypatch.setenv("LINESIGHT_NATS_URL", "nats://bus.plant:4222")
    s = embedded_settings(s3_port=28333, triton=True)
    assert s.pg_dsn == "postgresql://linesight@127.0.0.1:25432/linesight"
    assert s.nats_url == "nats://bus.plant:4222"  # explicit value wins
    assert s.s3_endpoint == "127.0.0.1:28333"
    assert s.triton_url == f"127.0.0.1:{s.triton_grpc_port}"


def test_library_and_service_scoped_variables_are_known_and_passed_on(monkeypatch, make_settings) -> None:
    from linesight.common.embedded.config import child_env

    monkeypatch.setenv("LINESIGHT_TORCH_THREADS", "2")
    monkeypatch.setenv("LINESIGHT_INFERENCE_BATCH", "4")
    monkeypatch.setenv("LINESIGHT_NATS_PORT", "1")
    assert unknown_env_vars() == []
    env = child_env(make_settings())
    assert env["LINESIGHT_TORCH_THREADS"] == "2" and env["LINESIGHT_INFERENCE_BATCH"] == "4"
    assert env["LINESIGHT_NATS_PORT"] != "1"  # the stack's value, not the inherited one
