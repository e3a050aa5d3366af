"""The short `make chaos`: NATS SIGKILLed mid-line; every captured part reaches MES exactly once."""

from __future__ import annotations

import pytest

from tests.chaos.run import RECOVERY_TARGET_S, run, table

pytestmark = pytest.mark.integration


async def test_nats_killed_mid_line_loses_no_part() -> None:
    rows = await run(["kill-nats"], frames=10, ppm=240, outage_s=0, timeout_s=90, quiet=True)
    print(table(rows))
    (row,) = rows
    assert row.captured == 10
    assert row.results == row.ledger == row.delivered == row.captured, table(rows)
    assert row.duplicates == 0
    assert row.recovery_s is not None and row.recovery_s <= RECOVERY_TARGET_S
