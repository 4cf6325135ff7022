-- The on-call dashboard: staff accounts made with the CLI, their sessions, failed logins.

CREATE TABLE staff_accounts (
  username      TEXT PRIMARY KEY,
  -- argon2id in PHC string format
  password_hash TEXT NOT NULL,
  -- NULL: every tenant; otherwise the one clinic this account sees
  tenant_id     TEXT,
  created_at    TIMESTAMPTZ NOT NULL,
  updated_at    TIMESTAMPTZ NOT NULL
);

-- A session cookie's token is stored hashed: a database leak does not log anyone in.
CREATE TABLE staff_sessions (
  token_hash  TEXT PRIMARY KEY,
  username    TEXT NOT NULL,
  tenant_id   TEXT,
  csrf_token  TEXT NOT NULL,
  created_at  TIMESTAMPTZ NOT NULL,
  expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX staff_sessions_expires ON staff_sessions (expires_at);

-- Failed logins per username (accounts from the configuration included), for the lock-out.
CREATE TABLE login_failures (
  username      TEXT PRIMARY KEY,
  failures      INTEGER NOT NULL,
  window_start  TIMESTAMPTZ NOT NULL,
  locked_until  TIMESTAMPTZ
);
