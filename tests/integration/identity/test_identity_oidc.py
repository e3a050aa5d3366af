"""OIDC login end to end against a real authlib authorization server on a free port.

The relying party is a small ASGI app (login + callback) using OidcClient; one httpx client
follows every redirect: RP /login -> provider /authorize (auto-approves the test user) ->
RP /callback, which redeems the code over HTTP, validates the ID token and maps groups to grants.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from linesight.common.identity.config import AuthSettings
from linesight.common.identity.oidc import LoginRequest, OidcClient, OidcError
from tests.integration.identity.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider

pytestmark = pytest.mark.integration

RP = "http://rp.test"
CALLBACK = f"{RP}/callback"


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    idp = Provider(CALLBACK)
    await idp.start()
    yield idp
    await idp.stop()


@pytest.fixture
async def oidc(provider: Provider) -> AsyncIterator[OidcClient]:
    settings = AuthSettings(
        oidc_issuer_url=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_scopes="openid profile groups",
        oidc_groups_claim="groups",
        oidc_group_grants={
            "qa-plant1": ["qa_owner@plant1", "reviewer@plant1/widget"],
            "ops": ["line_operator"],
        },
    )
    client = OidcClient.from_settings(settings)
    yield client
    await client.aclose()


def relying_party(oidc: OidcClient, tamper: dict[str, Any] | None = None) -> Starlette:
    pending: dict[str, LoginRequest] = {}

    async def login(request: Request) -> Response:
        req = await oidc.begin(CALLBACK)
        pending[req.state] = req
        return RedirectResponse(req.url, status_code=303)

    async def callback(request: Request) -> Response:
        params = dict(request.query_params)
        req = pending.pop(params.get("state", ""), None) or next(iter(pending.values()))
        if tamper:
            req = LoginRequest(**{**req.__dict__, **tamper})
        try:
            who = await oidc.complete(params, req)
        except OidcError as exc:
            return JSONResponse({"error": str(exc)}, status_code=401)
        principal = who.principal()
        return JSONResponse(
            {
                "subject": principal.subject,
                "name": principal.name,
                "username": who.username,
                "groups": list(who.groups),
                "grants": [str(g) for g in principal.grants],
            }
        )

    return Starlette(routes=[Route("/login", login), Route("/callback", callback)])


async def run_login(oidc: OidcClient, **tamper: Any) -> httpx.Response:
    app = relying_party(oidc, tamper or None)
    async with httpx.AsyncClient(mounts={RP: httpx.ASGITransport(app=app)}, follow_redirects=True) as browser:
        return await browser.get(f"{RP}/login")


async def test_code_flow_validates_the_id_token_and_maps_groups(oidc: OidcClient, provider: Provider) -> None:
    r = await run_login(oidc)
    assert r.status_code == 200, r.text
    assert [str(h.url).split("?")[0] for h in r.history] == [f"{RP}/login", f"{provider.issuer}/authorize"]
    body = r.json()
    assert body["subject"] == "oidc:idp-42" and body["name"] == "Quinn Q." and body["username"] == "qquinn"
    assert body["groups"] == ["qa-plant1", "unrelated"]
    assert body["grants"] == ["qa_owner@plant1/*", "reviewer@plant1/widget"]
    assert provider.codes == {}  # the code was redeemed once


async def test_user_in_no_mapped_group_gets_no_grants(oidc: OidcClient, provider: Provider) -> None:
    provider.user.groups = ["visitors"]
    r = await run_login(oidc)
    assert r.status_code == 200 and r.json()["grants"] == []


async def test_id_token_signed_by_an_unpublished_key_is_rejected(
    oidc: OidcClient, provider: Provider
) -> None:
    provider.sign_with_stranger = True
    r = await run_login(oidc)
    assert r.status_code == 401 and "ID token rejected" in r.json()["error"]


async def test_wrong_pkce_verifier_is_refused_by_the_provider(oidc: OidcClient) -> None:
    r = await run_login(oidc, code_verifier="not-the-verifier-that-made-the-challenge-0123456789")
    assert r.status_code == 401 and "token endpoint answered 400" in r.json()["error"]


async def test_nonce_mismatch_is_rejected(oidc: OidcClient) -> None:
    r = await run_login(oidc, nonce="another-login")
    assert r.status_code == 401 and "nonce" in r.json()["error"]


async def test_forged_state_is_rejected(oidc: OidcClient) -> None:
    r = await run_login(oidc, state="forged")
    assert r.status_code == 401 and "state mismatch" in r.json()["error"]


async def test_provider_error_and_wrong_issuer(oidc: OidcClient, provider: Provider) -> None:
    req = await oidc.begin(CALLBACK)
    with pytest.raises(OidcError, match="access_denied"):
        await oidc.complete({"error": "access_denied", "state": req.state}, req)
    # Same server reached under another name: its discovery names a different issuer.
    impostor = OidcClient(
        issuer_url=provider.issuer.replace("127.0.0.1", "localhost"), client_id=CLIENT_ID, client_secret="x"
    )
    with pytest.raises(OidcError, match="discovery names issuer"):
        await impostor.metadata()
    await impostor.aclose()
