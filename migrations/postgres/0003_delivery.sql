-- The callback delivery queue: leases, attempts, dead letters, alerts, staff resolution.
-- A claimed request keeps its status ('pending' or 'failed'); the lease columns say who holds it
-- and until when, and delivery_attempt fences the holder's completion.

ALTER TABLE callback_requests
  ADD COLUMN lease_owner        TEXT,
  ADD COLUMN lease_expires_at   TIMESTAMPTZ,
  -- how many times the request has been claimed; the claim's number fences its completion
  ADD COLUMN delivery_attempt   INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN last_status_code   INTEGER,
  ADD COLUMN dead_letter_reason TEXT,
  ADD COLUMN dead_lettered_at   TIMESTAMPTZ,
  ADD COLUMN cancelled_at       TIMESTAMPTZ,
  ADD COLUMN resolved_at        TIMESTAMPTZ,
  ADD COLUMN resolved_by        TEXT,
  ADD COLUMN resolution_note    TEXT;

-- What a worker claims: due, unleased, most urgent first, then oldest.
DROP INDEX IF EXISTS callback_requests_queue;
CREATE INDEX callback_requests_queue ON callback_requests (urgency_rank, created_at)
  WHERE status IN ('pending', 'failed') AND lease_owner IS NULL;
CREATE INDEX callback_requests_leased ON callback_requests (lease_expires_at)
  WHERE lease_owner IS NOT NULL;

-- Every POST to a frontend, successful or not.
CREATE TABLE delivery_attempts (
  id                  UUID PRIMARY KEY,
  callback_request_id UUID NOT NULL REFERENCES callback_requests (id),
  attempt             INTEGER NOT NULL,
  worker_id           TEXT NOT NULL,
  started_at          TIMESTAMPTZ NOT NULL,
  finished_at         TIMESTAMPTZ NOT NULL,
  latency_ms          DOUBLE PRECISION NOT NULL,
  status_code         INTEGER,
  outcome             TEXT NOT NULL CHECK (outcome IN ('delivered', 'retry', 'rejected', 'dead_letter')),
  error               TEXT,
  response_excerpt    TEXT
);
CREATE INDEX delivery_attempts_request ON delivery_attempts (callback_request_id, started_at);

-- On-call alerts: one per (request, kind), so a request alerts once for each reason; a request
-- that becomes a dead letter again (after a staff retry) re-arms its alert for a new round.
CREATE TABLE alerts (
  callback_request_id UUID NOT NULL REFERENCES callback_requests (id),
  kind                TEXT NOT NULL CHECK (kind IN ('critical_request', 'dead_letter')),
  round               INTEGER NOT NULL DEFAULT 1,
  tenant_id           TEXT NOT NULL,
  created_at          TIMESTAMPTZ NOT NULL,
  updated_at          TIMESTAMPTZ NOT NULL,
  status              TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
  attempt             INTEGER NOT NULL DEFAULT 0,
  failures            INTEGER NOT NULL DEFAULT 0,
  next_attempt_at     TIMESTAMPTZ,
  lease_owner         TEXT,
  lease_expires_at    TIMESTAMPTZ,
  sent_at             TIMESTAMPTZ,
  last_error          TEXT,
  PRIMARY KEY (callback_request_id, kind)
);
CREATE INDEX alerts_queue ON alerts (created_at) WHERE status = 'pending' AND lease_owner IS NULL;

-- Each message sent for an alert, written as soon as it is sent; a channel that succeeded in a
-- round is never sent again in that round.
CREATE TABLE alert_sends (
  id                  UUID PRIMARY KEY,
  callback_request_id UUID NOT NULL,
  kind                TEXT NOT NULL,
  round               INTEGER NOT NULL,
  channel             TEXT NOT NULL CHECK (channel IN ('sms', 'webhook')),
  target              TEXT NOT NULL,
  attempt             INTEGER NOT NULL,
  at                  TIMESTAMPTZ NOT NULL,
  ok                  BOOLEAN NOT NULL,
  status_code         INTEGER,
  error               TEXT,
  FOREIGN KEY (callback_request_id, kind) REFERENCES alerts (callback_request_id, kind)
);
CREATE INDEX alert_sends_alert ON alert_sends (callback_request_id, kind, at);

-- Alerts are queued in the transaction that makes them necessary, whatever wrote the row.
CREATE FUNCTION lifeline_queue_alert() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'INSERT' AND NEW.urgency_level = 'critical' THEN
    INSERT INTO alerts (callback_request_id, kind, tenant_id, created_at, updated_at)
    VALUES (NEW.id, 'critical_request', NEW.tenant_id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
  ELSIF TG_OP = 'UPDATE' AND NEW.status = 'dead_letter' AND OLD.status <> 'dead_letter' THEN
    UPDATE alerts SET round = round + 1, status = 'pending', failures = 0, next_attempt_at = NULL,
           lease_owner = NULL, lease_expires_at = NULL, sent_at = NULL, last_error = NULL,
           created_at = COALESCE(NEW.dead_lettered_at, now()),
           updated_at = COALESCE(NEW.dead_lettered_at, now())
     WHERE callback_request_id = NEW.id AND kind = 'dead_letter';
    IF NOT FOUND THEN
      INSERT INTO alerts (callback_request_id, kind, tenant_id, created_at, updated_at)
      VALUES (NEW.id, 'dead_letter', NEW.tenant_id, COALESCE(NEW.dead_lettered_at, now()),
              COALESCE(NEW.dead_lettered_at, now()))
      ON CONFLICT DO NOTHING;
    END IF;
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER callback_requests_alert AFTER INSERT OR UPDATE OF status ON callback_requests
  FOR EACH ROW EXECUTE FUNCTION lifeline_queue_alert();

-- Workers LISTEN on lifeline_queue: a new or re-queued request or a new alert wakes them at
-- commit, so delivery starts within milliseconds instead of at the next poll.
CREATE FUNCTION lifeline_notify_queue() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('lifeline_queue', TG_TABLE_NAME);
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER callback_requests_notify AFTER INSERT OR UPDATE OF status, next_retry_at ON callback_requests
  FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_retry_at IS NULL)
  EXECUTE FUNCTION lifeline_notify_queue();
CREATE TRIGGER alerts_notify AFTER INSERT OR UPDATE OF status ON alerts
  FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_attempt_at IS NULL)
  EXECUTE FUNCTION lifeline_notify_queue();

-- Staff actions on callback requests (CLI and dashboard), for the audit trail.
CREATE TABLE audit_log (
  id                  UUID PRIMARY KEY,
  at                  TIMESTAMPTZ NOT NULL,
  actor               TEXT NOT NULL,
  action              TEXT NOT NULL,
  callback_request_id UUID REFERENCES callback_requests (id),
  detail              JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at DESC);
