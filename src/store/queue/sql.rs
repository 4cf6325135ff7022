//! The SQL of the delivery and alert queues, shared by both engines: [`impl_delivery_queue!`]
//! implements [`DeliveryQueue`](super::DeliveryQueue) for a store type.

macro_rules! alert_columns {
    () => {
        "callback_request_id, kind, round, tenant_id, created_at, updated_at, status, attempt, \
         failures, next_attempt_at, lease_owner, sent_at, last_error"
    };
}
pub(crate) use alert_columns;

/// An alert that is due: waiting, not leased, and its retry time (if any) reached at `$n`.
/// The one condition both the look and the claim of `claim_alerts` use.
macro_rules! alert_due {
    ($now:literal) => {
        concat!(
            "status = 'pending' AND lease_owner IS NULL \
             AND (next_attempt_at IS NULL OR next_attempt_at <= ",
            $now,
            ")"
        )
    };
}
pub(crate) use alert_due;

// The queue's figures, read at every scrape of `/metrics` (and every view of the dashboard's
// System page): each is served by an index holding only what is still in the queue, or by the
// counts the triggers of migration 0011 keep, so its cost does not grow with the years of
// delivered and resolved requests the tables keep. Each is one statement: one snapshot, so a
// request that settles meanwhile is counted once.

/// Callback requests by status (`resolved` for any request staff resolved, whatever its stored
/// status) and urgency: those still in the queue from `callback_requests_open`, settled ones
/// (`posted`, `resolved`) from `settled_request_counts`.
pub(crate) const REQUEST_COUNTS: &str = "\
    SELECT status, urgency_level, COUNT(*) FROM callback_requests \
     WHERE resolved_at IS NULL AND status <> 'posted' GROUP BY status, urgency_level \
    UNION ALL \
    SELECT status, urgency_level, count FROM settled_request_counts WHERE count > 0";

/// Requests a worker holds (the `callback_requests_leased` index).
pub(crate) const IN_FLIGHT: &str =
    "SELECT COUNT(*) FROM callback_requests WHERE lease_owner IS NOT NULL";

/// When the oldest request still waiting for delivery was created. ORDER BY … LIMIT 1 rather
/// than MIN(): the column keeps its declared type, which SQLite (timestamps as text) needs to
/// decode it.
pub(crate) const OLDEST_WAITING: &str = "\
    SELECT created_at FROM callback_requests \
     WHERE resolved_at IS NULL AND status <> 'posted' AND status IN ('pending', 'failed') \
     ORDER BY created_at LIMIT 1";

/// Alerts by kind and status: pending ones from `alerts_open`, settled ones (sent, failed,
/// skipped) from `settled_alert_counts`.
pub(crate) const ALERT_COUNTS: &str = "\
    SELECT kind, status, COUNT(*) FROM alerts WHERE status = 'pending' GROUP BY kind, status \
    UNION ALL \
    SELECT kind, status, count FROM settled_alert_counts WHERE count > 0";

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
                TenantScope, alert_columns, alert_due,
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
                    // The worker looks for alerts at every wake-up, and most find none: a
                    // read says so without taking the writer (on SQLite, the call path's one
                    // writer, which such a claim held ~70 times a second at 2,000 tool
                    // calls/s). An alert committed after this read wakes the worker again.
                    let due: bool = sqlx::query_scalar(concat!(
                        "SELECT EXISTS (SELECT 1 FROM alerts WHERE ",
                        alert_due!("$1"),
                        ")"
                    ))
                    .bind(now)
                    .fetch_one(self.reader())
                    .await?;
                    if !due {
                        return Ok(Vec::new());
                    }
                    let alerts: Vec<AlertRow> = sqlx::query_as(concat!(
                        "UPDATE alerts SET lease_owner = $1, lease_expires_at = $2, \
                         attempt = attempt + 1, updated_at = $3 \
                         WHERE (callback_request_id, kind) IN (SELECT callback_request_id, kind \
                           FROM alerts WHERE ",
                        alert_due!("$3"),
                        " ORDER BY created_at LIMIT $4 ",
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
                    use crate::store::queue::sql::{
                        ALERT_COUNTS, IN_FLIGHT, OLDEST_WAITING, REQUEST_COUNTS,
                    };
                    let by_status: Vec<(String, String, i64)> = sqlx::query_as(REQUEST_COUNTS)
                        .fetch_all(self.reader())
                        .await?;
                    let (in_flight,): (i64,) =
                        sqlx::query_as(IN_FLIGHT).fetch_one(self.reader()).await?;
                    let oldest: Option<(DateTime<Utc>,)> = sqlx::query_as(OLDEST_WAITING)
                        .fetch_optional(self.reader())
                        .await?;
                    let alerts: Vec<(String, String, i64)> = sqlx::query_as(ALERT_COUNTS)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each figure of the scrape is read from the index meant for it, on SQLite (whose planner
    /// only uses a partial index when the query repeats its condition); none reads a queue
    /// table in full.
    #[tokio::test]
    async fn the_scrape_reads_indexes_of_what_is_in_the_queue_not_whole_tables() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("plans.db").display()
        );
        let store = crate::store::connect_with_pool(&url, 1).await.unwrap();
        store.migrate().await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for (sql, index) in [
            (REQUEST_COUNTS, "callback_requests_open"),
            (IN_FLIGHT, "callback_requests_leased"),
            (OLDEST_WAITING, "callback_requests_open"),
            (ALERT_COUNTS, "alerts_open"),
        ] {
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let steps: Vec<&str> = plan.iter().map(|(.., detail)| detail.as_str()).collect();
            assert!(
                steps.iter().any(|s| s.contains(index)),
                "{index} not used: {steps:?}"
            );
            for table in ["callback_requests", "alerts"] {
                assert!(
                    !steps.iter().any(|s| *s == format!("SCAN {table}").as_str()),
                    "{table} read in full: {steps:?}"
                );
            }
        }
        pool.close().await;
    }
}
