//! What a tool call ends with: its output for the model, or an error of a known kind.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a tool tells the model when it succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolOutput {
    /// Text for the model: what happened and what to say or do next.
    pub message: String,
    /// Structured detail kept in the log (ids, what was stored).
    #[serde(default)]
    pub data: Value,
    /// The tool ends the call (Ultravox `responseType: hang-up`).
    #[serde(default)]
    pub ends_call: bool,
}

/// The classes of failure, so the model and operators can act on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Validation,
    NotFound,
    Unauthorized,
    RateLimited,
    Timeout,
    External,
    Database,
    Internal,
}

impl ErrorKind {
    /// Every kind (a new one goes here too: `/metrics` registers its series at start).
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Validation,
        ErrorKind::NotFound,
        ErrorKind::Unauthorized,
        ErrorKind::RateLimited,
        ErrorKind::Timeout,
        ErrorKind::External,
        ErrorKind::Database,
        ErrorKind::Internal,
    ];

    /// The name stored in `tool_call_logs.error_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Timeout => "timeout",
            ErrorKind::External => "external",
            ErrorKind::Database => "database",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A failed tool call: what kind, a message the model can act on, and whether trying the same
/// call again may work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ToolError {
    pub kind: ErrorKind,
    pub message: String,
    pub retryable: bool,
}

impl ToolError {
    /// A failure with the retry flag that suits its kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let retryable = matches!(
            kind,
            ErrorKind::RateLimited | ErrorKind::Timeout | ErrorKind::External | ErrorKind::Database
        );
        Self {
            kind,
            message: message.into(),
            retryable,
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// The text shown to the model: the kind, the message and whether to retry, as JSON so the
    /// model reads it as data rather than as a successful answer.
    pub(crate) fn model_text(&self) -> String {
        serde_json::json!({
            "error": self.kind.as_str(),
            "message": self.message,
            "retryable": self.retryable,
        })
        .to_string()
    }
}

/// The result of a tool call.
pub type ToolResult = Result<ToolOutput, ToolError>;
