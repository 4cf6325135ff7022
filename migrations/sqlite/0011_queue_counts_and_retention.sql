-- Issue 15: a scrape whose cost does not grow with history, and `lifeline prune` (as
-- migrations/postgres/0011_queue_counts_and_retention.sql, which says why).
--
-- Requests still in the queue are counted from callback_requests_open, pending alerts from
-- alerts_open; settled requests (delivered, or resolved by staff) and settled alerts (sent,
-- failed, skipped) by triggers into settled_request_counts and settled_alert_counts.

CREATE TABLE settled_request_counts (
  status        TEXT NOT NULL CHECK (status IN ('posted', 'resolved')),
  urgency_level TEXT NOT NULL,
  count         INTEGER NOT NULL,
  PRIMARY KEY (status, urgency_level)
);

CREATE TABLE settled_alert_counts (
  kind   TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('sent', 'failed', 'skipped')),
  count  INTEGER NOT NULL,
  PRIMARY KEY (kind, status)
);

-- A request's settled state: 'resolved' (whatever its status), 'posted', or none (NULL) while
-- it is in the queue. The decrement matches no row when the old state was none.
CREATE TRIGGER callback_requests_settled_insert AFTER INSERT ON callback_requests
  WHEN NEW.resolved_at IS NOT NULL OR NEW.status = 'posted'
BEGIN
  INSERT INTO settled_request_counts (status, urgency_level, count)
  VALUES (CASE WHEN NEW.resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END,
          NEW.urgency_level, 1)
  ON CONFLICT (status, urgency_level) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER callback_requests_settled_update
  AFTER UPDATE OF status, resolved_at, urgency_level ON callback_requests
  WHEN (OLD.resolved_at IS NOT NULL OR OLD.status = 'posted'
        OR NEW.resolved_at IS NOT NULL OR NEW.status = 'posted')
   AND ((OLD.resolved_at IS NULL) <> (NEW.resolved_at IS NULL)
        OR OLD.status <> NEW.status
        OR OLD.urgency_level <> NEW.urgency_level)
BEGIN
  UPDATE settled_request_counts SET count = count - 1
   WHERE status = CASE WHEN OLD.resolved_at IS NOT NULL THEN 'resolved'
                       WHEN OLD.status = 'posted' THEN 'posted' END
     AND urgency_level = OLD.urgency_level;
  INSERT INTO settled_request_counts (status, urgency_level, count)
  SELECT CASE WHEN NEW.resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END,
         NEW.urgency_level, 1
   WHERE NEW.resolved_at IS NOT NULL OR NEW.status = 'posted'
  ON CONFLICT (status, urgency_level) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER callback_requests_settled_delete AFTER DELETE ON callback_requests
  WHEN OLD.resolved_at IS NOT NULL OR OLD.status = 'posted'
BEGIN
  UPDATE settled_request_counts SET count = count - 1
   WHERE status = CASE WHEN OLD.resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END
     AND urgency_level = OLD.urgency_level;
END;

CREATE TRIGGER alerts_settled_insert AFTER INSERT ON alerts
  WHEN NEW.status <> 'pending'
BEGIN
  INSERT INTO settled_alert_counts (kind, status, count) VALUES (NEW.kind, NEW.status, 1)
  ON CONFLICT (kind, status) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER alerts_settled_update AFTER UPDATE OF status, kind ON alerts
  WHEN (OLD.status <> 'pending' OR NEW.status <> 'pending')
   AND (OLD.status <> NEW.status OR OLD.kind <> NEW.kind)
BEGIN
  UPDATE settled_alert_counts SET count = count - 1
   WHERE kind = OLD.kind AND status = OLD.status;
  INSERT INTO settled_alert_counts (kind, status, count)
  SELECT NEW.kind, NEW.status, 1 WHERE NEW.status <> 'pending'
  ON CONFLICT (kind, status) DO UPDATE SET count = count + 1;
END;

CREATE TRIGGER alerts_settled_delete AFTER DELETE ON alerts
  WHEN OLD.status <> 'pending'
BEGIN
  UPDATE settled_alert_counts SET count = count - 1
   WHERE kind = OLD.kind AND status = OLD.status;
END;

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

-- What `lifeline prune` looks for by time (rows of the call path are written in time order, so
-- their entries go to the end of these indexes), and the references it must not break: deleting
-- a row makes SQLite look for rows that still reference it (foreign keys).
CREATE INDEX callback_requests_settled ON callback_requests (created_at)
  WHERE status = 'posted' OR resolved_at IS NOT NULL;
CREATE INDEX call_events_at ON call_events (at);
CREATE INDEX tool_call_logs_created ON tool_call_logs (created_at);
CREATE INDEX callback_requests_tool_call_log ON callback_requests (tool_call_log_id);
CREATE INDEX transfer_attempts_tool_call_log ON transfer_attempts (tool_call_log_id);
CREATE INDEX audit_log_request ON audit_log (callback_request_id);
