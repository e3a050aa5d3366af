-- Taxonomy versions: one row per (product, version), never changed or deleted once written,
-- because labels and model releases cite a taxonomy version as evidence.

CREATE TABLE taxonomy_versions (
    product          TEXT NOT NULL,
    version          TEXT NOT NULL,
    yaml             TEXT NOT NULL,
    sha256           TEXT NOT NULL,
    approved_by      TEXT NOT NULL CHECK (approved_by <> ''),
    previous_version TEXT NOT NULL DEFAULT '',
    changed_classes  TEXT[] NOT NULL DEFAULT '{}',
    document_bucket  TEXT NOT NULL DEFAULT '',
    document_key     TEXT NOT NULL DEFAULT '',
    seq              BIGSERIAL,
    published_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (product, version)
);
CREATE INDEX taxonomy_versions_latest ON taxonomy_versions (product, seq DESC);

CREATE FUNCTION refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'taxonomy versions are immutable (% on %)', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER taxonomy_versions_immutable BEFORE UPDATE OR DELETE ON taxonomy_versions
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
