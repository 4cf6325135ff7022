//! The rows of the call path this instance holds in memory: what the database would answer
//! about calls and transfer attempts it saw recently (so a call that was known before an
//! outage stays known during it), and everything the journal holds (until it is replayed).

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::store::journal::Record;
use crate::store::*;

/// How many calls (and as many transfer attempts) are remembered; the oldest are forgotten
/// first. Journaled rows are never forgotten before the replay.
const REMEMBERED: usize = 20_000;

/// Calls, transfer attempts and journaled tool-call logs, in memory.
#[derive(Default)]
pub struct Rows {
    calls: HashMap<Uuid, CallRow>,
    by_ref: HashMap<(String, String), Uuid>,
    by_ultravox: HashMap<String, Uuid>,
    call_order: VecDeque<Uuid>,
    attempts: HashMap<Uuid, TransferAttemptRow>,
    attempt_order: VecDeque<Uuid>,
    /// Calls whose attempts the journal holds (started, ended or answered while journaling):
    /// for them, memory is more recent than the database.
    journaled_attempts: HashMap<Uuid, Vec<Uuid>>,
    journaled_calls: HashMap<Uuid, ()>,
    logs: HashMap<Uuid, ToolCallLogRow>,
    log_keys: HashMap<(String, String, String), Uuid>,
    /// The journaled logs of each call (platform, call ref), so counting a call's window does
    /// not walk every journaled row: at 1,000 tool calls/s a walk over all of them took a sixth
    /// of the process's CPU within seconds.
    logs_by_call: HashMap<(String, String), Vec<Uuid>>,
}

impl Rows {
    /// Remembers a call as the database (or the journal) has it.
    pub fn call(&mut self, row: &CallRow) {
        if !self.calls.contains_key(&row.id) {
            self.call_order.push_back(row.id);
        }
        self.by_ref
            .insert((row.platform.clone(), row.call_ref.clone()), row.id);
        if let Some(uv) = &row.ultravox_call_id {
            self.by_ultravox.insert(uv.clone(), row.id);
        }
        self.calls.insert(row.id, row.clone());
        while self.call_order.len() > REMEMBERED {
            let Some(old) = self.call_order.pop_front() else {
                break;
            };
            if self.journaled_calls.contains_key(&old) {
                self.call_order.push_back(old);
                break;
            }
            if let Some(gone) = self.calls.remove(&old) {
                self.by_ref.remove(&(gone.platform, gone.call_ref));
                if let Some(uv) = gone.ultravox_call_id {
                    self.by_ultravox.remove(&uv);
                }
            }
        }
    }

    /// The call a platform knows by `call_ref`.
    pub fn call_by_ref(&self, platform: &str, call_ref: &str) -> Option<CallRow> {
        let id = self
            .by_ref
            .get(&(platform.to_string(), call_ref.to_string()))?;
        self.calls.get(id).cloned()
    }

    /// The call Ultravox knows by `ultravox_call_id`.
    pub fn call_by_ultravox(&self, ultravox_call_id: &str) -> Option<CallRow> {
        self.calls
            .get(self.by_ultravox.get(ultravox_call_id)?)
            .cloned()
    }

    /// Applies a status change of the call's own leg.
    pub fn status(&mut self, call_id: Uuid, update: &CallStatusUpdate) {
        if let Some(call) = self.calls.get_mut(&call_id)
            && call.ended_at.is_none()
        {
            call.status = update.status.clone();
            if update.ended {
                call.ended_at = Some(update.at);
                call.duration_seconds = update.duration_seconds.or(call.duration_seconds);
            }
        }
    }

    /// Links the call to its Ultravox call.
    pub fn link(&mut self, call_id: Uuid, ultravox_call_id: &str) {
        if let Some(call) = self.calls.get_mut(&call_id) {
            call.ultravox_call_id = Some(ultravox_call_id.to_string());
            self.by_ultravox
                .insert(ultravox_call_id.to_string(), call_id);
        }
    }

    /// The other Ultravox call this call is linked to, if it is.
    pub fn linked_elsewhere(&self, call_id: Uuid, ultravox_call_id: &str) -> Option<String> {
        self.calls
            .get(&call_id)?
            .ultravox_call_id
            .clone()
            .filter(|linked| linked != ultravox_call_id)
    }

    /// A journaled invocation by its idempotency key.
    pub fn invocation(&self, platform: &str, call_ref: &str, key: &str) -> Option<ToolCallLogRow> {
        let id =
            self.log_keys
                .get(&(platform.to_string(), call_ref.to_string(), key.to_string()))?;
        self.logs.get(id).cloned()
    }

    /// A journaled invocation by id.
    pub fn log(&self, id: Uuid) -> Option<ToolCallLogRow> {
        self.logs.get(&id).cloned()
    }

