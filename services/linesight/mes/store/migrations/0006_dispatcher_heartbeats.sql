-- Who holds a claim, and whether it is still alive: a dispatcher writes its heartbeat while it
-- delivers, and a claim whose owner's heartbeat is stale counts as expired (a crashed MES replica
-- no longer holds its stations' queues until the lease ends). A claim token is "<owner>:<cycle>".
CREATE TABLE dispatcher_heartbeats (
    owner   TEXT PRIMARY KEY,
    plant   TEXT NOT NULL DEFAULT '',
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
