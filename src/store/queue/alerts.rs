//! The on-call alert queue's rows and what a worker records of an alert round.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::CallbackRequestRow;

/// A row of `alerts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRow {
    pub callback_request_id: Uuid,
    /// `critical_request` or `dead_letter`.
    pub kind: String,
    /// 1, then one more each time a retried request becomes a dead letter again.
    pub round: i32,
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `pending`, `sent`, `failed` (gave up) or `skipped` (no channel configured).
    pub status: String,
    pub attempt: i32,
    pub failures: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// A row of `alert_sends`: one message on one channel.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertSendRow {
    pub id: Uuid,
    pub callback_request_id: Uuid,
    pub kind: String,
    pub round: i32,
    pub channel: String,
    pub target: String,
    pub attempt: i32,
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// An alert claimed for sending, with what it is about and what was already sent.
#[derive(Debug, Clone)]
pub struct ClaimedAlert {
    pub alert: AlertRow,
    pub request: CallbackRequestRow,
    /// `(channel, target)` pairs that already succeeded in this round: never sent again.
    pub sent: Vec<(String, String)>,
}

/// A message sent (or tried) for an alert.
#[derive(Debug, Clone)]
pub struct AlertSend {
    pub channel: &'static str,
    /// The target as stored: a number for SMS; for a webhook, its host and a digest of its URL
    /// (the URL itself is a secret).
    pub target: String,
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// Where an alert stands after a round of sends.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertOutcome {
    /// Every channel has it.
    Sent,
    /// Some channel failed; try the missing ones at `at`.
    Retry { at: DateTime<Utc>, error: String },
    /// Gave up after the last attempt (shown to operators).
    Failed { error: String },
    /// Nothing to send: no alert channel configured, or staff resolved the request already.
    Skipped { reason: String },
}

/// The result of an alert round, to record on the claimed alert (its sends are recorded one by
/// one as they happen, with [`DeliveryQueue::record_alert_send`](super::DeliveryQueue::record_alert_send)).
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub callback_request_id: Uuid,
    pub kind: String,
    /// The claim's `attempt` (the fence).
    pub attempt: i32,
    pub worker_id: String,
    pub at: DateTime<Utc>,
    pub outcome: AlertOutcome,
}
