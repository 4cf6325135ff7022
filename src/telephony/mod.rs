//! Acting on live calls. Tools ask for a transfer or a hang-up through [`CallControl`]; each
//! platform implements it its own way (Jambonz: commands on the call's socket, sent after the
//! tool's answer; Twilio: a REST update).

pub mod jambonz;
pub mod twilio;
pub mod ultravox;

use async_trait::async_trait;
use uuid::Uuid;

/// A failure to act on a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TelephonyError {
    /// The call ended or was never there.
    #[error("the call is no longer active")]
    CallGone,
    /// The platform refused; trying again will not help.
    #[error("refused by the platform: {0}")]
    Rejected(String),
    /// A failure that may pass.
    #[error("temporary failure: {0}")]
    Transient(String),
}

/// One dial of an on-call number.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferPlan {
    pub attempt_id: Uuid,
    /// E.164 number to ring.
    pub target: String,
    pub trunk: Option<String>,
    pub caller_id: Option<String>,
    pub ring_timeout_secs: u32,
    /// What the caller hears before the ringing.
    pub announcement: String,
    /// The on-call person must press 1 (and a machine is detected) before the caller is
    /// connected.
    pub gate: bool,
}

/// Acts on one live call.
#[async_trait]
pub trait CallControl: Send + Sync {
    /// Starts ringing the plan's target for the caller.
    async fn transfer(&self, plan: &TransferPlan) -> Result<(), TelephonyError>;
    /// Ends the call.
    async fn hang_up(&self) -> Result<(), TelephonyError>;
}
