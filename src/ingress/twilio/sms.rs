//! `POST /twilio/sms`: texts to the Twilio number (the number's "A message comes in" webhook):
//! STOP/START opt a caller out of and back into lifeline's texts, and an on-call person
//! acknowledges a page by texting its code. `POST /twilio/sms-status`: Twilio's status callbacks
//! on the texts sent to callers (queued, sent, delivered, undelivered, failed).
//!
//! Both are signed by Twilio ([`SignedTwilio`]); a forged request is refused before anything is
//! read. A code is accepted only from a number on the ladder of the clinic whose page it is:
//! anyone else's text (or a wrong code) changes nothing. Answers are an empty messaging TwiML
//! `<Response/>` (Twilio itself answers STOP and START on a number with its default opt-out
//! handling).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::Deserialize;
use tracing::{error, info, warn};

use super::SignedTwilio;
use crate::AppState;
use crate::phone::{E164, mask};

/// An inbound text, as Twilio posts it.
#[derive(Debug, Deserialize)]
pub(crate) struct InboundSms {
    #[serde(rename = "From", default)]
    from: String,
    #[serde(rename = "Body", default)]
    body: String,
}

/// A message's status callback.
#[derive(Debug, Deserialize)]
pub(crate) struct MessageStatus {
    #[serde(rename = "MessageSid", default)]
    message_sid: String,
    #[serde(rename = "MessageStatus", default)]
    message_status: String,
    #[serde(rename = "ErrorCode")]
    error_code: Option<String>,
}

/// The keywords that opt a number out of texts (Twilio's standard set) and back in.
const STOP_WORDS: [&str; 7] = [
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPTOUT",
];
const START_WORDS: [&str; 3] = ["START", "YES", "UNSTOP"];

/// What an inbound text says.
#[derive(Debug, PartialEq, Eq)]
enum Intent {
    OptOut,
    OptIn,
    /// A 4-digit code (alone, or with words around it: "ack 4821", "4821 on it").
    Code(String),
    Other,
}

fn intent(body: &str) -> Intent {
    let word = body.trim().to_ascii_uppercase();
    if STOP_WORDS.contains(&word.as_str()) {
        return Intent::OptOut;
    }
    if START_WORDS.contains(&word.as_str()) {
        return Intent::OptIn;
    }
    // One run of digits, four long: a reply with other numbers in it is not an acknowledgement.
    let codes: Vec<&str> = body
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .collect();
    match codes.as_slice() {
        [code] if code.len() == 4 => Intent::Code((*code).to_string()),
        _ => Intent::Other,
    }
}

fn empty() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
    )
        .into_response()
}

/// The handler of inbound texts.
pub(crate) async fn inbound(
    State(state): State<AppState>,
    SignedTwilio(sms): SignedTwilio<InboundSms>,
) -> Response {
    let Ok(from) = E164::parse(&sms.from) else {
        warn!("inbound text from a number that is not E.164: ignored");
        return empty();
    };
    let from = from.into_string();
    let now = Utc::now();
    match intent(&sms.body) {
        Intent::OptOut | Intent::OptIn => {
            let out = intent(&sms.body) == Intent::OptOut;
            match state.store.set_sms_opt_out(&from, out, now).await {
                Ok(()) => info!(from = %mask(&from), opted_out = out, "text opt-out changed"),
                Err(e) => {
                    error!(error = %e, "could not record an opt-out");
                    // Twilio retries on an error status: a STOP must not be lost.
                    return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
                }
            }
        }
        Intent::Code(code) => {
            match crate::worker::paging::acknowledge_by_code(
                &state.config,
                state.store.as_ref(),
                &from,
                &code,
                now,
            )
            .await
            {
                Ok(Some(id)) => {
                    info!(from = %mask(&from), callback_request = %id, "page acknowledged by text")
                }
                Ok(None) => warn!(
                    from = %mask(&from),
                    "a code texted back matches no open page of a clinic this number is on call for: ignored"
                ),
                Err(e) => {
                    error!(error = %e, "could not acknowledge a page");
                    return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
                }
            }
        }
        Intent::Other => info!(from = %mask(&from), "inbound text without a code: ignored"),
    }
    empty()
}

/// The handler of message status callbacks.
pub(crate) async fn status(
    State(state): State<AppState>,
    SignedTwilio(event): SignedTwilio<MessageStatus>,
) -> Response {
    // Stored as a word: Twilio's statuses are lower-case words with no other characters.
    let status: String = event
        .message_status
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(32)
        .collect();
    let code: Option<String> = event
        .error_code
        .map(|c| c.chars().filter(char::is_ascii_digit).take(8).collect())
        .filter(|c: &String| !c.is_empty());
    if event.message_sid.is_empty() || status.is_empty() {
        return empty();
    }
    match state
        .store
        .caller_text_status(&event.message_sid, &status, code.as_deref(), Utc::now())
        .await
    {
        Ok(true) => info!(message = %event.message_sid, status = %status, "caller text status"),
        Ok(false) => {}
        Err(e) => {
            error!(error = %e, "could not record a text's status");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
        }
    }
    empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_and_codes() {
        assert_eq!(intent(" stop "), Intent::OptOut);
        assert_eq!(intent("Start"), Intent::OptIn);
        assert_eq!(intent("4821"), Intent::Code("4821".into()));
        assert_eq!(intent("ack 4821 on it"), Intent::Code("4821".into()));
        assert_eq!(intent("call me at 416 555 0101"), Intent::Other);
        assert_eq!(intent("ok"), Intent::Other);
    }
}
