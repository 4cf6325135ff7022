//! PostgreSQL, the production engine: several lifeline instances may share one database.

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use crate::store::queue::QueueSignal;

mod log_batch;

/// The channel the queue triggers `NOTIFY` (see `migrations/postgres/0003_delivery.sql`).
const QUEUE_CHANNEL: &str = "lifeline_queue";
/// How long the server lets one of our sessions sit idle inside a transaction before ending it
/// (see [`PgStore::options`]). Ours never wait between statements on anything but the network.
const IDLE_IN_TRANSACTION: &str = "5s";

/// The session setting that turns off the queue triggers' `NOTIFY` for the sessions that
/// announce their queued work themselves (see `migrations/postgres/0007_notify_after_commit.sql`).
const QUEUE_NOTIFY_SETTING: &str = "lifeline.queue_notify";

/// No TLS to a server on this host unless the URL or `PGSSLMODE` asks for it. sqlx's default
/// (`prefer`) encrypts whenever the server offers it, and on loopback that buys nothing (the
/// bytes never leave the kernel) while costing a third of the call path's CPU: every statement
/// and its reply go through rustls' buffers (measured by `perf` at 800 tool calls/s). A URL
/// that names `sslmode` (e.g. `?sslmode=require`) keeps exactly what it names.
fn plain_on_loopback(
    url: &str,
    env_names_mode: bool,
    options: PgConnectOptions,
) -> PgConnectOptions {
    let names_mode = url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            key.eq_ignore_ascii_case("sslmode") || key.eq_ignore_ascii_case("ssl-mode")
        })
    });
    if names_mode || env_names_mode {
        return options;
    }
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let local = host == "localhost"
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if local {
        options.ssl_mode(sqlx::postgres::PgSslMode::Disable)
    } else {
        options
    }
}

/// One tool call's log in one statement (see `migrations/postgres/0010_log_invocation_function.sql`,
/// `0013_call_invocation_totals.sql` and `0014_statement_setup_once.sql`, which gave it a
/// composite result of the same columns): the lock, the windows and limits ($1–$7), the log row
/// ($8–$30).
const LOG_INVOCATION: &str = "SELECT outcome, call_count, tool_count FROM lifeline_log_invocation(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, \
     $21, $22, $23, $24, $25, $26, $27, $28, $29, $30)";

/// The same with the log row's callback request ($31–$51).
const LOG_INVOCATION_WITH_CALLBACK: &str = "SELECT outcome, call_count, tool_count FROM \
     lifeline_log_invocation($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, \
     $34, $35, $36, $37, $38, $39, $40, $41, $42, $43, $44, $45, $46, $47, $48, $49, $50, $51)";

/// The store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    signal: QueueSignal,
    listening: Arc<Once>,
    /// How its sessions connect, before the per-pool notification setting.
    options: PgConnectOptions,
    /// Set on a store whose sessions skip the triggers' `NOTIFY`: kicks the task that
    /// announces queued work to other processes after the commit.
    announcer: Option<Arc<watch::Sender<()>>>,
    /// On the call path's store: the lanes that log waiting tool calls together (see
    /// [`log_batch`]).
    batcher: Option<log_batch::LogBatcher>,
}

/// A pooled connection that is closed, not returned to the pool, unless its user finished
/// with it. A tool call's write whose caller gives up (its budget ran out) is dropped wherever
/// it is; dropped after `BEGIN; SELECT pg_advisory_xact_lock(…)` went out and before sqlx read
/// the answer, it left a connection sqlx believed was not in a transaction, which the pool kept,
/// idle in the transaction and holding the call's lock: every later tool call of the call
/// waited for it. Closed, the server ends the session and its lock goes with it.
struct CloseUnlessFinished {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
    finished: bool,
}

impl Drop for CloseUnlessFinished {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A write's connection on PostgreSQL: the counterpart of SQLite's group-commit turn. A turn
/// dropped inside its transaction (a call's status with its event, given up after its `BEGIN`
/// went out) closes its connection: otherwise the pool kept a connection still in that
/// transaction, and the next write on it (a call's start) was answered and never committed.
/// Single statements need not: sqlx reads what a dropped one left before the next.
pub(crate) struct PgTurn(CloseUnlessFinished);

impl PgTurn {
    /// The pooled connection, in autocommit.
    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.0.conn
    }

