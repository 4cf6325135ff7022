//! Replaying a journaled record into the database, so that replaying it twice (after a crash
//! mid-replay, or by two processes sharing a journal by mistake) changes nothing: rows keep
//! their journaled ids, repeats of known rows are recognised, and a call that the database
//! already knew under another id is written under that id (an alias).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use uuid::Uuid;

use crate::store::journal::{Record, segment};
use crate::store::*;
use crate::tools::urgency::Urgency;

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
}

/// Rewrites the call ids of `record` that have an alias.
pub fn remap(record: &mut Record, aliases: &HashMap<Uuid, Uuid>) {
    if aliases.is_empty() {
        return;
    }
    match record {
        Record::UpsertCall { .. } | Record::FinishInvocation { .. } => {}
        Record::TransferAnswered { .. } => {}
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
                alias_request(aliases, cb);
            }
        }
        Record::StartTransfer { attempt } => alias(aliases, &mut attempt.call_id),
        Record::FinishTransfer { finish } => remap_finish(finish, aliases),
        Record::CallbackRequest { request } => alias_request(aliases, request),
    }
}

fn remap_finish(finish: &mut TransferFinish, aliases: &HashMap<Uuid, Uuid>) {
    alias(aliases, &mut finish.call_id);
    if let Some(next) = &mut finish.next {
        alias(aliases, &mut next.call_id);
    }
    if let Some(cb) = &mut finish.callback {
        alias_request(aliases, cb);
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
                alias_request(aliases, cb);
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

/// The critical callback requests a record writes (alerted at once when journaled).
pub fn critical_requests(record: &Record) -> Vec<&NewCallbackRequest> {
    let requests: Vec<&NewCallbackRequest> = match record {
        Record::FinishTransfer { finish } => finish.callback.iter().collect(),
        Record::CallbackRequest { request } => vec![request],
        Record::BeginInvocation {
            plan: Plan::Complete {
                callback: Some(cb), ..
            },
            ..
        } => vec![cb.as_ref()],
        _ => Vec::new(),
    };
    requests
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
            };
            store
                .begin_invocation(log, plan, &windows, &|_: &WindowCounts| None)
                .await?;
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
        Record::TransferAnswered { attempt_id, at } => {
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
