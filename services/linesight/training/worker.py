"""Training worker process: `python -m linesight.training.worker JOB_ID`.

The training service starts one per job (runner.py); in a cluster the same command is a
Kubernetes Job's container. It reads the job from PostgreSQL, fits, uploads to S3 and leaves
the result on the job's row; the service registers and announces the model. It needs the
database and object store settings only (LINESIGHT_PG_DSN, LINESIGHT_S3_*), never the bus.

Exit codes: 0 result stored; 1 the job failed (recorded on the job); 2 usage; 3 cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from linesight.common.db import open_database
from linesight.common.log import configure_logging
from linesight.common.settings import get_settings
from linesight.common.storage import ObjectStore, S3Config
from linesight.training.app.worker import JobWorker
from linesight.training.store import SCHEMA

log = logging.getLogger("linesight.training.worker")


async def main(job_id: str) -> int:
    settings = get_settings()
    configure_logging("training-worker", settings.log_level, settings.log_json)
    db = await open_database(settings, SCHEMA, max_size=2)
    try:
        worker = JobWorker(db, ObjectStore(S3Config.from_settings(settings)),
                           datasets_root=settings.datasets_root)  # fmt: skip
        try:
            result = await worker.run(job_id)
        except Exception as exc:
            log.exception("training job %s failed", job_id)
            from linesight.training.store import jobs as repo

            async with db.connection() as conn, conn.transaction():
                await repo.finish(conn, job_id, "failed", error=f"{type(exc).__name__}: {exc}")
            return 1
        log.info("training job %s: model %s ready (%.1f s)", job_id, result.model_version, result.seconds)
        return 0
    finally:
        await db.close()


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        print("usage: python -m linesight.training.worker JOB_ID", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1].strip())))
