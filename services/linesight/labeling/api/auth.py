"""The identity issuer's HTTP side: password and OIDC login, logout, session refresh, the public key
set, and API key -> bearer token exchange for service accounts.

Browser sessions live in the user store; the cookie holds a short signed token naming the
session, renewed here while the session is alive (idle and absolute limits end it). Every login,
failed or not, and every logout goes to the audit trail. Between the two OIDC steps the login
request (state, nonce, PKCE verifier) travels in a cookie signed with the installation key and
valid for ten minutes, so any replica can finish the login.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from pydantic import BaseModel, Field

from linesight.common.audit import AuditEntry
from linesight.common.identity import Principal, Unauthenticated
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.fastapi import SessionCookies, client_address, require
from linesight.common.identity.oidc import LoginRequest, OidcClient
from linesight.common.identity.tokens import ALGORITHM, TokenSigner, TokenVerifier, VerifiedToken
from linesight.common.identity.users import PgUserStore, User, UserExists
from linesight.common.limits import Text, TextError, check_name, check_text
from linesight.labeling.api import policy
from linesight.labeling.app.labeling import LabelingApp

log = logging.getLogger(__name__)

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
OIDC_COOKIE = "linesight_oidc_login"
LOGIN_CSRF_COOKIE = "linesight_login_csrf"
OIDC_LOGIN_TTL_S = 600
MAX_PASSWORD = 1024
_OIDC_AUDIENCE = "linesight-oidc-login"

router = APIRouter()


@dataclass
class Issuer:
    """What the auth routes need; stored on app.state by `mount`."""

    users: PgUserStore
    signer: TokenSigner
    verifier: TokenVerifier
    settings: AuthSettings
    labeling: LabelingApp
    login_key: OKPKey  # the installation's signing key, for the OIDC login cookie
    oidc: OidcClient | None = None

    @property
    def cookies(self) -> SessionCookies:
        return SessionCookies(self.settings)

    async def session_alive(self, verified: VerifiedToken) -> bool:
        """The session check every cookie-authenticated request runs: logout, idle timeout and a
        disabled account end access before the cookie token itself expires."""
        sid = verified.session_id
        if sid is None:
            return False
        idle = timedelta(seconds=self.settings.session_idle_s)
        return await self.users.resume_session(sid, idle=idle) is not None

    async def start_session(self, response: Response, user: User) -> None:
        session_id, csrf = await self.users.create_session(
            user, ttl=timedelta(seconds=self.settings.session_ttl_s)
        )
        self._set_cookie(response, user.principal(), session_id, csrf)

    def _set_cookie(self, response: Response, principal: Principal, session_id: str, csrf: str) -> None:
        token = self.signer.issue(
            principal, ttl_s=self.settings.session_token_ttl_s, session_id=session_id, csrf_token=csrf
        )
        self.cookies.set(response, token, csrf)

    async def audit_login(
        self, principal: Principal | None, username: str, action: str, request: Request
    ) -> None:
        role = principal.grants[0].role.value if principal and principal.grants else ""
        await self.labeling.record(
            AuditEntry(
                actor=principal.subject if principal else f"unknown:{username}",
                actor_name=principal.name if principal else username,
                role=role,
                action=action,
                object_kind="session",
                object_id=principal.subject if principal else username,
                new_value={"grants": [str(g) for g in principal.grants]} if principal else None,
                client=client_address(request),
            )
        )


def get_issuer(request: Request) -> Issuer:
    issuer: Issuer = request.app.state.issuer
    return issuer


IssuerDep = Annotated[Issuer, Depends(get_issuer)]


def safe_next(target: str) -> str:
    """Only a path on this site (never `//host` or a scheme): no open redirect through `next`."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _form_or_json(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = await request.json()
        except ValueError as exc:
            raise HTTPException(422, "body is not JSON") from exc
        if not isinstance(data, dict):
            raise HTTPException(422, "body must be a JSON object")
        for key, value in data.items():
            if not isinstance(value, str):  # a number or list is a client bug, not a password
                raise TextError(f"{key}: must be a string")
        return data
    return {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}


