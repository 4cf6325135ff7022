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
use super::pipeline::CallContext;
use super::urgency::Urgency;
use super::{ErrorKind, Platform, ToolError, ToolOutput, ToolResult};
use crate::config::Tenant;
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
    let attempt = NewTransferAttempt {
        id: Uuid::now_v7(),
        call_id: call.id,
        tenant_id: tenant.id.clone(),
        tool_call_log_id: Some(log_id),
        target_role: "primary",
        target_number: tenant.transfer.primary.to_string(),
        callback_number: args.callback_number.clone(),
        caller_name: args.caller_name.clone(),
        reason: args.reason.clone(),
        pet_name: args.pet_name.clone(),
        started_at: Utc::now(),
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
    let plan = plan_for(tenant, attempt.id, &attempt.target_number, ANNOUNCE_PRIMARY);
    info!(
        attempt = %attempt.id,
        target = %mask(&plan.target),
        "transferring to the on-call number"
    );
    if let Err(e) = ctx.control.transfer(&plan).await {
        warn!(attempt = %attempt.id, error = %e, "transfer could not start");
        let failure = format!("transfer could not start: {e}");
        let callback =
            failed_transfer_callback(&tenant.id, call, &attempt_row(&attempt), Utc::now());
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
    let attempt = NewTransferAttempt {
        id: Uuid::now_v7(),
        call_id: call.id,
        tenant_id: tenant.id.clone(),
        tool_call_log_id: None,
        target_role: "primary",
        target_number: tenant.transfer.primary.to_string(),
        callback_number: caller
            .as_deref()
            .and_then(|n| E164::parse(n).ok())
            .map(E164::into_string)
            .or(caller)
            .unwrap_or_else(|| "unknown".to_string()),
        caller_name: None,
        reason: format!("the AI assistant stopped ({why})"),
        pet_name: None,
        started_at: Utc::now(),
    };
    Ok(match store.start_transfer(&attempt).await? {
        TransferStart::Started => {
            warn!(attempt = %attempt.id, why, "agent stopped mid-call; ringing the on-call team");
            AgentFailure::Ring(plan_for(
                tenant,
                attempt.id,
                &attempt.target_number,
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
            })
            .await?;
        info!(attempt = %attempt.id, "transfer answered");
        return Ok(DialNext::Connected);
    }
    let failure = format!(
        "{} did not answer ({}{}){}",
        attempt.target_role,
        dial_status.unwrap_or("no status"),
        sip_status.map(|s| format!(", SIP {s}")).unwrap_or_default(),
        if caller_gone {
            "; the caller hung up while it rang"
        } else {
            ""
        }
    );
    let next = match (&tenant.transfer.secondary, attempt.target_role.as_str()) {
        _ if caller_gone => None,
        (Some(secondary), "primary") => Some(NewTransferAttempt {
            id: Uuid::now_v7(),
            call_id: call.id,
            tenant_id: tenant.id.clone(),
            tool_call_log_id: attempt.tool_call_log_id,
            target_role: "secondary",
            target_number: secondary.to_string(),
            callback_number: attempt.callback_number.clone(),
            caller_name: attempt.caller_name.clone(),
            reason: attempt.reason.clone(),
            pet_name: attempt.pet_name.clone(),
            started_at: now,
        }),
        _ => None,
    };
    let callback = next
        .is_none()
        .then(|| failed_transfer_callback(&tenant.id, call, &attempt, now));
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
            next: next.clone(),
            callback,
            failed_log,
        })
        .await?;
    if !applied {
        return Ok(DialNext::NoTransfer);
    }
    Ok(match next {
        Some(next) => {
            warn!(attempt = %attempt.id, %failure, "trying the secondary on-call number");
            DialNext::Ring(plan_for(
                tenant,
                next.id,
                &next.target_number,
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
    let callback = failed_transfer_callback(&attempt.tenant_id, call, attempt, now);
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
    plan_for(tenant, attempt.id, &attempt.target_number, announcement)
}

/// The dial of one attempt, with the tenant's trunk, caller id and ring timeout.
pub fn plan_for(
    tenant: &Tenant,
    attempt_id: Uuid,
    target: &str,
    announcement: &str,
) -> TransferPlan {
    TransferPlan {
        attempt_id,
        target: target.to_string(),
        trunk: tenant.transfer.trunk.clone(),
        caller_id: tenant.transfer.caller_id.as_ref().map(ToString::to_string),
        ring_timeout_secs: tenant.transfer.ring_timeout_secs,
        announcement: announcement.to_string(),
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
    }
}

/// What the on-call person hears before being connected: who calls and why.
pub fn whisper(tenant: &Tenant, attempt: &TransferAttemptRow) -> String {
    let who = attempt.caller_name.as_deref().unwrap_or("a caller");
    let pet = attempt
        .pet_name
        .as_deref()
        .map(|p| format!(" about {p}"))
        .unwrap_or_default();
    format!(
        "Transferred call for {}, from {who}{pet}. Reason: {}. Connecting you now.",
        tenant.name, attempt.reason
    )
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
    }
}

/// The row an attempt becomes, for building its callback request without reading it back.
fn attempt_row(a: &NewTransferAttempt) -> TransferAttemptRow {
    TransferAttemptRow {
        id: a.id,
        call_id: a.call_id,
        tenant_id: a.tenant_id.clone(),
        tool_call_log_id: a.tool_call_log_id,
        target_role: a.target_role.to_string(),
        target_number: a.target_number.clone(),
        status: "dialing".into(),
        dial_call_status: None,
        dial_sip_status: None,
        failure_reason: None,
        callback_number: a.callback_number.clone(),
        caller_name: a.caller_name.clone(),
        reason: a.reason.clone(),
        pet_name: a.pet_name.clone(),
        started_at: a.started_at,
        ended_at: None,
        answered_at: None,
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
