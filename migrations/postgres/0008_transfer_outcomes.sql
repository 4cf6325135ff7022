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
-- `secondary`, `step3`..., `final`), so only an empty role is refused now.
ALTER TABLE transfer_attempts ADD COLUMN outcome TEXT CHECK (outcome IN (
  'accepted', 'declined', 'machine', 'no_answer', 'busy', 'failed', 'caller_hung_up', 'cancelled'));
ALTER TABLE transfer_attempts ADD COLUMN ring_ms BIGINT;
ALTER TABLE transfer_attempts ADD COLUMN accepted_at TIMESTAMPTZ;
ALTER TABLE transfer_attempts ADD COLUMN chain_step INTEGER;
UPDATE transfer_attempts SET chain_step = CASE target_role WHEN 'primary' THEN 1 ELSE 2 END;
ALTER TABLE transfer_attempts DROP CONSTRAINT IF EXISTS transfer_attempts_target_role_check;
ALTER TABLE transfer_attempts ADD CONSTRAINT transfer_attempts_target_role_check
  CHECK (target_role <> '');
-- Per-clinic stats read attempts by tenant and day.
CREATE INDEX transfer_attempts_tenant_started ON transfer_attempts (tenant_id, started_at);
