//! `hang_up`: end the call (the original's was a no-op).

use serde_json::{Value, json};

use super::args::Fields;
use super::pipeline::CallContext;
use super::{ErrorKind, ToolError, ToolOutput, ToolResult};

/// Arguments of `hang_up`.
#[derive(Debug, Clone)]
pub struct HangUpArgs {
    pub reason: Option<String>,
}

impl HangUpArgs {
    pub fn parse(args: &Value) -> Result<Self, ToolError> {
        Ok(Self {
            reason: Fields::new(args)?.text("reason")?,
        })
    }
}

/// Ends the call through the platform.
pub async fn run(args: &HangUpArgs, ctx: &CallContext<'_>) -> ToolResult {
    ctx.control.hang_up().await.map_err(|e| {
        ToolError::new(
            ErrorKind::External,
            format!("the call could not be ended: {e}"),
        )
    })?;
    Ok(ToolOutput {
        message: "The call is ending.".into(),
        data: json!({ "reason": args.reason }),
        ends_call: true,
    })
}
