//! Replaying a journaled record into the database, so that replaying it twice (after a crash
//! mid-replay, or by two processes sharing a journal by mistake) changes nothing: rows keep
//! their journaled ids, repeats of known rows are recognised, and a call that the database
//! already knew under another id is written under that id (an alias).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use uuid::Uuid;

use crate::domain::Urgency;
use crate::store::journal::{Entry, Record, segment};
use crate::store::*;

const ALIASES: &str = "aliases.json";

/// The call aliases learnt by earlier replays of this journal (forgotten when the journal is
/// empty: no record refers to them any more).
pub fn load_aliases(dir: &Path) -> io::Result<HashMap<Uuid, Uuid>> {
    let path = dir.join(ALIASES);
    if segment::list(dir)?.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => segment::sync_dir(dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        return Ok(HashMap::new());
    }
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(HashMap::new()),
        Err(e) => Err(e),
    }
}

/// Saves the aliases durably (written aside, then renamed over the old file).
pub fn save_aliases(dir: &Path, aliases: &HashMap<Uuid, Uuid>) -> io::Result<()> {
    let tmp = dir.join(format!("{ALIASES}.tmp"));
    let bytes = serde_json::to_vec(aliases).map_err(io::Error::other)?;
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(ALIASES))?;
    segment::sync_dir(dir)
}

fn alias(aliases: &HashMap<Uuid, Uuid>, id: &mut Uuid) {
    if let Some(to) = aliases.get(id) {
        *id = *to;
    }
}

fn alias_opt(aliases: &HashMap<Uuid, Uuid>, id: &mut Option<Uuid>) {
    if let Some(id) = id {
        alias(aliases, id);
    }
}

fn alias_request(aliases: &HashMap<Uuid, Uuid>, r: &mut NewCallbackRequest) {
    alias_opt(aliases, &mut r.call_id);
    alias_opt(aliases, &mut r.tool_call_log_id);
}

/// Rewrites the ids of `record` that have an alias: calls the database knew under another id,
/// and tool-call logs that turned out to repeat one it had (a repeat of an invocation logged
/// before the outage).
pub fn remap(record: &mut Record, aliases: &HashMap<Uuid, Uuid>) {
    if aliases.is_empty() {
        return;
    }
    match record {
        Record::UpsertCall { .. } => {}
        Record::FinishInvocation { log_id, .. } => alias(aliases, log_id),
        Record::TransferAnswered { call_id, .. } => alias_opt(aliases, call_id),
        Record::AppStarted { call_id, .. }
        | Record::CallStatus { call_id, .. }
        | Record::UltravoxLink { call_id, .. } => alias(aliases, call_id),
        Record::CallEvent { event } => alias(aliases, &mut event.call_id),
        Record::BeginInvocation { log, plan } => {
            alias_opt(aliases, &mut log.call_id);
            if let Plan::Complete {
                callback: Some(cb), ..
            } = plan
            {
                alias_opt(aliases, &mut cb.call_id);
            }
        }
        Record::StartTransfer { attempt } => {
            alias(aliases, &mut attempt.call_id);
            alias_opt(aliases, &mut attempt.tool_call_log_id);
        }
        Record::FinishTransfer { finish } => remap_finish(finish, aliases),
        Record::CallbackRequest { request } => alias_request(aliases, request),
    }
}

fn remap_finish(finish: &mut TransferFinish, aliases: &HashMap<Uuid, Uuid>) {
    alias(aliases, &mut finish.call_id);
    if let Some(next) = &mut finish.next {
        alias(aliases, &mut next.call_id);
        alias_opt(aliases, &mut next.tool_call_log_id);
    }
    if let Some(cb) = &mut finish.callback {
        alias_request(aliases, cb);
    }
    if let Some((log_id, _)) = &mut finish.failed_log {
        alias(aliases, log_id);
    }
}

/// `plan` with its callback request's call aliased.
pub fn plan_with_alias<'a>(plan: &'a Plan, aliases: &HashMap<Uuid, Uuid>) -> Cow<'a, Plan> {
    match plan {
        Plan::Complete {
            callback: Some(cb), ..
        } if cb.call_id.is_some_and(|id| aliases.contains_key(&id)) => {
            let mut plan = plan.clone();
            if let Plan::Complete {
                callback: Some(cb), ..
            } = &mut plan
            {
                alias_opt(aliases, &mut cb.call_id);
            }
            Cow::Owned(plan)
        }
        _ => Cow::Borrowed(plan),
    }
}

/// `finish` with its calls aliased.
pub fn finish_with_alias<'a>(
    finish: &'a TransferFinish,
    aliases: &HashMap<Uuid, Uuid>,
) -> Cow<'a, TransferFinish> {
    if aliases.is_empty() {
        return Cow::Borrowed(finish);
    }
    let mut owned = finish.clone();
    remap_finish(&mut owned, aliases);
    Cow::Owned(owned)
}

