//! What Ultravox is told about lifeline's tools (the `selectedTools` of a call lifeline sets
//! up, or has Jambonz set up): each tool's description and parameters for the model, declared so
//! that its invocations reach lifeline.

use std::sync::LazyLock;

use serde_json::Value;

use crate::protocol::ultravox::{Parameter, ToolChannel, temporary_tool};
use crate::tools::ToolName;

const fn param(name: &'static str, description: &'static str, required: bool) -> Parameter {
    Parameter {
        name,
        description,
        required,
    }
}

/// The model-facing description and parameters of a tool.
fn definition(tool: ToolName) -> (&'static str, Vec<Parameter>) {
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
    // Built once: they are the same for every call, and every call's answer carries them.
    static TOOLS: LazyLock<Vec<Value>> = LazyLock::new(|| tools_on(ToolChannel::Client));
    TOOLS.clone()
}

/// `selectedTools` entries declaring every lifeline tool as a *data connection* tool: Ultravox
/// sends the invocations over its own WebSocket to lifeline (`GET /ultravox`), which is how a
/// Twilio-carried call reaches lifeline's tools.
pub fn data_connection_tools() -> Vec<Value> {
    static TOOLS: LazyLock<Vec<Value>> = LazyLock::new(|| tools_on(ToolChannel::DataConnection));
    TOOLS.clone()
}

fn tools_on(channel: ToolChannel) -> Vec<Value> {
    ToolName::ALL
        .iter()
        .map(|&tool| {
            let (description, params) = definition(tool);
            temporary_tool(tool.as_str(), description, &params, channel)
        })
        .collect()
}
