-- Registry stages candidate -> shadow -> production -> archived, lineage per model, release gates
-- versioned per product, gate reports, and the shadow comparison's observations.
--
-- A model is registered as a candidate; the release gate decides whether it is *eligible*, a QA
-- owner's sign-off (PromoteModel) makes it production. At most one shadow model per product
-- (inference scores one candidate beside production). `retired` becomes `archived`; the
-- append-only stage history keeps the word it was written with.

ALTER TABLE models DROP CONSTRAINT IF EXISTS models_stage_check;
UPDATE models SET stage = 'archived' WHERE stage = 'retired';
ALTER TABLE models ADD CONSTRAINT models_stage_check
    CHECK (stage IN ('candidate', 'shadow', 'production', 'archived'));
CREATE UNIQUE INDEX models_one_shadow ON models (product) WHERE stage = 'shadow';
ALTER TABLE models ADD COLUMN lineage JSONB NOT NULL DEFAULT '{}'::jsonb;

ALTER TABLE model_stage_history DROP CONSTRAINT IF EXISTS model_stage_history_from_stage_check;
ALTER TABLE model_stage_history DROP CONSTRAINT IF EXISTS model_stage_history_to_stage_check;
ALTER TABLE model_stage_history ADD CONSTRAINT model_stage_history_from_stage_check
    CHECK (from_stage IN ('', 'candidate', 'shadow', 'production', 'archived', 'retired'));
ALTER TABLE model_stage_history ADD CONSTRAINT model_stage_history_to_stage_check
    CHECK (to_stage IN ('candidate', 'shadow', 'production', 'archived', 'retired'));

-- Each product's release gate, versioned like the taxonomy: a new version per change, never edited.
CREATE TABLE release_gates (
    product     TEXT NOT NULL,
    version     INTEGER NOT NULL CHECK (version > 0),
    spec        JSONB NOT NULL,
    author      TEXT NOT NULL CHECK (author <> ''),
    reason      TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (product, version)
);

-- A gate applied to a model's holdout evaluation; the newest per model is its eligibility.
-- gate_version 0 = the service's default gate (YAML or built-in).
CREATE TABLE gate_reports (
    id            BIGSERIAL PRIMARY KEY,
    model_version TEXT NOT NULL REFERENCES models (model_version),
    product       TEXT NOT NULL,
    gate_version  INTEGER NOT NULL,
    passed        BOOLEAN NOT NULL,
    failures      JSONB NOT NULL DEFAULT '[]'::jsonb,
    report        JSONB NOT NULL,
    html_key      TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX gate_reports_model ON gate_reports (model_version, id DESC);

-- Decisions on live frames while a model is in shadow: production's (role 'production', kept
-- only while the product has a shadow model) and the shadow model's (role 'shadow'); the
-- comparison pairs them by frame.
CREATE TABLE shadow_observations (
    frame_id       TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('production', 'shadow')),
    model_version  TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    defect_class   TEXT NOT NULL DEFAULT '',
    station        TEXT NOT NULL DEFAULT '',
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (frame_id, role, model_version)
);
CREATE INDEX shadow_observations_model ON shadow_observations (model_version, role);
