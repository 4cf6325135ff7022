//! The callback delivery queue and the on-call alert queue, on both engines.
//!
//! A worker *claims* due requests: it writes its id and a lease expiry on them and bumps their
//! `delivery_attempt`, in one statement (PostgreSQL skips rows another worker has locked; SQLite
//! has one writer). Completion is *fenced*: it only applies while the same worker still holds the
//! same attempt, so a request whose lease expired and was delivered by another worker is never
//! finished twice. Expired leases are returned by [`DeliveryQueue::rescue_expired`].
//!
//! Alerts are queued by triggers (see `migrations/*/0003_delivery.sql`) in the transaction that
//! makes them necessary: a `critical` request when it is inserted, a dead letter when it becomes
//! one.
//!
//! This module holds the [`DeliveryQueue`] trait; what it works with is in `delivery`, `alerts`,
//! `staff` and `stats`, and its SQL, shared by both engines, in `sql`.

mod alerts;
mod delivery;
pub(crate) mod sql;
mod staff;
mod stats;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

pub use alerts::*;
pub use delivery::*;
pub(crate) use sql::{alert_columns, alert_due, impl_delivery_queue};
pub use staff::*;
pub use stats::*;

use super::{CallbackRequestRow, StoreError};

/// The delivery and alert queues.
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Wakes this process's workers when work is queued (and, on PostgreSQL, when another
    /// process queued work).
    fn queue_signal(&self) -> watch::Receiver<u64>;

    /// Claims up to `limit` due, unleased callback requests for `worker` until `lease_until`:
    /// `critical`, then `urgent`, then `normal`, oldest first within each.
    async fn claim_callbacks(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<CallbackRequestRow>, StoreError>;

    /// Records a delivery attempt and, if the worker still holds that attempt's lease, applies
    /// its outcome to the request. Returns whether the outcome was applied.
    async fn record_delivery(&self, record: &DeliveryRecord) -> Result<bool, StoreError>;

    /// Makes the waiting, unleased requests of the tenants in `scope` due at `at`: those due
    /// later are moved to `at` and, with `hold_sooner`, those due sooner wait until `at` too.
    /// Used when a frontend's circuit opens (every waiting request is then due when trials are
    /// let through, and claim order alone, urgency then age, decides which go first) and while
    /// it is half-open with every trial slot taken. Returns how many requests moved.
    async fn align_retries(
        &self,
        scope: &TenantScope,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        hold_sooner: bool,
    ) -> Result<u64, StoreError>;

    /// Gives a claimed request back untouched (shutdown before its POST finished).
    async fn release_callback(
        &self,
        id: Uuid,
        attempt: i32,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Returns every lease (callback requests and alerts) that expired before `now`; returns how
    /// many.
    async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Claims up to `limit` due alerts, oldest first.
    async fn claim_alerts(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ClaimedAlert>, StoreError>;

    /// Records one message of an alert's current round, as soon as it was sent, so that no
    /// later round (or another worker, after a lost lease) sends it again.
    async fn record_alert_send(&self, alert: &AlertRow, send: &AlertSend)
    -> Result<(), StoreError>;

    /// Records the outcome of an alert round if the worker still holds the alert.
    async fn record_alert(&self, record: &AlertRecord) -> Result<bool, StoreError>;

    /// Gives a claimed alert back untouched.
    async fn release_alert(
        &self,
        callback_request_id: Uuid,
        kind: &str,
        attempt: i32,
        worker: &str,
    ) -> Result<bool, StoreError>;

    /// One callback request.
    async fn callback_request(&self, id: Uuid) -> Result<Option<CallbackRequestRow>, StoreError>;

    /// The delivery attempts of a request, oldest first.
    async fn delivery_attempts(
        &self,
        callback_request_id: Uuid,
    ) -> Result<Vec<DeliveryAttemptRow>, StoreError>;

    /// The alerts of a request and every message sent for them.
    async fn alerts_for(
        &self,
        callback_request_id: Uuid,
    ) -> Result<(Vec<AlertRow>, Vec<AlertSendRow>), StoreError>;

    /// Applies a staff action, with its audit row, in one transaction; returns the updated row.
    async fn staff_action(
        &self,
        id: Uuid,
        action: &StaffAction,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<CallbackRequestRow, ActionError>;

    /// The audit trail of a request, oldest first.
    async fn audit_trail(&self, callback_request_id: Uuid) -> Result<Vec<AuditRow>, StoreError>;

    /// Counts of the queue as of `now` (requests by status and urgency, in flight, the oldest
    /// waiting request, alerts by kind and status).
    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError>;
}
