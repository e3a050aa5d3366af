"""Auth settings from `LINESIGHT_AUTH_*` environment variables (kept apart from the core Settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    """How tokens are signed and checked, how browser sessions behave, and the optional OIDC provider."""

    model_config = SettingsConfigDict(env_prefix="LINESIGHT_AUTH_", extra="forbid", frozen=True)

    # Tokens: one issuer (the labeling service) signs, every service verifies.
    issuer: str = "linesight"
    audience: str = "linesight"
    # Issuer's private key (PEM, Ed25519). Created on first start when missing; in Kubernetes a
    # mounted Secret. Empty = <state_dir>/auth/signing-key.pem.
    signing_key_file: Path | None = None
    # Verifiers' public keys (PEM); several allow rotation. Empty = the issuer's `.pub.pem` twin.
    verify_key_files: list[Path] = Field(default_factory=list)
    access_token_ttl_s: int = Field(default=900, ge=30, le=86_400)  # bearer tokens for machines
    leeway_s: int = Field(default=30, ge=0, le=300)  # clock skew between pods

    # Browser sessions: the cookie carries a short signed token the issuer renews while the
    # stored session is alive; idle and absolute limits end it.
    session_ttl_s: int = Field(default=8 * 3600, ge=60)
    session_idle_s: int = Field(default=1800, ge=60)
    session_token_ttl_s: int = Field(default=600, ge=30)
    cookie_name: str = "linesight_session"
    csrf_cookie_name: str = "linesight_csrf"
    csrf_header: str = "x-csrf-token"
    cookie_secure: bool = False  # True behind TLS (the chart sets it); False for the http embedded stack
    cookie_samesite: Literal["lax", "strict"] = "lax"

    # OpenID Connect login against the plant's identity provider; empty issuer_url = disabled.
    oidc_issuer_url: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_scopes: str = "openid profile email"
    oidc_groups_claim: str = "groups"  # or "roles", whatever the provider puts its groups in
    # Provider group -> grants, e.g. '{"qa-plant1": ["qa_owner@plant1/*"]}'.
    oidc_group_grants: dict[str, list[str]] = Field(default_factory=dict)

    def signing_key_path(self, state_dir: Path) -> Path:
        return self.signing_key_file or state_dir / "auth" / "signing-key.pem"

    def verify_key_paths(self, state_dir: Path) -> list[Path]:
        return self.verify_key_files or [public_key_path(self.signing_key_path(state_dir))]


def public_key_path(private_key_path: Path) -> Path:
    """`signing-key.pem` -> `signing-key.pub.pem`: where the issuer leaves its public half."""
    return private_key_path.with_name(private_key_path.stem + ".pub.pem")
