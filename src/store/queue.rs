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

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::{CallbackRequestRow, StoreError};

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

/// The tenants whose requests go to one frontend (see [`DeliveryQueue::align_retries`]).
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
/// one as they happen, with [`DeliveryQueue::record_alert_send`]).
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

/// A staff action on a callback request.
#[derive(Debug, Clone)]
pub enum StaffAction {
    /// Queue it for delivery again, now, with a fresh retry schedule.
    Retry,
    /// Stop delivering it.
    Cancel { note: Option<String> },
    /// The caller was called back.
    Resolve { note: Option<String> },
}

impl StaffAction {
    /// The `audit_log.action` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel { .. } => "cancel",
            Self::Resolve { .. } => "resolve",
        }
    }
}

/// Why a staff action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no callback request {0}")]
    NotFound(Uuid),
    #[error("callback request {id} is {status}: cannot {action} it")]
    Conflict {
        id: Uuid,
        status: String,
        action: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A row of `audit_log`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub callback_request_id: Option<Uuid>,
    pub detail: sqlx::types::Json<Value>,
}

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

/// The delivery queue at a glance, from [`DeliveryQueue::queue_stats`]: `/metrics` publishes
/// it as gauges and the staff dashboard shows it. Counts cover every row, so they are read on
/// demand (a scrape, a page view), not on a hot path.
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

macro_rules! alert_columns {
    () => {
        "callback_request_id, kind, round, tenant_id, created_at, updated_at, status, attempt, \
         failures, next_attempt_at, lease_owner, sent_at, last_error"
    };
}
pub(crate) use alert_columns;

