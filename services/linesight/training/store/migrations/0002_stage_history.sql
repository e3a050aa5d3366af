-- Who moved which model to which stage, when and why: the release decision's audit trail.
-- One row per stage change: the release gate's automatic decision at registration
-- (changed_by 'release-gate'), a named approver's promotion (PromoteModel) and every retirement
-- either causes. Append-only: a release decision is never edited after the fact.

CREATE TABLE model_stage_history (
    id            BIGSERIAL PRIMARY KEY,
    model_version TEXT NOT NULL REFERENCES models (model_version),
    product       TEXT NOT NULL,
    from_stage    TEXT NOT NULL DEFAULT '' CHECK (from_stage IN ('', 'candidate', 'production', 'retired')),
    to_stage      TEXT NOT NULL CHECK (to_stage IN ('candidate', 'production', 'retired')),
    changed_by    TEXT NOT NULL CHECK (changed_by <> ''),
    reason        TEXT NOT NULL DEFAULT '',
    changed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX model_stage_history_model ON model_stage_history (model_version, id);
CREATE INDEX model_stage_history_product ON model_stage_history (product, id);

CREATE FUNCTION model_stage_history_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER model_stage_history_append_only BEFORE UPDATE OR DELETE ON model_stage_history
    FOR EACH ROW EXECUTE FUNCTION model_stage_history_refuse_change();

-- Models registered before this table existed: their registration, as the gate decided it.
INSERT INTO model_stage_history (model_version, product, from_stage, to_stage, changed_by, reason, changed_at)
SELECT model_version, product, '', stage, 'release-gate', 'registered before stage history was kept', created_at
FROM models
ORDER BY created_at;
