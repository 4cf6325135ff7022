//! Ultravox shapes lifeline emits: the tools it declares to the model.

use serde_json::{Value, json};

use crate::tools::ToolName;

fn param(name: &str, description: &str, required: bool) -> Value {
    json!({
        "name": name,
        "location": "PARAMETER_LOCATION_BODY",
        "schema": { "type": "string", "description": description },
        "required": required,
    })
}

/// The model-facing description and parameters of a tool.
fn definition(tool: ToolName) -> (&'static str, Vec<Value>) {
    match tool {
        ToolName::CollectInfo => (
            "Take a message so a team member calls the caller back. Use it whenever the caller \
             cannot be transferred or does not need to be.",
            vec![
                param(
                    "callback_number",
                    "the number to call back, as the caller said it",
                    true,
                ),
                param("first_name", "the caller's first name", false),
                param("last_name", "the caller's last name", false),
                param("pet_name", "the pet's name", false),
                param("species", "dog, cat, …", false),
                param("breed", "the pet's breed", false),
                param("age", "the pet's age", false),
                param(
                    "concern_description",
                    "what is wrong, in the caller's words, with details",
                    true,
                ),
                param("urgency_level", "normal, urgent or critical", false),
                param("urgency_reason", "why it is urgent, if it is", false),
            ],
        ),
        ToolName::Transfer => (
            "Transfer the caller to the clinic's on-call person. Use it for emergencies or when \
             the caller insists on a human.",
            vec![
                param("urgency_reason", "why the caller needs a human now", true),
                param("first_name", "the caller's first name", false),
                param("last_name", "the caller's last name", false),
                param(
                    "callback_number",
                    "a number to call back if nobody answers",
                    false,
                ),
                param("pet_name", "the pet's name", false),
                param("species", "dog, cat, …", false),
                param("breed", "the pet's breed", false),
                param("age", "the pet's age", false),
            ],
        ),
        ToolName::HangUp => (
            "End the call after saying goodbye.",
            vec![param("reason", "why the call ends", false)],
        ),
    }
}

/// `selectedTools` entries declaring every lifeline tool as an Ultravox *client* tool, so that
/// invocations reach lifeline through the platform that carries the call (Jambonz `toolHook`).
pub fn client_tools() -> Vec<Value> {
    tools_with_implementation("client")
}

/// `selectedTools` entries declaring every lifeline tool as a *data connection* tool: Ultravox
/// sends the invocations over its own WebSocket to lifeline (`GET /ultravox`), which is how a
/// Twilio-carried call reaches lifeline's tools.
pub fn data_connection_tools() -> Vec<Value> {
    tools_with_implementation("dataConnection")
}

fn tools_with_implementation(implementation: &str) -> Vec<Value> {
    ToolName::ALL
        .iter()
        .map(|&tool| {
            let (description, params) = definition(tool);
            let mut definition = json!({
                "modelToolName": tool.as_str(),
                "description": description,
                "dynamicParameters": params,
            });
            definition[implementation] = json!({});
            json!({ "temporaryTool": definition })
        })
        .collect()
}

// ─────────────────────────────────────────────────────────────────────────────────────────────
// What Ultravox sends lifeline, and what lifeline answers (`reference/ultravox-twilio-protocol.md`
// §1 and §2.3): signature checks, data messages, tool results, HTTP tool response headers.
// ─────────────────────────────────────────────────────────────────────────────────────────────

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Map;
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::tools::{Platform, ToolInvocation, ToolResult};

/// Header names Ultravox uses. HTTP header names are case-insensitive; these are the documented
/// spellings.
pub mod headers {
    /// Data-connection upgrade: the call the connection belongs to. HTTP tools that declare the
    /// `KNOWN_PARAM_CALL_ID` automatic parameter send the same header (spelled
    /// `X-Ultravox-Call-Id`).
    pub const CALL_ID: &str = "X-Ultravox-Call-ID";
    /// Data-connection upgrade: when Ultravox signed it (ISO-8601, UTC).
    pub const SIGNATURE_TIMESTAMP: &str = "X-Ultravox-Signature-Timestamp";
    /// Data-connection upgrade: comma-separated hex HMAC-SHA256 signatures, one per secret.
    pub const SIGNATURE: &str = "X-Ultravox-Signature";
    /// Webhook: when Ultravox sent it.
    pub const WEBHOOK_TIMESTAMP: &str = "X-Ultravox-Webhook-Timestamp";
    /// Webhook: comma-separated hex HMAC-SHA256 signatures of `rawBody ‖ timestamp`.
    pub const WEBHOOK_SIGNATURE: &str = "X-Ultravox-Webhook-Signature";
    /// HTTP tool response: how the call continues; absent means a normal tool response.
    pub const RESPONSE_TYPE: &str = "X-Ultravox-Response-Type";
    /// HTTP tool response: whether the agent speaks after the result (overrides the tool's
    /// `defaultReaction`).
    pub const AGENT_REACTION: &str = "X-Ultravox-Agent-Reaction";
    /// HTTP tool response: a JSON object merged into the call state.
    pub const UPDATE_CALL_STATE: &str = "X-Ultravox-Update-Call-State";
}

/// The `X-Ultravox-Response-Type` value (and `responseType`) that ends the call.
pub const RESPONSE_TYPE_HANG_UP: &str = "hang-up";

// ── Signatures (§1.7) ────────────────────────────────────────────────────────────────────────

/// How far a signature timestamp may be from our clock, either way. Ultravox says to reject
/// timestamps older than about a minute (replay protection); a timestamp as far in the future
/// is as suspicious, and a minute of tolerance absorbs ordinary clock drift.
pub const MAX_SIGNATURE_SKEW: TimeDelta = TimeDelta::seconds(60);

/// Why a signed Ultravox request was refused. The variants are for logs and metrics; the
/// client only ever gets a plain 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No (non-empty) shared secret is configured, so nothing can be verified.
    #[error("no shared secret is configured, so no signature can be accepted")]
    NoSecrets,
    /// A required header is absent or empty.
    #[error("the {0} header is missing or empty")]
    MissingHeader(&'static str),
    /// The timestamp header is not an ISO-8601 date-time (kept short for the log).
    #[error("the signature timestamp {0:?} is not an ISO-8601 date-time")]
    InvalidTimestamp(String),
    /// Signed more than [`MAX_SIGNATURE_SKEW`] ago: a replay, or a very late delivery.
    #[error("the signature timestamp is {age_secs} s old; at most 60 s is accepted")]
    Stale {
        /// Whole seconds between the timestamp and our clock.
        age_secs: i64,
    },
    /// Signed more than [`MAX_SIGNATURE_SKEW`] in the future.
    #[error("the signature timestamp is {ahead_secs} s in the future; at most 60 s is accepted")]
    FromFuture {
        /// Whole seconds the timestamp is ahead of our clock.
        ahead_secs: i64,
    },
    /// No signature in the header matches any configured secret.
    #[error("no signature matches any configured secret")]
    Mismatch,
}

