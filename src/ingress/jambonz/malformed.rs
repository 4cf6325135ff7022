//! Frames that cannot be read. Most are simply logged (the socket goes on), but a tool call that
//! arrived broken is answered whenever its `tool_call_id` can be recovered: the model otherwise
//! waits in silence until its tool deadline, and the caller with it.

use serde_json::Value;
use tracing::warn;

use crate::protocol::jambonz as wire;
use crate::protocol::salvage;
use crate::tools::{ErrorKind, ToolError};

/// The `llm:tool-output` for a tool call that could not be read, saying why in words.
fn unreadable_answer(tool_call_id: &str, why: &str) -> String {
    let mut e = ToolError::new(
        ErrorKind::Validation,
        format!(
            "the tool call could not be read ({why}); call the tool again with valid JSON \
             arguments"
        ),
    );
    // The same call, sent again intact, will work.
    e.retryable = true;
    wire::tool_output(tool_call_id, &e.model_text())
}

fn counted(answered: bool) {
    metrics::counter!("lifeline_malformed_frames_total", "socket" => "jambonz", "answered" => if answered { "true" } else { "false" })
        .increment(1);
}

/// A frame that is not a Jambonz message at all: answered if it holds a `tool_call_id`.
pub(super) fn unreadable_frame(text: &str, e: &serde_json::Error) -> Option<String> {
    let why = salvage::category(e);
    // Valid JSON of the wrong shape keeps its structure; otherwise the raw text is searched.
    let id = match serde_json::from_str::<Value>(text) {
        Ok(value) => tool_call_id(value.get("data").unwrap_or(&Value::Null)),
        Err(_) => salvage::id_in_text(text, &["tool_call_id", "call_id"]),
    };
    counted(id.is_some());
    // Never the error text or the frame: they may quote what the caller said.
    warn!(
        category = ?e.classify(),
        line = e.line(),
        column = e.column(),
        bytes = text.len(),
        answered = id.is_some(),
        "malformed jambonz frame"
    );
    id.map(|id| unreadable_answer(&id, why))
}

/// An `llm:tool-call` whose data does not parse: answered if its `tool_call_id` is readable.
pub(super) fn unreadable_tool_call(data: &Value, e: &serde_json::Error) -> Option<String> {
    let id = tool_call_id(data);
    counted(id.is_some());
    warn!(
        category = ?e.classify(),
        answered = id.is_some(),
        "malformed llm:tool-call"
    );
    let why = match data.get("name") {
        Some(Value::String(_)) => salvage::category(e),
        Some(_) => "the tool name is not text",
        None => "it has no tool name",
    };
    id.map(|id| unreadable_answer(&id, why))
}

/// `tool_call_id` (or the documented `call_id`) of a tool call's data.
fn tool_call_id(data: &Value) -> Option<String> {
    salvage::id_member(data, "tool_call_id").or_else(|| salvage::id_member(data, "call_id"))
}
