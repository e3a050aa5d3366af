-- Tamper-evident audit trail (linesight.common.audit): every row carries the hash of the row
-- before it, so an edited or removed row breaks the chain at that point. Rows are never updated
-- or deleted; the triggers refuse it (a superuser can disable them, which is what the chain is for).
-- Values are stored as the exact canonical JSON text that was hashed, not JSONB, because JSONB
-- rewrites numbers (1e20 -> 100000000000000000000) and the hash would no longer match.

CREATE TABLE audit_trail (
    seq             BIGINT PRIMARY KEY CHECK (seq > 0),     -- gapless, assigned under the append lock
    at              TIMESTAMPTZ NOT NULL,
    actor           TEXT NOT NULL,
    actor_name      TEXT NOT NULL,
    role            TEXT NOT NULL,
    action          TEXT NOT NULL,
    object_kind     TEXT NOT NULL,
    object_id       TEXT NOT NULL,
    old_value       TEXT,                                   -- canonical JSON or NULL
    new_value       TEXT,
    reason          TEXT NOT NULL,
    client          TEXT NOT NULL,
    prev_hash       TEXT NOT NULL UNIQUE,                   -- a second child of one record = a fork
    hash            TEXT NOT NULL UNIQUE
);
CREATE INDEX audit_trail_actor ON audit_trail (actor, seq);
CREATE INDEX audit_trail_action ON audit_trail (action, seq);
CREATE INDEX audit_trail_object ON audit_trail (object_kind, object_id, seq);
CREATE INDEX audit_trail_at ON audit_trail (at);

CREATE FUNCTION audit_trail_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_trail is append-only (% refused)', TG_OP;
END;
$$;

CREATE TRIGGER audit_trail_append_only BEFORE UPDATE OR DELETE ON audit_trail
    FOR EACH ROW EXECUTE FUNCTION audit_trail_refuse_change();
CREATE TRIGGER audit_trail_no_truncate BEFORE TRUNCATE ON audit_trail
    FOR EACH STATEMENT EXECUTE FUNCTION audit_trail_refuse_change();
