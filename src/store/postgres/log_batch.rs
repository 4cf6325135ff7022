//! PostgreSQL: the tool calls waiting to be logged share one statement and one commit.
//!
//! Each tool call is logged by `lifeline_log_invocation` (migrations `0010`, `0013`, `0014`).
//! Alone, each call of it is a statement of its own: a round trip, an executor start-up, a commit
//! and its WAL flush. Under load several tool calls wait at the same time; `perf` over the database
//! at 1,000 tool calls/s put the per-statement part at about a third of its CPU (executor
//! start-up 13%, commit 14%, the socket 8%). Calling the function for three tool calls in one
//! statement (`UNION ALL`) cut PostgreSQL's CPU per tool call from 0.94-1.07 to 0.59-0.75 ms
//! (pgbench, 16 clients, 1,000 tool calls/s).
//!
//! So the call path's store hands each log statement to a few **lanes**: a lane takes whatever
//! is waiting (up to [`MAX_BATCH`]) and logs it in one statement; what arrives meanwhile waits
//! for the next free lane. Nothing waits on purpose: an idle lane takes a lone tool call at
//! once and runs exactly the statement it would have run alone, so a quiet system sees no
//! change, and batches grow only as tool calls queue.
//!
//! A batch's statement is one call of `lifeline_log_invocations` (migration `0015`), with one
//! array per parameter. It writes the log rows of every tool call that can take the common way
//! (the first of its call in the batch, its call's totals under its limits) with one `INSERT`,
//! and their callback requests with another, so that the executor start-ups, the trigger's
//! condition and the function call are paid once per batch rather than once per tool call
//! (PostgreSQL's CPU per tool call at 3,000/s: 0.28 against 0.49-0.51 ms with a function call
//! per tool call in a `UNION ALL`). The others go through `lifeline_log_invocation` one by one
//! inside the same statement, after the shared inserts, in batch order.
//!
//! What every tool call is promised holds for each one in a batch:
//! - each is answered only after the commit that holds its rows;
//! - each is logged under its own call's advisory lock (the statement takes every lock of the
//!   batch first), has its own limits and repeats checked under it, and sees what the tool
//!   calls of its call before it in the batch wrote (one transaction; a later tool call of a
//!   call already in the batch is logged after the shared inserts);
//! - the locks are taken in key order (the batch is sorted by it), so two lanes never wait for
//!   each other in a cycle;
//! - if the database refuses the statement, nothing of it was written (one transaction), and
//!   each tool call is logged again by a statement of its own, so it gets exactly the outcome
//!   or error it would have got alone (a foreign key or a NUL fails that tool call only);
//! - if the connection fails instead, whether it committed is unknown: each tool call gets
//!   the outage its own statement would have got (the resilient store journals it), and none
//!   is logged again here, where a committed one would look like a repeat of itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::warn;

use crate::store::{NewCallbackRequest, NewToolCallLog, Recorded, StoreError};

/// At most this many tool calls in one statement.
pub(super) const MAX_BATCH: usize = 16;

/// One tool call's log statement, owned so that it can wait for a lane.
pub(super) struct Entry {
    /// The call's advisory lock key ([`crate::store::call_lock_key`]).
    pub lock_key: i32,
    pub call_since: DateTime<Utc>,
    pub window_tool: String,
    pub tool_since: DateTime<Utc>,
    pub call_limit: Option<i64>,
    pub tool_limit: Option<i64>,
    pub log: NewToolCallLog,
    /// The outcome recorded with the row (`None`: the row starts `pending`).
    pub outcome: Option<Recorded>,
    pub callback: Option<NewCallbackRequest>,
}

/// What `lifeline_log_invocation` returned: its outcome and the window counts.
pub(super) type Logged = Result<(String, i64, i64), StoreError>;

struct Waiting {
    entry: Entry,
    reply: oneshot::Sender<Logged>,
}

