//! Call control over a Jambonz call's own WebSocket.
//!
//! Jambonz accepts `llm:tool-output` only while the `llm` verb runs, and a `redirect` ends that
//! verb; so the tool's answer must go first and the redirect after it. This control therefore
//! only queues the commands; the adapter sends them once it has sent the tool output.

use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::{CallControl, TelephonyError, TransferPlan};
use crate::protocol::jambonz;

/// The `dial` verb of a transfer: rings the plan's target, through its trunk, showing its
/// caller id, for its ring timeout.
pub(crate) fn transfer_dial(plan: &TransferPlan) -> Value {
    jambonz::dial(
        &plan.target,
        plan.trunk.as_deref(),
        plan.caller_id.as_deref(),
        plan.ring_timeout_secs,
    )
}

/// Commands for one tool invocation, to send after its output.
#[derive(Debug, Default)]
pub struct JambonzCallControl {
    after_output: Mutex<Vec<String>>,
}

impl JambonzCallControl {
    pub fn new() -> Self {
        Self::default()
    }

    /// The frames to send after the tool output, in order.
    pub fn take_commands(&self) -> Vec<String> {
        std::mem::take(&mut *self.after_output.lock().expect("commands lock"))
    }

    fn push(&self, frame: String) {
        self.after_output.lock().expect("commands lock").push(frame);
    }
}

#[async_trait]
impl CallControl for JambonzCallControl {
    async fn transfer(&self, plan: &TransferPlan) -> Result<(), TelephonyError> {
        self.push(jambonz::redirect(vec![
            jambonz::say(&plan.announcement),
            transfer_dial(plan),
        ]));
        Ok(())
    }

    async fn hang_up(&self) -> Result<(), TelephonyError> {
        self.push(jambonz::redirect(vec![jambonz::hangup()]));
        Ok(())
    }
}
