//! What the on-call dashboard reads and writes: staff accounts, sessions, failed logins, the
//! open callback requests, recent alerts and daily statistics.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::queue::AlertRow;
use super::{CallRow, CallbackRequestRow, StoreError};

/// A staff account made with `lifeline staff add`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StaffAccountRow {
    pub username: String,
    /// argon2id, PHC string format.
    pub password_hash: String,
    /// The one clinic the account sees; `None`: every clinic.
    pub tenant_id: Option<String>,
}

/// A session to open.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// SHA-256 of the cookie's token, hex.
    pub token_hash: String,
    pub username: String,
    pub tenant_id: Option<String>,
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// An open session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub username: String,
    pub tenant_id: Option<String>,
    pub csrf_token: String,
    pub expires_at: DateTime<Utc>,
}

/// One tenant's day (UTC).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayStats {
    pub tenant_id: String,
    pub day: NaiveDate,
    pub calls: u32,
    pub tool_calls: u32,
    pub transfers_succeeded: u32,
    pub transfers_failed: u32,
    pub callbacks: u32,
    /// Median minutes from a callback request to staff marking it done (resolved ones only).
    pub median_minutes_to_callback: Option<f64>,
}

/// A transfer attempt, as the on-call figures count it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OncallAttempt {
    pub tenant_id: String,
    pub call_id: Uuid,
    pub started_at: DateTime<Utc>,
    pub status: String,
    pub outcome: Option<String>,
    pub accepted_at: Option<DateTime<Utc>>,
}

/// A page of a critical request, as the on-call figures count it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OncallPage {
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub pages_sent: i32,
}

/// A callback request, as the on-call figures count it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OncallCallback {
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// The raw rows behind the on-call figures ([`crate::ops::clinic_day`]).
#[derive(Debug, Clone, Default)]
pub struct OncallRows {
    pub attempts: Vec<OncallAttempt>,
    pub pages: Vec<OncallPage>,
    pub callbacks: Vec<OncallCallback>,
}

