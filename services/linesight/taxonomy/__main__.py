"""`python -m linesight.taxonomy`: the versioned taxonomy catalogue (gRPC + read-only HTTP)."""

from __future__ import annotations

import asyncio

from linesight.common.service import run_service
from linesight.taxonomy.service import setup


def main() -> None:
    asyncio.run(run_service("taxonomy", setup))


if __name__ == "__main__":
    main()
