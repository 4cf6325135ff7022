//! Rows and the values written to them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;
use uuid::Uuid;

use crate::domain::Urgency;
use crate::domain::{ErrorKind, Platform, ToolError, ToolOutput, ToolResult};

/// A call as first seen by an adapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewCall {
    pub id: Uuid,
    pub tenant_id: String,
    pub platform: Platform,
    pub call_ref: String,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub direction: String,
    pub status: String,
    pub account_sid: Option<String>,
    pub application_sid: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// A row of `calls`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub platform: String,
    pub call_ref: String,
    pub ultravox_call_id: Option<String>,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub direction: String,
    pub status: String,
    pub app_started_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i32>,
    pub transfer_outcome: Option<String>,
    pub transfer_completed_at: Option<DateTime<Utc>>,
}

impl CallRow {
    /// The row a new call gets: what the adapter saw, nothing else known yet (the table has no
    /// trigger or default that fills another of these columns).
    pub fn new_call(call: &NewCall) -> Self {
        Self {
            id: call.id,
            tenant_id: call.tenant_id.clone(),
            platform: call.platform.as_str().to_string(),
            call_ref: call.call_ref.clone(),
            ultravox_call_id: None,
            from_number: call.from_number.clone(),
            to_number: call.to_number.clone(),
            direction: call.direction.clone(),
            status: call.status.clone(),
            app_started_at: None,
            started_at: call.started_at,
            ended_at: None,
            duration_seconds: None,
            transfer_outcome: None,
            transfer_completed_at: None,
        }
    }
}

/// A status change of a call's own leg.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallStatusUpdate {
    pub event_id: Uuid,
    pub status: String,
    pub at: DateTime<Utc>,
    /// Set when the status is final.
    pub ended: bool,
    pub duration_seconds: Option<i32>,
    /// The platform's ordering of the call's events (Twilio `SequenceNumber`), when it has one.
    pub sequence: Option<i64>,
    pub detail: Value,
}

/// An entry of a call's timeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewCallEvent {
    pub id: Uuid,
    pub call_id: Uuid,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: Value,
}

/// A row of `call_events`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallEventRow {
    pub id: Uuid,
    pub call_id: Uuid,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub detail: Json<Value>,
}

/// What is written to `tool_call_logs` when an invocation arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewToolCallLog {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub tenant_id: String,
    pub platform: Platform,
    pub call_ref: String,
    pub call_id: Option<Uuid>,
    pub invocation_key: String,
    pub invocation_id: Option<String>,
    /// As the model named it (an alias stays an alias, for the original dashboards).
    pub tool_name: String,
    /// The canonical tool, or `unknown`.
    pub canonical_tool: String,
    pub tool_parameters: Value,
    pub callback_number: Option<String>,
    pub caller_name: Option<String>,
    pub urgency_level: Option<String>,
    pub ultravox_call_id: Option<String>,
    pub twilio_call_sid: Option<String>,
    pub tool_data: Value,
}

/// A row of `tool_call_logs`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ToolCallLogRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub tenant_id: String,
    pub platform: String,
    pub call_ref: String,
    pub call_id: Option<Uuid>,
    pub invocation_key: String,
    pub invocation_id: Option<String>,
    pub tool_name: String,
    pub canonical_tool: String,
    pub tool_parameters: Json<Value>,
    pub status: String,
    pub error_message: Option<String>,
    pub error_kind: Option<String>,
    pub result: Option<Json<Value>>,
    pub duration_ms: Option<f64>,
    pub callback_number: Option<String>,
    pub caller_name: Option<String>,
    pub urgency_level: Option<String>,
    pub processed_at: Option<DateTime<Utc>>,
}

impl ToolCallLogRow {
    /// The result recorded for this invocation; `None` while it is still `pending`.
    pub fn recorded_result(&self) -> Option<ToolResult> {
        let result = self.result.as_ref().map(|j| &j.0);
        match self.status.as_str() {
            "success" => Some(
                result
                    .and_then(|r| serde_json::from_value::<ToolOutput>(r.clone()).ok())
                    .ok_or_else(|| {
                        ToolError::new(ErrorKind::Internal, "the recorded result is unreadable")
                    }),
            ),
            "failed" => Some(Err(result
                .and_then(|r| r.get("error"))
                .and_then(|e| serde_json::from_value::<ToolError>(e.clone()).ok())
                .unwrap_or_else(|| {
                    ToolError::new(
                        ErrorKind::Internal,
                        self.error_message.clone().unwrap_or_default(),
                    )
                }))),
            _ => None,
        }
    }
}

/// What the logging transaction writes besides the log row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Plan {
    /// Log `pending`; the handler runs after the commit and its outcome is recorded later.
    Run,
    /// The whole effect is in the database: write it and the final outcome in one transaction.
    Complete {
        outcome: Recorded,
        callback: Option<Box<NewCallbackRequest>>,
    },
    /// Nothing to run (invalid arguments, unknown tool): record the failure.
    Fail(Recorded),
}

