//! The Jambonz WebSocket API, as the feature-server speaks it (see
//! `shared/reference/jambonz-protocol.md`): message envelopes, the data we read, and the acks,
//! commands and verbs we send.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The only subprotocol the feature-server offers, and the one we must echo.
pub(crate) const SUBPROTOCOL: &str = "ws.jambonz.org";
/// Jambonz drops the socket on any message we send that is larger (its `ws` library's
/// `maxPayload` counts a fragmented message whole, so fragments do not get around it).
pub const MAX_FRAME_BYTES: usize = 24 * 1024;

/// Hooks we configure in our verbs; Jambonz echoes them in `hook`.
pub(crate) mod hooks {
    /// The `llm` verb's tool calls.
    pub(crate) const TOOL_CALL: &str = "/tool-call";
    /// The `llm` verb's end (its actionHook).
    pub(crate) const LLM_COMPLETE: &str = "/llm-complete";
    /// The `llm` verb's events.
    pub(crate) const LLM_EVENT: &str = "/llm-event";
    /// The transfer dial's outcome (its actionHook).
    pub(crate) const DIAL_ACTION: &str = "/dial-action";
    /// The transfer dial's confirm application, run on the on-call person's leg.
    pub(crate) const DIAL_CONFIRM: &str = "/dial-confirm";
    /// The acceptance gate's `gather` on the on-call person's leg.
    pub(crate) const DIAL_GATE: &str = "/dial-gate";
    /// Answering-machine detection on the on-call person's leg.
    pub(crate) const DIAL_AMD: &str = "/dial-amd";
}

/// Any message from the feature-server.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Envelope {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub msgid: Option<String>,
    #[serde(default)]
    pub call_sid: Option<String>,
    #[serde(default)]
    pub hook: Option<String>,
    #[serde(default)]
    pub data: Value,
}

impl Envelope {
    /// Whether Jambonz waits for our `ack` to this message (and fails the call without one).
    pub fn wants_ack(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "session:new"
                | "session:reconnect"
                | "session:redirect"
                | "session:adulting"
                | "verb:hook"
                | "dial:confirm"
                | "queue:status"
        )
    }
}

/// `data` of `session:new` / `session:reconnect` (snake-cased call info).
#[derive(Debug, Clone, Default, Deserialize)]
#[expect(dead_code, reason = "every field sent is declared; not all are read")]
pub(crate) struct SessionData {
    #[serde(default)]
    pub call_sid: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub caller_name: Option<String>,
    #[serde(default)]
    pub account_sid: Option<String>,
    #[serde(default)]
    pub application_sid: Option<String>,
    #[serde(default)]
    pub call_status: Option<String>,
}

/// `data` of `llm:tool-call` (the code sends `tool_call_id`; old docs said `call_id`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ToolCallData {
    #[serde(alias = "call_id")]
    pub tool_call_id: String,
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

/// `data` of `call:status` and the call-info part of hooks.
#[derive(Debug, Clone, Default, Deserialize)]
#[expect(dead_code, reason = "every field sent is declared; not all are read")]
pub(crate) struct CallInfo {
    #[serde(default)]
    pub call_sid: Option<String>,
    #[serde(default)]
    pub call_status: Option<String>,
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub sip_status: Option<i64>,
    #[serde(default)]
    pub duration: Option<i64>,
    #[serde(default)]
    pub parent_call_sid: Option<String>,
}

/// The dial verb's actionHook payload: the dial's result and the caller's own call-info.
#[derive(Debug, Clone, Default, Deserialize)]
#[expect(dead_code, reason = "every field sent is declared; not all are read")]
pub(crate) struct DialResult {
    #[serde(default)]
    pub dial_call_status: Option<String>,
    #[serde(default)]
    pub dial_sip_status: Option<i64>,
    #[serde(default)]
    pub dial_call_sid: Option<String>,
    /// The caller's leg: `completed` when the caller hung up while the dial rang (the
    /// feature-server kills the dial and still sends this hook, `lib/tasks/dial.js`).
    #[serde(default)]
    pub call_status: Option<String>,
    /// `caller` or `jambonz`, once the caller's leg ended.
    #[serde(default)]
    pub call_termination_by: Option<String>,
}

