-- Labeling schema: ledger of results, review queue, labels and audit trail.
-- The ledger, labels and audit tables are append-only (triggers below refuse UPDATE/DELETE)
-- so counts and the audit trail can be trusted; only the review queue's state moves.

CREATE TABLE ledger (
    id              BIGSERIAL PRIMARY KEY,
    frame_id        TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    plant           TEXT NOT NULL DEFAULT '',
    line            TEXT NOT NULL DEFAULT '',
    station         TEXT NOT NULL DEFAULT '',
    part_id         TEXT NOT NULL DEFAULT '',
    verdict         TEXT NOT NULL,
    defect_class    TEXT NOT NULL DEFAULT '',
    severity        TEXT NOT NULL DEFAULT '',
    confidence      DOUBLE PRECISION NOT NULL DEFAULT 0,
    anomaly_score   DOUBLE PRECISION NOT NULL DEFAULT 0,
    disposition     TEXT NOT NULL DEFAULT '',
    taxonomy_version TEXT NOT NULL DEFAULT '',
    review_reason   TEXT NOT NULL DEFAULT '',
    error           TEXT NOT NULL DEFAULT '',
    image_bucket    TEXT NOT NULL DEFAULT '',
    image_key       TEXT NOT NULL DEFAULT '',
    heatmap_bucket  TEXT NOT NULL DEFAULT '',
    heatmap_key     TEXT NOT NULL DEFAULT '',
    latency_ms      DOUBLE PRECISION NOT NULL DEFAULT 0,
    shadow          BOOLEAN NOT NULL DEFAULT FALSE,
    captured_at     TIMESTAMPTZ,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    payload         BYTEA NOT NULL,
    UNIQUE (frame_id, model_version)
);
CREATE INDEX ledger_recorded_at ON ledger (recorded_at DESC);
CREATE INDEX ledger_frame ON ledger (frame_id);

CREATE TABLE review_queue (
    frame_id        TEXT PRIMARY KEY,
    model_version   TEXT NOT NULL DEFAULT '',
    queue           TEXT NOT NULL DEFAULT 'review',       -- review, dispute, relabel
    reason          TEXT NOT NULL DEFAULT '',
    priority        INTEGER NOT NULL DEFAULT 0,
    state           TEXT NOT NULL DEFAULT 'open'
                    CHECK (state IN ('open', 'first_pass', 'agreed', 'disputed', 'resolved')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX review_queue_open ON review_queue (priority DESC, created_at) WHERE state IN ('open', 'first_pass', 'disputed');

CREATE TABLE labels (
    id              BIGSERIAL PRIMARY KEY,
    frame_id        TEXT NOT NULL,
    pass            INTEGER NOT NULL,                      -- 1 first pass, 2 second pass, 3 adjudication
    label           TEXT NOT NULL,
    severity        TEXT NOT NULL DEFAULT '',
    user_name       TEXT NOT NULL,
    ambiguous       BOOLEAN NOT NULL DEFAULT FALSE,
    comment         TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX labels_frame ON labels (frame_id, id);

CREATE TABLE audit_log (
    id              BIGSERIAL PRIMARY KEY,
    at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor           TEXT NOT NULL,
    action          TEXT NOT NULL,
    frame_id        TEXT NOT NULL DEFAULT '',
    detail          JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_frame ON audit_log (frame_id, id);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER labels_append_only BEFORE UPDATE OR DELETE ON labels
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
