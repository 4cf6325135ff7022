//! `collect_info`: take a message for a callback. Its whole effect is the `callback_requests`
//! row, written in the same transaction as its log row.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::args::{Fields, caller_name};
use super::context::CallContext;
use crate::domain::{ToolError, ToolOutput, Urgency};
use crate::phone::E164;
use crate::store::NewCallbackRequest;

/// Validates the arguments and builds the callback request and the answer for the model.
pub fn prepare(
    args: &Value,
    ctx: &CallContext<'_>,
    log_id: Uuid,
    now: DateTime<Utc>,
) -> Result<(ToolOutput, NewCallbackRequest), ToolError> {
    let f = Fields::new(args)?;
    // The caller's own number stands in when the model gave none; a number the model gave but
    // that makes no sense is sent back to be asked again.
    let caller_id = ctx
        .call
        .and_then(|c| c.from_number.as_deref())
        .and_then(|n| E164::parse(n).ok());
    let (number, number_source) = match (f.phone("callback_number")?, caller_id) {
        (Some(n), _) => (n, "caller"),
        (None, Some(n)) => (n, "caller_id"),
        (None, None) => {
            return Err(ToolError::validation(
                "callback_number is required: ask the caller for the best number to call back",
            ));
        }
    };
    let concern = f.required_text(
        "concern_description",
        "ask what the call is about and describe it",
    )?;
    let first = f.text("first_name")?;
    let last = f.text("last_name")?;
    let name = caller_name(f.text("caller_name")?, first.as_deref(), last.as_deref());
    let urgency_reason = f.text("urgency_reason")?;
    let urgency = Urgency::derive(
        f.text("urgency_level")?.as_deref(),
        &[&concern, urgency_reason.as_deref().unwrap_or("")],
        Urgency::Normal,
    );
    let callback = NewCallbackRequest {
        id: Uuid::now_v7(),
        created_at: now,
        tenant_id: ctx.tenant.id.clone(),
        call_id: ctx.call.map(|c| c.id),
        call_sid: ctx.call.map(|c| c.call_ref.clone()),
        tool_call_log_id: Some(log_id),
        transfer_attempt_id: None,
        reason: "message",
        callback_number: number.to_string(),
        caller_name: name,
        first_name: first,
        last_name: last,
        pet_name: f.text("pet_name")?,
        species: f.text("species")?,
        breed: f.text("breed")?,
        age: f.text("age")?,
        concern_description: Some(concern),
        urgency_reason,
        urgency,
        metadata: json!({ "callback_number_source": number_source }),
        text_caller: ctx.tenant.caller_sms.is_some(),
    };
    let output = ToolOutput {
        message: format!(
            "Recorded. A team member will call back at the number ending in {}. Tell the caller \
             their message was taken{}.",
            number.last4(),
            if urgency == Urgency::Critical {
                " and marked as an emergency"
            } else {
                ""
            }
        ),
        data: json!({
            "callback_request_stored": true,
            "callback_request_id": callback.id,
            "urgency_level": urgency.as_str(),
        }),
        ends_call: false,
    };
    Ok((output, callback))
}
