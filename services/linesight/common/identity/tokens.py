"""Signed access tokens (JWT, Ed25519) that every service verifies without asking the issuer.

Ed25519 rather than HS256: verifiers hold only the public key, so a compromised inference pod
cannot mint an admin token. JWTs go through joserfc (authlib's own JOSE library; authlib.jose is
deprecated in its favour) with the algorithm pinned, so `alg: none` or key confusion cannot pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    InvalidKeyIdError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet, OKPKey

from linesight.common.identity.config import public_key_path
from linesight.common.identity.model import Grant, Principal, Unauthenticated

ALGORITHM = "Ed25519"  # RFC 9864 name for EdDSA over Ed25519
Clock = Callable[[], float]


def _with_kid(key: OKPKey) -> OKPKey:
    return OKPKey.import_key(key.as_dict(private=key.is_private), {"kid": key.thumbprint()})


def load_or_create_signing_key(path: Path) -> OKPKey:
    """The installation's private key at `path`, generated on first use; also writes `<stem>.pub.pem`.

    Creation is atomic (link of a finished temp file), so replicas starting together agree on one key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = OKPKey.generate_key("Ed25519")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, key.as_pem(private=True))
            os.close(fd)
            with contextlib.suppress(FileExistsError):  # another replica won; use its key
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    key = _with_kid(OKPKey.import_key(path.read_bytes()))
    pub = public_key_path(path)
    pem = key.as_pem(private=False)
    if not pub.exists() or pub.read_bytes() != pem:
        # Replace, never rewrite in place: another process may be reading it right now.
        fd, tmp = tempfile.mkstemp(dir=pub.parent, prefix=".pub-")
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.replace(tmp, pub)
    return key


def load_public_keys(paths: Iterable[Path]) -> KeySet:
    """Verification keys from PEM files (current + previous during a rotation)."""
    keys: list[Any] = []
    for p in paths:
        try:
            keys.append(_with_kid(OKPKey.import_key(Path(p).read_bytes())))
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"token verification key {p} not found (the issuer writes it on first start; "
                "set LINESIGHT_AUTH_VERIFY_KEY_FILES to a mounted public key)"
            ) from exc
    if not keys:
        raise ValueError("no token verification keys given")
    return KeySet(keys)


def csrf_digest(csrf_token: str) -> str:
    """What a session token stores about its CSRF token (the token itself stays out of the JWT)."""
    return hashlib.sha256(csrf_token.encode()).hexdigest()


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    jti: str
    expires_at: float


@dataclass(frozen=True)
class VerifiedToken:
    principal: Principal
    claims: Mapping[str, Any]

    @property
    def session_id(self) -> str | None:
        """Set on browser-session tokens (cookie), absent on bearer tokens."""
        sid = self.claims.get("sid")
        return sid if isinstance(sid, str) else None

    def csrf_matches(self, presented: str | None) -> bool:
        expected = self.claims.get("csrf")
        if not presented or not isinstance(expected, str):
            return False
        return hmac.compare_digest(expected, csrf_digest(presented))


class TokenSigner:
    """Mints tokens for principals; only the issuer (labeling) holds one."""

    def __init__(
        self, key: OKPKey, *, issuer: str, audience: str, ttl_s: int, clock: Clock = time.time
    ) -> None:
        if not key.is_private:
            raise ValueError("TokenSigner needs the private key")
        self._key = key if key.kid else _with_kid(key)
        self.issuer = issuer
        self.audience = audience
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(
        self,
        principal: Principal,
        *,
        ttl_s: int | None = None,
        audience: str | None = None,
        session_id: str | None = None,
        csrf_token: str | None = None,
    ) -> IssuedToken:
        now = int(self._clock())
        exp = now + (ttl_s if ttl_s is not None else self.ttl_s)
        jti = new_secret(16)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience or self.audience,
            "sub": principal.subject,
            "name": principal.name,
            "kind": principal.kind,
            "grants": [str(g) for g in principal.grants],
            "iat": now,
            "exp": exp,
            "jti": jti,
        }
        if session_id is not None:
            claims["sid"] = session_id
        if csrf_token is not None:
            claims["csrf"] = csrf_digest(csrf_token)
        token = jwt.encode({"alg": ALGORITHM, "kid": self._key.kid}, claims, self._key, [ALGORITHM])
        return IssuedToken(token=token, jti=jti, expires_at=float(exp))

    def public_keys(self) -> KeySet:
        return KeySet([_with_kid(OKPKey.import_key(self._key.as_dict(private=False)))])

    def jwks(self) -> dict[str, Any]:
        """The JWKS document (public keys only) for `/.well-known/jwks.json`."""
        return jwks_document(self.public_keys())


def jwks_document(keys: KeySet) -> dict[str, Any]:
    return {"keys": [{**k.as_dict(private=False), "use": "sig", "alg": ALGORITHM} for k in keys.keys]}


class TokenVerifier:
    """Checks signature, issuer, audience and expiry; turns the claims into a Principal."""

    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        leeway_s: int = 30,
        clock: Clock = time.time,
    ) -> None:
        self._keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self._clock = clock

    @classmethod
    def from_jwks(cls, document: Mapping[str, Any], **kwargs: Any) -> TokenVerifier:
        return cls(KeySet.import_key_set(dict(document)), **kwargs)  # type: ignore[arg-type]

    def verify(self, token: str, *, allow_expired: bool = False) -> VerifiedToken:
        """The token's principal and claims, or Unauthenticated saying what is wrong.

        `allow_expired` is for the issuer renewing a browser session: an expired but otherwise
        valid session token still names its session, whose own lifetime the issuer then checks.
        """
        try:
            decoded = jwt.decode(token, self._keys, algorithms=[ALGORITHM])
        except BadSignatureError as exc:
            raise Unauthenticated("invalid token signature") from exc
        except InvalidKeyIdError as exc:
            raise Unauthenticated("token signed by an unknown key") from exc
        except JoseError as exc:
            raise Unauthenticated(f"malformed token ({exc.error})") from exc
        except ValueError as exc:  # not even three base64 parts
            raise Unauthenticated("malformed token") from exc
        claims = decoded.claims
        iat = claims.get("iat")
        if allow_expired and not isinstance(iat, int | float):
            raise Unauthenticated("invalid token claim 'iat'")
        issued_at = int(iat or 0)
        registry = jwt.JWTClaimsRegistry(
            # Renewal checks everything as of the moment of issue, so only expiry is waived.
            now=(lambda: issued_at) if allow_expired else (lambda: int(self._clock())),
            leeway=self.leeway_s,
            iss={"essential": True, "value": self.issuer},
            aud={"essential": True, "value": self.audience},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError as exc:
            raise Unauthenticated("session expired") from exc
        except (InvalidClaimError, MissingClaimError) as exc:
            claim = getattr(exc, "claim", "")
            if claim == "aud":
                raise Unauthenticated("token not issued for this audience") from exc
            raise Unauthenticated(f"invalid token claim {claim!r}") from exc
        return VerifiedToken(principal=_principal(claims), claims=claims)


def _principal(claims: Mapping[str, Any]) -> Principal:
    kind = claims.get("kind")
    grants = claims.get("grants")
    if kind not in ("user", "service") or not isinstance(grants, list):
        raise Unauthenticated("invalid token claims (kind/grants)")
    try:
        parsed = tuple(Grant.parse(g) for g in grants)
    except (ValueError, AttributeError) as exc:
        raise Unauthenticated("invalid token claims (grants)") from exc
    return Principal(
        subject=str(claims["sub"]), name=str(claims.get("name") or claims["sub"]), kind=kind, grants=parsed
    )
