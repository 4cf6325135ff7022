-- A tool call's durable log in one round trip: `SELECT * FROM lifeline_log_invocation(...)` in
-- autocommit is one statement, so one message to the server and one reply, sent after the commit
-- (and its WAL flush) that holds the rows. The same work as the transaction it replaces (BEGIN
-- with the call's advisory lock, the duplicate check and window counts, the inserts, COMMIT: four
-- round trips), with the same guarantees:
--   * the call's advisory lock is taken first and held to the commit, so one call's invocations
--     are logged one at a time across every instance;
--   * PL/pgSQL takes a new snapshot for each statement (READ COMMITTED), so the duplicate check
--     and the counts below see every invocation of the call committed before the lock was ours:
--     the per-call limits hold exactly;
--   * a repeat of a logged invocation writes nothing ('duplicate');
--   * over a limit writes nothing ('over', with the counts): the caller builds the refusal from
--     the counts and records it.
-- Parameters: the lock, the count windows and limits (NULL: no limit), then the log row in the
-- order of `bind_log`, then (optional) the callback request in the order of `bind_callback`.
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
  c_metadata JSONB DEFAULT NULL,
  OUT outcome TEXT, OUT call_count BIGINT, OUT tool_count BIGINT
) LANGUAGE plpgsql AS $$
BEGIN
  call_count := 0;
  tool_count := 0;
  PERFORM pg_advisory_xact_lock(lock_ns, lock_key);
  IF EXISTS (SELECT 1 FROM tool_call_logs WHERE platform = l_platform AND call_ref = l_call_ref
             AND invocation_key = l_invocation_key) THEN
    outcome := 'duplicate';
    RETURN;
  END IF;
  IF call_limit IS NOT NULL OR tool_limit IS NOT NULL THEN
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
        urgency_rank, metadata, tool_call_log_id)
      VALUES (c_id, c_created_at, c_created_at, c_tenant_id, c_call_id, c_call_sid,
        c_transfer_attempt_id, c_reason, 'pending', c_callback_number, c_caller_name,
        c_first_name, c_last_name, c_pet_name, c_species, c_breed, c_age, c_concern_description,
        c_urgency_level, c_urgency_reason, c_urgency_rank, c_metadata, l_id);
    outcome := 'queued';
  ELSE
    outcome := 'logged';
  END IF;
END
$$;
