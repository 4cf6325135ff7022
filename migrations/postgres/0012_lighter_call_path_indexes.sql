-- Every tool call inserts a tool_call_logs row (and, for a message, a callback_requests row);
-- every index on them is one more entry written and WAL-logged before the commit's flush, and
-- that flush is most of a tool call's latency. pg_get_wal_stats over a 500 tool calls/s run:
-- 18.7 B-tree leaf inserts per tool call, 43 % of its WAL. The indexes dropped here came with the
-- original system's schema and serve no query of lifeline's: status, tool_name and urgency_level
-- hold a handful of values each (the queries that filter on them use the partial indexes that
-- name the statuses they want: tool_call_logs_pending, callback_requests_queue,
-- callback_requests_open). The Ultravox and Twilio ids are looked up by equality, which implies
-- NOT NULL, so partial indexes serve those lookups without an entry for every Jambonz tool call.
DROP INDEX IF EXISTS idx_tool_call_logs_status;
DROP INDEX IF EXISTS idx_tool_call_logs_tool_name;
DROP INDEX IF EXISTS idx_callback_requests_urgency;
DROP INDEX IF EXISTS idx_callback_requests_status;
DROP INDEX IF EXISTS idx_tool_call_logs_ultravox_call_id;
CREATE INDEX idx_tool_call_logs_ultravox_call_id ON tool_call_logs (ultravox_call_id)
  WHERE ultravox_call_id IS NOT NULL;
DROP INDEX IF EXISTS idx_tool_call_logs_twilio_call_sid;
CREATE INDEX idx_tool_call_logs_twilio_call_sid ON tool_call_logs (twilio_call_sid)
  WHERE twilio_call_sid IS NOT NULL;