/// The dashboard's queries.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Transfer attempts, pages and callback requests since `since` (of one tenant, or all).
    async fn oncall_rows(
        &self,
        tenant: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<OncallRows, StoreError>;

    /// Creates the account or replaces its password and tenant.
    async fn upsert_staff_account(
        &self,
        account: &StaffAccountRow,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// An account by name.
    async fn staff_account(&self, username: &str) -> Result<Option<StaffAccountRow>, StoreError>;

    /// Until when `username` is locked out, if it is at `now`.
    async fn locked_until(
        &self,
        username: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Counts a login attempt as failed until it succeeds (so that guesses sent in parallel all
    /// count), in one atomic statement; `max` within `window` lock the name for `lock`. Returns
    /// the attempts in the window and the end of the lock, if the name is locked.
    async fn record_login_failure(
        &self,
        username: &str,
        now: DateTime<Utc>,
        window: chrono::Duration,
        max: i32,
        lock: chrono::Duration,
    ) -> Result<(i32, Option<DateTime<Utc>>), StoreError>;

    /// Forgets the failures of a name (after a successful login).
    async fn clear_login_failures(&self, username: &str) -> Result<(), StoreError>;

    async fn create_session(&self, session: &NewSession) -> Result<(), StoreError>;

    /// The session with this token hash, unless it expired.
    async fn session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRow>, StoreError>;

    async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError>;

    /// Ends every session of `username` (password changed, account removed).
    async fn delete_sessions_of(&self, username: &str) -> Result<u64, StoreError>;

    /// Removes an account made with the CLI and ends its sessions; false if there was none.
    async fn delete_staff_account(&self, username: &str) -> Result<bool, StoreError>;

    /// Writes a staff event that concerns no callback request (a login, a logout, a lock-out)
    /// to the audit table.
    async fn audit(
        &self,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError>;

    /// Callback requests nobody has called back yet (not resolved, not cancelled), most urgent
    /// first, then oldest; of one tenant or all.
    async fn open_callbacks(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CallbackRequestRow>, StoreError>;

    /// Open callback requests queued after `since`, oldest first (for the live feed).
    async fn open_callbacks_since(
        &self,
        tenant: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<Vec<CallbackRequestRow>, StoreError>;

    /// A call by its id.
    async fn call_by_id(&self, id: Uuid) -> Result<Option<CallRow>, StoreError>;

    /// The newest alerts, of one tenant or all.
    async fn recent_alerts(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError>;

    /// Per tenant and day since `since`: calls, tool calls, transfers, callbacks and the median
    /// time to callback. Newest day first.
    async fn daily_stats(
        &self,
        tenant: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<Vec<DayStats>, StoreError>;
}

/// Folds raw rows into per-tenant days (portable: no engine-specific date functions).
pub(crate) fn fold_stats(
    calls: Vec<(String, DateTime<Utc>, Option<String>)>,
    tools: Vec<(String, DateTime<Utc>)>,
    callbacks: Vec<(String, DateTime<Utc>, Option<DateTime<Utc>>)>,
) -> Vec<DayStats> {
    let mut days: BTreeMap<(NaiveDate, String), (DayStats, Vec<f64>)> = BTreeMap::new();
    fn entry<'a>(
        days: &'a mut BTreeMap<(NaiveDate, String), (DayStats, Vec<f64>)>,
        tenant: &str,
        at: DateTime<Utc>,
    ) -> &'a mut DayStats {
        let day = at.date_naive();
        &mut days
            .entry((day, tenant.to_string()))
            .or_insert_with(|| {
                (
                    DayStats {
                        tenant_id: tenant.to_string(),
                        day,
                        ..DayStats::default()
                    },
                    Vec::new(),
                )
            })
            .0
    }
    for (tenant, at, outcome) in &calls {
        let d = entry(&mut days, tenant, *at);
        d.calls += 1;
        match outcome.as_deref() {
            Some("succeeded") => d.transfers_succeeded += 1,
            Some("failed") => d.transfers_failed += 1,
            _ => {}
        }
    }
    for (tenant, at) in &tools {
        entry(&mut days, tenant, *at).tool_calls += 1;
    }
    for (tenant, at, _) in &callbacks {
        entry(&mut days, tenant, *at).callbacks += 1;
    }
    for (tenant, at, resolved) in &callbacks {
        if let Some(done) = resolved
            && let Some((_, minutes)) = days.get_mut(&(at.date_naive(), tenant.clone()))
        {
            minutes.push((*done - *at).num_seconds() as f64 / 60.0);
        }
    }
    days.into_values()
        .rev()
        .map(|(mut d, mut minutes)| {
            minutes.sort_by(f64::total_cmp);
            d.median_minutes_to_callback = match minutes.len() {
                0 => None,
                n if n % 2 == 1 => Some(minutes[n / 2]),
                n => Some((minutes[n / 2 - 1] + minutes[n / 2]) / 2.0),
            };
            d
        })
        .collect()
}

/// Implements [`AdminStore`] for an engine.
macro_rules! impl_admin_store {
    ($store:ty) => {
        mod admin_store_impl {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use uuid::Uuid;

            use super::*;
            use crate::store::admin::{
                AdminStore, DayStats, NewSession, SessionRow, StaffAccountRow, fold_stats,
            };
            use crate::store::common::{call_columns, callback_columns};
            use crate::store::queue::{AlertRow, alert_columns};
            use crate::store::{CallRow, CallbackRequestRow, StoreError};

            #[async_trait]
            impl AdminStore for $store {
                async fn upsert_staff_account(
                    &self,
                    a: &StaffAccountRow,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO staff_accounts (username, password_hash, tenant_id, \
                         created_at, updated_at) VALUES ($1, $2, $3, $4, $4) \
                         ON CONFLICT (username) DO UPDATE SET password_hash = $2, \
                         tenant_id = $3, updated_at = $4",
                    )
                    .bind(&a.username)
                    .bind(&a.password_hash)
                    .bind(&a.tenant_id)
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn staff_account(
                    &self,
                    username: &str,
                ) -> Result<Option<StaffAccountRow>, StoreError> {
                    Ok(sqlx::query_as(
                        "SELECT username, password_hash, tenant_id FROM staff_accounts \
                         WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn locked_until(
                    &self,
                    username: &str,
                    now: DateTime<Utc>,
                ) -> Result<Option<DateTime<Utc>>, StoreError> {
                    let until: Option<(Option<DateTime<Utc>>,)> = sqlx::query_as(
                        "SELECT locked_until FROM login_failures WHERE username = $1",
                    )
                    .bind(username)
                    .fetch_optional(self.writer())
                    .await?;
                    Ok(until.and_then(|(u,)| u).filter(|u| *u > now))
                }

                async fn record_login_failure(
                    &self,
                    username: &str,
                    now: DateTime<Utc>,
                    window: chrono::Duration,
                    max: i32,
                    lock: chrono::Duration,
                ) -> Result<(i32, Option<DateTime<Utc>>), StoreError> {
                    // One statement: parallel attempts cannot read the same count.
                    let (failures, locked): (i32, Option<DateTime<Utc>>) = sqlx::query_as(
                        "INSERT INTO login_failures (username, failures, window_start, \
                         locked_until) VALUES ($1, 1, $2, CASE WHEN 1 >= $4 THEN $5 END) \
                         ON CONFLICT (username) DO UPDATE SET \
                         failures = CASE WHEN login_failures.window_start > $3 \
                           THEN login_failures.failures + 1 ELSE 1 END, \
                         window_start = CASE WHEN login_failures.window_start > $3 \
                           THEN login_failures.window_start ELSE $2 END, \
                         locked_until = CASE \
                           WHEN (CASE WHEN login_failures.window_start > $3 \
                                 THEN login_failures.failures + 1 ELSE 1 END) >= $4 THEN $5 \
                           ELSE login_failures.locked_until END \
                         RETURNING failures, locked_until",
                    )
                    .bind(username)
                    .bind(now)
                    .bind(now - window)
                    .bind(max)
                    .bind(now + lock)
                    .fetch_one(self.writer())
                    .await?;
                    Ok((failures, locked.filter(|l| *l > now)))
                }

                async fn clear_login_failures(&self, username: &str) -> Result<(), StoreError> {
                    sqlx::query("DELETE FROM login_failures WHERE username = $1")
                        .bind(username)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn create_session(&self, s: &NewSession) -> Result<(), StoreError> {
                    let mut tx = self.writer().begin().await?;
                    // Expired sessions go as new ones come: the table stays small.
                    sqlx::query("DELETE FROM staff_sessions WHERE expires_at < $1")
                        .bind(s.created_at)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(
                        "INSERT INTO staff_sessions (token_hash, username, tenant_id, \
                         csrf_token, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(&s.token_hash)
                    .bind(&s.username)
                    .bind(&s.tenant_id)
                    .bind(&s.csrf_token)
                    .bind(s.created_at)
                    .bind(s.expires_at)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(())
                }

                async fn session(
                    &self,
                    token_hash: &str,
                    now: DateTime<Utc>,
                ) -> Result<Option<SessionRow>, StoreError> {
                    Ok(sqlx::query_as(
                        "SELECT username, tenant_id, csrf_token, expires_at FROM staff_sessions \
                         WHERE token_hash = $1 AND expires_at > $2",
                    )
                    .bind(token_hash)
                    .bind(now)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
                    sqlx::query("DELETE FROM staff_sessions WHERE token_hash = $1")
                        .bind(token_hash)
                        .execute(self.writer())
                        .await?;
                    Ok(())
                }

                async fn audit(
                    &self,
                    at: DateTime<Utc>,
                    actor: &str,
                    action: &str,
                    detail: serde_json::Value,
                ) -> Result<(), StoreError> {
                    sqlx::query(
                        "INSERT INTO audit_log (id, at, actor, action, detail) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(at)
                    .bind(actor)
                    .bind(action)
                    .bind(sqlx::types::Json(detail))
                    .execute(self.writer())
                    .await?;
                    Ok(())
                }

                async fn delete_sessions_of(&self, username: &str) -> Result<u64, StoreError> {
                    Ok(sqlx::query("DELETE FROM staff_sessions WHERE username = $1")
                        .bind(username)
                        .execute(self.writer())
                        .await?
                        .rows_affected())
                }

                async fn delete_staff_account(&self, username: &str) -> Result<bool, StoreError> {
                    let mut tx = self.writer().begin().await?;
                    let gone = sqlx::query("DELETE FROM staff_accounts WHERE username = $1")
                        .bind(username)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    sqlx::query("DELETE FROM staff_sessions WHERE username = $1")
                        .bind(username)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(gone == 1)
                }

                async fn open_callbacks(
                    &self,
                    tenant: Option<&str>,
                    limit: i64,
                ) -> Result<Vec<CallbackRequestRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        callback_columns!(),
                        " FROM callback_requests WHERE resolved_at IS NULL \
                         AND status <> 'cancelled' AND ($1 IS NULL OR tenant_id = $1) \
                         ORDER BY urgency_rank, created_at, id LIMIT $2"
                    ))
                    .bind(tenant)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn open_callbacks_since(
                    &self,
                    tenant: Option<&str>,
                    since: DateTime<Utc>,
                ) -> Result<Vec<CallbackRequestRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        callback_columns!(),
                        " FROM callback_requests WHERE created_at > $2 \
                         AND resolved_at IS NULL AND status <> 'cancelled' \
                         AND ($1 IS NULL OR tenant_id = $1) ORDER BY created_at, id LIMIT 200"
                    ))
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn call_by_id(&self, id: Uuid) -> Result<Option<CallRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        call_columns!(),
                        " FROM calls WHERE id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?)
                }

                async fn recent_alerts(
                    &self,
                    tenant: Option<&str>,
                    limit: i64,
                ) -> Result<Vec<AlertRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        alert_columns!(),
                        " FROM alerts WHERE ($1 IS NULL OR tenant_id = $1) \
                         ORDER BY updated_at DESC LIMIT $2"
                    ))
                    .bind(tenant)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?)
                }

                async fn oncall_rows(
                    &self,
                    tenant: Option<&str>,
                    since: DateTime<Utc>,
                ) -> Result<$crate::store::OncallRows, StoreError> {
                    let attempts = sqlx::query_as(
                        "SELECT tenant_id, call_id, started_at, status, outcome, accepted_at \
                         FROM transfer_attempts \
                         WHERE started_at >= $2 AND ($1 IS NULL OR tenant_id = $1)",
                    )
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                    let pages = sqlx::query_as(
                        "SELECT tenant_id, created_at, acknowledged_at, pages_sent FROM pages \
                         WHERE created_at >= $2 AND ($1 IS NULL OR tenant_id = $1)",
                    )
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                    let callbacks = sqlx::query_as(
                        "SELECT tenant_id, created_at, resolved_at FROM callback_requests \
                         WHERE created_at >= $2 AND ($1 IS NULL OR tenant_id = $1)",
                    )
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                    Ok($crate::store::OncallRows {
                        attempts,
                        pages,
                        callbacks,
                    })
                }

                async fn daily_stats(
                    &self,
                    tenant: Option<&str>,
                    since: DateTime<Utc>,
                ) -> Result<Vec<DayStats>, StoreError> {
                    let calls = sqlx::query_as(
                        "SELECT tenant_id, started_at, transfer_outcome FROM calls \
                         WHERE started_at >= $2 AND ($1 IS NULL OR tenant_id = $1)",
                    )
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                    let tools = sqlx::query_as(
                        "SELECT tenant_id, created_at FROM tool_call_logs \
                         WHERE created_at >= $2 AND ($1 IS NULL OR tenant_id = $1)",
                    )
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                    let callbacks = sqlx::query_as(
                        "SELECT tenant_id, created_at, resolved_at FROM callback_requests \
                         WHERE created_at >= $2 AND ($1 IS NULL OR tenant_id = $1)",
                    )
                    .bind(tenant)
                    .bind(since)
                    .fetch_all(self.reader())
                    .await?;
                    Ok(fold_stats(calls, tools, callbacks))
                }
            }
        }
    };
}
pub(crate) use impl_admin_store;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn stats_fold_per_tenant_and_day_with_a_median() {
        let calls = vec![
            (
                "a".into(),
                at("2026-12-01T01:00:00Z"),
                Some("succeeded".into()),
            ),
            (
                "a".into(),
                at("2026-12-01T02:00:00Z"),
                Some("failed".into()),
            ),
            ("a".into(), at("2026-12-02T02:00:00Z"), None),
            ("b".into(), at("2026-12-01T03:00:00Z"), None),
        ];
        let tools = vec![
            ("a".into(), at("2026-12-01T01:00:01Z")),
            ("a".into(), at("2026-12-01T01:00:02Z")),
        ];
        let callbacks = vec![
            (
                "a".into(),
                at("2026-12-01T01:00:00Z"),
                Some(at("2026-12-01T01:10:00Z")),
            ),
            (
                "a".into(),
                at("2026-12-01T02:00:00Z"),
                Some(at("2026-12-01T02:30:00Z")),
            ),
            ("a".into(), at("2026-12-01T03:00:00Z"), None),
        ];
        let days = fold_stats(calls, tools, callbacks);
        assert_eq!(days.len(), 3);
        assert_eq!(days[0].day.to_string(), "2026-12-02");
        let a1 = days
            .iter()
            .find(|d| d.tenant_id == "a" && d.day.to_string() == "2026-12-01")
            .unwrap();
        assert_eq!((a1.calls, a1.tool_calls, a1.callbacks), (2, 2, 3));
        assert_eq!((a1.transfers_succeeded, a1.transfers_failed), (1, 1));
        assert_eq!(a1.median_minutes_to_callback, Some(20.0));
        let b1 = days.iter().find(|d| d.tenant_id == "b").unwrap();
        assert_eq!(b1.median_minutes_to_callback, None);
    }
}