/// The final state of an invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recorded {
    pub at: DateTime<Utc>,
    pub success: bool,
    pub result: Value,
    pub error_message: Option<String>,
    #[serde(deserialize_with = "super::journal::statics::option")]
    pub error_kind: Option<super::journal::statics::Word>,
    pub duration_ms: f64,
}

impl Recorded {
    /// The record of a tool result.
    pub fn of(result: &ToolResult, at: DateTime<Utc>, duration_ms: f64) -> Self {
        match result {
            Ok(output) => Self {
                at,
                success: true,
                result: serde_json::to_value(output).unwrap_or(Value::Null),
                error_message: None,
                error_kind: None,
                duration_ms,
            },
            Err(e) => Self {
                at,
                success: false,
                result: serde_json::json!({ "error": e }),
                error_message: Some(e.message.clone()),
                error_kind: Some(e.kind.as_str()),
                duration_ms,
            },
        }
    }

    /// The status value written to `tool_call_logs.status`.
    pub fn status(&self) -> &'static str {
        if self.success { "success" } else { "failed" }
    }
}

/// The sliding windows a new invocation is counted in.
#[derive(Debug, Clone)]
pub struct CountWindows {
    /// Count the call's invocations of any tool since then.
    pub call_since: DateTime<Utc>,
    /// Count the call's invocations of `tool` since then.
    pub tool_since: DateTime<Utc>,
    pub tool: String,
    /// The limits the accompanying check enforces, when it is a plain threshold check: it
    /// refuses exactly when the call's count reaches `call` or the tool's reaches `tool`. With
    /// them a store may decide in the database (on PostgreSQL, in the one round trip that logs
    /// the invocation) and call the check only to word the refusal; without them it calls the
    /// check on the counts.
    pub thresholds: Option<Thresholds>,
}

impl CountWindows {
    /// Whether a call's totals (every invocation it ever made, and its transfers: the
    /// `call_invocation_totals` row, migration `0013`) already show that no limit can be
    /// reached: the totals bound the windowed counts from above, so under the thresholds they
    /// make counting the windows unnecessary. Only with [`Self::thresholds`], and for the
    /// transfer window only when `tool` is `transfer` (the only tool the totals count).
    pub fn under_limits(&self, totals: &WindowCounts) -> bool {
        let Some(t) = self.thresholds else {
            return false;
        };
        t.call.is_none_or(|limit| totals.call < limit)
            && t.tool.is_none_or(|limit| {
                self.tool == crate::domain::ToolName::Transfer.as_str() && totals.tool < limit
            })
    }
}

/// Counts at which an invocation is refused (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Refused when the call's invocations within `call_since` reach this.
    pub call: Option<i64>,
    /// Refused when the call's invocations of the tool within `tool_since` reach this.
    pub tool: Option<i64>,
}

/// How many invocations a call made within the windows (the new one not included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCounts {
    pub call: i64,
    pub tool: i64,
}

/// What logging an invocation found.
#[derive(Debug, Clone)]
pub enum Begun {
    /// Logged `pending`: run the handler.
    Running,
    /// Logged with its final outcome (the plan's, or the limit check's refusal).
    Recorded(Recorded),
    /// The same invocation was logged before: this is its row.
    Duplicate(Box<ToolCallLogRow>),
}

/// A callback request to write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewCallbackRequest {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub tenant_id: String,
    pub call_id: Option<Uuid>,
    pub call_sid: Option<String>,
    pub tool_call_log_id: Option<Uuid>,
    pub transfer_attempt_id: Option<Uuid>,
    /// `message` (collect_info) or `failed_transfer`.
    #[serde(deserialize_with = "super::journal::statics::one")]
    pub reason: super::journal::statics::Word,
    pub callback_number: String,
    pub caller_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub pet_name: Option<String>,
    pub species: Option<String>,
    pub breed: Option<String>,
    pub age: Option<String>,
    pub concern_description: Option<String>,
    pub urgency_reason: Option<String>,
    pub urgency: Urgency,
    pub metadata: Value,
    /// Whether the caller is to be texted about it (a `caller_texts` row is queued with it):
    /// only where the clinic texts callers (`[tenants.caller_sms]`), so that no text waits for
    /// a sender that does not exist. Journal records written before the field say yes, as
    /// every request did then.
    #[serde(default = "text_caller_by_default")]
    pub text_caller: bool,
}

fn text_caller_by_default() -> bool {
    true
}

