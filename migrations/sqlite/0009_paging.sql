-- Issue 14, paging until acknowledged and texts to callers.
--
-- Both queues are filled by triggers, in the transaction that writes the callback request
-- (whatever wrote it: a tool call, a failed transfer, a recorded message, a journal replay);
-- the worker decides from the clinic's settings what, if anything, to send.

-- One pager per critical callback request: paged, re-paged up the on-call ladder until someone
-- acknowledges it, then reminded until it is resolved.
CREATE TABLE pages (
  callback_request_id BLOB PRIMARY KEY NOT NULL REFERENCES callback_requests (id),
  tenant_id        TEXT NOT NULL,
  created_at       TEXT NOT NULL,
  updated_at       TEXT NOT NULL,
  state            TEXT NOT NULL DEFAULT 'new'
                   CHECK (state IN ('new', 'paging', 'acknowledged', 'closed', 'exhausted')),
  -- What the on-call person texts back to acknowledge (unique among a clinic's open pages).
  code             TEXT,
  -- Pages sent so far (the next goes to rung `pages_sent` of the ladder).
  pages_sent       INTEGER NOT NULL DEFAULT 0,
  paged_to         TEXT,
  -- When the worker acts next: the next rung, or a reminder.
  next_at          TEXT,
  acknowledged_at  TEXT,
  acknowledged_by  TEXT,
  reminders        INTEGER NOT NULL DEFAULT 0,
  -- Bumped by every change: the worker's claims and updates are fenced on it.
  version          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX pages_due ON pages (state, next_at);
CREATE INDEX pages_code ON pages (code);

CREATE TRIGGER callback_requests_page AFTER INSERT ON callback_requests
  WHEN NEW.urgency_level = 'critical'
BEGIN
  INSERT OR IGNORE INTO pages (callback_request_id, tenant_id, created_at, updated_at)
  VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at);
END;

-- One text per callback request to the caller: what happens next.
CREATE TABLE caller_texts (
  callback_request_id BLOB PRIMARY KEY NOT NULL REFERENCES callback_requests (id),
  tenant_id    TEXT NOT NULL,
  created_at   TEXT NOT NULL,
  updated_at   TEXT NOT NULL,
  -- waiting, sending, skipped, error, or Twilio's MessageStatus (queued, sent, delivered,
  -- undelivered, failed, ...), as its status callbacks report it.
  status       TEXT NOT NULL DEFAULT 'waiting',
  to_number    TEXT,
  message_sid  TEXT UNIQUE,
  -- Why it was skipped, or the error.
  detail       TEXT
);
CREATE INDEX caller_texts_waiting ON caller_texts (status, tenant_id, created_at);

CREATE TRIGGER callback_requests_caller_text AFTER INSERT ON callback_requests
BEGIN
  INSERT OR IGNORE INTO caller_texts (callback_request_id, tenant_id, created_at, updated_at)
  VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at);
END;

-- Numbers that replied STOP (until they reply START): never texted.
CREATE TABLE sms_opt_outs (
  number  TEXT PRIMARY KEY NOT NULL,
  at      TEXT NOT NULL
);