    /// The call's journaled invocations within `windows` (what this instance can count while
    /// the database is away).
    pub fn count(&self, log: &NewToolCallLog, windows: &CountWindows) -> WindowCounts {
        let mut counts = WindowCounts { call: 0, tool: 0 };
        let key = (log.platform.as_str().to_string(), log.call_ref.clone());
        let ids = self.logs_by_call.get(&key).map_or(&[][..], Vec::as_slice);
        for row in ids.iter().filter_map(|id| self.logs.get(id)) {
            if row.created_at >= windows.call_since {
                counts.call += 1;
            }
            if row.canonical_tool == windows.tool && row.created_at >= windows.tool_since {
                counts.tool += 1;
            }
        }
        counts
    }

    /// Remembers a transfer attempt.
    pub fn attempt(&mut self, row: TransferAttemptRow) {
        if !self.attempts.contains_key(&row.id) {
            self.attempt_order.push_back(row.id);
        }
        self.attempts.insert(row.id, row);
        while self.attempt_order.len() > REMEMBERED {
            let Some(old) = self.attempt_order.pop_front() else {
                break;
            };
            let journaled = self
                .attempts
                .get(&old)
                .is_some_and(|a| self.journaled_attempts.contains_key(&a.call_id));
            if journaled {
                self.attempt_order.push_back(old);
                break;
            }
            self.attempts.remove(&old);
        }
    }

    /// One transfer attempt.
    pub fn attempt_by_id(&self, id: Uuid) -> Option<TransferAttemptRow> {
        self.attempts.get(&id).cloned()
    }

    /// The attempt ringing for a call, as far as memory knows.
    pub fn dialing(&self, call_id: Uuid) -> Option<TransferAttemptRow> {
        self.attempts
            .values()
            .find(|a| a.call_id == call_id && a.status == "dialing")
            .cloned()
    }

    /// For a call whose attempts the journal holds, the one ringing (memory is the truth);
    /// `None` when the database must be asked.
    pub fn attempt_state(&self, call_id: Uuid) -> Option<Option<TransferAttemptRow>> {
        self.journaled_attempts
            .contains_key(&call_id)
            .then(|| self.dialing(call_id))
    }

    /// Whether memory knows the attempt ended (a repeated outcome changes nothing).
    pub fn already_ended(&self, attempt_id: Uuid) -> bool {
        self.attempts
            .get(&attempt_id)
            .is_some_and(|a| a.status != "dialing")
    }

    /// Applies an attempt's end (and starts the next one).
    pub fn finished(&mut self, finish: &TransferFinish) {
        if let Some(attempt) = self.attempts.get_mut(&finish.attempt_id) {
            if attempt.status != "dialing" {
                return;
            }
            attempt.status = if finish.succeeded {
                "succeeded"
            } else {
                "failed"
            }
            .into();
            attempt.dial_call_status = finish.dial_call_status.clone();
            attempt.dial_sip_status = finish.dial_sip_status;
            attempt.failure_reason = finish.failure_reason.clone();
            attempt.ended_at = Some(finish.at);
            if finish.outcome.is_some() {
                attempt.outcome = finish.outcome.clone();
            }
            if finish.ring_ms.is_some() {
                attempt.ring_ms = finish.ring_ms;
            }
            if finish.outcome.as_deref() == Some("accepted") && attempt.accepted_at.is_none() {
                attempt.accepted_at = Some(attempt.answered_at.unwrap_or(finish.at));
            }
        }
        if let Some(next) = &finish.next {
            self.attempt(new_attempt_row(next));
        }
        if let Some((log_id, failed)) = &finish.failed_log
            && let Some(log) = self.logs.get_mut(log_id)
        {
            apply_outcome(log, failed);
        }
    }

    /// Records that the on-call person picked up.
    /// The attempts of a call held in memory, oldest first.
    pub fn attempts_of(&self, call_id: Uuid) -> Vec<TransferAttemptRow> {
        let mut found: Vec<TransferAttemptRow> = self
            .attempts
            .values()
            .filter(|a| a.call_id == call_id)
            .cloned()
            .collect();
        found.sort_by_key(|a| (a.started_at, a.id));
        found
    }

    pub fn answered(&mut self, attempt_id: Uuid, at: DateTime<Utc>) {
        if let Some(attempt) = self.attempts.get_mut(&attempt_id) {
            attempt.answered_at.get_or_insert(at);
        }
    }