impl DialResult {
    /// Only `completed` means the on-call person answered; a ring timeout may report the last
    /// progress status (`ringing`) instead of `no-answer`, so everything else is a failure.
    pub fn answered(&self) -> bool {
        self.dial_call_status.as_deref() == Some("completed")
    }

    /// Whether the caller's own leg is over (the hook then only reports; its verbs are dropped).
    pub fn caller_gone(&self) -> bool {
        self.call_status.as_deref().is_some_and(is_final_status)
    }
}

/// The completion reason the llm verb reports when the conversation simply ended (also when our
/// own `redirect` ended it to transfer or hang up).
const NORMAL_END: &str = "normal conversation end";

/// How the llm verb ended, from its actionHook's `completion_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentEnd {
    /// The conversation ended.
    Normal,
    /// The agent could not start or stopped: the call must not end on the caller.
    Failed(AgentFailureKind),
}

/// The failures the feature-server's llm tasks report (`lib/tasks/llm/llms/*_s2s.js`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AgentFailureKind {
    /// `connection failure`, or `connection failure - <error>` when the vendor call could not
    /// be created (Ultravox: `connection failure - Error: Ultravox Error registering
    /// call:503 - …`, for any 4xx/5xx or a bad key).
    ConnectionFailure,
    /// `disconnect from remote end`.
    Disconnected,
    /// `server failure` (a failed response) or `server error` (a vendor error event).
    Server,
    /// `client error calling function` / `client error calling mcp function`: the tool hook
    /// could not be delivered.
    ToolDelivery,
    /// A reason this version does not know, or none at all: treated as a failure, because a
    /// caller rung back by mistake costs a minute and a caller dropped may cost a life.
    Unknown,
}

impl AgentEnd {
    /// Reads a completion reason (case and surrounding space do not matter; suffixes such as
    /// the error text after `connection failure - ` are details of the same reason).
    pub fn classify(completion_reason: &str) -> Self {
        let reason = completion_reason.trim().to_ascii_lowercase();
        if reason == NORMAL_END {
            return AgentEnd::Normal;
        }
        let kind = if reason.starts_with("connection failure") {
            AgentFailureKind::ConnectionFailure
        } else if reason.starts_with("disconnect from remote end") {
            AgentFailureKind::Disconnected
        } else if reason.starts_with("server failure") || reason.starts_with("server error") {
            AgentFailureKind::Server
        } else if reason.starts_with("client error calling") {
            AgentFailureKind::ToolDelivery
        } else {
            AgentFailureKind::Unknown
        };
        AgentEnd::Failed(kind)
    }
}

/// Whether the llm verb ended because the agent failed rather than because the conversation
/// ended (a redirect we sent to transfer is reported as a normal end). See [`AgentEnd`].
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "the session matches on AgentEnd")
)]
pub(crate) fn is_agent_failure(completion_reason: &str) -> bool {
    matches!(AgentEnd::classify(completion_reason), AgentEnd::Failed(_))
}

/// Final call statuses.
pub(crate) fn is_final_status(status: &str) -> bool {
    matches!(status, "completed" | "failed" | "busy" | "no-answer")
}

/// `{"type":"ack","msgid":…,"data":[verbs]}`; no `data` means "carry on".
pub(crate) fn ack(msgid: &str, verbs: Option<Vec<Value>>) -> String {
    // Serialized as it stands: `json!` would first copy the verbs (the prompt and every tool's
    // declaration) into a new `Value`, node by node.
    #[derive(Serialize)]
    struct Ack<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        msgid: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<Vec<Value>>,
    }
    serde_json::to_string(&Ack {
        kind: "ack",
        msgid,
        data: verbs,
    })
    .expect("a JSON value always serializes")
}

/// The Ultravox tool result, sent while the `llm` verb still runs.
pub(crate) fn tool_output(tool_call_id: &str, result: &str) -> String {
    // Written straight from borrowed fields: `json!` built a map of owned values first, on
    // every tool call.
    #[derive(Serialize)]
    struct Output<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        command: &'static str,
        #[serde(rename = "queueCommand")]
        queue_command: bool,
        tool_call_id: &'a str,
        data: Data<'a>,
    }
    #[derive(Serialize)]
    struct Data<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        invocation_id: &'a str,
        result: &'a str,
    }
    serde_json::to_string(&Output {
        kind: "command",
        command: "llm:tool-output",
        queue_command: false,
        tool_call_id,
        data: Data {
            kind: "client_tool_result",
            invocation_id: tool_call_id,
            result,
        },
    })
    .expect("strings and a bool always serialize")
}

