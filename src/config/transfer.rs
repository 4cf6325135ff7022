//! Where a tenant's transfers go (`[tenants.transfer]`): the on-call numbers, the trunk and
//! caller id, and the accept gate.

use serde::Deserialize;

use super::validate::{non_empty, phone};
use crate::phone::E164;

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferTargets {
    pub primary: E164,
    pub secondary: Option<E164>,
    /// Carrier name as configured in Jambonz; `None` lets Jambonz pick by caller id.
    pub trunk: Option<String>,
    /// Caller id presented to the on-call person; `None` passes the caller's own number.
    pub caller_id: Option<E164>,
    pub ring_timeout_secs: u32,
    /// The on-call person must press 1 to take the call (issue 14); off, an answer is taken.
    pub accept_gate: bool,
    /// Seconds the gate waits for the key after its prompt.
    pub gate_timeout_secs: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransfer {
    #[serde(default)]
    primary: String,
    secondary: Option<String>,
    trunk: Option<String>,
    caller_id: Option<String>,
    ring_timeout_secs: Option<u32>,
    accept_gate: Option<bool>,
    gate_timeout_secs: Option<u32>,
}

impl RawTransfer {
    /// The targets, or `None` (with the problems listed) when the primary number is unusable.
    pub(super) fn validate(
        self,
        label: &str,
        problems: &mut Vec<String>,
    ) -> Option<TransferTargets> {
        let primary = phone(label, "transfer.primary", &self.primary, problems);
        let secondary = self
            .secondary
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| phone(label, "transfer.secondary", s, problems));
        let caller_id = self
            .caller_id
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| phone(label, "transfer.caller_id", s, problems));
        let ring = self.ring_timeout_secs.unwrap_or(25);
        if !(5..=120).contains(&ring) {
            problems.push(format!(
                "{label}: transfer.ring_timeout_secs must be between 5 and 120"
            ));
        }
        let gate_timeout = self.gate_timeout_secs.unwrap_or(8);
        if !(3..=30).contains(&gate_timeout) {
            problems.push(format!(
                "{label}: transfer.gate_timeout_secs must be between 3 and 30"
            ));
        }
        if primary.is_some() && primary == secondary {
            problems.push(format!(
                "{label}: transfer.secondary must differ from transfer.primary"
            ));
        }
        primary.map(|primary| TransferTargets {
            primary,
            secondary,
            trunk: non_empty(self.trunk),
            caller_id,
            ring_timeout_secs: ring,
            accept_gate: self.accept_gate.unwrap_or(true),
            gate_timeout_secs: gate_timeout,
        })
    }
}
