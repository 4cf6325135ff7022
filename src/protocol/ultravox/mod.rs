//! Ultravox wire formats (`reference/ultravox-twilio-protocol.md` §1 and §2.3): how lifeline
//! declares its tools, the signatures of what Ultravox sends, the data messages of a data
//! connection and the tool results lifeline answers with. No I/O.

mod declarations;
mod messages;
mod signature;

pub(crate) use declarations::{Parameter, temporary_tool};
pub(crate) use messages::{
    Incoming, MessageError, ResponseType, ToolChannel, ToolInvocationMessage, ToolResultMessage,
    hang_up_payload, http_tool_response_headers,
};
pub use signature::sign_data_connection;
pub(crate) use signature::verify_data_connection;

/// Header names Ultravox uses. HTTP header names are case-insensitive; these are the documented
/// spellings.
pub(crate) mod headers {
    /// Data-connection upgrade: the call the connection belongs to. HTTP tools that declare the
    /// `KNOWN_PARAM_CALL_ID` automatic parameter send the same header (spelled
    /// `X-Ultravox-Call-Id`).
    pub(crate) const CALL_ID: &str = "X-Ultravox-Call-ID";
    /// Data-connection upgrade: when Ultravox signed it (ISO-8601, UTC).
    pub(crate) const SIGNATURE_TIMESTAMP: &str = "X-Ultravox-Signature-Timestamp";
    /// Data-connection upgrade: comma-separated hex HMAC-SHA256 signatures, one per secret.
    pub(crate) const SIGNATURE: &str = "X-Ultravox-Signature";
    /// Webhook: when Ultravox sent it.
    pub(crate) const WEBHOOK_TIMESTAMP: &str = "X-Ultravox-Webhook-Timestamp";
    /// Webhook: comma-separated hex HMAC-SHA256 signatures of `rawBody ‖ timestamp`.
    pub(crate) const WEBHOOK_SIGNATURE: &str = "X-Ultravox-Webhook-Signature";
    /// HTTP tool response: how the call continues; absent means a normal tool response.
    pub(crate) const RESPONSE_TYPE: &str = "X-Ultravox-Response-Type";
    /// HTTP tool response: whether the agent speaks after the result (overrides the tool's
    /// `defaultReaction`).
    pub(crate) const AGENT_REACTION: &str = "X-Ultravox-Agent-Reaction";
    /// HTTP tool response: a JSON object merged into the call state.
    #[expect(dead_code, reason = "lifeline does not set call state")]
    pub(crate) const UPDATE_CALL_STATE: &str = "X-Ultravox-Update-Call-State";
}

/// The `X-Ultravox-Response-Type` value (and `responseType`) that ends the call.
pub(crate) const RESPONSE_TYPE_HANG_UP: &str = "hang-up";
