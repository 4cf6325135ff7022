//! Twilio wire formats: the `X-Twilio-Signature` check, the voice webhook forms, a TwiML
//! builder, REST error bodies and the form body of a live-call update. No I/O.
//!
//! Everything here follows `shared/reference/ultravox-twilio-protocol.md` §4; where that text
//! leaves a choice open, the behaviour of the official `twilio` helper libraries wins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Errors of the Twilio wire formats.
#[derive(Debug, thiserror::Error)]
pub enum TwilioError {
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

// ---------------------------------------------------------------------------------------------
// X-Twilio-Signature (reference §4.5)
// ---------------------------------------------------------------------------------------------

/// Name of the header carrying Twilio's request signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Signature";

/// Query parameter Twilio adds to the URL of a request with a JSON body.
pub const BODY_SHA256_PARAM: &str = "bodySHA256";

/// The string Twilio signs: the URL, then every parameter name followed by its value, names in
/// byte order; a name sent several times contributes each distinct value once, in byte order.
pub fn string_to_sign(url: &str, params: &[(String, String)]) -> String {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, value) in params {
        by_name.entry(name).or_default().insert(value);
    }
    let mut signed = url.to_owned();
    for (name, values) in by_name {
        for value in values {
            signed.push_str(name);
            signed.push_str(value);
        }
    }
    signed
}

/// The `X-Twilio-Signature` Twilio sends for a request to exactly `url` (scheme, host, port,
/// path and query as requested) with the decoded form parameters `params`: Base64 of
/// HMAC-SHA1 keyed with the account's auth token.
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(string_to_sign(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether `signature` is Twilio's signature of a form-encoded request to `url` with the
/// decoded parameters `params` (all of them: never filter Twilio's parameters first).
///
/// Like the official libraries, this accepts the URL without its port or with its port (the
/// scheme's default one added when it has none; Twilio has signed both ways, and the URL as
/// given is always one of the two), and, like the Node library, with `'` in the query string
/// written as `%27` or the other way round. The comparison is constant-time.
/// An empty or missing signature never validates.
pub fn validate_signature(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    candidate_urls(url).iter().any(|candidate| {
        let expected = compute_signature(auth_token, candidate, params);
        bool::from(expected.as_bytes().ct_eq(signature.as_bytes()))
    })
}

/// Lowercase hex SHA-256 of a raw request body, as Twilio puts it in `bodySHA256`.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// Whether a request with a JSON body is authentic: `url` must carry `bodySHA256` equal to the
/// SHA-256 of the raw `body`, and `signature` must sign `url` with no parameters.
pub fn validate_json_signature(auth_token: &str, url: &str, body: &[u8], signature: &str) -> bool {
    let Some(claimed) = query_param(url, BODY_SHA256_PARAM) else {
        return false;
    };
    let body_matches = bool::from(body_sha256(body).as_bytes().ct_eq(claimed.as_bytes()));
    let signature_matches = validate_signature(auth_token, url, &[], signature);
    body_matches && signature_matches
}

/// The first value of the query parameter `name` in `url`, percent-decoded.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query
        .split_once('#')
        .map_or(query, |(query, _fragment)| query);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs
        .into_iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// Every spelling of `url` Twilio may have signed: without port and with the default port,
/// each with the query's `'` as is, as `%27`, and `%27` as `'`.
fn candidate_urls(url: &str) -> Vec<String> {
    let mut candidates: Vec<String> = Vec::new();
    for base in [without_port(url), with_port(url)] {
        for candidate in [
            replace_in_query(&base, "'", "%27"),
            replace_in_query(&base, "%27", "'"),
            base,
        ] {
            if !candidates.contains(&candidate) {
                candidates.push(candidate);
            }
        }
    }
    candidates
}

fn replace_in_query(url: &str, from: &str, to: &str) -> String {
    match url.split_once('?') {
        Some((head, query)) => format!("{head}?{}", query.replace(from, to)),
        None => url.to_owned(),
    }
}

/// An absolute URL cut into the pieces the port quirk needs, without any normalisation.
struct UrlParts<'a> {
    /// `https://`
    scheme: &'a str,
    /// `user:pass@` or empty
    user_info: &'a str,
    host: &'a str,
    /// `:8443` or empty
    port: &'a str,
    /// path, query and fragment
    rest: &'a str,
}

fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let scheme_end = url.find("://")? + 3;
    let scheme_name = &url[..scheme_end - 3];
    let mut name_chars = scheme_name.chars();
    let valid_scheme = name_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return None;
    }
    let after_scheme = &url[scheme_end..];
    let authority_len = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_and_port = &authority[host_start..];
    // In an IPv6 literal the port can only follow the closing bracket.
    let search_from = host_and_port.rfind(']').map_or(0, |bracket| bracket + 1);
    let port_start = host_and_port[search_from..]
        .find(':')
        .map_or(host_and_port.len(), |colon| search_from + colon);
    Some(UrlParts {
        scheme: &url[..scheme_end],
        user_info: &authority[..host_start],
        host: &host_and_port[..port_start],
        port: &host_and_port[port_start..],
        rest: &after_scheme[authority_len..],
    })
}

/// `url` with any port removed.
fn without_port(url: &str) -> String {
    match split_url(url) {
        Some(p) => format!("{}{}{}{}", p.scheme, p.user_info, p.host, p.rest),
        None => url.to_owned(),
    }
}

