//! The two webhooks of a transfer's `<Dial>`: the whisper the on-call person hears when they
//! pick up (`/twilio/whisper`), and the outcome (`/twilio/dial-action`), which either ends the
//! call, rings the next target, or records a critical callback request and tells the caller.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::attempt::AttemptQuery;
use super::{SORRY, SignedTwilio, public, ring, say_and_hang_up, twiml};
use crate::AppState;
use crate::protocol::twilio::{self as wire, DialAction, Gather, HttpMethod, Say, Verb};
use crate::tools::Platform;
use crate::tools::transfer::{self, DialNext, GateVerdict};

/// `POST /twilio/dial-action`.
pub async fn dial_action(
    State(state): State<AppState>,
    query: AttemptQuery,
    SignedTwilio(action): SignedTwilio<DialAction>,
) -> Response {
    let span = info_span!(
        "twilio_dial_action",
        call = %action.call_sid,
        attempt = %query.attempt.map(|a| a.to_string()).unwrap_or_default()
    );
    on_dial_action(&state, query.attempt, &action)
        .instrument(span)
        .await
}

async fn on_dial_action(state: &AppState, attempt: Option<Uuid>, action: &DialAction) -> Response {
    let succeeded = action.transfer_succeeded();
    let status = action.dial_call_status.as_str().to_string();
    info!(dial_status = %status, bridged = ?action.dial_bridged, "dial ended");
    if attempt == Some(Uuid::nil()) {
        // The end of a dial made while nothing could be recorded: do not ring again and again.
        return after_unrecorded_dial(succeeded);
    }
    let call = match state
        .store
        .find_call(Platform::Twilio, &action.call_sid)
        .await
    {
        Ok(Some(call)) => call,
        Ok(None) => {
            warn!("dial outcome for a call lifeline does not know");
            return after_unrecorded_dial(succeeded);
        }
        Err(e) => {
            error!(error = %e, "could not read the call for its dial outcome");
            return after_unrecorded_dial(succeeded);
        }
    };
    let Some(tenant) = state.config.tenant(&call.tenant_id).cloned() else {
        error!(tenant = %call.tenant_id, "the call's tenant is no longer configured");
        return after_unrecorded_dial(succeeded);
    };
    // A late or repeated webhook of an earlier attempt must not end the one ringing now.
    if let Some(attempt) = attempt {
        match state.store.dialing_transfer(call.id).await {
            Ok(Some(ringing)) if ringing.id != attempt => {
                warn!(%attempt, ringing = %ringing.id, "dial outcome of an attempt that is not ringing; ignored");
                return after_unrecorded_dial(succeeded);
            }
            _ => {}
        }
    }
    let next = transfer::on_dial_result(
        state.store.as_ref(),
        &tenant,
        &call,
        succeeded,
        Some(&status),
        None,
    )
    .await;
    match next {
        Ok(DialNext::Connected) => twiml(wire::Response::new().verb(Verb::Hangup)),
        Ok(DialNext::Ring(plan)) => ring(state, &plan),
        Ok(DialNext::CallbackPromised { last4 }) => {
            say_and_hang_up(&transfer::callback_promise(&last4))
        }
        Ok(DialNext::NoTransfer) => after_unrecorded_dial(succeeded),
        Err(e) => {
            // The outcome could not be recorded, so no callback request exists: keep the caller
            // with a human rather than promise a call back nobody will see.
            error!(error = %e, "could not record the dial outcome; ringing the on-call number again");
            if succeeded {
                twiml(wire::Response::new().verb(Verb::Hangup))
            } else {
                ring(state, &transfer::plan_without_record(&tenant))
            }
        }
    }
}

/// After a dial nothing was recorded for: end a connected call; apologise otherwise.
fn after_unrecorded_dial(succeeded: bool) -> Response {
    if succeeded {
        twiml(wire::Response::new().verb(Verb::Hangup))
    } else {
        say_and_hang_up(SORRY)
    }
}

/// What Twilio sends with the whisper request and the gate's action: the answering-machine
/// verdict (with `<Number machineDetection>`) and the key pressed.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GateForm {
    /// `human`, `machine_start`, `machine_end_beep`, `fax`, `unknown`…
    #[serde(default)]
    pub answered_by: Option<String>,
    /// The key(s) pressed at the `<Gather>`.
    #[serde(default)]
    pub digits: Option<String>,
}

impl GateForm {
    /// Twilio's answering-machine detection said a machine (or a fax) answered.
    fn machine(&self) -> bool {
        self.answered_by
            .as_deref()
            .is_some_and(|a| a.starts_with("machine") || a == "fax")
    }
}

