"""The short `make chaos` (the long one: `python -m tests.chaos.run`): a service process SIGKILLed
mid-line, PostgreSQL killed again while it restarts, and every abuse scenario, on the embedded
stack with services as processes; every captured part reaches MES exactly once, nothing forged or
anonymous gets through."""

from __future__ import annotations

import pytest

from tests.chaos.run import RECOVERY_TARGET_S, abuse_table, run, table

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SCENARIOS = [
    "kill-mes",
    "crash-during-recovery",
    "abuse-forged-result",
    "abuse-anonymous",
    "abuse-repeated-image",
    "abuse-hostile-strings",
]


async def test_faults_and_abuse_lose_nothing_and_let_nothing_through() -> None:
    rows, abuse = await run(
        SCENARIOS, frames=10, ppm=240, outage_s=0, timeout_s=90, quiet=True, replay_images=8
    )
    print(table(rows))
    print(abuse_table(abuse))
    by_name = {r.scenario: r for r in rows}
    for row in rows:
        assert row.captured > 0 and row.captured + row.refused == row.triggered, table(rows)
        assert row.results == row.ledger == row.delivered == row.captured, table(rows)
        assert row.recovery_s is not None, table(rows)
    assert by_name["kill-mes"].refused == 0  # MES down never stops capture
    # A POST whose outcome MES could not record before it died is sent again under the same
    # Idempotency-Key (at-least-once on the wire): the receiver drops it, and counts it. One part is
    # never two dispositions: every part arrived once by key (the equalities above).
    assert by_name["crash-during-recovery"].recovery_s <= RECOVERY_TARGET_S  # type: ignore[operator]
    assert [r.scenario for r in abuse] == SCENARIOS[2:]
    for attempt in abuse:
        assert attempt.attempts > 0 and attempt.accepted == 0, abuse_table(abuse)
