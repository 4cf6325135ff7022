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
//! So the call path's store hands each log statement to **lanes**. The first lane takes
//! whatever is waiting (up to [`MAX_BATCH`]) and logs it in one statement; what arrives
//! meanwhile waits for its next statement. Nothing waits on purpose: an idle lane takes a lone
//! tool call at once and runs exactly the statement it would have run alone, so a quiet system
//! sees no change, and batches grow only as tool calls queue. The other lanes are for overflow:
//! each takes a batch only when a full batch or more waits, more than the first lane can take
//! in one statement (lanes that all took whatever waited ran more statements of fewer tool
//! calls, and cost the database a third more per tool call; see [`Role`]).
//!
//! A lane keeps its connection from one statement to the next while tool calls keep coming
//! (given back after [`HOLD_IDLE`] without one): taken from the pool and given back for each
//! statement, it cost a second round trip per statement (sqlx checks each connection given
//! back), and the pool handed out its connections in turn, each statement waking a database
//! process that had not run for a while. A connection whose statement failed or was left
//! unfinished is given back to the pool, which checks it, rather than kept.
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
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgExecutor, PgPool, Postgres, Row};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use crate::store::{NewCallbackRequest, NewToolCallLog, Recorded, StoreError};

/// At most this many tool calls in one statement.
pub(super) const MAX_BATCH: usize = 16;

/// How long a lane keeps its connection without a statement to run; then it goes back to the
/// pool, which checks a connection idle this long before handing it out again
/// (`IDLE_CHECK_AFTER`, `ping_if_idle`), so that a kept connection is never older news than a
/// pooled one.
const HOLD_IDLE: Duration = super::IDLE_CHECK_AFTER;

/// How long a lane keeps a connection at most, busy or not.
const HOLD_AT_MOST: Duration = Duration::from_secs(600);

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
    /// Statements run on the connection of their lane's statement before.
    on_held: AtomicU64,
}

/// Hands log statements to the lanes. Cloned with its store; the lanes end when the last
/// clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct LogBatcher {
    queue: mpsc::UnboundedSender<Waiting>,
    counts: Arc<Counts>,
    backlog: Arc<Notify>,
    /// Ends the overflow lanes with the last clone (the first lane ends when the queue closes).
    _stop: Arc<DropGuard>,
}

impl LogBatcher {
    /// Starts `lanes` lanes on `pool`, each with at most one of its connections at a time:
    /// kept from one statement to the next while tool calls keep coming if `hold` (the pool
    /// must then have connections to spare for the call path's other statements), given back
    /// after each statement otherwise. The first lane takes whatever waits; the others only a
    /// backlog of a full batch or more (see [`overflow`]).
    pub(super) fn start(pool: PgPool, lanes: usize, hold: bool) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(waiting));
        let counts = Arc::new(Counts::default());
        let backlog = Arc::new(Notify::new());
        let stop = CancellationToken::new();
        for k in 0..lanes.max(1) {
            let role = if k == 0 {
                Role::First
            } else {
                Role::Overflow(backlog.clone(), stop.clone())
            };
            tokio::spawn(lane(
                pool.clone(),
                waiting.clone(),
                counts.clone(),
                hold,
                role,
            ));
        }
        Self {
            queue,
            counts,
            backlog,
            _stop: Arc::new(stop.drop_guard()),
        }
    }

    /// Logs `entry`, alone or with others waiting at the same time; answered after the commit.
    pub(super) async fn log(&self, entry: Entry) -> Logged {
        let (reply, answer) = oneshot::channel();
        let waiting = self.counts.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        if self.queue.send(Waiting { entry, reply }).is_err() {
            self.counts.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(
                "the log statement's lanes have stopped".into(),
            ));
        }
        if waiting >= MAX_BATCH as u64 {
            self.backlog.notify_one();
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

    /// Statements run so far on the connection their lane kept from its statement before.
    pub(super) fn on_held(&self) -> u64 {
        self.counts.on_held.load(Ordering::Relaxed)
    }
}

