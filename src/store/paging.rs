//! Paging until acknowledged, and texts to callers (migration 0009): the pager of each critical
//! callback request, the text each request's caller may get, and the numbers that opted out.
//!
//! Rows are queued by triggers on `callback_requests` (see the migration); the worker walks
//! them ([`crate::worker::paging`]). Every step of a page is written with its call's timeline
//! event and an audit-log row in one transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::StoreError;

/// A row of `pages`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PageRow {
    pub callback_request_id: Uuid,
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `new` (not paged yet), `paging` (waiting for an acknowledgement), `acknowledged`
    /// (reminders until resolved), `closed` (resolved) or `exhausted` (the ladder was walked
    /// `rounds` times without an acknowledgement).
    pub state: String,
    pub code: Option<String>,
    pub pages_sent: i32,
    pub paged_to: Option<String>,
    pub next_at: Option<DateTime<Utc>>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub reminders: i32,
    pub version: i32,
}

/// A step of a page, written with the page's new state: its timeline event and audit row.
#[derive(Debug, Clone)]
pub struct PageStep {
    /// The `call_events.kind` and `audit_log.action` (`page_sent`, `page_escalated`,
    /// `page_acknowledged`, `page_reminder`, `page_exhausted`, `page_closed`, `page_failed`).
    pub action: String,
    /// Who acted: `lifeline` for the worker, a number or a staff member for an acknowledgement.
    pub actor: String,
    pub detail: Value,
    pub at: DateTime<Utc>,
}

/// The new state of a page after a step.
#[derive(Debug, Clone)]
pub struct PageUpdate {
    pub callback_request_id: Uuid,
    /// The version the worker claimed (the fence).
    pub version: i32,
    pub state: String,
    pub code: Option<String>,
    pub pages_sent: i32,
    pub paged_to: Option<String>,
    pub next_at: Option<DateTime<Utc>>,
    pub reminders: i32,
    pub step: PageStep,
}

/// A row of `caller_texts`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallerTextRow {
    pub callback_request_id: Uuid,
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `waiting`, `sending`, `skipped`, `error`, or Twilio's message status.
    pub status: String,
    pub to_number: Option<String>,
    pub message_sid: Option<String>,
    pub detail: Option<String>,
}