    /// Applies a call's status and writes its event, in a transaction: both or neither.
    pub(crate) async fn record_call_status(
        &mut self,
        call_id: uuid::Uuid,
        u: &crate::store::CallStatusUpdate,
    ) -> Result<(), StoreError> {
        self.0.finished = false;
        let done = self.status_in_transaction(call_id, u).await;
        // Committed or rolled back (sqlx rolls back a dropped transaction before the
        // connection's next use): only a write given up before this point is unknown.
        self.0.finished = true;
        done
    }

    async fn status_in_transaction(
        &mut self,
        call_id: uuid::Uuid,
        u: &crate::store::CallStatusUpdate,
    ) -> Result<(), StoreError> {
        let mut tx = sqlx::Connection::begin(self.conn()).await?;
        sqlx::query(crate::store::common::UPDATE_CALL_STATUS)
            .bind(call_id)
            .bind(&u.status)
            .bind(u.at)
            .bind(u.ended)
            .bind(u.duration_seconds)
            .bind(u.sequence)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO call_events (id, call_id, at, kind, detail) \
             VALUES ($1, $2, $3, 'status', $4)",
        )
        .bind(u.event_id)
        .bind(call_id)
        .bind(u.at)
        .bind(sqlx::types::Json(&u.detail))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What the write did (its statement has committed already, or failed whole).
    pub(crate) async fn end<T>(self, done: Result<T, StoreError>) -> Result<T, StoreError> {
        done
    }
}

impl PgStore {
    /// Whether a log row and its callback request can be written by one statement (a
    /// data-modifying CTE, so one round trip and one commit) rather than a transaction.
    const ONE_STATEMENT_LOG_WITH_CALLBACK: bool = true;

