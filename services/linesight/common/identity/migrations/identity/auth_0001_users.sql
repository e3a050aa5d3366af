-- Identity store hosted by the issuing service (linesight.common.identity.users): local users
-- with argon2 password hashes, role grants scoped per plant/product, service accounts with hashed
-- API keys, and browser sessions (only a hash of the session id is stored).

CREATE TABLE auth_users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL,
    display_name    TEXT NOT NULL DEFAULT '',
    password_hash   TEXT,                                   -- NULL: cannot log in with a password
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX auth_users_username ON auth_users (lower(username));

CREATE TABLE auth_service_accounts (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    key_id          TEXT NOT NULL UNIQUE,                   -- public half of the API key, for lookup
    key_hash        TEXT NOT NULL,                          -- sha256 of the secret half
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- subject = auth_users.id or auth_service_accounts.id (distinct prefixes: u_ / sa_).
CREATE TABLE auth_grants (
    subject         TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN
                        ('labeler', 'reviewer', 'qa_owner', 'line_operator', 'engineer', 'admin', 'service')),
    plant           TEXT NOT NULL DEFAULT '*',
    product         TEXT NOT NULL DEFAULT '*',
    PRIMARY KEY (subject, role, plant, product)
);

CREATE TABLE auth_sessions (
    id_hash         TEXT PRIMARY KEY,                       -- sha256 of the session id the browser holds
    user_id         TEXT NOT NULL REFERENCES auth_users (id),
    csrf_token      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    last_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at      TIMESTAMPTZ
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);
