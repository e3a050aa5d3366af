"""Where a plant's dispositions go: the endpoint configuration (one or several per plant, each with
its own adapter) and the webhook signature scheme. Each endpoint has its own delivery of every
message (see store/outbox.py `deliveries`), so a slow one delays only itself.

Configured as `LINESIGHT_MES_ENDPOINTS` (JSON list; Helm `mes.endpoints`), e.g.
`[{"kind": "webhook", "name": "erp", "url": "https://erp/api/dispositions", "secret": "..."},
  {"kind": "mqtt", "name": "line-bus", "host": "broker", "port": 8883, "tls": {"ca_bundle": "/ca.pem"}}]`.
Empty: one webhook to `LINESIGHT_MES_ENDPOINT` (the embedded demo receiver).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

TIMESTAMP_HEADER = "X-LineSight-Timestamp"
SIGNATURE_HEADER = "X-LineSight-Signature"
SIGNATURE_PREFIX = "sha256="


class TlsOptions(BaseModel):
    """Server verification against a CA bundle (empty: the system's), optional client certificate."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""  # empty: the key is in client_cert's file


class WebhookEndpoint(BaseModel):
    """An HTTP(S) POST per disposition, signed with HMAC-SHA256 when `secret` is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["webhook"] = "webhook"
    name: str = "webhook"
    url: str
    secret: str = ""
    secret_file: str = ""  # read at start (a mounted Secret); replaces `secret`
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    tls: TlsOptions = TlsOptions()

    def describe(self) -> str:
        return f"{self.name}:{self.url}"


class MqttEndpoint(BaseModel):
    """QoS-1 publishes on `<topic_prefix>/<plant>/<line>/<station>/disposition`, a retained status
    per station, and a retained `online`/`offline` (last will) for the publisher."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["mqtt"]
    name: str = "mqtt"
    host: str
    port: Annotated[int, Field(gt=0, lt=65536)] = 1883
    topic_prefix: str = "linesight"
    client_id: str = ""  # empty: linesight-mes-<name>
    username: str = ""
    password: str = ""
    password_file: str = ""  # read at start (a mounted Secret); replaces `password`
    timeout_s: Annotated[float, Field(gt=0)] = 5.0
    tls: TlsOptions | None = None  # None: plain TCP

    def describe(self) -> str:
        return f"{self.name}:mqtt://{self.host}:{self.port}/{self.topic_prefix}"


class OpcUaEndpoint(BaseModel):
    """An OPC UA server (OPC 40100-1 Machine Vision) that MES clients connect to: one
    VisionSystemType object per station, its last result readable, a ResultReadyEvent per
    inspection. Security None on a trusted host, or Basic256Sha256 (sign and encrypt) with the
    server's certificate and key (DER or PEM files)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["opcua"]
    name: str = "opcua"
    host: str = "127.0.0.1"
    port: Annotated[int, Field(gt=0, lt=65536)] = 17240
    stations: list[str] = []  # "line/station" made visible at start; others appear with their first result
    security: Literal["None", "Basic256Sha256"] = "None"
    certificate: str = ""
    private_key: str = ""
    timeout_s: Annotated[float, Field(gt=0)] = 5.0

    @model_validator(mode="after")
    def _keys_for_security(self) -> OpcUaEndpoint:
        if self.security != "None" and not (self.certificate and self.private_key):
            raise ValueError(f"security {self.security} needs certificate and private_key")
        return self

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{self.name}:{self.url}"


AnyEndpoint = WebhookEndpoint | MqttEndpoint | OpcUaEndpoint
Endpoint = Annotated[AnyEndpoint, Field(discriminator="kind")]
_ENDPOINTS: TypeAdapter[list[AnyEndpoint]] = TypeAdapter(list[Endpoint])


def parse_endpoints(
    raw: Sequence[Mapping[str, Any]], default_url: str, *, opcua: OpcUaEndpoint | None = None
) -> list[AnyEndpoint]:
    """Validate the configured endpoints; raises ValueError naming the entry and field at fault,
    so a typo stops the service at start instead of losing dispositions. Without configured
    endpoints: the default webhook, plus `opcua` when given (the embedded stack's server)."""
    if not raw:
        return [WebhookEndpoint(name="mes", url=default_url), *([opcua] if opcua else [])]
    entries = [dict(e) for e in raw]
    for e in entries:
        e.setdefault("kind", "webhook")
    try:
        endpoints = _ENDPOINTS.validate_python(entries)
    except ValidationError as exc:
        raise ValueError(f"LINESIGHT_MES_ENDPOINTS is invalid: {exc}") from exc
    names = [e.name for e in endpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"LINESIGHT_MES_ENDPOINTS: endpoint names must be unique, got {names}")
    return [_with_secret_files(e) for e in endpoints]


def _with_secret_files(e: AnyEndpoint) -> AnyEndpoint:
    """Secrets named by file (Kubernetes Secrets mounted into the pod) read now: a missing file
    stops the service at start, naming the endpoint, instead of signing with an empty key."""
    field, path = (
        ("secret", e.secret_file)
        if isinstance(e, WebhookEndpoint)
        else ("password", e.password_file)
        if isinstance(e, MqttEndpoint)
        else ("", "")
    )
    if not path:
        return e
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(
            f"LINESIGHT_MES_ENDPOINTS: endpoint {e.name!r}: cannot read {field} file: {exc}"
        ) from exc
    return e.model_copy(update={field: value})


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>." + body): the timestamp is signed so a
    captured request cannot be replayed later with a fresh one."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float, window_s: float) -> str:
    """'' when the signature is valid and the timestamp within `window_s` of `now`; else why not
    (what a receiver answers with 401)."""
    try:
        ts = float(timestamp)
    except ValueError:
        return f"{TIMESTAMP_HEADER} is not a unix time"
    if abs(now - ts) > window_s:
        return f"timestamp outside the {window_s:.0f}s replay window"
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        return "signature does not match"
    return ""
