-- Recovery of transfers and tool calls whose owner went away (issue 11).
--
-- answered_at: when the on-call person picked up (Jambonz dial:confirm or the B leg's
-- in-progress status, Twilio's whisper request). A bridged transfer stays `dialing` until its dial
-- ends; this tells the reconciler that such an attempt is talking, not stuck.
ALTER TABLE transfer_attempts ADD COLUMN answered_at TEXT;

-- The reconciler looks for invocations left `pending` by a process that died mid-effect. Rows
-- are pending for milliseconds, so this index stays a handful of entries.
CREATE INDEX tool_call_logs_pending ON tool_call_logs (created_at) WHERE status = 'pending';