/// Verifies the signed WebSocket upgrade of an Ultravox data connection.
///
/// Ultravox sends `X-Ultravox-Call-ID`, `X-Ultravox-Signature-Timestamp` and
/// `X-Ultravox-Signature`, a comma-separated list of `hex(HMAC-SHA256(secret, callId +
/// timestamp))`, one per secret configured on the call or agent. The upgrade is accepted when
/// any listed signature matches any of `secrets` (so secrets can be rotated on either side
/// without downtime) and the timestamp is within [`MAX_SIGNATURE_SKEW`] of `now`.
///
/// `call_id` and `timestamp` must be the header values exactly as received: they are what was
/// signed. Empty secrets are ignored, because an empty HMAC key is one anybody can sign with.
pub fn verify_data_connection(
    secrets: &[String],
    call_id: &str,
    timestamp: &str,
    signatures_header: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    if !secrets.iter().any(|s| !s.is_empty()) {
        return Err(SignatureError::NoSecrets);
    }
    if call_id.is_empty() {
        return Err(SignatureError::MissingHeader(headers::CALL_ID));
    }
    SignedRequest {
        parts: [call_id.as_bytes(), timestamp.as_bytes()],
        timestamp,
        timestamp_header: headers::SIGNATURE_TIMESTAMP,
        signatures: signatures_header,
        signatures_header: headers::SIGNATURE,
    }
    .verify(secrets, now)
}

/// Verifies an Ultravox webhook: `X-Ultravox-Webhook-Signature` holds comma-separated
/// `hex(HMAC-SHA256(secret, rawBody ‖ timestamp))`, timestamp from
/// `X-Ultravox-Webhook-Timestamp`. Same acceptance rules as [`verify_data_connection`].
///
/// `raw_body` must be the bytes as received, before any JSON parsing.
pub fn verify_webhook(
    secrets: &[String],
    raw_body: &[u8],
    timestamp: &str,
    signatures_header: &str,
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    if !secrets.iter().any(|s| !s.is_empty()) {
        return Err(SignatureError::NoSecrets);
    }
    SignedRequest {
        parts: [raw_body, timestamp.as_bytes()],
        timestamp,
        timestamp_header: headers::WEBHOOK_TIMESTAMP,
        signatures: signatures_header,
        signatures_header: headers::WEBHOOK_SIGNATURE,
    }
    .verify(secrets, now)
}

/// The signature Ultravox sends for a data connection: `hex(HMAC-SHA256(secret, callId +
/// timestamp))`. For fake Ultravox peers in tests and for tooling.
pub fn sign_data_connection(secret: &str, call_id: &str, timestamp: &str) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[call_id.as_bytes(), timestamp.as_bytes()],
    ))
}

/// The signature Ultravox sends for a webhook: `hex(HMAC-SHA256(secret, rawBody ‖ timestamp))`.
pub fn sign_webhook(secret: &str, raw_body: &[u8], timestamp: &str) -> String {
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[raw_body, timestamp.as_bytes()],
    ))
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The parts of one signed request, shared by both checks.
struct SignedRequest<'a> {
    /// Concatenated, they are the signed message.
    parts: [&'a [u8]; 2],
    timestamp: &'a str,
    timestamp_header: &'static str,
    signatures: &'a str,
    signatures_header: &'static str,
}

impl SignedRequest<'_> {
    fn verify(&self, secrets: &[String], now: DateTime<Utc>) -> Result<(), SignatureError> {
        if self.timestamp.is_empty() {
            return Err(SignatureError::MissingHeader(self.timestamp_header));
        }
        // Ultravox writes the list as "a,b"; tolerate "a, b" and stray commas.
        let candidates: Vec<&str> = self
            .signatures
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::MissingHeader(self.signatures_header));
        }
        // Freshness is checked before the HMAC only because it is cheaper; the timestamp is part
        // of the signed message, so it cannot be moved without breaking the signature.
        let signed_at = parse_signature_timestamp(self.timestamp)?;
        let age = now - signed_at;
        if age > MAX_SIGNATURE_SKEW {
            return Err(SignatureError::Stale {
                age_secs: age.num_seconds(),
            });
        }
        if -age > MAX_SIGNATURE_SKEW {
            return Err(SignatureError::FromFuture {
                ahead_secs: (-age).num_seconds(),
            });
        }
        // Every (secret, candidate) pair is compared, with no early exit, in constant time:
        // timing then reveals neither how much of a forged signature was right nor which
        // secret matched.
        let decoded: Vec<Vec<u8>> = candidates
            .iter()
            .filter_map(|c| hex::decode(c).ok())
            .collect();
        let mut matched = Choice::from(0);
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            let expected = hmac_sha256(secret.as_bytes(), &self.parts);
            for candidate in &decoded {
                // `ct_eq` on slices of different lengths is simply false.
                matched |= expected.as_slice().ct_eq(candidate.as_slice());
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Parses the signature timestamp: RFC 3339 (`2026-01-01T00:00:00+00:00`, `…Z`, fractional
/// seconds), or an ISO-8601 date-time without offset, which Ultravox documents as UTC.
fn parse_signature_timestamp(value: &str) -> Result<DateTime<Utc>, SignatureError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").map(|t| t.and_utc())
        })
        // The header is attacker-controlled: keep only a short prefix for the log.
        .map_err(|_| SignatureError::InvalidTimestamp(value.chars().take(40).collect()))
}

// ── Data messages (§1.1–1.5) ─────────────────────────────────────────────────────────────────

/// The two message pairs that carry a tool call to lifeline. A result must use the type that
/// matches its invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolChannel {
    /// Ultravox's own connection to lifeline (`dataConnection.websocketUrl`).
    DataConnection,
    /// A client tool, relayed by whoever holds the call's socket (a Jambonz `toolHook`, a
    /// `serverWebSocket` client).
    Client,
}

