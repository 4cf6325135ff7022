-- The log statement's own work, per tool call: callgrind over a single-user backend running
-- lifeline_log_invocation 1,300 times (a collect_info with its callback request, each committed,
-- lifeline.queue_notify = after_commit as on the call path) counted 1,106k instructions a call.
-- A sixth of them went to PostgreSQL working out again, for every statement, what never changes:
--
--   * 49k: a function with OUT parameters rebuilds its result's row type on every call, from
--     pg_proc's argument arrays (51 entries, stored compressed). It now returns a composite type
--     with the same three columns, looked up once per session; callers see the same columns.
--   * 49k: the four AFTER INSERT triggers on callback_requests each had a WHEN condition, and
--     PostgreSQL parses a trigger's condition from its stored text for every statement that
--     inserts (3,400 characters in all). One trigger now decides with one condition, a superset
--     of the four, and its function does exactly what each of the four did when it fired, in
--     their order (alphabetical by name: alert, notices, notify, settled count).
--   * 91k: CHECK constraints are parsed from their stored text and planned for every statement
--     that inserts or updates a row (the constant arrays of allowed values are the bulk of
--     it): four on the two tables of every tool call, three of them on callback_requests, which
--     the delivery worker also updates for every request. Each table now has one CHECK calling
--     a PL/pgSQL function (compiled once per session) that tests the same values.
--
-- After: 917k instructions a call (-17%). Every writer, an older instance during a deploy
-- included, gets the same checks and the same trigger effects: they are the tables' own, not
-- the writer's.

-- Both tables are locked first, in the order every writer takes them (a log row, then its
-- callback request): taking callback_requests first (its triggers, below) and tool_call_logs
-- later (its constraint) deadlocked with a tool call logged meanwhile, which PostgreSQL then
-- cancelled. Writers wait for this migration instead (the call path journals meanwhile if it
-- takes too long).
LOCK TABLE tool_call_logs, callback_requests IN ACCESS EXCLUSIVE MODE;

-- The function's result (the columns of its former OUT parameters). A call with the same
-- parameters (an older instance during a deploy) resolves to the new function; its statement
-- is planned again and returns the same columns of the same types.
CREATE TYPE lifeline_logged AS (outcome TEXT, call_count BIGINT, tool_count BIGINT);

-- lifeline_log_invocation (0013) unchanged but for its result.
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
  c_metadata JSONB DEFAULT NULL, c_text_caller BOOLEAN DEFAULT TRUE
) RETURNS lifeline_logged LANGUAGE plpgsql AS $$
DECLARE
  outcome TEXT;
  call_count BIGINT;
  tool_count BIGINT;
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
      RETURN (outcome, call_count, tool_count);
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
      RETURN (outcome, call_count, tool_count);
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
    RETURN (outcome, call_count, tool_count);
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
  RETURN (outcome, call_count, tool_count);
END
$$;

-- What the four AFTER INSERT triggers on callback_requests did, in their order, each under its
-- own condition as before. Each block is the insert branch of the function it replaces, which
-- a trigger function cannot call: lifeline_queue_alert (0003), lifeline_queue_notices (0013),
-- lifeline_notify_queue (0007), lifeline_count_settled_requests (0011). Those still serve the
-- update and delete triggers; a change to what one does on insert belongs here.
CREATE FUNCTION lifeline_new_request_work() RETURNS trigger AS $$
BEGIN
  IF NEW.urgency_level = 'critical' THEN
    INSERT INTO alerts (callback_request_id, kind, tenant_id, created_at, updated_at)
    VALUES (NEW.id, 'critical_request', NEW.tenant_id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
    INSERT INTO pages (callback_request_id, tenant_id, created_at, updated_at)
    VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
  END IF;
  IF NEW.text_caller THEN
    INSERT INTO caller_texts (callback_request_id, tenant_id, created_at, updated_at)
    VALUES (NEW.id, NEW.tenant_id, NEW.created_at, NEW.created_at)
    ON CONFLICT DO NOTHING;
  END IF;
  IF NEW.status = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_retry_at IS NULL
     AND current_setting('lifeline.queue_notify', true) IS DISTINCT FROM 'after_commit' THEN
    PERFORM pg_notify('lifeline_queue', TG_TABLE_NAME);
  END IF;
  IF NEW.resolved_at IS NOT NULL OR NEW.status = 'posted' THEN
    INSERT INTO settled_request_counts AS c (status, urgency_level, count)
    VALUES (CASE WHEN NEW.resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END,
            NEW.urgency_level, 1)
    ON CONFLICT (status, urgency_level) DO UPDATE SET count = c.count + 1;
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER callback_requests_alert_critical ON callback_requests;
DROP TRIGGER callback_requests_notices ON callback_requests;
DROP TRIGGER callback_requests_settled_insert ON callback_requests;
DROP FUNCTION lifeline_queue_notices();
-- The notification of a re-queued request (an update) keeps a trigger of its own.
DROP TRIGGER callback_requests_notify ON callback_requests;
CREATE TRIGGER callback_requests_notify AFTER UPDATE OF status, next_retry_at ON callback_requests
  FOR EACH ROW WHEN (NEW.status = 'pending' AND NEW.lease_owner IS NULL AND NEW.next_retry_at IS NULL
                     AND current_setting('lifeline.queue_notify', true) IS DISTINCT FROM 'after_commit')
  EXECUTE FUNCTION lifeline_notify_queue();
-- Fires when any of the four would have: critical (alert, page), texting the caller, not
-- pending or resolved (settled count; a pending row is not settled), or a writer that does not
-- announce its queued work after its commit (notify).
CREATE TRIGGER callback_requests_new AFTER INSERT ON callback_requests
  FOR EACH ROW WHEN (NEW.urgency_level = 'critical' OR NEW.text_caller OR NEW.status <> 'pending'
                     OR NEW.resolved_at IS NOT NULL
                     OR current_setting('lifeline.queue_notify', true) IS DISTINCT FROM 'after_commit')
  EXECUTE FUNCTION lifeline_new_request_work();

-- The same allowed values as the constraints they replace (0001), NULL passing as in any
-- CHECK. Added NOT VALID: every existing row already passed the identical constraint being
-- dropped, and validating would scan both tables under an exclusive lock during a deploy. New
-- and updated rows are checked either way.
CREATE FUNCTION lifeline_valid_log_row(status TEXT) RETURNS BOOLEAN
IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  RETURN status IS NULL OR status IN ('pending', 'success', 'failed', 'retrying');
END
$$;
CREATE FUNCTION lifeline_valid_request_row(reason TEXT, status TEXT, urgency_level TEXT)
RETURNS BOOLEAN IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  RETURN (reason IS NULL OR reason IN ('message', 'failed_transfer'))
     AND (status IS NULL OR status IN ('pending', 'posted', 'failed', 'cancelled', 'dead_letter'))
     AND (urgency_level IS NULL OR urgency_level IN ('normal', 'urgent', 'critical'));
END
$$;
ALTER TABLE tool_call_logs
  DROP CONSTRAINT tool_call_logs_status_check,
  ADD CONSTRAINT tool_call_logs_status_check CHECK (lifeline_valid_log_row(status)) NOT VALID;
ALTER TABLE callback_requests
  DROP CONSTRAINT callback_requests_reason_check,
  DROP CONSTRAINT callback_requests_status_check,
  DROP CONSTRAINT callback_requests_urgency_level_check,
  ADD CONSTRAINT callback_requests_values_check
    CHECK (lifeline_valid_request_row(reason, status, urgency_level)) NOT VALID;
