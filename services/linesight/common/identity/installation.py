"""One installation's keys: where a service finds the key that signs tokens and the ones that verify.

In the embedded stack every process shares the state dir, so the first one to need the Ed25519
key creates it there (atomically) and the others read it. In Kubernetes the issuer mounts the
private key from a Secret (`LINESIGHT_AUTH_SIGNING_KEY_FILE`) and the other services only the
public half (`LINESIGHT_AUTH_VERIFY_KEY_FILES`), so they can check tokens but never mint one.
"""

from __future__ import annotations

from pathlib import Path

from linesight.common.identity.config import AuthSettings
from linesight.common.identity.model import Principal
from linesight.common.identity.tokens import (
    TokenSigner,
    TokenVerifier,
    load_or_create_signing_key,
    load_public_keys,
)


def installation_verifier(settings: AuthSettings, state_dir: Path) -> TokenVerifier:
    """A verifier for this installation's tokens; creates the embedded key on first use."""
    if not settings.verify_key_files:
        load_or_create_signing_key(settings.signing_key_path(state_dir))
    keys = load_public_keys(settings.verify_key_paths(state_dir))
    return TokenVerifier(keys, issuer=settings.issuer, audience=settings.audience, leeway_s=settings.leeway_s)


def installation_signer(settings: AuthSettings, state_dir: Path, *, ttl_s: int | None = None) -> TokenSigner:
    """The signer: the issuer's, and the local tools' that hold the state dir (`linesight up`, tests)."""
    key = load_or_create_signing_key(settings.signing_key_path(state_dir))
    return TokenSigner(
        key,
        issuer=settings.issuer,
        audience=settings.audience,
        ttl_s=ttl_s if ttl_s is not None else settings.access_token_ttl_s,
    )


def mint(signer: TokenSigner, principal: Principal, *, ttl_s: int | None = None) -> str:
    """A bearer token for `principal` (service accounts of the embedded stack, tests)."""
    return signer.issue(principal, ttl_s=ttl_s).token
