-- What the first result for a frame said, so a later, different result is recognised as a
-- conflict (not absorbed as a redelivery). NULL verdict: a row from before this column existed,
-- compared on its disposition only.
ALTER TABLE outbox ADD COLUMN verdict INTEGER;
ALTER TABLE outbox ADD COLUMN result_disposition INTEGER;
UPDATE outbox SET result_disposition = disposition;
ALTER TABLE outbox ALTER COLUMN result_disposition SET NOT NULL;
-- Idempotency-Key sent to MES: '' means the frame id; a correction carries its own key so the
-- receiver does not drop it as a repeat of the original.
ALTER TABLE outbox ADD COLUMN delivery_key TEXT NOT NULL DEFAULT '';
-- The original message a correction replaces ('' when the row is not a correction).
ALTER TABLE outbox ADD COLUMN corrects_event_id TEXT NOT NULL DEFAULT '';
-- Capture -> result arrival at MES, and whether that was past the line's reject window.
ALTER TABLE outbox ADD COLUMN decision_latency_s DOUBLE PRECISION;
ALTER TABLE outbox ADD COLUMN late BOOLEAN NOT NULL DEFAULT FALSE;

-- A second InspectionResult for a frame that disagrees with the first (verdict or disposition):
-- a forged or confused producer. One row per conflicting event (a redelivered conflict is one row).
CREATE TABLE result_conflicts (
    id                    BIGSERIAL PRIMARY KEY,
    frame_id              TEXT NOT NULL,
    part_id               TEXT NOT NULL DEFAULT '',
    original_event_id     TEXT NOT NULL,
    conflicting_event_id  TEXT NOT NULL,
    original_verdict      INTEGER,
    original_disposition  INTEGER NOT NULL,
    verdict               INTEGER NOT NULL,
    disposition           INTEGER NOT NULL,
    producer              TEXT NOT NULL DEFAULT '',
    model_version         TEXT NOT NULL DEFAULT '',
    at                    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (frame_id, conflicting_event_id)
);
CREATE INDEX result_conflicts_at ON result_conflicts (at);
