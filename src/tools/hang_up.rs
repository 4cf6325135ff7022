//! `hang_up`: end the call (the original's was a no-op).

use serde_json::{Value, json};

use super::args::{Fields, MAX_TEXT};
use super::context::CallContext;
use crate::domain::{ErrorKind, ToolError, ToolOutput, ToolResult};

/// Arguments of `hang_up`.
#[derive(Debug, Clone)]
pub struct HangUpArgs {
    pub reason: Option<String>,
}

impl HangUpArgs {
    /// Never refuses: the model must always be able to end the call. The reason is only kept,
    /// so one over the length limit is truncated, and one that cannot be read as text (or
    /// arguments that are not an object) is dropped; the log row keeps the arguments as sent.
    pub fn parse(args: &Value) -> Result<Self, ToolError> {
        let reason = match Fields::new(args).and_then(|f| f.text_truncated("reason", MAX_TEXT)) {
            Ok(reason) => reason,
            Err(e) => {
                tracing::debug!(error = %e.message, "hang_up reason unreadable; hanging up without it");
                None
            }
        };
        Ok(Self { reason })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_arguments_hang_up() {
        let long = "x".repeat(MAX_TEXT * 2);
        let args = HangUpArgs::parse(&json!({ "reason": long })).unwrap();
        let reason = args.reason.unwrap();
        assert_eq!(reason.chars().count(), MAX_TEXT);
        assert!(reason.ends_with('…'));
        for odd in [
            json!({ "reason": { "code": 3 } }),
            json!({ "reason": "{{reason}}" }),
            json!(["bye"]),
            json!("bye"),
            json!(null),
        ] {
            assert_eq!(HangUpArgs::parse(&odd).unwrap().reason, None, "{odd}");
        }
        assert_eq!(
            HangUpArgs::parse(&json!({ "reason": " done " }))
                .unwrap()
                .reason
                .as_deref(),
            Some("done")
        );
    }
}
