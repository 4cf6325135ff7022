//! SQLite's log writer: a thread of its own that logs queued tool calls, and the call's own
//! writes (its start, its status, its events), a batch at a time on the writer connection's own
//! handle, and commits each batch before answering it.
//!
//! Through sqlx every statement is a hand-off to the connection's thread and back, and a
//! batch was several of them (its `BEGIN`, each turn's query, its `COMMIT`), each waiting to be
//! scheduled on two busy cores: at 3,000 tool calls/s that serial chain, not SQLite's work,
//! set the tail. This thread writes on a connection of its own to the same file, with the
//! settings of sqlx's (`synchronous=FULL`, foreign keys, the busy timeout), and runs `BEGIN
//! IMMEDIATE`, every queued job's rows and the `COMMIT` itself, with no hand-off in between;
//! jobs queued meanwhile wait for the next batch. It holds sqlx's writer connection from the
//! pool while it writes, so that it never waits on SQLite's lock for the group-commit batch of
//! the writes it does not take (which holds that connection while open), nor they for it.

use std::sync::atomic::Ordering;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::types::Value;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, watch};

use super::checkpoints::Checkpoints;
use super::wal_sync::WalSync;
use super::{GroupCommit, Queued};

/// At most this many tool calls in one batch (they all wait for its commit).
const PER_BATCH: usize = 256;

/// A tool call's log row, for the writer (SQLite `?NNN` parameters bind by number): as the
/// statement path's `INSERT_LOG`, but written only while the call's totals are below its
/// limits (?24: its invocations, ?25: its transfers; NULL: no limit) and not when the
/// invocation was logged before.
const INSERT_LOG: &str = concat!(
    "INSERT INTO tool_call_logs (",
    crate::store::common::log_insert_columns!(),
    ") SELECT ?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, \
     ?18, ?19, ?20, ?21, ?22, ?23 \
     WHERE NOT EXISTS (SELECT 1 FROM tool_call_logs \
      WHERE platform = ?4 AND call_ref = ?5 AND invocation_key = ?7) \
     AND (?24 IS NULL OR COALESCE((SELECT total FROM call_invocation_totals \
      WHERE platform = ?4 AND call_ref = ?5), 0) < ?24) \
     AND (?25 IS NULL OR COALESCE((SELECT transfers FROM call_invocation_totals \
      WHERE platform = ?4 AND call_ref = ?5), 0) < ?25) \
     ON CONFLICT (platform, call_ref, invocation_key) DO NOTHING"
);

/// A tool call's callback request, written in the same savepoint as its log row: ?21 the log
/// row, ?22 whether to text the caller.
const INSERT_CALLBACK: &str = concat!(
    "INSERT INTO callback_requests (",
    crate::store::common::callback_insert_columns!(),
    ") VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, 'pending', ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
     ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
);

/// What the writer thread is asked to write.
pub(super) enum Job {
    /// A tool call's log row, and its callback request (boxed: it is large, and the queue
    /// holds mostly these and moves each once).
    Log(Box<Queued>),
    /// A write of the call's own: its statements, in order, all or none.
    Write(Write),
}

/// A call's write for the writer thread (see [`Job::Write`]).
pub(super) struct Write {
    statements: Vec<(&'static str, Vec<Value>)>,
    /// Written only if its first statement changed a row (a call's start: a call already
    /// there takes its group-commit turn, whose upsert returns the row there).
    only_if_new: bool,
    reply: Option<tokio::sync::oneshot::Sender<Option<super::Outcome>>>,
}

impl Job {
    fn reply(&mut self) -> &mut Option<tokio::sync::oneshot::Sender<Option<super::Outcome>>> {
        match self {
            Job::Log(q) => &mut q.reply,
            Job::Write(w) => &mut w.reply,
        }
    }

    fn waited_for(&self) -> bool {
        let reply = match self {
            Job::Log(q) => &q.reply,
            Job::Write(w) => &w.reply,
        };
        reply.as_ref().is_some_and(|r| !r.is_closed())
    }
}

/// The queue of jobs for the writer thread.
pub(super) struct LogWriter {
    tx: mpsc::UnboundedSender<Job>,
    checkpoints: std::sync::Arc<super::checkpoints::Counts>,
    syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogWriter")
    }
}

