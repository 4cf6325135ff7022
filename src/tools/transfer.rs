//! `transfer`: connect the caller to the tenant's on-call person, and what happens after the dial.
//!
//! The target always comes from the tenant's configuration, never from the arguments. A transfer
//! nobody answers (after the secondary target, if there is one) becomes a `critical` callback
//! request with the caller's number, in the same transaction that marks the transfer failed.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tracing::{error, info, warn};
use uuid::Uuid;

use super::args::{Fields, caller_name};
use super::context::CallContext;
use crate::config::Tenant;
use crate::config::oncall::ChainStep;
use crate::domain::{ErrorKind, Platform, ToolError, ToolOutput, ToolResult, Urgency};
use crate::phone::{E164, mask};
use crate::store::{
    CallRow, NewCallbackRequest, NewTransferAttempt, Recorded, Store, StoreError, ToolCallLogRow,
    TransferAttemptRow, TransferFinish, TransferStart,
};
use crate::telephony::TransferPlan;

/// What the caller hears while the first target rings.
pub const ANNOUNCE_PRIMARY: &str = "Please hold while I connect you to our on-call team.";
/// What the caller hears before the secondary target rings.
pub const ANNOUNCE_SECONDARY: &str =
    "I'm still trying to reach our on-call team. Please stay on the line.";

/// What the caller hears when the AI agent stopped and lifeline rings the team itself.
pub const ANNOUNCE_AGENT_FAILED: &str =
    "I'm sorry, I'm having trouble on my end. Let me connect you to our on-call team.";
/// What the caller hears when the agent stopped after their message was taken.
pub const MESSAGE_ALREADY_TAKEN: &str = "I'm sorry, I have to end this call. Your message has been recorded and a team member will \
     call you back. Goodbye.";

/// Arguments of `transfer`, with the original tool's names accepted.
#[derive(Debug, Clone)]
pub struct TransferArgs {
    pub reason: String,
    pub caller_name: Option<String>,
    /// Where to call back if nobody answers: the number given, else the caller id.
    pub callback_number: String,
    pub pet_name: Option<String>,
    pub species: Option<String>,
    pub breed: Option<String>,
    pub age: Option<String>,
    pub urgency: Urgency,
}

impl TransferArgs {
    /// Validates the arguments. An emergency transfer is not refused for a badly read number:
    /// the caller id stands in.
    pub fn parse(args: &Value, ctx: &CallContext<'_>) -> Result<Self, ToolError> {
        let f = Fields::new(args)?;
        let reason = f
            .first_text(&[
                "urgency_reason",
                "transfer_reason",
                "reason",
                "caller_request",
                "conversation_summary",
            ])?
            .unwrap_or_else(|| "caller asked for the on-call team".to_string());
        let caller_id = ctx.call.and_then(|c| c.from_number.clone());
        let given = f.phone("callback_number").ok().flatten();
        let callback_number = given
            .map(E164::into_string)
            .or_else(|| {
                caller_id
                    .as_deref()
                    .and_then(|n| E164::parse(n).ok())
                    .map(E164::into_string)
            })
            .or(caller_id)
            .unwrap_or_else(|| "unknown".to_string());
        let first = f.text("first_name")?;
        let last = f.text("last_name")?;
        Ok(Self {
            urgency: Urgency::derive(None, &[&reason], Urgency::Urgent),
            reason,
            caller_name: caller_name(f.text("caller_name")?, first.as_deref(), last.as_deref()),
            callback_number,
            pet_name: f.text("pet_name")?,
            species: f.text("species")?,
            breed: f.text("breed")?,
            age: f.text("age")?,
        })
    }
}