/// Statements run and tool calls they logged, for tests and the README's figures.
#[derive(Debug, Default)]
struct Counts {
    statements: AtomicU64,
    entries: AtomicU64,
    /// Tool calls handed over and not yet taken by a lane.
    waiting: AtomicU64,
    /// Shared statements the database refused (their tool calls then logged one by one).
    refused: AtomicU64,
}

/// Hands log statements to the lanes. Cloned with its store; the lanes end when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct LogBatcher {
    queue: mpsc::UnboundedSender<Waiting>,
    counts: Arc<Counts>,
}

impl LogBatcher {
    /// Starts `lanes` lanes on `pool` (each holds at most one of its connections at a time).
    pub(super) fn start(pool: PgPool, lanes: usize) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        let counts = Arc::new(Counts::default());
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(pool.clone(), waiting.clone(), counts.clone()));
        }
        Self { queue, counts }
    }

    /// Logs `entry`, alone or with others waiting at the same time; answered after the commit.
    pub(super) async fn log(&self, entry: Entry) -> Logged {
        let (reply, answer) = oneshot::channel();
        self.counts.waiting.fetch_add(1, Ordering::Relaxed);
        if self.queue.send(Waiting { entry, reply }).is_err() {
            self.counts.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(
                "the log statement's lanes have stopped".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the tool call's log statement was lost (its lane stopped)".into(),
            ))
        })
    }

    /// (statements run, tool calls logged by them) so far.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.counts.statements.load(Ordering::Relaxed),
            self.counts.entries.load(Ordering::Relaxed),
        )
    }

    /// Tool calls waiting for a lane now.
    pub(super) fn waiting(&self) -> u64 {
        self.counts.waiting.load(Ordering::Relaxed)
    }

    /// Shared statements refused by the database so far.
    pub(super) fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }
}

/// Takes what is waiting, logs it, and again.
async fn lane(
    pool: PgPool,
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Waiting>>>,
    counts: Arc<Counts>,
) {
    loop {
        let mut batch = {
            let mut waiting = waiting.lock().await;
            let Some(first) = waiting.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match waiting.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            batch
        };
        counts
            .waiting
            .fetch_sub(batch.len() as u64, Ordering::Relaxed);
        // A tool call whose caller stopped waiting (the resilient store's write budget passed,
        // and it journaled the record instead) is not written here too: after an outage the
        // queue would otherwise replay, late, everything the journal already holds.
        batch.retain(|w| !w.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        counts.statements.fetch_add(1, Ordering::Relaxed);
        counts
            .entries
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        metrics::histogram!("lifeline_log_batch_size").record(batch.len() as f64);
        run(&pool, batch, &counts).await;
    }
}

async fn run(pool: &PgPool, mut batch: Vec<Waiting>, counts: &Counts) {
    batch.sort_by_key(|w| w.entry.lock_key);
    let (entries, mut replies): (Vec<Entry>, Vec<oneshot::Sender<Logged>>) =
        batch.into_iter().map(|w| (w.entry, w.reply)).unzip();
    if let [entry] = entries.as_slice() {
        if let Some(logged) = unless_abandoned(&mut replies, alone(pool, entry)).await
            && let Some(reply) = replies.pop()
        {
            let _ = reply.send(logged);
        }
        return;
    }
    match unless_abandoned(&mut replies, together(pool, &entries)).await {
        None => {}
        Some(Ok(rows)) => {
            for (reply, row) in replies.into_iter().zip(rows) {
                let _ = reply.send(Ok(row));
            }
        }
        Some(Err(e)) if !refused_by_the_database(&e) => {
            // The connection failed (or none could be had): whether the statement committed is
            // unknown, so none is logged again here (a tool call found already logged would
            // look like a repeat of itself and never run). Each gets the outage a statement
            // of its own would have got, and the resilient store journals its record; the
            // replay finds what did commit.
            warn!(error = %e, tool_calls = entries.len(), "a shared log statement lost its connection");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(format!(
                    "the database connection failed during the tool call's log statement: {e}"
                ))));
            }
        }
        Some(Err(e)) => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            // The database refused the statement, so nothing of it was written (one
            // transaction): each is logged on its own, and gets the outcome or the error it
            // would have got alone.
            warn!(error = %e, tool_calls = entries.len(), "a shared log statement failed; logging its tool calls one by one");
            futures_util::future::join_all(entries.iter().zip(replies).map(
                |(entry, reply)| async move {
                    let mut reply = [reply];
                    if let Some(logged) = unless_abandoned(&mut reply, alone(pool, entry)).await {
                        let [reply] = reply;
                        let _ = reply.send(logged);
                    }
                },
            ))
            .await;
        }
    }
}