/// What a lane takes: the first lane whatever waits, as soon as it is free; an overflow lane
/// only a backlog of a full batch or more, which the first lane cannot take in one statement.
///
/// One statement at a time takes every tool call that arrived during the one before: the
/// fewer statements, the fewer commits and WAL flushes, and the less database work per tool
/// call. Lanes that all took whatever waited ran more statements of fewer tool calls
/// (PostgreSQL's CPU per tool call, this machine, lanes kept connections: 0.47-0.53 ms at
/// 500/s, 0.38-0.39 at 1,000/s and 0.18-0.19 at 3,000/s with one lane; 0.71-0.74, 0.42-0.50
/// and 0.25-0.26 ms with four). One lane alone fell behind at 4,000/s; the overflow lanes
/// take what it cannot.
enum Role {
    First,
    Overflow(Arc<Notify>, CancellationToken),
}

/// Takes what is waiting, logs it, and again.
async fn lane(
    pool: PgPool,
    waiting: Arc<Mutex<mpsc::UnboundedReceiver<Waiting>>>,
    counts: Arc<Counts>,
    hold: bool,
    role: Role,
) {
    // The connection of the lane's last statement, kept while tool calls keep coming. Each
    // statement on a connection taken from the pool and given back cost a second round trip
    // (sqlx checks every connection given back with a `Sync` and waits for the server's
    // answer), and the pool handed out its connections in turn, so that every statement
    // woke a server process that had not run for a while.
    let mut held: Option<PoolConnection<Postgres>> = None;
    let mut taken_at = Instant::now();
    loop {
        let next = match &role {
            Role::First if held.is_some() => {
                match tokio::time::timeout(HOLD_IDLE, take(&waiting)).await {
                    Ok(next) => next,
                    Err(_) => {
                        // Idle: the connection goes back to the pool, which checks a
                        // connection that sat idle before handing it out again
                        // (`ping_if_idle`).
                        held = None;
                        take(&waiting).await
                    }
                }
            }
            Role::First => take(&waiting).await,
            Role::Overflow(backlog, stop) => {
                let wait = overflow(&waiting, &counts, backlog);
                tokio::select! {
                    _ = stop.cancelled() => None,
                    next = tokio::time::timeout(HOLD_IDLE, wait) => match next {
                        Ok(next) => Some(next),
                        Err(_) => {
                            held = None;
                            continue;
                        }
                    },
                }
            }
        };
        let Some(mut batch) = next else {
            return;
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
        let kept = held.take();
        if kept.is_some() {
            counts.on_held.fetch_add(1, Ordering::Relaxed);
        } else {
            taken_at = Instant::now();
        }
        let conn = run(&pool, kept, batch, &counts).await;
        // Given back now and then even under constant load, so that the pool's own upkeep
        // (its connections' maximum lifetime) reaches it too.
        if hold && taken_at.elapsed() < HOLD_AT_MOST {
            held = conn;
        }
    }
}

/// What is waiting (up to [`MAX_BATCH`]), once something is; `None` once the store is gone.
/// Cancel-safe: dropped before a tool call is taken, it takes none.
async fn take(waiting: &Mutex<mpsc::UnboundedReceiver<Waiting>>) -> Option<Vec<Waiting>> {
    let mut waiting = waiting.lock().await;
    let first = waiting.recv().await?;
    let mut batch = vec![first];
    drain(&mut waiting, &mut batch);
    Some(batch)
}

/// Adds what is waiting to `batch`, up to [`MAX_BATCH`].
fn drain(waiting: &mut mpsc::UnboundedReceiver<Waiting>, batch: &mut Vec<Waiting>) {
    while batch.len() < MAX_BATCH {
        match waiting.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// An overflow lane's next batch: up to [`MAX_BATCH`] of what waits, once a full batch or more
/// waits (`backlog` is notified when a hand-over makes it so). Cancel-safe as [`take`].
async fn overflow(
    waiting: &Mutex<mpsc::UnboundedReceiver<Waiting>>,
    counts: &Counts,
    backlog: &Notify,
) -> Vec<Waiting> {
    loop {
        let notified = backlog.notified();
        tokio::pin!(notified);
        // Registered before the count is read, so that a hand-over between the two wakes it.
        notified.as_mut().enable();
        if counts.waiting.load(Ordering::Relaxed) >= MAX_BATCH as u64 {
            let mut batch = Vec::new();
            drain(&mut *waiting.lock().await, &mut batch);
            if !batch.is_empty() {
                // More than this batch waits: the next overflow lane takes it.
                if counts.waiting.load(Ordering::Relaxed) >= 2 * MAX_BATCH as u64 {
                    backlog.notify_one();
                }
                return batch;
            }
        }
        notified.await;
    }
}

/// Logs `batch` on `conn` (or a connection from the pool) and returns the connection if it is
/// fit for the next statement: only after a statement that succeeded. After an error, or a
/// statement left unfinished because every caller stopped waiting, it goes back to the pool,
/// which checks it ([`discard`]).
async fn run(
    pool: &PgPool,
    conn: Option<PoolConnection<Postgres>>,
    mut batch: Vec<Waiting>,
    counts: &Counts,
) -> Option<PoolConnection<Postgres>> {
    batch.sort_by_key(|w| w.entry.lock_key);
    let (entries, mut replies): (Vec<Entry>, Vec<oneshot::Sender<Logged>>) =
        batch.into_iter().map(|w| (w.entry, w.reply)).unzip();
    let mut conn = match conn {
        Some(conn) => conn,
        None => match unless_abandoned(&mut replies, pool.acquire()).await? {
            Ok(conn) => conn,
            Err(e) => {
                // No connection could be had: each tool call gets the outage its own
                // statement would have got (the resilient store journals it).
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable(format!(
                        "no database connection for the tool call's log statement: {e}"
                    ))));
                }
                return None;
            }
        },
    };
    if let [entry] = entries.as_slice() {
        let Some(logged) = unless_abandoned(&mut replies, alone(&mut *conn, entry)).await else {
            return discard(conn);
        };
        let after = match &logged {
            Ok(_) => Some(conn),
            Err(_) => discard(conn),
        };
        if let Some(reply) = replies.pop() {
            let _ = reply.send(logged);
        }
        return after;
    }
    match unless_abandoned(&mut replies, together(&mut *conn, &entries)).await {
        None => discard(conn),
        Some(Ok(rows)) => {
            for (reply, row) in replies.into_iter().zip(rows) {
                let _ = reply.send(Ok(row));
            }
            Some(conn)
        }
        Some(Err(e)) if !refused_by_the_database(&e) => {
            // The connection failed: whether the statement committed is unknown, so none is
            // logged again here (a tool call found already logged would look like a repeat of
            // itself and never run). Each gets the outage a statement of its own would have
            // got, and the resilient store journals its record; the replay finds what did
            // commit.
            warn!(error = %e, tool_calls = entries.len(), "a shared log statement lost its connection");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Unavailable(format!(
                    "the database connection failed during the tool call's log statement: {e}"
                ))));
            }
            discard(conn)
        }
        Some(Err(e)) => {
            drop(conn);
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
            None
        }
    }
}

/// Gives back to the pool a connection unfit for the lane's next statement: the pool checks
/// it before taking it back (`Sync`, answered once the server has finished what it still
/// runs), and closes it if it failed. Not closed at once: a statement left unfinished may still
/// be waiting in the database (a lock), and a new connection for each would take the server's
/// connections one after another while a lock is held.
fn discard(conn: PoolConnection<Postgres>) -> Option<PoolConnection<Postgres>> {
    drop(conn);
    None
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
pub(super) async fn alone<'c>(db: impl PgExecutor<'c>, e: &Entry) -> Logged {
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
    let row = q.fetch_one(db).await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

/// Several tool calls in one call of `lifeline_log_invocations` (migration `0015`), in `batch`
/// order; the rows in the same order.
async fn together<'c>(
    db: impl PgExecutor<'c>,
    batch: &[Entry],
) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let rows = bind_together(sqlx::query(LOG_INVOCATIONS), batch)
        .fetch_all(db)
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