impl ToolChannel {
    /// The `type` of an invocation on this channel.
    pub fn invocation_type(self) -> &'static str {
        match self {
            ToolChannel::DataConnection => "data_connection_tool_invocation",
            ToolChannel::Client => "client_tool_invocation",
        }
    }

    /// The `type` of the result that answers it.
    pub fn result_type(self) -> &'static str {
        match self {
            ToolChannel::DataConnection => "data_connection_tool_result",
            ToolChannel::Client => "client_tool_result",
        }
    }
}

/// A data message from Ultravox. Only what lifeline acts on has its own variant; every other
/// `type` (state, transcript, pong, debug, the undocumented opt-in ones, and anything Ultravox
/// adds later) is [`Incoming::Other`], to be ignored rather than to break the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// `data_connection_tool_invocation` or `client_tool_invocation`.
    ToolInvocation(ToolInvocationMessage),
    /// `call_started`.
    CallStarted {
        /// Ultravox's id of the call.
        call_id: String,
    },
    /// `error` (undocumented, seen in third-party bridges): the whole message, for the log;
    /// the connection should be treated as failed.
    Error(Value),
    /// Any other `type`.
    Other {
        /// The message's `type`, for the debug log.
        kind: String,
    },
}

/// A tool call from Ultravox.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolInvocationMessage {
    /// Which message pair it came as; the result must use the same.
    pub channel: ToolChannel,
    /// The tool name exactly as the model used it.
    pub tool_name: String,
    /// Must be echoed in the result.
    pub invocation_id: String,
    /// The arguments; always a JSON object (`{}` when Ultravox sent none).
    pub parameters: Value,
}

/// Why a data message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// The frame is not JSON (the parser's message).
    #[error("the message is not JSON: {0}")]
    NotJson(String),
    /// The JSON is not an object.
    #[error("a data message must be a JSON object")]
    NotAnObject,
    /// There is no `type`, or it is not a string.
    #[error("the message has no string `type`")]
    MissingType,
    /// A required field is absent, `null` or empty.
    #[error("`{kind}` has no `{field}`")]
    MissingField {
        /// The message `type`.
        kind: String,
        /// The field, by its camelCase name.
        field: &'static str,
    },
    /// A field has the wrong JSON type or value.
    #[error("`{kind}`: `{field}` must be {expected}")]
    InvalidField {
        /// The message `type`.
        kind: String,
        /// The field, by its camelCase name.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
}

impl Incoming {
    /// Parses one WebSocket text frame.
    pub fn parse(text: &str) -> Result<Self, MessageError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| MessageError::NotJson(e.to_string()))?;
        Self::from_value(value)
    }

    /// Reads an already-parsed message.
    pub fn from_value(value: Value) -> Result<Self, MessageError> {
        let Value::Object(map) = value else {
            return Err(MessageError::NotAnObject);
        };
        let kind = match map.get("type") {
            Some(Value::String(kind)) => kind.clone(),
            _ => return Err(MessageError::MissingType),
        };
        let channel = match kind.as_str() {
            "data_connection_tool_invocation" => ToolChannel::DataConnection,
            "client_tool_invocation" => ToolChannel::Client,
            "call_started" => {
                return Ok(Incoming::CallStarted {
                    call_id: required_str(&map, &kind, "callId", "call_id")?,
                });
            }
            "error" => return Ok(Incoming::Error(Value::Object(map))),
            _ => return Ok(Incoming::Other { kind }),
        };
        Ok(Incoming::ToolInvocation(ToolInvocationMessage {
            channel,
            tool_name: required_str(&map, &kind, "toolName", "tool_name")?,
            invocation_id: required_str(&map, &kind, "invocationId", "invocation_id")?,
            parameters: parameters(&map, &kind)?,
        }))
    }
}

impl<'de> Deserialize<'de> for Incoming {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Incoming::from_value(Value::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A field by its documented camelCase name, or the snake_case spelling some senders use
/// (Jambonz's Ultravox bridge writes `invocation_id`); `null` counts as absent.
fn lenient_field<'a>(map: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    [camel, snake]
        .into_iter()
        .filter_map(|name| map.get(name))
        .find(|v| !v.is_null())
}

fn required_str(
    map: &Map<String, Value>,
    kind: &str,
    camel: &'static str,
    snake: &str,
) -> Result<String, MessageError> {
    match lenient_field(map, camel, snake) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None => Err(MessageError::MissingField {
            kind: kind.to_owned(),
            field: camel,
        }),
        Some(_) => Err(MessageError::InvalidField {
            kind: kind.to_owned(),
            field: camel,
            expected: "a string",
        }),
    }
}

/// `parameters` as an object. Absent or `null` means no arguments. A string holding a JSON
/// object is unwrapped, because some bridges forward model arguments still encoded.
fn parameters(map: &Map<String, Value>, kind: &str) -> Result<Value, MessageError> {
    let invalid = || MessageError::InvalidField {
        kind: kind.to_owned(),
        field: "parameters",
        expected: "a JSON object",
    };
    match map.get("parameters") {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(v @ Value::Object(_)) => Ok(v.clone()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

impl ToolInvocationMessage {
    /// The platform-neutral invocation. `call_ref` is the Ultravox call id of the authenticated
    /// connection (the signed `X-Ultravox-Call-ID`), never something from the message.
    pub fn into_invocation(self, call_ref: impl Into<String>) -> ToolInvocation {
        ToolInvocation {
            platform: Platform::Ultravox,
            call_ref: call_ref.into(),
            invocation_id: Some(self.invocation_id),
            tool_name: self.tool_name,
            arguments: self.parameters,
        }
    }

    /// The result message answering this invocation on the same channel.
    pub fn reply(&self, result: &ToolResult) -> ToolResultMessage {
        ToolResultMessage::from_tool_result(self.channel, self.invocation_id.clone(), result)
    }
}

/// How the call continues after a tool result (`responseType`, `X-Ultravox-Response-Type`).
/// `new-stage` and `send-to-thread` exist but lifeline never uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseType {
    /// The default: the model reads the result and carries on.
    ToolResponse,
    /// End the call; the result is a JSON string such as `{"strict":true}`.
    HangUp,
}

impl ResponseType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseType::ToolResponse => "tool-response",
            ResponseType::HangUp => RESPONSE_TYPE_HANG_UP,
        }
    }
}

/// Whether the agent speaks after a tool result (`agentReaction`, `X-Ultravox-Agent-Reaction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentReaction {
    /// The default: the agent responds to the result.
    Speaks,
    /// The agent stays silent and waits for the user.
    Listens,
    /// The agent speaks once, then listens even after further results.
    SpeaksOnce,
}

impl AgentReaction {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentReaction::Speaks => "speaks",
            AgentReaction::Listens => "listens",
            AgentReaction::SpeaksOnce => "speaks-once",
        }
    }
}

