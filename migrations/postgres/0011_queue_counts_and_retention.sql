-- Issue 15: a scrape whose cost does not grow with history, and `lifeline prune`.
--
-- /metrics (and the dashboard's System page) count callback requests by status and urgency and
-- alerts by kind and status. Counting every row grew with years of delivered and resolved
-- requests. Now:
--
-- * Requests still in the queue (neither delivered nor resolved: pending, failed, dead letters,
--   cancelled ones nobody resolved) are counted from callback_requests_open, a partial index
--   holding only them; pending alerts from alerts_open.
-- * Settled requests (delivered, status 'posted'; or resolved by staff, resolved_at set, whatever
--   their status) are counted by triggers into settled_request_counts, under the status /metrics
--   shows them with ('posted' or 'resolved'); settled alerts (sent, failed, skipped) into
--   settled_alert_counts. The triggers fire only when a row enters or leaves a settled state (or
--   is deleted): the call path's insert of a pending request writes no count, so concurrent
--   calls never wait for each other on a count row.
--
-- The other indexes serve `lifeline prune`: it finds settled requests and old rows by time, and
-- deleting a row makes PostgreSQL look for rows that still reference it (foreign keys).

CREATE TABLE settled_request_counts (
  status        TEXT NOT NULL CHECK (status IN ('posted', 'resolved')),
  urgency_level TEXT NOT NULL,
  count         BIGINT NOT NULL,
  PRIMARY KEY (status, urgency_level)
);

CREATE TABLE settled_alert_counts (
  kind   TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('sent', 'failed', 'skipped')),
  count  BIGINT NOT NULL,
  PRIMARY KEY (kind, status)
);

CREATE FUNCTION lifeline_count_settled_requests() RETURNS trigger AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    IF OLD.resolved_at IS NOT NULL OR OLD.status = 'posted' THEN
      UPDATE settled_request_counts SET count = count - 1
       WHERE status = CASE WHEN OLD.resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END
         AND urgency_level = OLD.urgency_level;
    END IF;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    IF NEW.resolved_at IS NOT NULL OR NEW.status = 'posted' THEN
      INSERT INTO settled_request_counts AS c (status, urgency_level, count)
      VALUES (CASE WHEN NEW.resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END,
              NEW.urgency_level, 1)
      ON CONFLICT (status, urgency_level) DO UPDATE SET count = c.count + 1;
    END IF;
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- Only rows that are, or were, settled run the function.
CREATE TRIGGER callback_requests_settled_insert AFTER INSERT ON callback_requests
  FOR EACH ROW WHEN (NEW.resolved_at IS NOT NULL OR NEW.status = 'posted')
  EXECUTE FUNCTION lifeline_count_settled_requests();
CREATE TRIGGER callback_requests_settled_update
  AFTER UPDATE OF status, resolved_at, urgency_level ON callback_requests
  FOR EACH ROW WHEN (
    (OLD.resolved_at IS NOT NULL OR OLD.status = 'posted'
     OR NEW.resolved_at IS NOT NULL OR NEW.status = 'posted')
    AND ((OLD.resolved_at IS NULL) <> (NEW.resolved_at IS NULL)
         OR OLD.status <> NEW.status
         OR OLD.urgency_level <> NEW.urgency_level))
  EXECUTE FUNCTION lifeline_count_settled_requests();
CREATE TRIGGER callback_requests_settled_delete AFTER DELETE ON callback_requests
  FOR EACH ROW WHEN (OLD.resolved_at IS NOT NULL OR OLD.status = 'posted')
  EXECUTE FUNCTION lifeline_count_settled_requests();

CREATE FUNCTION lifeline_count_settled_alerts() RETURNS trigger AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    IF OLD.status <> 'pending' THEN
      UPDATE settled_alert_counts SET count = count - 1
       WHERE kind = OLD.kind AND status = OLD.status;
    END IF;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    IF NEW.status <> 'pending' THEN
      INSERT INTO settled_alert_counts AS c (kind, status, count)
      VALUES (NEW.kind, NEW.status, 1)
      ON CONFLICT (kind, status) DO UPDATE SET count = c.count + 1;
    END IF;
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER alerts_settled_insert AFTER INSERT ON alerts
  FOR EACH ROW WHEN (NEW.status <> 'pending')
  EXECUTE FUNCTION lifeline_count_settled_alerts();
CREATE TRIGGER alerts_settled_update AFTER UPDATE OF status, kind ON alerts
  FOR EACH ROW WHEN (
    (OLD.status <> 'pending' OR NEW.status <> 'pending')
    AND (OLD.status <> NEW.status OR OLD.kind <> NEW.kind))
  EXECUTE FUNCTION lifeline_count_settled_alerts();
CREATE TRIGGER alerts_settled_delete AFTER DELETE ON alerts
  FOR EACH ROW WHEN (OLD.status <> 'pending')
  EXECUTE FUNCTION lifeline_count_settled_alerts();

-- The counts of what is already there. The triggers above locked both tables against writers
-- until this migration commits, so no change falls between the two.
INSERT INTO settled_request_counts (status, urgency_level, count)
SELECT CASE WHEN resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END, urgency_level, COUNT(*)
  FROM callback_requests WHERE resolved_at IS NOT NULL OR status = 'posted'
 GROUP BY 1, 2;
INSERT INTO settled_alert_counts (kind, status, count)
SELECT kind, status, COUNT(*) FROM alerts WHERE status <> 'pending' GROUP BY kind, status;

-- What the scrape counts.
CREATE INDEX callback_requests_open ON callback_requests (status, urgency_level, created_at)
  WHERE resolved_at IS NULL AND status <> 'posted';
CREATE INDEX alerts_open ON alerts (kind) WHERE status = 'pending';

-- What `lifeline prune` looks for, and the references it must not break.
CREATE INDEX callback_requests_settled ON callback_requests (created_at)
  WHERE status = 'posted' OR resolved_at IS NOT NULL;
CREATE INDEX call_events_at ON call_events (at);
CREATE INDEX callback_requests_tool_call_log ON callback_requests (tool_call_log_id)
  WHERE tool_call_log_id IS NOT NULL;
CREATE INDEX transfer_attempts_tool_call_log ON transfer_attempts (tool_call_log_id)
  WHERE tool_call_log_id IS NOT NULL;
CREATE INDEX audit_log_request ON audit_log (callback_request_id)
  WHERE callback_request_id IS NOT NULL;
