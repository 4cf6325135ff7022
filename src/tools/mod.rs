//! Tools the AI agent calls, independent of any wire format.
//!
//! An ingress adapter turns a platform message into a [`ToolInvocation`], hands it to the
//! [`pipeline`], and turns the `Result<ToolOutput, ToolError>` back into its own format.

pub mod admission;
pub mod args;
pub mod business_hours;
pub mod collect_info;
pub mod hang_up;
pub mod pipeline;
pub mod transfer;
pub mod urgency;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The platform an invocation (or a call) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Jambonz,
    Twilio,
    Ultravox,
}

impl Platform {
    /// Every platform (a new one goes here too: `/metrics` registers its series at start).
    pub const ALL: [Platform; 3] = [Platform::Jambonz, Platform::Twilio, Platform::Ultravox];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Jambonz => "jambonz",
            Platform::Twilio => "twilio",
            Platform::Ultravox => "ultravox",
        }
    }

    /// The platform stored under `name` (the inverse of [`Platform::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "jambonz" => Some(Platform::Jambonz),
            "twilio" => Some(Platform::Twilio),
            "ultravox" => Some(Platform::Ultravox),
            _ => None,
        }
    }
}

/// The tools lifeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolName {
    CollectInfo,
    Transfer,
    HangUp,
}

impl ToolName {
    /// Every tool, for declaring them to the AI platform.
    pub const ALL: [ToolName; 3] = [ToolName::CollectInfo, ToolName::Transfer, ToolName::HangUp];

    /// Resolves a canonical name or one of the original system's names.
    pub fn resolve(name: &str) -> Option<Self> {
        match name {
            "collect_info" | "collectNameNumberConcernPetName" | "collectCallerInfo" => {
                Some(ToolName::CollectInfo)
            }
            "transfer" | "transferFromAiTriageWithMetadata" | "transferToOnCall" => {
                Some(ToolName::Transfer)
            }
            "hang_up" | "hangUp" => Some(ToolName::HangUp),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolName::CollectInfo => "collect_info",
            ToolName::Transfer => "transfer",
            ToolName::HangUp => "hang_up",
        }
    }
}

/// One tool call, as every platform's adapter describes it.
#[derive(Debug, Clone)]
pub struct ToolInvocation {
    pub platform: Platform,
    /// The platform's id of the call leg the tool acts on (Jambonz call_sid, Twilio CallSid…),
    /// always taken from our own records or the authenticated connection, never from arguments.
    pub call_ref: String,
    /// The platform's invocation id, when it gives one.
    pub invocation_id: Option<String>,
    /// The tool name exactly as the model used it.
    pub tool_name: String,
    pub arguments: Value,
}

impl ToolInvocation {
    /// The key under which a repeat of this invocation is recognised: the platform's invocation
    /// id, or a hash of the tool name and arguments when the platform gives no id.
    pub fn invocation_key(&self) -> String {
        match &self.invocation_id {
            Some(id) if !id.is_empty() => format!("id:{id}"),
            _ => {
                let mut h = Sha256::new();
                h.update(self.tool_name.as_bytes());
                h.update([0]);
                // serde_json writes object keys in sorted order (no `preserve_order`), so equal
                // arguments hash equally whatever order the model wrote them in.
                h.update(self.arguments.to_string().as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        }
    }
}

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

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    /// The text shown to the model: the kind, the message and whether to retry, as JSON so the
    /// model reads it as data rather than as a successful answer.
    pub fn model_text(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn original_names_are_aliases() {
        for (name, tool) in [
            ("collectNameNumberConcernPetName", ToolName::CollectInfo),
            ("collectCallerInfo", ToolName::CollectInfo),
            ("transferFromAiTriageWithMetadata", ToolName::Transfer),
            ("transferToOnCall", ToolName::Transfer),
            ("hangUp", ToolName::HangUp),
            ("hang_up", ToolName::HangUp),
        ] {
            assert_eq!(ToolName::resolve(name), Some(tool));
        }
        assert_eq!(ToolName::resolve("coldTransfer"), None);
    }

    #[test]
    fn content_key_ignores_argument_order_and_id_wins() {
        let a = ToolInvocation {
            platform: Platform::Ultravox,
            call_ref: "c".into(),
            invocation_id: None,
            tool_name: "transfer".into(),
            arguments: serde_json::from_str(r#"{"a":1,"b":2}"#).unwrap(),
        };
        let mut b = a.clone();
        b.arguments = serde_json::from_str(r#"{"b":2,"a":1}"#).unwrap();
        assert_eq!(a.invocation_key(), b.invocation_key());
        b.arguments = json!({"a": 1, "b": 3});
        assert_ne!(a.invocation_key(), b.invocation_key());
        b.invocation_id = Some("inv-1".into());
        assert_eq!(b.invocation_key(), "id:inv-1");
    }
}
