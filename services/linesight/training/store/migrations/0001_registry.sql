-- Model registry, training jobs and the confirmed labels training can freeze into a dataset.

CREATE TABLE models (
    model_version    TEXT PRIMARY KEY,
    product          TEXT NOT NULL,
    stage            TEXT NOT NULL CHECK (stage IN ('candidate', 'production', 'retired')),
    metrics          JSONB NOT NULL DEFAULT '{}'::jsonb,
    gate             JSONB NOT NULL DEFAULT '{}'::jsonb,   -- thresholds and which ones failed
    taxonomy_version TEXT NOT NULL DEFAULT '',
    dataset_version  TEXT NOT NULL DEFAULT '',
    artifact_bucket  TEXT NOT NULL,
    artifact_key     TEXT NOT NULL,
    artifact_sha256  TEXT NOT NULL,
    artifact_bytes   BIGINT NOT NULL DEFAULT 0,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX models_product ON models (product, created_at DESC);
-- At most one production model per product.
CREATE UNIQUE INDEX models_one_production ON models (product) WHERE stage = 'production';

CREATE TABLE jobs (
    job_id          TEXT PRIMARY KEY,
    product         TEXT NOT NULL,
    dataset         TEXT NOT NULL DEFAULT '',
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    model_version   TEXT NOT NULL DEFAULT '',
    metrics         JSONB NOT NULL DEFAULT '{}'::jsonb,
    error           TEXT NOT NULL DEFAULT '',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE confirmed_labels (
    frame_id         TEXT PRIMARY KEY,
    label            TEXT NOT NULL,
    image_bucket     TEXT NOT NULL,
    image_key        TEXT NOT NULL,
    station          TEXT NOT NULL DEFAULT '',
    taxonomy_version TEXT NOT NULL DEFAULT '',
    labeler          TEXT NOT NULL DEFAULT '',
    reviewer         TEXT NOT NULL DEFAULT '',
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