impl LogWriter {
    /// Opens the writer's connection to the database file at `path` and starts the thread. It
    /// ends when the last [`LogWriter`] (the last store) is dropped.
    pub(super) fn start(
        pool: SqlitePool,
        path: &std::path::Path,
        group: std::sync::Weak<GroupCommit>,
    ) -> Result<Self, rusqlite::Error> {
        let db = rusqlite::Connection::open(path)?;
        // sqlx's settings for the writer (`SqliteStore::connect`); the file is in WAL mode
        // already (sqlx's connection set it, and it stays with the file). Foreign keys are on
        // by default in the bundled SQLite too (libsqlite3-sys builds it so); said anyway.
        db.execute_batch(
            "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; \
             PRAGMA cache_size = -16384;",
        )?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        // Without a checkpointer the writer's connection keeps SQLite's automatic checkpoint
        // (inside its commits, as before): a slower tail, not a reason to write one by one.
        let checkpoints = Checkpoints::start(&db, path)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "could not start SQLite's checkpointer; the log writer checkpoints in its commits");
            })
            .ok();
        let counts = checkpoints
            .as_ref()
            .map(Checkpoints::counts)
            .unwrap_or_default();
        // Its commits do not wait for the disk: the sync thread makes each durable before it
        // is answered (`wal_sync`). Without that thread, `synchronous=FULL` as everywhere.
        // Neither failure stops the log writer: it then syncs in its commits, as sqlx does.
        let sync = WalSync::start(path)
            .map_err(|e| e.to_string())
            .and_then(|sync| {
                db.execute_batch("PRAGMA synchronous = NORMAL;")
                    .map(|()| sync)
                    .map_err(|e| e.to_string())
            })
            .inspect_err(|e| {
                tracing::warn!(error = %e, "could not hand SQLite's WAL syncs to a thread of their own; the log writer syncs in its commits");
            })
            .ok();
        let syncs = sync.as_ref().map(WalSync::syncs).unwrap_or_default();
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("lifeline-sqlite-log".into())
            .spawn(move || {
                Thread {
                    pool,
                    runtime,
                    group,
                    db,
                    checkpoints,
                    sync,
                }
                .run(rx)
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Self {
            tx,
            checkpoints: counts,
            syncs,
        })
    }

    /// WAL checkpoints so far: by the checkpointer thread, and by this writer itself.
    pub(super) fn checkpoints(&self) -> (u64, u64) {
        (
            self.checkpoints.checkpointer.load(Ordering::Relaxed),
            self.checkpoints.log_writer.load(Ordering::Relaxed),
        )
    }

    /// Syncs of the WAL so far, by the sync thread or by the writer itself (0 where the sync
    /// thread could not start: each `COMMIT` syncs then).
    pub(super) fn wal_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Queues a job; false if the thread is gone (its caller then writes it statement by
    /// statement).
    pub(super) fn send(&self, job: Job) -> bool {
        self.tx.send(job).is_ok()
    }
}

/// The thread's state: the pool whose writer it holds while it writes, and its connection.
struct Thread {
    pool: SqlitePool,
    runtime: tokio::runtime::Handle,
    group: std::sync::Weak<GroupCommit>,
    db: rusqlite::Connection,
    /// `None` if the checkpointer could not start (SQLite's own checkpoints then).
    checkpoints: Option<Checkpoints>,
    /// `None` if the sync thread could not start (each `COMMIT` syncs then).
    sync: Option<WalSync>,
}