/// `errorType` of a failed tool result. Its `errorMessage` is not shown to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorType {
    /// No tool of that name exists here.
    Undefined,
    /// The tool exists but failed.
    ImplementationError,
}

/// What a tool result carries: a result for the model, or an error — never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolOutcome {
    /// The tool ran; the model reads `result`.
    Result {
        /// Text for the model (often a JSON string).
        result: String,
        /// `None` omits `responseType` (Ultravox's default, a normal tool response).
        response_type: Option<ResponseType>,
    },
    /// The tool could not run (`errorType`, `errorMessage`).
    Error {
        /// Unknown tool, or a failed one.
        error_type: ErrorType,
        /// For Ultravox's logs only; the model never sees it.
        error_message: Option<String>,
    },
}

/// A `data_connection_tool_result` or `client_tool_result`. Serializes to the camelCase wire
/// form, omitting absent fields; also deserializes (accepting snake_case), for fake peers and
/// fixtures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawToolResult", into = "RawToolResult")]
pub struct ToolResultMessage {
    /// Decides `type`: the channel the invocation came on.
    pub channel: ToolChannel,
    /// The invocation this answers.
    pub invocation_id: String,
    /// A result or an error.
    pub outcome: ToolOutcome,
    /// `None` omits `agentReaction` (the tool's `defaultReaction` applies).
    pub agent_reaction: Option<AgentReaction>,
}

impl ToolResultMessage {
    /// A result with the given outcome and no `agentReaction`.
    pub fn new(
        channel: ToolChannel,
        invocation_id: impl Into<String>,
        outcome: ToolOutcome,
    ) -> Self {
        Self {
            channel,
            invocation_id: invocation_id.into(),
            outcome,
            agent_reaction: None,
        }
    }

    /// A normal result: the model reads `result` and carries on.
    pub fn result(
        channel: ToolChannel,
        invocation_id: impl Into<String>,
        result: impl Into<String>,
    ) -> Self {
        Self::new(
            channel,
            invocation_id,
            ToolOutcome::Result {
                result: result.into(),
                response_type: None,
            },
        )
    }

    /// A result that ends the call (`responseType: hang-up`); see [`hang_up_payload`].
    pub fn hang_up(
        channel: ToolChannel,
        invocation_id: impl Into<String>,
        result: impl Into<String>,
    ) -> Self {
        Self::new(
            channel,
            invocation_id,
            ToolOutcome::Result {
                result: result.into(),
                response_type: Some(ResponseType::HangUp),
            },
        )
    }

    /// A failed call (`errorType` + `errorMessage`, no `result`).
    pub fn error(
        channel: ToolChannel,
        invocation_id: impl Into<String>,
        error_type: ErrorType,
        error_message: impl Into<String>,
    ) -> Self {
        Self::new(
            channel,
            invocation_id,
            ToolOutcome::Error {
                error_type,
                error_message: Some(error_message.into()),
            },
        )
    }

    /// Sets `agentReaction`.
    pub fn with_agent_reaction(mut self, reaction: AgentReaction) -> Self {
        self.agent_reaction = Some(reaction);
        self
    }

    /// Translates lifeline's result of a tool call.
    ///
    /// A failed tool is sent as a *result* holding [`ToolError::model_text`], not as
    /// `errorType`: Ultravox hides `errorMessage` from the model, and the model needs the kind
    /// and the retry hint to tell the caller something true (or take a message instead). A
    /// tool that ends the call answers `hang-up` with `{"strict":true}`, since the agent has
    /// already said goodbye and the caller must not keep the line open by talking.
    ///
    /// [`ToolError::model_text`]: crate::tools::ToolError::model_text
    pub fn from_tool_result(
        channel: ToolChannel,
        invocation_id: impl Into<String>,
        result: &ToolResult,
    ) -> Self {
        match result {
            Ok(output) if output.ends_call => {
                Self::hang_up(channel, invocation_id, hang_up_payload(true, None))
            }
            Ok(output) => Self::result(channel, invocation_id, output.message.clone()),
            Err(error) => Self::result(channel, invocation_id, error.model_text()),
        }
    }

    /// The JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a tool result holds only strings")
    }
}

/// The wire shape of a tool result; [`ToolResultMessage`] is the checked form.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawToolResult {
    #[serde(rename = "type")]
    kind: String,
    #[serde(alias = "invocation_id")]
    invocation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    #[serde(
        default,
        alias = "response_type",
        skip_serializing_if = "Option::is_none"
    )]
    response_type: Option<ResponseType>,
    #[serde(
        default,
        alias = "agent_reaction",
        skip_serializing_if = "Option::is_none"
    )]
    agent_reaction: Option<AgentReaction>,
    #[serde(default, alias = "error_type", skip_serializing_if = "Option::is_none")]
    error_type: Option<ErrorType>,
    #[serde(
        default,
        alias = "error_message",
        skip_serializing_if = "Option::is_none"
    )]
    error_message: Option<String>,
}

impl From<ToolResultMessage> for RawToolResult {
    fn from(m: ToolResultMessage) -> Self {
        let mut raw = RawToolResult {
            kind: m.channel.result_type().to_owned(),
            invocation_id: m.invocation_id,
            result: None,
            response_type: None,
            agent_reaction: m.agent_reaction,
            error_type: None,
            error_message: None,
        };
        match m.outcome {
            ToolOutcome::Result {
                result,
                response_type,
            } => {
                raw.result = Some(result);
                raw.response_type = response_type;
            }
            ToolOutcome::Error {
                error_type,
                error_message,
            } => {
                raw.error_type = Some(error_type);
                raw.error_message = error_message;
            }
        }
        raw
    }
}

impl TryFrom<RawToolResult> for ToolResultMessage {
    type Error = MessageError;

