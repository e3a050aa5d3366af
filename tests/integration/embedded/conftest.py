"""Helpers for embedded-stack tests: Settings whose every port is free."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from linesight.common.embedded import free_port
from linesight.common.settings import SERVICE_PORTS, Settings

DUMMY_SERVICE = Path(__file__).with_name("dummy_service.py")


def _ports(n: int, also_free: tuple[int, ...] = ()) -> list[int]:
    out: list[int] = []
    while len(out) < n:
        p = free_port(also_free=also_free)
        if p not in out and all(p + o not in out for o in also_free):
            out.append(p)
    return out


@pytest.fixture
def make_settings(state_root: Path) -> Callable[..., Settings]:
    """Settings for a private stack in tmp_path: servers and services all on free ports."""

    def make(state_dir: Path | None = None, **over: object) -> Settings:
        nats_port = _ports(1, (4000,))[0]
        pg_port = _ports(1)[0]
        s3, master, volume = _ports(3, (10000,))
        filer = _ports(1, (1, 10000, 10001))[0]
        svc = _ports(2 * len(SERVICE_PORTS))
        values: dict[str, object] = {
            "state_dir": state_dir or state_root / "state",
            "nats_port": nats_port,
            "nats_url": f"nats://127.0.0.1:{nats_port}",
            "pg_port": pg_port,
            "pg_dsn": f"postgresql://linesight@127.0.0.1:{pg_port}/linesight",
            "s3_port": s3,
            "s3_endpoint": f"127.0.0.1:{s3}",
            "s3_master_port": master,
            "s3_volume_port": volume,
            "s3_filer_port": filer,
            "grpc_ports": dict(zip(SERVICE_PORTS, svc[: len(SERVICE_PORTS)], strict=True)),
            "http_ports": dict(zip(SERVICE_PORTS, svc[len(SERVICE_PORTS) :], strict=True)),
        }
        values.update(over)
        return Settings(**values)

    return make


class ProcessWatch:
    """Remembers processes (with descendants) so a test can assert later that none survived."""

    def __init__(self) -> None:
        self.procs: list[psutil.Process] = []

    def add(self, pid: int | None) -> None:
        assert pid is not None
        proc = psutil.Process(pid)
        self.procs += [proc, *proc.children(recursive=True)]

    def alive(self) -> list[psutil.Process]:
        out = []
        for p in self.procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out


@pytest.fixture
def watch() -> ProcessWatch:
    return ProcessWatch()