impl Thread {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        // In the runtime's context (not on it): sqlx returns a connection to its pool from a
        // task it spawns.
        let _context = self.runtime.enter();
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            if let Err(e) = self.write_batch(&mut rx, &mut batch) {
                tracing::warn!(error = %e, "the log writer could not take the writer connection; its jobs are written one by one");
            }
            // Whatever was not answered is written statement by statement by its own caller.
            for job in batch {
                self.answer(job, None);
            }
            // Once the batch is answered: its commit's checkpoint, if any, delays no one in it.
            if let Some(checkpoints) = &mut self.checkpoints {
                checkpoints.after_batch(&self.db);
            }
        }
    }

    /// Takes sqlx's writer connection, adds to `batch` whatever queued meanwhile, writes it
    /// in one transaction and answers each job; then gives the connection back (the writes it
    /// does not take queue for it in the pool meanwhile, and each waits for one batch at most).
    fn write_batch(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Job>,
        batch: &mut Vec<Job>,
    ) -> Result<(), sqlx::Error> {
        let held = self.runtime.block_on(self.pool.acquire())?;
        let Some(group) = self.group.upgrade() else {
            return Ok(());
        };
        if let Err(e) = self.db.execute_batch("BEGIN IMMEDIATE") {
            tracing::warn!(error = %e, "the log writer could not begin; its jobs are written one by one");
            return Ok(());
        }
        // Joined by whatever queued while it waited for the writer.
        take_queued(rx, batch);
        // Jobs whose callers went away are not written (their own fallback was).
        let (waited, gone): (Vec<_>, Vec<_>) = batch.drain(..).partition(Job::waited_for);
        for job in gone {
            self.answer(job, None);
        }
        *batch = waited;
        if batch.is_empty() {
            let _ = self.db.execute_batch("ROLLBACK");
            return Ok(());
        }
        group.queries.fetch_add(1, Ordering::Relaxed);
        group
            .carried
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let Written { written, committed } = write_batch(&self.db, batch);
        // The connection goes back before anyone is answered: the next write need not wait
        // for the answers.
        drop(held);
        let kept = written.iter().filter(|w| **w).count();
        metrics::histogram!("lifeline_log_commit_batch_size").record(kept as f64);
        let committed = match (&self.sync, committed) {
            // Set once the WAL holding the commit is synced: by the sync thread while the
            // next batch begins, if jobs queued meanwhile; else here (nothing to overlap).
            (Some(sync), Ok(())) if kept > 0 => {
                let (pending, committed) = watch::channel(None);
                if rx.is_empty() {
                    sync.sync_here(pending);
                } else {
                    sync.after_commit(pending);
                }
                committed
            }
            // Set before anyone reads it: each waiter finds the outcome at once.
            (_, committed) => watch::channel(Some(committed)).1,
        };
        for (job, written) in batch.drain(..).zip(written) {
            self.answer(job, written.then(|| committed.clone()));
        }
        Ok(())
    }

    /// Tells a job whether its rows were written (and the commit that holds them), and takes
    /// it off the count of those waiting.
    fn answer(&self, mut job: Job, outcome: Option<super::Outcome>) {
        if let Some(group) = self.group.upgrade() {
            group.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(reply) = job.reply().take() {
            let _ = reply.send(outcome);
        }
    }
}

/// Adds what is queued now to `batch`, up to [`PER_BATCH`].
fn take_queued(rx: &mut mpsc::UnboundedReceiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < PER_BATCH {
        match rx.try_recv() {
            Ok(q) => batch.push(q),
            Err(_) => break,
        }
    }
}

/// What a batch wrote: per tool call whether its rows are in the commit, and the commit's
/// outcome.
struct Written {
    written: Vec<bool>,
    committed: Result<(), String>,
}

/// The rest of a transaction begun (`BEGIN IMMEDIATE`): each job under a savepoint of its own
/// (a failure undoes only its rows; it is then written statement by statement, which reports
/// the error exactly), then `COMMIT`. If the commit fails, nothing of it was kept: every job
/// is told so.
fn write_batch(db: &rusqlite::Connection, batch: &[Job]) -> Written {
    let none = |committed| Written {
        written: vec![false; batch.len()],
        committed,
    };
    let mut written = Vec::with_capacity(batch.len());
    for job in batch {
        match write_one(db, job) {
            Ok(w) => written.push(w),
            Err(Undo::Own(e)) => {
                tracing::debug!(error = %e, "a queued tool call is logged on its own");
                written.push(false);
            }
            Err(Undo::Batch(e)) => {
                tracing::warn!(error = %e, "the log writer could not undo a tool call's rows; its batch is rolled back");
                let _ = db.execute_batch("ROLLBACK");
                return none(Ok(()));
            }
        }
    }
    if !written.contains(&true) {
        // Nothing to keep: no commit (and no fsync) for it.
        let _ = db.execute_batch("ROLLBACK");
        return Written {
            written,
            committed: Ok(()),
        };
    }
    match db.execute_batch("COMMIT") {
        Ok(()) => Written {
            written,
            committed: Ok(()),
        },
        Err(e) => {
            // A failed COMMIT leaves the transaction open (SQLITE_BUSY, a full disk): undo it.
            if !db.is_autocommit() {
                let _ = db.execute_batch("ROLLBACK");
            }
            Written {
                written,
                committed: Err(e.to_string()),
            }
        }
    }
}

/// Why a tool call's rows were not written: its own statement failed (undone), or its undo
/// failed too (the batch cannot be trusted).
enum Undo {
    Own(rusqlite::Error),
    Batch(rusqlite::Error),
}

