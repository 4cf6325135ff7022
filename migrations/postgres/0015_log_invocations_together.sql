-- Several tool calls logged by one statement (the call path's lanes, `log_batch.rs`) were until
-- now that many calls of lifeline_log_invocation in a `UNION ALL`: each call ran its own INSERT
-- of a log row and its own INSERT of a callback request, so every tool call paid an executor
-- start-up for each, the callback trigger's condition parsed again, and the function call's
-- own set-up. lifeline_log_invocations does what those calls did, under the same locks and in
-- batch order within each call, with one INSERT for the log rows and one for the callback
-- requests of every tool call that can take the common way; the others are logged by
-- lifeline_log_invocation itself, as before.
--
-- The common way: the first tool call of its call in the batch whose call's totals are under
-- its limits (then the windows are too: lifeline_log_invocation, 0013). A tool call whose
-- call's totals reach a limit (its windows must be counted), and any later tool call of a call
-- already in the batch (it must see what the earlier ones wrote), go through
-- lifeline_log_invocation one by one, after the shared inserts, in the batch's order.
-- Answers are those lifeline_log_invocation would have given: 'queued' or 'logged' for a row
-- written (with its callback request, or without one), 'duplicate' for a key already logged,
-- and for the common way, counts of 0 (nothing was counted).

CREATE TYPE lifeline_logged_entry AS (i INTEGER, outcome TEXT, call_count BIGINT, tool_count BIGINT);

-- One array per parameter of lifeline_log_invocation (but the lock's namespace), element k
-- for the batch's tool call k; the batch sorted by lock key, so that the locks are taken in
-- key order as by the shared statements before. Rows come back numbered from 0, in batch order.
CREATE FUNCTION lifeline_log_invocations(
  lock_ns INTEGER, lock_keys INTEGER[],
  call_sinces TIMESTAMPTZ[], window_tools TEXT[], tool_sinces TIMESTAMPTZ[],
  call_limits BIGINT[], tool_limits BIGINT[],
  l_ids UUID[], l_created_ats TIMESTAMPTZ[], l_tenant_ids TEXT[], l_platforms TEXT[],
  l_call_refs TEXT[], l_call_ids UUID[], l_invocation_keys TEXT[], l_invocation_ids TEXT[],
  l_tool_names TEXT[], l_canonical_tools TEXT[], l_tool_parameters JSONB[],
  l_callback_numbers TEXT[], l_caller_names TEXT[], l_urgency_levels TEXT[],
  l_ultravox_call_ids TEXT[], l_twilio_call_sids TEXT[], l_tool_data JSONB[], l_statuses TEXT[],
  l_results JSONB[], l_error_messages TEXT[], l_error_kinds TEXT[],
  l_duration_ms DOUBLE PRECISION[], l_processed_ats TIMESTAMPTZ[],
  c_ids UUID[], c_created_ats TIMESTAMPTZ[], c_tenant_ids TEXT[], c_call_ids UUID[],
  c_call_sids TEXT[], c_transfer_attempt_ids UUID[], c_reasons TEXT[],
  c_callback_numbers TEXT[], c_caller_names TEXT[], c_first_names TEXT[], c_last_names TEXT[],
  c_pet_names TEXT[], c_species TEXT[], c_breeds TEXT[], c_ages TEXT[],
  c_concern_descriptions TEXT[], c_urgency_levels TEXT[], c_urgency_reasons TEXT[],
  c_urgency_ranks INTEGER[], c_metadata JSONB[], c_text_callers BOOLEAN[]
) RETURNS SETOF lifeline_logged_entry LANGUAGE plpgsql AS $$
DECLARE
  n INTEGER := cardinality(l_ids);
  one_by_one BOOLEAN[];
  written UUID[];
  logged lifeline_logged;
  answer lifeline_logged_entry;
BEGIN
  IF n IS NULL OR n = 0 THEN
    RETURN;
  END IF;
  -- One statement each for the locks and for the test below, not one per tool call: each
  -- statement is an executor start-up.
  PERFORM pg_advisory_xact_lock(lock_ns, u.key) FROM unnest(lock_keys) AS u(key);
  -- A later tool call of a call already in the batch, or one whose call's totals reach a limit
  -- (lifeline_log_invocation's own test), is logged one by one. The totals are looked up by
  -- their key for each tool call (LIMIT 1 keeps the lookup a subquery, planned as such).
  one_by_one := ARRAY(
    SELECT EXISTS (SELECT 1 FROM unnest(l_platforms[1:u.k::int - 1], l_call_refs[1:u.k::int - 1])
                                   AS e(platform, call_ref)
                    WHERE e.platform = u.platform AND e.call_ref = u.call_ref)
        OR (u.call_limit IS NOT NULL AND COALESCE(t.total, 0) >= u.call_limit)
        OR (u.tool_limit IS NOT NULL
            AND (u.window_tool <> 'transfer' OR COALESCE(t.transfers, 0) >= u.tool_limit))
      FROM unnest(l_platforms, l_call_refs, call_limits, tool_limits, window_tools)
           WITH ORDINALITY AS u(platform, call_ref, call_limit, tool_limit, window_tool, k)
      LEFT JOIN LATERAL (
        SELECT c.total, c.transfers FROM call_invocation_totals c
         WHERE c.platform = u.platform AND c.call_ref = u.call_ref LIMIT 1) t ON TRUE
     ORDER BY u.k);

  WITH inserted AS (
    INSERT INTO tool_call_logs (id, created_at, updated_at, tenant_id, platform, call_ref,
        call_id, invocation_key, invocation_id, tool_name, canonical_tool, tool_parameters,
        callback_number, caller_name, urgency_level, ultravox_call_id, twilio_call_sid,
        tool_data, status, result, error_message, error_kind, duration_ms, processed_at)
      SELECT u.id, u.created_at, u.created_at, u.tenant_id, u.platform, u.call_ref, u.call_id,
             u.invocation_key, u.invocation_id, u.tool_name, u.canonical_tool,
             u.tool_parameters, u.callback_number, u.caller_name, u.urgency_level,
             u.ultravox_call_id, u.twilio_call_sid, u.tool_data, u.status, u.result,
             u.error_message, u.error_kind, u.duration_ms, u.processed_at
        FROM unnest(l_ids, l_created_ats, l_tenant_ids, l_platforms, l_call_refs, l_call_ids,
                    l_invocation_keys, l_invocation_ids, l_tool_names, l_canonical_tools,
                    l_tool_parameters, l_callback_numbers, l_caller_names, l_urgency_levels,
                    l_ultravox_call_ids, l_twilio_call_sids, l_tool_data, l_statuses,
                    l_results, l_error_messages, l_error_kinds, l_duration_ms,
                    l_processed_ats, one_by_one)
             WITH ORDINALITY AS u(id, created_at, tenant_id, platform, call_ref, call_id,
                    invocation_key, invocation_id, tool_name, canonical_tool, tool_parameters,
                    callback_number, caller_name, urgency_level, ultravox_call_id,
                    twilio_call_sid, tool_data, status, result, error_message, error_kind,
                    duration_ms, processed_at, later, k)
       WHERE NOT u.later
       ORDER BY u.k
    ON CONFLICT (platform, call_ref, invocation_key) DO NOTHING
    RETURNING id
  )
  SELECT COALESCE(array_agg(id), '{}') INTO written FROM inserted;

  IF cardinality(written) > 0 THEN
    INSERT INTO callback_requests (id, created_at, updated_at, tenant_id, call_id, call_sid,
        transfer_attempt_id, reason, status, callback_number, caller_name, first_name, last_name,
        pet_name, species, breed, age, concern_description, urgency_level, urgency_reason,
        urgency_rank, metadata, tool_call_log_id, text_caller)
      SELECT c.id, c.created_at, c.created_at, c.tenant_id, c.call_id, c.call_sid,
             c.transfer_attempt_id, c.reason, 'pending', c.callback_number, c.caller_name,
             c.first_name, c.last_name, c.pet_name, c.species, c.breed, c.age,
             c.concern_description, c.urgency_level, c.urgency_reason, c.urgency_rank,
             c.metadata, c.log_id, c.text_caller
        FROM unnest(c_ids, c_created_ats, c_tenant_ids, c_call_ids, c_call_sids,
                    c_transfer_attempt_ids, c_reasons, c_callback_numbers, c_caller_names,
                    c_first_names, c_last_names, c_pet_names, c_species, c_breeds, c_ages,
                    c_concern_descriptions, c_urgency_levels, c_urgency_reasons,
                    c_urgency_ranks, c_metadata, c_text_callers, l_ids)
             WITH ORDINALITY AS c(id, created_at, tenant_id, call_id, call_sid,
                    transfer_attempt_id, reason, callback_number, caller_name, first_name,
                    last_name, pet_name, species, breed, age, concern_description,
                    urgency_level, urgency_reason, urgency_rank, metadata, text_caller, log_id, k)
       WHERE c.id IS NOT NULL AND c.log_id = ANY (written)
       ORDER BY c.k;
  END IF;

  FOR k IN 1..n LOOP
    IF one_by_one[k] THEN
      logged := lifeline_log_invocation(lock_ns, lock_keys[k], call_sinces[k], window_tools[k],
        tool_sinces[k], call_limits[k], tool_limits[k],
        l_ids[k], l_created_ats[k], l_tenant_ids[k], l_platforms[k], l_call_refs[k],
        l_call_ids[k], l_invocation_keys[k], l_invocation_ids[k], l_tool_names[k],
        l_canonical_tools[k], l_tool_parameters[k], l_callback_numbers[k], l_caller_names[k],
        l_urgency_levels[k], l_ultravox_call_ids[k], l_twilio_call_sids[k], l_tool_data[k],
        l_statuses[k], l_results[k], l_error_messages[k], l_error_kinds[k], l_duration_ms[k],
        l_processed_ats[k],
        c_ids[k], c_created_ats[k], c_tenant_ids[k], c_call_ids[k], c_call_sids[k],
        c_transfer_attempt_ids[k], c_reasons[k], c_callback_numbers[k], c_caller_names[k],
        c_first_names[k], c_last_names[k], c_pet_names[k], c_species[k], c_breeds[k], c_ages[k],
        c_concern_descriptions[k], c_urgency_levels[k], c_urgency_reasons[k],
        c_urgency_ranks[k], c_metadata[k], c_text_callers[k]);
      answer := (k - 1, logged.outcome, logged.call_count, logged.tool_count);
    ELSIF l_ids[k] = ANY (written) THEN
      answer := (k - 1, CASE WHEN c_ids[k] IS NULL THEN 'logged' ELSE 'queued' END, 0, 0);
    ELSE
      answer := (k - 1, 'duplicate', 0, 0);
    END IF;
    RETURN NEXT answer;
  END LOOP;
END
$$;
