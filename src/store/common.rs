//! The store implementation both engines share.
//!
//! The SQL below is portable (`$N` placeholders work on SQLite too, timestamps are bound from
//! Rust, upserts use `ON CONFLICT`), so it is written once and expanded for each engine's pool
//! type by `impl_store!`. An engine provides `writer()`, `reader()`, `group_writer()` (a turn on
//! the engine's group commit for the call path's writes), `log_invocation()` (which runs the
//! shared `log_in_transaction` in a transaction of its own making), `bump_queue()`,
//! `run_migrations()`, `write_through()` (a call-path write on a faster way of the engine's own,
//! if it has one) and `ONE_STATEMENT_LOG_WITH_CALLBACK`; on SQLite the writer is a single
//! connection, which serialises write transactions instead of failing them with SQLITE_BUSY.

macro_rules! call_columns {
    () => {
        "id, tenant_id, platform, call_ref, ultravox_call_id, from_number, to_number, direction, \
         status, app_started_at, started_at, ended_at, duration_seconds, transfer_outcome, \
         transfer_completed_at"
    };
}

macro_rules! log_columns {
    () => {
        "id, created_at, updated_at, tenant_id, platform, call_ref, call_id, invocation_key, \
         invocation_id, tool_name, canonical_tool, tool_parameters, status, error_message, \
         error_kind, result, duration_ms, callback_number, caller_name, urgency_level, processed_at"
    };
}

macro_rules! attempt_columns {
    () => {
        "id, call_id, tenant_id, tool_call_log_id, target_role, target_number, status, \
         dial_call_status, dial_sip_status, failure_reason, callback_number, caller_name, reason, \
         pet_name, started_at, ended_at, answered_at, outcome, ring_ms, accepted_at, chain_step"
    };
}

macro_rules! callback_columns {
    () => {
        "id, created_at, updated_at, tenant_id, call_id, call_sid, tool_call_log_id, \
         transfer_attempt_id, reason, status, callback_number, caller_name, first_name, last_name, \
         pet_name, species, breed, age, concern_description, urgency_level, urgency_reason, \
         metadata, retry_count, max_retries, next_retry_at, posted_to_frontend_at, error_message, \
         delivery_attempt, lease_owner, lease_expires_at, last_status_code, dead_letter_reason, \
         dead_lettered_at, cancelled_at, resolved_at, resolved_by, resolution_note, \
         frontend_response"
    };
}

/// Columns of a new log row, in the order `bind_log` binds them ($1–$23).
macro_rules! log_insert_columns {
    () => {
        "id, created_at, updated_at, tenant_id, platform, call_ref, call_id, invocation_key, \
         invocation_id, tool_name, canonical_tool, tool_parameters, callback_number, caller_name, \
         urgency_level, ultravox_call_id, twilio_call_sid, tool_data, status, result, \
         error_message, error_kind, duration_ms, processed_at"
    };
}

/// Columns of a new callback request, in the order `bind_callback` binds them.
macro_rules! callback_insert_columns {
    () => {
        "id, created_at, updated_at, tenant_id, call_id, call_sid, transfer_attempt_id, reason, \
         status, callback_number, caller_name, first_name, last_name, pet_name, species, breed, \
         age, concern_description, urgency_level, urgency_reason, urgency_rank, metadata, \
         tool_call_log_id, text_caller"
    };
}

/// A log row; a repeat of a logged invocation inserts nothing.
pub(crate) const INSERT_LOG: &str = concat!(
    "INSERT INTO tool_call_logs (",
    log_insert_columns!(),
    ") VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
     $18, $19, $20, $21, $22, $23) ON CONFLICT (platform, call_ref, invocation_key) DO NOTHING"
);

/// A callback request on its own ($21 is its log row's id).
pub(crate) const INSERT_CALLBACK: &str = concat!(
    "INSERT INTO callback_requests (",
    callback_insert_columns!(),
    ") VALUES ($1, $2, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21, $22)"
);

/// A voice message's callback request, keyed by its recording ($22; whether to text the caller
/// is $23): a repeat of the recording
/// webhook inserts nothing, whichever unique key it meets.
pub(crate) const INSERT_VOICE_MESSAGE: &str = concat!(
    "INSERT INTO callback_requests (",
    callback_insert_columns!(),
    ", recording_sid) VALUES ($1, $2, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12, \
     $13, $14, $15, $16, $17, $18, $19, $20, $21, $23, $22) ON CONFLICT DO NOTHING"
);

