-- Ordered delivery outside the database transaction.
-- seq: arrival order; a station's dispositions go out in this order, one at a time, and the next
-- waits while an earlier one retries. A correction or a redelivery takes a new seq (it is sent
-- after what that station has already queued).
ALTER TABLE outbox ADD COLUMN seq BIGSERIAL;
-- A dispatcher claims rows in a short transaction (claim_token, claimed_until = lease), delivers
-- them with no transaction open, and records the outcome in another, only while its token still
-- holds. A dispatcher that dies leaves the claim to expire; the rows are then delivered again under
-- the same Idempotency-Key.
ALTER TABLE outbox ADD COLUMN claim_token TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN claimed_until TIMESTAMPTZ;
-- What the message carries beyond the decision: the frame (presigned at each delivery, so the
-- link's expiry counts from when MES receives it) and the W3C trace context of the result.
ALTER TABLE outbox ADD COLUMN image_bucket TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN image_key TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN traceparent TEXT NOT NULL DEFAULT '';
CREATE INDEX outbox_station_order ON outbox (plant, line, station, seq) WHERE state = 'pending';