/// Starts the transfer: records the attempt (refused if one is ringing already), then asks the
/// platform to dial. A platform that fails at once leaves a critical callback request.
pub async fn run(
    args: &TransferArgs,
    ctx: &CallContext<'_>,
    store: &dyn Store,
    log_id: Uuid,
) -> ToolResult {
    let call = ctx.call.ok_or_else(|| {
        ToolError::new(
            ErrorKind::NotFound,
            "this call is not known to lifeline, so it cannot be transferred; take a message \
             with collect_info",
        )
    })?;
    let tenant = ctx.tenant;
    let now = Utc::now();
    let first = first_step(tenant, now);
    let attempt = NewTransferAttempt {
        id: Uuid::now_v7(),
        call_id: call.id,
        tenant_id: tenant.id.clone(),
        tool_call_log_id: Some(log_id),
        target_role: role_of(1, first.is_final),
        target_number: first.number.to_string(),
        callback_number: args.callback_number.clone(),
        caller_name: args.caller_name.clone(),
        reason: args.reason.clone(),
        pet_name: args.pet_name.clone(),
        started_at: now,
        chain_step: Some(1),
    };
    match store.start_transfer(&attempt).await.map_err(db_error)? {
        TransferStart::Started => {}
        TransferStart::AlreadyDialing(row) => {
            info!(attempt = %row.id, "transfer already ringing; not dialing again");
            return Ok(ToolOutput {
                message: "The caller is already being transferred. Do not transfer again.".into(),
                data: json!({ "transfer_attempt_id": row.id, "already_in_progress": true }),
                ends_call: false,
            });
        }
    }
    let plan = plan_for(
        tenant,
        attempt.id,
        &attempt.target_number,
        first.ring_timeout_secs,
        ANNOUNCE_PRIMARY,
    );
    info!(
        attempt = %attempt.id,
        target = %mask(&plan.target),
        "transferring to the on-call number"
    );
    if let Err(e) = ctx.control.transfer(&plan).await {
        warn!(attempt = %attempt.id, error = %e, "transfer could not start");
        let failure = format!("transfer could not start: {e}");
        let callback = failed_transfer_callback(
            &tenant.id,
            call,
            &TransferAttemptRow::dialing(&attempt),
            Utc::now(),
            tenant.caller_sms.is_some(),
        );
        let callback_id = callback.id;
        store
            .finish_transfer(&TransferFinish {
                attempt_id: attempt.id,
                call_id: call.id,
                at: Utc::now(),
                succeeded: false,
                dial_call_status: None,
                dial_sip_status: None,
                failure_reason: Some(failure.clone()),
                next: None,
                callback: Some(callback),
                failed_log: None,
                outcome: Some(Outcome::Failed.as_str().to_string()),
                ring_ms: Some(0),
            })
            .await
            .map_err(db_error)?;
        return Err(ToolError::new(
            ErrorKind::External,
            format!(
                "the transfer could not be started; an urgent callback request ({callback_id}) \
                 was recorded. Tell the caller a team member will call back at the number \
                 ending in {} as soon as possible.",
                last4(&args.callback_number)
            ),
        ));
    }
    Ok(ToolOutput {
        message: "Transferring the caller to the on-call team now. Tell them to stay on the line."
            .into(),
        data: json!({ "transfer_attempt_id": attempt.id, "target_role": "primary" }),
        ends_call: false,
    })
}

/// What to do when the AI agent stopped before the call was done.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentFailure {
    /// Ring the on-call team (a transfer attempt is recorded).
    Ring(TransferPlan),
    /// The caller's message was already taken: say so and end the call.
    MessageTaken,
    /// A transfer is already ringing: nothing to add.
    AlreadyTransferring,
}

