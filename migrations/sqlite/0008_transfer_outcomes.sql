-- Typed transfer outcomes and escalation chains (issue 14, items 1-3).
--
-- One row of transfer_attempts is one dial of one step of the on-call chain. Columns added:
--
-- outcome      How the attempt ended, one word (NULL while it is still dialing, and for rows
--              written before this migration):
--                accepted        a human answered and pressed 1 at the gate (or, with the
--                                gate switched off, the platform bridged the call)
--                declined        the phone answered but nobody pressed 1 in time, or another
--                                key was pressed (voicemail, IVR, a phone in a pocket)
--                machine         answering-machine detection said machine, before the gate
--                no_answer       it rang out (the step's ring timeout)
--                busy            the far end was busy
--                failed          the dial failed (SIP error, could not start, never reported)
--                caller_hung_up  the caller left while it rang
--                cancelled       lifeline stopped it (e.g. the chain's total ring budget ran out)
-- ring_ms      Milliseconds from the dial's start until the far end picked up, or until the
--              attempt ended when nobody picked up: the ring time of this attempt.
-- accepted_at  When the human accepted (pressed 1). Time to human for a transfer is
--              accepted_at minus the started_at of the chain's first attempt (chain_step = 1)
--              of the same call.
-- chain_step   1-based position of the attempt in the escalation chain: 1 is the first person
--              rung (`primary`), 2 the next (`secondary`), and so on.
--
-- target_role was limited to primary/secondary; a chain names its steps (`primary`,
-- `secondary`, `step3`..., `final`), so only an empty role is refused now. SQLite cannot drop a
-- CHECK constraint: the table is rebuilt. callback_requests references it by name; the
-- foreign keys are checked at commit (defer_foreign_keys), when the rebuilt table holds the
-- same ids.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE transfer_attempts_new (
  id                BLOB PRIMARY KEY NOT NULL,
  call_id           BLOB NOT NULL REFERENCES calls (id),
  tenant_id         TEXT NOT NULL,
  tool_call_log_id  BLOB REFERENCES tool_call_logs (id),
  target_role       TEXT NOT NULL CHECK (target_role <> ''),
  target_number     TEXT NOT NULL,
  status            TEXT NOT NULL CHECK (status IN ('dialing', 'succeeded', 'failed')),
  dial_call_status  TEXT,
  dial_sip_status   INTEGER,
  failure_reason    TEXT,
  callback_number   TEXT NOT NULL,
  caller_name       TEXT,
  reason            TEXT NOT NULL,
  pet_name          TEXT,
  started_at        TEXT NOT NULL,
  ended_at          TEXT,
  answered_at       TEXT,
  outcome           TEXT CHECK (outcome IN ('accepted', 'declined', 'machine', 'no_answer',
                      'busy', 'failed', 'caller_hung_up', 'cancelled')),
  ring_ms           INTEGER,
  accepted_at       TEXT,
  chain_step        INTEGER
);
INSERT INTO transfer_attempts_new (id, call_id, tenant_id, tool_call_log_id, target_role,
  target_number, status, dial_call_status, dial_sip_status, failure_reason, callback_number,
  caller_name, reason, pet_name, started_at, ended_at, answered_at, chain_step)
SELECT id, call_id, tenant_id, tool_call_log_id, target_role, target_number, status,
  dial_call_status, dial_sip_status, failure_reason, callback_number, caller_name, reason,
  pet_name, started_at, ended_at, answered_at,
  CASE target_role WHEN 'primary' THEN 1 ELSE 2 END
FROM transfer_attempts;
DROP TABLE transfer_attempts;
ALTER TABLE transfer_attempts_new RENAME TO transfer_attempts;
CREATE UNIQUE INDEX transfer_attempts_one_dialing ON transfer_attempts (call_id) WHERE status = 'dialing';
CREATE INDEX transfer_attempts_call ON transfer_attempts (call_id, started_at);
-- Per-clinic stats read attempts by tenant and day.
CREATE INDEX transfer_attempts_tenant_started ON transfer_attempts (tenant_id, started_at);
