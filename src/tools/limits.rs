//! A call's limits on tool calls (per call, transfers per call, the clinic's rate), as one
//! check: the admission refuses with it in memory before any database work, the pipeline after
//! counting the call's durable log, and the store applies the same limits as thresholds.

use crate::config::Limits;
use crate::domain::{ErrorKind, ToolError};
use crate::store::{Thresholds, WindowCounts};

/// What [`limit_refusal`] refuses, as thresholds the store can apply in the database (over the
/// clinic's rate: everything).
pub(super) fn limit_thresholds(
    limits: &Limits,
    tenant_allowed: bool,
    is_transfer: bool,
) -> Thresholds {
    Thresholds {
        call: Some(if tenant_allowed {
            i64::from(limits.tool_calls_per_call)
        } else {
            0
        }),
        tool: is_transfer.then(|| i64::from(limits.transfers_per_call)),
    }
}

/// The limit an invocation breaks, if any. Counts exclude the invocation itself.
pub(super) fn limit_refusal(
    limits: &Limits,
    tenant_allowed: bool,
    is_transfer: bool,
    counts: &WindowCounts,
) -> Option<ToolError> {
    if !tenant_allowed {
        return Some(ToolError::new(
            ErrorKind::RateLimited,
            "this clinic's line is receiving too many tool calls; wait before trying again",
        ));
    }
    if counts.call >= i64::from(limits.tool_calls_per_call) {
        return Some(ToolError::new(
            ErrorKind::RateLimited,
            format!(
                "too many tool calls on this call ({} in {} s); stop calling tools",
                counts.call,
                limits.call_window.as_secs()
            ),
        ));
    }
    if is_transfer && counts.tool >= i64::from(limits.transfers_per_call) {
        let mut e = ToolError::new(
            ErrorKind::RateLimited,
            format!(
                "this call was already transferred {} times; do not transfer again, take a \
                 message with collect_info instead",
                counts.tool
            ),
        );
        e.retryable = false;
        return Some(e);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{limit_refusal, limit_thresholds};
    use crate::config::Limits;
    use crate::store::WindowCounts;

    /// The store may refuse from the thresholds alone (PostgreSQL decides in the statement that
    /// logs the invocation), so they must refuse exactly what the check refuses.
    #[test]
    fn thresholds_refuse_exactly_what_the_check_refuses() {
        let limits = Limits {
            tool_calls_per_call: 5,
            transfers_per_call: 2,
            ..Limits::default()
        };
        for tenant_allowed in [true, false] {
            for is_transfer in [true, false] {
                let t = limit_thresholds(&limits, tenant_allowed, is_transfer);
                for call in 0..8 {
                    for tool in 0..4 {
                        let counts = WindowCounts { call, tool };
                        let over =
                            t.call.is_some_and(|n| call >= n) || t.tool.is_some_and(|n| tool >= n);
                        assert_eq!(
                            limit_refusal(&limits, tenant_allowed, is_transfer, &counts).is_some(),
                            over,
                            "tenant_allowed={tenant_allowed} transfer={is_transfer} {counts:?}"
                        );
                    }
                }
            }
        }
    }
}
