//! Retention: deleting old history on both engines (`lifeline prune`).
//!
//! What goes, once older than the cutoff:
//!
//! - **callback requests that are settled**: delivered (`posted`) or resolved by staff, settled
//!   before the cutoff and created before it, with the rows that hang on them (delivery
//!   attempts, alerts and their sends, audit entries, pages, caller texts). Never one a worker
//!   holds, one with an alert still to send, a page still paging or reminding, or a caller text
//!   being sent; never one still in the queue (pending, failed, a dead letter or cancelled
//!   request nobody resolved).
//! - **tool-call logs** that finished (`success`, `failed`) and nothing kept references: a
//!   callback request still kept, or a transfer attempt (kept with the call for the on-call
//!   figures).
//! - **call events** (the calls' timelines).
//!
//! Calls and transfer attempts stay. Each batch is one short transaction (a few hundred rows),
//! so serving goes on meanwhile: SQLite's one writer and PostgreSQL's row locks are held only
//! for that long. Batches walk each table in time order from where the last one stopped, so
//! rows that must stay are read once per run, not once per batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::StoreError;

/// What a prune removed, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub callback_requests: u64,
    pub delivery_attempts: u64,
    pub alerts: u64,
    pub alert_sends: u64,
    pub audit_log: u64,
    pub pages: u64,
    pub caller_texts: u64,
    pub tool_call_logs: u64,
    pub call_events: u64,
}

impl std::ops::AddAssign for Pruned {
    fn add_assign(&mut self, o: Self) {
        self.callback_requests += o.callback_requests;
        self.delivery_attempts += o.delivery_attempts;
        self.alerts += o.alerts;
        self.alert_sends += o.alert_sends;
        self.audit_log += o.audit_log;
        self.pages += o.pages;
        self.caller_texts += o.caller_texts;
        self.tool_call_logs += o.tool_call_logs;
        self.call_events += o.call_events;
    }
}

impl Pruned {
    /// Every table with its count, in the order a report lists them.
    pub fn tables(&self) -> [(&'static str, u64); 9] {
        [
            ("callback_requests", self.callback_requests),
            ("delivery_attempts", self.delivery_attempts),
            ("alerts", self.alerts),
            ("alert_sends", self.alert_sends),
            ("audit_log", self.audit_log),
            ("pages", self.pages),
            ("caller_texts", self.caller_texts),
            ("tool_call_logs", self.tool_call_logs),
            ("call_events", self.call_events),
        ]
    }

    /// Rows removed in all.
    pub fn total(&self) -> u64 {
        self.tables().iter().map(|(_, n)| n).sum()
    }
}

/// The kinds of history a prune removes, in the order it removes them: callback requests
/// first, so that the tool-call logs only they referenced can go next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    CallbackRequests,
    ToolCallLogs,
    CallEvents,
}

impl History {
    /// Every kind, in pruning order.
    pub const ALL: [History; 3] = [
        History::CallbackRequests,
        History::ToolCallLogs,
        History::CallEvents,
    ];
}

/// Where a prune of one kind stands: the time (`created_at`, or `at` for events) and id of the
/// last row its batches looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneCursor {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