    /// Applies a journaled record to memory.
    pub fn journaled(&mut self, record: &Record) {
        match record {
            Record::UpsertCall { call } => {
                if self
                    .call_by_ref(call.platform.as_str(), &call.call_ref)
                    .is_none()
                {
                    self.journaled_calls.insert(call.id, ());
                    self.call(&CallRow::new_call(call));
                }
            }
            Record::AppStarted { call_id, at } => {
                if let Some(call) = self.calls.get_mut(call_id) {
                    call.app_started_at.get_or_insert(*at);
                }
            }
            Record::CallStatus { call_id, update } => self.status(*call_id, update),
            Record::UltravoxLink {
                call_id,
                ultravox_call_id,
            } => self.link(*call_id, ultravox_call_id),
            Record::CallEvent { .. } | Record::CallbackRequest { .. } => {}
            Record::BeginInvocation { log, plan } => {
                let key = (
                    log.platform.as_str().to_string(),
                    log.call_ref.clone(),
                    log.invocation_key.clone(),
                );
                if self.log_keys.contains_key(&key) {
                    return;
                }
                let mut row = new_log_row(log);
                match plan {
                    Plan::Run => {}
                    Plan::Complete { outcome, .. } | Plan::Fail(outcome) => {
                        apply_outcome(&mut row, outcome);
                    }
                }
                self.log_keys.insert(key, row.id);
                self.logs_by_call
                    .entry((row.platform.clone(), row.call_ref.clone()))
                    .or_default()
                    .push(row.id);
                self.logs.insert(row.id, row);
            }
            Record::FinishInvocation { log_id, outcome } => {
                if let Some(row) = self.logs.get_mut(log_id)
                    && row.status == "pending"
                {
                    apply_outcome(row, outcome);
                }
            }
            Record::StartTransfer { attempt } => {
                self.journaled_attempts
                    .entry(attempt.call_id)
                    .or_default()
                    .push(attempt.id);
                if !self.attempts.contains_key(&attempt.id) {
                    self.attempt(new_attempt_row(attempt));
                }
            }
            Record::FinishTransfer { finish } => {
                self.journaled_attempts
                    .entry(finish.call_id)
                    .or_default()
                    .push(finish.attempt_id);
                self.finished(finish);
            }
            Record::TransferAnswered { attempt_id, at, .. } => {
                if let Some(call_id) = self.attempts.get(attempt_id).map(|a| a.call_id) {
                    self.journaled_attempts
                        .entry(call_id)
                        .or_default()
                        .push(*attempt_id);
                }
                self.answered(*attempt_id, *at);
            }
        }
    }

    /// A record whose journaling failed (the caller was told it was not recorded): what memory
    /// took from it that would make a retry look like a repeat is taken back.
    pub fn forget(&mut self, record: &Record) {
        match record {
            Record::UpsertCall { call } => {
                if self.journaled_calls.remove(&call.id).is_some()
                    && let Some(gone) = self.calls.remove(&call.id)
                {
                    self.by_ref.remove(&(gone.platform, gone.call_ref));
                }
            }
            Record::BeginInvocation { log, .. } if self.logs.remove(&log.id).is_some() => {
                let call = (log.platform.as_str().to_string(), log.call_ref.clone());
                if let Some(ids) = self.logs_by_call.get_mut(&call) {
                    ids.retain(|id| *id != log.id);
                    if ids.is_empty() {
                        self.logs_by_call.remove(&call);
                    }
                }
                self.log_keys.remove(&(
                    log.platform.as_str().to_string(),
                    log.call_ref.clone(),
                    log.invocation_key.clone(),
                ));
            }
            Record::StartTransfer { attempt } => {
                if let Some(a) = self.attempts.get_mut(&attempt.id)
                    && a.status == "dialing"
                {
                    a.status = "failed".into();
                }
            }
            _ => {}
        }
    }

    /// The journal was replayed: the database knows everything again. Calls and attempts stay
    /// remembered (they are in the database now); journaled logs are dropped.
    pub fn drained(&mut self) {
        self.journaled_attempts.clear();
        self.journaled_calls.clear();
        self.logs.clear();
        self.log_keys.clear();
        self.logs_by_call.clear();
    }
}

/// The row a new transfer attempt gets.
pub fn new_attempt_row(a: &NewTransferAttempt) -> TransferAttemptRow {
    TransferAttemptRow::dialing(a)
}

fn new_log_row(log: &NewToolCallLog) -> ToolCallLogRow {
    ToolCallLogRow {
        id: log.id,
        created_at: log.created_at,
        updated_at: log.created_at,
        tenant_id: log.tenant_id.clone(),
        platform: log.platform.as_str().to_string(),
        call_ref: log.call_ref.clone(),
        call_id: log.call_id,
        invocation_key: log.invocation_key.clone(),
        invocation_id: log.invocation_id.clone(),
        tool_name: log.tool_name.clone(),
        canonical_tool: log.canonical_tool.clone(),
        tool_parameters: Json(log.tool_parameters.clone()),
        status: "pending".into(),
        error_message: None,
        error_kind: None,
        result: None,
        duration_ms: None,
        callback_number: log.callback_number.clone(),
        caller_name: log.caller_name.clone(),
        urgency_level: log.urgency_level.clone(),
        processed_at: None,
    }
}

fn apply_outcome(row: &mut ToolCallLogRow, o: &Recorded) {
    row.status = o.status().to_string();
    row.result = Some(Json(o.result.clone()));
    row.error_message = o.error_message.clone();
    row.error_kind = o.error_kind.map(str::to_string);
    row.duration_ms = Some(o.duration_ms);
    row.processed_at = Some(o.at);
    row.updated_at = o.at;
}
