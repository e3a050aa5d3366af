"""`python -m linesight.capture`: one capture station as a service (options: app/config.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from linesight.capture.app.config import parse_args
from linesight.capture.service import make_setup
from linesight.common.service import run_service


def main(argv: Sequence[str] | None = None) -> int:
    asyncio.run(run_service("capture", make_setup(parse_args(argv))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
