-- Each call's totals (every invocation, and transfers), kept by a trigger whatever inserts the
-- row: they bound the call's windowed counts from above, so while they are under the limits
-- nothing is counted (counting walked every row of the call in the windows, O(its rows) per
-- tool call). See the PostgreSQL migration 0013.
CREATE TABLE call_invocation_totals (
  platform   TEXT NOT NULL,
  call_ref   TEXT NOT NULL,
  total      INTEGER NOT NULL,
  transfers  INTEGER NOT NULL,
  PRIMARY KEY (platform, call_ref)
) WITHOUT ROWID;

INSERT INTO call_invocation_totals (platform, call_ref, total, transfers)
SELECT platform, call_ref, count(*), sum(CASE WHEN canonical_tool = 'transfer' THEN 1 ELSE 0 END)
  FROM tool_call_logs GROUP BY platform, call_ref;

CREATE TRIGGER tool_call_logs_totals AFTER INSERT ON tool_call_logs
BEGIN
  INSERT INTO call_invocation_totals (platform, call_ref, total, transfers)
  VALUES (NEW.platform, NEW.call_ref, 1, CASE WHEN NEW.canonical_tool = 'transfer' THEN 1 ELSE 0 END)
  ON CONFLICT (platform, call_ref)
  DO UPDATE SET total = total + 1, transfers = transfers + excluded.transfers;
END;

-- A callback request says whether its caller is to be texted: only where the clinic texts
-- callers (see the PostgreSQL migration 0013). Writers that do not say keep the old behaviour.
ALTER TABLE callback_requests ADD COLUMN text_caller INTEGER NOT NULL DEFAULT 1;
DROP TRIGGER callback_requests_caller_text;
CREATE TRIGGER callback_requests_caller_text AFTER INSERT ON callback_requests
  WHEN NEW.text_caller
BEGIN
  INSERT OR IGNORE INTO caller_texts (callback_request_id, tenant_id, created_at, updated_at)
  VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at);
END;