    /// Connects with `synchronous_commit=on`, whatever the server default: a logged tool call
    /// must survive a crash of the database server.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, 16).await
    }

    /// Connects with a pool of at most `max_connections`.
    pub async fn connect_with_pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = Self::options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .connect_with(options.clone())
            .await?;
        Ok(Self {
            pool,
            signal: QueueSignal::default(),
            listening: Arc::new(Once::new()),
            options,
            announcer: None,
            batcher: None,
        })
    }

    /// A store whose connections are opened on first use: for a process that must start while
    /// the database is unreachable (its journal holds records to replay).
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = Self::options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            signal: QueueSignal::default(),
            listening: Arc::new(Once::new()),
            options,
            announcer: None,
            batcher: None,
        })
    }

    /// Connects the pool of a call path (tool calls, webhooks): as [`Self::connect_with_pool`],
    /// but its transactions queue no notification. A transaction that does takes a
    /// database-wide lock from its commit through its WAL flush, so concurrent tool calls would
    /// commit one fsync at a time instead of sharing flushes. Queued work is announced instead
    /// after the commit, by one background session, coalesced: however many commits queue work
    /// while a `NOTIFY` is on its way, one more follows it. This process's own workers are
    /// woken directly, as before; a process that dies between a commit and its announcement
    /// leaves the work to the other workers' polling (`worker.poll_interval_ms`).
    pub async fn connect_call_path(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_call_path_announcing_to(url, max_connections, url).await
    }

    /// As [`Self::connect_call_path`], with the announcements of queued work sent through
    /// `announce_url` (for tests: a path to the same database that a test can break alone).
    #[doc(hidden)]
    pub async fn connect_call_path_announcing_to(
        url: &str,
        max_connections: u32,
        announce_url: &str,
    ) -> Result<Self, StoreError> {
        let options = Self::options(url)?;
        let announcing = Self::options(announce_url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .connect_with(
                options
                    .clone()
                    .options([(QUEUE_NOTIFY_SETTING, "after_commit")]),
            )
            .await?;
        let (kick, kicked) = watch::channel(());
        tokio::spawn(announce_queued_work(announcing, kicked));
        // At most 4 log statements at once, each for as many tool calls as wait (fewer lanes
        // make larger batches: less database work per tool call under load), and at most half
        // the pool: each lane keeps its connection while tool calls keep coming, and the rest
        // serves the call path's other writes and reads. A pool of one is one lane that gives
        // its connection back after each statement.
        let lanes = (max_connections as usize / 2).clamp(1, 4);
        let hold = max_connections as usize > lanes;
        let batcher = Some(log_batch::LogBatcher::start(pool.clone(), lanes, hold));
        Ok(Self {
            pool,
            signal: QueueSignal::default(),
            listening: Arc::new(Once::new()),
            options,
            announcer: Some(Arc::new(kick)),
            batcher,
        })
    }

    /// `synchronous_commit=on`, whatever the server default: a logged tool call must survive a
    /// crash of the database server. TLS as the URL (or `PGSSLMODE`) asks; when neither says,
    /// none to a server on this host (see [`plain_on_loopback`]).
    ///
    /// `idle_in_transaction_session_timeout`: the server ends a session whose transaction sits
    /// idle for [`IDLE_IN_TRANSACTION`]. None of ours waits on anything but the database, but
    /// one whose caller gave up at the wrong instant can: a future dropped after its `BEGIN`
    /// went out and before sqlx read the answer leaves a connection sqlx believes is not in a
    /// transaction, and the pool keeps it. The tool call's logging transaction, which takes the
    /// call's lock with its `BEGIN`, closes its connection instead ([`CloseUnlessFinished`]);
    /// this bounds what any other transaction left that way holds (before either, a call's lock
    /// was held until the pool retired the connection: sqlx's idle timeout, 10 minutes).
    fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
        let options = url
            .parse::<PgConnectOptions>()?
            .application_name("lifeline")
            .options([
                ("synchronous_commit", "on"),
                ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION),
            ]);
        Ok(plain_on_loopback(
            url,
            std::env::var_os("PGSSLMODE").is_some(),
            options,
        ))
    }

    /// A store on the same database with a pool of its own of at most `max_connections`, for
    /// the delivery worker: neither pool can take the other's connections, so tool calls never
    /// wait for deliveries and deliveries are not starved by a busy call path. The queue signal
    /// (and its one `LISTEN` task) is shared: a commit on either wakes this process's workers
    /// at once.
    /// Its sessions notify from the queue triggers, as every store's but the call path's
    /// (they are few, and a worker process may stop right after a commit).
    pub async fn with_own_pool(&self, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false)
            .before_acquire(ping_if_idle)
            .connect_with(self.options.clone())
            .await?;
        Ok(Self {
            pool,
            signal: self.signal.clone(),
            listening: self.listening.clone(),
            options: self.options.clone(),
            announcer: None,
            batcher: None,
        })
    }

    /// Work was queued by a commit: wakes this process's workers, and those of other
    /// processes when the commit itself did not notify.
    fn bump_queue(&self) {
        self.signal.bump();
        if let Some(announcer) = &self.announcer {
            announcer.send_replace(());
        }
    }

    /// Subscribes to the queue signal; the first subscriber starts the `LISTEN` task that
    /// forwards other processes' notifications into it.
    fn subscribe_queue(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.signal.subscribe();
        self.listening.call_once(|| {
            tokio::spawn(listen_for_work(self.options.clone(), self.signal.clone()));
        });
        receiver
    }

    /// On the call path's store: (statements run, tool calls logged by them) by the lanes that
    /// log waiting tool calls together; `None` on other stores.
    pub fn log_batches(&self) -> Option<(u64, u64)> {
        self.batcher.as_ref().map(log_batch::LogBatcher::counts)
    }

    /// On the call path's store: the shared statements the database refused, whose tool calls
    /// were then logged one by one (for tests).
    pub fn log_batches_refused(&self) -> Option<u64> {
        self.batcher.as_ref().map(log_batch::LogBatcher::refused)
    }

    /// On the call path's store: the log statements run on the connection their lane kept from
    /// its statement before (for tests).
    pub fn log_batches_on_held(&self) -> Option<u64> {
        self.batcher.as_ref().map(log_batch::LogBatcher::on_held)
    }

    /// On the call path's store: the tool calls waiting for a lane now (for tests).
    pub fn log_batch_waiting(&self) -> Option<u64> {
        self.batcher.as_ref().map(log_batch::LogBatcher::waiting)
    }

    /// The pool, for tests and tools that need raw access.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    /// PostgreSQL has no faster way for a call's writes than [`Self::group_writer`]'s.
    async fn write_through(
        &self,
        _write: crate::store::common::CallWrite<'_>,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// A connection for one of the call path's writes, in autocommit: PostgreSQL shares WAL
    /// flushes between concurrent commits by itself (SQLite's store batches them instead).
    async fn group_writer(&self) -> Result<PgTurn, StoreError> {
        Ok(PgTurn(CloseUnlessFinished {
            conn: self.pool.acquire().await?,
            // Nothing to undo until a transaction begins.
            finished: true,
        }))
    }

    /// Logs an invocation. With the limits as plain thresholds ([`CountWindows::thresholds`],
    /// as the tool pipeline gives them) this is one round trip: the stored function
    /// `lifeline_log_invocation` (migration `0010`) takes the call's advisory lock, checks for a
    /// repeat, counts the windows and writes the rows in the one implicit transaction of its
    /// statement, answered after the commit. Otherwise, and to record a refusal, a transaction
    /// does the same work statement by statement. Either way one call's invocations are logged
    /// one at a time across every instance, and concurrent tool calls of different calls share
    /// WAL flushes (PostgreSQL's own group commit). Returns what it begins with, and whether it
    /// queued a callback request.
    ///
    /// [`CountWindows::thresholds`]: crate::store::CountWindows::thresholds
    async fn log_invocation(
        &self,
        log: &crate::store::NewToolCallLog,
        plan: &crate::store::Plan,
        windows: &crate::store::CountWindows,
        check: crate::store::LimitCheck<'_>,
    ) -> Result<(crate::store::Begun, bool), StoreError> {
        use crate::store::{Begun, Plan, Recorded, WindowCounts};
        // The paths other than the lane's are boxed: inline, their futures (a transaction's
        // statements) made every tool call's future some 17 KB, allocated and copied per call.
        let Some(thresholds) = windows.thresholds else {
            return Box::pin(self.log_in_transaction(log, plan, windows, check)).await;
        };
        let (outcome, callback, limits) = match plan {
            Plan::Fail(outcome) => (Some(outcome), None, (None, None)),
            Plan::Run => (None, None, (thresholds.call, thresholds.tool)),
            Plan::Complete { outcome, callback } => (
                Some(outcome),
                callback.as_deref(),
                (thresholds.call, thresholds.tool),
            ),
        };
        let key = crate::store::call_lock_key(log.platform.as_str(), &log.call_ref);
        let entry = log_batch::Entry {
            lock_key: key,
            call_since: windows.call_since,
            window_tool: windows.tool.clone(),
            tool_since: windows.tool_since,
            call_limit: limits.0,
            tool_limit: limits.1,
            log: log.clone(),
            outcome: outcome.cloned(),
            callback: callback.cloned(),
        };
        // The call path's store shares statements among the tool calls waiting at once.
        let (found, call, tool) = match &self.batcher {
            Some(batcher) => batcher.log(entry).await?,
            None => Box::pin(log_batch::alone(&self.pool, &entry)).await?,
        };
        match found.as_str() {
            "queued" | "logged" => {
                let begun = match outcome {
                    None => Begun::Running,
                    Some(o) => Begun::Recorded(o.clone()),
                };
                Ok((begun, found == "queued"))
            }
            "duplicate" => Ok((Box::pin(self.logged_before(log)).await?, false)),
            // Over a limit: nothing was written. The refusal is recorded as the row's outcome,
            // without its callback request, as the transaction below would have.
            _ => match check(&WindowCounts { call, tool }) {
                Some(err) => {
                    let refusal = Plan::Fail(Recorded::of(&Err(err), log.created_at, 0.0));
                    Box::pin(self.log_in_transaction(
                        log,
                        &refusal,
                        windows,
                        &|_: &WindowCounts| None,
                    ))
                    .await
                }
                // The check disagrees with its thresholds: it decides.
                None => Box::pin(self.log_in_transaction(log, plan, windows, check)).await,
            },
        }
    }

    /// [`Self::log_invocation`] as a transaction holding the call's advisory lock (sent with
    /// BEGIN: no extra round trip), the limits decided by `check` from the counts.
    async fn log_in_transaction(
        &self,
        log: &crate::store::NewToolCallLog,
        plan: &crate::store::Plan,
        windows: &crate::store::CountWindows,
        check: crate::store::LimitCheck<'_>,
    ) -> Result<(crate::store::Begun, bool), StoreError> {
        let key = crate::store::call_lock_key(log.platform.as_str(), &log.call_ref);
        let mut conn = CloseUnlessFinished {
            conn: self.pool.acquire().await?,
            finished: false,
        };
        // The key is an integer we computed, so formatting it into the SQL is safe.
        let mut tx = sqlx::Connection::begin_with(
            &mut *conn.conn,
            sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}, {key})",
                crate::store::CALL_LOCK_NAMESPACE
            )),
        )
        .await?;
        let logged = match log_in_transaction(&mut tx, log, plan, windows, check).await? {
            Some(done) => {
                tx.commit().await?;
                Some(done)
            }
            None => {
                tx.rollback().await?;
                None
            }
        };
        conn.finished = true;
        drop(conn);
        match logged {
            Some(done) => Ok(done),
            None => Ok((self.logged_before(log).await?, false)),
        }
    }

    /// The recorded row of an invocation logged before.
    async fn logged_before(
        &self,
        log: &crate::store::NewToolCallLog,
    ) -> Result<crate::store::Begun, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let row = find_log(
            &mut conn,
            log.platform.as_str(),
            &log.call_ref,
            &log.invocation_key,
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(log.invocation_key.clone()))?;
        Ok(crate::store::Begun::Duplicate(Box::new(row)))
    }

    /// The migrations this build embeds for the engine.
    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    async fn run_migrations(&self) -> Result<(), StoreError> {
        // sqlx takes an advisory lock, so instances starting together migrate once.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

crate::store::common::impl_store!(PgStore, sqlx::Postgres, sqlx::PgConnection);
crate::store::queue::impl_delivery_queue!(PgStore, sqlx::Postgres, "FOR UPDATE SKIP LOCKED");
crate::store::admin::impl_admin_store!(PgStore);
crate::store::paging::impl_paging_store!(PgStore, sqlx::Postgres);
crate::store::twilio_calls::impl_twilio_call_store!(PgStore);
crate::store::retention::impl_retention_store!(
    PgStore,
    sqlx::Postgres,
    "BEGIN",
    "FOR UPDATE SKIP LOCKED"
);

/// A connection that sat idle is checked (one round trip) before it is handed out: the server
/// may have closed it meanwhile (a restart, an idle timeout). One that was in use a moment ago
/// is not: sqlx's default check on every acquire cost a round trip per tool call, and sqlx
/// checks every connection as it returns to the pool anyway.
fn ping_if_idle(
    conn: &mut sqlx::PgConnection,
    meta: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    use sqlx::Connection;
    Box::pin(async move {
        if meta.idle_for >= IDLE_CHECK_AFTER {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// How long a pooled connection may sit idle before it is checked on acquire.
pub(super) const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long queued work waits to be announced to other processes, gathering the work queued
/// meanwhile into the same announcement.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(10);

/// How long the announcing connection is kept without an announcement: as long as sqlx's
/// pools keep an idle connection (their default `idle_timeout`), so that a quiet clinic's
/// occasional announcement does not open a connection (a server process) each time.
const ANNOUNCE_IDLE: Duration = Duration::from_secs(600);

/// How long an announcement (its connection included) may take before it is given up and its
/// connection closed: a trivial statement, so only a broken path takes this long.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends `NOTIFY lifeline_queue` after kicks, outside any transaction that writes (so it
/// commits without a WAL flush and holds the notification lock only for a moment): one
/// [`ANNOUNCE_EVERY`] after a kick, covering every kick until it is sent. Ends when the store
/// is gone.
///
/// On a connection of its own, not a pool's, kept between announcements and closed after
/// [`ANNOUNCE_IDLE`] without one: under load an announcement goes every
/// [`ANNOUNCE_EVERY`], and taken from a pool each time it was three round trips, each waking
/// both processes (the pool's test before handing it out, the `NOTIFY`, and sqlx's ping of
/// every connection given back): about a tenth of the server's CPU at 1,000 tool calls/s.
/// Each announcement is bounded by [`ANNOUNCE_TIMEOUT`]: a connection that fails or hangs
/// (a restart, a reset, a path that black-holes) is closed at once, and the announcement goes
/// once more on a new connection, so that none is lost to a stale connection nor held up by
/// one (a pool's check of a connection given back waits on a black hole until TCP gives up).
/// So a kept connection needs no check before it is used again.
async fn announce_queued_work(options: PgConnectOptions, mut kicked: watch::Receiver<()>) {
    let mut held: Option<sqlx::PgConnection> = None;
    loop {
        let kick = match held {
            Some(_) => match tokio::time::timeout(ANNOUNCE_IDLE, kicked.changed()).await {
                Ok(kick) => kick,
                Err(_) => {
                    close(held.take()).await;
                    continue;
                }
            },
            None => kicked.changed().await,
        };
        if kick.is_err() {
            break;
        }
        // At most one announcement per interval: at hundreds of tool calls a second, one per
        // commit would be a transaction per tool call for nothing (one wakes every worker).
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        kicked.borrow_and_update();
        let was_held = held.is_some();
        let mut announced = announce(&options, &mut held).await;
        if announced.is_err() && was_held {
            // The kept connection failed (its server restarted, the network cut or lost it):
            // once more, on a new one.
            announced = announce(&options, &mut held).await;
        }
        if let Err(e) = announced {
            // The work is committed; other processes' workers find it by polling.
            tracing::warn!(error = %e, "could not announce queued work to other processes");
        }
    }
    close(held).await;
}

/// One `NOTIFY lifeline_queue`, on the kept connection or a new one (then kept), within
/// [`ANNOUNCE_TIMEOUT`]. A connection that failed or timed out is dropped (its socket closed,
/// nothing waited for).
async fn announce(
    options: &PgConnectOptions,
    held: &mut Option<sqlx::PgConnection>,
) -> Result<(), StoreError> {
    use sqlx::Connection;
    let sent = tokio::time::timeout(ANNOUNCE_TIMEOUT, async {
        let conn = match held {
            Some(conn) => conn,
            None => held.insert(sqlx::PgConnection::connect_with(options).await?),
        };
        sqlx::query("SELECT pg_notify($1, 'callback_requests')")
            .bind(QUEUE_CHANNEL)
            .execute(&mut *conn)
            .await
            .map(drop)
    })
    .await;
    match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            *held = None;
            Err(e.into())
        }
        Err(_) => {
            *held = None;
            Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                ANNOUNCE_TIMEOUT.as_millis()
            )))
        }
    }
}

