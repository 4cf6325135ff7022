//! The voice webhook forms Twilio posts (reference §4.3, §4.4): the raw name/value pairs a
//! signature is checked over, and the typed incoming-call, dial-action and status callbacks.

use serde::Deserialize;

use super::TwilioError;

/// The decoded name/value pairs of a form body, in wire order, repeats kept: what
/// [`validate_signature`] needs.
pub(crate) fn form_params(body: &[u8]) -> Result<Vec<(String, String)>, TwilioError> {
    Ok(serde_urlencoded::from_bytes(body)?)
}

/// A typed webhook ([`IncomingCall`], [`DialAction`], [`StatusCallback`]) from its form body.
/// Unknown parameters are ignored: Twilio adds new ones at any time.
pub(crate) fn parse_webhook<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TwilioError> {
    Ok(serde_urlencoded::from_bytes(body)?)
}

/// A call's status, as in the REST `status` field and the webhooks' `CallStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub(crate) enum CallStatus {
    /// `queued`
    Queued,
    /// `initiated` (sent in callbacks only)
    Initiated,
    /// `ringing`
    Ringing,
    /// `in-progress` (also the `answered` event)
    InProgress,
    /// `completed`
    Completed,
    /// `busy`
    Busy,
    /// `failed`
    Failed,
    /// `no-answer`
    NoAnswer,
    /// `canceled`
    Canceled,
    /// A value this version does not know.
    Other(String),
}

impl From<String> for CallStatus {
    fn from(value: String) -> Self {
        match value.as_str() {
            "queued" => Self::Queued,
            "initiated" => Self::Initiated,
            "ringing" => Self::Ringing,
            "in-progress" => Self::InProgress,
            "completed" => Self::Completed,
            "busy" => Self::Busy,
            "failed" => Self::Failed,
            "no-answer" => Self::NoAnswer,
            "canceled" => Self::Canceled,
            _ => Self::Other(value),
        }
    }
}

impl CallStatus {
    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Queued => "queued",
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::InProgress => "in-progress",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::Failed => "failed",
            Self::NoAnswer => "no-answer",
            Self::Canceled => "canceled",
            Self::Other(value) => value,
        }
    }

    /// Whether the call is over (no later status can follow).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Busy | Self::Failed | Self::NoAnswer | Self::Canceled
        )
    }
}

/// Outcome of a `<Dial>`, the `DialCallStatus` of the action callback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub(crate) enum DialCallStatus {
    /// `completed`: answered and connected.
    Completed,
    /// `answered` (newer documentation and handlers).
    Answered,
    /// `busy`
    Busy,
    /// `no-answer`: not answered within the dial timeout.
    NoAnswer,
    /// `failed`: could not be routed.
    Failed,
    /// `canceled`: canceled through the REST API before an answer.
    Canceled,
    /// A value this version does not know.
    Other(String),
}

impl From<String> for DialCallStatus {
    fn from(value: String) -> Self {
        match value.as_str() {
            "completed" => Self::Completed,
            "answered" => Self::Answered,
            "busy" => Self::Busy,
            "no-answer" => Self::NoAnswer,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => Self::Other(value),
        }
    }
}

impl DialCallStatus {
    /// The wire value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Completed => "completed",
            Self::Answered => "answered",
            Self::Busy => "busy",
            Self::NoAnswer => "no-answer",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Other(value) => value,
        }
    }
}

/// Direction of a call leg, the webhooks' `Direction`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub(crate) enum Direction {
    /// `inbound`
    Inbound,
    /// `outbound-api`: created through the REST API.
    OutboundApi,
    /// `outbound-dial`: the child leg of a `<Dial>`.
    OutboundDial,
    /// A value this version does not know.
    Other(String),
}

impl From<String> for Direction {
    fn from(value: String) -> Self {
        match value.as_str() {
            "inbound" => Self::Inbound,
            "outbound-api" => Self::OutboundApi,
            "outbound-dial" => Self::OutboundDial,
            _ => Self::Other(value),
        }
    }
}

