"""What the labeling service does: record every inspection result once, route doubtful ones (and
an audit sample of confident ones) to human queues, run the two-pass label workflow with claims,
QA decisions and operator overrides, and keep a hash-chained audit trail of every step.

LabelingApp assembles the use cases, one module per responsibility: results.py (recording, reads,
taxonomies), claims.py (queues, claims, assignment), first_pass.py (labels, edits, overrides),
second_pass.py (reviews, dispute decisions) and samples.py (agreement); core.py holds what they
share. Events carry deterministic event ids, so a retried publish is de-duplicated by JetStream.
Each write publishes *before* its transaction commits and appends its audit record inside that
transaction: if the bus or the database refuses, nothing is recorded and the caller retries (bus
redelivery, or a re-submit). Who acted always comes from the authenticated Principal; each step
checks the caller's roles on the frame's plant and product (roles.py).
"""

from __future__ import annotations

from linesight.common.audit import AuditEntry
from linesight.labeling.app.claims import ClaimUseCases
from linesight.labeling.app.first_pass import FirstPassUseCases
from linesight.labeling.app.results import ResultUseCases
from linesight.labeling.app.samples import SampleUseCases
from linesight.labeling.app.second_pass import SecondPassUseCases
from linesight.labeling.store import workflow


class LabelingApp(ResultUseCases, ClaimUseCases, FirstPassUseCases, SecondPassUseCases, SampleUseCases):
    """The labeling use cases over its database schema and the bus."""

    async def record(self, entry: AuditEntry) -> None:
        """An audit record of something that happened outside a labeling transaction (logins)."""
        async with self.db.connection() as conn, conn.transaction():
            await workflow.audit(conn, entry)
