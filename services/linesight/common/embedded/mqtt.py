"""A local MQTT broker for the demo: Debian's Mosquitto, when the machine has it.

The demo shows MES's MQTT adapter delivering; a plant brings its own broker, so the embedded stack
(`linesight up`) starts none. The broker here listens on one port of the host only, admits
anonymous clients (it is the demo's private bus, gone when the demo ends) and keeps nothing on disk.
"""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
from pathlib import Path

from linesight.common.embedded.process import ManagedProcess

MOSQUITTO = Path("/usr/sbin/mosquitto")  # Debian's `mosquitto` package


def mosquitto_binary() -> Path | None:
    """Debian's path first (not on a user's PATH: it is in sbin), then PATH."""
    if MOSQUITTO.is_file():
        return MOSQUITTO
    found = shutil.which("mosquitto")
    return Path(found) if found else None


class MosquittoBroker(ManagedProcess):
    """mosquitto -c <state_dir>/mosquitto/mosquitto.conf; healthy when its port accepts."""

    name = "mosquitto"
    stop_timeout = 5.0

    def __init__(
        self, state_dir: Path, port: int, host: str = "127.0.0.1", *, binary: Path = MOSQUITTO
    ) -> None:
        super().__init__(state_dir, host)
        self.port = port
        self.binary = binary

    @property
    def config_path(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [str(self.binary), "-c", str(self.config_path)]

    def ports(self) -> dict[str, int]:
        return {"the demo's MQTT port": self.port}

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            # Started as root (containers), mosquitto would switch to user `mosquitto`; naming the
            # current user keeps it as is. As anyone else the line is ignored.
            f"user {getpass.getuser()}\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "log_dest stderr\n"
        )

    def is_healthy(self) -> bool:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.settimeout(1.0)
            s.connect((self.host, self.port))
            return True
        return False
