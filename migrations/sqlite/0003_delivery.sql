-- The callback delivery queue: leases, attempts, dead letters, alerts, staff resolution.
-- A claimed request keeps its status ('pending' or 'failed'); the lease columns say who holds it
-- and until when, and delivery_attempt fences the holder's completion.

ALTER TABLE callback_requests ADD COLUMN lease_owner TEXT;
ALTER TABLE callback_requests ADD COLUMN lease_expires_at TEXT;
-- how many times the request has been claimed; the claim's number fences its completion
ALTER TABLE callback_requests ADD COLUMN delivery_attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE callback_requests ADD COLUMN last_status_code INTEGER;
ALTER TABLE callback_requests ADD COLUMN dead_letter_reason TEXT;
ALTER TABLE callback_requests ADD COLUMN dead_lettered_at TEXT;
ALTER TABLE callback_requests ADD COLUMN cancelled_at TEXT;
ALTER TABLE callback_requests ADD COLUMN resolved_at TEXT;
ALTER TABLE callback_requests ADD COLUMN resolved_by TEXT;
ALTER TABLE callback_requests ADD COLUMN resolution_note TEXT;

-- What a worker claims: due, unleased, most urgent first, then oldest.
DROP INDEX IF EXISTS callback_requests_queue;
CREATE INDEX callback_requests_queue ON callback_requests (urgency_rank, created_at)
  WHERE status IN ('pending', 'failed') AND lease_owner IS NULL;
CREATE INDEX callback_requests_leased ON callback_requests (lease_expires_at)
  WHERE lease_owner IS NOT NULL;

-- Every POST to a frontend, successful or not.
CREATE TABLE delivery_attempts (
  id                  BLOB PRIMARY KEY NOT NULL,
  callback_request_id BLOB NOT NULL REFERENCES callback_requests (id),
  attempt             INTEGER NOT NULL,
  worker_id           TEXT NOT NULL,
  started_at          TEXT NOT NULL,
  finished_at         TEXT NOT NULL,
  latency_ms          REAL NOT NULL,
  status_code         INTEGER,
  outcome             TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'rejected', 'dead_letter')),
  error               TEXT,
  response_excerpt    TEXT
);
CREATE INDEX delivery_attempts_request ON delivery_attempts (callback_request_id, started_at);

-- On-call alerts: one per (request, kind), so a request alerts once for each reason; a request
-- that becomes a dead letter again (after a staff retry) re-arms its alert for a new round.
CREATE TABLE alerts (
  callback_request_id BLOB NOT NULL REFERENCES callback_requests (id),
  kind                TEXT NOT NULL CHECK (kind IN ('critical_request', 'dead_letter')),
  round               INTEGER NOT NULL DEFAULT 1,
  tenant_id           TEXT NOT NULL,
  created_at          TEXT NOT NULL,
  updated_at          TEXT NOT NULL,
  status              TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
  attempt             INTEGER NOT NULL DEFAULT 0,
  failures            INTEGER NOT NULL DEFAULT 0,
  next_attempt_at     TEXT,
  lease_owner         TEXT,
  lease_expires_at    TEXT,
  sent_at             TEXT,
  last_error          TEXT,
  PRIMARY KEY (callback_request_id, kind)
);
CREATE INDEX alerts_queue ON alerts (created_at) WHERE status = 'pending' AND lease_owner IS NULL;

-- Each message sent for an alert, written as soon as it is sent; a channel that succeeded in a
-- round is never sent again in that round.
CREATE TABLE alert_sends (
  id                  BLOB PRIMARY KEY NOT NULL,
  callback_request_id BLOB NOT NULL,
  kind                TEXT NOT NULL,
  round               INTEGER NOT NULL,
  channel             TEXT NOT NULL CHECK (channel IN ('sms', 'webhook')),
  target              TEXT NOT NULL,
  attempt             INTEGER NOT NULL,
  at                  TEXT NOT NULL,
  ok                  INTEGER NOT NULL,
  status_code         INTEGER,
  error               TEXT,
  FOREIGN KEY (callback_request_id, kind) REFERENCES alerts (callback_request_id, kind)
);
CREATE INDEX alert_sends_alert ON alert_sends (callback_request_id, kind, at);

-- Alerts are queued in the transaction that makes them necessary, whatever wrote the row.
CREATE TRIGGER callback_requests_alert_critical AFTER INSERT ON callback_requests
  WHEN NEW.urgency_level = 'critical'
BEGIN
  INSERT OR IGNORE INTO alerts (callback_request_id, kind, tenant_id, created_at, updated_at)
  VALUES (NEW.id, 'critical_request', NEW.tenant_id, NEW.created_at, NEW.created_at);
END;
CREATE TRIGGER callback_requests_alert_dead_letter AFTER UPDATE OF status ON callback_requests
  WHEN NEW.status = 'dead_letter' AND OLD.status <> 'dead_letter'
BEGIN
  UPDATE alerts SET round = round + 1, status = 'pending', failures = 0, next_attempt_at = NULL,
         lease_owner = NULL, lease_expires_at = NULL, sent_at = NULL, last_error = NULL,
         created_at = COALESCE(NEW.dead_lettered_at, NEW.updated_at),
         updated_at = COALESCE(NEW.dead_lettered_at, NEW.updated_at)
   WHERE callback_request_id = NEW.id AND kind = 'dead_letter';
  INSERT OR IGNORE INTO alerts (callback_request_id, kind, tenant_id, created_at, updated_at)
  VALUES (NEW.id, 'dead_letter', NEW.tenant_id,
          COALESCE(NEW.dead_lettered_at, NEW.updated_at), COALESCE(NEW.dead_lettered_at, NEW.updated_at));
END;

-- Staff actions on callback requests (CLI and dashboard), for the audit trail.
CREATE TABLE audit_log (
  id                  BLOB PRIMARY KEY NOT NULL,
  at                  TEXT NOT NULL,
  actor               TEXT NOT NULL,
  action              TEXT NOT NULL,
  callback_request_id BLOB REFERENCES callback_requests (id),
  detail              TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