/// `url` with the scheme's default port (443 for https, else 80) added when it has none.
fn with_port(url: &str) -> String {
    match split_url(url) {
        Some(p) if p.port.is_empty() => {
            let port = if p.scheme.eq_ignore_ascii_case("https://") {
                ":443"
            } else {
                ":80"
            };
            format!("{}{}{}{port}{}", p.scheme, p.user_info, p.host, p.rest)
        }
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook forms (reference §4.3, §4.4)
// ---------------------------------------------------------------------------------------------

/// The decoded name/value pairs of a form body, in wire order, repeats kept: what
/// [`validate_signature`] needs.
pub fn form_params(body: &[u8]) -> Result<Vec<(String, String)>, TwilioError> {
    Ok(serde_urlencoded::from_bytes(body)?)
}

/// A typed webhook ([`IncomingCall`], [`DialAction`], [`StatusCallback`]) from its form body.
/// Unknown parameters are ignored: Twilio adds new ones at any time.
pub fn parse_webhook<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, TwilioError> {
    Ok(serde_urlencoded::from_bytes(body)?)
}

/// A call's status, as in the REST `status` field and the webhooks' `CallStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum CallStatus {
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
pub enum DialCallStatus {
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
pub enum Direction {
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
pub struct IncomingCall {
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
pub struct DialAction {
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
pub struct StatusCallback {
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

// ---------------------------------------------------------------------------------------------
// TwiML (reference §3.1, §4.2; names as in the official `twilio.twiml.voice_response`)
// ---------------------------------------------------------------------------------------------

/// An HTTP method for a TwiML callback attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    /// `GET`
    Get,
    /// `POST`
    Post,
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Get => "GET",
            Self::Post => "POST",
        })
    }
}

/// A `<Number>` `statusCallbackEvent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallProgressEvent {
    /// `initiated`
    Initiated,
    /// `ringing`
    Ringing,
    /// `answered`
    Answered,
    /// `completed`
    Completed,
}

impl CallProgressEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Initiated => "initiated",
            Self::Ringing => "ringing",
            Self::Answered => "answered",
            Self::Completed => "completed",
        }
    }
}

/// An absolute `http`/`https` URL, as TwiML given to a live call requires (Twilio error 15004).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsoluteUrl(String);

impl AbsoluteUrl {
    /// Accepts `url` if it is `http://` or `https://` followed by a host.
    pub fn parse(url: &str) -> Result<Self, TwilioError> {
        let absolute = split_url(url).is_some_and(|parts| {
            let scheme = parts.scheme.to_ascii_lowercase();
            (scheme == "https://" || scheme == "http://") && !parts.host.is_empty()
        });
        if absolute {
            Ok(Self(url.to_owned()))
        } else {
            Err(TwilioError::NotAbsoluteUrl(url.to_owned()))
        }
    }

    /// The URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A TwiML `<Response>` document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// The verbs, run in order.
    pub verbs: Vec<Verb>,
}

/// One verb of a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verb {
    /// `<Connect>` holding one `<Stream>` (a bidirectional media stream, e.g. to Ultravox).
    Connect(Stream),
    /// `<Dial>`
    Dial(Dial),
    /// `<Say>`
    Say(Say),
    /// `<Hangup/>`
    Hangup,
    /// `<Record>`
    Record(Record),
    /// `<Pause>`
    Pause(Pause),
    /// `<Redirect>`
    Redirect(Redirect),
    /// `<Gather>` of keypad digits, with an optional `<Say>` prompt inside.
    Gather(Gather),
}

/// `<Gather input="dtmf">`: the transfer's acceptance gate on the on-call person's leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gather {
    /// `action`: requested with `Digits` when a key is pressed.
    pub action: String,
    /// `method` of the action request.
    pub method: Option<HttpMethod>,
    /// `numDigits`
    pub num_digits: u32,
    /// `timeout`: seconds to wait for a key.
    pub timeout: u32,
    /// The prompt said while listening.
    pub say: Option<Say>,
}

/// `<Stream>` inside `<Connect>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// `url`: the `wss://` URL to stream to.
    pub url: String,
    /// `name`
    pub name: Option<String>,
    /// `statusCallback`
    pub status_callback: Option<String>,
    /// `statusCallbackMethod`
    pub status_callback_method: Option<HttpMethod>,
    /// `<Parameter name value/>` children, passed to the stream's `start` message.
    pub parameters: Vec<(String, String)>,
}

impl Stream {
    /// A stream to `url` with no other attribute.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: None,
            status_callback: None,
            status_callback_method: None,
            parameters: Vec::new(),
        }
    }
}

/// `<Dial>` with `<Number>` children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// `action`: requested when the dialled leg ends, with the outcome.
    pub action: AbsoluteUrl,
    /// `method` of the action request (Twilio's default: POST).
    pub method: Option<HttpMethod>,
    /// `timeout`: seconds to let the number ring (Twilio's default: 30).
    pub timeout: Option<u32>,
    /// `callerId`: the number shown to the person dialled.
    pub caller_id: Option<String>,
    /// `answerOnBridge`: keep the caller hearing ringing until the callee answers.
    pub answer_on_bridge: Option<bool>,
    /// `timeLimit`: maximum call length in seconds (Twilio's default: 14400).
    pub time_limit: Option<u32>,
    /// The numbers to dial (all at once).
    pub numbers: Vec<Number>,
}

impl Dial {
    /// Dials `number`, reporting the outcome to `action`.
    pub fn new(action: AbsoluteUrl, number: Number) -> Self {
        Self {
            action,
            method: None,
            timeout: None,
            caller_id: None,
            answer_on_bridge: None,
            time_limit: None,
            numbers: vec![number],
        }
    }
}

/// `<Number>` inside `<Dial>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    /// The phone number to dial (E.164).
    pub number: String,
    /// `url`: TwiML played to the callee before connecting (the whisper).
    pub url: Option<String>,
    /// `method` of the whisper request.
    pub method: Option<HttpMethod>,
    /// `statusCallback`: where this leg's progress events go.
    pub status_callback: Option<String>,
    /// `statusCallbackEvent`: which events to send (Twilio's default: `completed`).
    pub status_callback_event: Vec<CallProgressEvent>,
    /// `machineDetection="Enable"`: Twilio sends `AnsweredBy` with the whisper request.
    pub machine_detection: bool,
}

