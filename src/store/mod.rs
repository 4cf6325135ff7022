//! Durable state behind one trait, with a PostgreSQL and an SQLite implementation.
//!
//! Every write that the rest of lifeline relies on for "nothing lost" is one transaction here:
//! a tool call's log row with its callback request, a failed transfer with its critical callback
//! request. Adapters never see SQL; tools never see a connection.

pub mod admin;
mod common;
mod connect_check;
pub mod journal;
pub mod models;
pub mod paging;
pub mod postgres;
pub mod queue;
pub mod resilient;
pub mod retention;
pub mod sqlite;
pub mod text;
pub mod twilio_calls;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use admin::*;
pub use models::*;
pub use paging::{CallerTextOutcome, CallerTextRow, PageRow, PageStep, PageUpdate, PagingStore};
pub use queue::*;
pub use retention::RetentionStore;
pub use twilio_calls::{CallSetup, TwilioCallStore};

use crate::domain::{Platform, ToolError};

/// A failure of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database refused text it cannot store (NUL). Permanent: the same write fails again,
    /// and the database itself is fine (never a sign of an outage). The store escapes such text
    /// before writing it (see [`text`]), so this only means some text escaped the escaping.
    #[error("the database cannot store this text (it holds a NUL character): {0}")]
    Unstorable(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("not found: {0}")]
    NotFound(String),
    /// The write contradicts what is recorded (e.g. a call already linked to another Ultravox
    /// call); nothing was written.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be opened; the message names it and says why.
    #[error("{0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if text::is_unstorable(&e) {
            Self::Unstorable(e)
        } else {
            Self::Database(e)
        }
    }
}

impl StoreError {
    /// Whether this is the refusal of text the database cannot store: retrying the same write
    /// cannot help, and the database is not down.
    pub fn is_unstorable(&self) -> bool {
        matches!(self, Self::Unstorable(_))
    }

    /// What to tell a model whose tool call could not be recorded because of this error.
    pub fn tool_error(&self) -> ToolError {
        match self {
            Self::Unstorable(_) => ToolError::validation(
                "the request contains characters that cannot be stored (a NUL character); \
                 call the tool again without it",
            ),
            _ => ToolError::new(
                crate::domain::ErrorKind::Database,
                "the request could not be recorded; try the same tool again",
            ),
        }
    }
}

/// Where the database's schema stands against the migrations this build embeds, from
/// [`Store::migration_report`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Embedded migrations the database has no record of.
    pub missing: Vec<i64>,
    /// Migrations recorded as failed: the schema may be half changed ("dirty").
    pub failed: Vec<i64>,
    /// Applied migrations whose recorded checksum differs from the embedded file (edited after
    /// it was applied: the schema may not be what this build expects).
    pub changed: Vec<i64>,
}

impl MigrationReport {
    /// Whether every embedded migration is applied, none failed and none changed.
    pub fn is_current(&self) -> bool {
        self.missing.is_empty() && self.failed.is_empty() && self.changed.is_empty()
    }

    /// What is wrong, for an operator (`None` when current).
    pub fn problem(&self) -> Option<String> {
        let list = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("not applied: {}", list(&self.missing)));
        }
        if !self.failed.is_empty() {
            parts.push(format!("failed (dirty): {}", list(&self.failed)));
        }
        if !self.changed.is_empty() {
            parts.push(format!("changed since applied: {}", list(&self.changed)));
        }
        (!parts.is_empty()).then(|| format!("migrations {}", parts.join("; ")))
    }
}

/// Decides, inside the logging transaction, whether the invocation is over its limits; returns
/// the error to record when it is.
pub type LimitCheck<'a> = &'a (dyn Fn(&WindowCounts) -> Option<ToolError> + Send + Sync);

