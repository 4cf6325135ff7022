//! What the delivery queue works with: the wake-up signal, how a delivery attempt ended and
//! the record of it, and the rows of `delivery_attempts`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

/// Wakes workers in this process when work was queued (a commit that inserted or re-queued a
/// callback request or an alert). PostgreSQL's `LISTEN/NOTIFY` feeds the same signal, so
/// workers of other processes wake too.
#[derive(Debug, Clone)]
pub struct QueueSignal(watch::Sender<u64>);

impl Default for QueueSignal {
    fn default() -> Self {
        Self(watch::channel(0).0)
    }
}

impl QueueSignal {
    /// Tells every subscriber that the queue may have new work.
    pub fn bump(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver whose `changed()` resolves after the next bump.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryOutcome {
    /// The frontend answered 2xx.
    Delivered,
    /// A transient failure; try again at `at`. `counted` adds it to the request's failed
    /// attempts (`retry_count`), which the retry schedule runs on; a failed half-open trial of
    /// a frontend that is down is not counted: the frontend failed, not the request.
    Retry { at: DateTime<Utc>, counted: bool },
    /// Given up: the frontend refused the request (`rejected`, e.g. a 400) or the last attempt
    /// of the schedule failed. The request becomes a dead letter and is never retried by itself.
    DeadLetter { reason: String, rejected: bool },
    /// Not attempted (the frontend's circuit is open): handed back, due again at `at`, with no
    /// attempt counted.
    Deferred { at: DateTime<Utc> },
}

impl DeliveryOutcome {
    /// The `delivery_attempts.outcome` value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Retry { .. } => "retry",
            Self::DeadLetter { rejected: true, .. } => "rejected",
            Self::DeadLetter {
                rejected: false, ..
            } => "dead_letter",
            Self::Deferred { .. } => "deferred",
        }
    }
}

/// The tenants whose requests go to one frontend (see [`DeliveryQueue::align_retries`](super::DeliveryQueue::align_retries)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// These tenants.
    Only(Vec<String>),
    /// Every tenant but these (the default frontend's: every tenant without one of its own).
    AllExcept(Vec<String>),
}

/// The result of one POST to the frontend, to record on the claimed request.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub request_id: Uuid,
    /// The claim's `delivery_attempt` (the fence).
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub latency_ms: f64,
    pub status_code: Option<i32>,
    /// What went wrong (network error, status line), for the row and the attempt.
    pub error: Option<String>,
    /// The start of the response body, for operators.
    pub response_excerpt: Option<String>,
    /// The response body when it was JSON (the original's `frontend_response`).
    pub frontend_response: Option<Value>,
    pub outcome: DeliveryOutcome,
}

/// One row of `delivery_attempts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryAttemptRow {
    pub id: Uuid,
    pub callback_request_id: Uuid,
    pub attempt: i32,
    pub worker_id: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub latency_ms: f64,
    pub status_code: Option<i32>,
    pub outcome: String,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}
