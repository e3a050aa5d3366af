-- Drafts and the review step before a version is published, and what each published version
-- changed (so its TaxonomyPublished event can be rebuilt exactly, e.g. for an idempotent retry).

CREATE TABLE taxonomy_drafts (
    product          TEXT NOT NULL,
    version          TEXT NOT NULL,
    yaml             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('draft', 'in_review')),
    author           TEXT NOT NULL CHECK (author <> ''),
    submitted_by     TEXT NOT NULL DEFAULT '',
    review_comment   TEXT NOT NULL DEFAULT '',
    migration_notes  TEXT NOT NULL DEFAULT '',
    base_version     TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (product, version)
);

ALTER TABLE taxonomy_versions
    ADD COLUMN author               TEXT NOT NULL DEFAULT '',
    ADD COLUMN migration_notes      TEXT NOT NULL DEFAULT '',
    ADD COLUMN added_classes        TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN removed_classes      TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN redefined_classes    TEXT[] NOT NULL DEFAULT '{}',
    ADD COLUMN rule_changed_classes TEXT[] NOT NULL DEFAULT '{}';