    fn try_from(raw: RawToolResult) -> Result<Self, MessageError> {
        let invalid = |field, expected| MessageError::InvalidField {
            kind: raw.kind.clone(),
            field,
            expected,
        };
        let channel = match raw.kind.as_str() {
            "data_connection_tool_result" => ToolChannel::DataConnection,
            "client_tool_result" => ToolChannel::Client,
            _ => {
                return Err(invalid(
                    "type",
                    "data_connection_tool_result or client_tool_result",
                ));
            }
        };
        if raw.invocation_id.is_empty() {
            return Err(MessageError::MissingField {
                kind: raw.kind,
                field: "invocationId",
            });
        }
        let outcome = match (raw.result, raw.error_type) {
            (Some(_), Some(_)) => return Err(invalid("errorType", "absent when `result` is set")),
            (Some(result), None) => {
                if raw.error_message.is_some() {
                    return Err(invalid("errorMessage", "absent when `result` is set"));
                }
                ToolOutcome::Result {
                    result,
                    response_type: raw.response_type,
                }
            }
            (None, Some(error_type)) => {
                if raw.response_type.is_some() {
                    return Err(invalid("responseType", "absent on an error"));
                }
                ToolOutcome::Error {
                    error_type,
                    error_message: raw.error_message,
                }
            }
            (None, None) => {
                return Err(MessageError::MissingField {
                    kind: raw.kind,
                    field: "result",
                });
            }
        };
        Ok(ToolResultMessage {
            channel,
            invocation_id: raw.invocation_id,
            outcome,
            agent_reaction: raw.agent_reaction,
        })
    }
}

/// The `result` of a `hang-up` response (also the body of an HTTP tool's hang-up response).
/// `strict: true` ends the call even if the caller starts talking; `message` is optional.
pub fn hang_up_payload(strict: bool, message: Option<&str>) -> String {
    let mut payload = json!({ "strict": strict });
    if let Some(message) = message {
        payload["message"] = Value::from(message);
    }
    payload.to_string()
}

// ── HTTP tools (§2.3) ────────────────────────────────────────────────────────────────────────

/// Response headers of an HTTP tool reply. Nothing is emitted for the defaults (a normal tool
/// response, the tool's own `defaultReaction`), so ordinary replies carry no Ultravox headers.
pub fn http_tool_response_headers(
    response_type: Option<ResponseType>,
    agent_reaction: Option<AgentReaction>,
) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if let Some(rt) = response_type.filter(|rt| *rt != ResponseType::ToolResponse) {
        out.push((headers::RESPONSE_TYPE, rt.as_str()));
    }
    if let Some(reaction) = agent_reaction {
        out.push((headers::AGENT_REACTION, reaction.as_str()));
    }
    out
}

#[cfg(test)]
mod wire_tests {
    use super::*;
    use crate::tools::{ErrorKind, ToolError, ToolOutput};

    const SECRET: &str = "test-shared-secret-0123";
    const CALL_ID: &str = "550e8400-e29b-41d4-a716-446655440000";
    const TS: &str = "2026-01-01T00:00:00+00:00";
    const DATA_SIG: &str = "44f6f919fcf27a30c214bf7920a426538b1e4def26308a0d31dc88d4ebe91952";
    const WEBHOOK_BODY: &str =
        r#"{"event":"call.ended","call":{"callId":"550e8400-e29b-41d4-a716-446655440000"}}"#;
    const WEBHOOK_SIG: &str = "b12f72510bb6ebff774db7b4d59b8ebc010a0eea5005f12f88da65c54f86a488";

    const FROM_ULTRAVOX: &str = include_str!("../../fixtures/ultravox/ultravox.jsonl");
    const TO_ULTRAVOX: &str = include_str!("../../fixtures/ultravox/app.jsonl");

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    /// 10 s after the vector's timestamp: comfortably fresh.
    fn now() -> DateTime<Utc> {
        at("2026-01-01T00:00:10Z")
    }

    fn secrets(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn data_connection_vector_from_the_reference() {
        assert_eq!(sign_data_connection(SECRET, CALL_ID, TS), DATA_SIG);
        assert_eq!(
            verify_data_connection(&secrets(&[SECRET]), CALL_ID, TS, DATA_SIG, now()),
            Ok(())
        );
        // Hex case is not significant.
        let upper = DATA_SIG.to_uppercase();
        assert_eq!(
            verify_data_connection(&secrets(&[SECRET]), CALL_ID, TS, &upper, now()),
            Ok(())
        );
    }

    /// name, secrets, call id, timestamp, signature header, now, expected error.
    type DataCase<'a> = (
        &'a str,
        Vec<String>,
        &'a str,
        &'a str,
        &'a str,
        DateTime<Utc>,
        SignatureError,
    );

