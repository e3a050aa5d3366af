-- Inbound MES API: part context pushed by MES, quality holds, and what the results queries filter on.
-- The part's batch and capture time, kept beside the payload so holds and queries use an index.
ALTER TABLE outbox ADD COLUMN batch TEXT NOT NULL DEFAULT '';
ALTER TABLE outbox ADD COLUMN captured_at TIMESTAMPTZ;
UPDATE outbox SET batch = COALESCE(payload->>'batch', ''),
                  captured_at = (payload->>'captured_at')::timestamptz;
CREATE INDEX outbox_part ON outbox (part_id);
CREATE INDEX outbox_batch ON outbox (batch);
CREATE INDEX outbox_captured ON outbox (COALESCE(captured_at, created_at));

-- What each attempt got, per endpoint (a fan-out attempt logs one row per endpoint) and per key
-- (the original message and its corrections are separate messages at MES).
ALTER TABLE delivery_attempts ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
ALTER TABLE delivery_attempts ADD COLUMN delivery_key TEXT NOT NULL DEFAULT '';

-- serial -> order, product, batch, customer requirement, as MES last pushed it.
CREATE TABLE part_context (
    serial               TEXT PRIMARY KEY,
    order_no             TEXT NOT NULL DEFAULT '',
    product              TEXT NOT NULL DEFAULT '',
    batch                TEXT NOT NULL DEFAULT '',
    customer_requirement TEXT NOT NULL DEFAULT '',
    updated_by           TEXT NOT NULL DEFAULT '',
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX part_context_order ON part_context (order_no);
CREATE INDEX part_context_batch ON part_context (batch);

-- A quality hold on a batch, an order or a capture time range [from_ts, until_ts). While it is
-- active (released_at NULL) every matching part's disposition is `hold`.
CREATE TABLE holds (
    id           BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('batch', 'order', 'time_range')),
    value        TEXT NOT NULL DEFAULT '',
    from_ts      TIMESTAMPTZ,
    until_ts     TIMESTAMPTZ,
    reason       TEXT NOT NULL DEFAULT '',
    created_by   TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    released_at  TIMESTAMPTZ,
    released_by  TEXT NOT NULL DEFAULT '',
    CHECK ((kind = 'time_range') = (from_ts IS NOT NULL AND until_ts IS NOT NULL))
);
CREATE INDEX holds_active ON holds (kind, value) WHERE released_at IS NULL;

-- Which parts a hold put on hold (a release restores exactly these, unless another hold holds them).
CREATE TABLE held_parts (
    hold_id   BIGINT NOT NULL REFERENCES holds (id),
    frame_id  TEXT NOT NULL REFERENCES outbox (frame_id),
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (hold_id, frame_id)
);
CREATE INDEX held_parts_frame ON held_parts (frame_id);