/// Whether the database answered the statement with an error (then its transaction rolled
/// back, and nothing of it was written), rather than the way to it failing.
fn refused_by_the_database(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unstorable(_) | StoreError::Database(sqlx::Error::Database(_))
    )
}

/// `work`, unless every caller stops waiting first (`None`). A statement on a connection that
/// no longer answers (a black-holed network) would otherwise hold its lane for good; its callers
/// have journaled their records by then (the resilient store's write budget), and dropping the
/// statement is what dropping their own futures did before the lanes.
async fn unless_abandoned<T>(
    replies: &mut [oneshot::Sender<Logged>],
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let all_gone = futures_util::future::join_all(replies.iter_mut().map(|r| r.closed()));
    tokio::select! {
        done = work => Some(done),
        _ = all_gone => None,
    }
}

/// One tool call's statement: a store without lanes runs only this.
pub(super) async fn alone(pool: &PgPool, e: &Entry) -> Logged {
    let q = sqlx::query(if e.callback.is_some() {
        super::LOG_INVOCATION_WITH_CALLBACK
    } else {
        super::LOG_INVOCATION
    });
    let q = bind_entry(q, e);
    let q = match &e.callback {
        Some(cb) => super::bind_callback(q, cb).bind(cb.text_caller),
        None => q,
    };
    let row = q.fetch_one(pool).await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Several tool calls in one call of `lifeline_log_invocations` (migration `0015`), in `batch`
/// order; the rows in the same order.
async fn together(pool: &PgPool, batch: &[Entry]) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let rows = bind_together(sqlx::query(LOG_INVOCATIONS), batch)
        .fetch_all(pool)
        .await?;
    let mut out: Vec<Option<(String, i64, i64)>> = vec![None; batch.len()];
    for row in rows {
        let i: i32 = row.try_get(0)?;
        if let Some(slot) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
            *slot = Some((row.try_get(1)?, row.try_get(2)?, row.try_get(3)?));
        }
    }
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Unavailable("the shared log statement lost a row".into()))
}

/// The batch's log statement: one array per parameter of `lifeline_log_invocation` (but the
/// lock's namespace), element k for the batch's tool call k.
const LOG_INVOCATIONS: &str = "SELECT i, outcome, call_count, tool_count FROM \
     lifeline_log_invocations($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, \
     $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51)";

