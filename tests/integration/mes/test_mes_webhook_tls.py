"""The webhook adapter against a real HTTPS receiver (uvicorn) that requires a client certificate
and verifies the HMAC signature: signed deliveries are accepted, a wrong secret or a replayed
request is refused with 401, a client without certificate cannot connect."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linesight.common.embedded import free_port
from linesight.mes.api.receiver import DispositionLog, create_receiver_app
from linesight.mes.api.webhook import WebhookDeliverer
from linesight.mes.app.adapters import SIGNATURE_HEADER, TIMESTAMP_HEADER, TlsOptions, WebhookEndpoint, sign

pytestmark = pytest.mark.integration

SECRET = "plant-shared-secret"


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
    return b.sign(ca_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    data = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        data += key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    path.write_bytes(data)
    return path


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A private CA, a server certificate for 127.0.0.1 and a client certificate (key in the file)."""
    ca_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("linesight-test-ca", ca_key, None, ca_key, ca=True)
    return {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server": _write(tmp_path / "server.pem", _cert("mes", srv_key, ca, ca_key, server=True), srv_key),
        "client": _write(tmp_path / "client.pem", _cert("linesight-mes", cli_key, ca, ca_key), cli_key),
    }


@contextlib.asynccontextmanager
async def https_receiver(port: int, log: DispositionLog, pki: dict[str, Path]) -> AsyncIterator[None]:
    config = uvicorn.Config(
        create_receiver_app(log, secret=SECRET, replay_window_s=60),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(pki["server"]),
        ssl_ca_certs=str(pki["ca"]),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def test_signed_delivery_over_mutual_tls_and_refusals(pki: dict[str, Path]) -> None:
    port = free_port()
    url = f"https://127.0.0.1:{port}/dispositions"
    tls = TlsOptions(ca_bundle=str(pki["ca"]), client_cert=str(pki["client"]))
    log = DispositionLog()
    payload = {"frame_id": "f-tls-1", "station": "s1", "disposition": "reject"}
    good = WebhookDeliverer(WebhookEndpoint(url=url, secret=SECRET, tls=tls, timeout_s=5))
    wrong_secret = WebhookDeliverer(WebhookEndpoint(url=url, secret="not-the-secret", tls=tls, timeout_s=5))
    no_client_cert = WebhookDeliverer(
        WebhookEndpoint(url=url, secret=SECRET, tls=TlsOptions(ca_bundle=str(pki["ca"])))
    )
    untrusted = WebhookDeliverer(WebhookEndpoint(url=url, secret=SECRET))  # system CAs only
    try:
        async with https_receiver(port, log, pki):
            ok = await good.deliver("f-tls-1", payload)
            assert (ok.outcome, ok.status_code) == ("delivered", 200)
            assert log.snapshot() == {"f-tls-1": payload}

            refused = await wrong_secret.deliver("f-tls-2", {**payload, "frame_id": "f-tls-2"})
            assert (refused.outcome, refused.status_code) == ("dead", 401)
            assert "signature does not match" in refused.error

            # No client certificate / server not trusted: the TLS handshake fails (a retry, not a 4xx).
            for d in (no_client_cert, untrusted):
                att = await d.deliver("f-tls-3", {**payload, "frame_id": "f-tls-3"})
                assert att.outcome == "retry" and att.status_code is None

            # A request captured on the wire and replayed after the window is refused.
            body = json.dumps({**payload, "frame_id": "f-tls-4"}).encode()
            old = "1000000000"
            ctx = ssl.create_default_context(cafile=str(pki["ca"]))
            ctx.load_cert_chain(str(pki["client"]))
            async with httpx.AsyncClient(verify=ctx) as client:
                replay = await client.post(
                    url,
                    content=body,
                    headers={
                        "Idempotency-Key": "f-tls-4",
                        "Content-Type": "application/json",
                        TIMESTAMP_HEADER: old,
                        SIGNATURE_HEADER: sign(SECRET, old, body),
                    },
                )
            assert replay.status_code == 401 and "replay window" in replay.text
            assert set(log.snapshot()) == {"f-tls-1"}
    finally:
        for d in (good, wrong_secret, no_client_cert, untrusted):
            await d.close()