/// Splits a segment's records into lanes that may be replayed side by side: the records of
/// one call stay in one lane, in journal order (each may depend on the ones before it); the
/// lanes of different calls do not touch the same rows. Returns the records' indices per lane.
pub fn lanes(entries: &[Entry]) -> Vec<Vec<usize>> {
    let mut lane_of: HashMap<Uuid, usize> = HashMap::new();
    let mut call_of_log: HashMap<Uuid, Uuid> = HashMap::new();
    let mut call_of_attempt: HashMap<Uuid, Uuid> = HashMap::new();
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let key = match &entry.record {
            Record::UpsertCall { call } => call.id,
            Record::AppStarted { call_id, .. }
            | Record::CallStatus { call_id, .. }
            | Record::UltravoxLink { call_id, .. } => *call_id,
            Record::CallEvent { event } => event.call_id,
            Record::BeginInvocation { log, .. } => {
                let key = log.call_id.unwrap_or(log.id);
                call_of_log.insert(log.id, key);
                key
            }
            Record::FinishInvocation { log_id, .. } => {
                call_of_log.get(log_id).copied().unwrap_or(*log_id)
            }
            Record::StartTransfer { attempt } => {
                call_of_attempt.insert(attempt.id, attempt.call_id);
                attempt.call_id
            }
            Record::FinishTransfer { finish } => finish.call_id,
            Record::TransferAnswered {
                attempt_id,
                call_id,
                ..
            } => call_id
                .or_else(|| call_of_attempt.get(attempt_id).copied())
                .unwrap_or(*attempt_id),
            Record::CallbackRequest { request } => request.call_id.unwrap_or(request.id),
        };
        let lane = *lane_of.entry(key).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        lanes[lane].push(i);
    }
    lanes
}

/// The callback requests a record writes, of any urgency.
fn callback_requests(record: &Record) -> Vec<&NewCallbackRequest> {
    match record {
        Record::FinishTransfer { finish } => finish.callback.iter().collect(),
        Record::CallbackRequest { request } => vec![request],
        Record::BeginInvocation {
            plan: Plan::Complete {
                callback: Some(cb), ..
            },
            ..
        } => vec![cb.as_ref()],
        _ => Vec::new(),
    }
}

/// For a record the database refused: writes its callback requests on their own (without
/// the links to rows that could not be written), so that the caller is still called back.
/// Returns how many were written.
pub async fn salvage_callbacks(store: &dyn Store, record: &Record) -> Result<usize, StoreError> {
    let mut written = 0;
    for request in callback_requests(record) {
        if store.callback_request(request.id).await?.is_some() {
            continue;
        }
        let mut bare = request.clone();
        bare.tool_call_log_id = None;
        bare.transfer_attempt_id = None;
        if let Err(e) = store.insert_callback_request(&bare).await {
            if super::is_transient(&e) {
                return Err(e);
            }
            bare.call_id = None;
            store.insert_callback_request(&bare).await?;
        }
        written += 1;
    }
    Ok(written)
}

/// The critical callback requests a record writes (alerted at once when journaled).
pub fn critical_requests(record: &Record) -> Vec<&NewCallbackRequest> {
    callback_requests(record)
        .into_iter()
        .filter(|r| r.urgency == Urgency::Critical)
        .collect()
}