impl PruneCursor {
    /// Before every row.
    pub fn start() -> Self {
        Self {
            at: DateTime::UNIX_EPOCH,
            id: Uuid::nil(),
        }
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneBatch {
    pub removed: Pruned,
    /// Where the next batch starts; `None` when this one found the last rows.
    pub next: Option<PruneCursor>,
}

/// Deleting old history.
#[async_trait]
pub trait RetentionStore: Send + Sync {
    /// Deletes, in one transaction, up to `limit` rows of `history` older than `cutoff` that
    /// come after `after` (in time, then id, order), with the rows that depend on them (see the
    /// module's documentation for what stays).
    async fn prune_batch(
        &self,
        history: History,
        cutoff: DateTime<Utc>,
        after: PruneCursor,
        limit: i64,
    ) -> Result<PruneBatch, StoreError>;
}

/// Deletes every row of history older than `cutoff`, `batch` rows per transaction; `progress`
/// hears the running total after each batch.
pub async fn prune(
    store: &dyn RetentionStore,
    cutoff: DateTime<Utc>,
    batch: i64,
    mut progress: impl FnMut(History, &Pruned),
) -> Result<Pruned, StoreError> {
    let mut total = Pruned::default();
    for history in History::ALL {
        let mut after = PruneCursor::start();
        loop {
            let done = store.prune_batch(history, cutoff, after, batch).await?;
            total += done.removed;
            progress(history, &total);
            match done.next {
                Some(next) => after = next,
                None => break,
            }
        }
    }
    Ok(total)
}

/// The callback requests a batch may delete: settled (the condition repeats the partial index
/// `callback_requests_settled`'s, so that SQLite uses it), before the cutoff `$1`, after the
/// cursor (`$2`, `$3`), and nothing about them still under way.
macro_rules! settled_requests {
    () => {
        "SELECT id, created_at FROM callback_requests r \
         WHERE (status = 'posted' OR resolved_at IS NOT NULL) \
           AND created_at < $1 AND created_at >= $2 AND (created_at > $2 OR id > $3) \
           AND COALESCE(resolved_at, posted_to_frontend_at, updated_at) < $1 \
           AND lease_owner IS NULL \
           AND NOT EXISTS (SELECT 1 FROM alerts a \
                           WHERE a.callback_request_id = r.id AND a.status = 'pending') \
           AND NOT EXISTS (SELECT 1 FROM pages p WHERE p.callback_request_id = r.id \
                           AND p.state IN ('paging', 'acknowledged')) \
           AND NOT EXISTS (SELECT 1 FROM caller_texts t \
                           WHERE t.callback_request_id = r.id AND t.status = 'sending') \
         ORDER BY created_at, id LIMIT $4 "
    };
}
pub(crate) use settled_requests;

/// Finished tool-call logs before the cutoff `$1`, after the cursor, that nothing kept refers
/// to.
macro_rules! finished_logs {
    () => {
        "SELECT id, created_at FROM tool_call_logs l \
         WHERE created_at < $1 AND created_at >= $2 AND (created_at > $2 OR id > $3) \
           AND status IN ('success', 'failed') \
           AND NOT EXISTS (SELECT 1 FROM callback_requests r WHERE r.tool_call_log_id = l.id) \
           AND NOT EXISTS (SELECT 1 FROM transfer_attempts a WHERE a.tool_call_log_id = l.id) \
         ORDER BY created_at, id LIMIT $4 "
    };
}
pub(crate) use finished_logs;

/// Call events before the cutoff `$1`, after the cursor.
macro_rules! old_events {
    () => {
        "SELECT id, at FROM call_events \
         WHERE at < $1 AND at >= $2 AND (at > $2 OR id > $3) \
         ORDER BY at, id LIMIT $4 "
    };
}
pub(crate) use old_events;

/// Implements [`RetentionStore`] for an engine: `$begin` opens a batch's transaction
/// (`BEGIN IMMEDIATE` on SQLite: the batch reads before it writes, and must not find another
/// writer in between), `$lock` is what the batch's `SELECT` adds to lock its rows (`FOR UPDATE
/// SKIP LOCKED` on PostgreSQL: a row another transaction is changing waits for the next run).
macro_rules! impl_retention_store {
    ($store:ty, $db:ty, $begin:literal, $lock:literal) => {
        mod retention_store_impl {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use uuid::Uuid;

            use super::*;
            use crate::store::StoreError;
            use crate::store::retention::{
                History, PruneBatch, PruneCursor, Pruned, RetentionStore, finished_logs,
                old_events, settled_requests,
            };

            /// Deletes the rows of `table` whose `column` is one of `ids`.
            async fn delete_in(
                conn: &mut <$db as sqlx::Database>::Connection,
                table: &str,
                column: &str,
                ids: &[Uuid],
            ) -> Result<u64, StoreError> {
                let mut query = sqlx::QueryBuilder::<$db>::new(format!(
                    "DELETE FROM {table} WHERE {column} IN ("
                ));
                let mut list = query.separated(", ");
                for id in ids {
                    list.push_bind(*id);
                }
                query.push(")");
                Ok(query.build().execute(&mut *conn).await?.rows_affected())
            }

            #[async_trait]
            impl RetentionStore for $store {
                async fn prune_batch(
                    &self,
                    history: History,
                    cutoff: DateTime<Utc>,
                    after: PruneCursor,
                    limit: i64,
                ) -> Result<PruneBatch, StoreError> {
                    let select = match history {
                        History::CallbackRequests => concat!(settled_requests!(), $lock),
                        History::ToolCallLogs => concat!(finished_logs!(), $lock),
                        History::CallEvents => concat!(old_events!(), $lock),
                    };
                    let mut tx = self.writer().begin_with($begin).await?;
                    let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(select)
                        .bind(cutoff)
                        .bind(after.at)
                        .bind(after.id)
                        .bind(limit)
                        .fetch_all(&mut *tx)
                        .await?;
                    let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
                    let mut removed = Pruned::default();
                    if !ids.is_empty() {
                        match history {
                            History::CallbackRequests => {
                                // Children first: every one of them references the request
                                // (alert sends reference their alert).
                                removed.alert_sends =
                                    delete_in(&mut tx, "alert_sends", "callback_request_id", &ids)
                                        .await?;
                                removed.alerts =
                                    delete_in(&mut tx, "alerts", "callback_request_id", &ids)
                                        .await?;
                                removed.delivery_attempts = delete_in(
                                    &mut tx,
                                    "delivery_attempts",
                                    "callback_request_id",
                                    &ids,
                                )
                                .await?;
                                removed.audit_log =
                                    delete_in(&mut tx, "audit_log", "callback_request_id", &ids)
                                        .await?;
                                removed.pages =
                                    delete_in(&mut tx, "pages", "callback_request_id", &ids)
                                        .await?;
                                removed.caller_texts =
                                    delete_in(&mut tx, "caller_texts", "callback_request_id", &ids)
                                        .await?;
                                removed.callback_requests =
                                    delete_in(&mut tx, "callback_requests", "id", &ids).await?;
                            }
                            History::ToolCallLogs => {
                                removed.tool_call_logs =
                                    delete_in(&mut tx, "tool_call_logs", "id", &ids).await?;
                            }
                            History::CallEvents => {
                                removed.call_events =
                                    delete_in(&mut tx, "call_events", "id", &ids).await?;
                            }
                        }
                    }
                    tx.commit().await?;
                    let next = match rows.last() {
                        Some((id, at)) if rows.len() as i64 >= limit => {
                            Some(PruneCursor { at: *at, id: *id })
                        }
                        _ => None,
                    };
                    Ok(PruneBatch { removed, next })
                }
            }
        }
    };
}
pub(crate) use impl_retention_store;

#[cfg(test)]
mod tests {
    /// Each batch finds its rows through an index on time (and looks references up through
    /// indexes), on SQLite: a batch's cost does not grow with what the tables keep.
    #[tokio::test]
    async fn a_batch_finds_its_rows_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("plans.db").display()
        );
        let store = crate::store::connect_with_pool(&url, 1).await.unwrap();
        store.migrate().await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for (sql, indexes) in [
            (
                settled_requests!(),
                &[
                    "callback_requests_settled",
                    "alerts",
                    "pages",
                    "caller_texts",
                ][..],
            ),
            (
                finished_logs!(),
                &[
                    "tool_call_logs_created",
                    "callback_requests_tool_call_log",
                    "transfer_attempts_tool_call_log",
                ][..],
            ),
            (old_events!(), &["call_events_at"][..]),
        ] {
            // Parameters as literals: EXPLAIN needs none bound.
            let sql = sql
                .replace("$1", "'2025-01-01'")
                .replace("$2", "'1970-01-01'")
                .replace("$3", "x'00'")
                .replace("$4", "500");
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            let steps: Vec<&str> = plan.iter().map(|(.., detail)| detail.as_str()).collect();
            for index in indexes {
                assert!(
                    steps.iter().any(|s| s.contains(index)),
                    "{index} not used: {steps:?}"
                );
            }
            assert!(
                !steps.iter().any(|s| s.starts_with("SCAN ")),
                "a table read in full: {steps:?}"
            );
        }
        drop(store);
        pool.close().await;
    }
}