/// Closes an announcing connection politely, waiting at most [`ANNOUNCE_TIMEOUT`].
async fn close(conn: Option<sqlx::PgConnection>) {
    use sqlx::Connection;
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(ANNOUNCE_TIMEOUT, conn.close()).await;
    }
}

/// Forwards `NOTIFY lifeline_queue` to `signal` for as long as the process runs, reconnecting
/// after errors. A (re)connection bumps the signal too: notifications sent while the listener
/// was away are lost, so workers look for work themselves.
async fn listen_for_work(options: PgConnectOptions, signal: QueueSignal) {
    // The listener holds its connection for good: give it its own, outside the pool that
    // logs tool calls and records deliveries.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    let mut delay = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(QUEUE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match listener {
            Ok(mut listener) => {
                delay = Duration::from_millis(200);
                signal.bump();
                loop {
                    // `try_recv` yields None when the connection was lost (and re-LISTENs on
                    // the next call): bump, since a notification may have been missed.
                    match listener.try_recv().await {
                        Ok(Some(_)) => signal.bump(),
                        Ok(None) => {
                            tracing::warn!("queue listener reconnected");
                            signal.bump();
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "queue listener lost its connection");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue listener cannot connect; polling covers it");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::{PgConnectOptions, PgSslMode};

    use super::plain_on_loopback;

    fn mode(url: &str, env: bool) -> PgSslMode {
        let options: PgConnectOptions = url.parse().expect("url");
        plain_on_loopback(url, env, options).get_ssl_mode()
    }

    #[test]
    fn loopback_without_a_named_mode_connects_plain() {
        for url in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
            "postgres://u@127.0.0.1/db?application_name=x",
        ] {
            assert!(matches!(mode(url, false), PgSslMode::Disable), "{url}");
        }
    }

    #[test]
    fn a_named_mode_or_a_remote_host_keeps_what_sqlx_would_do() {
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require", false),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?ssl-mode=verify-full", false),
            PgSslMode::VerifyFull
        ));
        // PGSSLMODE set: sqlx read it; nothing is overridden.
        assert!(!matches!(
            mode("postgres://u@127.0.0.1/db", true),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@db.example.com/db", false),
            PgSslMode::Prefer
        ));
    }
}