/// The voice webhook Twilio requests when a call reaches a number (`/twilio/incoming`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct IncomingCall {
    /// `AccountSid`
    pub account_sid: String,
    /// `CallSid`
    pub call_sid: String,
    /// `CallStatus`, normally `ringing`.
    pub call_status: CallStatus,
    /// `From`: the caller's number (or SIP URI, or a placeholder for withheld numbers).
    pub from: Option<String>,
    /// `To`: the number called.
    pub to: Option<String>,
    /// `Direction`
    pub direction: Option<Direction>,
    /// `ApiVersion`
    pub api_version: Option<String>,
    /// `CallerName` (caller-name lookup only).
    pub caller_name: Option<String>,
    /// `ForwardedFrom`
    pub forwarded_from: Option<String>,
    /// `ParentCallSid`
    pub parent_call_sid: Option<String>,
}

/// The request to a `<Dial action>` URL once the dialled leg has ended (`/twilio/dial-action`).
/// `CallSid` and `CallStatus` describe the caller's (parent) leg.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DialAction {
    /// `AccountSid`
    pub account_sid: String,
    /// `CallSid` of the caller's leg.
    pub call_sid: String,
    /// `CallStatus` of the caller's leg: `in-progress`, or `completed` if the caller hung up.
    pub call_status: CallStatus,
    /// `DialCallStatus`: how the dialled leg ended.
    pub dial_call_status: DialCallStatus,
    /// `DialCallSid`: the dialled (child) leg.
    pub dial_call_sid: Option<String>,
    /// `DialCallDuration`, seconds.
    pub dial_call_duration: Option<u32>,
    /// `DialBridged`: whether the two legs were actually connected.
    pub dial_bridged: Option<bool>,
    /// `From`
    pub from: Option<String>,
    /// `To`
    pub to: Option<String>,
    /// `Direction`
    pub direction: Option<Direction>,
    /// `RecordingUrl` (only with `<Dial record>`).
    pub recording_url: Option<String>,
}

impl DialAction {
    /// Whether the caller was connected to the person dialled: `DialCallStatus` is `completed`
    /// or `answered`, and `DialBridged` is not `false` (a callee who answers and hangs up during
    /// the whisper gives `completed` with `DialBridged=false`). Without `DialBridged` the status
    /// alone decides, as before Twilio added that parameter.
    pub fn transfer_succeeded(&self) -> bool {
        let answered = matches!(
            self.dial_call_status,
            DialCallStatus::Completed | DialCallStatus::Answered
        );
        answered && self.dial_bridged != Some(false)
    }
}

