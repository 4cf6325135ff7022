//! The data messages of an Ultravox data connection (reference §1.1–1.5): tool invocations and
//! other messages read leniently, tool results built and checked, and the headers of an HTTP
//! tool's reply (§2.3).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value, json};

use super::{RESPONSE_TYPE_HANG_UP, headers};

/// The two message pairs that carry a tool call to lifeline. A result must use the type that
/// matches its invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ToolChannel {
    /// Ultravox's own connection to lifeline (`dataConnection.websocketUrl`).
    DataConnection,
    /// A client tool, relayed by whoever holds the call's socket (a Jambonz `toolHook`, a
    /// `serverWebSocket` client).
    Client,
}

impl ToolChannel {
    /// The `type` of an invocation on this channel.
    #[cfg_attr(not(test), expect(dead_code, reason = "from_value matches the types"))]
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
pub(crate) enum Incoming {
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
pub(crate) struct ToolInvocationMessage {
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
pub(crate) enum MessageError {
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

/// How the call continues after a tool result (`responseType`, `X-Ultravox-Response-Type`).
/// `new-stage` and `send-to-thread` exist but lifeline never uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ResponseType {
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
pub(crate) enum AgentReaction {
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
pub(crate) enum ErrorType {
    /// No tool of that name exists here.
    Undefined,
    /// The tool exists but failed.
    ImplementationError,
}

/// What a tool result carries: a result for the model, or an error — never both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolOutcome {
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
pub(crate) struct ToolResultMessage {
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
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "failures go to the model as results")
    )]
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
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "tools keep their default reaction")
    )]
    pub fn with_agent_reaction(mut self, reaction: AgentReaction) -> Self {
        self.agent_reaction = Some(reaction);
        self
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
pub(crate) fn hang_up_payload(strict: bool, message: Option<&str>) -> String {
    let mut payload = json!({ "strict": strict });
    if let Some(message) = message {
        payload["message"] = Value::from(message);
    }
    payload.to_string()
}

// ── HTTP tools (§2.3) ────────────────────────────────────────────────────────────────────────

/// Response headers of an HTTP tool reply. Nothing is emitted for the defaults (a normal tool
/// response, the tool's own `defaultReaction`), so ordinary replies carry no Ultravox headers.
pub(crate) fn http_tool_response_headers(
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
mod tests {
    use super::*;

    const CALL_ID: &str = "550e8400-e29b-41d4-a716-446655440000";

    const FROM_ULTRAVOX: &str = include_str!("../../../fixtures/ultravox/ultravox.jsonl");
    const TO_ULTRAVOX: &str = include_str!("../../../fixtures/ultravox/app.jsonl");

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