/// What became of a caller's text.
#[derive(Debug, Clone)]
pub struct CallerTextOutcome {
    pub callback_request_id: Uuid,
    /// `skipped`, `error`, or Twilio's status of the created message (`queued`, `accepted`).
    pub status: String,
    pub to_number: Option<String>,
    pub message_sid: Option<String>,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// Pages, caller texts and opt-outs.
#[async_trait]
pub trait PagingStore: Send + Sync {
    /// A clinic's pages the worker must act on at `now`: new ones created since `since` (older
    /// ones were queued before paging was turned on, or are long stale), and open ones whose
    /// `next_at` has come.
    async fn due_pages(
        &self,
        tenant_id: &str,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PageRow>, StoreError>;

    /// A page.
    async fn page(&self, callback_request_id: Uuid) -> Result<Option<PageRow>, StoreError>;

    /// A clinic's pages with this code that wait for an acknowledgement.
    async fn open_pages_with_code(
        &self,
        tenant_id: &str,
        code: &str,
    ) -> Result<Vec<PageRow>, StoreError>;

    /// Takes the page at `version` for a step until `lease_until` (another worker leaves it
    /// alone until then; a worker that dies mid-step leaves it due again). False when the page
    /// changed since it was read.
    async fn claim_page(
        &self,
        callback_request_id: Uuid,
        version: i32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Writes a claimed page's new state with its step (timeline and audit), fenced on the
    /// claimed version (the claim made it `version + 1`). False when the page changed meanwhile
    /// (acknowledged while the page was being sent, say): nothing is written.
    async fn advance_page(&self, update: &PageUpdate) -> Result<bool, StoreError>;

    /// Acknowledges a page that waits for it (`new` or `paging`); reminders start at
    /// `remind_at`. False when it was not waiting (already acknowledged, closed, unknown).
    async fn acknowledge_page(
        &self,
        callback_request_id: Uuid,
        by: &str,
        via: &str,
        now: DateTime<Utc>,
        remind_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// A clinic's caller texts still waiting, created since `since`.
    async fn waiting_caller_texts(
        &self,
        tenant_id: &str,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<CallerTextRow>, StoreError>;

    /// Takes a waiting text for sending. False when another worker has it.
    async fn claim_caller_text(
        &self,
        callback_request_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Records what became of a claimed text, with its timeline event.
    async fn record_caller_text(&self, outcome: &CallerTextOutcome) -> Result<(), StoreError>;

    /// Applies a Twilio status callback to the text with this `MessageSid`. False when no text
    /// has it (a page's message, say) or its status is already final (callbacks may arrive out
    /// of order).
    async fn caller_text_status(
        &self,
        message_sid: &str,
        status: &str,
        error_code: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// A request's caller text.
    async fn caller_text(
        &self,
        callback_request_id: Uuid,
    ) -> Result<Option<CallerTextRow>, StoreError>;

    /// Records a STOP (`opted_out`) or a START (not) from `number`.
    async fn set_sms_opt_out(
        &self,
        number: &str,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Whether `number` replied STOP (and not START since).
    async fn sms_opted_out(&self, number: &str) -> Result<bool, StoreError>;
}

macro_rules! page_columns {
    () => {
        "callback_request_id, tenant_id, created_at, updated_at, state, code, pages_sent, \
         paged_to, next_at, acknowledged_at, acknowledged_by, reminders, version"
    };
}
pub(crate) use page_columns;

macro_rules! caller_text_columns {
    () => {
        "callback_request_id, tenant_id, created_at, updated_at, status, to_number, message_sid, \
         detail"
    };
}
pub(crate) use caller_text_columns;

/// Implements [`PagingStore`] for an engine (the SQL is the same on both).
macro_rules! impl_paging_store {
    ($store:ty, $db:ty) => {
        mod paging_store_impl {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use serde_json::json;
            use sqlx::types::Json;
            use uuid::Uuid;

            use super::*;
            use crate::store::StoreError;
            use crate::store::paging::{
                CallerTextOutcome, CallerTextRow, PageRow, PageStep, PageUpdate, PagingStore,
                caller_text_columns, page_columns,
            };

            impl $store {
                /// Writes a page step's timeline event (when the request has a call) and its
                /// audit row, in `tx`.
                async fn write_page_step(
                    conn: &mut <$db as sqlx::Database>::Connection,
                    id: Uuid,
                    step: &PageStep,
                ) -> Result<(), StoreError> {
                    let call: Option<(Option<Uuid>,)> =
                        sqlx::query_as("SELECT call_id FROM callback_requests WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&mut *conn)
                            .await?;
                    let mut detail = step.detail.clone();
                    if let Some(map) = detail.as_object_mut() {
                        map.insert("callback_request_id".into(), json!(id));
                    }
                    if let Some((Some(call_id),)) = call {
                        sqlx::query(
                            "INSERT INTO call_events (id, call_id, at, kind, detail) \
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(Uuid::now_v7())
                        .bind(call_id)
                        .bind(step.at)
                        .bind(&step.action)
                        .bind(Json(&detail))
                        .execute(&mut *conn)
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO audit_log (id, at, actor, action, callback_request_id, \
                         detail) VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(Uuid::now_v7())
                    .bind(step.at)
                    .bind(&step.actor)
                    .bind(&step.action)
                    .bind(id)
                    .bind(Json(&step.detail))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                }
            }

            #[async_trait]
            impl PagingStore for $store {
                async fn due_pages(
                    &self,
                    tenant_id: &str,
                    now: DateTime<Utc>,
                    since: DateTime<Utc>,
                    limit: i64,
                ) -> Result<Vec<PageRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        page_columns!(),
                        " FROM pages WHERE tenant_id = $1 AND ( \
                           (state = 'new' AND created_at >= $3 \
                            AND (next_at IS NULL OR next_at <= $2)) \
                           OR (state IN ('paging', 'acknowledged') AND next_at <= $2)) \
                         ORDER BY created_at LIMIT $4"
                    ))
                    .bind(tenant_id)
                    .bind(now)
                    .bind(since)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await?)
                }

                async fn page(&self, id: Uuid) -> Result<Option<PageRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        page_columns!(),
                        " FROM pages WHERE callback_request_id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(self.writer())
                    .await?)
                }

                async fn open_pages_with_code(
                    &self,
                    tenant_id: &str,
                    code: &str,
                ) -> Result<Vec<PageRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        page_columns!(),
                        " FROM pages WHERE tenant_id = $1 AND code = $2 \
                          AND state IN ('new', 'paging')"
                    ))
                    .bind(tenant_id)
                    .bind(code)
                    .fetch_all(self.writer())
                    .await?)
                }

                async fn claim_page(
                    &self,
                    id: Uuid,
                    version: i32,
                    lease_until: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let n = sqlx::query(
                        "UPDATE pages SET version = version + 1, next_at = $3 \
                         WHERE callback_request_id = $1 AND version = $2",
                    )
                    .bind(id)
                    .bind(version)
                    .bind(lease_until)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn advance_page(&self, u: &PageUpdate) -> Result<bool, StoreError> {
                    let mut tx = self.writer().begin().await?;
                    let n = sqlx::query(
                        "UPDATE pages SET version = version + 1, state = $3, code = $4, \
                         pages_sent = $5, paged_to = $6, next_at = $7, reminders = $8, \
                         updated_at = $9 WHERE callback_request_id = $1 AND version = $2",
                    )
                    .bind(u.callback_request_id)
                    .bind(u.version + 1)
                    .bind(&u.state)
                    .bind(&u.code)
                    .bind(u.pages_sent)
                    .bind(&u.paged_to)
                    .bind(u.next_at)
                    .bind(u.reminders)
                    .bind(u.step.at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n != 1 {
                        return Ok(false);
                    }
                    Self::write_page_step(&mut *tx, u.callback_request_id, &u.step).await?;
                    tx.commit().await?;
                    Ok(true)
                }

                async fn acknowledge_page(
                    &self,
                    id: Uuid,
                    by: &str,
                    via: &str,
                    now: DateTime<Utc>,
                    remind_at: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let mut tx = self.writer().begin().await?;
                    let n = sqlx::query(
                        "UPDATE pages SET version = version + 1, state = 'acknowledged', \
                         acknowledged_at = $2, acknowledged_by = $3, next_at = $4, \
                         updated_at = $2 \
                         WHERE callback_request_id = $1 AND state IN ('new', 'paging')",
                    )
                    .bind(id)
                    .bind(now)
                    .bind(by)
                    .bind(remind_at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n != 1 {
                        return Ok(false);
                    }
                    let step = PageStep {
                        action: "page_acknowledged".into(),
                        actor: by.to_string(),
                        detail: json!({ "via": via, "by": by }),
                        at: now,
                    };
                    Self::write_page_step(&mut *tx, id, &step).await?;
                    tx.commit().await?;
                    Ok(true)
                }

                async fn waiting_caller_texts(
                    &self,
                    tenant_id: &str,
                    since: DateTime<Utc>,
                    limit: i64,
                ) -> Result<Vec<CallerTextRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        caller_text_columns!(),
                        " FROM caller_texts WHERE status = 'waiting' AND tenant_id = $1 \
                          AND created_at >= $2 ORDER BY created_at LIMIT $3"
                    ))
                    .bind(tenant_id)
                    .bind(since)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await?)
                }

                async fn claim_caller_text(
                    &self,
                    id: Uuid,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    // At most once: a text to a caller is not worth a second copy.
                    let n = sqlx::query(
                        "UPDATE caller_texts SET status = 'sending', updated_at = $2 \
                         WHERE callback_request_id = $1 AND status = 'waiting'",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(n == 1)
                }

                async fn record_caller_text(
                    &self,
                    o: &CallerTextOutcome,
                ) -> Result<(), StoreError> {
                    let mut tx = self.writer().begin().await?;
                    sqlx::query(
                        "UPDATE caller_texts SET status = $2, to_number = $3, message_sid = $4, \
                         detail = $5, updated_at = $6 WHERE callback_request_id = $1",
                    )
                    .bind(o.callback_request_id)
                    .bind(&o.status)
                    .bind(&o.to_number)
                    .bind(&o.message_sid)
                    .bind(&o.detail)
                    .bind(o.at)
                    .execute(&mut *tx)
                    .await?;
                    let call: Option<(Option<Uuid>,)> =
                        sqlx::query_as("SELECT call_id FROM callback_requests WHERE id = $1")
                            .bind(o.callback_request_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some((Some(call_id),)) = call {
                        let kind = if o.message_sid.is_some() {
                            "caller_text_sent"
                        } else {
                            "caller_text_not_sent"
                        };
                        sqlx::query(
                            "INSERT INTO call_events (id, call_id, at, kind, detail) \
                             VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(Uuid::now_v7())
                        .bind(call_id)
                        .bind(o.at)
                        .bind(kind)
                        .bind(Json(json!({
                            "callback_request_id": o.callback_request_id,
                            "status": o.status,
                            "message_sid": o.message_sid,
                            "detail": o.detail,
                        })))
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    Ok(())
                }

                async fn caller_text_status(
                    &self,
                    sid: &str,
                    status: &str,
                    error_code: Option<&str>,
                    now: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let detail = error_code.map(|c| format!("Twilio error {c}"));
                    // Callbacks may arrive out of order: a final status is not taken back by a
                    // late `sent` (only `read` may follow `delivered`).
                    let n = sqlx::query(
                        "UPDATE caller_texts SET status = $2, \
                         detail = COALESCE($3, detail), updated_at = $4 WHERE message_sid = $1 \
                         AND (status NOT IN ('delivered', 'undelivered', 'failed', 'canceled', \
                              'read') OR ($2 = 'read' AND status = 'delivered'))",
                    )
                    .bind(sid)
                    .bind(status)
                    .bind(detail)
                    .bind(now)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(n > 0)
                }

                async fn caller_text(
                    &self,
                    id: Uuid,
                ) -> Result<Option<CallerTextRow>, StoreError> {
                    Ok(sqlx::query_as(concat!(
                        "SELECT ",
                        caller_text_columns!(),
                        " FROM caller_texts WHERE callback_request_id = $1"
                    ))
                    .bind(id)
                    .fetch_optional(self.writer())
                    .await?)
                }

                async fn set_sms_opt_out(
                    &self,
                    number: &str,
                    opted_out: bool,
                    now: DateTime<Utc>,
                ) -> Result<(), StoreError> {
                    if opted_out {
                        sqlx::query(
                            "INSERT INTO sms_opt_outs (number, at) VALUES ($1, $2) \
                             ON CONFLICT (number) DO UPDATE SET at = $2",
                        )
                        .bind(number)
                        .bind(now)
                        .execute(self.writer())
                        .await?;
                    } else {
                        sqlx::query("DELETE FROM sms_opt_outs WHERE number = $1")
                            .bind(number)
                            .execute(self.writer())
                            .await?;
                    }
                    Ok(())
                }

                async fn sms_opted_out(&self, number: &str) -> Result<bool, StoreError> {
                    let row: Option<(String,)> =
                        sqlx::query_as("SELECT number FROM sms_opt_outs WHERE number = $1")
                            .bind(number)
                            .fetch_optional(self.writer())
                            .await?;
                    Ok(row.is_some())
                }
            }
        }
    };
}
pub(crate) use impl_paging_store;
