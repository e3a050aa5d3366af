"""`python -m linesight.labeling`: the labeling service (UI on its HTTP port, gRPC, ledger consumer)."""

from __future__ import annotations

import asyncio

from linesight.common.service import run_service
from linesight.labeling.service import setup


def main() -> None:
    asyncio.run(run_service("labeling", setup))


if __name__ == "__main__":
    main()