/// The agent died mid-call (Ultravox error, lost connection). Rather than let the call end on
/// the caller, ring the on-call team; if nobody answers, the dial's outcome leaves a critical
/// callback request for the caller's own number like any failed transfer.
pub async fn on_agent_failure(
    store: &dyn Store,
    tenant: &Tenant,
    call: &CallRow,
    why: &str,
) -> Result<AgentFailure, StoreError> {
    let taken = store
        .callback_requests(&crate::store::CallbackFilter {
            call_id: Some(call.id),
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    if !taken.is_empty() {
        return Ok(AgentFailure::MessageTaken);
    }
    let caller = call.from_number.clone();
    let now = Utc::now();
    let first = first_step(tenant, now);
    let attempt = NewTransferAttempt {
        id: Uuid::now_v7(),
        call_id: call.id,
        tenant_id: tenant.id.clone(),
        tool_call_log_id: None,
        target_role: role_of(1, first.is_final),
        target_number: first.number.to_string(),
        callback_number: caller
            .as_deref()
            .and_then(|n| E164::parse(n).ok())
            .map(E164::into_string)
            .or(caller)
            .unwrap_or_else(|| "unknown".to_string()),
        caller_name: None,
        reason: format!("the AI assistant stopped ({why})"),
        pet_name: None,
        started_at: now,
        chain_step: Some(1),
    };
    Ok(match store.start_transfer(&attempt).await? {
        TransferStart::Started => {
            warn!(attempt = %attempt.id, why, "agent stopped mid-call; ringing the on-call team");
            AgentFailure::Ring(plan_for(
                tenant,
                attempt.id,
                &attempt.target_number,
                first.ring_timeout_secs,
                ANNOUNCE_AGENT_FAILED,
            ))
        }
        TransferStart::AlreadyDialing(_) => AgentFailure::AlreadyTransferring,
    })
}

/// What follows a dial's result.
#[derive(Debug, Clone, PartialEq)]
pub enum DialNext {
    /// The on-call person answered and the bridged call is over: end the call.
    Connected,
    /// Ring the next target.
    Ring(TransferPlan),
    /// Nobody answered: a critical callback request was recorded; tell the caller.
    CallbackPromised { last4: String },
    /// No transfer was ringing for this call (a repeated hook): nothing changes.
    NoTransfer,
}

/// How a dial ended, as the platform reported it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DialOutcome<'a> {
    /// The platform's own verdict (Jambonz `dial_call_status == completed`, Twilio
    /// `DialCallStatus == completed` and bridged); anything else, including a status that is
    /// not final, is a failure.
    pub answered: bool,
    pub dial_status: Option<&'a str>,
    pub sip_status: Option<i32>,
    /// The platform says the caller's own leg is over (Jambonz sends the dial's actionHook
    /// with `call_status: completed` when the caller hung up while it rang).
    pub caller_gone: bool,
}

/// Applies the platform's report of how a dial ended (see [`DialOutcome::answered`]).
pub async fn on_dial_result(
    store: &dyn Store,
    tenant: &Tenant,
    call: &CallRow,
    answered: bool,
    dial_status: Option<&str>,
    sip_status: Option<i32>,
) -> Result<DialNext, StoreError> {
    let outcome = DialOutcome {
        answered,
        dial_status,
        sip_status,
        caller_gone: false,
    };
    on_dial_outcome(store, tenant, call, &outcome).await
}

/// Applies a dial's outcome. A caller who hung up while the on-call phone rang gets no further
/// target (nobody is left to connect): the attempt fails and the critical callback request for
/// the caller's number is written at once, because that caller is exactly the one who must be
/// called back.
pub async fn on_dial_outcome(
    store: &dyn Store,
    tenant: &Tenant,
    call: &CallRow,
    outcome: &DialOutcome<'_>,
) -> Result<DialNext, StoreError> {
    let DialOutcome {
        answered,
        dial_status,
        sip_status,
        caller_gone,
    } = *outcome;
    let Some(attempt) = store.dialing_transfer(call.id).await? else {
        return Ok(DialNext::NoTransfer);
    };
    let now = Utc::now();
    // The platform may report the caller's end before the dial's (Jambonz: `call:status`
    // completed, then the dial's actionHook), so our own record counts as well.
    let caller_gone = caller_gone
        || match Platform::from_name(&call.platform) {
            Some(platform) => store
                .find_call(platform, &call.call_ref)
                .await?
                .is_some_and(|c| c.ended_at.is_some()),
            None => false,
        };
    let ring_ms = ring_ms_of(&attempt, now);
    if answered {
        store
            .finish_transfer(&TransferFinish {
                attempt_id: attempt.id,
                call_id: call.id,
                at: now,
                succeeded: true,
                dial_call_status: dial_status.map(str::to_string),
                dial_sip_status: sip_status,
                failure_reason: None,
                next: None,
                callback: None,
                failed_log: None,
                outcome: Some(Outcome::Accepted.as_str().to_string()),
                ring_ms: Some(ring_ms),
            })
            .await?;
        info!(attempt = %attempt.id, "transfer answered");
        return Ok(DialNext::Connected);
    }
    let outcome = if caller_gone {
        Outcome::CallerHungUp
    } else if attempt.answered_at.is_some() || dial_status == Some("in-progress") {
        // Picked up but not bridged: the gate said no (or a machine answered).
        match gate_verdict(store, call.id, attempt.id).await? {
            Some(GateVerdict::Machine) => Outcome::Machine,
            _ => Outcome::Declined,
        }
    } else {
        Outcome::from_dial_status(dial_status)
    };
    let failure = format!(
        "{} did not take the call ({}: {}{}){}",
        attempt.target_role,
        outcome.as_str(),
        dial_status.unwrap_or("no status"),
        sip_status.map(|s| format!(", SIP {s}")).unwrap_or_default(),
        if caller_gone {
            "; the caller hung up while it rang"
        } else {
            ""
        }
    );
    let next = if caller_gone {
        None
    } else {
        next_step(store, tenant, call, &attempt, now).await?
    };
    let next = next.map(|(step_no, step, ring)| {
        (
            NewTransferAttempt {
                id: Uuid::now_v7(),
                call_id: call.id,
                tenant_id: tenant.id.clone(),
                tool_call_log_id: attempt.tool_call_log_id,
                target_role: role_of(step_no, step.is_final),
                target_number: step.number.to_string(),
                callback_number: attempt.callback_number.clone(),
                caller_name: attempt.caller_name.clone(),
                reason: attempt.reason.clone(),
                pet_name: attempt.pet_name.clone(),
                started_at: now,
                chain_step: Some(step_no),
            },
            ring,
        )
    });
    let callback = next.is_none().then(|| {
        failed_transfer_callback(&tenant.id, call, &attempt, now, tenant.caller_sms.is_some())
    });
    let failed_log = match (&callback, attempt.tool_call_log_id) {
        (Some(cb), Some(log_id)) => {
            let error = ToolError::new(
                ErrorKind::External,
                format!("{failure}; critical callback request {} created", cb.id),
            );
            Some((log_id, Recorded::of(&Err(error), now, 0.0)))
        }
        _ => None,
    };
    let applied = store
        .finish_transfer(&TransferFinish {
            attempt_id: attempt.id,
            call_id: call.id,
            at: now,
            succeeded: false,
            dial_call_status: dial_status.map(str::to_string),
            dial_sip_status: sip_status,
            failure_reason: Some(failure.clone()),
            next: next.as_ref().map(|(n, _)| n.clone()),
            callback,
            failed_log,
            outcome: Some(outcome.as_str().to_string()),
            ring_ms: Some(ring_ms),
        })
        .await?;
    if !applied {
        return Ok(DialNext::NoTransfer);
    }
    Ok(match next {
        Some((next, ring)) => {
            warn!(attempt = %attempt.id, %failure, step = ?next.chain_step, "trying the next on-call step");
            DialNext::Ring(plan_for(
                tenant,
                next.id,
                &next.target_number,
                ring,
                ANNOUNCE_SECONDARY,
            ))
        }
        None => {
            error!(attempt = %attempt.id, %failure, "transfer failed; critical callback request recorded");
            DialNext::CallbackPromised {
                last4: last4(&attempt.callback_number),
            }
        }
    })
}

/// How one transfer attempt ended (`transfer_attempts.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A human pressed 1 (or, without the gate, the call was bridged).
    Accepted,
    /// Picked up, but no key in time or another key (voicemail, IVR, a pocket).
    Declined,
    /// Answering-machine detection said machine before the gate.
    Machine,
    NoAnswer,
    Busy,
    Failed,
    /// The caller left while it rang.
    CallerHungUp,
    /// Lifeline stopped the dial.
    Cancelled,
}

