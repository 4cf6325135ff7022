-- lifeline schema, SQLite (same tables as migrations/postgres; UUIDs are 16-byte blobs as sqlx
-- encodes them, JSON and timestamps are text, updated_at is set by the application).
-- Indexes: only those lifeline's own queries use. The original system's dashboard indexes exist
-- on PostgreSQL, where those dashboards run; here every index is pages rewritten on each commit
-- (with them, a collect_info commit dirtied about 20 pages).
-- tool_call_logs and callback_requests keep every column, type and status value of the original
-- system so existing SQL dashboards keep working; lifeline's columns are added after them.

-- One row per phone call, whatever platform carried it.
CREATE TABLE calls (
  id                    BLOB PRIMARY KEY NOT NULL,
  tenant_id             TEXT NOT NULL,
  platform              TEXT NOT NULL CHECK (platform IN ('jambonz', 'twilio', 'ultravox')),
  -- the platform's id of the caller's leg: Jambonz call_sid, Twilio CallSid
  call_ref              TEXT NOT NULL,
  ultravox_call_id      TEXT,
  twilio_call_sid       TEXT,
  account_sid           TEXT,
  application_sid       TEXT,
  from_number           TEXT,
  to_number             TEXT,
  direction             TEXT NOT NULL DEFAULT 'inbound',
  status                TEXT NOT NULL DEFAULT 'initiated',
  -- when lifeline handed the call its application (session:new ack, TwiML)
  app_started_at        TEXT,
  started_at            TEXT NOT NULL,
  ended_at              TEXT,
  duration_seconds      INTEGER,
  transfer_outcome      TEXT CHECK (transfer_outcome IN ('succeeded', 'failed')),
  transfer_completed_at TEXT,
  created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  UNIQUE (platform, call_ref)
);
CREATE UNIQUE INDEX calls_ultravox_call_id ON calls (ultravox_call_id) WHERE ultravox_call_id IS NOT NULL;
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at DESC);

-- Everything that happened to a call, in order (status changes, hooks), for its timeline.
CREATE TABLE call_events (
  id         BLOB PRIMARY KEY NOT NULL,
  call_id    BLOB NOT NULL REFERENCES calls (id),
  at         TEXT NOT NULL,
  kind       TEXT NOT NULL,
  detail     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX call_events_call_at ON call_events (call_id, at);

CREATE TABLE tool_call_logs (
  id                BLOB PRIMARY KEY NOT NULL,
  created_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  ultravox_call_id  TEXT,
  twilio_call_sid   TEXT,
  call_log_id       INTEGER,
  tool_name         TEXT NOT NULL,
  tool_parameters   TEXT NOT NULL DEFAULT '{}',
  status            TEXT NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'success', 'failed', 'retrying')),
  error_message     TEXT,
  retry_count       INTEGER NOT NULL DEFAULT 0,
  max_retries       INTEGER NOT NULL DEFAULT 3,
  callback_number   TEXT,
  caller_name       TEXT,
  urgency_level     TEXT,
  tool_data         TEXT NOT NULL DEFAULT '{}',
  result            TEXT,
  processed_at      TEXT,
  -- lifeline
  tenant_id         TEXT NOT NULL,
  platform          TEXT NOT NULL,
  call_ref          TEXT NOT NULL,
  call_id           BLOB REFERENCES calls (id),
  invocation_key    TEXT NOT NULL,
  invocation_id     TEXT,
  canonical_tool    TEXT NOT NULL,
  error_kind        TEXT,
  duration_ms       REAL,
  -- a repeated invocation finds this row instead of running again
  CONSTRAINT tool_call_logs_invocation UNIQUE (platform, call_ref, invocation_key)
);
-- sliding-window rate limits count a call's recent invocations
CREATE INDEX tool_call_logs_call_window ON tool_call_logs (platform, call_ref, created_at);

-- Each dial of an on-call number; at most one is ringing per call.
CREATE TABLE transfer_attempts (
  id                BLOB PRIMARY KEY NOT NULL,
  call_id           BLOB NOT NULL REFERENCES calls (id),
  tenant_id         TEXT NOT NULL,
  tool_call_log_id  BLOB REFERENCES tool_call_logs (id),
  target_role       TEXT NOT NULL CHECK (target_role IN ('primary', 'secondary')),
  target_number     TEXT NOT NULL,
  status            TEXT NOT NULL CHECK (status IN ('dialing', 'succeeded', 'failed')),
  dial_call_status  TEXT,
  dial_sip_status   INTEGER,
  failure_reason    TEXT,
  callback_number   TEXT NOT NULL,
  caller_name       TEXT,
  reason            TEXT NOT NULL,
  pet_name          TEXT,
  started_at        TEXT NOT NULL,
  ended_at          TEXT
);
CREATE UNIQUE INDEX transfer_attempts_one_dialing ON transfer_attempts (call_id) WHERE status = 'dialing';
CREATE INDEX transfer_attempts_call ON transfer_attempts (call_id, started_at);

CREATE TABLE callback_requests (
  id                     BLOB PRIMARY KEY NOT NULL,
  created_at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  callback_number        TEXT NOT NULL,
  caller_name            TEXT,
  pet_name               TEXT,
  species                TEXT,
  concern_description    TEXT,
  urgency_level          TEXT NOT NULL DEFAULT 'normal'
                         CHECK (urgency_level IN ('normal', 'urgent', 'critical')),
  call_sid               TEXT,
  tool_call_log_id       BLOB REFERENCES tool_call_logs (id),
  status                 TEXT NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'posted', 'failed', 'cancelled', 'dead_letter')),
  posted_to_frontend_at  TEXT,
  frontend_response      TEXT,
  error_message          TEXT,
  retry_count            INTEGER NOT NULL DEFAULT 0,
  max_retries            INTEGER NOT NULL DEFAULT 3,
  next_retry_at          TEXT,
  metadata               TEXT DEFAULT '{}',
  -- lifeline
  tenant_id              TEXT NOT NULL,
  call_id                BLOB REFERENCES calls (id),
  transfer_attempt_id    BLOB REFERENCES transfer_attempts (id),
  reason                 TEXT NOT NULL CHECK (reason IN ('message', 'failed_transfer')),
  -- queue order: 0 critical, 1 urgent, 2 normal (the original sorted the text and served critical last)
  urgency_rank           INTEGER NOT NULL,
  first_name             TEXT,
  last_name              TEXT,
  breed                  TEXT,
  age                    TEXT,
  urgency_reason         TEXT
);
CREATE INDEX callback_requests_queue ON callback_requests (urgency_rank, created_at)
  WHERE status IN ('pending', 'failed');
CREATE INDEX callback_requests_call ON callback_requests (call_id);