/// Replaces the running verb stack (and so ends the `llm` verb).
pub(crate) fn redirect(verbs: Vec<Value>) -> String {
    let mut command = json!({ "type": "command", "command": "redirect", "queueCommand": false });
    // Moved in, not copied as `json!` would.
    command["data"] = Value::Array(verbs);
    command.to_string()
}

/// Says `text`.
pub(crate) fn say(text: &str) -> Value {
    json!({ "verb": "say", "text": text })
}

/// Hangs up.
pub(crate) fn hangup() -> Value {
    json!({ "verb": "hangup" })
}

/// The confirm application of a gated transfer, run by the feature-server on the on-call
/// person's leg (`lib/utils/place-outdial.js` `_executeApp`: still connected when it ends =
/// accepted, hung up = declined):
/// - the whisper;
/// - answering-machine detection on that leg (`config` with `amd`; the `dial` verb's own `amd`
///   only starts once the leg is accepted, `lib/tasks/dial.js` `_selectSingleDial`, too late
///   to keep a voicemail from "accepting"), its events to [`hooks::DIAL_AMD`];
/// - a one-key `gather` whose result goes to [`hooks::DIAL_GATE`], where 1 accepts and
///   anything else (or the timeout) hangs the leg up.
pub(crate) fn gate_verbs(whisper: &str, prompt: &str, timeout_secs: u32) -> Vec<Value> {
    vec![
        say(whisper),
        json!({ "verb": "config", "amd": { "actionHook": hooks::DIAL_AMD } }),
        json!({
            "verb": "gather",
            "input": ["digits"],
            "numDigits": 1,
            "timeout": timeout_secs,
            "actionHook": hooks::DIAL_GATE,
            "say": { "text": prompt },
        }),
    ]
}

/// The gate's `gather` result (`lib/tasks/gather.js`: `{reason: "dtmfDetected", digits}` or
/// `{reason: "timeout"}`), with the leg's call-info.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct GateResult {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub digits: Option<String>,
}

impl GateResult {
    /// Only the single key 1 accepts.
    pub fn accepted(&self) -> bool {
        self.digits.as_deref().map(str::trim) == Some("1")
    }
}

