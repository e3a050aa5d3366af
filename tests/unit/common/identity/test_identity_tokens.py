"""Ed25519 access tokens: round trip, expiry, tampering, wrong key/audience/issuer, key files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat
import time
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from linesight.common.identity import Grant, Principal, Unauthenticated
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.tokens import (
    TokenSigner,
    TokenVerifier,
    load_or_create_signing_key,
    load_public_keys,
)

ANN = Principal("u_1", "Ann", "user", (Grant.parse("reviewer@plant1"), Grant.parse("labeler")))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return AuthSettings().signing_key_path(tmp_path)


def pair(key_path: Path, *, now: float | None = None) -> tuple[TokenSigner, TokenVerifier]:
    key = load_or_create_signing_key(key_path)
    signer = TokenSigner(key, issuer="linesight", audience="linesight", ttl_s=60)
    verifier = TokenVerifier(
        load_public_keys(AuthSettings().verify_key_paths(key_path.parent.parent)),
        issuer="linesight",
        audience="linesight",
        leeway_s=0,
        clock=(lambda: now) if now is not None else time.time,
    )
    return signer, verifier


def test_round_trip_keeps_identity_grants_and_session_claims(key_path: Path) -> None:
    signer, verifier = pair(key_path)
    issued = signer.issue(ANN, session_id="s1", csrf_token="c1")
    verified = verifier.verify(issued.token)
    assert verified.principal == ANN
    assert verified.session_id == "s1"
    assert verified.csrf_matches("c1") and not verified.csrf_matches("c2") and not verified.csrf_matches(None)
    assert verified.claims["jti"] == issued.jti
    assert verified.claims["exp"] - verified.claims["iat"] == 60
    assert signer.issue(ANN).jti != issued.jti


def test_expired_token_says_session_expired(key_path: Path) -> None:
    signer, _ = pair(key_path)
    token = signer.issue(ANN).token
    _, later = pair(key_path, now=time.time() + 61)
    with pytest.raises(Unauthenticated, match="session expired"):
        later.verify(token)


def test_issuer_can_read_an_expired_session_token_to_renew_it(key_path: Path) -> None:
    signer, _ = pair(key_path)
    token = signer.issue(ANN, session_id="s1", csrf_token="c").token
    _, later = pair(key_path, now=time.time() + 3600)
    assert later.verify(token, allow_expired=True).session_id == "s1"
    with pytest.raises(Unauthenticated, match="not issued for this audience"):
        later.verify(signer.issue(ANN, audience="grafana").token, allow_expired=True)
    with pytest.raises(Unauthenticated, match="signature"):
        later.verify(token[:-4] + "AAAA", allow_expired=True)


def test_tampered_claims_fail_the_signature(key_path: Path) -> None:
    signer, verifier = pair(key_path)
    header, payload, sig = signer.issue(ANN).token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["grants"] = ["admin@*/*"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated, match="invalid token signature"):
        verifier.verify(f"{header}.{forged}.{sig}")


def test_token_from_another_installation_is_rejected(key_path: Path) -> None:
    _, verifier = pair(key_path)
    stranger_key = OKPKey.generate_key("Ed25519")
    stranger = TokenSigner(stranger_key, issuer="linesight", audience="linesight", ttl_s=60)
    with pytest.raises(Unauthenticated, match="unknown key"):
        verifier.verify(stranger.issue(ANN).token)
    # Same key id as ours in the header, signed with the stranger's key.
    ours = str(load_or_create_signing_key(key_path).kid)
    posing = OKPKey.import_key({**stranger_key.as_dict(private=True), "kid": ours})
    impostor = TokenSigner(posing, issuer="linesight", audience="linesight", ttl_s=60)
    with pytest.raises(Unauthenticated, match="invalid token signature"):
        verifier.verify(impostor.issue(ANN).token)


def test_wrong_audience_and_issuer(key_path: Path) -> None:
    signer, verifier = pair(key_path)
    with pytest.raises(Unauthenticated, match="not issued for this audience"):
        verifier.verify(signer.issue(ANN, audience="grafana").token)
    other_issuer = TokenSigner(
        load_or_create_signing_key(key_path), issuer="x", audience="linesight", ttl_s=60
    )
    with pytest.raises(Unauthenticated, match="'iss'"):
        verifier.verify(other_issuer.issue(ANN).token)


def test_unsigned_and_hmac_tokens_are_refused(key_path: Path) -> None:
    signer, verifier = pair(key_path)
    claims = jwt.decode(signer.issue(ANN).token, signer.public_keys(), algorithms=["Ed25519"]).claims
    body = b64(json.dumps(claims).encode())
    # HS256 keyed with the public key (the classic key-confusion forgery), built by hand.
    public_pem = load_or_create_signing_key(key_path).as_pem(private=False)
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + body
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthenticated, match="malformed token"):
        verifier.verify(f"{signing_input}.{b64(mac)}")
    with pytest.raises(Unauthenticated, match="malformed token"):
        verifier.verify(b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + body + ".")
    with pytest.raises(Unauthenticated, match="malformed"):
        verifier.verify("not-a-token")


def test_signing_key_is_created_once_private_and_published_as_jwks(key_path: Path) -> None:
    first = load_or_create_signing_key(key_path)
    again = load_or_create_signing_key(key_path)
    assert first.kid == again.kid
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    signer = TokenSigner(first, issuer="linesight", audience="linesight", ttl_s=60)
    jwks = signer.jwks()
    assert [k["kid"] for k in jwks["keys"]] == [first.kid]
    assert "d" not in jwks["keys"][0]  # no private part
    from_jwks = TokenVerifier.from_jwks(jwks, issuer="linesight", audience="linesight")
    assert from_jwks.verify(signer.issue(ANN).token).principal == ANN


def test_missing_public_key_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LINESIGHT_AUTH_VERIFY_KEY_FILES"):
        load_public_keys([tmp_path / "nope.pem"])
