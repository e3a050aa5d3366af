"""`python -m linesight.inference`: the inference service on the shared service runtime."""

from __future__ import annotations

import asyncio

from linesight.common.service import run_service
from linesight.inference.service import setup


def main() -> None:
    asyncio.run(run_service("inference", setup))


if __name__ == "__main__":
    main()