/// An answering-machine detection event (`type`: `amd_human_detected`,
/// `amd_machine_detected`, `amd_tone_detected`, `amd_machine_stopped_speaking`,
/// `amd_no_speech_detected`, `amd_decision_timeout`, `amd_error`, `amd_stopped`).
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct AmdEvent {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl AmdEvent {
    /// The detector decided a machine answered (a long greeting, a beep).
    pub fn machine(&self) -> bool {
        matches!(
            self.kind.as_deref(),
            Some("amd_machine_detected" | "amd_tone_detected" | "amd_machine_stopped_speaking")
        )
    }
}

/// The PSTN dial of a transfer: ring `number` (through `trunk`, showing `caller_id`, when
/// given) for `ring_timeout_secs`, report the outcome to [`hooks::DIAL_ACTION`], and ask
/// [`hooks::DIAL_CONFIRM`] first so the on-call person hears who is calling before connecting.
pub(crate) fn dial(
    number: &str,
    trunk: Option<&str>,
    caller_id: Option<&str>,
    ring_timeout_secs: u32,
) -> Value {
    let mut target = json!({
        "type": "phone",
        "number": number,
        "confirmHook": hooks::DIAL_CONFIRM,
    });
    if let Some(trunk) = trunk {
        target["trunk"] = json!(trunk);
    }
    let mut dial = json!({
        "verb": "dial",
        "target": [target],
        "timeout": ring_timeout_secs,
        "actionHook": hooks::DIAL_ACTION,
    });
    if let Some(caller_id) = caller_id {
        dial["callerId"] = json!(caller_id);
    }
    dial
}

/// Answers the call.
pub(crate) fn answer() -> Value {
    json!({ "verb": "answer" })
}

/// The `llm` verb that runs an Ultravox agent with lifeline's hooks: the verb's end goes to
/// [`hooks::LLM_COMPLETE`], its `createCall` event to [`hooks::LLM_EVENT`], tool calls to
/// [`hooks::TOOL_CALL`]. `auth` holds the API key and, for an agent call, `agent_id`; `model`
/// is only sent when given (an agent has its own); `llm_options` go to Ultravox as they are.
pub(crate) fn ultravox_llm(
    api_key: &str,
    agent_id: Option<&str>,
    model: Option<&str>,
    llm_options: Map<String, Value>,
) -> Value {
    let mut auth = json!({ "apiKey": api_key });
    if let Some(agent_id) = agent_id {
        auth["agent_id"] = json!(agent_id);
    }
    let mut llm = json!({
        "verb": "llm",
        "vendor": "ultravox",
        "actionHook": hooks::LLM_COMPLETE,
        "eventHook": hooks::LLM_EVENT,
        "toolHook": hooks::TOOL_CALL,
        "events": ["createCall"],
    });
    // Moved in: `json!` copies a `Value` given to it, and the options hold the prompt and the
    // tools' declarations.
    llm["auth"] = auth;
    llm["llmOptions"] = Value::Object(llm_options);
    if let Some(model) = model {
        llm["model"] = json!(model);
    }
    llm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every completion reason the feature-server's llm tasks produce (v0.9.8,
    /// `lib/tasks/llm/llms/ultravox_s2s.js`, `openai_s2s.js`, `elevenlabs_s2s.js`: `results =
    /// {completionReason: …}`), plus the forms `${err}` gives the start-up failure.
    #[test]
    fn every_failure_form_of_the_feature_server_is_a_failure() {
        use AgentFailureKind::*;
        for (reason, kind) in [
            ("connection failure", ConnectionFailure),
            (
                "connection failure - Error: Ultravox Error registering call:503 - Service Unavailable",
                ConnectionFailure,
            ),
            (
                "connection failure - Error: Ultravox Error registering call:401 - Invalid API key",
                ConnectionFailure,
            ),
            (
                "connection failure - Error: Ultravox Error registering call:400 - undefined",
                ConnectionFailure,
            ),
            (
                "connection failure - SyntaxError: Unexpected token '<', \"<html>\" is not valid JSON",
                ConnectionFailure,
            ),
            (
                "connection failure - Error: Error calling uuid_ultravox_s2s: \"-ERR no such channel\"",
                ConnectionFailure,
            ),
            ("Connection Failure - Error: x", ConnectionFailure),
            ("  connection failure  ", ConnectionFailure),
            ("disconnect from remote end", Disconnected),
            ("server failure", Server),
            ("server error", Server),
            ("SERVER ERROR", Server),
            ("client error calling function", ToolDelivery),
            ("client error calling mcp function", ToolDelivery),
            ("", Unknown),
            ("something a newer feature-server says", Unknown),
        ] {
            assert_eq!(
                AgentEnd::classify(reason),
                AgentEnd::Failed(kind),
                "{reason:?}"
            );
            assert!(is_agent_failure(reason), "{reason:?}");
        }
    }

    #[test]
    fn only_the_normal_end_is_normal() {
        for reason in [
            "normal conversation end",
            "Normal Conversation End",
            " normal conversation end\n",
        ] {
            assert_eq!(AgentEnd::classify(reason), AgentEnd::Normal, "{reason:?}");
            assert!(!is_agent_failure(reason));
        }
    }

    #[test]
    fn a_dial_result_after_the_caller_hung_up_says_so() {
        // lib/tasks/dial.js sends its actionHook after the kill; call-info then carries the
        // caller's completed leg.
        let result: DialResult = serde_json::from_value(json!({
            "call_status": "completed",
            "call_termination_by": "caller",
            "dial_call_status": "early-media",
            "dial_sip_status": 183,
        }))
        .unwrap();
        assert!(result.caller_gone());
        assert!(!result.answered());
        let ringing: DialResult = serde_json::from_value(json!({
            "call_status": "in-progress",
            "dial_call_status": "ringing",
        }))
        .unwrap();
        assert!(!ringing.caller_gone());
    }
}
