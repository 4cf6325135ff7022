//! SQLite, the embedded default: WAL with `synchronous=FULL`, one writer connection, and group
//! commit for tool calls' logging transactions (see [`SqliteStore::log_invocation`]), most of
//! them by a thread of their own ([`log_writer`]), whose commits are synced before they are
//! answered by another ([`wal_sync`]).

mod checkpoints;
mod log_writer;
mod wal_sync;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, oneshot, watch};

use crate::store::queue::QueueSignal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The store on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    signal: QueueSignal,
    /// The logging transaction tool calls share (group commit).
    batch: Arc<GroupCommit>,
}

/// The one open logging transaction, if any, that arriving tool calls join.
#[derive(Default)]
struct GroupCommit {
    open: Mutex<Option<Batch>>,
    next_id: AtomicU64,
    /// The thread that logs queued tool calls (see [`SqliteStore::log_queued`]); `None` if it
    /// could not be started (each tool call is then logged statement by statement).
    writer: Option<log_writer::LogWriter>,
    /// Tool calls queued for it and not answered yet.
    waiting: AtomicUsize,
    /// Batches it wrote, and the tool calls they carried.
    queries: AtomicU64,
    carried: AtomicU64,
}

/// A commit's outcome, as every tool call in its batch hears it (`None` until then).
type Outcome = watch::Receiver<Option<Result<(), String>>>;

/// Waits for the commit of a batch: its failure, or its being cut short (the member that was
/// committing it went away mid-commit), is every member's.
async fn committed_by(outcome: &mut Outcome) -> Result<(), StoreError> {
    match outcome.wait_for(Option::is_some).await.as_deref() {
        Ok(Some(Ok(()))) => Ok(()),
        Ok(Some(Err(e))) => Err(StoreError::Unavailable(format!(
            "the shared transaction did not commit: {e}"
        ))),
        Ok(None) | Err(_) => Err(StoreError::Unavailable(
            "the shared transaction's commit was cut short".into(),
        )),
    }
}

/// A tool call waiting to be logged by the log writer's next batch, with the tool calls queued
/// beside it (see [`SqliteStore::log_queued`]).
struct Queued {
    log: crate::store::NewToolCallLog,
    outcome: Option<crate::store::Recorded>,
    callback: Option<crate::store::NewCallbackRequest>,
    /// Logged only while the call's invocations (its totals) are below this.
    call_limit: Option<i64>,
    /// Logged only while the call's transfers (its totals) are below this.
    transfer_limit: Option<i64>,
    /// The commit that holds its rows, once written; `None` when the batch did not write them
    /// (a repeat, a limit the totals do not rule out, an error): the tool call then takes the
    /// statement-by-statement way, which decides and words it exactly.
    /// (`None` once the log writer answered it.)
    reply: Option<oneshot::Sender<Option<Outcome>>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

/// Commits a batch when a tool call that joined it is done with it.
struct CommitOnDrop(Option<(SqliteStore, u64)>);

impl CommitOnDrop {
    async fn now(mut self) {
        // Kept until the commit returns: dropped while it waits for the writer, `Drop` still
        // commits (others may be waiting on this commit alone, as tool calls another turn
        // logged are).
        if let Some((store, id)) = &self.0 {
            store.commit_batch(*id).await;
        }
        self.0 = None;
    }
}

impl Drop for CommitOnDrop {
    /// The tool call went away before its commit: a task commits in its place.
    fn drop(&mut self) {
        if let Some((store, id)) = self.0.take() {
            tokio::spawn(async move { store.commit_batch(id).await });
        }
    }
}

/// An open transaction (`BEGIN IMMEDIATE` on the writer connection) holding the log rows of
/// the tool calls that joined it, each written under its own savepoint.
struct Batch {
    id: u64,
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
    /// Its commit's outcome, for every tool call in it: `None` until then.
    outcome: watch::Sender<Option<Result<(), String>>>,
    /// Tool calls that wrote (or found) their row in it.
    members: u32,
    /// A write of several statements was running under its savepoint (`whole_write`: a log row
    /// with its callback request, a call's status with its event) and did
    /// not come back: what it wrote must be undone before anything else runs in the batch, or
    /// commits with it.
    unfinished: bool,
}

impl Batch {
    /// Undoes what an unfinished log-with-callback statement wrote, if one did not come back.
    async fn undo_unfinished(&mut self) -> Result<(), sqlx::Error> {
        if !self.unfinished {
            return Ok(());
        }
        // The savepoint is gone if the statement got as far as releasing it (its rows are
        // then whole and stay); otherwise this undoes its rows.
        if let Err(e) = sqlx::raw_sql("ROLLBACK TO whole_write; RELEASE whole_write")
            .execute(&mut *self.tx)
            .await
        {
            match &e {
                sqlx::Error::Database(d) if d.message().contains("no such savepoint") => {}
                _ => return Err(e),
            }
        }
        self.unfinished = false;
        Ok(())
    }
}

/// One write's turn on the open batch: it holds the batch (and so the writer connection) until
/// [`GroupTurn::end`], which gives the batch up, commits it unless another member does first,
/// and waits for that commit.
pub(crate) struct GroupTurn<'s> {
    open: tokio::sync::MutexGuard<'s, Option<Batch>>,
    commit: CommitOnDrop,
    committed: Outcome,
}