/// A call progress event sent to a `statusCallback` URL (`/twilio/status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StatusCallback {
    /// `AccountSid`
    pub account_sid: String,
    /// `CallSid` of the leg the event is about.
    pub call_sid: String,
    /// `CallStatus`
    pub call_status: CallStatus,
    /// `SequenceNumber`: events can arrive out of order; order them by this.
    pub sequence_number: Option<u32>,
    /// `Timestamp`, RFC 2822 (`Tue, 29 Sep 2026 10:00:00 +0000`).
    pub timestamp: Option<String>,
    /// `CallDuration`, seconds (terminal events).
    pub call_duration: Option<u32>,
    /// `Duration`
    pub duration: Option<u32>,
    /// `CallbackSource`, e.g. `call-progress-events`.
    pub callback_source: Option<String>,
    /// `SipResponseCode`, e.g. 200 or 486.
    pub sip_response_code: Option<u16>,
    /// `ParentCallSid` (child legs of a `<Dial>`).
    pub parent_call_sid: Option<String>,
    /// `AnsweredBy` (answering machine detection only).
    pub answered_by: Option<String>,
    /// `From`
    pub from: Option<String>,
    /// `To`
    pub to: Option<String>,
    /// `Direction`
    pub direction: Option<Direction>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::twilio::test_support::{pairs, webhook_body};

    #[test]
    fn dial_action_no_answer() {
        let dial: DialAction = parse_webhook(&webhook_body("dial-action-no-answer")).unwrap();
        assert_eq!(dial.account_sid, "AC00000000000000000000000000000000");
        assert_eq!(dial.call_sid, "CA11111111111111111111111111111111");
        assert_eq!(dial.call_status, CallStatus::InProgress);
        assert_eq!(dial.dial_call_status, DialCallStatus::NoAnswer);
        assert_eq!(
            dial.dial_call_sid.as_deref(),
            Some("CA22222222222222222222222222222222")
        );
        assert_eq!(dial.dial_call_duration, None);
        assert_eq!(dial.dial_bridged, Some(false));
        assert_eq!(dial.from.as_deref(), Some("+14158675309"));
        assert_eq!(dial.to.as_deref(), Some("+15005550006"));
        assert_eq!(dial.direction, Some(Direction::Inbound));
        assert!(!dial.transfer_succeeded());
    }

    #[test]
    fn dial_action_completed() {
        let dial: DialAction = parse_webhook(&webhook_body("dial-action-completed")).unwrap();
        assert_eq!(dial.dial_call_status, DialCallStatus::Completed);
        assert_eq!(dial.dial_call_duration, Some(37));
        assert_eq!(dial.dial_bridged, Some(true));
        assert!(dial.transfer_succeeded());
    }

    #[test]
    fn transfer_succeeded_needs_an_answer_and_no_failed_bridge() {
        let base: DialAction = parse_webhook(&webhook_body("dial-action-completed")).unwrap();
        let cases = [
            ("completed", Some(true), true),
            ("answered", Some(true), true),
            ("completed", None, true),
            ("answered", None, true),
            // The callee answered, then hung up during the whisper.
            ("completed", Some(false), false),
            ("answered", Some(false), false),
            ("busy", Some(true), false),
            ("no-answer", None, false),
            ("failed", None, false),
            ("canceled", None, false),
            ("something-new", Some(true), false),
        ];
        for (status, bridged, expected) in cases {
            let dial = DialAction {
                dial_call_status: DialCallStatus::from(status.to_string()),
                dial_bridged: bridged,
                ..base.clone()
            };
            assert_eq!(dial.transfer_succeeded(), expected, "{status} {bridged:?}");
        }
    }

    #[test]
    fn status_callback_completed() {
        let status: StatusCallback = parse_webhook(&webhook_body("status-completed")).unwrap();
        assert_eq!(status.call_sid, "CA11111111111111111111111111111111");
        assert_eq!(status.call_status, CallStatus::Completed);
        assert!(status.call_status.is_final());
        assert_eq!(status.call_duration, Some(42));
        assert_eq!(status.duration, Some(1));
        assert_eq!(status.sequence_number, Some(3));
        assert_eq!(
            status.timestamp.as_deref(),
            Some("Tue, 29 Sep 2026 10:00:00 +0000")
        );
        assert_eq!(
            status.callback_source.as_deref(),
            Some("call-progress-events")
        );
        assert_eq!(status.sip_response_code, Some(200));
        assert_eq!(status.direction, Some(Direction::Inbound));
        assert_eq!(status.parent_call_sid, None);
    }

    #[test]
    fn status_callback_busy_child_leg() {
        // Shape of the captured busy outbound leg in reference §6.4.
        let body = b"AccountSid=AC1&CallSid=CA3&CallStatus=busy&CallDuration=0\
                     &SipResponseCode=486&Direction=outbound-dial&ParentCallSid=CA1\
                     &AnsweredBy=human&SequenceNumber=2";
        let status: StatusCallback = parse_webhook(body).unwrap();
        assert_eq!(status.call_status, CallStatus::Busy);
        assert_eq!(status.call_duration, Some(0));
        assert_eq!(status.sip_response_code, Some(486));
        assert_eq!(status.direction, Some(Direction::OutboundDial));
        assert_eq!(status.parent_call_sid.as_deref(), Some("CA1"));
        assert_eq!(status.answered_by.as_deref(), Some("human"));
        assert!(!CallStatus::InProgress.is_final());
    }

    #[test]
    fn incoming_call() {
        let body = b"AccountSid=AC00000000000000000000000000000000&ApiVersion=2010-04-01\
                     &CallSid=CA11111111111111111111111111111111&CallStatus=ringing\
                     &Called=%2B15005550006&Caller=%2B14158675309&Direction=inbound\
                     &From=%2B14158675309&To=%2B15005550006&CallerName=Ada+%26+Co\
                     &FromCity=SAN+FRANCISCO&CallToken=%7B%22a%22%3A1%7D";
        let call: IncomingCall = parse_webhook(body).unwrap();
        assert_eq!(call.call_sid, "CA11111111111111111111111111111111");
        assert_eq!(call.account_sid, "AC00000000000000000000000000000000");
        assert_eq!(call.call_status, CallStatus::Ringing);
        assert_eq!(call.from.as_deref(), Some("+14158675309"));
        assert_eq!(call.to.as_deref(), Some("+15005550006"));
        assert_eq!(call.direction, Some(Direction::Inbound));
        assert_eq!(call.api_version.as_deref(), Some("2010-04-01"));
        assert_eq!(call.caller_name.as_deref(), Some("Ada & Co"));
        assert_eq!(call.forwarded_from, None);
    }

    #[test]
    fn unknown_values_and_params_are_kept_or_ignored_not_rejected() {
        let body = b"AccountSid=AC1&CallSid=CA1&CallStatus=on-hold&Direction=trunking\
                     &DialCallStatus=teleported&BrandNewParam=x";
        let dial: DialAction = parse_webhook(body).unwrap();
        assert_eq!(dial.call_status, CallStatus::Other("on-hold".into()));
        assert_eq!(dial.call_status.as_str(), "on-hold");
        assert_eq!(dial.direction, Some(Direction::Other("trunking".into())));
        assert_eq!(dial.dial_call_status.as_str(), "teleported");
        assert!(!dial.transfer_succeeded());
        for status in [
            "queued",
            "initiated",
            "ringing",
            "in-progress",
            "completed",
            "busy",
            "failed",
            "no-answer",
            "canceled",
        ] {
            let parsed = CallStatus::from(status.to_string());
            assert!(!matches!(parsed, CallStatus::Other(_)), "{status}");
            assert_eq!(parsed.as_str(), status);
        }
    }

    #[test]
    fn missing_required_fields_are_errors() {
        let no_call_sid = b"AccountSid=AC1&CallStatus=ringing";
        assert!(parse_webhook::<IncomingCall>(no_call_sid).is_err());
        let no_dial_status = b"AccountSid=AC1&CallSid=CA1&CallStatus=in-progress";
        assert!(parse_webhook::<DialAction>(no_dial_status).is_err());
        let bad_number = b"AccountSid=AC1&CallSid=CA1&CallStatus=completed&CallDuration=abc";
        assert!(matches!(
            parse_webhook::<StatusCallback>(bad_number),
            Err(TwilioError::Form(_))
        ));
        let ok = b"AccountSid=AC1&CallSid=CA1&CallStatus=completed&CallDuration=5";
        assert!(parse_webhook::<StatusCallback>(ok).is_ok());
    }

    #[test]
    fn form_params_keep_repeats_and_decode() {
        let params = form_params(b"Digits=1&Digits=2&Caller=%2B1+2&Empty=").unwrap();
        assert_eq!(
            params,
            pairs(&[
                ("Digits", "1"),
                ("Digits", "2"),
                ("Caller", "+1 2"),
                ("Empty", "")
            ])
        );
    }
}