/// `POST /twilio/whisper`: played to the on-call person before the caller is connected. With
/// the gate: who is calling, then a `<Gather>` that asks for 1; no key within the gate's
/// timeout falls through to `<Hangup/>` (declined), and a machine is hung up on at once.
pub async fn whisper(
    State(state): State<AppState>,
    query: AttemptQuery,
    SignedTwilio(form): SignedTwilio<GateForm>,
) -> Response {
    // The on-call person's leg: its attempt names the call it belongs to.
    let span = info_span!("twilio_whisper", attempt = %query.attempt.map(|a| a.to_string()).unwrap_or_default());
    whisper_text(&state, query.attempt, &form)
        .instrument(span)
        .await
}

async fn whisper_text(state: &AppState, attempt: Option<Uuid>, form: &GateForm) -> Response {
    let attempt = match attempt {
        Some(id) => state.store.transfer_attempt(id).await,
        None => Ok(None),
    };
    let found = match attempt {
        Ok(Some(attempt)) => {
            // Twilio asks for the whisper when the on-call person picks up: from here the
            // attempt is talking, not stuck (the reconciler leaves it alone).
            if let Err(e) = state
                .store
                .mark_transfer_answered(attempt.id, chrono::Utc::now())
                .await
            {
                error!(error = %e, "could not record that the transfer was picked up");
            }
            state
                .config
                .tenant(&attempt.tenant_id)
                .map(|tenant| (tenant.clone(), attempt))
        }
        Ok(None) => None,
        Err(e) => {
            error!(error = %e, "could not read the transfer attempt for its whisper");
            None
        }
    };
    let Some((tenant, attempt)) = found else {
        // With nothing to say, the on-call person is simply connected.
        return twiml(
            wire::Response::new().verb(Say::new("Transferred call from the after-hours line.")),
        );
    };
    let text = transfer::whisper(&tenant, &attempt);
    if !tenant.transfer.accept_gate {
        return twiml(wire::Response::new().verb(Say::new(text)));
    }
    if form.machine() {
        info!(answered_by = ?form.answered_by, "a machine answered the on-call number");
        record_gate(state, &attempt, GateVerdict::Machine, form).await;
        return twiml(wire::Response::new().verb(Verb::Hangup));
    }
    let gather = Gather {
        action: format!("{}?attempt={}", public(state, "/twilio/gate"), attempt.id),
        method: Some(HttpMethod::Post),
        num_digits: 1,
        timeout: tenant.transfer.gate_timeout_secs,
        say: Some(Say::new(transfer::GATE_PROMPT)),
    };
    // No key: Twilio goes on past the <Gather> to the <Hangup/>, which declines.
    twiml(
        wire::Response::new()
            .verb(Say::new(text))
            .verb(gather)
            .verb(Verb::Hangup),
    )
}

/// `POST /twilio/gate`: the key the on-call person pressed at the whisper's `<Gather>`. 1
/// accepts (the whisper ends and Twilio bridges the caller); anything else hangs up this leg,
/// which declines, and the dial's action moves the chain on.
pub async fn gate(
    State(state): State<AppState>,
    query: AttemptQuery,
    SignedTwilio(form): SignedTwilio<GateForm>,
) -> Response {
    let span = info_span!("twilio_gate", attempt = %query.attempt.map(|a| a.to_string()).unwrap_or_default());
    async {
        let attempt = match query.attempt {
            Some(id) => state.store.transfer_attempt(id).await.ok().flatten(),
            None => None,
        };
        let accepted = form.digits.as_deref().map(str::trim) == Some("1");
        let verdict = if accepted {
            GateVerdict::Accepted
        } else {
            GateVerdict::Declined
        };
        if let Some(attempt) = &attempt {
            record_gate(&state, attempt, verdict, &form).await;
        }
        if accepted {
            twiml(wire::Response::new().verb(Say::new(transfer::GATE_CONNECTING)))
        } else {
            twiml(wire::Response::new().verb(Verb::Hangup))
        }
    }
    .instrument(span)
    .await
}

async fn record_gate(
    state: &AppState,
    attempt: &crate::store::TransferAttemptRow,
    verdict: GateVerdict,
    form: &GateForm,
) {
    let detail = serde_json::json!({
        "platform": "twilio",
        "digits": form.digits,
        "answered_by": form.answered_by,
    });
    if let Err(e) = transfer::on_gate(
        state.store.as_ref(),
        attempt.call_id,
        Some(attempt.id),
        verdict,
        detail,
    )
    .await
    {
        error!(error = %e, "could not record the transfer gate's verdict");
    }
}
