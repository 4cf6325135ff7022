//! The queue at a glance ([`QueueStats`]) and the label values its figures use.

use chrono::{DateTime, Utc};

/// The `status` values a [`RequestCount`] can have: the stored statuses, and `resolved` for a
/// request staff marked resolved (whatever its stored status: it is neither delivered nor
/// alerted any more).
pub const REQUEST_STATUSES: [&str; 6] = [
    "pending",
    "failed",
    "dead_letter",
    "posted",
    "cancelled",
    "resolved",
];

/// The urgency levels, in queue order.
pub const URGENCIES: [&str; 3] = ["critical", "urgent", "normal"];

/// The kinds of alert.
pub const ALERT_KINDS: [&str; 2] = ["critical_request", "dead_letter"];

/// The `status` values of an alert.
pub const ALERT_STATUSES: [&str; 4] = ["pending", "sent", "failed", "skipped"];

/// How many callback requests have one status and urgency.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestCount {
    /// One of [`REQUEST_STATUSES`].
    pub status: String,
    /// One of [`URGENCIES`].
    pub urgency: String,
    pub count: i64,
}

/// How many alerts have one kind and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AlertCount {
    /// One of [`ALERT_KINDS`].
    pub kind: String,
    /// One of [`ALERT_STATUSES`].
    pub status: String,
    pub count: i64,
}

/// The delivery queue at a glance, from
/// [`DeliveryQueue::queue_stats`](super::DeliveryQueue::queue_stats): `/metrics` publishes it as
/// gauges and the staff dashboard shows it. Counts cover every row the tables keep (`lifeline
/// prune` removes old settled ones); reading them costs what is still in the queue, not the
/// history (settled requests and alerts are counted as they settle).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QueueStats {
    /// The time the figures are for (ages are measured from it).
    pub at: DateTime<Utc>,
    /// Callback requests by status and urgency; combinations without any request are left out
    /// (see [`QueueStats::requests`] for a count that is zero then).
    pub by_status: Vec<RequestCount>,
    /// Requests a worker holds right now (claimed, its POST in flight).
    pub in_flight: i64,
    /// When the oldest request still waiting for delivery (`pending` or `failed`, not
    /// resolved) was created; `None` when nothing waits.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Alerts by kind and status; combinations without any alert are left out.
    pub alerts: Vec<AlertCount>,
}

impl QueueStats {
    /// The number of requests with this status and urgency.
    pub fn requests(&self, status: &str, urgency: &str) -> i64 {
        self.by_status
            .iter()
            .find(|c| c.status == status && c.urgency == urgency)
            .map_or(0, |c| c.count)
    }

    /// The number of requests with this status, any urgency.
    pub fn requests_with_status(&self, status: &str) -> i64 {
        self.by_status
            .iter()
            .filter(|c| c.status == status)
            .map(|c| c.count)
            .sum()
    }

    /// The number of alerts of this kind and status.
    pub fn alerts(&self, kind: &str, status: &str) -> i64 {
        self.alerts
            .iter()
            .find(|c| c.kind == kind && c.status == status)
            .map_or(0, |c| c.count)
    }

    /// How long the oldest waiting request has waited (zero when nothing waits; never
    /// negative, even when another instance's clock is ahead).
    pub fn oldest_pending_age(&self) -> std::time::Duration {
        self.oldest_pending_at
            .and_then(|t| (self.at - t).to_std().ok())
            .unwrap_or_default()
    }
}
