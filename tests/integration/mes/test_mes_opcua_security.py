"""The OPC UA server in production mode: Basic256Sha256 sign-and-encrypt with certificates (a
self-signed pair made here with `cryptography`, as a plant's PKI would issue them). A client with
its certificate reads a station; a client without security is refused."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from linesight.common.embedded import free_port
from linesight.mes.api.opcua import LOCAL_NS, MACHINE_VISION_NS, VisionServer
from linesight.mes.app.adapters import OpcUaEndpoint

pytestmark = pytest.mark.integration

SERVER_URI = "urn:freeopcua:python:server"  # asyncua's default application URI
CLIENT_URI = "urn:freeopcua:client"


def self_signed(directory: Path, name: str, uri: str, usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
    """(certificate.pem, key.pem): RSA 2048, SHA-256, the application URI in subjectAltName."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(uri),
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_sign_and_encrypt_with_certificates(tmp_path: Path) -> None:
    server_cert, server_key = self_signed(tmp_path, "mes-server", SERVER_URI, ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = self_signed(tmp_path, "plc-client", CLIENT_URI, ExtendedKeyUsageOID.CLIENT_AUTH)
    endpoint = OpcUaEndpoint(
        kind="opcua",
        port=free_port(),
        stations=["line1/secure"],
        security="Basic256Sha256",
        certificate=str(server_cert),
        private_key=str(server_key),
    )
    server = VisionServer(endpoint)
    await server.start()
    try:
        plain = Client(endpoint.url)
        offered = await plain.connect_and_get_server_endpoints()
        assert {e.SecurityPolicyUri for e in offered} == {SecurityPolicyBasic256Sha256.URI}
        assert {e.SecurityMode for e in offered} == {ua.MessageSecurityMode.SignAndEncrypt}
        with pytest.raises(ua.UaError, match=r"No matching endpoints.*SecurityPolicy#None"):
            async with Client(endpoint.url, timeout=5):
                pass

        client = Client(endpoint.url, timeout=10)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            certificate=str(client_cert),
            private_key=str(client_key),
            server_certificate=str(server_cert),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        payload = {
            "part_id": "P-S1",
            "line": "line1",
            "station": "secure",
            "verdict": "pass",
            "frame_id": "f-s1",
        }
        assert (await server.deliver("sec-1", payload)).outcome == "delivered"
        async with client:
            await client.load_data_type_definitions()
            mv = await client.get_namespace_index(MACHINE_VISION_NS)
            local = await client.get_namespace_index(LOCAL_NS)
            station = await client.nodes.objects.get_child(f"{local}:line1_secure")
            last = await station.get_child([f"{mv}:ResultManagement", f"{mv}:Results", f"{local}:LastResult"])
            value = await last.read_value()
            assert value.ResultId.Id == "sec-1" and value.PartId.Id == "P-S1" and value.ResultState == 1
    finally:
        await server.close()