impl Number {
    /// `number` with no other attribute.
    pub fn new(number: impl Into<String>) -> Self {
        Self {
            number: number.into(),
            url: None,
            method: None,
            status_callback: None,
            status_callback_event: Vec::new(),
            machine_detection: false,
        }
    }
}

/// `<Say>`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Say {
    /// What to say.
    pub text: String,
    /// `voice`, e.g. `Polly.Joanna`.
    pub voice: Option<String>,
    /// `language`, e.g. `en-US`.
    pub language: Option<String>,
}

impl Say {
    /// Says `text` in the default voice.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            voice: None,
            language: None,
        }
    }
}

/// `<Record>`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `action`: requested when the recording ends.
    pub action: String,
    /// `maxLength`, seconds.
    pub max_length: u32,
    /// `playBeep`
    pub play_beep: bool,
    /// `transcribe`
    pub transcribe: Option<bool>,
    /// `recordingStatusCallback`
    pub recording_status_callback: Option<String>,
}

/// `<Pause>`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    /// `length`, seconds.
    pub length: u32,
}

/// `<Redirect>`: continue with the TwiML at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The URL of the next TwiML document.
    pub url: String,
    /// `method`
    pub method: Option<HttpMethod>,
}

macro_rules! verb_from {
    ($($kind:ident),*) => {
        $(impl From<$kind> for Verb {
            fn from(verb: $kind) -> Self {
                Verb::$kind(verb)
            }
        })*
    };
}
verb_from!(Dial, Say, Record, Pause, Redirect, Gather);

impl Response {
    /// An empty `<Response/>`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a verb.
    pub fn verb(mut self, verb: impl Into<Verb>) -> Self {
        self.verbs.push(verb.into());
        self
    }

    /// The document, starting with `<?xml version="1.0" encoding="UTF-8"?>` like the official
    /// library. Every value is escaped; characters XML 1.0 cannot carry at all (control
    /// characters other than tab, line feed and carriage return) are dropped, so that the
    /// document is always well-formed.
    pub fn to_xml(&self) -> String {
        let mut writer = Writer::new(Vec::new());
        self.write(&mut writer)
            .expect("writing XML to a Vec cannot fail");
        String::from_utf8(writer.into_inner()).expect("the XML writer only writes UTF-8 strings")
    }

    fn write(&self, w: &mut Writer<Vec<u8>>) -> io::Result<()> {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.create_element("Response")
            .write_inner_content(|w| self.verbs.iter().try_for_each(|verb| write_verb(w, verb)))?;
        Ok(())
    }
}

