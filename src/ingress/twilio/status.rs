//! `POST /twilio/status`: the caller's leg progresses and ends (the number's status callback);
//! `POST /twilio/recording`: a message recorded by the setup fallback becomes a callback
//! request.

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::{SORRY, SignedTwilio, say_and_hang_up, twiml};
use crate::AppState;
use crate::phone::{E164, mask};
use crate::protocol::twilio::{self as wire, StatusCallback};
use crate::store::{CallStatusUpdate, NewCallEvent, NewCallbackRequest};
use crate::tools::Platform;
use crate::tools::urgency::Urgency;

/// The handler of call progress events.
pub async fn status(
    State(state): State<AppState>,
    SignedTwilio(event): SignedTwilio<StatusCallback>,
) -> Response {
    let span = info_span!("twilio_status", call = %event.call_sid);
    on_status(&state, &event).instrument(span).await
}

async fn on_status(state: &AppState, event: &StatusCallback) -> Response {
    let at = event
        .timestamp
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc2822(t).ok())
        .map(|t| t.to_utc())
        .unwrap_or_else(Utc::now);
    let detail = json!({
        "call_status": event.call_status.as_str(),
        "sequence": event.sequence_number,
        "sip_response_code": event.sip_response_code,
        "callback_source": event.callback_source,
        "call_duration": event.call_duration,
    });
    match state
        .store
        .find_call(Platform::Twilio, &event.call_sid)
        .await
    {
        Ok(Some(call)) => {
            let ended = event.call_status.is_final();
            let update = CallStatusUpdate {
                event_id: Uuid::now_v7(),
                status: event.call_status.as_str().to_string(),
                at,
                ended,
                duration_seconds: event.call_duration.and_then(|d| i32::try_from(d).ok()),
                sequence: event.sequence_number.map(i64::from),
                detail,
            };
            if let Err(e) = state.store.record_call_status(call.id, &update).await {
                error!(call = %event.call_sid, error = %e, "could not record the call status");
            } else if ended {
                info!(call = %event.call_sid, status = event.call_status.as_str(), "call ended");
            }
        }
        Ok(None) => {
            // A transfer's own leg (its `<Number statusCallback>`): on the caller's timeline.
            if let Some(parent) = &event.parent_call_sid
                && let Ok(Some(call)) = state.store.find_call(Platform::Twilio, parent).await
            {
                let event = NewCallEvent {
                    id: Uuid::now_v7(),
                    call_id: call.id,
                    at,
                    kind: "transfer_leg_status".into(),
                    detail,
                };
                if let Err(e) = state.store.append_call_event(&event).await {
                    error!(error = %e, "could not record the transfer leg's status");
                }
            } else {
                warn!(call = %event.call_sid, "status of a call lifeline does not know");
            }
        }
        Err(e) => error!(error = %e, "could not read the call for its status"),
    }
    twiml(wire::Response::new())
}

/// What Twilio sends to a `<Record action>` URL.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RecordingDone {
    call_sid: String,
    from: Option<String>,
    to: Option<String>,
    recording_url: Option<String>,
    recording_sid: Option<String>,
    recording_duration: Option<u32>,
}

/// The handler of a finished recording.
pub async fn recording(
    State(state): State<AppState>,
    SignedTwilio(done): SignedTwilio<RecordingDone>,
) -> Response {
    let span = info_span!("twilio_recording", call = %done.call_sid);
    on_recording(&state, &done).instrument(span).await
}

async fn on_recording(state: &AppState, done: &RecordingDone) -> Response {
    let Some(url) = done
        .recording_url
        .clone()
        .filter(|_| done.recording_duration != Some(0))
    else {
        return say_and_hang_up("We did not receive a message. Goodbye.");
    };
    let call = state
        .store
        .find_call(Platform::Twilio, &done.call_sid)
        .await
        .unwrap_or_else(|e| {
            error!(error = %e, "could not read the call of a recording");
            None
        });
    let tenant = call
        .as_ref()
        .and_then(|c| state.config.tenant(&c.tenant_id))
        .or_else(|| {
            done.to
                .as_deref()
                .and_then(|to| state.config.tenant_by_number(to))
        });
    let Some(tenant) = tenant else {
        error!(call = %done.call_sid, "recorded message for a number no tenant answers");
        return say_and_hang_up(SORRY);
    };
    let from = done.from.clone().unwrap_or_default();
    let callback = NewCallbackRequest {
        id: Uuid::now_v7(),
        created_at: Utc::now(),
        tenant_id: tenant.id.clone(),
        call_id: call.as_ref().map(|c| c.id),
        call_sid: Some(done.call_sid.clone()),
        tool_call_log_id: None,
        transfer_attempt_id: None,
        reason: "message",
        callback_number: E164::parse(&from).map(E164::into_string).unwrap_or(from),
        caller_name: None,
        first_name: None,
        last_name: None,
        pet_name: None,
        species: None,
        breed: None,
        age: None,
        concern_description: Some(format!(
            "Voice message left while the AI assistant was unavailable: {url}"
        )),
        urgency_reason: Some("not triaged: the AI assistant was unavailable".into()),
        // Nobody has heard it yet: it must be listened to before routine requests.
        urgency: Urgency::Urgent,
        metadata: json!({
            "recording_url": url,
            "recording_sid": done.recording_sid,
            "recording_duration": done.recording_duration,
        }),
        text_caller: tenant.caller_sms.is_some(),
    };
    // Twilio may repeat the webhook, even concurrently: the recording's SID (its URL, which
    // names it, if the SID is missing) is a unique key, so a repeat writes nothing.
    let key = done.recording_sid.as_deref().unwrap_or(&url);
    match state.store.insert_voice_message(&callback, key).await {
        Ok(true) => {
            info!(
                callback = %callback.id,
                number = %mask(&callback.callback_number),
                "voice message recorded as a callback request"
            );
            thank_you()
        }
        Ok(false) => {
            info!("Twilio repeated a recording already recorded");
            thank_you()
        }
        Err(e) => {
            error!(error = %e, "could not record the voice message as a callback request");
            say_and_hang_up(SORRY)
        }
    }
}

fn thank_you() -> Response {
    say_and_hang_up(
        "Thank you. Your message has been recorded and a team member will call you back. Goodbye.",
    )
}
