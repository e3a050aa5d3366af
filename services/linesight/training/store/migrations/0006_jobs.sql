-- Training jobs run in a worker process: what each job asks for (mode, dataset version, base
-- model), where it stands (stage, percent, ETA, heartbeat of its worker) and what the worker
-- produced before the service registered it. One row per job beside `jobs`, whose `state` stays
-- the job's state and gains `cancelled`. A restarted service reads these rows to requeue or fail
-- jobs whose worker died, and to register a model a worker finished while it was down.

ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled'));
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);

CREATE TABLE job_runs (
    job_id              TEXT PRIMARY KEY REFERENCES jobs (job_id),
    mode                TEXT NOT NULL DEFAULT 'full' CHECK (mode IN ('full', 'incremental')),
    dataset_version     TEXT NOT NULL DEFAULT '',     -- a dataset_versions row ('' = a folder / labels)
    base_model          TEXT NOT NULL DEFAULT '',     -- incremental: the model it extends
    options             JSONB NOT NULL DEFAULT '{}'::jsonb,
    requested_by        TEXT NOT NULL DEFAULT '',     -- the caller, or 'auto-update'
    production_eligible BOOLEAN NOT NULL DEFAULT true, -- false: unwaived blocking hygiene findings
    ineligible_reason   TEXT NOT NULL DEFAULT '',
    stage               TEXT NOT NULL DEFAULT '',
    percent             REAL NOT NULL DEFAULT 0,
    eta_seconds         REAL,
    message             TEXT NOT NULL DEFAULT '',
    worker              TEXT NOT NULL DEFAULT '',     -- host:pid of the worker process
    attempts            INTEGER NOT NULL DEFAULT 0,
    heartbeat_at        TIMESTAMPTZ,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    cancelled_by        TEXT NOT NULL DEFAULT '',
    result              JSONB                         -- the worker's model, awaiting registration
);
