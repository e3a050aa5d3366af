-- Two-pass labeling with claims, QA decisions, overrides, relabel rounds, taxonomies per product
-- and shared agreement samples. The old per-frame `labels` table moves into `frame_labels`
-- (which carries regions, the taxonomy version and an optimistic `version`); the old JSONB
-- audit_log is kept read-only as `audit_log_legacy`: the hash-chained `audit_trail` replaces it.

ALTER TABLE review_queue DROP CONSTRAINT review_queue_state_check;
ALTER TABLE review_queue ADD CONSTRAINT review_queue_state_check
    CHECK (state IN ('open', 'first_pass', 'disputed', 'confirmed', 'agreed', 'resolved'));
ALTER TABLE review_queue
    ADD COLUMN product          TEXT NOT NULL DEFAULT '',
    ADD COLUMN round            INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN assigned_to      TEXT NOT NULL DEFAULT '',
    ADD COLUMN claimed_by       TEXT NOT NULL DEFAULT '',
    ADD COLUMN claim_expires_at TIMESTAMPTZ,
    ADD COLUMN version          BIGINT NOT NULL DEFAULT 1,
    ADD COLUMN final_label      TEXT NOT NULL DEFAULT '',           -- the confirmed label
    ADD COLUMN final_taxonomy   TEXT NOT NULL DEFAULT '';           -- taxonomy version it was made under
DROP INDEX review_queue_open;
CREATE INDEX review_queue_open ON review_queue (queue, priority DESC, created_at)
    WHERE state IN ('open', 'first_pass', 'disputed');

-- kind: label (pass 1), review (pass 2), decision (QA owner), override (line operator), relabel.
CREATE TABLE frame_labels (
    id               BIGSERIAL PRIMARY KEY,
    frame_id         TEXT NOT NULL,
    round            INTEGER NOT NULL DEFAULT 1,
    kind             TEXT NOT NULL CHECK (kind IN ('label', 'review', 'decision', 'override')),
    label            TEXT NOT NULL DEFAULT '',
    severity         TEXT NOT NULL DEFAULT '',
    boxes            JSONB NOT NULL DEFAULT '[]'::jsonb,
    polygons         JSONB NOT NULL DEFAULT '[]'::jsonb,
    ambiguous        BOOLEAN NOT NULL DEFAULT FALSE,
    ambiguity_reason TEXT NOT NULL DEFAULT '',
    comment          TEXT NOT NULL DEFAULT '',
    accepted         BOOLEAN,                               -- reviews only
    reason           TEXT NOT NULL DEFAULT '',
    author           TEXT NOT NULL,                         -- principal subject
    author_name      TEXT NOT NULL DEFAULT '',
    role             TEXT NOT NULL DEFAULT '',
    taxonomy_version TEXT NOT NULL DEFAULT '',
    provenance       JSONB,                                 -- overrides: station, original verdict
    version          BIGINT NOT NULL DEFAULT 1,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX frame_labels_frame ON frame_labels (frame_id, round, id);

INSERT INTO frame_labels (frame_id, kind, label, severity, ambiguous, comment, author, author_name, created_at)
    SELECT frame_id, CASE WHEN pass = 1 THEN 'label' WHEN pass = 2 THEN 'review' ELSE 'decision' END,
           label, severity, ambiguous, comment, user_name, user_name, created_at
    FROM labels ORDER BY id;
DROP TABLE labels;
ALTER TABLE audit_log RENAME TO audit_log_legacy;

-- The latest published taxonomy of each product: the classes a label may name.
CREATE TABLE taxonomies (
    product          TEXT PRIMARY KEY,
    version          TEXT NOT NULL,
    previous_version TEXT NOT NULL DEFAULT '',
    classes          TEXT[] NOT NULL,
    changed_classes  TEXT[] NOT NULL DEFAULT '{}',
    event_id         TEXT NOT NULL DEFAULT '',
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Shared samples: N frames labeled independently by several people to measure agreement.
CREATE TABLE samples (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    product          TEXT NOT NULL DEFAULT '',
    frames           TEXT[] NOT NULL,
    created_by       TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE sample_labels (
    sample_id        TEXT NOT NULL REFERENCES samples (id),
    frame_id         TEXT NOT NULL,
    rater            TEXT NOT NULL,
    rater_name       TEXT NOT NULL DEFAULT '',
    label            TEXT NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sample_id, frame_id, rater)
);