/// Binds `batch` as [`LOG_INVOCATIONS`]'s arrays, the same values [`alone`] binds one by one
/// (a tool call without a callback request: NULLs, `c_ids[k]` NULL writing none).
fn bind_together<'q>(q: PgQuery<'q>, batch: &'q [Entry]) -> PgQuery<'q> {
    use sqlx::types::Json;
    fn each<'a, T>(batch: &'a [Entry], f: impl Fn(&'a Entry) -> T) -> Vec<T> {
        batch.iter().map(f).collect()
    }
    let cb = |e: &'q Entry| e.callback.as_ref();
    let q = q
        .bind(crate::store::CALL_LOCK_NAMESPACE)
        .bind(each(batch, |e| e.lock_key))
        .bind(each(batch, |e| e.call_since))
        .bind(each(batch, |e| e.window_tool.as_str()))
        .bind(each(batch, |e| e.tool_since))
        .bind(each(batch, |e| e.call_limit))
        .bind(each(batch, |e| e.tool_limit));
    let q = q
        .bind(each(batch, |e| e.log.id))
        .bind(each(batch, |e| e.log.created_at))
        .bind(each(batch, |e| e.log.tenant_id.as_str()))
        .bind(each(batch, |e| e.log.platform.as_str()))
        .bind(each(batch, |e| e.log.call_ref.as_str()))
        .bind(each(batch, |e| e.log.call_id))
        .bind(each(batch, |e| e.log.invocation_key.as_str()))
        .bind(each(batch, |e| e.log.invocation_id.as_deref()))
        .bind(each(batch, |e| e.log.tool_name.as_str()))
        .bind(each(batch, |e| e.log.canonical_tool.as_str()))
        .bind(each(batch, |e| Json(&e.log.tool_parameters)))
        .bind(each(batch, |e| e.log.callback_number.as_deref()))
        .bind(each(batch, |e| e.log.caller_name.as_deref()))
        .bind(each(batch, |e| e.log.urgency_level.as_deref()))
        .bind(each(batch, |e| e.log.ultravox_call_id.as_deref()))
        .bind(each(batch, |e| e.log.twilio_call_sid.as_deref()))
        .bind(each(batch, |e| Json(&e.log.tool_data)))
        .bind(each(batch, |e| {
            e.outcome.as_ref().map_or("pending", |o| o.status())
        }))
        .bind(each(batch, |e| e.outcome.as_ref().map(|o| Json(&o.result))))
        .bind(each(batch, |e| {
            e.outcome.as_ref().and_then(|o| o.error_message.as_deref())
        }))
        .bind(each(batch, |e| {
            e.outcome.as_ref().and_then(|o| o.error_kind)
        }))
        .bind(each(batch, |e| e.outcome.as_ref().map(|o| o.duration_ms)))
        .bind(each(batch, |e| e.outcome.as_ref().map(|o| o.at)));
    q.bind(each(batch, |e| cb(e).map(|c| c.id)))
        .bind(each(batch, |e| cb(e).map(|c| c.created_at)))
        .bind(each(batch, |e| cb(e).map(|c| c.tenant_id.as_str())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.call_id)))
        .bind(each(batch, |e| cb(e).and_then(|c| c.call_sid.as_deref())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.transfer_attempt_id)))
        .bind(each(batch, |e| cb(e).map(|c| c.reason)))
        .bind(each(batch, |e| cb(e).map(|c| c.callback_number.as_str())))
        .bind(each(batch, |e| {
            cb(e).and_then(|c| c.caller_name.as_deref())
        }))
        .bind(each(batch, |e| cb(e).and_then(|c| c.first_name.as_deref())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.last_name.as_deref())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.pet_name.as_deref())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.species.as_deref())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.breed.as_deref())))
        .bind(each(batch, |e| cb(e).and_then(|c| c.age.as_deref())))
        .bind(each(batch, |e| {
            cb(e).and_then(|c| c.concern_description.as_deref())
        }))
        .bind(each(batch, |e| cb(e).map(|c| c.urgency.as_str())))
        .bind(each(batch, |e| {
            cb(e).and_then(|c| c.urgency_reason.as_deref())
        }))
        .bind(each(batch, |e| cb(e).map(|c| c.urgency.rank())))
        .bind(each(batch, |e| cb(e).map(|c| Json(&c.metadata))))
        .bind(each(batch, |e| cb(e).is_none_or(|c| c.text_caller)))
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The lock, windows and limits ($1-$7), then the log row ($8-$30).
fn bind_entry<'q>(q: PgQuery<'q>, e: &Entry) -> PgQuery<'q> {
    let q = q
        .bind(crate::store::CALL_LOCK_NAMESPACE)
        .bind(e.lock_key)
        .bind(e.call_since)
        .bind(&e.window_tool)
        .bind(e.tool_since)
        .bind(e.call_limit)
        .bind(e.tool_limit);
    super::bind_log(q, &e.log, e.outcome.as_ref())
}
