"""Each embedded server starts, answers, keeps state across restarts, and fails clearly."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import minio
import nats
import psutil
import psycopg
import pytest

from linesight.common.embedded import (
    AlreadyRunningError,
    NatsServer,
    PortInUseError,
    PostgresServer,
    SeaweedPorts,
    SeaweedS3,
    StartFailedError,
    free_port,
)

pytestmark = pytest.mark.integration


def _seaweed_ports() -> SeaweedPorts:
    ports: list[int] = []
    while len(ports) < 5:
        p = free_port(also_free=(10000,))
        if p not in ports:
            ports.append(p)
    return SeaweedPorts(*ports)


async def test_nats_jetstream_state_survives_restart(state_root: Path, watch) -> None:
    server = NatsServer(state_root, free_port(also_free=(4000,)))
    server.start()
    watch.add(server.pid)
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="KEEP", subjects=["keep.>"])
        await js.publish("keep.a", b"1")
        await nc.close()
        server.stop()
        assert not watch.alive()
        server.start()
        watch.add(server.pid)
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
    finally:
        server.stop()
    assert not watch.alive()
    assert not server.pid_path.exists()


def test_postgres_table_survives_restart(state_root: Path, pg_template: Path, watch) -> None:
    server = PostgresServer(state_root, free_port(), template=pg_template)
    server.start()
    watch.add(server.pid)
    try:
        with psycopg.connect(server.dsn) as conn:
            conn.execute("CREATE TABLE parts (id int PRIMARY KEY, verdict text)")
            conn.execute("INSERT INTO parts VALUES (1, 'pass'), (2, 'defect')")
        server.stop()
        assert not watch.alive(), "postgres (or one of its backends) outlived stop()"
        server.start()
        watch.add(server.pid)
        with psycopg.connect(server.dsn) as conn:
            rows = conn.execute("SELECT id, verdict FROM parts ORDER BY id").fetchall()
        assert rows == [(1, "pass"), (2, "defect")]
    finally:
        server.stop()
    assert not watch.alive()


def test_postgres_initdb_from_scratch_runs_unprivileged(state_root: Path) -> None:
    server = PostgresServer(state_root, free_port(), durable=False)
    with server:
        proc = psutil.Process(server.pid)
        if os.geteuid() == 0:
            assert proc.username() == "linesight"
        with psycopg.connect(server.dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("linesight",)
    assert (state_root / "postgres" / "data" / "PG_VERSION").exists()


def test_s3_put_get_and_state_survives_restart(state_root: Path, watch) -> None:
    server = SeaweedS3(state_root, _seaweed_ports(), "ak-test", "sk-test-secret")
    server.start()
    watch.add(server.pid)
    try:
        client = minio.Minio(server.endpoint, "ak-test", "sk-test-secret", secure=False)
        client.make_bucket("frames")
        client.put_object("frames", "ab/cd.png", io.BytesIO(b"\x89PNG..."), 7)
        server.stop()
        server.start()
        watch.add(server.pid)
        assert client.get_object("frames", "ab/cd.png").read() == b"\x89PNG..."
    finally:
        server.stop()
    assert not watch.alive()


def test_occupied_port_is_named_with_its_variable(state_root: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = NatsServer(state_root, port)
        with pytest.raises(PortInUseError) as err:
            server.start()
    msg = str(err.value)
    assert f"127.0.0.1:{port}" in msg and "LINESIGHT_NATS_PORT" in msg
    assert not server.pid_path.exists()
    assert not server.is_running()


def test_stale_pid_file_is_removed(state_root: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    server = NatsServer(state_root, free_port(also_free=(4000,)))
    server.pid_path.parent.mkdir(parents=True)
    server.pid_path.write_text(json.dumps({"pid": dead.pid, "create_time": 1.0, "name": "nats"}))
    with server:
        assert json.loads(server.pid_path.read_text())["pid"] == server.pid
    assert not server.pid_path.exists()


def test_pid_file_of_live_server_refuses_second_start(state_root: Path) -> None:
    first = NatsServer(state_root, free_port(also_free=(4000,)))
    with first:
        second = NatsServer(state_root, free_port(also_free=(4000,)))
        with pytest.raises(AlreadyRunningError) as err:
            second.start()
        assert "already running" in str(err.value) and "linesight down" in str(err.value)
        assert first.is_running() and first.pid_path.exists()


def test_reused_pid_is_not_mistaken_for_our_server(state_root: Path) -> None:
    server = NatsServer(state_root, free_port(also_free=(4000,)))
    server.pid_path.parent.mkdir(parents=True)
    # pid 1 is alive but was not started at this create_time: not ours, so the file is stale
    server.pid_path.write_text(json.dumps({"pid": 1, "create_time": 12345.0, "name": "nats"}))
    with server:
        assert server.is_running()


def test_server_that_dies_on_start_reports_its_log(state_root: Path, pg_template: Path) -> None:
    server = PostgresServer(state_root, free_port(), template=pg_template)
    server.prepare()
    with (server.pgdata / "postgresql.conf").open("a") as f:
        f.write("\nshared_buffers = 'lots'\n")
    with pytest.raises(StartFailedError) as err:
        server.start(timeout=30)
    msg = str(err.value)
    assert "postgres exited with code" in msg and "shared_buffers" in msg
    assert not server.pid_path.exists()


def test_missing_binary_is_a_clear_error(state_root: Path) -> None:
    class Broken(NatsServer):
        def command(self) -> list[str]:
            return [str(state_root / "no-such-nats-server"), "-js"]

    with pytest.raises(StartFailedError, match="no-such-nats-server"):
        Broken(state_root, free_port(also_free=(4000,))).start()
