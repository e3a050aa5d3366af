"""`python -m linesight.training`: training jobs, model registry and release gate (gRPC)."""

from __future__ import annotations

import asyncio

from linesight.common.service import run_service
from linesight.training.service import setup


def main() -> None:
    asyncio.run(run_service("training", setup))


if __name__ == "__main__":
    main()
