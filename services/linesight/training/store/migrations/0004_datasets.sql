-- Dataset versions: the PostgreSQL record of an immutable manifest in S3 (`datasets` bucket),
-- its hygiene report, QA owners' waivers of blocking findings, and every read of a product's
-- protected holdout (who, why). Rows are never updated except a version's report and
-- `blocking`, which a waiver clears.

CREATE TABLE dataset_versions (
    version           TEXT PRIMARY KEY,
    product           TEXT NOT NULL,
    content_hash      TEXT NOT NULL,
    source            TEXT NOT NULL CHECK (source IN ('import', 'labels')),
    manifest_bucket   TEXT NOT NULL,
    manifest_key      TEXT NOT NULL,
    images            INTEGER NOT NULL,
    counts            JSONB NOT NULL,
    taxonomy_version  TEXT NOT NULL DEFAULT '',
    parent_version    TEXT REFERENCES dataset_versions (version),
    created_by        TEXT NOT NULL,
    reason            TEXT NOT NULL DEFAULT '',
    split_policy      TEXT NOT NULL,
    input_notes       JSONB NOT NULL DEFAULT '[]',
    report            JSONB NOT NULL,
    report_html_key   TEXT NOT NULL DEFAULT '',
    blocking          BOOLEAN NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (product, content_hash)
);
CREATE INDEX dataset_versions_product ON dataset_versions (product, created_at);

CREATE TABLE dataset_waivers (
    version     TEXT NOT NULL REFERENCES dataset_versions (version),
    kind        TEXT NOT NULL,
    waived_by   TEXT NOT NULL,
    reason      TEXT NOT NULL CHECK (reason <> ''),
    waived_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (version, kind)
);

CREATE TABLE holdout_reads (
    id          BIGSERIAL PRIMARY KEY,
    product     TEXT NOT NULL,
    version     TEXT NOT NULL REFERENCES dataset_versions (version),
    purpose     TEXT NOT NULL CHECK (purpose <> ''),
    reader      TEXT NOT NULL CHECK (reader <> ''),
    images      INTEGER NOT NULL,
    read_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- confirmed_labels gains part_id, severity and product in 0004_label_geometry.sql.
