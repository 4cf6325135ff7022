//! PostgreSQL, the production engine: several lifeline instances may share one database.

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;

use crate::store::queue::QueueSignal;

/// The channel the queue triggers `NOTIFY` (see `migrations/postgres/0003_delivery.sql`).
const QUEUE_CHANNEL: &str = "lifeline_queue";

/// The session setting that turns off the queue triggers' `NOTIFY` for the sessions that
/// announce their queued work themselves (see `migrations/postgres/0007_notify_after_commit.sql`).
const QUEUE_NOTIFY_SETTING: &str = "lifeline.queue_notify";

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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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
        let options = Self::options(url)?;
        let announcing = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options.clone());
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
        Ok(Self {
            pool,
            signal: QueueSignal::default(),
            listening: Arc::new(Once::new()),
            options,
            announcer: Some(Arc::new(kick)),
        })
    }

    /// `synchronous_commit=on`, whatever the server default: a logged tool call must survive a
    /// crash of the database server.
    fn options(url: &str) -> Result<PgConnectOptions, StoreError> {
        Ok(url
            .parse::<PgConnectOptions>()?
            .application_name("lifeline")
            .options([("synchronous_commit", "on")]))
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

    /// Logs an invocation in a transaction of its own holding the call's advisory lock (sent
    /// with BEGIN: no extra round trip), so one call's invocations are logged one at a time
    /// across every instance; concurrent tool calls of different calls share WAL flushes
    /// (PostgreSQL's own group commit). Returns what it begins with, and whether it queued a
    /// callback request.
    async fn log_invocation(
        &self,
        log: &crate::store::NewToolCallLog,
        plan: &crate::store::Plan,
        windows: &crate::store::CountWindows,
        check: crate::store::LimitCheck<'_>,
    ) -> Result<(crate::store::Begun, bool), StoreError> {
        let key = crate::store::call_lock_key(log.platform.as_str(), &log.call_ref);
        // The key is an integer we computed, so formatting it into the SQL is safe.
        let mut tx = self
            .pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}, {key})",
                crate::store::CALL_LOCK_NAMESPACE
            )))
            .await?;
        match log_in_transaction(&mut tx, log, plan, windows, check).await? {
            Some(done) => {
                tx.commit().await?;
                Ok(done)
            }
            None => {
                tx.rollback().await?;
                // Logged before: the recorded row.
                let mut conn = self.pool.acquire().await?;
                let row = find_log(
                    &mut conn,
                    log.platform.as_str(),
                    &log.call_ref,
                    &log.invocation_key,
                )
                .await?
                .ok_or_else(|| StoreError::NotFound(log.invocation_key.clone()))?;
                Ok((crate::store::Begun::Duplicate(Box::new(row)), false))
            }
        }
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
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

/// How long queued work waits to be announced to other processes, gathering the work queued
/// meanwhile into the same announcement.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(10);

/// Sends `NOTIFY lifeline_queue` after kicks, outside any transaction that writes (so it
/// commits without a WAL flush and holds the notification lock only for a moment): one
/// [`ANNOUNCE_EVERY`] after a kick, covering every kick until it is sent. Ends when the store
/// is gone.
async fn announce_queued_work(pool: PgPool, mut kicked: watch::Receiver<()>) {
    while kicked.changed().await.is_ok() {
        // At most one announcement per interval: at hundreds of tool calls a second, one per
        // commit would be a transaction per tool call for nothing (one wakes every worker).
        tokio::time::sleep(ANNOUNCE_EVERY).await;
        kicked.borrow_and_update();
        if let Err(e) = sqlx::query("SELECT pg_notify($1, 'callback_requests')")
            .bind(QUEUE_CHANNEL)
            .execute(&pool)
            .await
        {
            // The work is committed; other processes' workers find it by polling.
            tracing::warn!(error = %e, "could not announce queued work to other processes");
        }
    }
    pool.close().await;
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
