//! Pipeline limits (`[limits]`): the tool deadline and the sliding-window caps on tool calls
//! and transfers.

use std::time::Duration;

use serde::Deserialize;

/// Pipeline limits. Windows slide: a count covers the last `window` seconds, whenever asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// How long a handler may run before the model is answered with a timeout (Ultravox waits
    /// 2.5 s by default, so this must stay below).
    pub tool_timeout: Duration,
    /// Tool invocations allowed per call within `call_window`.
    pub tool_calls_per_call: u32,
    pub call_window: Duration,
    /// Transfers allowed per call within `transfer_window`: a runaway model must not be able to
    /// transfer 50 times.
    pub transfers_per_call: u32,
    pub transfer_window: Duration,
    /// Tool invocations allowed per tenant per minute (per instance).
    pub tool_calls_per_tenant_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tool_timeout: Duration::from_millis(2000),
            tool_calls_per_call: 30,
            call_window: Duration::from_secs(60),
            transfers_per_call: 3,
            transfer_window: Duration::from_secs(600),
            tool_calls_per_tenant_per_minute: 600,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    tool_timeout_ms: Option<u64>,
    tool_calls_per_call: Option<u32>,
    call_window_secs: Option<u64>,
    transfers_per_call: Option<u32>,
    transfer_window_secs: Option<u64>,
    tool_calls_per_tenant_per_minute: Option<u32>,
}

impl RawLimits {
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> Limits {
        let d = Limits::default();
        let limits = Limits {
            tool_timeout: self
                .tool_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.tool_timeout),
            tool_calls_per_call: self.tool_calls_per_call.unwrap_or(d.tool_calls_per_call),
            call_window: self
                .call_window_secs
                .map(Duration::from_secs)
                .unwrap_or(d.call_window),
            transfers_per_call: self.transfers_per_call.unwrap_or(d.transfers_per_call),
            transfer_window: self
                .transfer_window_secs
                .map(Duration::from_secs)
                .unwrap_or(d.transfer_window),
            tool_calls_per_tenant_per_minute: self
                .tool_calls_per_tenant_per_minute
                .unwrap_or(d.tool_calls_per_tenant_per_minute),
        };
        if !(100..=39_000).contains(&limits.tool_timeout.as_millis()) {
            problems.push(
                "limits.tool_timeout_ms must be between 100 and 39000 (Ultravox waits at most 40 s)"
                    .into(),
            );
        }
        for (name, v) in [
            ("tool_calls_per_call", limits.tool_calls_per_call),
            ("transfers_per_call", limits.transfers_per_call),
            (
                "tool_calls_per_tenant_per_minute",
                limits.tool_calls_per_tenant_per_minute,
            ),
        ] {
            if v == 0 {
                problems.push(format!("limits.{name} must be at least 1"));
            }
        }
        for (name, v) in [
            ("call_window_secs", limits.call_window),
            ("transfer_window_secs", limits.transfer_window),
        ] {
            if v.is_zero() {
                problems.push(format!("limits.{name} must be at least 1"));
            }
        }
        limits
    }
}