    /// name, body, timestamp, signature header, now, expected error.
    type WebhookCase<'a> = (
        &'a str,
        &'a [u8],
        &'a str,
        &'a str,
        DateTime<Utc>,
        SignatureError,
    );

    #[test]
    fn data_connection_mutations_fail() {
        let ok = secrets(&[SECRET]);
        let mut flipped = DATA_SIG.to_owned();
        flipped.replace_range(0..1, "5");
        let shifted_ts = "2026-01-01T00:00:01+00:00";
        let other_call = "550e8400-e29b-41d4-a716-446655440001";
        #[rustfmt::skip]
        let cases: Vec<DataCase> = vec![
            ("other call id", ok.clone(), other_call, TS, DATA_SIG, now(), SignatureError::Mismatch),
            ("timestamp shifted by 1 s", ok.clone(), CALL_ID, shifted_ts, DATA_SIG, now(), SignatureError::Mismatch),
            ("same instant, other spelling", ok.clone(), CALL_ID, "2026-01-01T00:00:00Z", DATA_SIG, now(), SignatureError::Mismatch),
            ("wrong secret", secrets(&["test-shared-secret-0124"]), CALL_ID, TS, DATA_SIG, now(), SignatureError::Mismatch),
            ("one hex digit changed", ok.clone(), CALL_ID, TS, &flipped, now(), SignatureError::Mismatch),
            ("truncated signature", ok.clone(), CALL_ID, TS, &DATA_SIG[..62], now(), SignatureError::Mismatch),
            ("not hex", ok.clone(), CALL_ID, TS, "not-a-signature", now(), SignatureError::Mismatch),
            ("61 s old", ok.clone(), CALL_ID, TS, DATA_SIG, at("2026-01-01T00:01:01Z"), SignatureError::Stale { age_secs: 61 }),
            ("a day old", ok.clone(), CALL_ID, TS, DATA_SIG, at("2026-01-02T00:00:00Z"), SignatureError::Stale { age_secs: 86_400 }),
            ("61 s ahead", ok.clone(), CALL_ID, TS, DATA_SIG, at("2025-12-31T23:58:59Z"), SignatureError::FromFuture { ahead_secs: 61 }),
            ("empty header", ok.clone(), CALL_ID, TS, "", now(), SignatureError::MissingHeader(headers::SIGNATURE)),
            ("only separators", ok.clone(), CALL_ID, TS, " , ,", now(), SignatureError::MissingHeader(headers::SIGNATURE)),
            ("empty timestamp", ok.clone(), CALL_ID, "", DATA_SIG, now(), SignatureError::MissingHeader(headers::SIGNATURE_TIMESTAMP)),
            ("empty call id", ok.clone(), "", TS, DATA_SIG, now(), SignatureError::MissingHeader(headers::CALL_ID)),
            ("unparseable timestamp", ok.clone(), CALL_ID, "yesterday", DATA_SIG, now(), SignatureError::InvalidTimestamp("yesterday".into())),
            ("unix seconds", ok.clone(), CALL_ID, "1767225600", DATA_SIG, now(), SignatureError::InvalidTimestamp("1767225600".into())),
            ("no secrets", vec![], CALL_ID, TS, DATA_SIG, now(), SignatureError::NoSecrets),
            ("only an empty secret", secrets(&[""]), CALL_ID, TS, DATA_SIG, now(), SignatureError::NoSecrets),
        ];
        for (name, secrets, call_id, ts, header, now, want) in cases {
            assert_eq!(
                verify_data_connection(&secrets, call_id, ts, header, now),
                Err(want),
                "{name}"
            );
        }
    }

    #[test]
    fn freshness_window_is_inclusive_at_sixty_seconds_both_ways() {
        let s = secrets(&[SECRET]);
        for now in [at("2026-01-01T00:01:00Z"), at("2025-12-31T23:59:00Z")] {
            assert_eq!(
                verify_data_connection(&s, CALL_ID, TS, DATA_SIG, now),
                Ok(())
            );
        }
        let just_over = at("2026-01-01T00:01:00.001Z");
        assert!(verify_data_connection(&s, CALL_ID, TS, DATA_SIG, just_over).is_err());
    }

    #[test]
    fn any_listed_signature_may_match_any_secret() {
        let old = "old-secret-0000000000";
        let new = "new-secret-1111111111";
        let sig_old = sign_data_connection(old, CALL_ID, TS);
        let sig_new = sign_data_connection(new, CALL_ID, TS);
        // Ultravox lists one signature per secret it has; we accept if we share any of them.
        let header = format!("{sig_old},{sig_new}");
        for ours in [
            vec![old],
            vec![new],
            vec![new, old],
            vec!["unrelated-secret-xx", new],
        ] {
            assert_eq!(
                verify_data_connection(&secrets(&ours), CALL_ID, TS, &header, now()),
                Ok(()),
                "{ours:?}"
            );
        }
        // Whitespace and empty entries in the list are tolerated, wherever the match is.
        for header in [
            format!(" {sig_old} , {sig_new} "),
            format!("garbage,\t{sig_new}"),
            format!(",{sig_new},"),
        ] {
            assert_eq!(
                verify_data_connection(&secrets(&[new]), CALL_ID, TS, &header, now()),
                Ok(()),
                "{header:?}"
            );
        }
        // Neither listed signature is ours.
        assert_eq!(
            verify_data_connection(
                &secrets(&["third-secret-2222222222"]),
                CALL_ID,
                TS,
                &header,
                now()
            ),
            Err(SignatureError::Mismatch)
        );
        // An empty secret next to a real one is skipped, not used as a key anybody can sign with.
        let forged = sign_data_connection("", CALL_ID, TS);
        assert_eq!(
            verify_data_connection(&secrets(&["", new]), CALL_ID, TS, &forged, now()),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn other_iso_8601_spellings_of_the_timestamp_verify() {
        for ts in [
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00.123456Z",
            "2026-01-01T00:00:00.5+00:00",
            "2026-01-01T01:00:00+01:00",
            "2026-01-01T00:00:00",
        ] {
            let sig = sign_data_connection(SECRET, CALL_ID, ts);
            assert_eq!(
                verify_data_connection(&secrets(&[SECRET]), CALL_ID, ts, &sig, now()),
                Ok(()),
                "{ts}"
            );
            // The offset is honoured: the same text 2 minutes later is stale.
            assert!(matches!(
                verify_data_connection(
                    &secrets(&[SECRET]),
                    CALL_ID,
                    ts,
                    &sig,
                    at("2026-01-01T00:02:00Z")
                ),
                Err(SignatureError::Stale { .. })
            ));
        }
    }

    #[test]
    fn webhook_vector_and_mutations() {
        let s = secrets(&[SECRET]);
        let body = WEBHOOK_BODY.as_bytes();
        assert_eq!(sign_webhook(SECRET, body, TS), WEBHOOK_SIG);
        assert_eq!(verify_webhook(&s, body, TS, WEBHOOK_SIG, now()), Ok(()));
        assert_eq!(
            verify_webhook(&s, body, TS, &format!("deadbeef, {WEBHOOK_SIG}"), now()),
            Ok(())
        );

        let reformatted = WEBHOOK_BODY.replace(':', ": ");
        #[rustfmt::skip]
        let cases: Vec<WebhookCase> = vec![
            ("body re-serialized", reformatted.as_bytes(), TS, WEBHOOK_SIG, now(), SignatureError::Mismatch),
            ("empty body", b"", TS, WEBHOOK_SIG, now(), SignatureError::Mismatch),
            ("data-connection signature", body, TS, DATA_SIG, now(), SignatureError::Mismatch),
            ("other timestamp", body, "2026-01-01T00:00:01+00:00", WEBHOOK_SIG, now(), SignatureError::Mismatch),
            ("stale", body, TS, WEBHOOK_SIG, at("2026-01-01T00:05:00Z"), SignatureError::Stale { age_secs: 300 }),
            ("no signature", body, TS, "", now(), SignatureError::MissingHeader(headers::WEBHOOK_SIGNATURE)),
            ("no timestamp", body, "", WEBHOOK_SIG, now(), SignatureError::MissingHeader(headers::WEBHOOK_TIMESTAMP)),
        ];
        for (name, body, ts, header, now, want) in cases {
            assert_eq!(
                verify_webhook(&s, body, ts, header, now),
                Err(want),
                "{name}"
            );
        }
        assert_eq!(
            verify_webhook(&secrets(&["other"]), body, TS, WEBHOOK_SIG, now()),
            Err(SignatureError::Mismatch)
        );
    }

    fn invocation(channel: ToolChannel, tool: &str, id: &str, params: Value) -> Incoming {
        Incoming::ToolInvocation(ToolInvocationMessage {
            channel,
            tool_name: tool.into(),
            invocation_id: id.into(),
            parameters: params,
        })
    }

    fn other(kind: &str) -> Incoming {
        Incoming::Other { kind: kind.into() }
    }

    #[test]
    fn every_ultravox_fixture_parses() {
        let expected = [
            invocation(
                ToolChannel::Client,
                "test_tool",
                "call_1",
                json!({"foo": "bar"}),
            ),
            invocation(
                ToolChannel::Client,
                "get_weather",
                "unique-invocation-id",
                json!({"location": "Seattle"}),
            ),
            invocation(
                ToolChannel::DataConnection,
                "transferCall",
                "inv-42",
                json!({"destinationNumber": "+15551234567", "transferReason": "billing"}),
            ),
            Incoming::CallStarted {
                call_id: CALL_ID.into(),
            },
            other("state"),
            other("playback_clear_buffer"),
            other("pong"),
            other("transcript"),
            other("room_info"),
        ];
        let lines: Vec<&str> = FROM_ULTRAVOX.lines().collect();
        assert_eq!(lines.len(), expected.len());
        for (line, want) in lines.into_iter().zip(expected) {
            assert_eq!(Incoming::parse(line).as_ref(), Ok(&want), "{line}");
            // The serde impl agrees.
            assert_eq!(serde_json::from_str::<Incoming>(line).unwrap(), want);
        }
    }

    #[test]
    fn invocations_are_read_leniently() {
        let cases = [
            // snake_case spellings.
            (
                r#"{"type":"client_tool_invocation","tool_name":"hangUp","invocation_id":"i1","parameters":{}}"#,
                invocation(ToolChannel::Client, "hangUp", "i1", json!({})),
            ),
            // camelCase wins over snake_case when both are present.
            (
                r#"{"type":"client_tool_invocation","toolName":"a","tool_name":"b","invocationId":"i1","invocation_id":"i2"}"#,
                invocation(ToolChannel::Client, "a", "i1", json!({})),
            ),
            // a null camelCase field falls back to the snake_case one.
            (
                r#"{"type":"client_tool_invocation","toolName":"a","invocationId":null,"invocation_id":"i2"}"#,
                invocation(ToolChannel::Client, "a", "i2", json!({})),
            ),
            // no or null parameters: no arguments.
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":"i1"}"#,
                invocation(ToolChannel::DataConnection, "t", "i1", json!({})),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":"i1","parameters":null}"#,
                invocation(ToolChannel::DataConnection, "t", "i1", json!({})),
            ),
            // arguments still encoded as a JSON string.
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":"i1","parameters":"{\"a\":1}"}"#,
                invocation(ToolChannel::DataConnection, "t", "i1", json!({"a": 1})),
            ),
            // unknown fields and unknown types are ignored.
            (
                r#"{"type":"client_tool_invocation","toolName":"t","invocationId":"i1","parameters":{},"threadId":"UI"}"#,
                invocation(ToolChannel::Client, "t", "i1", json!({})),
            ),
            (
                r#"{"type":"tool_used","whatever":[1,2]}"#,
                other("tool_used"),
            ),
            (r#"{"type":"debug","message":"…"}"#, other("debug")),
            (
                r#"{"type":"call_started","call_id":"c-1"}"#,
                Incoming::CallStarted {
                    call_id: "c-1".into(),
                },
            ),
            (
                r#"{"type":"error","message":"bad"}"#,
                Incoming::Error(json!({"type": "error", "message": "bad"})),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Incoming::parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_messages_get_precise_errors() {
        let kind = "data_connection_tool_invocation";
        let missing = |field| MessageError::MissingField {
            kind: kind.into(),
            field,
        };
        let invalid = |field, expected| MessageError::InvalidField {
            kind: kind.into(),
            field,
            expected,
        };
        let cases = [
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t"}"#,
                missing("invocationId"),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":""}"#,
                missing("invocationId"),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","invocationId":"i"}"#,
                missing("toolName"),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","toolName":7,"invocationId":"i"}"#,
                invalid("toolName", "a string"),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":"i","parameters":[1]}"#,
                invalid("parameters", "a JSON object"),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":"i","parameters":"nope"}"#,
                invalid("parameters", "a JSON object"),
            ),
            (
                r#"{"type":"data_connection_tool_invocation","toolName":"t","invocationId":"i","parameters":"[1]"}"#,
                invalid("parameters", "a JSON object"),
            ),
            (
                r#"{"toolName":"t","invocationId":"i"}"#,
                MessageError::MissingType,
            ),
            (r#"{"type":5}"#, MessageError::MissingType),
            ("[]", MessageError::NotAnObject),
            (r#""client_tool_invocation""#, MessageError::NotAnObject),
            (
                r#"{"type":"call_started"}"#,
                MessageError::MissingField {
                    kind: "call_started".into(),
                    field: "callId",
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Incoming::parse(text), Err(want), "{text}");
        }
        assert!(matches!(
            Incoming::parse("{\"type\":"),
            Err(MessageError::NotJson(_))
        ));
        assert!(serde_json::from_str::<Incoming>(r#"{"type":"client_tool_invocation"}"#).is_err());
    }

    /// A fixture line as we would emit it: camelCase, `null`s dropped.
    fn canonical(line: &str) -> Value {
        let Value::Object(map) = serde_json::from_str::<Value>(line).unwrap() else {
            panic!("fixture is not an object: {line}");
        };
        Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| match k.as_str() {
                    "invocation_id" => ("invocationId".to_owned(), v),
                    _ => (k, v),
                })
                .collect(),
        )
    }

    #[test]
    fn every_result_fixture_round_trips_through_the_builders() {
        let client = ToolChannel::Client;
        let expected = [
            ToolResultMessage::new(
                client,
                "call_1",
                ToolOutcome::Result {
                    result: "baz".into(),
                    response_type: Some(ResponseType::ToolResponse),
                },
            )
            .with_agent_reaction(AgentReaction::Speaks),
            ToolResultMessage::hang_up(client, "call_1", r#"{"strict": true}"#)
                .with_agent_reaction(AgentReaction::Speaks),
            ToolResultMessage::error(
                client,
                "call_1",
                ErrorType::Undefined,
                "Client tool test_tool is not registered (Python client)",
            ),
            ToolResultMessage::error(client, "call_1", ErrorType::ImplementationError, "boom"),
            ToolResultMessage::result(
                ToolChannel::DataConnection,
                "inv-42",
                "Transferring the caller now.",
            )
            .with_agent_reaction(AgentReaction::Listens),
            ToolResultMessage::result(
                client,
                "<tool_call_id>",
                "Successfully transferred call to agent, telling user to wait for a moment.",
            ),
        ];
        let lines: Vec<&str> = TO_ULTRAVOX.lines().collect();
        assert_eq!(lines.len(), expected.len());
        for (line, want) in lines.into_iter().zip(expected) {
            let parsed: ToolResultMessage = serde_json::from_str(line).unwrap();
            assert_eq!(parsed, want, "{line}");
            let emitted: Value = serde_json::from_str(&want.to_json()).unwrap();
            assert_eq!(emitted, canonical(line), "{line}");
        }
    }

    #[test]
    fn results_carry_a_result_xor_an_error() {
        let ok = ToolResultMessage::result(ToolChannel::DataConnection, "i1", "done");
        assert_eq!(
            serde_json::from_str::<Value>(&ok.to_json()).unwrap(),
            json!({"type": "data_connection_tool_result", "invocationId": "i1", "result": "done"})
        );
        let err = ToolResultMessage::error(
            ToolChannel::Client,
            "i2",
            ErrorType::ImplementationError,
            "x",
        )
        .with_agent_reaction(AgentReaction::SpeaksOnce);
        assert_eq!(
            serde_json::from_str::<Value>(&err.to_json()).unwrap(),
            json!({
                "type": "client_tool_result",
                "invocationId": "i2",
                "errorType": "implementation-error",
                "errorMessage": "x",
                "agentReaction": "speaks-once",
            })
        );
        let bad = [
            (
                r#"{"type":"client_tool_result","invocationId":"i","result":"r","errorType":"undefined"}"#,
                "errorType",
            ),
            (
                r#"{"type":"client_tool_result","invocationId":"i","result":"r","errorMessage":"m"}"#,
                "errorMessage",
            ),
            (
                r#"{"type":"client_tool_result","invocationId":"i","errorType":"undefined","responseType":"hang-up"}"#,
                "responseType",
            ),
            (
                r#"{"type":"client_tool_result","invocationId":"i"}"#,
                "result",
            ),
            (
                r#"{"type":"client_tool_result","invocationId":"","result":"r"}"#,
                "invocationId",
            ),
            (
                r#"{"type":"client_tool_invocation","invocationId":"i","result":"r"}"#,
                "type",
            ),
            (
                r#"{"type":"client_tool_result","invocationId":"i","result":"r","agentReaction":"shouts"}"#,
                "shouts",
            ),
            (
                r#"{"type":"client_tool_result","invocationId":"i","errorType":"boom"}"#,
                "boom",
            ),
            (
                r#"{"type":"client_tool_result","result":"r"}"#,
                "invocationId",
            ),
        ];
        for (text, mentions) in bad {
            let err = serde_json::from_str::<ToolResultMessage>(text).unwrap_err();
            assert!(err.to_string().contains(mentions), "{text}: {err}");
        }
    }

    #[test]
    fn lifeline_results_translate_for_the_model() {
        let reply = |result: ToolResult| {
            let inv = ToolInvocationMessage {
                channel: ToolChannel::DataConnection,
                tool_name: "transfer".into(),
                invocation_id: "inv-7".into(),
                parameters: json!({}),
            };
            serde_json::from_str::<Value>(&inv.reply(&result).to_json()).unwrap()
        };
        let output = |ends_call| ToolOutput {
            message: "Transferring the caller now.".into(),
            data: json!({"secret": "not for the model"}),
            ends_call,
        };
        assert_eq!(
            reply(Ok(output(false))),
            json!({
                "type": "data_connection_tool_result",
                "invocationId": "inv-7",
                "result": "Transferring the caller now.",
            })
        );
        assert_eq!(
            reply(Ok(output(true))),
            json!({
                "type": "data_connection_tool_result",
                "invocationId": "inv-7",
                "result": r#"{"strict":true}"#,
                "responseType": "hang-up",
            })
        );
        // A failure reaches the model as a result (errorMessage would be hidden from it).
        let error = ToolError::new(ErrorKind::Timeout, "the transfer took too long");
        let v = reply(Err(error.clone()));
        assert_eq!(v["result"], Value::from(error.model_text()));
        assert!(v.get("errorType").is_none() && v.get("errorMessage").is_none());
        let model: Value = serde_json::from_str(v["result"].as_str().unwrap()).unwrap();
        assert_eq!(model["error"], "timeout");
        assert_eq!(model["retryable"], true);
    }

    #[test]
    fn an_invocation_becomes_a_tool_invocation_of_the_authenticated_call() {
        let Incoming::ToolInvocation(msg) =
            Incoming::parse(FROM_ULTRAVOX.lines().nth(2).unwrap()).unwrap()
        else {
            panic!("fixture 3 is a tool invocation");
        };
        let inv = msg.into_invocation(CALL_ID);
        assert_eq!(inv.platform, Platform::Ultravox);
        assert_eq!(inv.call_ref, CALL_ID);
        assert_eq!(inv.tool_name, "transferCall");
        assert_eq!(inv.invocation_key(), "id:inv-42");
        assert_eq!(inv.arguments["transferReason"], "billing");
        assert_eq!(
            ToolChannel::DataConnection.result_type(),
            "data_connection_tool_result"
        );
        assert_eq!(
            ToolChannel::Client.invocation_type(),
            "client_tool_invocation"
        );
    }

    #[test]
    fn http_tool_headers_only_for_non_defaults() {
        assert_eq!(
            http_tool_response_headers(Some(ResponseType::HangUp), None),
            vec![("X-Ultravox-Response-Type", "hang-up")]
        );
        assert_eq!(
            http_tool_response_headers(None, Some(AgentReaction::Listens)),
            vec![("X-Ultravox-Agent-Reaction", "listens")]
        );
        assert!(http_tool_response_headers(Some(ResponseType::ToolResponse), None).is_empty());
        assert!(http_tool_response_headers(None, None).is_empty());
        assert_eq!(RESPONSE_TYPE_HANG_UP, ResponseType::HangUp.as_str());
        // Each enum's `as_str` is its serde name.
        for rt in [ResponseType::ToolResponse, ResponseType::HangUp] {
            assert_eq!(json!(rt), Value::from(rt.as_str()));
        }
        for r in [
            AgentReaction::Speaks,
            AgentReaction::Listens,
            AgentReaction::SpeaksOnce,
        ] {
            assert_eq!(json!(r), Value::from(r.as_str()));
        }
    }

    #[test]
    fn hang_up_payloads() {
        assert_eq!(hang_up_payload(true, None), r#"{"strict":true}"#);
        let v: Value = serde_json::from_str(&hang_up_payload(false, Some("Goodbye."))).unwrap();
        assert_eq!(v, json!({"strict": false, "message": "Goodbye."}));
    }
}