impl Outcome {
    /// The word stored in `transfer_attempts.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::Machine => "machine",
            Self::NoAnswer => "no_answer",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::CallerHungUp => "caller_hung_up",
            Self::Cancelled => "cancelled",
        }
    }

    /// An unanswered dial's status: Jambonz's ring-timeout bug reports the last progress
    /// status (`ringing`, `early-media`) for a ring-out, so anything unknown is `no_answer`.
    pub fn from_dial_status(status: Option<&str>) -> Self {
        match status {
            Some("busy") => Self::Busy,
            Some("failed") => Self::Failed,
            Some("canceled" | "cancelled") => Self::Cancelled,
            // Answered but never bridged (Twilio `completed` with `DialBridged=false`, Jambonz
            // `in-progress` after the confirm application hung up): the gate said no.
            Some("completed" | "answered" | "in-progress") => Self::Declined,
            _ => Self::NoAnswer,
        }
    }
}

/// What the acceptance gate decided on the on-call person's leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateVerdict {
    Accepted,
    Declined,
    Machine,
}

impl GateVerdict {
    fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Declined => "declined",
            Self::Machine => "machine",
        }
    }
}

/// The call event that records a gate's verdict (read back when the dial's outcome arrives,
/// possibly on another instance; shown in the call's timeline).
pub const GATE_EVENT: &str = "transfer_gate";