/// Attribute list of one element; `None` values are left out.
#[derive(Default)]
struct Attrs(Vec<(&'static str, String)>);

impl Attrs {
    fn set(mut self, name: &'static str, value: impl fmt::Display) -> Self {
        self.0.push((name, xml_chars(&value.to_string())));
        self
    }

    fn opt(self, name: &'static str, value: Option<impl fmt::Display>) -> Self {
        match value {
            Some(value) => self.set(name, value),
            None => self,
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(name, value)| (*name, value.as_str()))
    }
}

/// `text` without the characters XML 1.0 cannot represent, even escaped.
fn xml_chars(text: &str) -> String {
    text.chars()
        .filter(|&c| {
            matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
                || c >= '\u{10000}'
        })
        .collect()
}

type XmlWriter = Writer<Vec<u8>>;

/// Writes `<name attrs>text</name>`.
fn text_element(w: &mut XmlWriter, name: &str, attrs: Attrs, text: &str) -> io::Result<()> {
    let text = xml_chars(text);
    w.create_element(name)
        .with_attributes(attrs.pairs())
        .write_text_content(BytesText::new(&text))?;
    Ok(())
}

/// Writes `<name attrs/>`.
fn empty_element(w: &mut XmlWriter, name: &str, attrs: Attrs) -> io::Result<()> {
    w.create_element(name)
        .with_attributes(attrs.pairs())
        .write_empty()?;
    Ok(())
}

fn write_verb(w: &mut XmlWriter, verb: &Verb) -> io::Result<()> {
    match verb {
        Verb::Connect(stream) => {
            w.create_element("Connect")
                .write_inner_content(|w| write_stream(w, stream))?;
            Ok(())
        }
        Verb::Dial(dial) => write_dial(w, dial),
        Verb::Say(say) => text_element(
            w,
            "Say",
            Attrs::default()
                .opt("voice", say.voice.as_ref())
                .opt("language", say.language.as_ref()),
            &say.text,
        ),
        Verb::Hangup => empty_element(w, "Hangup", Attrs::default()),
        Verb::Record(record) => empty_element(
            w,
            "Record",
            Attrs::default()
                .set("action", &record.action)
                .set("maxLength", record.max_length)
                .set("playBeep", record.play_beep)
                .opt("transcribe", record.transcribe)
                .opt(
                    "recordingStatusCallback",
                    record.recording_status_callback.as_ref(),
                ),
        ),
        Verb::Pause(pause) => {
            empty_element(w, "Pause", Attrs::default().set("length", pause.length))
        }
        Verb::Redirect(redirect) => text_element(
            w,
            "Redirect",
            Attrs::default().opt("method", redirect.method),
            &redirect.url,
        ),
        Verb::Gather(gather) => {
            let attrs = Attrs::default()
                .set("action", &gather.action)
                .set("input", "dtmf")
                .opt("method", gather.method)
                .set("numDigits", gather.num_digits)
                .set("timeout", gather.timeout);
            match &gather.say {
                None => empty_element(w, "Gather", attrs),
                Some(say) => {
                    w.create_element("Gather")
                        .with_attributes(attrs.pairs())
                        .write_inner_content(|w| write_verb(w, &Verb::Say(say.clone())))?;
                    Ok(())
                }
            }
        }
    }
}

fn write_stream(w: &mut XmlWriter, stream: &Stream) -> io::Result<()> {
    let attrs = Attrs::default()
        .set("url", &stream.url)
        .opt("name", stream.name.as_ref())
        .opt("statusCallback", stream.status_callback.as_ref())
        .opt("statusCallbackMethod", stream.status_callback_method);
    if stream.parameters.is_empty() {
        return empty_element(w, "Stream", attrs);
    }
    w.create_element("Stream")
        .with_attributes(attrs.pairs())
        .write_inner_content(|w| {
            stream.parameters.iter().try_for_each(|(name, value)| {
                empty_element(
                    w,
                    "Parameter",
                    Attrs::default().set("name", name).set("value", value),
                )
            })
        })?;
    Ok(())
}

fn write_dial(w: &mut XmlWriter, dial: &Dial) -> io::Result<()> {
    let attrs = Attrs::default()
        .set("action", dial.action.as_str())
        .opt("method", dial.method)
        .opt("timeout", dial.timeout)
        .opt("callerId", dial.caller_id.as_ref())
        .opt("answerOnBridge", dial.answer_on_bridge)
        .opt("timeLimit", dial.time_limit);
    w.create_element("Dial")
        .with_attributes(attrs.pairs())
        .write_inner_content(|w| dial.numbers.iter().try_for_each(|n| write_number(w, n)))?;
    Ok(())
}

fn write_number(w: &mut XmlWriter, number: &Number) -> io::Result<()> {
    let events = (!number.status_callback_event.is_empty()).then(|| {
        let names: Vec<&str> = number
            .status_callback_event
            .iter()
            .map(|event| event.as_str())
            .collect();
        names.join(" ")
    });
    let attrs = Attrs::default()
        .opt("url", number.url.as_ref())
        .opt("method", number.method)
        .opt("statusCallback", number.status_callback.as_ref())
        .opt("statusCallbackEvent", events)
        .opt(
            "machineDetection",
            number.machine_detection.then_some("Enable"),
        );
    text_element(w, "Number", attrs, &number.number)
}

// ---------------------------------------------------------------------------------------------
// REST: live-call update and error bodies (reference §4.1, §6.5)
// ---------------------------------------------------------------------------------------------

/// Longest inline `Twiml` Twilio accepts, in characters (Twilio error 32018).
pub const MAX_INLINE_TWIML_CHARS: usize = 4000;

/// How long after a call starts a 404 from the Calls resource is taken for Twilio not having
/// caught up yet (the original system's "404 race"), and so retried.
pub const NOT_FOUND_GRACE: Duration = Duration::from_secs(10);

/// The path of the Calls resource of one call, to `POST` an update to (under
/// `https://api.twilio.com`).
pub fn call_resource_path(account_sid: &str, call_sid: &str) -> String {
    format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json")
}

/// The form fields of a live-call update that replaces the call's TwiML: `Twiml` only (it
/// excludes `Url`). Fails when the document is longer than Twilio accepts.
pub fn update_call_form(twiml: &str) -> Result<Vec<(&'static str, String)>, TwilioError> {
    let chars = twiml.chars().count();
    if chars > MAX_INLINE_TWIML_CHARS {
        return Err(TwilioError::TwimlTooLong { chars });
    }
    Ok(vec![("Twiml", twiml.to_owned())])
}

/// A Twilio REST error, from the legacy body `{"code","message","more_info","status"}` or the
/// RFC 9457 body `{"type","title","status","code","detail",...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestError {
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
pub const ERROR_INVALID_CALL_STATE: u32 = 21220;

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
pub enum FailureKind {
    /// Retry with backoff.
    Transient,
    /// Fail at once (for a transfer: mark it failed and create the callback request).
    Permanent,
}

#[cfg(test)]
mod tests {
    use super::*;

    use quick_xml::Reader;
    use quick_xml::escape::resolve_predefined_entity;
    use quick_xml::events::BytesStart;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    // ---- signatures: official vectors, reference §4.5 (auth token 12345) -------------------

    const TOKEN: &str = "12345";
    const T1_URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";
    const T1_SIGNATURE: &str = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
    const BODY: &str = r#"{"property": "value", "boolean": true}"#;
    const BODY_HASH: &str = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";

    fn t1_params() -> Vec<(String, String)> {
        pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    /// `params` with the value of `name` replaced.
    fn with_value(params: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
        params
            .iter()
            .map(|(n, v)| {
                let v = if n == name { value } else { v.as_str() };
                (n.clone(), v.to_string())
            })
            .collect()
    }

    #[test]
    fn t1_signature_and_its_mutations() {
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, T1_URL, &params), T1_SIGNATURE);
        assert!(validate_signature(TOKEN, T1_URL, &params, T1_SIGNATURE));
        // Parameter order on the wire does not matter.
        let mut reversed = params.clone();
        reversed.reverse();
        assert!(validate_signature(TOKEN, T1_URL, &reversed, T1_SIGNATURE));

        let tampered = with_value(&params, "Digits", "1235");
        assert!(!validate_signature(TOKEN, T1_URL, &tampered, T1_SIGNATURE));
        assert!(!validate_signature("12346", T1_URL, &params, T1_SIGNATURE));
        let missing: Vec<_> = params.iter().filter(|(n, _)| n != "To").cloned().collect();
        assert!(!validate_signature(TOKEN, T1_URL, &missing, T1_SIGNATURE));
        let mut extra = params.clone();
        extra.push(("Extra".into(), "1".into()));
        assert!(!validate_signature(TOKEN, T1_URL, &extra, T1_SIGNATURE));
        let other_path = "https://mycompany.com/other.php?foo=1&bar=2";
        assert!(!validate_signature(
            TOKEN,
            other_path,
            &params,
            T1_SIGNATURE
        ));
        let reordered_query = "https://mycompany.com/myapp.php?bar=2&foo=1";
        assert!(!validate_signature(
            TOKEN,
            reordered_query,
            &params,
            T1_SIGNATURE
        ));
    }

    #[test]
    fn t2_signed_with_default_https_port() {
        let url = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        let signature = "kvajT1Ptam85bY51eRf/AJRuM3w=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        assert!(validate_signature(TOKEN, url, &params, signature));
        assert!(validate_signature(TOKEN, T1_URL, &params, signature));
        let wrong_port = "https://mycompany.com:8443/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, wrong_port, &params, signature));
        let http = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, http, &params, signature));
    }

    #[test]
    fn t3_signed_with_default_http_port() {
        let url = "http://mycompany.com:80/myapp.php?foo=1&bar=2";
        let signature = "0ZXoZLH/DfblKGATFgpif+LLRf4=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        let without_port = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(validate_signature(TOKEN, without_port, &params, signature));
        assert!(validate_signature(TOKEN, url, &params, signature));
        // https's default port is 443, not 80.
        let https = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, https, &params, signature));
    }

    #[test]
    fn t4_signed_with_custom_port() {
        let url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2";
        let signature = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        assert!(validate_signature(TOKEN, url, &params, signature));
        let other_port = "http://mycompany.com:1235/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, other_port, &params, signature));
        let no_port = "http://mycompany.com/myapp.php?foo=1&bar=2";
        assert!(!validate_signature(TOKEN, no_port, &params, signature));
    }

    #[test]
    fn t5_custom_port_validates_port_less_signature() {
        let url = "https://mycompany.com:1234/myapp.php?foo=1&bar=2";
        let params = t1_params();
        assert!(validate_signature(TOKEN, url, &params, T1_SIGNATURE));
        let tampered = with_value(&params, "From", "+14158675300");
        assert!(!validate_signature(TOKEN, url, &tampered, T1_SIGNATURE));
    }

    #[test]
    fn t6_repeated_name_counts_each_distinct_value_once_sorted() {
        let signature = "IK+Dwps556ElfBT0I3Rgjkr1wJU=";
        let params = pairs(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(compute_signature(TOKEN, T1_URL, &params), signature);
        let deduplicated = pairs(&[
            ("Digits", "1234"),
            ("Sid", "CA123"),
            ("Digits", "5678"),
            ("SidAccount", "AC123"),
        ]);
        assert!(validate_signature(TOKEN, T1_URL, &deduplicated, signature));
        assert_eq!(
            string_to_sign("", &params),
            "Digits1234Digits5678SidCA123SidAccountAC123"
        );
        let mut more = params.clone();
        more.push(("Digits".into(), "9999".into()));
        assert!(!validate_signature(TOKEN, T1_URL, &more, signature));
    }

    #[test]
    fn t7_repeated_name_in_either_order() {
        let signature = "83O6e2vORAoJHUNzJjDWN1jz+BA=";
        let forward = pairs(&[
            ("MessagingBinding.Address", "+1325xxxxxxx"),
            ("MessagingBinding.Address", "+1415xxxxxxx"),
        ]);
        let backward: Vec<_> = forward.iter().rev().cloned().collect();
        assert!(validate_signature(TOKEN, T1_URL, &forward, signature));
        assert!(validate_signature(TOKEN, T1_URL, &backward, signature));
        let one = pairs(&[("MessagingBinding.Address", "+1325xxxxxxx")]);
        assert!(!validate_signature(TOKEN, T1_URL, &one, signature));
    }

    #[test]
    fn t9_credentials_in_url_stay_signed() {
        let url = "https://user@mycompany.com/myapp.php?foo=1&bar=2";
        let signature = "2YRLlVAflCqxaNicjMpJcSTgzSs=";
        let params = t1_params();
        assert_eq!(compute_signature(TOKEN, url, &params), signature);
        let with_port = "https://user@mycompany.com:443/myapp.php?foo=1&bar=2";
        assert!(validate_signature(TOKEN, with_port, &params, signature));
        assert!(!validate_signature(TOKEN, T1_URL, &params, signature));
    }

    #[test]
    fn t11_body_hash() {
        assert_eq!(body_sha256(BODY.as_bytes()), BODY_HASH);
        assert_ne!(
            body_sha256(b"{\"property\": \"value\", \"boolean\": false}"),
            BODY_HASH
        );
        // Twilio's JSON sample (reference §4.5).
        assert_eq!(
            body_sha256(br#"{"CallSid":"CA1234567890ABCDE","Caller":"+12349013030"}"#),
            "5ccde7145dfb8f56479710896586cb9d5911809d83afbe34627818790db0aec9"
        );
    }

    #[test]
    fn t12_json_body_with_other_query_params() {
        let url = format!("{T1_URL}&bodySHA256={BODY_HASH}");
        let signature = "a9nBmqA0ju/hNViExpshrM61xv4=";
        assert_eq!(compute_signature(TOKEN, &url, &[]), signature);
        assert!(validate_json_signature(
            TOKEN,
            &url,
            BODY.as_bytes(),
            signature
        ));
        let tampered_body = br#"{"property": "value", "boolean": false}"#;
        assert!(!validate_json_signature(
            TOKEN,
            &url,
            tampered_body,
            signature
        ));
        assert!(!validate_json_signature(
            "54321",
            &url,
            BODY.as_bytes(),
            signature
        ));
        assert!(!validate_json_signature(
            TOKEN,
            &url,
            BODY.as_bytes(),
            T1_SIGNATURE
        ));
    }

    #[test]
    fn t13_json_body_hash_only_query_param() {
        let url = format!("https://mycompany.com/myapp.php?bodySHA256={BODY_HASH}");
        let signature = "y77kIzt2vzLz71DgmJGsen2scGs=";
        assert_eq!(compute_signature(TOKEN, &url, &[]), signature);
        assert!(validate_json_signature(
            TOKEN,
            &url,
            BODY.as_bytes(),
            signature
        ));
        let with_port = format!("https://mycompany.com:443/myapp.php?bodySHA256={BODY_HASH}");
        assert!(validate_json_signature(
            TOKEN,
            &with_port,
            BODY.as_bytes(),
            signature
        ));
        assert!(!validate_json_signature(TOKEN, &url, b"{}", signature));
    }

    #[test]
    fn json_body_without_body_hash_never_validates() {
        // Signed correctly, but nothing ties the body to the signature.
        let signature = compute_signature(TOKEN, T1_URL, &[]);
        assert!(validate_signature(TOKEN, T1_URL, &[], &signature));
        assert!(!validate_json_signature(
            TOKEN,
            T1_URL,
            BODY.as_bytes(),
            &signature
        ));
    }

    #[test]
    fn t15_docs_example_string_to_sign() {
        let params = pairs(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]);
        assert_eq!(
            string_to_sign(T1_URL, &params),
            "https://mycompany.com/myapp.php?foo=1&bar=2CallSidCA1234567890ABCDECaller+12349013030\
             Digits1234From+12349013030To+18005551212"
        );
        let signature = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
        assert_eq!(compute_signature(TOKEN, T1_URL, &params), signature);
        let tampered = with_value(&params, "Caller", "+12349013031");
        assert!(!validate_signature(TOKEN, T1_URL, &tampered, signature));
    }

    #[test]
    fn n1_changed_query_value_fails() {
        let signature = compute_signature("s3cr3t", "https://example.com/path?test=param", &[]);
        assert_eq!(signature, "loLgTitFAoWx57yy5oEU4Hlddzw=");
        let target = "https://example.com/path?test=param2";
        assert!(!validate_signature("s3cr3t", target, &[], &signature));
        assert!(validate_signature(
            "s3cr3t",
            "https://example.com/path?test=param",
            &[],
            &signature
        ));
    }

    #[test]
    fn n2_single_quote_and_percent_27_are_interchangeable_in_the_query() {
        let raw = "https://example.com/path?test=param'WithQuote";
        let escaped = "https://example.com/path?test=param%27WithQuote";
        // Both values as computed by the official twilio 9.13.0 package.
        let signed_raw = "GfI7onHX/KQ2k1oVS3cUTVk4IEw=";
        let signed_escaped = "HkuXLxVQ7zHv9LmGpzlLuGaxhJY=";
        assert_eq!(compute_signature("s3cr3t", raw, &[]), signed_raw);
        assert_eq!(compute_signature("s3cr3t", escaped, &[]), signed_escaped);
        for signature in [signed_raw, signed_escaped] {
            for url in [raw, escaped] {
                assert!(
                    validate_signature("s3cr3t", url, &[], signature),
                    "{url} {signature}"
                );
            }
            let other = "https://example.com/path?test=param%22WithQuote";
            assert!(!validate_signature("s3cr3t", other, &[], signature));
        }
        // Only the query string is re-spelled, never the path.
        let in_path = compute_signature("s3cr3t", "https://example.com/it's", &[]);
        assert!(!validate_signature(
            "s3cr3t",
            "https://example.com/it%27s",
            &[],
            &in_path
        ));
    }

    #[test]
    fn n3_wrong_or_missing_signature_fails() {
        let params = t1_params();
        assert!(!validate_signature(
            TOKEN,
            T1_URL,
            &params,
            "WRONG_SIGNATURE"
        ));
        assert!(!validate_signature(TOKEN, T1_URL, &params, ""));
        // A prefix of the right signature is not enough.
        assert!(!validate_signature(
            TOKEN,
            T1_URL,
            &params,
            &T1_SIGNATURE[..27]
        ));
        assert!(!validate_json_signature(TOKEN, T1_URL, b"", ""));
    }

    #[test]
    fn url_port_variants_keep_everything_else() {
        assert_eq!(
            without_port("https://u:p@host:8443/a?b=:1"),
            "https://u:p@host/a?b=:1"
        );
        assert_eq!(
            with_port("https://u:p@host/a?b=:1"),
            "https://u:p@host:443/a?b=:1"
        );
        assert_eq!(with_port("HTTP://host?x"), "HTTP://host:80?x");
        assert_eq!(without_port("http://[::1]:8080/x"), "http://[::1]/x");
        assert_eq!(with_port("https://[::1]/x"), "https://[::1]:443/x");
        assert_eq!(with_port("https://host:1234/x"), "https://host:1234/x");
        assert_eq!(without_port("not a url"), "not a url");
        assert_eq!(with_port("/relative?a=1"), "/relative?a=1");
    }

    // ---- webhook fixtures, reference §6.4 --------------------------------------------------

    #[derive(Deserialize)]
    struct SignedWebhook {
        name: String,
        url: String,
        auth_token: String,
        /// As computed by the official `twilio` 9.13.0 (PyPI) and 6.2.0 (npm) packages.
        signature: String,
        body: String,
    }

    fn webhook_fixtures() -> Vec<SignedWebhook> {
        include_str!("../../fixtures/twilio/webhooks.jsonl")
            .lines()
            .map(|line| serde_json::from_str(line).expect("fixture line"))
            .collect()
    }

    fn webhook_body(name: &str) -> Vec<u8> {
        let fixture = webhook_fixtures().into_iter().find(|f| f.name == name);
        fixture.expect("fixture exists").body.into_bytes()
    }

    #[test]
    fn section_6_4_fixtures_are_signed_over_decoded_values() {
        let fixtures = webhook_fixtures();
        assert_eq!(fixtures.len(), 3);
        for fixture in fixtures {
            let params = form_params(fixture.body.as_bytes()).unwrap();
            let (token, url, signature) = (&fixture.auth_token, &fixture.url, &fixture.signature);
            assert_eq!(
                &compute_signature(token, url, &params),
                signature,
                "{}",
                fixture.name
            );
            assert!(validate_signature(token, url, &params, signature));

            let tampered = with_value(&params, "CallSid", "CA11111111111111111111111111111112");
            assert!(!validate_signature(token, url, &tampered, signature));
            let other_url = url.replace("example.com", "example.org");
            assert!(!validate_signature(token, &other_url, &params, signature));
            // Signing the still-encoded values (`%2B`, `+`) gives another signature.
            let raw: Vec<(String, String)> = fixture
                .body
                .split('&')
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap();
                    (name.to_string(), value.to_string())
                })
                .collect();
            assert_ne!(&compute_signature(token, url, &raw), signature);
        }
    }

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

    // ---- TwiML ------------------------------------------------------------------------------

    /// An XML element reduced to what Twilio reads: name, attributes (unordered), text and
    /// child elements.
    #[derive(Debug, PartialEq)]
    struct Node {
        name: String,
        attrs: BTreeMap<String, String>,
        text: String,
        children: Vec<Node>,
    }

    fn node(start: &BytesStart) -> Node {
        let attrs = start
            .attributes()
            .map(|attr| {
                let attr = attr.expect("well-formed attribute");
                let value = attr
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .unwrap();
                (attr.key.as_ref().to_string(), value.into_owned())
            })
            .collect();
        Node {
            name: start.name().as_ref().to_string(),
            attrs,
            text: String::new(),
            children: Vec::new(),
        }
    }

    /// Parses a whole document; panics if it is not well-formed XML with one root.
    fn tree(xml: &str) -> Node {
        let mut reader = Reader::from_str(xml);
        let mut open: Vec<Node> = Vec::new();
        let mut root = None;
        let mut finish = |open: &mut Vec<Node>, done: Node| match open.last_mut() {
            Some(parent) => parent.children.push(done),
            None => {
                assert!(root.is_none(), "a second root element");
                root = Some(done);
            }
        };
        loop {
            let text = match reader.read_event().expect("well-formed XML") {
                Event::Start(start) => {
                    open.push(node(&start));
                    continue;
                }
                Event::Empty(start) => {
                    finish(&mut open, node(&start));
                    continue;
                }
                Event::End(_) => {
                    let done = open.pop().expect("balanced tags");
                    finish(&mut open, done);
                    continue;
                }
                Event::Text(text) => text.xml10_content().into_owned(),
                Event::CData(data) => data.xml10_content().into_owned(),
                Event::GeneralRef(reference) => match reference.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => resolve_predefined_entity(&reference)
                        .expect("only predefined entities")
                        .to_string(),
                },
                Event::Decl(_) => continue,
                Event::Eof => break,
                other => panic!("unexpected XML event {other:?}"),
            };
            match open.last_mut() {
                Some(element) => element.text.push_str(&text),
                None => assert!(text.trim().is_empty(), "text outside the root: {text:?}"),
            }
        }
        assert!(open.is_empty(), "unclosed elements");
        root.expect("a root element")
    }

    const DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

    fn assert_same_twiml(ours: &Response, official: &str) {
        let xml = ours.to_xml();
        assert!(xml.starts_with(DECLARATION), "{xml}");
        assert!(official.starts_with(DECLARATION), "{official}");
        assert_eq!(
            tree(&xml),
            tree(official),
            "\nours:     {xml}\nofficial: {official}"
        );
    }

    fn url(value: &str) -> AbsoluteUrl {
        AbsoluteUrl::parse(value).unwrap()
    }

    fn bridge() -> Response {
        Response::new().verb(Verb::Connect(Stream::new(
            "wss://example.ultravox.ai/calls/abc/join",
        )))
    }

    fn transfer() -> Response {
        Response::new().verb(Dial {
            timeout: Some(20),
            ..Dial::new(
                url("https://example.com/dial-action"),
                Number::new("+15558675310"),
            )
        })
    }

    #[test]
    fn reference_6_6_bridge() {
        let official = include_str!("../../fixtures/twilio/bridge.xml");
        assert_same_twiml(&bridge(), official);
        let other = Response::new().verb(Verb::Connect(Stream::new("wss://example.ultravox.ai/x")));
        assert_ne!(tree(&other.to_xml()), tree(official));
    }

    #[test]
    fn reference_6_6_transfer() {
        let official = include_str!("../../fixtures/twilio/transfer.xml");
        assert_same_twiml(&transfer(), official);
        let Some(Verb::Dial(dial)) = transfer().verbs.pop() else {
            unreachable!()
        };
        let longer = Response::new().verb(Dial {
            timeout: Some(30),
            ..dial.clone()
        });
        assert_ne!(tree(&longer.to_xml()), tree(official));
        let with_method = Response::new().verb(Dial {
            method: Some(HttpMethod::Post),
            ..dial
        });
        assert_ne!(tree(&with_method.to_xml()), tree(official));
    }

    // The lib-*.xml fixtures were produced with the official `twilio` 9.13.0 package
    // (`twilio.twiml.voice_response`), to pin every attribute name we emit.

    #[test]
    fn official_dial_with_every_attribute() {
        let whisper = Number {
            url: Some("https://svc.example/twilio/whisper?session=abc123".into()),
            method: Some(HttpMethod::Post),
            status_callback: Some("https://svc.example/twilio/status".into()),
            status_callback_event: vec![
                CallProgressEvent::Initiated,
                CallProgressEvent::Ringing,
                CallProgressEvent::Answered,
                CallProgressEvent::Completed,
            ],
            ..Number::new("+15558675310")
        };
        let action = url("https://svc.example/twilio/dial-action?session=abc123&leg=1");
        let mut dial = Dial {
            method: Some(HttpMethod::Post),
            timeout: Some(20),
            caller_id: Some("+15005550006".into()),
            answer_on_bridge: Some(true),
            time_limit: Some(3600),
            ..Dial::new(action, whisper)
        };
        dial.numbers.push(Number::new("+15558675311"));
        let official = include_str!("../../fixtures/twilio/lib-dial-full.xml");
        assert_same_twiml(&Response::new().verb(dial.clone()), official);
        dial.answer_on_bridge = Some(false);
        assert_ne!(tree(&Response::new().verb(dial).to_xml()), tree(official));
    }

    #[test]
    fn official_stream_with_parameters() {
        let stream = Stream {
            name: Some("ultravox".into()),
            status_callback: Some("https://svc.example/twilio/stream-status".into()),
            status_callback_method: Some(HttpMethod::Post),
            parameters: vec![
                (
                    "callSid".into(),
                    "CA11111111111111111111111111111111".into(),
                ),
                ("tenant".into(), "clinic-1".into()),
            ],
            ..Stream::new("wss://example.ultravox.ai/calls/abc/join?token=x&y=1")
        };
        let official = include_str!("../../fixtures/twilio/lib-stream-full.xml");
        assert_same_twiml(
            &Response::new().verb(Verb::Connect(stream.clone())),
            official,
        );
        let mut reordered = stream;
        reordered.parameters.reverse();
        let ours = Response::new().verb(Verb::Connect(reordered));
        assert_ne!(tree(&ours.to_xml()), tree(official));
    }

    #[test]
    fn official_say_pause_record_redirect_hangup() {
        let response = Response::new()
            .verb(Say {
                voice: Some("Polly.Joanna".into()),
                language: Some("en-US".into()),
                ..Say::new("Sorry, nobody answered. Please leave a message after the tone.")
            })
            .verb(Pause { length: 1 })
            .verb(Record {
                action: "https://svc.example/twilio/recorded?session=abc123".into(),
                max_length: 120,
                play_beep: true,
                transcribe: Some(false),
                recording_status_callback: Some(
                    "https://svc.example/twilio/recording-status".into(),
                ),
            })
            .verb(Redirect {
                url: "https://svc.example/twilio/next?session=abc123".into(),
                method: Some(HttpMethod::Post),
            })
            .verb(Say::new("Goodbye."))
            .verb(Verb::Hangup);
        let official = include_str!("../../fixtures/twilio/lib-fallback.xml");
        assert_same_twiml(&response, official);
        let mut shorter = response.clone();
        shorter.verbs.pop();
        assert_ne!(tree(&shorter.to_xml()), tree(official));
    }

    const HOSTILE: &str = "a < b & c \"d\" 'e' ]]> f";

    #[test]
    fn official_hostile_values_are_escaped_the_same_way() {
        let number = Number {
            url: Some("https://svc.example/w?a=1&b=]]>".into()),
            ..Number::new("+1555]]>&<")
        };
        let dial = Dial {
            timeout: Some(20),
            caller_id: Some("+1500<&>\"'".into()),
            ..Dial::new(
                url("https://svc.example/twilio/dial-action?session=<x>&q=\"'"),
                number,
            )
        };
        let response = Response::new()
            .verb(Say {
                voice: Some("Polly.Joanna".into()),
                language: Some("en-US".into()),
                ..Say::new(HOSTILE)
            })
            .verb(dial)
            .verb(Redirect {
                url: "https://svc.example/next?a=<1>&b=\"'".into(),
                method: None,
            });
        let official = include_str!("../../fixtures/twilio/lib-hostile.xml");
        assert_same_twiml(&response, official);
    }

    #[test]
    fn hostile_values_round_trip_unchanged() {
        let nasty = |prefix: &str| format!("{prefix}{HOSTILE}\t\n\r\n</Response>&amp;");
        let stream = Stream {
            name: Some(nasty("name")),
            parameters: vec![(nasty("k"), nasty("v"))],
            ..Stream::new(nasty("wss://x/"))
        };
        let dial = Dial {
            caller_id: Some(nasty("+1")),
            ..Dial::new(url(&nasty("https://x/")), Number::new(nasty("+2")))
        };
        let response = Response::new()
            .verb(Verb::Connect(stream))
            .verb(dial)
            .verb(Say::new(nasty("say ")));
        let xml = response.to_xml();
        assert!(!xml.contains("]]>"), "{xml}");
        let root = tree(&xml);
        assert_eq!(root.name, "Response");
        let [connect, dial, say] = &root.children[..] else {
            panic!("three verbs: {root:?}")
        };
        let stream = &connect.children[0];
        assert_eq!(stream.attrs["url"], nasty("wss://x/"));
        assert_eq!(stream.attrs["name"], nasty("name"));
        assert_eq!(stream.children[0].attrs["name"], nasty("k"));
        assert_eq!(stream.children[0].attrs["value"], nasty("v"));
        assert_eq!(dial.attrs["action"], nasty("https://x/"));
        assert_eq!(dial.attrs["callerId"], nasty("+1"));
        assert_eq!(dial.children[0].text, nasty("+2"));
        assert_eq!(say.text, nasty("say "));
    }

    #[test]
    fn characters_xml_cannot_carry_are_dropped() {
        let response = Response::new().verb(Say {
            voice: Some("v\u{1}1".into()),
            ..Say::new("a\u{0}b\u{1b}c\u{FFFE}d é 😀")
        });
        let root = tree(&response.to_xml());
        assert_eq!(root.children[0].text, "abcd é 😀");
        assert_eq!(root.children[0].attrs["voice"], "v1");
    }

    #[test]
    fn empty_response() {
        let xml = Response::new().to_xml();
        assert!(xml.starts_with(DECLARATION));
        let root = tree(&xml);
        assert_eq!((root.name.as_str(), root.children.len()), ("Response", 0));
    }

    #[test]
    fn dial_action_must_be_absolute() {
        for good in [
            "https://svc.example/a?b=1",
            "http://svc.example",
            "HTTPS://x:8443/",
        ] {
            assert_eq!(url(good).as_str(), good);
        }
        for bad in [
            "/twilio/dial-action",
            "svc.example/twilio",
            "ftp://svc.example/x",
            "https:///path",
            "https://",
            "",
        ] {
            assert!(
                matches!(AbsoluteUrl::parse(bad), Err(TwilioError::NotAbsoluteUrl(_))),
                "{bad}"
            );
        }
    }

    // ---- REST, reference §4.1 and §6.5 -----------------------------------------------------

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
