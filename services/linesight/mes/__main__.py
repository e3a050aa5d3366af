"""`python -m linesight.mes`: consumes results into the outbox and delivers them to LINESIGHT_MES_ENDPOINT."""

from __future__ import annotations

import asyncio

from linesight.common.service import run_service
from linesight.mes.service import setup


def main() -> None:
    asyncio.run(run_service("mes", setup))


if __name__ == "__main__":
    main()