impl GroupTurn<'_> {
    fn batch(&mut self) -> &mut Batch {
        self.open.as_mut().expect("a turn holds an open batch")
    }

    /// The writer connection, inside the batch's transaction. A single statement is atomic
    /// there (SQLite undoes a failed statement alone); several must be wrapped in a nested
    /// transaction (a savepoint), so that a failure undoes only their own rows.
    pub(crate) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.batch().tx
    }

    /// Applies a call's status and writes its event, both or neither, in one round trip to
    /// sqlx's thread (a savepoint of their own in the shared transaction; undone by the next
    /// turn or the commit if it does not come back whole, as a log row with its callback is).
    pub(crate) async fn record_call_status(
        &mut self,
        call_id: uuid::Uuid,
        u: &crate::store::CallStatusUpdate,
    ) -> Result<(), StoreError> {
        use crate::store::common::{INSERT_STATUS_EVENT, UPDATE_CALL_STATUS};
        let batch = self.batch();
        let sql = format!(
            "SAVEPOINT whole_write; {UPDATE_CALL_STATUS}; {INSERT_STATUS_EVENT}; RELEASE whole_write"
        );
        batch.unfinished = true;
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(call_id)
            .bind(&u.status)
            .bind(u.at)
            .bind(u.ended)
            .bind(u.duration_seconds)
            .bind(u.sequence)
            .bind(u.event_id)
            .bind(sqlx::types::Json(&u.detail))
            .execute(&mut *batch.tx)
            .await;
        match done {
            Ok(_) => {
                batch.unfinished = false;
                Ok(())
            }
            Err(e) => {
                if let Err(undo) = batch.undo_unfinished().await {
                    tracing::warn!(error = %undo, "could not undo a failed status write yet");
                }
                Err(e.into())
            }
        }
    }

    /// Ends the turn with what it did: `done` once the commit holding its rows is done, or the
    /// commit's failure (then nothing it wrote was kept).
    pub(crate) async fn end<T>(mut self, done: Result<T, StoreError>) -> Result<T, StoreError> {
        if done.is_ok() {
            self.batch().members += 1;
        }
        let GroupTurn {
            open,
            commit,
            mut committed,
        } = self;
        drop(open);
        commit.now().await;
        let done = done?;
        committed_by(&mut committed).await?;
        Ok(done)
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Whether a log row and its callback request can be written by one statement (a
    /// data-modifying CTE, so one round trip and one commit) rather than a transaction.
    const ONE_STATEMENT_LOG_WITH_CALLBACK: bool = false;

    /// Opens (creating if the URL says `mode=rwc`) the database file.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, true).await
    }

    /// As [`Self::connect`], with every write taking its group-commit turn and none the log
    /// writer (for tests: the rows either way must be the same).
    #[doc(hidden)]
    pub async fn connect_without_log_writer(url: &str) -> Result<Self, StoreError> {
        Self::open(url, false).await
    }

    async fn open(url: &str, log_writer: bool) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we answer, also in WAL mode.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5))
            // Each tool call of a shared commit writes under a savepoint of its own, and SQLite
            // copies every page a savepoint first changes into a sub-journal, by default a file:
            // 30 writes per tool call, a fifth of the writer's time (perf, 3,000/s offered).
            // Sub-journals only undo a savepoint within an open transaction; durability is the
            // WAL's, so memory does.
            .pragma("temp_store", "memory")
            // The indexes a tool call touches stay in memory (16 MiB; SQLite's default is 2).
            .pragma("cache_size", "-16384");
        // One writer: SQLite has one anyway, and queuing in the pool beats SQLITE_BUSY.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            // A connection to a file does not go stale, and a ping before each use is a hand-off
            // to its thread and back on every write.
            .test_before_acquire(false)
            // Nor need it be recycled. And with neither limit sqlx runs no maintenance task for
            // the pool: that task loops `num_idle` times, and sqlx's count of idle connections
            // can read as `usize::MAX` for a moment while one is released on one thread and
            // taken on another (the log writer's); a test process spun on it for minutes.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            // As the writer's: the tool path reads (a call by its reference, a repeat's row).
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(base.clone().read_only(true).create_if_missing(false));
        Ok(Self {
            reader,
            signal: QueueSignal::default(),
            batch: Arc::new_cyclic(|group| GroupCommit {
                writer: log_writer
                    .then(|| Self::start_log_writer(&writer, &base, url, group.clone()))
                    .flatten(),
                ..GroupCommit::default()
            }),
            writer,
        })
    }

    /// The log writer for a database file: `None` for an in-memory database (a connection of
    /// its own would open another database) or a read-only one, or if it cannot start (each
    /// job is then written statement by statement).
    fn start_log_writer(
        pool: &SqlitePool,
        options: &SqliteConnectOptions,
        url: &str,
        group: std::sync::Weak<GroupCommit>,
    ) -> Option<log_writer::LogWriter> {
        // A read-only store writes nothing; the writer's own connection would.
        if url.contains(":memory:") || url.contains("mode=memory") || url.contains("mode=ro") {
            return None;
        }
        log_writer::LogWriter::start(pool.clone(), options.get_filename(), group)
            .inspect_err(|e| {
                tracing::warn!(error = %e, "could not start SQLite's log writer; tool calls are logged one by one");
            })
            .ok()
    }

    /// Batches the log writer wrote so far, and the jobs they carried (for tests and the
    /// README's figures).
    pub fn queued_logs(&self) -> (u64, u64) {
        (
            self.batch.queries.load(Ordering::Relaxed),
            self.batch.carried.load(Ordering::Relaxed),
        )
    }

    /// WAL checkpoints so far: by the checkpointer thread, and by the log writer itself
    /// between its batches (see `sqlite/checkpoints.rs`); none without a log writer (SQLite's
    /// automatic checkpoints then run as they do on sqlx's connections).
    pub fn checkpoints(&self) -> (u64, u64) {
        self.batch
            .writer
            .as_ref()
            .map_or((0, 0), log_writer::LogWriter::checkpoints)
    }

    /// Syncs of the WAL that made the log writer's commits durable (see `sqlite/wal_sync.rs`);
    /// 0 without a log writer or its sync thread (each commit then syncs inside SQLite).
    pub fn wal_syncs(&self) -> u64 {
        self.batch
            .writer
            .as_ref()
            .map_or(0, log_writer::LogWriter::wal_syncs)
    }

    /// Tool calls queued for the log writer and not answered yet (for tests).
    pub fn queued_waiting(&self) -> usize {
        self.batch.waiting.load(Ordering::Relaxed)
    }

    /// Wakes this process's workers (SQLite has no other processes to wake).
    fn bump_queue(&self) {
        self.signal.bump();
    }

    fn subscribe_queue(&self) -> tokio::sync::watch::Receiver<u64> {
        self.signal.subscribe()
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Logs an invocation with group commit: one fsync for every tool call that arrives while
    /// another's is being written. SQLite has one writer, and with `synchronous=FULL` each
    /// commit is an fsync, so committing tool calls one by one caps them at one per fsync.
    ///
    /// The first tool call opens a transaction (IMMEDIATE: it reads before it writes, and
    /// SQLite fails at once with SQLITE_BUSY rather than wait for a lock a reading transaction
    /// must upgrade; another process on the file holding the write lock for a moment must make
    /// a tool call wait, not fail). Each tool call takes its turn on it (one at a time, so the
    /// per-call count sees every row written before it, committed or in the batch), writes
    /// under a savepoint (its failure undoes only its own rows), and queues again to commit.
    /// The first of them to get its second turn commits the batch, with the rows of everyone
    /// who took a turn meanwhile; every tool call answers only once the commit holding its row
    /// is done, and fails if that commit fails (nothing ran). A repeat finds the original's
    /// row, in the batch or before it, and is answered once that row is committed.
    ///
    /// Most tool calls (those whose limits are plain thresholds) take a faster way first: the
    /// log writer ([`log_writer`]) writes them, with whatever else queued meanwhile, in one
    /// transaction of its own on the same file, one at a time as well. What it does not write
    /// (a repeat, a limit reached, an error) comes here, which words it exactly.
    async fn log_invocation(
        &self,
        log: &crate::store::NewToolCallLog,
        plan: &crate::store::Plan,
        windows: &crate::store::CountWindows,
        check: crate::store::LimitCheck<'_>,
    ) -> Result<(crate::store::Begun, bool), StoreError> {
        if let Some(queued) = Self::queueable(log, plan, windows) {
            let (begun, callback) = (queued.outcome.clone(), queued.callback.is_some());
            if self.log_queued(queued).await? {
                return Ok((begun_with(begun), callback));
            }
        }
        let mut turn = self.group_writer().await?;
        let done = Self::log_in_batch(turn.batch(), log, plan, windows, check).await;
        turn.end(done).await
    }

    /// A tool call that the log writer may log ([`Self::log_queued`]): one whose
    /// limits are plain thresholds the call's totals can clear. `None`: it needs the window
    /// counts or the check, statement by statement.
    fn queueable(
        log: &crate::store::NewToolCallLog,
        plan: &crate::store::Plan,
        windows: &crate::store::CountWindows,
    ) -> Option<Queued> {
        use crate::store::Plan;
        let thresholds = windows.thresholds?;
        // The totals count transfers only: another tool's own limit needs its window counted.
        if thresholds.tool.is_some() && windows.tool != crate::domain::ToolName::Transfer.as_str() {
            return None;
        }
        let (outcome, callback, limits) = match plan {
            // A failure is recorded whatever the counts (as `decide_invocation` does).
            Plan::Fail(outcome) => (Some(outcome.clone()), None, (None, None)),
            Plan::Run => (None, None, (thresholds.call, thresholds.tool)),
            Plan::Complete { outcome, callback } => (
                Some(outcome.clone()),
                callback.as_deref().cloned(),
                (thresholds.call, thresholds.tool),
            ),
        };
        Some(Queued {
            log: log.clone(),
            outcome,
            callback,
            call_limit: limits.0,
            transfer_limit: limits.1,
            reply: None,
        })
    }

    /// Logs a tool call together with every other one queued meanwhile: the log writer
    /// ([`log_writer`]) writes them in one transaction and commits it. True once the commit
    /// that holds its rows is done; false when the batch did not write them (the caller then
    /// logs it statement by statement, which finds the repeat, counts the windows or reports
    /// the error exactly).
    async fn log_queued(&self, mut queued: Queued) -> Result<bool, StoreError> {
        let (reply, written) = oneshot::channel();
        queued.reply = Some(reply);
        self.through_writer(log_writer::Job::Log(Box::new(queued)), written)
            .await
    }

    /// Runs a call's write on the log writer, committed with the tool calls it batches. False
    /// when it did not write it (the caller then takes its group-commit turn, which reports
    /// an error exactly).
    async fn write_through(
        &self,
        write: crate::store::common::CallWrite<'_>,
    ) -> Result<bool, StoreError> {
        let (reply, written) = oneshot::channel();
        match log_writer::Write::new(&write, reply) {
            Ok(w) => {
                self.through_writer(log_writer::Job::Write(w), written)
                    .await
            }
            Err(_) => Ok(false),
        }
    }

    /// Hands a job to the log writer and waits for the commit that holds it: true once it is
    /// done; false when the writer did not write it (or there is none).
    async fn through_writer(
        &self,
        job: log_writer::Job,
        written: oneshot::Receiver<Option<Outcome>>,
    ) -> Result<bool, StoreError> {
        let Some(writer) = &self.batch.writer else {
            return Ok(false);
        };
        self.batch.waiting.fetch_add(1, Ordering::Relaxed);
        if !writer.send(job) {
            self.batch.waiting.fetch_sub(1, Ordering::Relaxed);
            return Ok(false);
        }
        let mut committed = match written.await {
            Ok(Some(committed)) => committed,
            Ok(None) => return Ok(false),
            // The writer went away mid-batch: whether its rows were committed is unknown. The
            // outage its own statement would have met (the resilient store journals it; the
            // replay is idempotent).
            Err(_) => {
                return Err(StoreError::Unavailable(
                    "the batch writing this was cut short".into(),
                ));
            }
        };
        committed_by(&mut committed).await?;
        Ok(true)
    }

    /// A turn on the open group-commit batch (opening one if none is), for one write of the
    /// call path: tool calls' logs, and the call's own rows (its start, status and events), so
    /// that a call's lifecycle shares fsyncs with everyone's tool calls instead of costing one
    /// of its own each. The turn holds the writer until [`GroupTurn::end`]; what it writes is
    /// answered only once the commit holding it is done.
    async fn group_writer(&self) -> Result<GroupTurn<'_>, StoreError> {
        let mut open = self.batch.open.lock().await;
        if open.is_none() {
            let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
            *open = Some(Batch {
                id: self.batch.next_id.fetch_add(1, Ordering::Relaxed),
                tx,
                outcome: watch::channel(None).0,
                members: 0,
                unfinished: false,
            });
        }
        let batch = open.as_mut().expect("a batch is open");
        batch.undo_unfinished().await?;
        // Whatever happens to this turn, the batch gets committed (by it, or by the task
        // this starts if it is dropped half-way): the others' rows are in it.
        let commit = CommitOnDrop(Some((self.clone(), batch.id)));
        let committed = batch.outcome.subscribe();
        Ok(GroupTurn {
            open,
            commit,
            committed,
        })
    }

    /// One tool call's turn on the open batch. Its reads (a repeat? the call's counts) write
    /// nothing; its writes are one statement (a log row alone, atomic by itself) or one
    /// round trip under a savepoint (a log row with its callback request), so a failure undoes
    /// only its own rows. Each statement is a hand-off to sqlx's SQLite thread and back, which
    /// was most of the writer's time (`perf`: waking that thread and the runtime's); a tool call
    /// takes two instead of five.
    async fn log_in_batch(
        batch: &mut Batch,
        log: &crate::store::NewToolCallLog,
        plan: &crate::store::Plan,
        windows: &crate::store::CountWindows,
        check: crate::store::LimitCheck<'_>,
    ) -> Result<(crate::store::Begun, bool), StoreError> {
        let decided = decide_invocation(&mut batch.tx, log, plan, windows, check).await?;
        if let Some((outcome, callback)) = decided
            && Self::write_in_batch(batch, log, outcome.as_ref(), callback).await?
        {
            return Ok((begun_with(outcome), callback.is_some()));
        }
        // Logged before, perhaps in this very batch: answered once it is committed.
        let row = find_log(
            &mut batch.tx,
            log.platform.as_str(),
            &log.call_ref,
            &log.invocation_key,
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(log.invocation_key.clone()))?;
        Ok((crate::store::Begun::Duplicate(Box::new(row)), false))
    }

    /// Writes a tool call's log row, and its callback request if it has one; false when the
    /// row was there already (nothing written).
    async fn write_in_batch(
        batch: &mut Batch,
        log: &crate::store::NewToolCallLog,
        outcome: Option<&crate::store::Recorded>,
        callback: Option<&crate::store::NewCallbackRequest>,
    ) -> Result<bool, StoreError> {
        let Some(cb) = callback else {
            let done = bind_log(sqlx::query(crate::store::common::INSERT_LOG), log, outcome)
                .execute(&mut *batch.tx)
                .await?;
            return Ok(done.rows_affected() == 1);
        };
        let q = bind_log(
            sqlx::query(crate::store::common::SQLITE_LOG_WITH_CALLBACK),
            log,
            outcome,
        );
        // Until it comes back whole, its savepoint may be open with part of its rows (if this
        // future is dropped, sqlx's thread stops between statements): the next turn, or the
        // commit, undoes them first.
        batch.unfinished = true;
        // fetch_all, not fetch_one: sqlx stops a query's statements after the rows it was asked
        // for, and the savepoint's release comes after the row.
        match bind_callback(q, cb)
            .bind(cb.text_caller)
            .fetch_all(&mut *batch.tx)
            .await
        {
            Ok(rows) => {
                batch.unfinished = false;
                let written: i64 = match rows.first() {
                    Some(row) => sqlx::Row::try_get(row, 0)?,
                    None => 0,
                };
                Ok(written == 1)
            }
            Err(e) => {
                // The statement's own error is the answer; if its rows cannot be undone now,
                // the mark stays and the next turn or the commit tries again (and fails the
                // batch rather than commit them).
                if let Err(undo) = batch.undo_unfinished().await {
                    tracing::warn!(error = %undo, "could not undo a failed log write yet");
                }
                Err(e.into())
            }
        }
    }

    /// Commits batch `id` unless another of its tool calls did already.
    async fn commit_batch(&self, id: u64) {
        // Behind every tool call that queued for a turn meanwhile: their rows join the batch.
        let mut open = self.batch.open.lock().await;
        if open.as_ref().is_none_or(|b| b.id != id) {
            return;
        }
        let mut batch = open.take().expect("checked above");
        metrics::histogram!("lifeline_log_commit_batch_size").record(f64::from(batch.members));
        let outcome = match batch.undo_unfinished().await {
            Ok(()) => batch.tx.commit().await.map_err(|e| e.to_string()),
            // Nothing of this batch may commit with a half-written tool call in it.
            Err(e) => Err(format!("could not undo an unfinished write: {e}")),
        };
        // Unheard only if every tool call in it went away.
        let _ = batch.outcome.send(Some(outcome));
    }

    /// The migrations this build embeds for the engine.
    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }
}

crate::store::common::impl_store!(SqliteStore, sqlx::Sqlite, sqlx::SqliteConnection);
crate::store::queue::impl_delivery_queue!(SqliteStore, sqlx::Sqlite, "");
crate::store::admin::impl_admin_store!(SqliteStore);
crate::store::paging::impl_paging_store!(SqliteStore, sqlx::Sqlite);
crate::store::twilio_calls::impl_twilio_call_store!(SqliteStore);
crate::store::retention::impl_retention_store!(SqliteStore, sqlx::Sqlite, "BEGIN IMMEDIATE", "");