/// PostgreSQL: a log row and its callback request in one statement (the callback only if the log
/// row was new); returns how many log rows were written.
pub(crate) const INSERT_LOG_WITH_CALLBACK: &str = concat!(
    "WITH log AS (INSERT INTO tool_call_logs (",
    log_insert_columns!(),
    ") VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
     $18, $19, $20, $21, $22, $23) ON CONFLICT (platform, call_ref, invocation_key) DO NOTHING \
     RETURNING id), \
     cb AS (INSERT INTO callback_requests (",
    callback_insert_columns!(),
    ") SELECT $24, $25, $25, $26, $27, $28, $29, $30, 'pending', $31, $32, $33, $34, $35, $36, \
     $37, $38, $39, $40, $41, $42, $43, log.id, $44 FROM log RETURNING id) \
     SELECT (SELECT COUNT(*) FROM log)::BIGINT"
);

/// SQLite: a log row and its callback request in one round trip to the connection's thread,
/// under a savepoint of their own (inside a shared group-commit transaction, a failure must undo
/// both and nothing else). The callback request is written only if the log row was (`changes()`
/// is the log insert's count), and the last row says whether it was. Bound as
/// `INSERT_LOG_WITH_CALLBACK` is. Whoever runs it must release or roll back the savepoint if it
/// does not come back whole (see `SqliteStore`'s batch).
pub(crate) const SQLITE_LOG_WITH_CALLBACK: &str = concat!(
    "SAVEPOINT whole_write; INSERT INTO tool_call_logs (",
    log_insert_columns!(),
    ") VALUES ($1, $2, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
     $18, $19, $20, $21, $22, $23) ON CONFLICT (platform, call_ref, invocation_key) DO NOTHING; \
     INSERT INTO callback_requests (",
    callback_insert_columns!(),
    ") SELECT $24, $25, $25, $26, $27, $28, $29, $30, 'pending', $31, $32, $33, $34, $35, $36, \
     $37, $38, $39, $40, $41, $42, $43, $1, $44 WHERE changes() = 1; \
     SELECT changes(); RELEASE whole_write"
);

/// A call's status: applied unless the call ended already, or the update is older (by the
/// platform's sequence number) than the one applied: Twilio's status callbacks can arrive out of
/// order. $1 the call, $2 the status, $3 when, $4 whether it ended the call, $5 its duration,
/// $6 its sequence number.
pub(crate) const UPDATE_CALL_STATUS: &str = "UPDATE calls SET status = $2, updated_at = $3, \
     ended_at = CASE WHEN $4 THEN $3 ELSE ended_at END, \
     duration_seconds = COALESCE($5, duration_seconds), \
     status_sequence = COALESCE($6, status_sequence) \
     WHERE id = $1 AND ended_at IS NULL \
     AND ($6 IS NULL OR status_sequence IS NULL OR status_sequence < $6)";

/// SQLite: the status event that goes with [`UPDATE_CALL_STATUS`] in one query, numbered after
/// it: $7 the event, $8 its detail (the call is $1, the time $3).
pub(crate) const INSERT_STATUS_EVENT: &str = "INSERT INTO call_events (id, call_id, at, kind, detail) \
     VALUES ($7, $1, $3, 'status', $8)";

/// A call's row, the statement up to what a repeat does (`... DO`): $1 the call, $2 its tenant,
/// $3 platform, $4 reference, $5 from, $6 to, $7 direction, $8 status, $9 account, $10
/// application, $11 when it started.
macro_rules! insert_call {
    () => {
        "INSERT INTO calls (id, tenant_id, platform, call_ref, from_number, to_number, \
         direction, status, account_sid, application_sid, started_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11) \
         ON CONFLICT (platform, call_ref) DO"
    };
}

/// The call's app started ($2, the first time only) for call $1.
pub(crate) const MARK_APP_STARTED: &str = "UPDATE calls SET app_started_at = \
     COALESCE(app_started_at, $2), updated_at = $2 WHERE id = $1";

/// An event on call $2's timeline: $1 its id, $3 when, $4 its kind, $5 its detail.
pub(crate) const INSERT_CALL_EVENT: &str =
    "INSERT INTO call_events (id, call_id, at, kind, detail) VALUES ($1, $2, $3, $4, $5)";

/// A running tool call's outcome for log row $1: $2 status, $3 result, $4 error, $5 its kind,
/// $6 duration, $7 when.
pub(crate) const FINISH_INVOCATION: &str = "UPDATE tool_call_logs SET status = $2, result = $3, \
     error_message = $4, error_kind = $5, duration_ms = $6, processed_at = $7, updated_at = $7 \
     WHERE id = $1 AND status = 'pending'";

/// A write of the call path that an engine may run on a faster way of its own
/// (`write_through`: SQLite's log writer, which commits it with the tool calls it batches).
/// Each does what the statement of the same method in `impl_store!` does.
pub(crate) enum CallWrite<'a> {
    /// A call's start, written only if the call is new (else not written: the caller's own
    /// upsert returns the row there).
    Start(&'a crate::store::NewCall),
    /// The call's app started.
    AppStarted(uuid::Uuid, chrono::DateTime<chrono::Utc>),
    /// A call's status and its event.
    Status(uuid::Uuid, &'a crate::store::CallStatusUpdate),
    /// An event on the call's timeline.
    Event(&'a crate::store::NewCallEvent),
    /// A running tool call's outcome.
    Finish(uuid::Uuid, &'a crate::store::Recorded),
}

pub(crate) use {
    attempt_columns, call_columns, callback_columns, callback_insert_columns, insert_call,
    log_columns, log_insert_columns,
};

macro_rules! impl_store {
    ($store:ty, $db:ty, $conn:ty) => {
        use async_trait::async_trait;
        use chrono::{DateTime, Utc};
        use sqlx::types::Json;
        use uuid::Uuid;

        use crate::store::common::{attempt_columns, call_columns, callback_columns, log_columns};
        use crate::store::{
            Begun, CallEventRow, CallRow, CallStatusUpdate, CallbackFilter, CallbackRequestRow,
            CountWindows, DialingAttempt, LimitCheck, NewCall, NewCallEvent, NewCallbackRequest,
            NewToolCallLog, NewTransferAttempt, Plan, Recorded, Store, StoreError,
            ToolCallLogRow, TransferAttemptRow, TransferFinish, TransferStart, WindowCounts,
        };
        use crate::domain::Platform;

        type EngineQuery<'q> = sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments>;

        /// Binds a log row's 23 values in `LOG_VALUES` order.
        fn bind_log<'q>(
            q: EngineQuery<'q>,
            log: &NewToolCallLog,
            outcome: Option<&Recorded>,
        ) -> EngineQuery<'q> {
            q.bind(log.id)
                .bind(log.created_at)
                .bind(&log.tenant_id)
                .bind(log.platform.as_str())
                .bind(&log.call_ref)
                .bind(log.call_id)
                .bind(&log.invocation_key)
                .bind(&log.invocation_id)
                .bind(&log.tool_name)
                .bind(&log.canonical_tool)
                .bind(Json(&log.tool_parameters))
                .bind(&log.callback_number)
                .bind(&log.caller_name)
                .bind(&log.urgency_level)
                .bind(&log.ultravox_call_id)
                .bind(&log.twilio_call_sid)
                .bind(Json(&log.tool_data))
                .bind(outcome.map_or("pending", |o| o.status()))
                .bind(outcome.map(|o| Json(&o.result)))
                .bind(outcome.and_then(|o| o.error_message.as_deref()))
                .bind(outcome.and_then(|o| o.error_kind))
                .bind(outcome.map(|o| o.duration_ms))
                .bind(outcome.map(|o| o.at))
        }

        /// Binds a callback request's values in `CALLBACK_VALUES` order (its log id last, for
        /// the standalone insert; the combined insert takes it from the new log row).
        fn bind_callback<'q>(q: EngineQuery<'q>, cb: &NewCallbackRequest) -> EngineQuery<'q> {
            q.bind(cb.id)
                .bind(cb.created_at)
                .bind(&cb.tenant_id)
                .bind(cb.call_id)
                .bind(&cb.call_sid)
                .bind(cb.transfer_attempt_id)
                .bind(cb.reason)
                .bind(&cb.callback_number)
                .bind(&cb.caller_name)
                .bind(&cb.first_name)
                .bind(&cb.last_name)
                .bind(&cb.pet_name)
                .bind(&cb.species)
                .bind(&cb.breed)
                .bind(&cb.age)
                .bind(&cb.concern_description)
                .bind(cb.urgency.as_str())
                .bind(&cb.urgency_reason)
                .bind(cb.urgency.rank())
                .bind(Json(&cb.metadata))
        }

        async fn insert_callback(
            conn: &mut $conn,
            cb: &NewCallbackRequest,
        ) -> Result<(), sqlx::Error> {
            bind_callback(sqlx::query(crate::store::common::INSERT_CALLBACK), cb)
                .bind(cb.tool_call_log_id)
                .bind(cb.text_caller)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        async fn insert_attempt(
            conn: &mut $conn,
            a: &NewTransferAttempt,
        ) -> Result<bool, sqlx::Error> {
            let done = sqlx::query(
                "INSERT INTO transfer_attempts (id, call_id, tenant_id, tool_call_log_id, \
                 target_role, target_number, status, callback_number, caller_name, reason, \
                 pet_name, started_at, chain_step) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'dialing', $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(a.id)
            .bind(a.call_id)
            .bind(&a.tenant_id)
            .bind(a.tool_call_log_id)
            .bind(a.target_role)
            .bind(&a.target_number)
            .bind(&a.callback_number)
            .bind(&a.caller_name)
            .bind(&a.reason)
            .bind(&a.pet_name)
            .bind(a.started_at)
            .bind(crate::store::chain_step_of(a))
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        async fn find_log(
            conn: &mut $conn,
            platform: &str,
            call_ref: &str,
            key: &str,
        ) -> Result<Option<ToolCallLogRow>, sqlx::Error> {
            sqlx::query_as(concat!(
                "SELECT ",
                log_columns!(),
                " FROM tool_call_logs WHERE platform = $1 AND call_ref = $2 \
                 AND invocation_key = $3"
            ))
            .bind(platform)
            .bind(call_ref)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
        }

        /// Writes the log row, and its callback request if any (which always refers to that log
        /// row). False when the invocation was already logged: nothing is written.
        async fn write_invocation(
            conn: &mut $conn,
            log: &NewToolCallLog,
            outcome: Option<&Recorded>,
            callback: Option<&NewCallbackRequest>,
        ) -> Result<bool, sqlx::Error> {
            use crate::store::common::{INSERT_LOG, INSERT_LOG_WITH_CALLBACK};
            match (callback, <$store>::ONE_STATEMENT_LOG_WITH_CALLBACK) {
                (None, _) => {
                    let done = bind_log(sqlx::query(INSERT_LOG), log, outcome)
                        .execute(&mut *conn)
                        .await?;
                    Ok(done.rows_affected() == 1)
                }
                // One statement: one round trip fewer.
                (Some(cb), true) => {
                    let q = bind_log(sqlx::query(INSERT_LOG_WITH_CALLBACK), log, outcome);
                    let row = bind_callback(q, cb)
                        .bind(cb.text_caller)
                        .fetch_one(&mut *conn)
                        .await?;
                    let logged: i64 = sqlx::Row::try_get(&row, 0)?;
                    Ok(logged == 1)
                }
                (Some(cb), false) => {
                    let done = bind_log(sqlx::query(INSERT_LOG), log, outcome)
                        .execute(&mut *conn)
                        .await?;
                    if done.rows_affected() == 0 {
                        return Ok(false);
                    }
                    bind_callback(sqlx::query(crate::store::common::INSERT_CALLBACK), cb)
                        .bind(log.id)
                        .bind(cb.text_caller)
                        .execute(&mut *conn)
                        .await?;
                    Ok(true)
                }
            }
        }

        /// The logging transaction's work for one invocation, on a connection whose transaction
        /// is open and holds the call's lock (invocations of one call are serialised from the
        /// count to the commit, so the limit holds exactly even when a model fires tools in
        /// parallel, and a repeat always finds the original's row). `None`: the invocation was
        /// logged before, nothing was written. Otherwise what it begins with, and whether it
        /// queued a callback request.
        // SQLite logs in its group commit's way (`sqlite.rs`): its copy of this is unused.
        #[allow(dead_code)]
        async fn log_in_transaction(
            conn: &mut $conn,
            log: &NewToolCallLog,
            plan: &Plan,
            windows: &CountWindows,
            check: LimitCheck<'_>,
        ) -> Result<Option<(Begun, bool)>, sqlx::Error> {
            let Some((outcome, callback)) = decide_invocation(conn, log, plan, windows, check).await?
            else {
                return Ok(None);
            };
            if !write_invocation(conn, log, outcome.as_ref(), callback).await? {
                return Ok(None);
            }
            Ok(Some((begun_with(outcome), callback.is_some())))
        }

        /// What a newly logged invocation begins with: running, or its recorded outcome.
        fn begun_with(outcome: Option<Recorded>) -> Begun {
            match outcome {
                None => Begun::Running,
                Some(o) => Begun::Recorded(o),
            }
        }

        /// The reads of the logging transaction (under the call's lock, as above): `None` when
        /// the invocation was logged before; otherwise the outcome to record with its row now
        /// (a refusal by the limits, or the plan's own) and the callback request to queue with
        /// it. Writes nothing.
        async fn decide_invocation<'p>(
            conn: &mut $conn,
            log: &NewToolCallLog,
            plan: &'p Plan,
            windows: &CountWindows,
            check: LimitCheck<'_>,
        ) -> Result<Option<(Option<Recorded>, Option<&'p NewCallbackRequest>)>, sqlx::Error> {
            let platform = log.platform.as_str();
            let (known, total, transfers): (Option<Uuid>, Option<i64>, Option<i64>) =
                sqlx::query_as(
                    "SELECT \
                     (SELECT id FROM tool_call_logs WHERE platform = $1 AND call_ref = $2 \
                      AND invocation_key = $3), \
                     (SELECT total FROM call_invocation_totals \
                      WHERE platform = $1 AND call_ref = $2), \
                     (SELECT transfers FROM call_invocation_totals \
                      WHERE platform = $1 AND call_ref = $2)",
                )
                .bind(platform)
                .bind(&log.call_ref)
                .bind(&log.invocation_key)
                .fetch_one(&mut *conn)
                .await?;
            if known.is_some() {
                return Ok(None);
            }
            let totals = WindowCounts {
                call: total.unwrap_or(0),
                tool: transfers.unwrap_or(0),
            };
            let refusal = match plan {
                Plan::Fail(_) => None,
                // Under the limits by the call's totals: the windows are too (the check is
                // monotonic in the counts, and the totals bound them from above).
                Plan::Run | Plan::Complete { .. } if windows.under_limits(&totals) => {
                    check(&totals)
                }
                Plan::Run | Plan::Complete { .. } => {
                    let (call, tool): (i64, i64) = sqlx::query_as(
                        "SELECT \
                         COALESCE(SUM(CASE WHEN created_at > $3 THEN 1 ELSE 0 END), 0), \
                         COALESCE(SUM(CASE WHEN canonical_tool = $4 AND created_at > $5 \
                                      THEN 1 ELSE 0 END), 0) \
                         FROM tool_call_logs \
                         WHERE platform = $1 AND call_ref = $2 AND created_at > $6",
                    )
                    .bind(platform)
                    .bind(&log.call_ref)
                    .bind(windows.call_since)
                    .bind(&windows.tool)
                    .bind(windows.tool_since)
                    .bind(windows.call_since.min(windows.tool_since))
                    .fetch_one(&mut *conn)
                    .await?;
                    check(&WindowCounts { call, tool })
                }
            };
            let (outcome, callback) = match (&refusal, plan) {
                (Some(err), _) => (
                    Some(Recorded::of(&Err(err.clone()), log.created_at, 0.0)),
                    None,
                ),
                (None, Plan::Run) => (None, None),
                (None, Plan::Complete { outcome, callback }) => {
                    (Some(outcome.clone()), callback.as_deref())
                }
                (None, Plan::Fail(outcome)) => (Some(outcome.clone()), None),
            };
            Ok(Some((outcome, callback)))
        }

        #[async_trait]
        impl crate::store::TransferGateStore for $store {
            async fn mark_transfer_accepted(
                &self,
                attempt_id: Uuid,
                at: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE transfer_attempts SET accepted_at = COALESCE(accepted_at, $2), \
                     answered_at = COALESCE(answered_at, $2) \
                     WHERE id = $1 AND status = 'dialing'",
                )
                .bind(attempt_id)
                .bind(at)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn migrate(&self) -> Result<(), StoreError> {
                self.run_migrations().await
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn migration_report(&self) -> Result<crate::store::MigrationReport, StoreError> {
                let applied: Vec<(i64, bool, Vec<u8>)> =
                    sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                        .fetch_all(self.reader())
                        .await?;
                let mut report = crate::store::MigrationReport::default();
                for m in Self::migrator()
                    .iter()
                    .filter(|m| !m.migration_type.is_down_migration())
                {
                    match applied.iter().find(|(v, _, _)| *v == m.version) {
                        None => report.missing.push(m.version),
                        Some((_, false, _)) => report.failed.push(m.version),
                        Some((_, true, checksum)) if checksum[..] != m.checksum[..] => {
                            report.changed.push(m.version)
                        }
                        Some(_) => {}
                    }
                }
                Ok(report)
            }

            async fn upsert_call(&self, call: &NewCall) -> Result<CallRow, StoreError> {
                crate::store::text::escape!(call, "call");
                // Written through only if it is new, so its row is what was inserted; a call
                // already there takes the turn below, whose upsert returns the row there.
                if self.write_through(crate::store::common::CallWrite::Start(call)).await? {
                    return Ok(CallRow::new_call(call));
                }
                // Through the engine's group commit (SQLite): a call's start shares its
                // fsync with everyone's tool calls.
                let mut w = self.group_writer().await?;
                // The no-op update makes RETURNING give the existing row on a repeat.
                let row = sqlx::query_as(concat!(
                    crate::store::common::insert_call!(),
                    " UPDATE SET platform = calls.platform RETURNING ",
                    call_columns!()
                ))
                .bind(call.id)
                .bind(&call.tenant_id)
                .bind(call.platform.as_str())
                .bind(&call.call_ref)
                .bind(&call.from_number)
                .bind(&call.to_number)
                .bind(&call.direction)
                .bind(&call.status)
                .bind(&call.account_sid)
                .bind(&call.application_sid)
                .bind(call.started_at)
                .fetch_one(w.conn())
                .await
                .map_err(StoreError::from);
                w.end(row).await
            }

            async fn find_call(
                &self,
                platform: Platform,
                call_ref: &str,
            ) -> Result<Option<CallRow>, StoreError> {
                crate::store::text::escape!(key call_ref, "call");
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    call_columns!(),
                    " FROM calls WHERE platform = $1 AND call_ref = $2"
                ))
                .bind(platform.as_str())
                .bind(call_ref)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn find_call_by_ultravox_id(
                &self,
                ultravox_call_id: &str,
            ) -> Result<Option<CallRow>, StoreError> {
                crate::store::text::escape!(key ultravox_call_id, "call");
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    call_columns!(),
                    " FROM calls WHERE ultravox_call_id = $1"
                ))
                .bind(ultravox_call_id)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn mark_app_started(
                &self,
                call_id: Uuid,
                at: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                if self.write_through(crate::store::common::CallWrite::AppStarted(call_id, at)).await? {
                    return Ok(());
                }
                let mut w = self.group_writer().await?;
                let done = sqlx::query(crate::store::common::MARK_APP_STARTED)
                .bind(call_id)
                .bind(at)
                .execute(w.conn())
                .await
                .map(drop)
                .map_err(StoreError::from);
                w.end(done).await
            }

            async fn record_call_status(
                &self,
                call_id: Uuid,
                u: &CallStatusUpdate,
            ) -> Result<(), StoreError> {
                crate::store::text::escape!(u, "call_status");
                if self.write_through(crate::store::common::CallWrite::Status(call_id, u)).await? {
                    return Ok(());
                }
                let mut w = self.group_writer().await?;
                let done = w.record_call_status(call_id, u).await;
                w.end(done).await
            }

            async fn set_ultravox_call_id(
                &self,
                call_id: Uuid,
                ultravox_call_id: &str,
            ) -> Result<(), StoreError> {
                crate::store::text::escape!(key ultravox_call_id, "call");
                // Linking the same call again is a no-op; another Ultravox call is a conflict
                // the caller must hear of (tools could not find the call by the new id).
                let linked = sqlx::query(
                    "UPDATE calls SET ultravox_call_id = $2 \
                     WHERE id = $1 AND (ultravox_call_id IS NULL OR ultravox_call_id = $2)",
                )
                .bind(call_id)
                .bind(ultravox_call_id)
                .execute(self.writer())
                .await?
                .rows_affected();
                if linked == 1 {
                    return Ok(());
                }
                let exists: Option<(Option<String>,)> =
                    sqlx::query_as("SELECT ultravox_call_id FROM calls WHERE id = $1")
                        .bind(call_id)
                        .fetch_optional(self.writer())
                        .await?;
                Err(match exists {
                    None => StoreError::NotFound(format!("call {call_id}")),
                    Some(_) => StoreError::Conflict(format!(
                        "call {call_id} is already linked to another Ultravox call"
                    )),
                })
            }

            async fn append_call_event(&self, e: &NewCallEvent) -> Result<(), StoreError> {
                crate::store::text::escape!(e, "call_event");
                if self.write_through(crate::store::common::CallWrite::Event(e)).await? {
                    return Ok(());
                }
                let mut w = self.group_writer().await?;
                let done = sqlx::query(crate::store::common::INSERT_CALL_EVENT)
                .bind(e.id)
                .bind(e.call_id)
                .bind(e.at)
                .bind(&e.kind)
                .bind(Json(&e.detail))
                .execute(w.conn())
                .await
                .map(drop)
                .map_err(StoreError::from);
                w.end(done).await
            }

            async fn call_events(&self, call_id: Uuid) -> Result<Vec<CallEventRow>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT id, call_id, at, kind, detail FROM call_events \
                     WHERE call_id = $1 ORDER BY at, id",
                )
                .bind(call_id)
                .fetch_all(self.reader())
                .await?)
            }

            async fn begin_invocation(
                &self,
                log: &NewToolCallLog,
                plan: &Plan,
                windows: &CountWindows,
                check: LimitCheck<'_>,
            ) -> Result<Begun, StoreError> {
                // Text the database cannot store is escaped, and the escaped paths noted in the row.
                let (log, plan) = crate::store::text::escaped_invocation(log, plan);
                let (log, plan) = (log.as_ref(), plan.as_ref());
                let (begun, queued) = self.log_invocation(log, plan, windows, check).await?;
                if queued {
                    self.bump_queue();
                }
                Ok(begun)
            }

            async fn finish_invocation(
                &self,
                log_id: Uuid,
                o: &Recorded,
            ) -> Result<(), StoreError> {
                crate::store::text::escape!(o, "tool_call");
                if self.write_through(crate::store::common::CallWrite::Finish(log_id, o)).await? {
                    return Ok(());
                }
                let mut w = self.group_writer().await?;
                let done = sqlx::query(crate::store::common::FINISH_INVOCATION)
                .bind(log_id)
                .bind(o.status())
                .bind(Json(&o.result))
                .bind(&o.error_message)
                .bind(o.error_kind)
                .bind(o.duration_ms)
                .bind(o.at)
                .execute(w.conn())
                .await
                .map(drop)
                .map_err(StoreError::from);
                w.end(done).await
            }

            async fn tool_call_log(&self, id: Uuid) -> Result<Option<ToolCallLogRow>, StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    log_columns!(),
                    " FROM tool_call_logs WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn find_invocation(
                &self,
                platform: Platform,
                call_ref: &str,
                invocation_key: &str,
            ) -> Result<Option<ToolCallLogRow>, StoreError> {
                crate::store::text::escape!(key call_ref, "tool_call");
                crate::store::text::escape!(key invocation_key, "tool_call");
                let mut conn = self.reader().acquire().await?;
                Ok(find_log(&mut conn, platform.as_str(), call_ref, invocation_key).await?)
            }

            async fn tool_call_logs_for_call(
                &self,
                platform: Platform,
                call_ref: &str,
            ) -> Result<Vec<ToolCallLogRow>, StoreError> {
                crate::store::text::escape!(key call_ref, "tool_call");
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    log_columns!(),
                    " FROM tool_call_logs WHERE platform = $1 AND call_ref = $2 \
                     ORDER BY created_at, id"
                ))
                .bind(platform.as_str())
                .bind(call_ref)
                .fetch_all(self.reader())
                .await?)
            }

            async fn start_transfer(
                &self,
                attempt: &NewTransferAttempt,
            ) -> Result<TransferStart, StoreError> {
                crate::store::text::escape!(attempt, "transfer");
                let mut conn = self.writer().acquire().await?;
                if insert_attempt(&mut conn, attempt).await? {
                    return Ok(TransferStart::Started);
                }
                drop(conn);
                match self.dialing_transfer(attempt.call_id).await? {
                    Some(row) => Ok(TransferStart::AlreadyDialing(Box::new(row))),
                    None => Err(StoreError::NotFound(format!(
                        "transfer attempt {} was refused but none is dialing",
                        attempt.id
                    ))),
                }
            }

            async fn dialing_transfer(
                &self,
                call_id: Uuid,
            ) -> Result<Option<TransferAttemptRow>, StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    attempt_columns!(),
                    " FROM transfer_attempts WHERE call_id = $1 AND status = 'dialing'"
                ))
                .bind(call_id)
                .fetch_optional(self.writer())
                .await?)
            }

            async fn transfer_attempt(
                &self,
                id: Uuid,
            ) -> Result<Option<TransferAttemptRow>, StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    attempt_columns!(),
                    " FROM transfer_attempts WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn mark_transfer_answered(
                &self,
                attempt_id: Uuid,
                at: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE transfer_attempts SET answered_at = COALESCE(answered_at, $2) \
                     WHERE id = $1 AND status = 'dialing'",
                )
                .bind(attempt_id)
                .bind(at)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn dialing_attempts(&self) -> Result<Vec<DialingAttempt>, StoreError> {
                Ok(sqlx::query_as(
                    "SELECT t.*, c.platform AS call_platform, c.call_ref AS call_ref, \
                     c.ended_at AS call_ended_at \
                     FROM transfer_attempts t JOIN calls c ON c.id = t.call_id \
                     WHERE t.status = 'dialing' ORDER BY t.started_at, t.id",
                )
                .fetch_all(self.reader())
                .await?)
            }

            async fn pending_invocations(
                &self,
                before: DateTime<Utc>,
                limit: i64,
            ) -> Result<Vec<ToolCallLogRow>, StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    log_columns!(),
                    " FROM tool_call_logs WHERE status = 'pending' AND created_at < $1 \
                     ORDER BY created_at, id LIMIT $2"
                ))
                .bind(before)
                .bind(limit)
                .fetch_all(self.reader())
                .await?)
            }

            async fn abandon_invocation(
                &self,
                log_id: Uuid,
                o: &Recorded,
                callback: Option<&NewCallbackRequest>,
            ) -> Result<bool, StoreError> {
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query(crate::store::common::FINISH_INVOCATION)
                .bind(log_id)
                .bind(o.status())
                .bind(Json(&o.result))
                .bind(&o.error_message)
                .bind(o.error_kind)
                .bind(o.duration_ms)
                .bind(o.at)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    tx.rollback().await?;
                    return Ok(false);
                }
                if let Some(cb) = callback {
                    insert_callback(&mut tx, cb).await?;
                }
                tx.commit().await?;
                if callback.is_some() {
                    self.bump_queue();
                }
                Ok(true)
            }

            async fn insert_callback_request(
                &self,
                request: &NewCallbackRequest,
            ) -> Result<(), StoreError> {
                crate::store::text::escape!(request, "callback_request");
                let mut conn = self.writer().acquire().await?;
                insert_callback(&mut conn, request).await?;
                self.bump_queue();
                Ok(())
            }

            async fn transfer_attempts(
                &self,
                call_id: Uuid,
            ) -> Result<Vec<TransferAttemptRow>, StoreError> {
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    attempt_columns!(),
                    " FROM transfer_attempts WHERE call_id = $1 ORDER BY started_at, id"
                ))
                .bind(call_id)
                .fetch_all(self.reader())
                .await?)
            }

            async fn finish_transfer(&self, f: &TransferFinish) -> Result<bool, StoreError> {
                crate::store::text::escape!(f, "transfer");
                let mut tx = self.writer().begin().await?;
                let ended = sqlx::query(
                    "UPDATE transfer_attempts SET status = $2, dial_call_status = $3, \
                     dial_sip_status = $4, failure_reason = $5, ended_at = $6, \
                     outcome = COALESCE($7, outcome), ring_ms = COALESCE($8, ring_ms), \
                     accepted_at = CASE WHEN $7 = 'accepted' \
                       THEN COALESCE(accepted_at, answered_at, $6) ELSE accepted_at END \
                     WHERE id = $1 AND status = 'dialing'",
                )
                .bind(f.attempt_id)
                .bind(if f.succeeded { "succeeded" } else { "failed" })
                .bind(&f.dial_call_status)
                .bind(f.dial_sip_status)
                .bind(&f.failure_reason)
                .bind(f.at)
                .bind(&f.outcome)
                .bind(f.ring_ms)
                .execute(&mut *tx)
                .await?;
                if ended.rows_affected() == 0 {
                    // Already finished: a repeated hook changes nothing.
                    tx.rollback().await?;
                    return Ok(false);
                }
                if let Some(next) = &f.next {
                    insert_attempt(&mut tx, next).await?;
                }
                if let Some(cb) = &f.callback {
                    insert_callback(&mut tx, cb).await?;
                }
                let outcome = match (f.succeeded, &f.next) {
                    (true, _) => Some("succeeded"),
                    (false, None) => Some("failed"),
                    (false, Some(_)) => None,
                };
                if let Some(outcome) = outcome {
                    sqlx::query(
                        "UPDATE calls SET transfer_outcome = $2, transfer_completed_at = $3, \
                         updated_at = $3 WHERE id = $1",
                    )
                    .bind(f.call_id)
                    .bind(outcome)
                    .bind(f.at)
                    .execute(&mut *tx)
                    .await?;
                }
                if let Some((log_id, failed)) = &f.failed_log {
                    sqlx::query(
                        "UPDATE tool_call_logs SET status = $2, result = $3, error_message = $4, \
                         error_kind = $5, updated_at = $6 WHERE id = $1",
                    )
                    .bind(log_id)
                    .bind(failed.status())
                    .bind(Json(&failed.result))
                    .bind(&failed.error_message)
                    .bind(failed.error_kind)
                    .bind(f.at)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                if f.callback.is_some() {
                    self.bump_queue();
                }
                Ok(true)
            }

            async fn callback_requests(
                &self,
                filter: &CallbackFilter,
            ) -> Result<Vec<CallbackRequestRow>, StoreError> {
                crate::store::text::escape!(filter, "callback_filter");
                Ok(sqlx::query_as(concat!(
                    "SELECT ",
                    callback_columns!(),
                    " FROM callback_requests \
                     WHERE ($1 IS NULL OR tenant_id = $1) \
                     AND ($2 IS NULL OR status = $2 OR ($2 = 'resolved' AND resolved_at IS NOT NULL)) \
                     AND ($3 IS NULL OR call_id = $3) AND ($5 IS NULL OR urgency_level = $5) \
                     ORDER BY urgency_rank, created_at, id LIMIT $4"
                ))
                .bind(&filter.tenant_id)
                .bind(&filter.status)
                .bind(filter.call_id)
                .bind(filter.limit.unwrap_or(1000))
                .bind(&filter.urgency)
                .fetch_all(self.reader())
                .await?)
            }
        }
    };
}

pub(crate) use impl_store;
