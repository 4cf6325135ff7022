//! PostgreSQL, the production engine: several lifeline instances may share one database.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The store on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PgStore {
    /// Whether a log row and its callback request can be written by one statement (a
    /// data-modifying CTE, so one round trip and one commit) rather than a transaction.
    const ONE_STATEMENT_LOG_WITH_CALLBACK: bool = true;

    /// Connects with `synchronous_commit=on`, whatever the server default: a logged tool call
    /// must survive a crash of the database server.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url
            .parse::<PgConnectOptions>()?
            .application_name("lifeline")
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
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

    async fn run_migrations(&self) -> Result<(), StoreError> {
        // sqlx takes an advisory lock, so instances starting together migrate once.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}

crate::store::common::impl_store!(PgStore, sqlx::Postgres, sqlx::PgConnection);