/// Implements [`DeliveryQueue`] for an engine; `$lock` is what the claim's inner `SELECT` adds to
/// lock the rows it picks (`FOR UPDATE SKIP LOCKED` on PostgreSQL; nothing on SQLite, whose one
/// writer makes the statement atomic).
macro_rules! impl_delivery_queue {
    ($store:ty, $db:ty, $lock:literal) => {
        mod delivery_queue_impl {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use sqlx::types::Json;
            use tokio::sync::watch;
            use uuid::Uuid;

            use super::*;
            use crate::store::common::callback_columns;
            use crate::store::queue::{
                ActionError, AlertCount, AlertOutcome, AlertRecord, AlertRow, AlertSend,
                AlertSendRow, AuditRow, ClaimedAlert, DeliveryAttemptRow, DeliveryOutcome,
                DeliveryQueue, DeliveryRecord, QueueStats, RequestCount, StaffAction,
                TenantScope, alert_columns,
            };
            use crate::store::{CallbackRequestRow, StoreError};

            #[async_trait]
            impl DeliveryQueue for $store {
                fn queue_signal(&self) -> watch::Receiver<u64> {
                    self.subscribe_queue()
                }

                async fn claim_callbacks(
                    &self,
                    worker: &str,
                    now: DateTime<Utc>,
                    lease_until: DateTime<Utc>,
                    limit: i64,
                ) -> Result<Vec<CallbackRequestRow>, StoreError> {
                    let mut rows: Vec<CallbackRequestRow> = sqlx::query_as(concat!(
                        "UPDATE callback_requests SET lease_owner = $1, lease_expires_at = $2, \
                         delivery_attempt = delivery_attempt + 1, updated_at = $3 \
                         WHERE id IN (SELECT id FROM callback_requests \
                           WHERE status IN ('pending', 'failed') AND lease_owner IS NULL \
                           AND (next_retry_at IS NULL OR next_retry_at <= $3) \
                           AND resolved_at IS NULL \
                           ORDER BY urgency_rank, created_at, id LIMIT $4 ",
                        $lock,
                        ") RETURNING ",
                        callback_columns!()
                    ))
                    .bind(worker)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await?;
                    // RETURNING keeps no order.
                    rows.sort_by(|a, b| {
                        (rank(&a.urgency_level), a.created_at, a.id).cmp(&(
                            rank(&b.urgency_level),
                            b.created_at,
                            b.id,
                        ))
                    });
                    Ok(rows)
                }

                async fn record_delivery(&self, r: &DeliveryRecord) -> Result<bool, StoreError> {
                    crate::store::text::escape!(r, "delivery");
                    if let DeliveryOutcome::Deferred { at } = &r.outcome {
                        let applied = sqlx::query(
                            "UPDATE callback_requests SET lease_owner = NULL, \
                             lease_expires_at = NULL, next_retry_at = $4, error_message = $5, \
                             updated_at = $6 \
                             WHERE id = $1 AND delivery_attempt = $2 AND lease_owner = $3",
                        )
                        .bind(r.request_id)
                        .bind(r.attempt)
                        .bind(&r.worker_id)
                        .bind(at)
                        .bind(&r.error)
                        .bind(r.finished_at)
                        .execute(self.writer())
                        .await?
                        .rows_affected();
                        return Ok(applied == 1);
                    }
                    let mut tx = self.writer().begin().await?;
                    sqlx::query(
                        "INSERT INTO delivery_attempts (id, callback_request_id, attempt, \
                         worker_id, started_at, finished_at, latency_ms, status_code, outcome, \
                         error, response_excerpt) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(r.request_id)
                    .bind(r.attempt)
                    .bind(&r.worker_id)
                    .bind(r.started_at)
                    .bind(r.finished_at)
                    .bind(r.latency_ms)
                    .bind(r.status_code)
                    .bind(r.outcome.as_str())
                    .bind(&r.error)
                    .bind(&r.response_excerpt)
                    .execute(&mut *tx)
                    .await?;
                    let (status, failed, next_retry_at, dead_reason) = match &r.outcome {
                        DeliveryOutcome::Delivered => ("posted", 0, None, None),
                        DeliveryOutcome::Retry { at, counted } => {
                            ("failed", i32::from(*counted), Some(*at), None)
                        }
                        DeliveryOutcome::DeadLetter { reason, .. } => {
                            ("dead_letter", 1, None, Some(reason.as_str()))
                        }
                        DeliveryOutcome::Deferred { .. } => unreachable!("handled above"),
                    };
                    let applied = sqlx::query(
                        "UPDATE callback_requests SET status = $4, lease_owner = NULL, \
                         lease_expires_at = NULL, updated_at = $5, \
                         posted_to_frontend_at = CASE WHEN $6 = 0 THEN $5 \
                           ELSE posted_to_frontend_at END, \
                         frontend_response = COALESCE($7, frontend_response), \
                         error_message = $8, retry_count = retry_count + $6, \
                         next_retry_at = $9, last_status_code = $10, dead_letter_reason = $11, \
                         dead_lettered_at = CASE WHEN $11 IS NULL THEN NULL ELSE $5 END \
                         WHERE id = $1 AND delivery_attempt = $2 AND lease_owner = $3 \
                         AND status IN ('pending', 'failed')",
                    )
                    .bind(r.request_id)
                    .bind(r.attempt)
                    .bind(&r.worker_id)
                    .bind(status)
                    .bind(r.finished_at)
                    .bind(failed)
                    .bind(r.frontend_response.as_ref().map(Json))
                    .bind(&r.error)
                    .bind(next_retry_at)
                    .bind(r.status_code)
                    .bind(dead_reason)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    tx.commit().await?;
                    if applied && dead_reason.is_some() {
                        // The dead letter queued an alert.
                        self.bump_queue();
                    }
                    Ok(applied)
                }

                async fn align_retries(
                    &self,
                    scope: &TenantScope,
                    at: DateTime<Utc>,
                    now: DateTime<Utc>,
                    hold_sooner: bool,
                ) -> Result<u64, StoreError> {
                    let (tenants, negate) = match scope {
                        TenantScope::Only(t) if t.is_empty() => return Ok(0),
                        TenantScope::Only(t) => (t.as_slice(), ""),
                        TenantScope::AllExcept(t) => (t.as_slice(), "NOT "),
                    };
                    let mut sql = String::from(
                        "UPDATE callback_requests SET next_retry_at = $1, updated_at = $2 \
                         WHERE status IN ('pending', 'failed') AND lease_owner IS NULL \
                         AND resolved_at IS NULL",
                    );
                    sql.push_str(if hold_sooner {
                        " AND (next_retry_at IS NULL OR next_retry_at <> $1)"
                    } else {
                        " AND next_retry_at > $1"
                    });
                    if !tenants.is_empty() {
                        let placeholders: Vec<String> =
                            (0..tenants.len()).map(|i| format!("${}", i + 3)).collect();
                        sql.push_str(&format!(
                            " AND tenant_id {negate}IN ({})",
                            placeholders.join(", ")
                        ));
                    }
                    // Only placeholders are added to the text; every value is bound.
                    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(at).bind(now);
                    for tenant in tenants {
                        query = query.bind(tenant);
                    }
                    Ok(query.execute(self.writer()).await?.rows_affected())
                }

                async fn release_callback(
                    &self,
                    id: Uuid,
                    attempt: i32,
                    worker: &str,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let released = sqlx::query(
                        "UPDATE callback_requests SET lease_owner = NULL, \
                         lease_expires_at = NULL, updated_at = $4 \
                         WHERE id = $1 AND delivery_attempt = $2 AND lease_owner = $3",
                    )
                    .bind(id)
                    .bind(attempt)
                    .bind(worker)
                    .bind(now)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(released == 1)
                }

                async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
                    let requests = sqlx::query(
                        "UPDATE callback_requests SET lease_owner = NULL, \
                         lease_expires_at = NULL, updated_at = $1 \
                         WHERE lease_owner IS NOT NULL AND lease_expires_at < $1",
                    )
                    .bind(now)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    let alerts = sqlx::query(
                        "UPDATE alerts SET lease_owner = NULL, lease_expires_at = NULL, \
                         updated_at = $1 WHERE lease_owner IS NOT NULL AND lease_expires_at < $1",
                    )
                    .bind(now)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(requests + alerts)
                }

                async fn claim_alerts(
                    &self,
                    worker: &str,
                    now: DateTime<Utc>,
                    lease_until: DateTime<Utc>,
                    limit: i64,
                ) -> Result<Vec<ClaimedAlert>, StoreError> {
                    let alerts: Vec<AlertRow> = sqlx::query_as(concat!(
                        "UPDATE alerts SET lease_owner = $1, lease_expires_at = $2, \
                         attempt = attempt + 1, updated_at = $3 \
                         WHERE (callback_request_id, kind) IN (SELECT callback_request_id, kind \
                           FROM alerts WHERE status = 'pending' AND lease_owner IS NULL \
                           AND (next_attempt_at IS NULL OR next_attempt_at <= $3) \
                           ORDER BY created_at LIMIT $4 ",
                        $lock,
                        ") RETURNING ",
                        alert_columns!()
                    ))
                    .bind(worker)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await?;
                    let mut claimed = Vec::with_capacity(alerts.len());
                    for alert in alerts {
                        let request = self
                            .callback_request(alert.callback_request_id)
                            .await?
                            .ok_or_else(|| {
                                StoreError::NotFound(format!(
                                    "callback request {} of an alert",
                                    alert.callback_request_id
                                ))
                            })?;
                        let sent: Vec<(String, String)> = sqlx::query_as(
                            "SELECT channel, target FROM alert_sends \
                             WHERE callback_request_id = $1 AND kind = $2 AND round = $3 AND ok",
                        )
                        .bind(alert.callback_request_id)
                        .bind(&alert.kind)
                        .bind(alert.round)
                        .fetch_all(self.writer())
                        .await?;
                        claimed.push(ClaimedAlert {
                            alert,
                            request,
                            sent,
                        });
                    }
                    claimed.sort_by_key(|c| c.alert.created_at);
                    Ok(claimed)
                }

                async fn record_alert_send(
                    &self,
                    alert: &AlertRow,
                    send: &AlertSend,
                ) -> Result<(), StoreError> {
                    crate::store::text::escape!(send, "alert");
                    sqlx::query(
                        "INSERT INTO alert_sends (id, callback_request_id, kind, round, channel, \
                         target, attempt, at, ok, status_code, error) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(alert.callback_request_id)
                    .bind(&alert.kind)
                    .bind(alert.round)
                    .bind(send.channel)
                    .bind(&send.target)
                    .bind(alert.attempt)
                    .bind(send.at)
                    .bind(send.ok)
                    .bind(send.status_code)
                    .bind(&send.error)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn record_alert(&self, r: &AlertRecord) -> Result<bool, StoreError> {
                    crate::store::text::escape!(r, "alert");
                    let (status, failed, next, error, sent_at) = match &r.outcome {
                        AlertOutcome::Sent => ("sent", 0, None, None, Some(r.at)),
                        AlertOutcome::Skipped { reason } => {
                            ("skipped", 0, None, Some(reason.as_str()), None)
                        }
                        AlertOutcome::Retry { at, error } => {
                            ("pending", 1, Some(*at), Some(error.as_str()), None)
                        }
                        AlertOutcome::Failed { error } => {
                            ("failed", 1, None, Some(error.as_str()), None)
                        }
                    };
                    let applied = sqlx::query(
                        "UPDATE alerts SET status = $5, failures = failures + $6, \
                         next_attempt_at = $7, last_error = $8, sent_at = COALESCE($9, sent_at), \
                         lease_owner = NULL, lease_expires_at = NULL, updated_at = $10 \
                         WHERE callback_request_id = $1 AND kind = $2 AND attempt = $3 \
                         AND lease_owner = $4 AND status = 'pending'",
                    )
                    .bind(r.callback_request_id)
                    .bind(&r.kind)
                    .bind(r.attempt)
                    .bind(&r.worker_id)
                    .bind(status)
                    .bind(failed)
                    .bind(next)
                    .bind(error)
                    .bind(sent_at)
                    .bind(r.at)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                        == 1;
                    Ok(applied)
                }

                async fn release_alert(
                    &self,
                    callback_request_id: Uuid,
                    kind: &str,
                    attempt: i32,
                    worker: &str,
                ) -> Result<bool, StoreError> {
                    let released = sqlx::query(
                        "UPDATE alerts SET lease_owner = NULL, lease_expires_at = NULL \
                         WHERE callback_request_id = $1 AND kind = $2 AND attempt = $3 \
                         AND lease_owner = $4",
                    )
                    .bind(callback_request_id)
                    .bind(kind)
                    .bind(attempt)
                    .bind(worker)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(released == 1)
                }

                async fn callback_request(
                    &self,
                    id: Uuid,
                ) -> Result<Option<CallbackRequestRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        callback_columns!(),
                        " FROM callback_requests WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(self.writer())
                    .await?)
                }

                async fn delivery_attempts(
                    &self,
                    callback_request_id: Uuid,
                ) -> Result<Vec<DeliveryAttemptRow>, StoreError> {
                    Ok(sqlx::query_as(
                        "SELECT id, callback_request_id, attempt, worker_id, started_at, \
                         finished_at, latency_ms, status_code, outcome, error, response_excerpt \
                         FROM delivery_attempts WHERE callback_request_id = $1 \
                         ORDER BY started_at, id",
                    )
                    .bind(callback_request_id)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn alerts_for(
                    &self,
                    callback_request_id: Uuid,
                ) -> Result<(Vec<AlertRow>, Vec<AlertSendRow>), StoreError> {
                    let alerts = sqlx::query_as(concat!(
                        "SELECT ",
                        alert_columns!(),
                        " FROM alerts WHERE callback_request_id = $1 ORDER BY created_at, kind"
                    ))
                    .bind(callback_request_id)
                    .fetch_all(self.reader())
                    .await?;
                    let sends = sqlx::query_as(
                        "SELECT id, callback_request_id, kind, round, channel, target, attempt, at, \
                         ok, status_code, error FROM alert_sends WHERE callback_request_id = $1 \
                         ORDER BY at, id",
                    )
                    .bind(callback_request_id)
                    .fetch_all(self.reader())
                    .await?;
                    Ok((alerts, sends))
                }

                async fn staff_action(
                    &self,
                    id: Uuid,
                    action: &StaffAction,
                    actor: &str,
                    now: DateTime<Utc>,
                ) -> Result<CallbackRequestRow, ActionError> {
                    crate::store::text::escape!(action, "staff_action");
                    let mut tx = self.writer().begin().await.map_err(StoreError::from)?;
                    let current: Option<(String, Option<String>, Option<DateTime<Utc>>)> =
                        sqlx::query_as(
                            "SELECT status, lease_owner, resolved_at FROM callback_requests \
                             WHERE id = $1",
                        )
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StoreError::from)?;
                    let Some((status, lease_owner, resolved_at)) = current else {
                        return Err(ActionError::NotFound(id));
                    };
                    let conflict = |status: &str| ActionError::Conflict {
                        id,
                        status: status.to_string(),
                        action: action.name(),
                    };
                    let note = match action {
                        StaffAction::Retry => {
                            // A delivered request is not posted twice; one being posted right
                            // now finishes first.
                            if status == "posted" {
                                return Err(conflict("already delivered"));
                            }
                            if lease_owner.is_some() {
                                return Err(conflict("being delivered right now"));
                            }
                            if resolved_at.is_some() {
                                return Err(conflict("resolved by staff"));
                            }
                            // Only if nothing changed since the read: on PostgreSQL a worker
                            // may claim and post it in between.
                            let changed = sqlx::query(
                                "UPDATE callback_requests SET status = 'pending', \
                                 next_retry_at = NULL, retry_count = 0, dead_letter_reason = NULL, \
                                 dead_lettered_at = NULL, cancelled_at = NULL, updated_at = $2 \
                                 WHERE id = $1 AND status = $3 AND lease_owner IS NULL",
                            )
                            .bind(id)
                            .bind(now)
                            .bind(&status)
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from)?
                            .rows_affected();
                            if changed == 0 {
                                return Err(conflict("changing right now (look again)"));
                            }
                            None
                        }
                        StaffAction::Cancel { note } => {
                            if status == "posted" || status == "cancelled" {
                                return Err(conflict(&status));
                            }
                            // Clearing the lease fences out a worker posting it right now.
                            let changed = sqlx::query(
                                "UPDATE callback_requests SET status = 'cancelled', \
                                 cancelled_at = $2, lease_owner = NULL, lease_expires_at = NULL, \
                                 next_retry_at = NULL, updated_at = $2 \
                                 WHERE id = $1 AND status = $3",
                            )
                            .bind(id)
                            .bind(now)
                            .bind(&status)
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from)?
                            .rows_affected();
                            if changed == 0 {
                                return Err(conflict("changing right now (look again)"));
                            }
                            note.as_deref()
                        }
                        StaffAction::Resolve { note } => {
                            if resolved_at.is_some() {
                                return Err(conflict("already resolved"));
                            }
                            let changed = sqlx::query(
                                "UPDATE callback_requests SET resolved_at = $2, resolved_by = $3, \
                                 resolution_note = $4, updated_at = $2 \
                                 WHERE id = $1 AND resolved_at IS NULL",
                            )
                            .bind(id)
                            .bind(now)
                            .bind(actor)
                            .bind(note.as_deref())
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from)?
                            .rows_affected();
                            if changed == 0 {
                                return Err(conflict("already resolved"));
                            }
                            note.as_deref()
                        }
                    };
                    sqlx::query(
                        "INSERT INTO audit_log (id, at, actor, action, callback_request_id, \
                         detail) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(now)
                    .bind(actor)
                    .bind(action.name())
                    .bind(id)
                    .bind(Json(serde_json::json!({ "previous_status": status, "note": note })))
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                    let row: CallbackRequestRow = sqlx::query_as(concat!(
                        "SELECT ",
                        callback_columns!(),
                        " FROM callback_requests WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StoreError::from)?;
                    tx.commit().await.map_err(StoreError::from)?;
                    if matches!(action, StaffAction::Retry) {
                        self.bump_queue();
                    }
                    Ok(row)
                }

                async fn audit_trail(
                    &self,
                    callback_request_id: Uuid,
                ) -> Result<Vec<AuditRow>, StoreError> {
                    Ok(sqlx::query_as(
                        "SELECT id, at, actor, action, callback_request_id, detail \
                         FROM audit_log WHERE callback_request_id = $1 ORDER BY at, id",
                    )
                    .bind(callback_request_id)
                    .fetch_all(self.reader())
                    .await?)
                }
                async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError> {
                    // A resolved request counts as `resolved`, whatever its stored status: it
                    // is out of the queue for good.
                    let by_status: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT CASE WHEN resolved_at IS NOT NULL THEN 'resolved' ELSE status END, \
                         urgency_level, COUNT(*) FROM callback_requests GROUP BY 1, 2",
                    )
                    .fetch_all(self.reader())
                    .await?;
                    let (in_flight,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM callback_requests WHERE lease_owner IS NOT NULL",
                    )
                    .fetch_one(self.reader())
                    .await?;
                    // ORDER BY … LIMIT 1 rather than MIN(): the column keeps its declared type,
                    // which SQLite (timestamps as text) needs to decode it.
                    let oldest: Option<(DateTime<Utc>,)> = sqlx::query_as(
                        "SELECT created_at FROM callback_requests \
                         WHERE status IN ('pending', 'failed') AND resolved_at IS NULL \
                         ORDER BY created_at LIMIT 1",
                    )
                    .fetch_optional(self.reader())
                    .await?;
                    let alerts: Vec<(String, String, i64)> = sqlx::query_as(
                        "SELECT kind, status, COUNT(*) FROM alerts GROUP BY kind, status",
                    )
                    .fetch_all(self.reader())
                    .await?;
                    Ok(QueueStats {
                        at: now,
                        by_status: by_status
                            .into_iter()
                            .map(|(status, urgency, count)| RequestCount {
                                status,
                                urgency,
                                count,
                            })
                            .collect(),
                        in_flight,
                        oldest_pending_at: oldest.map(|(t,)| t),
                        alerts: alerts
                            .into_iter()
                            .map(|(kind, status, count)| AlertCount {
                                kind,
                                status,
                                count,
                            })
                            .collect(),
                    })
                }
            }

            /// Queue order of an urgency level (0 first), as `urgency_rank` stores it.
            fn rank(level: &str) -> i32 {
                crate::domain::Urgency::parse(level)
                    .map_or(crate::domain::Urgency::Normal.rank(), |u| u.rank())
            }
        }
    };
}
pub(crate) use impl_delivery_queue;
