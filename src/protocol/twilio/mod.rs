//! Twilio wire formats: the `X-Twilio-Signature` check, the voice webhook forms, a TwiML
//! builder, REST error bodies and the form body of a live-call update. No I/O.
//!
//! Everything here follows `shared/reference/ultravox-twilio-protocol.md` §4; where that text
//! leaves a choice open, the behaviour of the official `twilio` helper libraries wins.

mod forms;
mod rest;
mod signature;
#[cfg(test)]
mod test_support;
mod twiml;
mod url;

pub(crate) use forms::{DialAction, IncomingCall, StatusCallback, form_params, parse_webhook};
pub(crate) use rest::{
    ERROR_INVALID_CALL_STATE, FailureKind, MAX_INLINE_TWIML_CHARS, RestError, call_resource_path,
    update_call_form,
};
pub use signature::compute_signature;
pub(crate) use signature::{SIGNATURE_HEADER, validate_signature};
pub(crate) use twiml::{
    AbsoluteUrl, Dial, Gather, HttpMethod, Number, Record, Response, Say, Stream, Verb,
};

/// Errors of the Twilio wire formats.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TwilioError {
    /// A webhook body is not a form, or lacks a field every Twilio webhook carries.
    #[error("invalid Twilio webhook form: {0}")]
    Form(#[from] serde_urlencoded::de::Error),
    /// TwiML given to a live call must use absolute URLs (Twilio error 15004).
    #[error("not an absolute http(s) URL: {0:?}")]
    NotAbsoluteUrl(String),
    /// Inline TwiML is limited to 4000 characters (Twilio error 32018).
    #[error("inline TwiML has {chars} characters, Twilio accepts at most {MAX_INLINE_TWIML_CHARS}")]
    TwimlTooLong {
        /// Length of the rejected document, in characters.
        chars: usize,
    },
}
