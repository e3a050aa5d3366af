"""Composition root of the labeling service: ledger and identity schema, the identity issuer
(login, tokens, first admin), result and taxonomy consumers, review UI and APIs, gRPC, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from linesight.common.audit import AUDIT_MIGRATIONS, AuditLog
from linesight.common.db import aapply_migrations
from linesight.common.identity.config import AuthSettings
from linesight.common.identity.installation import installation_signer, installation_verifier
from linesight.common.identity.oidc import OidcClient
from linesight.common.identity.tokens import load_or_create_signing_key
from linesight.common.identity.users import IDENTITY_MIGRATIONS, PgUserStore
from linesight.common.pb import events_pb2
from linesight.common.service import ServiceContext
from linesight.labeling.api import auth, http, pages, taxonomy_ui
from linesight.labeling.api.bus import (
    DURABLE,
    TAXONOMY_DURABLE,
    make_result_handler,
    make_taxonomy_handler,
    result_subject,
    taxonomy_subject,
)
from linesight.labeling.api.grpc import LabelingServicer, register
from linesight.labeling.api.policy import POLICY
from linesight.labeling.app.config import LabelingConfig
from linesight.labeling.app.labeling import LabelingApp
from linesight.labeling.app.metrics import LabelingMetrics
from linesight.labeling.store import MIGRATIONS_DIR, SCHEMA

log = logging.getLogger(__name__)
QUEUE_STATS_EVERY_S = 15.0


def first_admin_password_path(state_dir: Path) -> Path:
    """Where the first admin's one-time password is left (`linesight up` prints this path)."""
    return state_dir / "auth" / "first-admin-password"


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` readable by this user only (0600 from creation, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(secret + "\n")


async def setup(ctx: ServiceContext) -> LabelingApp:
    """Migrate the `labeling` schema (ledger, workflow, identity store, audit trail), host login and
    token issuing, mount the UI, consume our plant's results and taxonomies."""
    settings = ctx.settings
    for extra in (IDENTITY_MIGRATIONS, AUDIT_MIGRATIONS):
        await aapply_migrations(settings.pg_dsn, SCHEMA, extra)
    db = await ctx.use_database(SCHEMA, MIGRATIONS_DIR)
    labeling = LabelingApp(
        db,
        ctx.bus,
        plant=settings.plant,
        product=settings.product,
        trail=AuditLog(db),
        config=LabelingConfig(),
    )
    auth_settings = AuthSettings()
    users = PgUserStore(db)
    password = await users.ensure_first_admin()
    if password is not None:
        path = first_admin_password_path(settings.state_dir)
        write_secret(path, password)
        log.warning("created the first admin account 'admin'; its one-time password is in %s", path)
    oidc = OidcClient.from_settings(auth_settings) if auth_settings.oidc_issuer_url else None
    if oidc is not None:
        ctx.on_shutdown(oidc.aclose)
    issuer = auth.Issuer(
        users=users,
        signer=installation_signer(auth_settings, settings.state_dir),
        verifier=installation_verifier(auth_settings, settings.state_dir),
        settings=auth_settings,
        labeling=labeling,
        login_key=load_or_create_signing_key(auth_settings.signing_key_path(settings.state_dir)),
        oidc=oidc,
    )
    auth.mount(ctx.app, issuer)
    http.mount(ctx.app, labeling, ctx.store)
    pages.mount(ctx.app)
    taxonomy_ui.mount(ctx.app, settings.grpc_target("taxonomy"))
    ctx.use_auth(POLICY, session_check=issuer.session_alive, open_paths=(pages.STATIC_PATH,))
    ctx.add_grpc(lambda server: register(server, LabelingServicer(labeling)))
    ctx.consume(
        result_subject(labeling.plant),
        DURABLE,
        events_pb2.InspectionResult,
        make_result_handler(labeling),
        batch=32,
    )
    ctx.consume(
        taxonomy_subject(labeling.plant),
        TAXONOMY_DURABLE,
        events_pb2.TaxonomyPublished,
        make_taxonomy_handler(labeling, ctx.store),
    )
    LabelingMetrics.bind(labeling)
    ctx.add_task(_refresh_queue_stats(ctx, labeling), name="labeling-queue-stats")
    return labeling


async def _refresh_queue_stats(ctx: ServiceContext, labeling: LabelingApp) -> None:
    """Keep the queue gauges current; a failed refresh keeps the last figures and tries again."""
    while not ctx.stop.is_set():
        try:
            await labeling.queue_stats()
        except Exception as exc:
            log.warning("queue statistics not refreshed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), QUEUE_STATS_EVERY_S)
