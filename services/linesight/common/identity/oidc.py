"""OpenID Connect login against the plant's identity provider (authorization code + PKCE).

authlib supplies the protocol pieces (provider metadata validation, authorization URL, PKCE
challenge); HTTP goes through httpx directly and the ID token is checked with joserfc against
the provider's JWKS, pinned to the algorithms the provider advertises (never `none`/HS*).
The provider's groups (a configurable claim) map to our grants; a user in no mapped group gets
no grants and is therefore refused everywhere except public endpoints.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata, get_well_known_url
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from joserfc.jwk import KeySet

from linesight.common.identity.config import AuthSettings
from linesight.common.identity.model import Grant, Principal, Unauthenticated

_ASYMMETRIC = {
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "Ed25519",
    "EdDSA",
}


class OidcError(Unauthenticated):
    """The provider refused the login, or its answer did not validate."""


@dataclass(frozen=True)
class LoginRequest:
    """What the callback needs back; keep it server-side or in a signed, HttpOnly, short-lived cookie."""

    url: str
    state: str
    nonce: str
    code_verifier: str
    redirect_uri: str


@dataclass(frozen=True)
class OidcIdentity:
    subject: str
    username: str
    name: str
    groups: tuple[str, ...]
    grants: tuple[Grant, ...]
    claims: Mapping[str, Any]

    def principal(self) -> Principal:
        return Principal(f"oidc:{self.subject}", self.name or self.username, "user", self.grants)


def parse_group_grants(mapping: Mapping[str, Sequence[str]]) -> dict[str, tuple[Grant, ...]]:
    return {group: tuple(Grant.parse(g) for g in grants) for group, grants in mapping.items()}


class OidcClient:
    """One relying party registration (client id/secret) at one provider."""

    def __init__(
        self,
        *,
        issuer_url: str,
        client_id: str,
        client_secret: str,
        scopes: str = "openid profile email",
        groups_claim: str = "groups",
        group_grants: Mapping[str, Sequence[Grant]] | None = None,
        http: httpx.AsyncClient | None = None,
        leeway_s: int = 30,
    ) -> None:
        if "openid" not in scopes.split():
            raise ValueError(f"OIDC scopes must include 'openid', got {scopes!r}")
        self.issuer_url = issuer_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.scopes = scopes
        self.groups_claim = groups_claim
        self.group_grants = {g: tuple(v) for g, v in (group_grants or {}).items()}
        self._http = http or httpx.AsyncClient(timeout=10.0)
        self._leeway_s = leeway_s
        self._metadata: OpenIDProviderMetadata | None = None
        self._keys: KeySet | None = None

    @classmethod
    def from_settings(cls, settings: AuthSettings, http: httpx.AsyncClient | None = None) -> OidcClient:
        if not settings.oidc_issuer_url:
            raise ValueError("OIDC is not configured (LINESIGHT_AUTH_OIDC_ISSUER_URL is empty)")
        return cls(
            issuer_url=settings.oidc_issuer_url,
            client_id=settings.oidc_client_id,
            client_secret=settings.oidc_client_secret,
            scopes=settings.oidc_scopes,
            groups_claim=settings.oidc_groups_claim,
            group_grants=parse_group_grants(settings.oidc_group_grants),
            http=http,
            leeway_s=settings.leeway_s,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def metadata(self) -> OpenIDProviderMetadata:
        """The provider's discovery document (fetched once), checked to name the configured issuer."""
        if self._metadata is None:
            data = await self._get_json(get_well_known_url(self.issuer_url, external=True))
            meta = OpenIDProviderMetadata(data)
            try:
                meta.validate()
            except ValueError as exc:
                raise OidcError(f"invalid OIDC discovery document at {self.issuer_url}: {exc}") from exc
            if str(meta["issuer"]).rstrip("/") != self.issuer_url:
                raise OidcError(f"discovery names issuer {meta['issuer']!r}, expected {self.issuer_url!r}")
            self._metadata = meta
        return self._metadata

    async def begin(self, redirect_uri: str) -> LoginRequest:
        """The provider URL to send the browser to, with fresh state, nonce and PKCE verifier."""
        meta = await self.metadata()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        url = prepare_grant_uri(
            str(meta["authorization_endpoint"]),
            client_id=self.client_id,
            response_type="code",
            redirect_uri=redirect_uri,
            scope=self.scopes,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return LoginRequest(
            url=url, state=state, nonce=nonce, code_verifier=verifier, redirect_uri=redirect_uri
        )

    async def complete(self, params: Mapping[str, str], login: LoginRequest) -> OidcIdentity:
        """Handle the callback's query parameters: check state, redeem the code, validate the ID token."""
        if "error" in params:
            detail = f"{params['error']} {params.get('error_description', '')}".strip()
            raise OidcError(f"identity provider refused the login: {detail}")
        if not hmac.compare_digest(params.get("state", ""), login.state):
            raise OidcError("OIDC state mismatch (stale or forged callback)")
        code = params.get("code")
        if not code:
            raise OidcError("OIDC callback without a code")
        meta = await self.metadata()
        response = await self._http.post(
            str(meta["token_endpoint"]),
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": login.redirect_uri,
                "code_verifier": login.code_verifier,
            },
            auth=(self.client_id, self._client_secret),
            headers={"Accept": "application/json"},
        )
        body = _json(response)
        if response.status_code != 200 or "id_token" not in body:
            raise OidcError(
                f"token endpoint answered {response.status_code}: {body.get('error', 'no id_token')}"
            )
        claims = await self.validate_id_token(str(body["id_token"]), nonce=login.nonce)
        groups = _groups(claims.get(self.groups_claim))
        grants = tuple(dict.fromkeys(g for group in groups for g in self.group_grants.get(group, ())))
        return OidcIdentity(
            subject=str(claims["sub"]),
            username=str(claims.get("preferred_username") or claims.get("email") or claims["sub"]),
            name=str(claims.get("name") or claims.get("preferred_username") or claims["sub"]),
            groups=groups,
            grants=grants,
            claims=claims,
        )

    async def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        meta = await self.metadata()
        offered = meta.get("id_token_signing_alg_values_supported", ["RS256"])
        algs = [str(a) for a in offered if a in _ASYMMETRIC] if isinstance(offered, list) else ["RS256"]
        try:
            token = await self._decode(id_token, algs)
        except JoseError as exc:
            raise OidcError(f"ID token rejected: {exc.error}") from exc
        registry = jwt.JWTClaimsRegistry(
            leeway=self._leeway_s,
            iss={"essential": True, "value": str(meta["issuer"])},
            aud={"essential": True, "value": self.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except ExpiredTokenError as exc:
            raise OidcError("ID token expired") from exc
        except JoseError as exc:
            raise OidcError(f"ID token claim rejected: {exc.description or exc.error}") from exc
        aud = token.claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and token.claims.get("azp") != self.client_id:
            raise OidcError("ID token for several audiences without azp naming this client")
        return dict(token.claims)

    async def _decode(self, id_token: str, algs: list[str]) -> jwt.Token:
        keys = await self._jwks(refresh=False)
        try:
            return jwt.decode(id_token, keys, algorithms=algs)
        except JoseError:
            # The provider may have rotated its keys since we fetched them: try once more.
            return jwt.decode(id_token, await self._jwks(refresh=True), algorithms=algs)

    async def _jwks(self, *, refresh: bool) -> KeySet:
        if self._keys is None or refresh:
            meta = await self.metadata()
            self._keys = KeySet.import_key_set(await self._get_json(meta["jwks_uri"]))  # type: ignore[arg-type]
        return self._keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OidcError(f"identity provider unreachable at {url}: {exc}") from exc
        if response.status_code != 200:
            raise OidcError(f"identity provider answered {response.status_code} for {url}")
        return _json(response)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _groups(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return ()
