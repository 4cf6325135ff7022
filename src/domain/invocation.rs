//! Tool names and tool invocations: which tool the model asked for, on which call, and the key
//! under which a repeat of the same invocation is recognised.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::platform::Platform;

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
    pub(crate) fn resolve(name: &str) -> Option<Self> {
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
    pub(crate) fn invocation_key(&self) -> String {
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
