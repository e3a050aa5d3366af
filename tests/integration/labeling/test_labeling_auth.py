"""The identity issuer hosted by labeling: first admin, password and OIDC login, CSRF, session
refresh/expiry/logout, API key exchange and the key set, against real PostgreSQL."""

from __future__ import annotations

import stat
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from linesight.common.identity import Grant, Role
from linesight.common.identity.oidc import OidcClient
from linesight.common.identity.tokens import TokenVerifier
from linesight.common.identity.users import PgUserStore
from linesight.common.service import RunningService
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.service import first_admin_password_path

from .conftest import PLANT

pytestmark = pytest.mark.integration

Labeling = RunningService[LabelingApp]


def browser(svc: Labeling) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=svc.ctx.app), base_url="http://test")


def store(svc: Labeling) -> PgUserStore:
    assert svc.ctx.db is not None
    return PgUserStore(svc.ctx.db)


async def test_first_admin_password_is_left_readable_by_the_owner_only(labeling_svc: Labeling) -> None:
    path = first_admin_password_path(labeling_svc.ctx.settings.state_dir)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    admin = await store(labeling_svc).authenticate("admin", password)
    assert admin is not None and admin.principal().has(Role.ADMIN)


async def test_password_login_csrf_refresh_expiry_and_logout(labeling_svc: Labeling) -> None:
    name = f"lena{uuid.uuid4().hex[:6]}"
    password = "correct horse battery"
    await store(labeling_svc).add_user(name, password=password, grants=[Grant(Role.LABELER, PLANT)])
    async with browser(labeling_svc) as c:
        wrong = await c.post("/login", json={"username": name, "password": "nope-nope-nope"})
        assert wrong.status_code == 401
        ok = await c.post("/login", json={"username": name, "password": password})
        assert ok.status_code == 200
        session_cookie = c.cookies["linesight_session"]
        csrf = c.cookies["linesight_csrf"]
        assert (await c.get("/api/stats")).status_code == 200
        # Unsafe methods on a cookie session need the CSRF token.
        no_csrf = await c.post("/api/labels", json={"frame_id": "no-such-frame", "label": "good"})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.json()["detail"]
        with_csrf = await c.post(
            "/api/labels", json={"frame_id": "no-such-frame", "label": "good"}, headers={"x-csrf-token": csrf}
        )
        assert with_csrf.status_code == 404
        form = await c.post(
            "/label",
            content=f"frame_id=no-such-frame&label=good&csrf_token={csrf}",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert form.status_code == 303 and "error=" in form.headers["location"]
        page = await c.get("/")
        assert page.status_code == 200 and f'name="csrf_token" value="{csrf}"' in page.text
        renewed = await c.post("/auth/refresh")
        assert renewed.status_code == 200 and c.cookies["linesight_session"] != session_cookie
        out = await c.post("/logout")
        assert out.status_code == 303
    async with browser(labeling_svc) as c:
        c.cookies.set("linesight_session", session_cookie)
        after = await c.get("/api/stats")
        assert after.status_code == 401 and after.json()["detail"] == "session expired"
        assert (await c.post("/auth/refresh")).status_code == 401


async def test_idle_session_expires_with_401(labeling_svc: Labeling) -> None:
    name = f"ivan{uuid.uuid4().hex[:6]}"
    await store(labeling_svc).add_user(name, password="idle idle idle", grants=[Grant(Role.REVIEWER, PLANT)])
    async with browser(labeling_svc) as c:
        assert (
            await c.post("/login", json={"username": name, "password": "idle idle idle"})
        ).status_code == 200
        assert (await c.get("/api/queues")).status_code == 200
        assert labeling_svc.ctx.db is not None
        async with labeling_svc.ctx.db.connection() as conn:
            await conn.execute(
                "UPDATE auth_sessions SET last_seen_at = now() - interval '3 hours' "
                "WHERE user_id = (SELECT id FROM auth_users WHERE username = %s)",
                (name,),
            )
        expired = await c.get("/api/queues")
        assert expired.status_code == 401
        to_login = await c.get("/", headers={"accept": "text/html"}, follow_redirects=True)
        assert to_login.url.path == "/login" and 'name="csrf_token"' in to_login.text


async def test_login_form_needs_its_csrf_token_and_logins_are_audited(
    labeling_svc: Labeling, mint: Any
) -> None:
    name = f"fred{uuid.uuid4().hex[:6]}"
    await store(labeling_svc).add_user(name, password="form form form", grants=[Grant(Role.LABELER, PLANT)])
    form = {"content-type": "application/x-www-form-urlencoded"}
    async with browser(labeling_svc) as c:
        forged = await c.post("/login", content=f"username={name}&password=form+form+form", headers=form)
        assert forged.status_code == 403
        page = await c.get("/login", params={"next": "//evil.example/"})
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        assert 'name="next" value="/"' in page.text  # no open redirect through `next`
        login = await c.post(
            "/login",
            content=f"username={name}&password=form+form+form&csrf_token={token}&next=/",
            headers=form,
        )
        assert login.status_code == 303 and login.headers["location"] == "/"
    async with browser(labeling_svc) as c:
        c.headers["authorization"] = f"Bearer {mint(f'qa_owner@{PLANT}/*', subject='auditor')}"
        records = (await c.get("/api/audit", params={"action": "login.password", "limit": 1000})).json()[
            "records"
        ]
        mine = [r["action"] for r in records if r["actor_name"] == name]
    assert "login.password" in mine


async def test_api_key_exchange_and_jwks(labeling_svc: Labeling) -> None:
    account, key = await store(labeling_svc).add_service_account(
        f"edge-{uuid.uuid4().hex[:6]}", [Grant(Role.ENGINEER, PLANT)]
    )
    async with browser(labeling_svc) as c:
        assert (await c.post("/auth/token", json={"api_key": key + "x"})).status_code == 401
        issued = await c.post("/auth/token", json={"api_key": key})
        assert issued.status_code == 200 and issued.json()["token_type"] == "Bearer"
        bearer = issued.json()["access_token"]
        assert (await c.get("/api/stats", headers={"authorization": f"Bearer {bearer}"})).status_code == 200
        jwks = (await c.get("/.well-known/jwks.json")).json()
    verifier = TokenVerifier.from_jwks(jwks, issuer="linesight", audience="linesight")
    principal = verifier.verify(bearer).principal
    assert principal.subject == account.id and principal.kind == "service"
    assert all("d" not in k for k in jwks["keys"])  # public halves only


async def test_oidc_login_round_trip(labeling_svc: Labeling) -> None:
    """Against a provider served in-process: discovery, authorization redirect with the login kept
    in a signed cookie, code exchange, ID token check, group -> grant mapping, session."""
    provider_key = OKPKey.generate_key("Ed25519", parameters={"kid": "p1"})
    base = "https://idp.test"
    issued: dict[str, str] = {}

    def provider(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": base, "authorization_endpoint": f"{base}/authorize",
                    "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/jwks",
                    "response_types_supported": ["code"], "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "Ed25519"],
                },
            )  # fmt: skip
        if request.url.path == "/jwks":
            return httpx.Response(200, json={"keys": [provider_key.as_dict(private=False)]})
        if request.url.path == "/token":
            now = int(time.time())
            claims = {
                "iss": base, "aud": "linesight-ui", "sub": "u-42", "iat": now, "exp": now + 300,
                "nonce": issued["nonce"], "preferred_username": "olivia", "name": "Olivia QA",
                "groups": ["qa-team"],
            }  # fmt: skip
            token = jwt.encode({"alg": "Ed25519", "kid": "p1"}, claims, provider_key, ["Ed25519"])
            return httpx.Response(200, json={"id_token": token, "access_token": "x", "token_type": "Bearer"})
        return httpx.Response(404)

    issuer = labeling_svc.ctx.app.state.issuer
    original = issuer.oidc
    issuer.oidc = OidcClient(
        issuer_url=base, client_id="linesight-ui", client_secret="s3cret",
        group_grants={"qa-team": (Grant(Role.QA_OWNER, PLANT),)},
        http=httpx.AsyncClient(transport=httpx.MockTransport(provider)),
    )  # fmt: skip
    try:
        async with browser(labeling_svc) as c:
            start = await c.get("/auth/oidc/login", params={"next": "/api/queues"})
            assert start.status_code == 303 and "linesight_oidc_login" in c.cookies
            query = parse_qs(urlsplit(start.headers["location"]).query)
            issued["nonce"] = query["nonce"][0]
            forged = await c.get("/auth/oidc/callback", params={"code": "c1", "state": "wrong"})
            assert forged.status_code == 401
            back = await c.get("/auth/oidc/callback", params={"code": "c1", "state": query["state"][0]})
            assert back.status_code == 303 and back.headers["location"] == "/api/queues"
            assert (await c.get("/api/audit")).status_code == 200  # qa_owner via the group mapping
        user = await store(labeling_svc).get_user("oidc:olivia")
        assert user.display_name == "Olivia QA" and user.principal().has(Role.QA_OWNER, PLANT, "x")
        async with browser(labeling_svc) as stale:  # no login in progress: the callback refuses
            assert (
                await stale.get("/auth/oidc/callback", params={"code": "c", "state": "s"})
            ).status_code == 400
    finally:
        await issuer.oidc.aclose()
        issuer.oidc = original
