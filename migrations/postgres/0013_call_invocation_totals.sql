-- Counting a call's windows walked every row of the call in them, each on its own heap page
-- (uuid v7 ids interleave the calls): 6 us a row, so a call's tool calls cost O(its rows) each
-- and O(n^2) together. EXPLAIN ANALYZE: 0.5 ms for a call with 80 rows; a call 7,678 rows long
-- took 4-9 ms a tool call (pgbench, commits without flush). Each call now keeps its totals
-- (every invocation, and transfers), kept by a trigger whatever inserts the row, so every
-- writer counts; the totals only ever exceed the windowed counts (pruning old rows leaves
-- them as they are), so while they are under the limits the windows are too and nothing is
-- counted; at or over a limit the windows are counted exactly, as before, under the call's lock.
-- No log row may be written between the count below and the trigger that counts the next ones
-- (another instance during a deploy): inserts wait for this migration (the call path journals
-- meanwhile if it takes too long).
LOCK TABLE tool_call_logs IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE call_invocation_totals (
  platform   TEXT NOT NULL,
  call_ref   TEXT NOT NULL,
  total      BIGINT NOT NULL,
  transfers  BIGINT NOT NULL,
  PRIMARY KEY (platform, call_ref)
);

INSERT INTO call_invocation_totals (platform, call_ref, total, transfers)
SELECT platform, call_ref, count(*), count(*) FILTER (WHERE canonical_tool = 'transfer')
  FROM tool_call_logs GROUP BY platform, call_ref;

CREATE FUNCTION lifeline_count_invocation() RETURNS trigger AS $$
BEGIN
  INSERT INTO call_invocation_totals AS t (platform, call_ref, total, transfers)
  VALUES (NEW.platform, NEW.call_ref, 1, CASE WHEN NEW.canonical_tool = 'transfer' THEN 1 ELSE 0 END)
  ON CONFLICT (platform, call_ref)
  DO UPDATE SET total = t.total + 1, transfers = t.transfers + EXCLUDED.transfers;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER tool_call_logs_totals AFTER INSERT ON tool_call_logs
  FOR EACH ROW EXECUTE FUNCTION lifeline_count_invocation();

-- A callback request says whether its caller is to be texted: only where the clinic texts
-- callers. Every request used to queue a caller_texts row, which for a clinic without texting
-- waited for good for a sender that does not exist: an insert, two index entries and a foreign
-- key per tool call for nothing (the notices trigger was a fifth of lifeline_log_invocation's
-- executor time). Writers that do not say (older versions during a deploy) keep the old
-- behaviour.
ALTER TABLE callback_requests ADD COLUMN text_caller BOOLEAN NOT NULL DEFAULT TRUE;

CREATE OR REPLACE FUNCTION lifeline_queue_notices() RETURNS trigger AS $$
BEGIN
  IF NEW.urgency_level = 'critical' THEN
    INSERT INTO pages (callback_request_id, tenant_id, created_at, updated_at)
    VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
  END IF;
  IF NEW.text_caller THEN
    INSERT INTO caller_texts (callback_request_id, tenant_id, created_at, updated_at)
    VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER callback_requests_notices ON callback_requests;
CREATE TRIGGER callback_requests_notices AFTER INSERT ON callback_requests
  FOR EACH ROW WHEN (NEW.urgency_level = 'critical' OR NEW.text_caller)
  EXECUTE FUNCTION lifeline_queue_notices();

