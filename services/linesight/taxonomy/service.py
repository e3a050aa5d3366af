"""Composition root of the taxonomy service: schema and audit trail, catalogue, seeding, auth,
HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path

from linesight.common.db import aapply_migrations
from linesight.common.service import ServiceContext
from linesight.taxonomy.api import http
from linesight.taxonomy.api.grpc import TaxonomyServicer, register
from linesight.taxonomy.api.policy import POLICY
from linesight.taxonomy.app.catalogue import TaxonomyApp
from linesight.taxonomy.store import MIGRATIONS_DIR, SCHEMA
from linesight.taxonomy.store.audit import AUDIT_MIGRATIONS

POOL_SIZE = 4  # publishes are rare and reads are small: a few connections serve a plant


def bundled_dir() -> Path:
    """services/linesight/vision/taxonomies: the example taxonomies shipped with the detection engine."""
    import linesight.vision

    return Path(linesight.vision.__file__).parent / "taxonomies"


async def setup(ctx: ServiceContext) -> TaxonomyApp:
    """Migrate the `taxonomy` schema (and its audit trail), seed the bundled taxonomies when the
    catalogue has no version of their product yet, and serve them behind the taxonomy policy."""
    ctx.use_auth(POLICY)
    # The audit trail's own migration set, in this schema (its ids do not collide with ours).
    await aapply_migrations(ctx.settings.pg_dsn, SCHEMA, AUDIT_MIGRATIONS)
    db = await ctx.use_database(SCHEMA, MIGRATIONS_DIR, max_size=POOL_SIZE)
    taxonomy = TaxonomyApp(db, ctx.bus, ctx.store, plant=ctx.settings.plant)
    await taxonomy.seed(bundled_dir(), default_product=ctx.settings.product)
    http.mount(ctx.app, taxonomy)
    ctx.add_grpc(lambda server: register(server, TaxonomyServicer(taxonomy)))
    return taxonomy
