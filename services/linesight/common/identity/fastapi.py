"""FastAPI side: who is calling (bearer token or session cookie), CSRF, and `require(operation)`.

Every route declares its operation with `require(...)`; `unprotected_routes(app, policy)` lists the
routes that do not (or whose operation the policy does not know), so a new route without a rule
fails the endpoint matrix test instead of shipping open.

Browser sessions: the cookie holds a short-lived signed token (HttpOnly, SameSite, Secure behind
TLS) carrying the session id and a digest of the session's CSRF token. Unsafe methods
authenticated by that cookie must echo the CSRF token in the `X-CSRF-Token` header or a
`csrf_token` field of a urlencoded form; the token is compared with the signed digest, so a
cookie planted by a sibling site cannot supply it. Bearer tokens are not ambient, so they skip CSRF.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.routing import iter_route_contexts

from linesight.common.identity.config import AuthSettings
from linesight.common.identity.model import Forbidden, Principal, Unauthenticated
from linesight.common.identity.policy import Policy
from linesight.common.identity.tokens import IssuedToken, TokenVerifier, VerifiedToken

# The 401 detail when a route refuses a caller without credentials (a handler's own 401s differ).
AUTHENTICATION_REQUIRED = "authentication required"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
CSRF_FORM_FIELD = "csrf_token"
_OPERATION_ATTR = "__linesight_operation__"
# Optional extra check on cookie sessions (the issuer passes one that consults its session table,
# so logout and disabling a user take effect before the cookie token expires).
SessionCheck = Callable[[VerifiedToken], Awaitable[bool]]


@dataclass
class Authenticator:
    """What `require` needs; stored on `app.state` by `install`."""

    verifier: TokenVerifier
    policy: Policy
    settings: AuthSettings
    session_check: SessionCheck | None = None

    async def authenticate(self, request: Request) -> tuple[VerifiedToken, bool] | None:
        """(token, via_cookie) for the request's credential, None when it carries none.

        Raises Unauthenticated for a credential that is present but invalid or expired.
        """
        header = request.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("expected 'Authorization: Bearer <token>'")
            return self.verifier.verify(token.strip()), False
        cookie = request.cookies.get(self.settings.cookie_name)
        if not cookie:
            return None
        verified = self.verifier.verify(cookie)
        if verified.session_id is None:
            raise Unauthenticated("cookie does not hold a session token")
        if self.session_check is not None and not await self.session_check(verified):
            raise Unauthenticated("session expired")
        return verified, True

    async def check_csrf(self, request: Request, verified: VerifiedToken) -> None:
        if request.method in SAFE_METHODS:
            return
        presented = request.headers.get(self.settings.csrf_header)
        if not presented and request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            # Starlette caches the body, so the route can still read it afterwards.
            form = parse_qs((await request.body()).decode("utf-8", "replace"))
            presented = (form.get(CSRF_FORM_FIELD) or [""])[0]
        if not verified.csrf_matches(presented):
            raise Forbidden("CSRF token missing or wrong")


def install(app: FastAPI, authenticator: Authenticator) -> None:
    app.state.linesight_auth = authenticator


def _authenticator(request: Request) -> Authenticator:
    auth = getattr(request.app.state, "linesight_auth", None)
    if not isinstance(auth, Authenticator):
        raise RuntimeError("identity.fastapi.install(app, Authenticator(...)) was not called")
    return auth


def _unauthenticated(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def require(operation: str, *, plant: str | None = None, product: str | None = None) -> Any:
    """Dependency that admits the caller only if the policy allows `operation`; returns the Principal
    (None for public operations). `plant`/`product` name path or query parameters that scope it.

        @router.post("/label", dependencies=[require("labeling.submit_label")])
        async def submit(who: CurrentPrincipal): ...
    """

    async def dependency(request: Request) -> Principal | None:
        auth = _authenticator(request)
        if auth.policy.is_public(operation):
            return None
        try:
            found = await auth.authenticate(request)
            if found is None:
                raise Unauthenticated(AUTHENTICATION_REQUIRED)
            verified, via_cookie = found
            if via_cookie:
                await auth.check_csrf(request, verified)
            auth.policy.authorize(
                verified.principal, operation, _param(request, plant), _param(request, product)
            )
        except Unauthenticated as exc:
            raise _unauthenticated(str(exc)) from exc
        except Forbidden as exc:
            raise HTTPException(status_code=403, detail=str(exc)) from exc
        request.state.principal = verified.principal
        return verified.principal

    setattr(dependency, _OPERATION_ATTR, operation)
    return Depends(dependency)


def _param(request: Request, name: str | None) -> str | None:
    if name is None:
        return None
    value = request.path_params.get(name) or request.query_params.get(name)
    return str(value) if value else None


def _current_principal(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        # A route using CurrentPrincipal without `require`, or on a public operation: fail closed.
        raise _unauthenticated(AUTHENTICATION_REQUIRED)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(_current_principal)]


def client_address(request: Request) -> str:
    """Where the request came from, for the audit trail (uvicorn's proxy-headers decide trust)."""
    return request.client.host if request.client else ""


def route_operations(route: Any) -> list[str]:
    """The operations `route` requires (empty when it has none), its router's dependencies included."""
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return []
    found: list[str] = []
    stack = [dependant]
    while stack:
        dep = stack.pop()
        op = getattr(dep.call, _OPERATION_ATTR, None)
        if isinstance(op, str):
            found.append(op)
        stack.extend(dep.dependencies)
    return found


def unprotected_routes(app: FastAPI, policy: Policy, *, allow: Iterable[str] = ()) -> list[str]:
    """`METHOD path` of every route without a `require`, or whose operation the policy does not
    declare. Mounted apps, static files and FastAPI's own /docs and /openapi.json count as
    unprotected (they cannot carry a rule): disable them, or name their paths in `allow`.
    Routes of included routers are listed with their effective path and dependencies."""
    allowed = set(allow)
    bad: list[str] = []
    for route in iter_route_contexts(app.routes):
        ops = route_operations(route)
        methods: Iterable[str] = sorted(route.methods or {"*"})
        path = route.path or repr(route.original_route)
        if path in allowed:
            continue
        if not ops or policy.unmapped(ops):
            bad.extend(f"{m} {path}" for m in methods)
    return bad


class SessionCookies:
    """Sets and clears the session cookie pair: the HttpOnly token, and a readable CSRF token for
    scripts (forms get it rendered in a hidden `csrf_token` field)."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    def set(self, response: Response, token: IssuedToken, csrf_token: str) -> None:
        s = self.settings
        common: dict[str, Any] = {"path": "/", "secure": s.cookie_secure, "samesite": s.cookie_samesite}
        response.set_cookie(s.cookie_name, token.token, max_age=s.session_ttl_s, httponly=True, **common)
        response.set_cookie(s.csrf_cookie_name, csrf_token, max_age=s.session_ttl_s, httponly=False, **common)

    def clear(self, response: Response) -> None:
        for name in (self.settings.cookie_name, self.settings.csrf_cookie_name):
            response.delete_cookie(
                name, path="/", secure=self.settings.cookie_secure, samesite=self.settings.cookie_samesite
            )