/// What the on-call person hears at the gate.
pub const GATE_PROMPT: &str =
    "Press 1 to take this call. Press any other key or hang up to decline.";
/// Said once the on-call person pressed 1.
pub const GATE_CONNECTING: &str = "Connecting you now.";

/// Records the gate's verdict for the attempt ringing `call_id` (`attempt`: the one the
/// webhook named, else the one dialing). An acceptance also writes `accepted_at`.
pub async fn on_gate(
    store: &dyn Store,
    call_id: Uuid,
    attempt: Option<Uuid>,
    verdict: GateVerdict,
    detail: Value,
) -> Result<Option<Uuid>, StoreError> {
    let attempt_id = match attempt {
        Some(id) => Some(id),
        None => store.dialing_transfer(call_id).await?.map(|a| a.id),
    };
    let Some(attempt_id) = attempt_id else {
        return Ok(None);
    };
    let now = Utc::now();
    // The marks are best effort: the event below (journaled when the database is slow) is
    // what the dial's outcome reads, and an accepted finish fills `accepted_at` itself.
    let marked = if verdict == GateVerdict::Accepted {
        store.mark_transfer_accepted(attempt_id, now).await
    } else {
        // Picked up, even if only by a machine: the ring time ends here.
        store.mark_transfer_answered(attempt_id, now).await
    };
    if let Err(e) = marked {
        warn!(attempt = %attempt_id, error = %e, "could not mark the gate's verdict on the attempt");
    }
    store
        .append_call_event(&crate::store::NewCallEvent {
            id: Uuid::now_v7(),
            call_id,
            at: now,
            kind: GATE_EVENT.to_string(),
            detail: json!({
                "attempt_id": attempt_id,
                "verdict": verdict.as_str(),
                "detail": detail,
            }),
        })
        .await?;
    info!(attempt = %attempt_id, verdict = verdict.as_str(), "transfer gate");
    Ok(Some(attempt_id))
}

/// The last gate verdict recorded for an attempt.
async fn gate_verdict(
    store: &dyn Store,
    call_id: Uuid,
    attempt_id: Uuid,
) -> Result<Option<GateVerdict>, StoreError> {
    let events = store.call_events(call_id).await?;
    let id = attempt_id.to_string();
    Ok(events
        .iter()
        .rev()
        .filter(|e| e.kind == GATE_EVENT)
        .find(|e| e.detail.0.get("attempt_id").and_then(Value::as_str) == Some(id.as_str()))
        .and_then(
            |e| match e.detail.0.get("verdict").and_then(Value::as_str) {
                Some("accepted") => Some(GateVerdict::Accepted),
                Some("machine") => Some(GateVerdict::Machine),
                Some("declined") => Some(GateVerdict::Declined),
                _ => None,
            },
        ))
}

/// The attempt's ring time: until pick-up, else until now.
fn ring_ms_of(attempt: &TransferAttemptRow, now: DateTime<Utc>) -> i64 {
    let until = attempt.answered_at.unwrap_or(now).min(now);
    (until - attempt.started_at).num_milliseconds().max(0)
}

/// The on-call chain at `at`: the schedule's steps, or `primary` then `secondary`.
pub fn chain(tenant: &Tenant, at: DateTime<Utc>) -> Vec<ChainStep> {
    if let Some(oncall) = &tenant.oncall {
        let steps = oncall.chain_at(at);
        if !steps.is_empty() {
            return steps;
        }
    }
    let t = &tenant.transfer;
    std::iter::once(&t.primary)
        .chain(t.secondary.iter())
        .map(|n| ChainStep {
            number: n.clone(),
            ring_timeout_secs: t.ring_timeout_secs,
            is_final: false,
        })
        .collect()
}

