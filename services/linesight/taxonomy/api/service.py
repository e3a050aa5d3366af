"""Wiring for the taxonomy service: migrations, pool, seeding, HTTP and gRPC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from linesight.common.bus import Bus
from linesight.common.db import Database, aapply_migrations
from linesight.common.service import ServiceContext
from linesight.common.settings import Settings
from linesight.taxonomy.api import http
from linesight.taxonomy.api.grpc_api import register
from linesight.taxonomy.app.catalogue import Catalogue
from linesight.taxonomy.store import MIGRATIONS_DIR, SCHEMA


def bundled_dir() -> Path:
    """services/linesight/vision/taxonomies: the example taxonomies shipped with the detection engine."""
    import linesight.vision

    return Path(linesight.vision.__file__).parent / "taxonomies"


@dataclass
class TaxonomyRuntime:
    catalogue: Catalogue
    db: Database

    async def close(self) -> None:
        await self.db.close()


async def start_taxonomy(
    settings: Settings, bus: Bus, object_store: Any = None, *, app: FastAPI | None = None, seed: bool = True
) -> TaxonomyRuntime:
    """Migrate the `taxonomy` schema, seed the bundled taxonomies if the catalogue is empty."""
    await aapply_migrations(settings.pg_dsn, SCHEMA, MIGRATIONS_DIR)
    db = Database(settings.pg_dsn, SCHEMA, max_size=min(settings.pg_pool_max, 4))
    await db.open()
    catalogue = Catalogue(db, bus, object_store, plant=settings.plant)
    try:
        if seed:
            await catalogue.seed(bundled_dir(), default_product=settings.product)
    except BaseException:
        await db.close()
        raise
    if app is not None:
        http.mount(app, catalogue)
    return TaxonomyRuntime(catalogue=catalogue, db=db)


async def setup(ctx: ServiceContext) -> None:
    runtime = await start_taxonomy(ctx.settings, ctx.bus, ctx.store, app=ctx.app)
    ctx.add_readiness_check("database", runtime.db.ping)
    ctx.add_grpc(register(runtime.catalogue))
    ctx.on_shutdown(runtime.close)
