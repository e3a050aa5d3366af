"""`python -m linesight.mes`: consumes results into the outbox and delivers them to LINESIGHT_MES_ENDPOINT."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from linesight.common.service import run_service
from linesight.mes.service import setup


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (uvicorn[standard] brings it): the service is CPU-bound on its event
    loop at line rate (bus, database and HTTP round trips per disposition), and uvloop's loop
    costs a fraction of asyncio's per callback. None: asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main() -> None:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run_service("mes", setup))


if __name__ == "__main__":
    main()
