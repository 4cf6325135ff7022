//! SQLite, the embedded default: WAL with `synchronous=FULL`, one writer connection.

use std::str::FromStr;
use std::time::Duration;

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
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Whether a log row and its callback request can be written by one statement (a
    /// data-modifying CTE, so one round trip and one commit) rather than a transaction.
    const ONE_STATEMENT_LOG_WITH_CALLBACK: bool = false;

    /// Opens (creating if the URL says `mode=rwc`) the database file.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let base = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before we answer, also in WAL mode.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // One writer: SQLite has one anyway, and queuing in the pool beats SQLITE_BUSY.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(base.read_only(true).create_if_missing(false));
        Ok(Self {
            writer,
            reader,
            signal: QueueSignal::default(),
        })
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

    /// A write transaction; the single writer connection already serialises them. IMMEDIATE:
    /// the transaction reads before it writes, and SQLite does not wait (busy timeout) for a lock
    /// a reading transaction must upgrade, it fails at once with SQLITE_BUSY. Another process on
    /// the same file (a second instance during a deploy, `lifeline worker`, the CLI) holding the
    /// write lock for a moment must make a tool call wait, not fail.
    async fn begin_for_call(
        &self,
        _platform: &str,
        _call_ref: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
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