/// A row of `callback_requests`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallbackRequestRow {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub tenant_id: String,
    pub call_id: Option<Uuid>,
    pub call_sid: Option<String>,
    pub tool_call_log_id: Option<Uuid>,
    pub transfer_attempt_id: Option<Uuid>,
    pub reason: String,
    pub status: String,
    pub callback_number: String,
    pub caller_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub pet_name: Option<String>,
    pub species: Option<String>,
    pub breed: Option<String>,
    pub age: Option<String>,
    pub concern_description: Option<String>,
    pub urgency_level: String,
    pub urgency_reason: Option<String>,
    pub metadata: Option<Json<Value>>,
    pub updated_at: DateTime<Utc>,
    /// Failed delivery attempts so far (the original's column).
    pub retry_count: i32,
    pub max_retries: i32,
    /// When a failed delivery is tried again.
    pub next_retry_at: Option<DateTime<Utc>>,
    pub posted_to_frontend_at: Option<DateTime<Utc>>,
    pub error_message: Option<String>,
    /// How many times the request was claimed; the current claim's number.
    pub delivery_attempt: i32,
    /// The worker holding the request, while one does.
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    pub dead_letter_reason: Option<String>,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Set when staff called the caller back.
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolution_note: Option<String>,
    /// What the frontend last answered (its JSON, or its text as a JSON string).
    pub frontend_response: Option<Json<Value>>,
}

/// Which callback requests to list.
#[derive(Debug, Clone, Default)]
pub struct CallbackFilter {
    pub tenant_id: Option<String>,
    /// A stored status, or `resolved`: requests staff marked done, whatever their status.
    pub status: Option<String>,
    /// `critical`, `urgent` or `normal`.
    pub urgency: Option<String>,
    pub call_id: Option<Uuid>,
    pub limit: Option<i64>,
}

/// A transfer attempt to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewTransferAttempt {
    pub id: Uuid,
    pub call_id: Uuid,
    pub tenant_id: String,
    pub tool_call_log_id: Option<Uuid>,
    /// `primary` or `secondary`.
    #[serde(deserialize_with = "super::journal::statics::one")]
    pub target_role: super::journal::statics::Word,
    pub target_number: String,
    pub callback_number: String,
    pub caller_name: Option<String>,
    pub reason: String,
    pub pet_name: Option<String>,
    pub started_at: DateTime<Utc>,
    /// 1-based position in the on-call chain (`None` in journals written before chains: then
    /// derived from the role, primary 1, else 2).
    #[serde(default)]
    pub chain_step: Option<i32>,
}

/// A row of `transfer_attempts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TransferAttemptRow {
    pub id: Uuid,
    pub call_id: Uuid,
    pub tenant_id: String,
    pub tool_call_log_id: Option<Uuid>,
    pub target_role: String,
    pub target_number: String,
    pub status: String,
    pub dial_call_status: Option<String>,
    pub dial_sip_status: Option<i32>,
    pub failure_reason: Option<String>,
    pub callback_number: String,
    pub caller_name: Option<String>,
    pub reason: String,
    pub pet_name: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// When the on-call person picked up (the dial's outcome may come much later, when the
    /// bridged call ends).
    pub answered_at: Option<DateTime<Utc>>,
    /// How the attempt ended (`accepted`, `declined`, `machine`, `no_answer`, `busy`,
    /// `failed`, `caller_hung_up`, `cancelled`); `None` while dialing.
    pub outcome: Option<String>,
    /// Ring time in milliseconds (until pick-up, or until the end when nobody picked up).
    pub ring_ms: Option<i64>,
    /// When a human accepted the call at the gate (pressed 1).
    pub accepted_at: Option<DateTime<Utc>>,
    /// 1-based position in the on-call chain.
    pub chain_step: Option<i32>,
}

impl TransferAttemptRow {
    /// The row a new attempt becomes (ringing, nothing reported yet).
    pub fn dialing(a: &NewTransferAttempt) -> Self {
        Self {
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
            outcome: None,
            ring_ms: None,
            accepted_at: None,
            chain_step: Some(super::chain_step_of(a)),
        }
    }
}

/// An attempt still `dialing`, with what the reconciler needs to judge it: its call's
/// platform reference and whether (and when) the call ended.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DialingAttempt {
    #[sqlx(flatten)]
    pub attempt: TransferAttemptRow,
    pub call_platform: String,
    pub call_ref: String,
    pub call_ended_at: Option<DateTime<Utc>>,
}

/// Whether a transfer attempt could start.
#[derive(Debug, Clone)]
pub enum TransferStart {
    Started,
    /// Another attempt is ringing for this call.
    AlreadyDialing(Box<TransferAttemptRow>),
}

/// How an attempt ended, and what follows it, written in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferFinish {
    pub attempt_id: Uuid,
    pub call_id: Uuid,
    pub at: DateTime<Utc>,
    pub succeeded: bool,
    pub dial_call_status: Option<String>,
    pub dial_sip_status: Option<i32>,
    pub failure_reason: Option<String>,
    /// The next target to ring.
    pub next: Option<NewTransferAttempt>,
    /// The critical callback request that replaces a transfer nobody answered.
    pub callback: Option<NewCallbackRequest>,
    /// The transfer tool's log row and the failure to record on it when the transfer finally
    /// failed (a repeat of the invocation then reads that failure back).
    pub failed_log: Option<(Uuid, Recorded)>,
    /// The typed outcome (see `migrations/*/0008_transfer_outcomes.sql`); `None` in journals
    /// written before outcomes existed.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The attempt's ring time in milliseconds.
    #[serde(default)]
    pub ring_ms: Option<i64>,
}