/// The chain's whole ring budget in seconds (`None`: no limit but the steps' own timeouts).
fn ring_budget(tenant: &Tenant) -> Option<u32> {
    tenant.oncall.as_ref().map(|o| o.total_ring_budget_secs)
}

/// A dial shorter than this is not worth starting.
const MIN_RING_SECS: u32 = 5;

fn first_step(tenant: &Tenant, now: DateTime<Utc>) -> ChainStep {
    let mut first = chain(tenant, now).into_iter().next().unwrap_or(ChainStep {
        number: tenant.transfer.primary.clone(),
        ring_timeout_secs: tenant.transfer.ring_timeout_secs,
        is_final: false,
    });
    if let Some(budget) = ring_budget(tenant) {
        first.ring_timeout_secs = first.ring_timeout_secs.min(budget);
    }
    first
}

/// The role word of a chain step (`target_role`).
pub fn role_of(step: i32, is_final: bool) -> &'static str {
    match (step, is_final) {
        (_, true) => "final",
        (1, _) => "primary",
        (2, _) => "secondary",
        _ => "escalation",
    }
}

/// The step after `attempt`, with its ring timeout cut to what is left of the budget; `None`
/// when the chain is exhausted.
async fn next_step(
    store: &dyn Store,
    tenant: &Tenant,
    call: &CallRow,
    attempt: &TransferAttemptRow,
    now: DateTime<Utc>,
) -> Result<Option<(i32, ChainStep, u32)>, StoreError> {
    let current = attempt
        .chain_step
        .unwrap_or(if attempt.target_role == "primary" {
            1
        } else {
            2
        });
    // The chain as it was when this transfer began (a handoff mid-call does not reshuffle it).
    let attempts = store.transfer_attempts(call.id).await?;
    let chain_start = attempts
        .iter()
        .filter(|a| a.chain_step == Some(1) && a.started_at <= attempt.started_at)
        .map(|a| a.started_at)
        .max()
        .unwrap_or(attempt.started_at);
    let steps = chain(tenant, chain_start);
    let Some(step) = usize::try_from(current)
        .ok()
        .and_then(|i| steps.get(i))
        .cloned()
    else {
        return Ok(None);
    };
    let mut ring = step.ring_timeout_secs;
    if let Some(budget) = ring_budget(tenant) {
        let spent = u32::try_from((now - chain_start).num_seconds().max(0)).unwrap_or(u32::MAX);
        let left = budget.saturating_sub(spent);
        if left < MIN_RING_SECS {
            warn!(budget, spent, "the chain's ring budget is spent");
            return Ok(None);
        }
        ring = ring.min(left);
    }
    Ok(Some((current + 1, step, ring)))
}

/// Ends an attempt whose dial will never report (the call ended without its outcome, the
/// command that would have dialled was lost, the process that owned it died). Picked up: it
/// succeeded. Otherwise it failed, through the same path as a dial nobody answered: the
/// critical callback request for the caller's number is written with it. False when the
/// attempt had already ended.
pub async fn abandon_attempt(
    store: &dyn Store,
    call: &CallRow,
    attempt: &TransferAttemptRow,
    why: &str,
) -> Result<bool, StoreError> {
    let now = Utc::now();
    if attempt.answered_at.is_some() {
        let ended = store
            .finish_transfer(&TransferFinish {
                attempt_id: attempt.id,
                call_id: call.id,
                at: now,
                succeeded: true,
                dial_call_status: None,
                dial_sip_status: None,
                failure_reason: None,
                next: None,
                callback: None,
                failed_log: None,
                outcome: Some(Outcome::Accepted.as_str().to_string()),
                ring_ms: Some(ring_ms_of(attempt, now)),
            })
            .await?;
        if ended {
            info!(attempt = %attempt.id, why, "picked-up transfer closed without its dial's outcome");
        }
        return Ok(ended);
    }
    let failure = format!("{} never reported an outcome: {why}", attempt.target_role);
    // The attempt's own tenant: a tenant removed from the configuration since still gets its
    // caller called back.
    // Without the clinic's configuration at hand, a text is queued as ever (the worker sends it
    // only where the clinic texts callers).
    let callback = failed_transfer_callback(&attempt.tenant_id, call, attempt, now, true);
    let failed_log = attempt.tool_call_log_id.map(|log_id| {
        let error = ToolError::new(
            ErrorKind::External,
            format!(
                "{failure}; critical callback request {} created",
                callback.id
            ),
        );
        (log_id, Recorded::of(&Err(error), now, 0.0))
    });
    let ended = store
        .finish_transfer(&TransferFinish {
            attempt_id: attempt.id,
            call_id: call.id,
            at: now,
            succeeded: false,
            dial_call_status: attempt.dial_call_status.clone(),
            dial_sip_status: attempt.dial_sip_status,
            failure_reason: Some(failure.clone()),
            next: None,
            callback: Some(callback),
            failed_log,
            outcome: Some(Outcome::Failed.as_str().to_string()),
            ring_ms: Some(ring_ms_of(attempt, now)),
        })
        .await?;
    if ended {
        error!(attempt = %attempt.id, %failure, "transfer abandoned; critical callback request recorded");
    }
    Ok(ended)
}

