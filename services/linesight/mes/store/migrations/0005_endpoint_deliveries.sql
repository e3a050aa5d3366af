-- One delivery per message and endpoint, so a slow or failing endpoint delays only its own queue.
-- Order is kept per endpoint and station (seq = the outbox row's seq when it was last queued).
-- The outbox row stays the message and sums its deliveries up: pending while any endpoint is,
-- dead when one gave up and none is pending, delivered when all have it. Claims live here now
-- (outbox.claim_token / claimed_until are no longer used).
CREATE TABLE deliveries (
    frame_id        TEXT NOT NULL REFERENCES outbox (frame_id),
    endpoint        TEXT NOT NULL,
    plant           TEXT NOT NULL DEFAULT '',
    line            TEXT NOT NULL DEFAULT '',
    station         TEXT NOT NULL DEFAULT '',
    seq             BIGINT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT NOT NULL DEFAULT '',
    status_code     INTEGER,
    claim_token     TEXT NOT NULL DEFAULT '',
    claimed_until   TIMESTAMPTZ,
    delivered_at    TIMESTAMPTZ,
    PRIMARY KEY (frame_id, endpoint)
);
CREATE INDEX deliveries_queue ON deliveries (endpoint, plant, line, station, seq) WHERE state = 'pending';