fn already_there(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

/// Writes `record` to the database unless it is there already.
pub async fn apply(
    store: &dyn Store,
    record: &Record,
    aliases: &mut HashMap<Uuid, Uuid>,
) -> Result<(), StoreError> {
    match record {
        Record::UpsertCall { call } => {
            let row = store.upsert_call(call).await?;
            if row.id != call.id {
                aliases.insert(call.id, row.id);
            }
        }
        Record::AppStarted { call_id, at } => store.mark_app_started(*call_id, *at).await?,
        Record::CallStatus { call_id, update } => {
            match store.record_call_status(*call_id, update).await {
                Err(e) if already_there(&e) => {}
                other => other?,
            }
        }
        Record::UltravoxLink {
            call_id,
            ultravox_call_id,
        } => {
            store
                .set_ultravox_call_id(*call_id, ultravox_call_id)
                .await?
        }
        Record::CallEvent { event } => match store.append_call_event(event).await {
            Err(e) if already_there(&e) => {}
            other => other?,
        },
        Record::BeginInvocation { log, plan } => {
            // Decided when it was journaled (the model was answered accordingly): record that
            // decision, whatever the counts say now.
            let windows = CountWindows {
                call_since: log.created_at,
                tool_since: log.created_at,
                tool: log.canonical_tool.clone(),
                // No limits: one round trip on PostgreSQL.
                thresholds: Some(crate::store::Thresholds {
                    call: None,
                    tool: None,
                }),
            };
            let begun = store
                .begin_invocation(log, plan, &windows, &|_: &WindowCounts| None)
                .await?;
            if let Begun::Duplicate(row) = begun
                && row.id != log.id
            {
                // A repeat of an invocation the database already had: what the journal wrote
                // against this log goes to that one.
                aliases.insert(log.id, row.id);
            }
        }
        Record::FinishInvocation { log_id, outcome } => {
            store.finish_invocation(*log_id, outcome).await?
        }
        Record::StartTransfer { attempt } => {
            if store.transfer_attempt(attempt.id).await?.is_none() {
                match store.start_transfer(attempt).await? {
                    TransferStart::Started => {}
                    TransferStart::AlreadyDialing(other) => tracing::warn!(
                        attempt = %attempt.id,
                        other = %other.id,
                        "a journaled transfer attempt could not be recorded: another attempt \
                         of its call is recorded as ringing; the journaled attempt's outcome \
                         still writes its callback request"
                    ),
                }
            }
        }
        Record::FinishTransfer { finish } => {
            let ended = store.finish_transfer(finish).await?;
            if !ended && store.transfer_attempt(finish.attempt_id).await?.is_none() {
                // The attempt itself could not be recorded: what its end promised the caller
                // (a critical callback, the tool's failure) is written all the same.
                if let Some(cb) = &finish.callback
                    && store.callback_request(cb.id).await?.is_none()
                {
                    let mut cb = cb.clone();
                    cb.transfer_attempt_id = None;
                    store.insert_callback_request(&cb).await?;
                }
                if let Some((log_id, failed)) = &finish.failed_log {
                    store.finish_invocation(*log_id, failed).await?;
                }
            }
        }
        Record::TransferAnswered { attempt_id, at, .. } => {
            store.mark_transfer_answered(*attempt_id, *at).await?;
        }
        Record::CallbackRequest { request } => {
            if store.callback_request(request.id).await?.is_none() {
                store.insert_callback_request(request).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::Platform;

    fn entry(record: Record) -> Entry {
        Entry {
            at: Utc::now(),
            record,
        }
    }

    fn call(id: Uuid) -> Record {
        Record::UpsertCall {
            call: NewCall {
                id,
                tenant_id: "t".into(),
                platform: Platform::Jambonz,
                call_ref: id.to_string(),
                from_number: None,
                to_number: None,
                direction: "inbound".into(),
                status: "trying".into(),
                account_sid: None,
                application_sid: None,
                started_at: Utc::now(),
            },
        }
    }

    fn begin(log_id: Uuid, call_id: Uuid) -> Record {
        Record::BeginInvocation {
            log: NewToolCallLog {
                id: log_id,
                created_at: Utc::now(),
                tenant_id: "t".into(),
                platform: Platform::Jambonz,
                call_ref: call_id.to_string(),
                call_id: Some(call_id),
                invocation_key: log_id.to_string(),
                invocation_id: None,
                tool_name: "hang_up".into(),
                canonical_tool: "hang_up".into(),
                tool_parameters: json!({}),
                callback_number: None,
                caller_name: None,
                urgency_level: None,
                ultravox_call_id: None,
                twilio_call_sid: None,
                tool_data: json!({}),
            },
            plan: Plan::Run,
        }
    }

    fn finish(log_id: Uuid) -> Record {
        Record::FinishInvocation {
            log_id,
            outcome: Recorded::of(
                &Err(crate::domain::ToolError::validation("x")),
                Utc::now(),
                1.0,
            ),
        }
    }

    #[test]
    fn a_calls_records_share_a_lane_in_journal_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let (la, lb) = (Uuid::now_v7(), Uuid::now_v7());
        let entries: Vec<Entry> = [
            call(a),
            call(b),
            begin(la, a),
            begin(lb, b),
            finish(lb),
            finish(la),
        ]
        .into_iter()
        .map(entry)
        .collect();
        assert_eq!(lanes(&entries), vec![vec![0, 2, 5], vec![1, 3, 4]]);
    }

    #[test]
    fn records_survive_the_journal_format() {
        let log = Uuid::now_v7();
        let original = entry(finish(log));
        let json = serde_json::to_string(&original).unwrap();
        let back: Entry = serde_json::from_str(&json).unwrap();
        match back.record {
            Record::FinishInvocation { log_id, outcome } => {
                assert_eq!(log_id, log);
                assert_eq!(outcome.error_kind, Some("validation"));
                assert!(!outcome.success);
            }
            other => panic!("{other:?}"),
        }
    }
}
