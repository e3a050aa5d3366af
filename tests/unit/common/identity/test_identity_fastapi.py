"""FastAPI enforcement through a real ASGI app: bearer and cookie sessions, CSRF, scopes, route audit."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from joserfc.jwk import OKPKey

from linesight.common.identity import Grant, Policy, Principal, Role
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.fastapi import (
    Authenticator,
    CurrentPrincipal,
    SessionCookies,
    client_address,
    install,
    require,
    unprotected_routes,
)
from linesight.common.identity.tokens import (
    TokenSigner,
    TokenVerifier,
    VerifiedToken,
    load_or_create_signing_key,
)

POLICY = Policy(
    public={"svc.healthz"},
    rules={
        "svc.read": {Role.LABELER, Role.REVIEWER},
        "svc.submit": {Role.LABELER},
        "svc.plant_stats": {Role.REVIEWER},
    },
)
SETTINGS = AuthSettings(cookie_secure=True, cookie_samesite="strict")
ANN = Principal("u_ann", "Ann", "user", (Grant.parse("labeler@plant1"),))
RITA = Principal("u_rita", "Rita", "user", (Grant.parse("reviewer@plant1/*"),))


def make_app(revoked: set[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz", dependencies=[require("svc.healthz")])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/items", dependencies=[require("svc.read")])
    async def items(who: CurrentPrincipal) -> dict[str, str]:
        return {"who": who.name}

    @app.post("/labels", dependencies=[require("svc.submit")])
    async def submit(request: Request, who: CurrentPrincipal) -> dict[str, Any]:
        raw = (await request.body()).decode()
        form = {k: v[0] for k, v in parse_qs(raw).items()}
        # The author is the authenticated caller, whatever the request claims.
        return {"author": who.subject, "label": form.get("label", ""), "client": client_address(request)}

    @app.get("/plants/{plant}/stats", dependencies=[require("svc.plant_stats", plant="plant")])
    async def stats(plant: str) -> dict[str, str]:
        return {"plant": plant}

    @app.get("/forgot-the-rule")
    async def forgot(who: CurrentPrincipal) -> dict[str, str]:
        return {"who": who.name}

    @app.get("/unknown-op", dependencies=[require("svc.not_in_policy")])
    async def unknown() -> dict[str, str]:
        return {}

    return app


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> OKPKey:
    return load_or_create_signing_key(tmp_path_factory.mktemp("auth") / "signing-key.pem")


@pytest.fixture(scope="module")
def signer(key: OKPKey) -> TokenSigner:
    return TokenSigner(key, issuer=SETTINGS.issuer, audience=SETTINGS.audience, ttl_s=60)


@pytest.fixture
def revoked() -> set[str]:
    return set()


@pytest.fixture
async def client(signer: TokenSigner, revoked: set[str]) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(revoked)

    async def session_alive(token: VerifiedToken) -> bool:
        return token.session_id not in revoked

    verifier = TokenVerifier(signer.public_keys(), issuer=SETTINGS.issuer, audience=SETTINGS.audience)
    install(app, Authenticator(verifier, POLICY, SETTINGS, session_check=session_alive))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://svc") as c:
        yield c


def bearer(signer: TokenSigner, who: Principal, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {signer.issue(who, **kw).token}"}


def login(client: httpx.AsyncClient, signer: TokenSigner, who: Principal, sid: str = "s1") -> str:
    csrf = f"csrf-{sid}"
    client.cookies.set(SETTINGS.cookie_name, signer.issue(who, session_id=sid, csrf_token=csrf).token)
    return csrf


async def test_public_route_needs_nothing_and_protected_route_needs_a_credential(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/items")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["detail"] == "authentication required"


async def test_bearer_token(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    r = await client.get("/items", headers=bearer(signer, ANN))
    assert r.status_code == 200 and r.json() == {"who": "Ann"}
    r = await client.get("/items", headers={"Authorization": "Basic YTpi"})
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]


async def test_expired_token_is_401_session_expired(client: httpx.AsyncClient, key: OKPKey) -> None:
    old = TokenSigner(
        key, issuer=SETTINGS.issuer, audience=SETTINGS.audience, ttl_s=60, clock=lambda: time.time() - 3600
    )
    r = await client.get("/items", headers={"Authorization": f"Bearer {old.issue(ANN).token}"})
    assert r.status_code == 401 and r.json()["detail"] == "session expired"


async def test_missing_role_is_403(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    r = await client.post("/labels", headers=bearer(signer, RITA), content=b"label=ok")
    assert r.status_code == 403 and "needs one of ['labeler']" in r.json()["detail"]


async def test_cookie_session_reads_without_csrf(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    login(client, signer, ANN)
    assert (await client.get("/items")).json() == {"who": "Ann"}


async def test_cookie_session_unsafe_method_needs_csrf(
    client: httpx.AsyncClient, signer: TokenSigner
) -> None:
    csrf = login(client, signer, ANN)
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = await client.post("/labels", content=b"label=scratch&author=mallory", headers=form)
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = await client.post("/labels", content=b"label=scratch", headers={**form, "X-CSRF-Token": "guess"})
    assert r.status_code == 403
    r = await client.post(
        "/labels", content=b"label=scratch&author=mallory", headers={**form, "X-CSRF-Token": csrf}
    )
    assert r.status_code == 200
    assert r.json()["author"] == "u_ann" and r.json()["label"] == "scratch"


async def test_csrf_token_in_a_plain_html_form_field(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    csrf = login(client, signer, ANN)
    r = await client.post("/labels", data={"label": "dent", "csrf_token": csrf})
    assert r.status_code == 200 and r.json()["label"] == "dent"  # the route still reads the body


async def test_bearer_calls_skip_csrf(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    r = await client.post("/labels", headers=bearer(signer, ANN), content=b"label=ok")
    assert r.status_code == 200 and r.json()["author"] == "u_ann"


async def test_cookie_must_hold_a_session_token(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    client.cookies.set(SETTINGS.cookie_name, signer.issue(ANN).token)  # a bearer token, no session id
    assert (await client.get("/items")).status_code == 401


async def test_revoked_session_is_401_before_its_token_expires(
    client: httpx.AsyncClient, signer: TokenSigner, revoked: set[str]
) -> None:
    login(client, signer, ANN, sid="s-gone")
    revoked.add("s-gone")
    r = await client.get("/items")
    assert r.status_code == 401 and r.json()["detail"] == "session expired"


async def test_plant_scope_from_the_path(client: httpx.AsyncClient, signer: TokenSigner) -> None:
    assert (await client.get("/plants/plant1/stats", headers=bearer(signer, RITA))).status_code == 200
    r = await client.get("/plants/plant2/stats", headers=bearer(signer, RITA))
    assert r.status_code == 403 and "plant2" in r.json()["detail"]


async def test_current_principal_without_require_fails_closed(
    client: httpx.AsyncClient, signer: TokenSigner
) -> None:
    assert (await client.get("/forgot-the-rule", headers=bearer(signer, ANN))).status_code == 401


async def test_route_with_undeclared_operation_is_denied(
    client: httpx.AsyncClient, signer: TokenSigner
) -> None:
    r = await client.get("/unknown-op", headers=bearer(signer, ANN))
    assert r.status_code == 403 and "denied by default" in r.json()["detail"]


def test_unprotected_routes_lists_routes_without_a_declared_rule() -> None:
    app = make_app(set())
    bad = unprotected_routes(app, POLICY)
    assert "GET /forgot-the-rule" in bad and "GET /unknown-op" in bad
    assert "GET /items" not in bad and "POST /labels" not in bad and "GET /healthz" not in bad
    assert "GET /openapi.json" in bad  # FastAPI's own docs carry no rule either
    docs = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    assert unprotected_routes(app, POLICY, allow=docs | {"/forgot-the-rule", "/unknown-op"}) == []


def test_session_cookies_are_httponly_samesite_and_secure(signer: TokenSigner) -> None:
    response = Response()
    SessionCookies(SETTINGS).set(response, signer.issue(ANN, session_id="s", csrf_token="c"), "c")
    cookies = response.headers.getlist("set-cookie")
    session = next(c for c in cookies if c.startswith(SETTINGS.cookie_name + "="))
    csrf = next(c for c in cookies if c.startswith(SETTINGS.csrf_cookie_name + "="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Secure" in session
    assert "HttpOnly" not in csrf and "Secure" in csrf
    cleared = Response()
    SessionCookies(SETTINGS).clear(cleared)
    assert all("Max-Age=0" in c for c in cleared.headers.getlist("set-cookie"))
