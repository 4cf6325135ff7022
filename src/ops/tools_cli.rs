//! `lifeline tools schema`: the tool declarations lifeline itself sends Ultravox for an inline
//! prompt, printed for an operator who uses an Ultravox *agent* instead (the agent's call
//! template must declare them: agent calls accept no tools of their own). Printed from the same
//! functions the call set-up uses, so what is pasted is what lifeline expects.

use clap::{Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::ingress::ultravox::declarations::{client_tools, data_connection_tools};

/// The `tools` subcommands.
#[derive(Debug, Subcommand)]
pub enum ToolsCommand {
    /// Print the tools' declarations (names, descriptions, parameter schemas).
    Schema {
        /// How the agent reaches lifeline: `data-connection` (Twilio calls: Ultravox's own
        /// WebSocket to `/ultravox`) or `client` (Jambonz calls: through the call's socket).
        #[arg(long, value_enum, default_value_t = Implementation::DataConnection)]
        implementation: Implementation,
        /// `ultravox-agent`: a body for `PATCH /api/agents/{id}` (`callTemplate.selectedTools`);
        /// `selected-tools`: the bare `selectedTools` array; `markdown`: a table for people.
        #[arg(long, value_enum, default_value_t = Format::UltravoxAgent)]
        format: Format,
    },
}

/// Which Ultravox tool implementation the declarations use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Implementation {
    DataConnection,
    Client,
}

/// What `tools schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    UltravoxAgent,
    SelectedTools,
    Markdown,
}

/// The `selectedTools` entries for `implementation`.
pub fn selected_tools(implementation: Implementation) -> Vec<Value> {
    match implementation {
        Implementation::DataConnection => data_connection_tools(),
        Implementation::Client => client_tools(),
    }
}

/// The text `tools schema` prints.
pub fn render(implementation: Implementation, format: Format) -> String {
    let tools = selected_tools(implementation);
    match format {
        Format::SelectedTools => format!("{:#}\n", Value::from(tools)),
        Format::UltravoxAgent => format!(
            "{:#}\n",
            json!({ "callTemplate": { "selectedTools": tools } })
        ),
        Format::Markdown => markdown(&tools),
    }
}

/// One table per tool: parameter, required, description.
fn markdown(tools: &[Value]) -> String {
    let mut out = String::new();
    for tool in tools {
        let t = &tool["temporaryTool"];
        out.push_str(&format!(
            "`{}` — {}\n\n| parameter | required | description |\n|---|---|---|\n",
            t["modelToolName"].as_str().unwrap_or_default(),
            t["description"].as_str().unwrap_or_default()
        ));
        for p in t["dynamicParameters"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                p["name"].as_str().unwrap_or_default(),
                if p["required"] == true { "yes" } else { "no" },
                p["schema"]["description"].as_str().unwrap_or_default()
            ));
        }
        out.push('\n');
    }
    out
}

/// Runs one subcommand, writing to `out`; returns the exit code.
pub fn run(command: ToolsCommand, out: &mut dyn std::io::Write) -> i32 {
    let ToolsCommand::Schema {
        implementation,
        format,
    } = command;
    match out.write_all(render(implementation, format).as_bytes()) {
        Ok(()) => {
            if format == Format::UltravoxAgent && implementation == Implementation::DataConnection {
                eprintln!(
                    "lifeline tools: add one of ultravox.data_connection_secrets to the agent's \
                     callTemplate.sharedSecrets too, so its data connection is signed"
                );
            }
            0
        }
        Err(e) => {
            eprintln!("lifeline tools: {e}");
            1
        }
    }
}