-- lifeline_log_invocation (0010) with the totals consulted before any counting, and repeats
-- found by the insert's conflict on the unique invocation key (its arbiter index is probed
-- directly). The separate check before it ran under a plan PL/pgSQL cached on the session's
-- first call, when the table was empty: perf showed it walking the call's rows through the
-- call-window index and fetching each from the heap (ExecSetParamPlan -> index_fetch_heap,
-- a fifth of the function's time at 1,000 tool calls/s). It is kept only where a limit may
-- be reached, so that a repeat is still answered as a repeat, not refused.
-- A new last parameter, c_text_caller (default: yes): the function is replaced, and a call
-- with the old parameters (an older version during a deploy) resolves to it.
DROP FUNCTION lifeline_log_invocation;
CREATE FUNCTION lifeline_log_invocation(
  lock_ns INTEGER, lock_key INTEGER,
  call_since TIMESTAMPTZ, window_tool TEXT, tool_since TIMESTAMPTZ,
  call_limit BIGINT, tool_limit BIGINT,
  l_id UUID, l_created_at TIMESTAMPTZ, l_tenant_id TEXT, l_platform TEXT, l_call_ref TEXT,
  l_call_id UUID, l_invocation_key TEXT, l_invocation_id TEXT, l_tool_name TEXT,
  l_canonical_tool TEXT, l_tool_parameters JSONB, l_callback_number TEXT, l_caller_name TEXT,
  l_urgency_level TEXT, l_ultravox_call_id TEXT, l_twilio_call_sid TEXT, l_tool_data JSONB,
  l_status TEXT, l_result JSONB, l_error_message TEXT, l_error_kind TEXT,
  l_duration_ms DOUBLE PRECISION, l_processed_at TIMESTAMPTZ,
  c_id UUID DEFAULT NULL, c_created_at TIMESTAMPTZ DEFAULT NULL, c_tenant_id TEXT DEFAULT NULL,
  c_call_id UUID DEFAULT NULL, c_call_sid TEXT DEFAULT NULL,
  c_transfer_attempt_id UUID DEFAULT NULL, c_reason TEXT DEFAULT NULL,
  c_callback_number TEXT DEFAULT NULL, c_caller_name TEXT DEFAULT NULL,
  c_first_name TEXT DEFAULT NULL, c_last_name TEXT DEFAULT NULL, c_pet_name TEXT DEFAULT NULL,
  c_species TEXT DEFAULT NULL, c_breed TEXT DEFAULT NULL, c_age TEXT DEFAULT NULL,
  c_concern_description TEXT DEFAULT NULL, c_urgency_level TEXT DEFAULT NULL,
  c_urgency_reason TEXT DEFAULT NULL, c_urgency_rank INTEGER DEFAULT NULL,
  c_metadata JSONB DEFAULT NULL, c_text_caller BOOLEAN DEFAULT TRUE,
  OUT outcome TEXT, OUT call_count BIGINT, OUT tool_count BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
  call_total BIGINT;
  transfer_total BIGINT;
BEGIN
  call_count := 0;
  tool_count := 0;
  PERFORM pg_advisory_xact_lock(lock_ns, lock_key);
  -- The call's totals bound its windowed counts from above: while they are under the limits,
  -- the windows are too, and nothing needs counting.
  SELECT t.total, t.transfers INTO call_total, transfer_total
    FROM call_invocation_totals t WHERE t.platform = l_platform AND t.call_ref = l_call_ref;
  IF (call_limit IS NOT NULL AND COALESCE(call_total, 0) >= call_limit)
     OR (tool_limit IS NOT NULL
         AND (window_tool <> 'transfer' OR COALESCE(transfer_total, 0) >= tool_limit)) THEN
    -- A repeat is answered as one, over a limit or not.
    IF EXISTS (SELECT 1 FROM tool_call_logs WHERE platform = l_platform AND call_ref = l_call_ref
               AND invocation_key = l_invocation_key) THEN
      outcome := 'duplicate';
      RETURN;
    END IF;
    SELECT COALESCE(SUM(CASE WHEN created_at > call_since THEN 1 ELSE 0 END), 0),
           COALESCE(SUM(CASE WHEN canonical_tool = window_tool AND created_at > tool_since
                        THEN 1 ELSE 0 END), 0)
      INTO call_count, tool_count
      FROM tool_call_logs
     WHERE platform = l_platform AND call_ref = l_call_ref
       AND created_at > LEAST(call_since, tool_since);
    IF call_count >= call_limit OR tool_count >= tool_limit THEN
      outcome := 'over';
      RETURN;
    END IF;
  END IF;
  INSERT INTO tool_call_logs (id, created_at, updated_at, tenant_id, platform, call_ref, call_id,
      invocation_key, invocation_id, tool_name, canonical_tool, tool_parameters, callback_number,
      caller_name, urgency_level, ultravox_call_id, twilio_call_sid, tool_data, status, result,
      error_message, error_kind, duration_ms, processed_at)
    VALUES (l_id, l_created_at, l_created_at, l_tenant_id, l_platform, l_call_ref, l_call_id,
      l_invocation_key, l_invocation_id, l_tool_name, l_canonical_tool, l_tool_parameters,
      l_callback_number, l_caller_name, l_urgency_level, l_ultravox_call_id, l_twilio_call_sid,
      l_tool_data, l_status, l_result, l_error_message, l_error_kind, l_duration_ms,
      l_processed_at)
    ON CONFLICT (platform, call_ref, invocation_key) DO NOTHING;
  IF NOT FOUND THEN
    outcome := 'duplicate';
    RETURN;
  END IF;
  IF c_id IS NOT NULL THEN
    INSERT INTO callback_requests (id, created_at, updated_at, tenant_id, call_id, call_sid,
        transfer_attempt_id, reason, status, callback_number, caller_name, first_name, last_name,
        pet_name, species, breed, age, concern_description, urgency_level, urgency_reason,
        urgency_rank, metadata, tool_call_log_id, text_caller)
      VALUES (c_id, c_created_at, c_created_at, c_tenant_id, c_call_id, c_call_sid,
        c_transfer_attempt_id, c_reason, 'pending', c_callback_number, c_caller_name,
        c_first_name, c_last_name, c_pet_name, c_species, c_breed, c_age, c_concern_description,
        c_urgency_level, c_urgency_reason, c_urgency_rank, c_metadata, l_id, c_text_caller);
    outcome := 'queued';
  ELSE
    outcome := 'logged';
  END IF;
END
$$;

-- Triggers on callback_requests ran a PL/pgSQL function for every row to decide, inside it,
-- that there was nothing to do: a third of lifeline_log_invocation's executor time (a loop of
-- 6,000 calls: about 155 us each with them, 90 without). The decisions move into WHEN
-- conditions, which the executor evaluates without calling the function; what each trigger
-- does when it fires is unchanged.
DROP TRIGGER callback_requests_alert ON callback_requests;
CREATE TRIGGER callback_requests_alert_critical AFTER INSERT ON callback_requests
  FOR EACH ROW WHEN (NEW.urgency_level = 'critical')
  EXECUTE FUNCTION lifeline_queue_alert();
CREATE TRIGGER callback_requests_alert_dead_letter AFTER UPDATE OF status ON callback_requests
  FOR EACH ROW WHEN (NEW.status = 'dead_letter' AND OLD.status <> 'dead_letter')
  EXECUTE FUNCTION lifeline_queue_alert();

-- The call path announces its queued work after the commit (0007); the condition the function
-- checked is now the trigger's.
DROP TRIGGER callback_requests_notify ON callback_requests;
CREATE TRIGGER callback_requests_notify AFTER INSERT OR UPDATE OF status, next_retry_at ON callback_requests
  FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_retry_at IS NULL
                     AND current_setting('lifeline.queue_notify', true) IS DISTINCT FROM 'after_commit')
  EXECUTE FUNCTION lifeline_notify_queue();
DROP TRIGGER alerts_notify ON alerts;
CREATE TRIGGER alerts_notify AFTER INSERT OR UPDATE OF status ON alerts
  FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_attempt_at IS NULL
                     AND current_setting('lifeline.queue_notify', true) IS DISTINCT FROM 'after_commit')
  EXECUTE FUNCTION lifeline_notify_queue();