/// A job's rows under a savepoint. A tool call: its log row if it is new and the call's
/// totals allow it, and then its callback request; true when they were written. A call's
/// write: its statements; true when they all ran.
fn write_one(db: &rusqlite::Connection, job: &Job) -> Result<bool, Undo> {
    db.execute_batch("SAVEPOINT whole_write")
        .map_err(Undo::Own)?;
    let done = (|| match job {
        Job::Log(q) => {
            let logged = run(db, INSERT_LOG, &log_values(q)?)? == 1;
            if logged && let Some(cb) = &q.callback {
                run(db, INSERT_CALLBACK, &callback_values(cb, q.log.id)?)?;
            }
            Ok(logged)
        }
        Job::Write(w) => {
            for (i, (sql, values)) in w.statements.iter().enumerate() {
                if run(db, sql, values)? == 0 && i == 0 && w.only_if_new {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    })();
    match done {
        Ok(logged) => {
            db.execute_batch("RELEASE whole_write")
                .map_err(Undo::Batch)?;
            Ok(logged)
        }
        Err(e) => {
            db.execute_batch("ROLLBACK TO whole_write; RELEASE whole_write")
                .map_err(Undo::Batch)?;
            Err(Undo::Own(e))
        }
    }
}

/// Runs a cached statement with its parameters bound by number; the rows it changed.
fn run(db: &rusqlite::Connection, sql: &str, values: &[Value]) -> rusqlite::Result<usize> {
    // Cached: the statements are a handful, and SQLite compiles an insert's triggers with it.
    let mut stmt = db.prepare_cached(sql)?;
    for i in 1..=stmt.parameter_count() {
        stmt.raw_bind_parameter(i, values.get(i - 1).unwrap_or(&Value::Null))?;
    }
    stmt.raw_execute()
}

// Values as sqlx encodes them for SQLite, so that the rows read back the same whichever way
// they were written: a UUID as its 16 bytes, a time as RFC 3339 with as many fractional
// digits as it needs, JSON as its text.

fn uuid(u: uuid::Uuid) -> Value {
    Value::Blob(u.as_bytes().to_vec())
}

fn time(t: DateTime<Utc>) -> Value {
    Value::Text(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn opt_text(s: Option<&str>) -> Value {
    s.map_or(Value::Null, text)
}

fn json(v: &serde_json::Value) -> rusqlite::Result<Value> {
    serde_json::to_string(v)
        .map(Value::Text)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn opt_int(n: Option<i64>) -> Value {
    n.map_or(Value::Null, Value::Integer)
}

/// The log row's values, in the order of [`INSERT_LOG`]'s parameters.
fn log_values(q: &Queued) -> rusqlite::Result<Vec<Value>> {
    let (log, outcome) = (&q.log, q.outcome.as_ref());
    Ok(vec![
        uuid(log.id),
        time(log.created_at),
        text(&log.tenant_id),
        text(log.platform.as_str()),
        text(&log.call_ref),
        log.call_id.map_or(Value::Null, uuid),
        text(&log.invocation_key),
        opt_text(log.invocation_id.as_deref()),
        text(&log.tool_name),
        text(&log.canonical_tool),
        json(&log.tool_parameters)?,
        opt_text(log.callback_number.as_deref()),
        opt_text(log.caller_name.as_deref()),
        opt_text(log.urgency_level.as_deref()),
        opt_text(log.ultravox_call_id.as_deref()),
        opt_text(log.twilio_call_sid.as_deref()),
        json(&log.tool_data)?,
        text(outcome.map_or("pending", |o| o.status())),
        match outcome {
            Some(o) => json(&o.result)?,
            None => Value::Null,
        },
        opt_text(outcome.and_then(|o| o.error_message.as_deref())),
        opt_text(outcome.and_then(|o| o.error_kind)),
        outcome.map_or(Value::Null, |o| Value::Real(o.duration_ms)),
        outcome.map_or(Value::Null, |o| time(o.at)),
        opt_int(q.call_limit),
        opt_int(q.transfer_limit),
    ])
}

/// The callback request's values, in the order of [`INSERT_CALLBACK`]'s parameters.
fn callback_values(
    cb: &crate::store::NewCallbackRequest,
    log_id: uuid::Uuid,
) -> rusqlite::Result<Vec<Value>> {
    Ok(vec![
        uuid(cb.id),
        time(cb.created_at),
        text(&cb.tenant_id),
        cb.call_id.map_or(Value::Null, uuid),
        opt_text(cb.call_sid.as_deref()),
        cb.transfer_attempt_id.map_or(Value::Null, uuid),
        text(cb.reason),
        text(&cb.callback_number),
        opt_text(cb.caller_name.as_deref()),
        opt_text(cb.first_name.as_deref()),
        opt_text(cb.last_name.as_deref()),
        opt_text(cb.pet_name.as_deref()),
        opt_text(cb.species.as_deref()),
        opt_text(cb.breed.as_deref()),
        opt_text(cb.age.as_deref()),
        opt_text(cb.concern_description.as_deref()),
        text(cb.urgency.as_str()),
        opt_text(cb.urgency_reason.as_deref()),
        Value::Integer(i64::from(cb.urgency.rank())),
        json(&cb.metadata)?,
        uuid(log_id),
        Value::Integer(i64::from(cb.text_caller)),
    ])
}

/// `sql` with its `$N` parameters written `?N` (which SQLite binds by number, as sqlx binds
/// `$N`).
fn numbered(sql: &str) -> String {
    sql.replace('$', "?")
}

/// The statements sqlx runs for a call's writes (`impl_store!`), numbered for rusqlite: its
/// start (nothing on a repeat), its app start, its status and the status's event, a timeline
/// event, a running tool call's outcome.
struct CallStatements {
    start: String,
    app_started: String,
    status: String,
    status_event: String,
    event: String,
    finish: String,
}

static CALL_STATEMENTS: std::sync::LazyLock<CallStatements> = std::sync::LazyLock::new(|| {
    use crate::store::common as sql;
    CallStatements {
        start: numbered(concat!(crate::store::common::insert_call!(), " NOTHING")),
        app_started: numbered(sql::MARK_APP_STARTED),
        status: numbered(sql::UPDATE_CALL_STATUS),
        status_event: numbered(sql::INSERT_STATUS_EVENT),
        event: numbered(sql::INSERT_CALL_EVENT),
        finish: numbered(sql::FINISH_INVOCATION),
    }
});

impl Write {
    /// The statements of a call's write, with its values; `reply` hears whether they were
    /// committed.
    pub(super) fn new(
        write: &crate::store::common::CallWrite<'_>,
        reply: tokio::sync::oneshot::Sender<Option<super::Outcome>>,
    ) -> Result<Self, serde_json::Error> {
        use crate::store::common::CallWrite;
        let json = |v: &serde_json::Value| serde_json::to_string(v).map(Value::Text);
        let sql = &*CALL_STATEMENTS;
        let statements = match write {
            CallWrite::Start(c) => vec![(
                sql.start.as_str(),
                vec![
                    uuid(c.id),
                    text(&c.tenant_id),
                    text(c.platform.as_str()),
                    text(&c.call_ref),
                    opt_text(c.from_number.as_deref()),
                    opt_text(c.to_number.as_deref()),
                    text(&c.direction),
                    text(&c.status),
                    opt_text(c.account_sid.as_deref()),
                    opt_text(c.application_sid.as_deref()),
                    time(c.started_at),
                ],
            )],
            CallWrite::AppStarted(call_id, at) => {
                vec![(sql.app_started.as_str(), vec![uuid(*call_id), time(*at)])]
            }
            CallWrite::Status(call_id, u) => {
                let values = vec![
                    uuid(*call_id),
                    text(&u.status),
                    time(u.at),
                    Value::Integer(i64::from(u.ended)),
                    opt_int(u.duration_seconds.map(i64::from)),
                    opt_int(u.sequence),
                    uuid(u.event_id),
                    json(&u.detail)?,
                ];
                vec![
                    (sql.status.as_str(), values.clone()),
                    (sql.status_event.as_str(), values),
                ]
            }
            CallWrite::Event(e) => vec![(
                sql.event.as_str(),
                vec![
                    uuid(e.id),
                    uuid(e.call_id),
                    time(e.at),
                    text(&e.kind),
                    json(&e.detail)?,
                ],
            )],
            CallWrite::Finish(log_id, o) => vec![(
                sql.finish.as_str(),
                vec![
                    uuid(*log_id),
                    text(o.status()),
                    json(&o.result)?,
                    opt_text(o.error_message.as_deref()),
                    opt_text(o.error_kind),
                    Value::Real(o.duration_ms),
                    time(o.at),
                ],
            )],
        };
        Ok(Self {
            statements,
            only_if_new: matches!(write, CallWrite::Start(_)),
            reply: Some(reply),
        })
    }
}