@router.get("/login", response_class=HTMLResponse, dependencies=[require(policy.LOGIN_PAGE)])
async def login_page(request: Request, issuer: IssuerDep, next: Text = "/", error: Text = "") -> HTMLResponse:
    csrf = secrets.token_urlsafe(24)
    response = templates.TemplateResponse(
        request,
        "login.html",
        {"next": safe_next(next), "error": error, "csrf_token": csrf, "oidc": issuer.oidc is not None},
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        csrf,
        max_age=1800,
        httponly=True,
        samesite="strict",
        secure=issuer.settings.cookie_secure,
        path="/login",
    )
    return response


@router.post("/login", dependencies=[require(policy.LOGIN)])
async def login(request: Request, issuer: IssuerDep) -> Response:
    """Form login (from the page: redirects, login CSRF checked) or JSON login (scripts: 200/401)."""
    is_form = not request.headers.get("content-type", "").startswith("application/json")
    data = await _form_or_json(request)
    if is_form:
        presented, expected = data.get("csrf_token", ""), request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(presented, expected):
            raise HTTPException(403, "CSRF token missing or wrong; reload the login page")
    username, password = data.get("username", "").strip(), data.get("password", "")
    check_name(username, "username")  # before the user store: PostgreSQL refuses a NUL (a 500)
    check_text(password, "password", max_len=MAX_PASSWORD)  # hashing a megabyte is a cheap DoS
    target = safe_next(data.get("next", "/"))
    if not is_form and not (username and password):
        raise HTTPException(422, "username and password are required")
    user = await issuer.users.authenticate(username, password) if username and password else None
    if user is None:
        await issuer.audit_login(None, username[:200], "login.failed", request)
        if is_form:
            return RedirectResponse(
                f"/login?error={quote('wrong username or password')}&next={quote(target)}", status_code=303
            )
        raise HTTPException(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    response: Response = (
        RedirectResponse(target, status_code=303) if is_form else JSONResponse({"user": user.username})
    )
    await issuer.start_session(response, user)
    await issuer.audit_login(user.principal(), username, "login.password", request)
    return response


@router.post("/logout", dependencies=[require(policy.LOGOUT)])
async def logout(request: Request, issuer: IssuerDep) -> Response:
    """End the session named by the cookie (even an expired cookie token still names it)."""
    cookie = request.cookies.get(issuer.settings.cookie_name)
    principal = None
    if cookie:
        try:
            verified = issuer.verifier.verify(cookie, allow_expired=True)
        except Unauthenticated:
            verified = None
        if verified is not None and verified.session_id:
            await issuer.users.revoke_session(verified.session_id)
            principal = verified.principal
    response = RedirectResponse("/login", status_code=303)
    issuer.cookies.clear(response)
    if principal is not None:
        await issuer.audit_login(principal, principal.name, "logout", request)
    return response


@router.api_route("/auth/refresh", methods=["GET", "POST"], dependencies=[require(policy.REFRESH)])
async def refresh(request: Request, issuer: IssuerDep, next: Text = "") -> Response:
    """A fresh cookie token for a live session (401 when the session ended). GET with `next`
    redirects (the page sends a browser here when its token ran out), POST answers JSON."""
    cookie = request.cookies.get(issuer.settings.cookie_name)
    session = None
    if cookie:
        try:
            verified = issuer.verifier.verify(cookie, allow_expired=True)
        except Unauthenticated:
            verified = None
        if verified is not None and verified.session_id:
            idle = timedelta(seconds=issuer.settings.session_idle_s)
            session = await issuer.users.resume_session(verified.session_id, idle=idle)
    if session is None or verified is None or verified.session_id is None:
        if next:
            return RedirectResponse(f"/login?next={quote(safe_next(next))}", status_code=303)
        raise HTTPException(401, "session expired", headers={"WWW-Authenticate": "Bearer"})
    response: Response = (
        RedirectResponse(safe_next(next), status_code=303)
        if next
        else JSONResponse({"user": session.user.username})
    )
    issuer._set_cookie(response, session.user.principal(), verified.session_id, session.csrf_token)
    return response


@router.get("/.well-known/jwks.json", dependencies=[require(policy.JWKS)])
async def jwks(issuer: IssuerDep) -> dict[str, Any]:
    return issuer.signer.jwks()


class TokenRequest(BaseModel):
    api_key: str = Field(min_length=1, max_length=512)


@router.post("/auth/token", dependencies=[require(policy.TOKEN)])
async def token(body: TokenRequest, request: Request, issuer: IssuerDep) -> dict[str, Any]:
    """Service account API key -> short-lived bearer token (machines never hold a session)."""
    account = await issuer.users.authenticate_api_key(body.api_key)
    if account is None:
        await issuer.audit_login(None, "service-account", "token.failed", request)
        raise HTTPException(401, "invalid or disabled API key", headers={"WWW-Authenticate": "Bearer"})
    issued = issuer.signer.issue(account.principal())
    await issuer.audit_login(account.principal(), account.name, "token.issued", request)
    return {
        "access_token": issued.token,
        "token_type": "Bearer",
        "expires_in": int(issued.expires_at - time.time()),
    }


@router.get("/auth/oidc/login", dependencies=[require(policy.OIDC_LOGIN)])
async def oidc_login(request: Request, issuer: IssuerDep, next: Text = "/") -> Response:
    if issuer.oidc is None:
        raise HTTPException(404, "OIDC login is not configured (LINESIGHT_AUTH_OIDC_ISSUER_URL)")
    try:
        login_request = await issuer.oidc.begin(str(request.url_for("oidc_callback")))
    except Unauthenticated as exc:  # provider unreachable or its discovery document invalid
        raise HTTPException(502, f"OIDC login unavailable: {exc}") from exc
    now = int(time.time())
    claims = {
        "aud": _OIDC_AUDIENCE,
        "iat": now,
        "exp": now + OIDC_LOGIN_TTL_S,
        "state": login_request.state,
        "nonce": login_request.nonce,
        "verifier": login_request.code_verifier,
        "redirect_uri": login_request.redirect_uri,
        "next": safe_next(next),
    }
    cookie = jwt.encode({"alg": ALGORITHM}, claims, issuer.login_key, [ALGORITHM])
    response = RedirectResponse(login_request.url, status_code=303)
    response.set_cookie(
        OIDC_COOKIE,
        cookie,
        max_age=OIDC_LOGIN_TTL_S,
        httponly=True,
        samesite="lax",
        secure=issuer.settings.cookie_secure,
        path="/auth/oidc",
    )
    return response


@router.get("/auth/oidc/callback", name="oidc_callback", dependencies=[require(policy.OIDC_CALLBACK)])
async def oidc_callback(request: Request, issuer: IssuerDep) -> Response:
    if issuer.oidc is None:
        raise HTTPException(404, "OIDC login is not configured (LINESIGHT_AUTH_OIDC_ISSUER_URL)")
    claims = _login_claims(request.cookies.get(OIDC_COOKIE, ""), issuer.login_key)
    login_request = LoginRequest(
        url="",
        state=claims["state"],
        nonce=claims["nonce"],
        code_verifier=claims["verifier"],
        redirect_uri=claims["redirect_uri"],
    )
    try:
        identity = await issuer.oidc.complete(dict(request.query_params), login_request)
    except Unauthenticated as exc:
        await issuer.audit_login(None, "oidc", "login.failed", request)
        raise HTTPException(401, str(exc)) from exc
    username = f"oidc:{identity.username}"
    try:
        user = await issuer.users.add_user(username, display_name=identity.name, grants=identity.grants)
    except UserExists:
        # The provider's groups are the truth for OIDC users: refresh the grants at every login.
        user = await issuer.users.set_grants(username, identity.grants)
    if user.disabled:
        await issuer.audit_login(user.principal(), username, "login.failed", request)
        raise HTTPException(403, f"account {username} is disabled")
    response = RedirectResponse(safe_next(str(claims.get("next", "/"))), status_code=303)
    response.delete_cookie(OIDC_COOKIE, path="/auth/oidc")
    await issuer.start_session(response, user)
    await issuer.audit_login(user.principal(), username, "login.oidc", request)
    return response


def _login_claims(cookie: str, key: OKPKey) -> dict[str, Any]:
    if not cookie:
        raise HTTPException(400, "no OIDC login in progress (cookie missing or expired); start again")
    try:
        token = jwt.decode(cookie, key, algorithms=[ALGORITHM])
        jwt.JWTClaimsRegistry(
            aud={"essential": True, "value": _OIDC_AUDIENCE}, exp={"essential": True}
        ).validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise HTTPException(400, "OIDC login cookie invalid or expired; start again") from exc
    return dict(token.claims)


def mount(app: FastAPI, issuer: Issuer) -> None:
    app.state.issuer = issuer
    app.include_router(router)
