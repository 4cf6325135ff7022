//! PostgreSQL, the production engine: several lifeline instances may share one database.

use std::sync::{Arc, Once};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::store::queue::QueueSignal;

/// The channel the queue triggers `NOTIFY` (see `migrations/postgres/0003_delivery.sql`).
const QUEUE_CHANNEL: &str = "lifeline_queue";

/// The store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    signal: QueueSignal,
    listening: Arc<Once>,
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
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .application_name("lifeline")
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            signal: QueueSignal::default(),
            listening: Arc::new(Once::new()),
        })
    }

    fn bump_queue(&self) {
        self.signal.bump();
    }

    /// Subscribes to the queue signal; the first subscriber starts the `LISTEN` task that
    /// forwards other processes' notifications into it.
    fn subscribe_queue(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.signal.subscribe();
        self.listening.call_once(|| {
            tokio::spawn(listen_for_work(self.pool.clone(), self.signal.clone()));
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

    /// A transaction holding the call's advisory lock (sent with BEGIN: no extra round trip),
    /// so one call's invocations are logged one at a time across every instance.
    async fn begin_for_call(
        &self,
        platform: &str,
        call_ref: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let key = crate::store::call_lock_key(platform, call_ref);
        // The key is an integer we computed, so formatting it into the SQL is safe.
        self.pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({}, {key})",
                crate::store::CALL_LOCK_NAMESPACE
            )))
            .await
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

/// Forwards `NOTIFY lifeline_queue` to `signal` for as long as the process runs, reconnecting
/// after errors. A (re)connection bumps the signal too: notifications sent while the listener
/// was away are lost, so workers look for work themselves.
async fn listen_for_work(pool: PgPool, signal: QueueSignal) {
    // The listener holds its connection for good: give it its own, outside the pool that
    // logs tool calls and records deliveries.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
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
