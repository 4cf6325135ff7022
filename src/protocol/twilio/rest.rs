//! The Twilio REST API (reference §4.1, §6.5): the form body of a live-call update, and the
//! error bodies it answers with, classified as worth retrying or not.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::TwilioError;

/// Longest inline `Twiml` Twilio accepts, in characters (Twilio error 32018).
pub(crate) const MAX_INLINE_TWIML_CHARS: usize = 4000;

/// How long after a call starts a 404 from the Calls resource is taken for Twilio not having
/// caught up yet (the original system's "404 race"), and so retried.
pub(crate) const NOT_FOUND_GRACE: Duration = Duration::from_secs(10);

/// The path of the Calls resource of one call, to `POST` an update to (under
/// `https://api.twilio.com`).
pub(crate) fn call_resource_path(account_sid: &str, call_sid: &str) -> String {
    format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json")
}

/// The form fields of a live-call update that replaces the call's TwiML: `Twiml` only (it
/// excludes `Url`). Fails when the document is longer than Twilio accepts.
pub(crate) fn update_call_form(twiml: &str) -> Result<Vec<(&'static str, String)>, TwilioError> {
    let chars = twiml.chars().count();
    if chars > MAX_INLINE_TWIML_CHARS {
        return Err(TwilioError::TwimlTooLong { chars });
    }
    Ok(vec![("Twiml", twiml.to_owned())])
}

/// A Twilio REST error, from the legacy body `{"code","message","more_info","status"}` or the
/// RFC 9457 body `{"type","title","status","code","detail",...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestError {
    /// The HTTP status of the response.
    pub http_status: u16,
    /// Twilio's error code (e.g. 21220), when the body has one.
    pub code: Option<u32>,
    /// Human-readable text: `message`, or `detail` (else `title`) for RFC 9457.
    pub message: String,
    /// Documentation link: `more_info`, or `type` for RFC 9457.
    pub more_info: Option<String>,
}

/// Twilio's code for "call is not in progress, cannot redirect" (invalid call state).
pub(crate) const ERROR_INVALID_CALL_STATE: u32 = 21220;

/// Every field of either error shape; which are set tells the shape.
#[derive(Deserialize)]
struct RestErrorBody {
    code: Option<u32>,
    message: Option<String>,
    more_info: Option<String>,
    #[serde(rename = "type")]
    type_uri: Option<String>,
    title: Option<String>,
    detail: Option<String>,
    status: Option<u16>,
}

impl RestError {
    /// Reads an error response. Never fails: a body that is not a Twilio error keeps its
    /// text (shortened) as the message, with no code.
    pub fn parse(http_status: u16, body: &[u8]) -> Self {
        match serde_json::from_slice::<RestErrorBody>(body) {
            Ok(body) => Self::from_body(http_status, body),
            Err(_) => Self {
                http_status,
                code: None,
                message: String::from_utf8_lossy(body).chars().take(200).collect(),
                more_info: None,
            },
        }
    }

    fn from_body(http_status: u16, body: RestErrorBody) -> Self {
        // The official library's test for RFC 9457: type, title, status and code all present.
        let problem_details = body.type_uri.is_some()
            && body.title.is_some()
            && body.status.is_some()
            && body.code.is_some();
        if problem_details {
            Self {
                http_status,
                code: body.code,
                message: body.detail.or(body.title).unwrap_or_default(),
                more_info: body.type_uri,
            }
        } else {
            Self {
                http_status,
                code: body.code,
                message: body.message.unwrap_or_default(),
                more_info: body.more_info,
            }
        }
    }

    /// Whether a failed live-call update may succeed if retried: 429, any 5xx, and a 404 no
    /// later than [`NOT_FOUND_GRACE`] after the call started are transient; 21220 (the call
    /// is no longer in progress) and every other status are permanent. A request that got no
    /// response at all (timeout, connection error) is transient too, but is no `RestError`.
    pub fn update_failure(&self, call_age: Duration) -> FailureKind {
        if self.code == Some(ERROR_INVALID_CALL_STATE) {
            return FailureKind::Permanent;
        }
        match self.http_status {
            429 | 500..=599 => FailureKind::Transient,
            404 if call_age <= NOT_FOUND_GRACE => FailureKind::Transient,
            _ => FailureKind::Permanent,
        }
    }
}

