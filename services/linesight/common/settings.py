"""Typed settings from `LINESIGHT_*` environment variables.

Defaults describe the embedded stack on one machine (`linesight up`). Ports are chosen away from
system services (NATS 4222, PostgreSQL 5432, MinIO 9000, dev servers 8000-8002) so the embedded
stack can run beside them. In Kubernetes the chart sets every value explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# One row per service: (gRPC port, HTTP port). HTTP serves /healthz, /readyz, /metrics and UIs.
SERVICE_PORTS: dict[str, tuple[int, int]] = {
    "capture": (17010, 17110),
    "inference": (17011, 17111),
    "labeling": (17012, 17112),
    "training": (17013, 17113),
    "taxonomy": (17014, 17114),
    "mes": (17015, 17115),
}


class Settings(BaseSettings):
    """Everything a service needs to find the bus, storage, database and its peers."""

    model_config = SettingsConfigDict(env_prefix="LINESIGHT_", extra="forbid", frozen=True)

    # Where this process sits in the plant. Capture and inference instances are per station.
    plant: str = "plant1"
    line: str = "line1"
    station: str = "station1"
    product: str = "default"

    # Infrastructure endpoints (embedded defaults).
    nats_url: str = "nats://127.0.0.1:14222"
    # This process's NATS account; its subject permissions decide what it may publish. Empty =
    # anonymous (test servers). The embedded stack generates one per service on first `up`.
    nats_user: str = ""
    nats_password: str = Field(default="", repr=False)
    # CA bundle that signed the NATS server's certificate; set (with a tls:// URL) in production.
    nats_tls_ca_file: str = ""
    pg_dsn: str = "postgresql://linesight@127.0.0.1:15432/linesight"
    pg_pool_max: int = 8
    s3_endpoint: str = "127.0.0.1:18333"
    s3_access_key: str = "linesight"
    s3_secret_key: str = Field(default="linesight-secret", repr=False)
    s3_secure: bool = False
    s3_region: str = "us-east-1"
    triton_url: str = ""  # e.g. 127.0.0.1:18001 (gRPC); empty = in-process backend

    # The only place StartTraining and ImportDataset read dataset folders from (names are
    # relative to it); empty = <state_dir>/datasets. Point it at a plant's dataset share, e.g.
    # LINESIGHT_DATASETS_DIR=../shared/datasets, to import from there.
    datasets_dir: str = ""

    # Embedded stack bookkeeping: pid files, data dirs, logs. Survives restarts.
    state_dir: Path = Path(".linesight")
    host: str = "127.0.0.1"  # where peers and embedded servers are reached by default
    listen_host: str = "127.0.0.1"  # where this process binds its gRPC/HTTP ports (0.0.0.0 in a pod)
    # Per-peer host, e.g. '{"inference": "linesight-inference"}' in Kubernetes; default `host`.
    peer_hosts: dict[str, str] = Field(default_factory=dict)
    nats_port: int = 14222
    pg_port: int = 15432
    s3_port: int = 18333
    s3_master_port: int = 18334
    s3_volume_port: int = 18335
    s3_filer_port: int = 18336
    triton_http_port: int = 18000
    triton_grpc_port: int = 18001
    triton_metrics_port: int = 18002
    mes_receiver_port: int = 17200  # demo's local MES/ERP receiver

    # Per-service ports; override with e.g. LINESIGHT_GRPC_PORTS='{"capture": 27010}'.
    grpc_ports: dict[str, int] = Field(default_factory=lambda: {k: v[0] for k, v in SERVICE_PORTS.items()})
    http_ports: dict[str, int] = Field(default_factory=lambda: {k: v[1] for k, v in SERVICE_PORTS.items()})

    # MES delivery target (the demo starts a local receiver here).
    mes_endpoint: str = "http://127.0.0.1:17200/dispositions"
    # Several endpoints, each with its adapter (webhook with HMAC/TLS, MQTT); when set, replaces
    # mes_endpoint. JSON list, validated by the MES service at start (linesight.mes.app.adapters).
    mes_endpoints: list[dict[str, Any]] = Field(default_factory=list)
    # OPC UA Machine Vision server of MES (with the default endpoints; `linesight up` turns it on).
    mes_opcua: bool = False
    mes_opcua_port: int = 17240

    log_level: str = "INFO"
    log_json: bool = True

    @property
    def datasets_root(self) -> Path:
        """Absolute, so a confinement check compares like with like."""
        return (
            Path(self.datasets_dir).absolute()
            if self.datasets_dir
            else (self.state_dir / "datasets").absolute()
        )

    def grpc_target(self, service: str) -> str:
        """host:port of a peer's gRPC API."""
        return f"{self.peer_hosts.get(service, self.host)}:{self.grpc_ports[service]}"

    def http_url(self, service: str) -> str:
        return f"http://{self.peer_hosts.get(service, self.host)}:{self.http_ports[service]}"


# Read by libraries directly (not per service): the detection engine's CPU thread count.
LIBRARY_SETTINGS = frozenset({"LINESIGHT_TORCH_THREADS"})
# Prefixes of settings classes of their own, which validate their variables (identity: AuthSettings).
SCOPED_PREFIXES = (*(f"LINESIGHT_{svc.upper()}_" for svc in SERVICE_PORTS), "LINESIGHT_AUTH_")


class UnknownSettingError(ValueError):
    """A LINESIGHT_* variable that no setting reads: almost always a typo that would fall back
    silently to a default (pydantic-settings ignores unknown prefixed variables)."""


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Raise UnknownSettingError naming every LINESIGHT_* variable that is not a setting."""
    env = os.environ if environ is None else environ
    known = {f"LINESIGHT_{name.upper()}" for name in Settings.model_fields} | LIBRARY_SETTINGS
    # LINESIGHT_<SERVICE>_* belong to one service's own settings class, which validates them.
    scoped = SCOPED_PREFIXES
    unknown = sorted(
        k
        for k in env
        if k.upper().startswith("LINESIGHT_") and k.upper() not in known and not k.upper().startswith(scoped)
    )
    if unknown:
        raise UnknownSettingError(
            f"unknown setting(s): {', '.join(unknown)}. Known settings: "
            f"{', '.join(sorted(known))}. Fix the name or unset it."
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings; UnknownSettingError for a misspelt LINESIGHT_ variable,
    pydantic.ValidationError for a bad value."""
    check_environment()
    return Settings()
