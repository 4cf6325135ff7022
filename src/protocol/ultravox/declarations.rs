//! How a tool is declared to Ultravox (`selectedTools` of a call): a temporary tool whose
//! parameters are strings in the request body, implemented as a client or data-connection tool.

use serde_json::{Value, json};

use super::ToolChannel;

/// One parameter of a declared tool: a string, sent in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parameter {
    /// The name the model fills in.
    pub name: &'static str,
    /// What the model is told the parameter holds.
    pub description: &'static str,
    /// Whether the model must always fill it in.
    pub required: bool,
}

/// A `selectedTools` entry declaring the tool `name` so that its invocations reach lifeline on
/// `channel`: as a *client* tool, through the platform that carries the call (Jambonz
/// `toolHook`), or as a *data connection* tool, over Ultravox's own WebSocket to lifeline.
pub(crate) fn temporary_tool(
    name: &str,
    description: &str,
    parameters: &[Parameter],
    channel: ToolChannel,
) -> Value {
    let mut definition = json!({
        "modelToolName": name,
        "description": description,
        "dynamicParameters": parameters.iter().map(dynamic_parameter).collect::<Vec<_>>(),
    });
    definition[implementation(channel)] = json!({});
    json!({ "temporaryTool": definition })
}

fn dynamic_parameter(parameter: &Parameter) -> Value {
    json!({
        "name": parameter.name,
        "location": "PARAMETER_LOCATION_BODY",
        "schema": { "type": "string", "description": parameter.description },
        "required": parameter.required,
    })
}

/// The temporary tool's member that names its implementation.
fn implementation(channel: ToolChannel) -> &'static str {
    match channel {
        ToolChannel::Client => "client",
        ToolChannel::DataConnection => "dataConnection",
    }
}