/// The dial a recorded attempt stands for, to send again when the command that started it may
/// have been lost.
pub fn plan_of(tenant: &Tenant, attempt: &TransferAttemptRow) -> TransferPlan {
    let announcement = match attempt.target_role.as_str() {
        "primary" if attempt.tool_call_log_id.is_none() => ANNOUNCE_AGENT_FAILED,
        "primary" => ANNOUNCE_PRIMARY,
        _ => ANNOUNCE_SECONDARY,
    };
    // The step's own timeout when the chain still names this number at that step.
    let step = attempt.chain_step.unwrap_or(1);
    let ring = usize::try_from(step - 1)
        .ok()
        .and_then(|i| chain(tenant, attempt.started_at).get(i).cloned())
        .filter(|s| s.number.as_str() == attempt.target_number)
        .map_or(tenant.transfer.ring_timeout_secs, |s| s.ring_timeout_secs);
    plan_for(
        tenant,
        attempt.id,
        &attempt.target_number,
        ring,
        announcement,
    )
}

/// The dial of one attempt, with the tenant's trunk, caller id and ring timeout.
pub fn plan_for(
    tenant: &Tenant,
    attempt_id: Uuid,
    target: &str,
    ring_timeout_secs: u32,
    announcement: &str,
) -> TransferPlan {
    TransferPlan {
        attempt_id,
        target: target.to_string(),
        trunk: tenant.transfer.trunk.clone(),
        caller_id: tenant.transfer.caller_id.as_ref().map(ToString::to_string),
        ring_timeout_secs,
        announcement: announcement.to_string(),
        gate: tenant.transfer.accept_gate,
    }
}

/// A dial of the primary target when nothing could be recorded (the database is down): the
/// caller still reaches a human.
pub fn plan_without_record(tenant: &Tenant) -> TransferPlan {
    TransferPlan {
        attempt_id: Uuid::nil(),
        target: tenant.transfer.primary.to_string(),
        trunk: tenant.transfer.trunk.clone(),
        caller_id: tenant.transfer.caller_id.as_ref().map(ToString::to_string),
        ring_timeout_secs: tenant.transfer.ring_timeout_secs,
        announcement: ANNOUNCE_AGENT_FAILED.to_string(),
        // Nothing recorded to gate against: whoever answers gets the caller.
        gate: false,
    }
}

/// What the on-call person hears before being connected: who calls, about which pet, how
/// urgent, and why (numbers in the reason masked: the whisper may play on a speaker). With the
/// gate, the prompt to press 1 follows ([`GATE_PROMPT`]).
pub fn whisper(tenant: &Tenant, attempt: &TransferAttemptRow) -> String {
    let who = attempt.caller_name.as_deref().unwrap_or("a caller");
    let pet = attempt
        .pet_name
        .as_deref()
        .map(|p| format!(" about {p}"))
        .unwrap_or_default();
    let urgency = Urgency::derive(None, &[&attempt.reason], Urgency::Urgent);
    let ending = if tenant.transfer.accept_gate {
        ""
    } else {
        " Connecting you now."
    };
    format!(
        "Transferred call for {}, from {who}{pet}. Urgency: {}. Reason: {}.{ending}",
        tenant.name,
        urgency.as_str(),
        mask_numbers(&attempt.reason)
    )
}

