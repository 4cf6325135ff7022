//! Twilio voice webhooks: `POST /twilio/incoming` (call setup), `/twilio/dial-action` (how a
//! transfer's dial ended), `/twilio/whisper` (what the on-call person hears before being
//! connected, with the acceptance gate's `<Gather>`), `/twilio/gate` (the key the on-call person
//! pressed), `/twilio/status` (the call's progress) and `/twilio/recording` (a message left
//! when the AI agent could not be reached); `/twilio/sms` (texts to the number: STOP/START and
//! page acknowledgements) and `/twilio/sms-status` (delivery of texts to callers).
//!
//! Every request is authenticated by `X-Twilio-Signature` over the URL Twilio requested (our
//! public URL plus the path and query) and the form parameters, before anything is read from it.
//! Every answer is TwiML with status 200, whatever happened: a Twilio caller who gets an error
//! status hears "an application error has occurred", which is never acceptable here.

mod attempt;
mod dial;
mod setup;
mod signed;
mod sms;
mod status;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use secrecy::ExposeSecret;
use tracing::warn;

use crate::AppState;
use crate::protocol::twilio::{self as wire, Say, Verb};

pub use setup::setup_body;
pub(crate) use signed::SignedTwilio;

/// The Twilio webhook routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/twilio/incoming", post(setup::incoming))
        .route("/twilio/dial-action", post(dial::dial_action))
        .route("/twilio/whisper", post(dial::whisper))
        .route("/twilio/gate", post(dial::gate))
        .route("/twilio/status", post(status::status))
        .route("/twilio/recording", post(status::recording))
        .route("/twilio/sms", post(sms::inbound))
        .route("/twilio/sms-status", post(sms::status))
}

/// Why a webhook was not accepted.
pub(crate) enum Refused {
    /// No Twilio account is configured: these routes do not exist.
    NotConfigured,
    /// Not signed by our Twilio account (or signed for another URL).
    BadSignature,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NotConfigured => {
                (StatusCode::NOT_FOUND, "Twilio is not configured\n").into_response()
            }
            Refused::BadSignature => (StatusCode::FORBIDDEN, "invalid signature\n").into_response(),
        }
    }
}

/// Checks `X-Twilio-Signature` of a request to `uri` (the path and query Twilio requested, on
/// our public URL) with this form `body`; a refusal is logged and counted.
pub(crate) fn verify(
    state: &AppState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    let (Some(settings), Some(public_url)) = (&state.config.twilio, &state.config.public_url)
    else {
        return Err(Refused::NotConfigured);
    };
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or_else(|| uri.path());
    let url = format!("{public_url}{path}");
    let signature = headers
        .get(wire::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let params = wire::form_params(body).unwrap_or_default();
    if signature.is_empty()
        || !wire::validate_signature(
            settings.auth_token.expose_secret(),
            &url,
            &params,
            signature,
        )
    {
        metrics::counter!("lifeline_twilio_webhooks_refused_total", "path" => uri.path().to_string())
            .increment(1);
        warn!(
            path = uri.path(),
            signature_present = !signature.is_empty(),
            "Twilio webhook refused: the signature does not match (is server.public_url the URL Twilio calls?)"
        );
        return Err(Refused::BadSignature);
    }
    Ok(())
}

/// A TwiML answer.
pub(crate) fn twiml(response: wire::Response) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        response.to_xml(),
    )
        .into_response()
}

/// A TwiML answer from a document already rendered.
pub(crate) fn twiml_text(xml: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

/// Rings an on-call number for the caller (a transfer's `<Say><Dial>`).
pub(crate) fn ring(state: &AppState, plan: &crate::telephony::TransferPlan) -> Response {
    let public_url = state.config.public_url.as_deref().unwrap_or_default();
    match crate::telephony::twilio::transfer_twiml(public_url, plan) {
        Ok(xml) => twiml_text(xml),
        Err(e) => {
            tracing::error!(error = %e, "could not build the transfer TwiML");
            say_and_hang_up(SORRY)
        }
    }
}

/// Says `text`, then hangs up.
pub(crate) fn say_and_hang_up(text: &str) -> Response {
    twiml(
        wire::Response::new()
            .verb(Say::new(text))
            .verb(Verb::Hangup),
    )
}

/// What a caller hears when nothing else can be done: never silence, never an application error.
pub(crate) const SORRY: &str = "We're sorry, we could not connect your call. If this is an \
     emergency, please call your nearest emergency veterinary hospital. Goodbye.";

/// The public URL of a path, for TwiML pushed to a live call (which must use absolute URLs).
pub(crate) fn public(state: &AppState, path: &str) -> String {
    format!(
        "{}{path}",
        state.config.public_url.as_deref().unwrap_or_default()
    )
}
