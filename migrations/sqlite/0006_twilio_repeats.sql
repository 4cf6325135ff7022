-- Twilio repeats its voice webhooks (a retry after a timeout or a failed connection, see its
-- connection overrides `rc`/`rp`): these keys make a repeat change nothing.

-- One setup per call: the first /twilio/incoming claims it and creates the Ultravox call; a
-- repeat waits for that claim and answers with the same Ultravox call (or the same fallback).
-- A claim left 'creating' past the setup timeout (its process died) may be taken over.
CREATE TABLE call_setups (
  call_id          BLOB PRIMARY KEY NOT NULL REFERENCES calls (id),
  claim_token      BLOB NOT NULL,
  claimed_at       TEXT NOT NULL,
  state            TEXT NOT NULL CHECK (state IN ('creating', 'connected', 'fallback')),
  ultravox_call_id TEXT,
  -- what the caller's <Connect><Stream> joins; a repeat answers with the same URL
  join_url         TEXT,
  finished_at      TEXT
);

-- A voice message is one callback request, however often Twilio posts its recording. Rows
-- written before this migration have no key (Twilio's repeats come within seconds).
ALTER TABLE callback_requests ADD COLUMN recording_sid TEXT;
CREATE UNIQUE INDEX callback_requests_recording_sid ON callback_requests (recording_sid)
  WHERE recording_sid IS NOT NULL;