impl fmt::Display for RestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Twilio HTTP {}", self.http_status)?;
        if let Some(code) = self.code {
            write!(f, " error {code}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureKind {
    /// Retry with backoff.
    Transient,
    /// Fail at once (for a transfer: mark it failed and create the callback request).
    Permanent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::twilio::test_support::{tree, url};
    use crate::protocol::twilio::{Dial, Number, Response};

    #[test]
    fn update_form_matches_reference_body() {
        let twiml = "<Response><Dial action=\"https://example.com/twilio/dial-action?session=abc123\" \
                     timeout=\"20\"><Number>+15558675310</Number></Dial></Response>";
        let form = update_call_form(twiml).unwrap();
        assert_eq!(
            form.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
            ["Twiml"]
        );
        assert_eq!(
            serde_urlencoded::to_string(&form).unwrap(),
            "Twiml=%3CResponse%3E%3CDial+action%3D%22https%3A%2F%2Fexample.com%2Ftwilio%2F\
             dial-action%3Fsession%3Dabc123%22+timeout%3D%2220%22%3E%3CNumber%3E%2B15558675310\
             %3C%2FNumber%3E%3C%2FDial%3E%3C%2FResponse%3E"
        );
        let ours = Response::new().verb(Dial {
            timeout: Some(20),
            ..Dial::new(
                url("https://example.com/twilio/dial-action?session=abc123"),
                Number::new("+15558675310"),
            )
        });
        assert_eq!(tree(&ours.to_xml()), tree(twiml));
        assert_eq!(
            call_resource_path(
                "AC00000000000000000000000000000000",
                "CA11111111111111111111111111111111"
            ),
            "/2010-04-01/Accounts/AC00000000000000000000000000000000/Calls/\
             CA11111111111111111111111111111111.json"
        );
    }

    #[test]
    fn update_form_rejects_twiml_longer_than_twilio_accepts() {
        let at_limit = "é".repeat(MAX_INLINE_TWIML_CHARS);
        assert!(update_call_form(&at_limit).is_ok());
        let over = "x".repeat(MAX_INLINE_TWIML_CHARS + 1);
        assert!(matches!(
            update_call_form(&over),
            Err(TwilioError::TwimlTooLong { chars: 4001 })
        ));
    }

    #[test]
    fn legacy_error_21220_is_permanent_at_once() {
        let body = br#"{"code":21220,"message":"Call is not in-progress. Cannot redirect.","more_info":"https://www.twilio.com/docs/errors/21220","status":400}"#;
        let error = RestError::parse(400, body);
        assert_eq!(
            error,
            RestError {
                http_status: 400,
                code: Some(21220),
                message: "Call is not in-progress. Cannot redirect.".into(),
                more_info: Some("https://www.twilio.com/docs/errors/21220".into()),
            }
        );
        assert_eq!(error.update_failure(Duration::ZERO), FailureKind::Permanent);
        // 21220 wins even over a status that would otherwise be retried.
        let odd = RestError::parse(503, body);
        assert_eq!(odd.update_failure(Duration::ZERO), FailureKind::Permanent);
        assert_eq!(
            error.to_string(),
            "Twilio HTTP 400 error 21220: Call is not in-progress. Cannot redirect."
        );
    }

    #[test]
    fn rfc_9457_error_body() {
        let body = br#"{"type":"https://www.twilio.com/docs/errors/20001","title":"Invalid parameter","status":400,"code":20001,"detail":"Twiml is not valid","instance":"/x"}"#;
        let error = RestError::parse(400, body);
        assert_eq!(error.code, Some(20001));
        assert_eq!(error.message, "Twiml is not valid");
        assert_eq!(
            error.more_info.as_deref(),
            Some("https://www.twilio.com/docs/errors/20001")
        );
        let no_detail = br#"{"type":"t","title":"Invalid parameter","status":400,"code":20001}"#;
        assert_eq!(
            RestError::parse(400, no_detail).message,
            "Invalid parameter"
        );
        // Without `type` it is not RFC 9457: the legacy fields are read.
        let legacy = br#"{"title":"ignored","status":400,"code":20001,"message":"m"}"#;
        assert_eq!(RestError::parse(400, legacy).message, "m");
    }

    #[test]
    fn error_body_that_is_not_json() {
        let html = format!("<html>{}</html>", "x".repeat(500));
        let error = RestError::parse(502, html.as_bytes());
        assert_eq!(error.code, None);
        assert_eq!(error.message.chars().count(), 200);
        assert!(error.message.starts_with("<html>"));
        assert_eq!(error.update_failure(Duration::ZERO), FailureKind::Transient);
    }

    #[test]
    fn update_failure_classification() {
        let error = |status: u16, code: Option<u32>| RestError {
            http_status: status,
            code,
            message: String::new(),
            more_info: None,
        };
        let fresh = Duration::from_secs(1);
        let old = NOT_FOUND_GRACE + Duration::from_secs(1);
        let cases = [
            (error(404, Some(20404)), fresh, FailureKind::Transient),
            (
                error(404, Some(20404)),
                NOT_FOUND_GRACE,
                FailureKind::Transient,
            ),
            (error(404, Some(20404)), old, FailureKind::Permanent),
            (error(429, Some(20429)), old, FailureKind::Transient),
            (error(500, None), old, FailureKind::Transient),
            (error(503, None), old, FailureKind::Transient),
            (error(400, Some(21220)), fresh, FailureKind::Permanent),
            (error(400, Some(21201)), fresh, FailureKind::Permanent),
            (error(401, Some(20003)), fresh, FailureKind::Permanent),
            (error(403, None), fresh, FailureKind::Permanent),
            (error(409, None), fresh, FailureKind::Permanent),
        ];
        for (error, age, expected) in cases {
            assert_eq!(error.update_failure(age), expected, "{error} after {age:?}");
        }
    }
}
