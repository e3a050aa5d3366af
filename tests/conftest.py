"""Shared fixtures: real NATS, PostgreSQL and S3 servers on free ports in a temporary state dir.

Servers start lazily (only when a test asks for one), once per session, and are stopped at session
end; children also get SIGTERM if pytest itself dies (parent-death signal), so nothing is left
behind. PostgreSQL's initdb runs once per session (`pg_template`); other clusters copy it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from linesight.common.embedded import (
    NatsServer,
    PostgresServer,
    SeaweedPorts,
    SeaweedS3,
    free_port,
)
from linesight.common.embedded.postgres import SYSTEM_USER, ensure_system_user, ensure_traversable, initdb
from linesight.common.settings import SERVICE_PORTS, Settings
from linesight.common.storage import S3Config

REPO_ROOT = Path(__file__).resolve().parent.parent
S3_ACCESS_KEY = "linesight-test"
S3_SECRET_KEY = "linesight-test-secret"


@pytest.fixture(scope="session")
def embedded_root() -> Iterator[Path]:
    """Parent dir of every test server's state dir; removed at session end.

    Not under pytest's tmp_path: as root PostgreSQL runs as user `linesight`, which must traverse
    to its data dir, and pytest resets /tmp/pytest-of-<user> to mode 0700 whenever a session starts.
    """
    root = Path(tempfile.mkdtemp(prefix="linesight-test-"))
    root.chmod(0o711)
    if os.geteuid() == 0:
        ensure_system_user(SYSTEM_USER)
        ensure_traversable(root / "x")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def state_root(embedded_root: Path) -> Path:
    """A fresh state dir for one test's private servers (PostgreSQL can reach it, unlike tmp_path)."""
    return Path(tempfile.mkdtemp(prefix="t-", dir=embedded_root))


@pytest.fixture(scope="session")
def pg_template(embedded_root: Path) -> Path:
    """An initdb'ed data dir made once per session; PostgresServer(template=...) copies it."""
    path = embedded_root / "pg-template"
    initdb(path, user=SYSTEM_USER if os.geteuid() == 0 else None, log=embedded_root / "pg-template.log")
    return path


def seaweed_free_ports() -> SeaweedPorts:
    """Five free HTTP ports whose gRPC twins (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < 5:
        p = free_port(also_free=(10000,))
        if p not in ports and p + 10000 < 65536:
            ports.append(p)
    return SeaweedPorts(*ports)


@pytest.fixture(scope="session")
def nats_server(embedded_root: Path) -> Iterator[NatsServer]:
    server = NatsServer(embedded_root / "nats-session", free_port(also_free=(4000,)))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    """nats://127.0.0.1:PORT of a session NATS server with JetStream."""
    return nats_server.url


@pytest.fixture(scope="session")
def pg_server(embedded_root: Path, pg_template: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(embedded_root / "pg-session", free_port(), template=pg_template, durable=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_dsn(pg_server: PostgresServer) -> str:
    """postgresql://linesight@127.0.0.1:PORT/linesight (superuser role linesight, trust auth)."""
    return pg_server.dsn


@pytest.fixture(scope="session")
def s3_server(embedded_root: Path) -> Iterator[SeaweedS3]:
    server = SeaweedS3(embedded_root / "s3-session", seaweed_free_ports(), S3_ACCESS_KEY, S3_SECRET_KEY)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_server: SeaweedS3) -> Any:
    """S3Config(endpoint="127.0.0.1:PORT", access_key, secret_key, secure=False, region="us-east-1")."""
    return S3Config(endpoint=s3_server.endpoint, access_key=S3_ACCESS_KEY, secret_key=S3_SECRET_KEY)


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """../shared/datasets next to the repo; the test is skipped (with the reason) when it is absent."""
    path = (REPO_ROOT.parent / "shared" / "datasets").resolve()
    if not path.is_dir():
        reason = f"datasets not found at {path} (real image sets are not part of the repo)"
        print(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def stack_settings(
    embedded_root: Path, nats_server: NatsServer, pg_server: PostgresServer, s3_server: SeaweedS3
) -> Settings:
    """Settings pointing at the session servers, with free ports for every service (gRPC and HTTP)."""
    taken: set[int] = set()

    def fresh() -> int:
        while True:
            p = free_port()
            if p not in taken:
                taken.add(p)
                return p

    mes_port = fresh()
    return Settings(
        nats_url=nats_server.url,
        pg_dsn=pg_server.dsn,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=S3_ACCESS_KEY,
        s3_secret_key=S3_SECRET_KEY,
        s3_secure=False,
        state_dir=embedded_root / "stack",
        host="127.0.0.1",
        nats_port=nats_server.port,
        pg_port=pg_server.port,
        s3_port=s3_server.p.s3,
        s3_master_port=s3_server.p.master,
        s3_volume_port=s3_server.p.volume,
        s3_filer_port=s3_server.p.filer,
        grpc_ports={name: fresh() for name in SERVICE_PORTS},
        http_ports={name: fresh() for name in SERVICE_PORTS},
        mes_receiver_port=mes_port,
        mes_endpoint=f"http://127.0.0.1:{mes_port}/dispositions",
        log_json=False,
    )


@pytest.fixture(scope="session")
def mint(stack_settings: Settings) -> Any:
    """Bearer tokens signed with the test installation's key, as the labeling issuer would sign them.

    `mint("labeler@plant1/tile", subject="ann")`; `kind="service"` for service accounts.
    """
    from linesight.common.identity.config import AuthSettings
    from linesight.common.identity.installation import installation_signer
    from linesight.common.identity.model import Grant, Principal

    signer = installation_signer(AuthSettings(), stack_settings.state_dir, ttl_s=3600)

    def make(*grants: str, subject: str = "tester", kind: str = "user", name: str = "") -> str:
        principal = Principal(subject, name or subject, kind, tuple(Grant.parse(g) for g in grants))  # type: ignore[arg-type]
        return signer.issue(principal).token

    return make
