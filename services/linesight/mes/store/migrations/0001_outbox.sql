-- MES outbox: one row per frame (the primary key is the de-duplication), delivered by the
-- dispatcher with retries. Rows are never deleted by the service: they are the delivery record.

CREATE TABLE outbox (
    frame_id        TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    part_id         TEXT NOT NULL DEFAULT '',
    plant           TEXT NOT NULL DEFAULT '',
    line            TEXT NOT NULL DEFAULT '',
    station         TEXT NOT NULL DEFAULT '',
    disposition     INTEGER NOT NULL,                -- linesight.v1.Disposition number
    payload         JSONB NOT NULL,                  -- the JSON body POSTed to MES
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT NOT NULL DEFAULT '',
    target          TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE state = 'pending';

-- Every delivery attempt, append-only: what MES answered and when (for disputes with MES owners).
CREATE TABLE delivery_attempts (
    id              BIGSERIAL PRIMARY KEY,
    frame_id        TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    target          TEXT NOT NULL,
    status_code     INTEGER,
    error           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX delivery_attempts_frame ON delivery_attempts (frame_id, id);

-- DispositionDispatched not yet published for a finished row (bus was down at the time).
ALTER TABLE outbox ADD COLUMN announced BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX outbox_unannounced ON outbox (frame_id) WHERE state <> 'pending' AND NOT announced;