/// The acceptance gate of a transfer (issue 14): when the on-call person pressed 1.
#[async_trait]
pub trait TransferGateStore: Send + Sync {
    /// Records that a human accepted the attempt (kept if already set). False when the attempt
    /// is not dialing any more. Best effort on the call path: the caller is connected anyway,
    /// and a finish with outcome `accepted` fills `accepted_at` from the pick-up time if this
    /// write was lost.
    async fn mark_transfer_accepted(
        &self,
        attempt_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

/// The chain step an attempt is written with: its own, else derived from its role (journals
/// written before chains carry none).
pub fn chain_step_of(a: &NewTransferAttempt) -> i32 {
    a.chain_step
        .unwrap_or(if a.target_role == "primary" { 1 } else { 2 })
}

/// The durable state of lifeline (the delivery queue included).
#[async_trait]
pub trait Store:
    DeliveryQueue
    + AdminStore
    + TwilioCallStore
    + TransferGateStore
    + PagingStore
    + RetentionStore
    + Send
    + Sync
    + 'static
{
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks the database answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Compares the migrations recorded in `_sqlx_migrations` with those this build embeds for
    /// its engine (an error when the table cannot be read, e.g. never migrated).
    async fn migration_report(&self) -> Result<MigrationReport, StoreError>;

    /// Creates the call, or returns the existing row for the same platform call.
    async fn upsert_call(&self, call: &NewCall) -> Result<CallRow, StoreError>;

    /// The call a platform knows by `call_ref`.
    async fn find_call(
        &self,
        platform: Platform,
        call_ref: &str,
    ) -> Result<Option<CallRow>, StoreError>;

    /// The call Ultravox knows by `ultravox_call_id` (the `X-Ultravox-Call-Id` of HTTP tools and
    /// data connections).
    async fn find_call_by_ultravox_id(
        &self,
        ultravox_call_id: &str,
    ) -> Result<Option<CallRow>, StoreError>;

    /// Records that the call was handed its application (verbs, TwiML).
    async fn mark_app_started(&self, call_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Applies a status change of the call's own leg and appends it to the call's events.
    async fn record_call_status(
        &self,
        call_id: Uuid,
        update: &CallStatusUpdate,
    ) -> Result<(), StoreError>;

    /// Links the Ultravox call created for this call. Linking the same one again is a no-op;
    /// a call already linked to another is [`StoreError::Conflict`], and nothing changes.
    async fn set_ultravox_call_id(
        &self,
        call_id: Uuid,
        ultravox_call_id: &str,
    ) -> Result<(), StoreError>;

    /// Appends an event to the call's timeline.
    async fn append_call_event(&self, event: &NewCallEvent) -> Result<(), StoreError>;

    /// The call's timeline, oldest first.
    async fn call_events(&self, call_id: Uuid) -> Result<Vec<CallEventRow>, StoreError>;

    /// Logs an invocation durably, in one transaction: a repeat of a known invocation returns
    /// the recorded row and writes nothing; otherwise the call's recent invocations are counted
    /// and `check` may refuse it (recorded as failed); otherwise `plan` says what to write.
    async fn begin_invocation(
        &self,
        log: &NewToolCallLog,
        plan: &Plan,
        windows: &CountWindows,
        check: LimitCheck<'_>,
    ) -> Result<Begun, StoreError>;

    /// Records the outcome of an invocation that was logged `pending`.
    async fn finish_invocation(&self, log_id: Uuid, outcome: &Recorded) -> Result<(), StoreError>;

    /// A logged invocation by id.
    async fn tool_call_log(&self, id: Uuid) -> Result<Option<ToolCallLogRow>, StoreError>;

    /// A logged invocation by its idempotency key.
    async fn find_invocation(
        &self,
        platform: Platform,
        call_ref: &str,
        invocation_key: &str,
    ) -> Result<Option<ToolCallLogRow>, StoreError>;

    /// All logged invocations of a call, oldest first.
    async fn tool_call_logs_for_call(
        &self,
        platform: Platform,
        call_ref: &str,
    ) -> Result<Vec<ToolCallLogRow>, StoreError>;

    /// Starts a transfer attempt unless one is already ringing for the call.
    async fn start_transfer(
        &self,
        attempt: &NewTransferAttempt,
    ) -> Result<TransferStart, StoreError>;

    /// The attempt currently ringing for a call.
    async fn dialing_transfer(
        &self,
        call_id: Uuid,
    ) -> Result<Option<TransferAttemptRow>, StoreError>;

    /// One transfer attempt.
    async fn transfer_attempt(&self, id: Uuid) -> Result<Option<TransferAttemptRow>, StoreError>;

    /// Every transfer attempt of a call, oldest first.
    async fn transfer_attempts(&self, call_id: Uuid)
    -> Result<Vec<TransferAttemptRow>, StoreError>;

    /// Ends an attempt and, in the same transaction, starts the next one or records the callback
    /// request that replaces it. Returns false (and writes nothing) when the attempt had already
    /// ended, so a repeated hook cannot create a second callback request.
    async fn finish_transfer(&self, finish: &TransferFinish) -> Result<bool, StoreError>;

    /// Records that the on-call person picked up (the first time only). False when the attempt
    /// is no longer dialing.
    async fn mark_transfer_answered(
        &self,
        attempt_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Every attempt still `dialing`, with its call, oldest first (the reconciler's view).
    async fn dialing_attempts(&self) -> Result<Vec<DialingAttempt>, StoreError>;

    /// Invocations still `pending` that were logged before `before`, oldest first.
    async fn pending_invocations(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ToolCallLogRow>, StoreError>;

    /// Ends an invocation left `pending` by an effect that will never report (its process
    /// died) with `outcome`, and writes `callback` in the same transaction. False, and nothing
    /// written, when the invocation was no longer pending.
    async fn abandon_invocation(
        &self,
        log_id: Uuid,
        outcome: &Recorded,
        callback: Option<&NewCallbackRequest>,
    ) -> Result<bool, StoreError>;

    /// Records a callback request that is not tied to a tool call (a recorded message).
    async fn insert_callback_request(&self, request: &NewCallbackRequest)
    -> Result<(), StoreError>;

    /// Callback requests, most urgent first, then oldest.
    async fn callback_requests(
        &self,
        filter: &CallbackFilter,
    ) -> Result<Vec<CallbackRequestRow>, StoreError>;
}

/// The first key of lifeline's PostgreSQL advisory locks (two-key form, so they never collide
/// with single-key locks such as the migrator's).
pub(crate) const CALL_LOCK_NAMESPACE: i32 = 0x4C49_4645; // "LIFE"

/// The second key of a call's advisory lock: a stable hash of the call, the same on every
/// instance. Two calls sharing a key only wait for each other.
pub(crate) fn call_lock_key(platform: &str, call_ref: &str) -> i32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(platform.as_bytes())
        .chain_update([0])
        .chain_update(call_ref.as_bytes())
        .finalize();
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Opens a PostgreSQL store without reaching the database (connections are made on first use).
pub fn connect_lazy(
    database_url: &str,
    max_connections: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(postgres::PgStore::connect_lazy(
        database_url,
        max_connections,
    )?))
}

/// Opens the store a `DATABASE_URL` names (PostgreSQL with a pool of up to 16 connections).
pub async fn connect(database_url: &str) -> Result<Arc<dyn Store>, StoreError> {
    connect_with_pool(database_url, 16).await
}

/// The stores of a process that serves calls (and may run the delivery worker).
#[derive(Clone)]
pub struct SplitStores {
    /// For tool calls, webhooks, the reconciler and the dashboard.
    pub calls: Arc<dyn Store>,
    /// For the in-process delivery worker, when there is one.
    pub worker: Option<Arc<dyn Store>>,
}

/// Opens the store a `DATABASE_URL` names for `lifeline serve`. On PostgreSQL: a pool of up to
/// `call_connections` for the call path, whose commits announce queued work after the fact
/// (see [`postgres::PgStore::connect_call_path`]), and, given `worker_connections`, a separate
/// one for the delivery worker (sharing the queue signal), so that neither waits for the
/// other's connections. SQLite has one writer connection whatever the pools, so both are one
/// store.
pub async fn connect_split(
    database_url: &str,
    call_connections: u32,
    worker_connections: Option<u32>,
) -> Result<SplitStores, StoreError> {
    if database_url.starts_with("sqlite:") {
        let store = connect_with_pool(database_url, call_connections).await?;
        return Ok(SplitStores {
            worker: worker_connections.map(|_| store.clone()),
            calls: store,
        });
    }
    connect_check::check_postgres(database_url)
        .await
        .map_err(StoreError::Unavailable)?;
    let calls = postgres::PgStore::connect_call_path(database_url, call_connections).await?;
    let worker: Option<Arc<dyn Store>> = match worker_connections {
        Some(n) => Some(Arc::new(calls.with_own_pool(n).await?)),
        None => None,
    };
    Ok(SplitStores {
        calls: Arc::new(calls),
        worker,
    })
}

/// Opens the store a `DATABASE_URL` names; a PostgreSQL pool holds up to `max_connections`.
pub async fn connect_with_pool(
    database_url: &str,
    max_connections: u32,
) -> Result<Arc<dyn Store>, StoreError> {
    if database_url.starts_with("sqlite:") {
        let url = connect_check::sqlite_url_creating_file(database_url);
        match sqlite::SqliteStore::connect(&url).await {
            Ok(store) => Ok(Arc::new(store)),
            Err(StoreError::Database(e)) => Err(StoreError::Unavailable(
                connect_check::explain_sqlite(&url, &e),
            )),
            Err(e) => Err(e),
        }
    } else {
        connect_check::check_postgres(database_url)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Arc::new(
            postgres::PgStore::connect_with_pool(database_url, max_connections).await?,
        ))
    }
}