/// `text` with every run of five or more digits (a phone number, an account) replaced.
fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    let flush = |digits: &mut String, out: &mut String| {
        if digits.len() >= 5 {
            out.push_str("a number");
        } else {
            out.push_str(digits);
        }
        digits.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out
}

/// What the caller hears when nobody could take the call.
pub fn callback_promise(last4: &str) -> String {
    let spoken: Vec<String> = last4.chars().map(|c| c.to_string()).collect();
    if spoken.len() == 4 {
        format!(
            "I'm sorry, no one from our team could take your call right now. A team member \
             will call you back as soon as possible at the number ending in {}. Goodbye.",
            spoken.join(" ")
        )
    } else {
        "I'm sorry, no one from our team could take your call right now. A team member will \
         call you back as soon as possible. Goodbye."
            .to_string()
    }
}

fn failed_transfer_callback(
    tenant_id: &str,
    call: &CallRow,
    attempt: &TransferAttemptRow,
    now: DateTime<Utc>,
    text_caller: bool,
) -> NewCallbackRequest {
    NewCallbackRequest {
        id: Uuid::now_v7(),
        created_at: now,
        tenant_id: tenant_id.to_string(),
        call_id: Some(call.id),
        call_sid: Some(call.call_ref.clone()),
        tool_call_log_id: attempt.tool_call_log_id,
        transfer_attempt_id: Some(attempt.id),
        reason: "failed_transfer",
        callback_number: attempt.callback_number.clone(),
        caller_name: attempt.caller_name.clone(),
        first_name: None,
        last_name: None,
        pet_name: attempt.pet_name.clone(),
        species: None,
        breed: None,
        age: None,
        concern_description: Some(format!("Transfer to on-call failed. {}", attempt.reason)),
        urgency_reason: Some(attempt.reason.clone()),
        urgency: Urgency::Critical,
        metadata: json!({ "caller_id": call.from_number }),
        text_caller,
    }
}

/// The critical callback request for a transfer invocation that was logged but never reached
/// an attempt (its process died between the two): the caller asked for a human and got none.
pub fn interrupted_transfer_callback(
    log: &ToolCallLogRow,
    call: Option<&CallRow>,
    now: DateTime<Utc>,
) -> NewCallbackRequest {
    let args = &log.tool_parameters.0;
    let text = |key: &str| {
        args.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let reason = text("urgency_reason")
        .or_else(|| text("transfer_reason"))
        .or_else(|| text("reason"))
        .unwrap_or_else(|| "the caller asked for the on-call team".to_string());
    let caller_id = call.and_then(|c| c.from_number.clone());
    NewCallbackRequest {
        id: Uuid::now_v7(),
        created_at: now,
        tenant_id: log.tenant_id.clone(),
        call_id: log.call_id,
        call_sid: Some(log.call_ref.clone()),
        tool_call_log_id: Some(log.id),
        transfer_attempt_id: None,
        reason: "failed_transfer",
        callback_number: log
            .callback_number
            .clone()
            .or_else(|| caller_id.clone())
            .unwrap_or_else(|| "unknown".to_string()),
        caller_name: log.caller_name.clone(),
        first_name: None,
        last_name: None,
        pet_name: text("pet_name"),
        species: text("species"),
        breed: text("breed"),
        age: text("age"),
        concern_description: Some(format!(
            "Transfer to on-call failed: it was interrupted before the on-call number was dialled. {reason}"
        )),
        urgency_reason: Some(reason),
        urgency: Urgency::Critical,
        metadata: json!({ "caller_id": caller_id }),
        // The reconciler has no clinic at hand: a text is queued as ever.
        text_caller: true,
    }
}

fn last4(number: &str) -> String {
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.len() >= 4 {
        digits[digits.len() - 4..].to_string()
    } else {
        String::new()
    }
}

fn db_error(e: StoreError) -> ToolError {
    error!(error = %e, "database error during transfer");
    ToolError::new(
        ErrorKind::Database,
        "the transfer could not be recorded; try the transfer again",
    )
}
