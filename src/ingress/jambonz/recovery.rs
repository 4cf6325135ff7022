//! What a call's previous socket may have lost, to send again on `session:reconnect`.
//!
//! The feature-server never acks `llm:tool-output` or commands and never re-sends an
//! `llm:tool-call` (`lib/utils/ws-requestor.js`: `llm:tool-call` is in the list of types that get
//! no ack). A tool's answer or a transfer's `redirect` written to a socket that died before the
//! feature-server read it is gone, the model waits and nobody is dialled. The feature-server
//! accepts both on the new socket, so after acking the reconnect we send again, from what the
//! effects recorded (so this works on whichever instance Jambonz reconnects to):
//!
//! - the answer of every invocation recorded since the llm verb last ended (answers to an llm
//!   that is over are moot). Keyed by `tool_call_id`, a repeat of an answer that did arrive is
//!   harmless;
//! - the `redirect` of a transfer still `dialing` that the feature-server shows no sign of having
//!   run. Reading a `redirect` kills the llm verb, whose actionHook we record as `llm_complete`;
//!   an attempt started after the last `llm_complete` may never have been dialled. (Had the
//!   feature-server read it but lost that actionHook with the socket, the hook is queued and
//!   arrives right after our ack: the repeated `redirect` then replaces the same verbs with the
//!   same verbs before they run.)
//! - the `redirect` to `hangup` of a `hang_up` recorded since the llm verb last ended.
//!
//! Invocations still running are left out: their own task sends the answer and commands to the
//! call's current socket when they finish; one running on another instance (which has no socket
//! for the call any more) or orphaned by an instance that died is watched until its outcome is
//! recorded (by its owner, or by the reconciler), and its answer sent then.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::Tenant;
use crate::protocol::jambonz as wire;
use crate::store::{CallRow, Store, StoreError, ToolCallLogRow};
use crate::telephony::jambonz::transfer_dial;
use crate::tools::{Platform, ToolName, transfer};

/// The call event recorded when the llm verb's actionHook arrives.
pub const LLM_COMPLETE_EVENT: &str = "llm_complete";

/// What the previous socket may have lost.
pub struct Lost {
    /// The frames to send again after the reconnect's ack, in order: answers, then commands.
    pub frames: Vec<String>,
    /// Invocations of the call still `pending`: running on another instance (or orphaned by
    /// one that died, until a reconciler ends them). Their answers are recorded later, and must
    /// then be sent on this socket, since their own task has no socket for the call.
    pub pending: Vec<ToolCallLogRow>,
}

/// What the previous socket may have lost; with `only`, what concerns that invocation.
pub async fn lost(
    store: &dyn Store,
    tenant: &Tenant,
    call: &CallRow,
    only: Option<Uuid>,
) -> Result<Lost, StoreError> {
    let llm_ended: Option<DateTime<Utc>> = store
        .call_events(call.id)
        .await?
        .iter()
        .filter(|e| e.kind == LLM_COMPLETE_EVENT)
        .map(|e| e.at)
        .max();
    let since_llm_ended = |at: DateTime<Utc>| llm_ended.is_none_or(|ended| at > ended);
    let logs = store
        .tool_call_logs_for_call(Platform::Jambonz, &call.call_ref)
        .await?;

    let mut frames = Vec::new();
    let mut pending = Vec::new();
    let mut hang_up = false;
    for log in logs
        .iter()
        .filter(|l| since_llm_ended(l.created_at) && only.is_none_or(|id| l.id == id))
    {
        let Some(tool_call_id) = &log.invocation_id else {
            continue;
        };
        let Some(result) = log.recorded_result() else {
            pending.push(log.clone());
            continue;
        };
        let text = match &result {
            Ok(output) => output.message.clone(),
            Err(e) => e.model_text(),
        };
        frames.push(wire::tool_output(tool_call_id, &text));
        hang_up |= result.is_ok() && log.canonical_tool == ToolName::HangUp.as_str();
    }

    if let Some(attempt) = store.dialing_transfer(call.id).await?
        && attempt.answered_at.is_none()
        && since_llm_ended(attempt.started_at)
    {
        // Only an attempt a tool call started was dialled by a command; one started by the
        // agent-failure path or a dial's outcome was an ack's verbs, which Jambonz never lost
        // unread (an unacked hook ends the verb that sent it).
        let by_command = match attempt.tool_call_log_id {
            Some(log_id) => {
                only.is_none_or(|id| id == log_id)
                    && logs.iter().any(|l| l.id == log_id && l.status != "pending")
            }
            None => false,
        };
        if by_command {
            let plan = transfer::plan_of(tenant, &attempt);
            frames.push(wire::redirect(vec![
                wire::say(&plan.announcement),
                transfer_dial(&plan),
            ]));
        }
    } else if hang_up {
        frames.push(wire::redirect(vec![wire::hangup()]));
    }
    Ok(Lost { frames, pending })
}
