//! The store the call path uses: the database when it commits within a budget, the local
//! journal when it does not.
//!
//! Every write of the call path (a call's row and events, a tool call's log, transfer attempts,
//! callback requests) is tried against the database for at most `journal.write_budget_ms`.
//! When the budget is spent, or the database fails in a way that is not about the data, the
//! write is appended to the journal ([`super::journal`]), fsynced, and answered as the database
//! would have answered it, from the rows this instance keeps in memory ([`rows`]). From then
//! on every write goes to the journal (a later write must never reach the database before an
//! earlier one it depends on) until a replay has applied the whole journal, in order, and found
//! nothing new behind it. A replay is idempotent: rows keep the ids they were journaled with,
//! and each record is applied so that applying it twice changes nothing.
//!
//! A critical callback request written to the journal is alerted at once ([`DirectAlerts`]),
//! since the delivery worker cannot see it until the replay.

mod apply;
mod rows;

/// The journal's settings are the configuration's (`[journal]`); re-exported for the store's users.
pub use crate::config::JournalSettings;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::journal::{Entry, Journal, Record};
use super::*;
use crate::domain::Platform;

pub use rows::Rows;

/// How many calls' records a replay applies side by side (each lane holds one database
/// connection at a time; the pool is shared with the live call path).
const REPLAY_LANES: usize = 8;

/// How many times a record failing for a reason that may pass is tried again (on other
/// connections) before the database, if it answers, is taken to refuse it for good.
const REPLAY_TRIES: u64 = 3;

/// How long a request that does not go through the journal (the dashboard, a timeline, Twilio
/// call set-up) may wait for the database.
const PASS_THROUGH_BOUND: Duration = Duration::from_secs(5);

/// Sends alerts that cannot wait for the database.
pub trait DirectAlerts: Send + Sync {
    /// A critical callback request was journaled: the on-call team must hear of it now.
    fn critical(&self, request: &NewCallbackRequest);
    /// The journal took over (`reason`: why the database was given up on).
    fn journal_in_use(&self, reason: &str);
    /// The journal was replayed into the database and is empty again.
    fn journal_drained(&self, replayed: u64);
}

/// Where the journal stands, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalStatus {
    /// Writes go to the journal (the database failed, or the replay is not done).
    pub journaling: bool,
    /// Records journaled and not yet replayed.
    pub depth: u64,
    /// When the oldest of them was journaled.
    pub oldest: Option<DateTime<Utc>>,
    /// Records replayed since the process started.
    pub replayed: u64,
    /// Records the database refused on replay (set aside in the journal's `rejected.log`).
    pub set_aside: u64,
}

struct State {
    journaling: bool,
    /// The last write given up on the database, and no probe has reached it since: lookups
    /// that memory cannot answer do not wait for it either.
    db_down: bool,
    /// The process started without reaching the database: migrations run before the replay.
    migrate_first: bool,
    /// Records queued to the segment being written since the last seal.
    unsealed: u64,
    status: JournalStatus,
    rows: Rows,
    /// Calls journaled under an id that the database already knew under another (the call
    /// existed, but could not be looked up during the outage): journal id → database id.
    aliases: HashMap<Uuid, Uuid>,
}

/// The store of the call path: the database within a budget, else the journal.
pub struct ResilientStore {
    inner: Arc<dyn Store>,
    journal: Journal,
    settings: JournalSettings,
    state: Mutex<State>,
    /// One replay at a time.
    replaying: tokio::sync::Mutex<()>,
    alerts: Mutex<Option<Arc<dyn DirectAlerts>>>,
    /// Critical requests an earlier process journaled: alerted again once alerts can be sent
    /// (that process may have died before it sent them).
    inherited_critical: Mutex<Vec<NewCallbackRequest>>,
    /// Bumped whenever the journal status changes.
    changed: watch::Sender<u64>,
}

/// Why a write was not made in the database.
enum Fallback {
    /// Journaling already: the database is not tried.
    Journaling,
    /// The budget ran out.
    Budget,
    /// The database failed (not because of the data).
    Failed(String),
}

impl Fallback {
    fn reason(&self, budget: Duration) -> String {
        match self {
            Self::Journaling => "the journal holds earlier writes".into(),
            Self::Budget => format!(
                "the database did not commit within {} ms",
                budget.as_millis()
            ),
            Self::Failed(e) => format!("the database failed: {e}"),
        }
    }
}

/// Whether `e` says the database (or the way to it) failed, rather than the data: such a write
/// may succeed later, so it is journaled.
pub fn is_transient(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => {
            matches!(db.kind(), sqlx::error::ErrorKind::Other)
        }
        StoreError::Database(e) => matches!(
            e,
            sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ),
        StoreError::Unavailable(_) => true,
        _ => false,
    }
}

impl ResilientStore {
    /// Wraps `inner`; the journal in `settings.dir` is opened (records an earlier process left
    /// there are replayed by [`ResilientStore::run`] before anything else is written to the
    /// database).
    pub fn open(inner: Arc<dyn Store>, settings: JournalSettings) -> std::io::Result<Arc<Self>> {
        let journal = Journal::open(&settings.dir)?;
        let aliases = apply::load_aliases(journal.dir())?;
        let left = super::journal::read_sealed(journal.dir(), u64::MAX, false)?;
        let depth: u64 = left.iter().map(|s| s.entries.len() as u64).sum();
        let oldest = left
            .iter()
            .flat_map(|s| s.entries.first())
            .map(|e| e.at)
            .min();
        let journaling = depth > 0;
        if journaling {
            tracing::warn!(
                records = depth,
                dir = %settings.dir.display(),
                "the journal holds records of an earlier process: they are replayed when the \
                 database answers; until then the call path writes to the journal"
            );
        }
        let inherited_critical: Vec<NewCallbackRequest> = left
            .iter()
            .flat_map(|s| &s.entries)
            .flat_map(|e| apply::critical_requests(&e.record))
            .cloned()
            .collect();
        let mut rows = Rows::default();
        // What the journal holds is answered from memory until it is replayed.
        for entry in left.iter().flat_map(|s| &s.entries) {
            rows.journaled(&entry.record);
        }
        let (changed, _) = watch::channel(0);
        let store = Arc::new(Self {
            inner,
            journal,
            settings,
            state: Mutex::new(State {
                journaling,
                db_down: false,
                migrate_first: false,
                unsealed: 0,
                status: JournalStatus {
                    journaling,
                    depth,
                    oldest,
                    ..JournalStatus::default()
                },
                rows,
                aliases,
            }),
            replaying: tokio::sync::Mutex::new(()),
            alerts: Mutex::new(None),
            inherited_critical: Mutex::new(inherited_critical),
            changed,
        });
        store.publish(&store.lock().status.clone());
        Ok(store)
    }

    /// The process started while the database was unreachable: lookups do not wait for it, and
    /// the migrations run (when it answers) before the journal is replayed.
    pub fn started_without_database(&self) {
        let mut state = self.lock();
        state.db_down = true;
        state.migrate_first = true;
    }

    /// Sends critical alerts and the journal's own alerts through `alerts`.
    pub fn set_alerts(&self, alerts: Arc<dyn DirectAlerts>) {
        let inherited = std::mem::take(
            &mut *self
                .inherited_critical
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for request in &inherited {
            alerts.critical(request);
        }
        *self.alerts.lock().unwrap_or_else(|p| p.into_inner()) = Some(alerts);
    }

    /// The database behind the journal (for the delivery worker, which needs no journal).
    pub fn inner(&self) -> Arc<dyn Store> {
        self.inner.clone()
    }

    /// Where the journal stands.
    pub fn status(&self) -> JournalStatus {
        self.lock().status.clone()
    }

    /// Changes whenever the journal status does (tests wait on it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The settings in force.
    pub fn settings(&self) -> &JournalSettings {
        &self.settings
    }

    /// Probes the database while the journal holds records and replays it when the database
    /// answers, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.settings.probe_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if self.journaling() {
                self.try_replay().await;
            }
        }
    }

    /// At the end of a process (after its last write): replays what the journal holds if the
    /// database answers, and says what is left for the next process otherwise.
    pub async fn finish(&self) {
        if !self.journaling() {
            return;
        }
        self.try_replay().await;
        let status = self.status();
        if status.journaling {
            tracing::error!(
                records = status.depth,
                dir = %self.settings.dir.display(),
                "stopping with records in the journal: the next process started with this \
                 journal directory replays them"
            );
        }
    }

    /// Replays the journal if the database answers; returns whether the journal is empty
    /// and writes go to the database again.
    pub async fn try_replay(&self) -> bool {
        match tokio::time::timeout(
            self.settings.read_budget.max(Duration::from_secs(1)),
            self.inner.ping(),
        )
        .await
        {
            Ok(Ok(())) => self.lock().db_down = false,
            _ => return false,
        }
        if self.lock().migrate_first {
            match self.inner.migrate().await {
                Ok(()) => self.lock().migrate_first = false,
                Err(e) => {
                    tracing::error!(error = %e, "the database answers but cannot be migrated; the journal waits");
                    return false;
                }
            }
        }
        match self.replay().await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "journal replay stopped; it is tried again");
                false
            }
        }
    }

    async fn replay(&self) -> Result<bool, String> {
        let _one = self.replaying.lock().await;
        let started = std::time::Instant::now();
        let mut replayed = 0u64;
        loop {
            let sealing = {
                let mut state = self.lock();
                state.unsealed = 0;
                self.journal.seal().map_err(|e| e.to_string())?
            };
            let below = sealing
                .await
                .map_err(|e| format!("sealing the journal: {e}"))?;
            let dir = self.journal.dir().to_path_buf();
            let segments = {
                let from = dir.clone();
                tokio::task::spawn_blocking(move || super::journal::read_sealed(&from, below, true))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("reading the journal {}: {e}", dir.display()))?
            };
            for mut segment in segments {
                let known = self.lock().aliases.clone();
                // Lanes are drawn on the ids the records will be written under.
                for entry in &mut segment.entries {
                    apply::remap(&mut entry.record, &known);
                }
                let before = known.len();
                let aliases = Mutex::new(known);
                let lanes = apply::lanes(&segment.entries);
                let outcomes: Vec<Result<(), String>> = futures_util::stream::iter(lanes)
                    .map(|lane| self.replay_lane(&segment.entries, lane, &aliases, &dir))
                    .buffer_unordered(REPLAY_LANES)
                    .collect()
                    .await;
                let aliases = aliases.into_inner().unwrap_or_else(|p| p.into_inner());
                if let Some(Err(e)) = outcomes.into_iter().find(Result::is_err) {
                    self.lock().aliases = aliases;
                    return Err(e);
                }
                let (to, path, learnt) = (dir.clone(), segment.path.clone(), aliases.clone());
                tokio::task::spawn_blocking(move || {
                    if learnt.len() != before {
                        // Before the segment that taught them is removed: later ones use them.
                        apply::save_aliases(&to, &learnt)
                            .map_err(|e| format!("saving the journal's call aliases: {e}"))?;
                    }
                    super::journal::remove(&to, &path)
                        .map_err(|e| format!("removing a replayed journal segment: {e}"))
                })
                .await
                .map_err(|e| e.to_string())??;
                let n = segment.entries.len() as u64;
                replayed += n;
                metrics::counter!("lifeline_journal_replayed_total").increment(n);
                if segment.set_aside > 0 {
                    metrics::counter!("lifeline_journal_set_aside_total")
                        .increment(segment.set_aside as u64);
                }
                let mut state = self.lock();
                state.aliases = aliases;
                state.status.depth = state.status.depth.saturating_sub(n);
                state.status.replayed += n;
                state.status.set_aside += segment.set_aside as u64;
                let status = state.status.clone();
                drop(state);
                self.publish(&status);
            }
            let mut state = self.lock();
            if state.unsealed == 0 {
                // Nothing was journaled since the seal: the database has everything, and from
                // now on writes go to it (the check and the switch hold the lock that every
                // journaled write takes to queue its record).
                state.journaling = false;
                state.status.journaling = false;
                state.status.depth = 0;
                state.status.oldest = None;
                state.rows.drained();
                let status = state.status.clone();
                drop(state);
                self.publish(&status);
                metrics::counter!("lifeline_journal_replays_total").increment(1);
                let elapsed = started.elapsed();
                tracing::warn!(
                    replayed,
                    elapsed_ms = elapsed.as_millis() as u64,
                    per_second = (replayed as f64 / elapsed.as_secs_f64().max(1e-6)).round(),
                    "journal replayed into the database; writes go to the database again"
                );
                if let Some(alerts) = self.alerts() {
                    alerts.journal_drained(replayed);
                }
                return Ok(true);
            }
        }
    }

    /// Applies one lane of a segment's records, in order. A record the database refuses for
    /// good is set aside; a failure of the database stops the lane (and the replay).
    async fn replay_lane(
        &self,
        entries: &[Entry],
        lane: Vec<usize>,
        aliases: &Mutex<HashMap<Uuid, Uuid>>,
        dir: &std::path::Path,
    ) -> Result<(), String> {
        for i in lane {
            let entry = &entries[i];
            let mut record = entry.record.clone();
            apply::remap(
                &mut record,
                &aliases.lock().unwrap_or_else(|p| p.into_inner()),
            );
            let mut tries = 0;
            let refused = loop {
                let mut learnt = HashMap::new();
                let applied = apply::apply(self.inner.as_ref(), &record, &mut learnt).await;
                aliases
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(learnt);
                match applied {
                    Ok(()) => break None,
                    // A connection that died with the outage fails once more when reused:
                    // try again on another before judging the record.
                    Err(e) if is_transient(&e) && tries < REPLAY_TRIES => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                    }
                    Err(e) if is_transient(&e) && !self.answers().await => {
                        return Err(format!("the database failed during the replay: {e}"));
                    }
                    // The database answers, yet keeps refusing this record: it never will
                    // take it.
                    Err(e) => break Some(e),
                }
            };
            let Some(refused) = refused else { continue };
            tracing::error!(
                op = record.op(),
                error = %refused,
                "the database refused a journaled record; it is set aside in rejected.log"
            );
            match apply::salvage_callbacks(self.inner.as_ref(), &record).await {
                Ok(0) => {}
                Ok(salvaged) => {
                    tracing::warn!(salvaged, "its callback requests were written on their own")
                }
                Err(e) if is_transient(&e) => {
                    return Err(format!("writing the callback of a refused record: {e}"));
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "its callback requests could not be written either: only rejected.log has them"
                ),
            }
            let line = serde_json::to_vec(entry).unwrap_or_default();
            let to = dir.to_path_buf();
            tokio::task::spawn_blocking(move || super::journal::segment::set_aside(&to, &[line]))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("keeping a refused record in rejected.log: {e}"))?;
            metrics::counter!("lifeline_journal_set_aside_total").increment(1);
            self.lock().status.set_aside += 1;
        }
        Ok(())
    }

    /// Whether the database answers a ping within the budget.
    async fn answers(&self) -> bool {
        matches!(
            tokio::time::timeout(
                self.settings.read_budget.max(Duration::from_secs(1)),
                self.inner.ping()
            )
            .await,
            Ok(Ok(()))
        )
    }

    /// A read outside the call path's fallbacks (timelines, lists): the database within a
    /// bound, so that a black-holed database cannot hold the caller.
    async fn bounded<T>(
        &self,
        read: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(PASS_THROUGH_BOUND, read).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the database did not answer within {} s",
                PASS_THROUGH_BOUND.as_secs()
            ))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alerts(&self) -> Option<Arc<dyn DirectAlerts>> {
        self.alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, status: &JournalStatus) {
        metrics::gauge!("lifeline_journal_depth").set(status.depth as f64);
        metrics::gauge!("lifeline_journal_active").set(if status.journaling { 1.0 } else { 0.0 });
        metrics::gauge!("lifeline_journal_oldest_timestamp_seconds")
            .set(status.oldest.map_or(0.0, |t| t.timestamp() as f64));
        self.changed.send_modify(|n| *n += 1);
    }

    fn journaling(&self) -> bool {
        self.lock().journaling
    }

    fn alias(&self, id: Uuid) -> Uuid {
        let state = self.lock();
        if state.aliases.is_empty() {
            return id;
        }
        state.aliases.get(&id).copied().unwrap_or(id)
    }

    /// Runs `direct` within the write budget unless the journal is in use; `None` means the
    /// write must be journaled, and why.
    async fn try_direct<T>(
        &self,
        direct: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<Result<T, Fallback>, StoreError> {
        if self.journaling() {
            return Ok(Err(Fallback::Journaling));
        }
        match tokio::time::timeout(self.settings.write_budget, direct).await {
            Ok(Ok(value)) => Ok(Ok(value)),
            Ok(Err(e)) if is_transient(&e) => Ok(Err(Fallback::Failed(e.to_string()))),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Err(Fallback::Budget)),
        }
    }

    /// Journals `record` (answering from memory with `answer`, which sees the rows before the
    /// record is applied to them); returns once the record is durable.
    async fn journal<T>(
        &self,
        why: Fallback,
        record: Record,
        answer: impl FnOnce(&mut Rows) -> T,
    ) -> Result<T, StoreError> {
        let entry = Entry {
            at: Utc::now(),
            record,
        };
        let (value, durable, started, status) = {
            let mut state = self.lock();
            let started = !state.journaling;
            let value = answer(&mut state.rows);
            let durable = self.journal.submit(&entry).map_err(|e| {
                StoreError::Unavailable(format!(
                    "neither the database nor the journal could record this: {e}"
                ))
            })?;
            state.rows.journaled(&entry.record);
            state.journaling = true;
            if !matches!(why, Fallback::Journaling) {
                state.db_down = true;
            }
            state.unsealed += 1;
            state.status.journaling = true;
            state.status.depth += 1;
            state.status.oldest.get_or_insert(entry.at);
            (value, durable, started, state.status.clone())
        };
        self.publish(&status);
        metrics::counter!("lifeline_journal_records_total", "op" => entry.record.op()).increment(1);
        if started {
            let reason = why.reason(self.settings.write_budget);
            tracing::error!(%reason, dir = %self.settings.dir.display(), "database unavailable: the call path writes to the journal");
            if let Some(alerts) = self.alerts() {
                alerts.journal_in_use(&reason);
            }
        }
        if let Err(e) = durable.await {
            let mut state = self.lock();
            state.rows.forget(&entry.record);
            state.status.depth = state.status.depth.saturating_sub(1);
            drop(state);
            return Err(StoreError::Unavailable(format!(
                "neither the database nor the journal could record this: {e}"
            )));
        }
        if let Some(alerts) = self.alerts() {
            for request in apply::critical_requests(&entry.record) {
                alerts.critical(request);
            }
        }
        Ok(value)
    }

    /// A read of the call path: the database within the read budget (the rows in memory first
    /// while journaling, since the database lacks what the journal holds), else memory.
    async fn read<T>(
        &self,
        from_rows: impl Fn(&Rows) -> Option<T>,
        from_db: impl Future<Output = Result<T, StoreError>>,
        remember: impl FnOnce(&mut Rows, &T),
        fallback: T,
    ) -> Result<T, StoreError> {
        {
            let state = self.lock();
            if state.journaling {
                if let Some(found) = from_rows(&state.rows) {
                    return Ok(found);
                }
                if state.db_down {
                    return Ok(fallback);
                }
            }
        }
        match tokio::time::timeout(self.settings.read_budget, from_db).await {
            Ok(Ok(value)) => {
                remember(&mut self.lock().rows, &value);
                Ok(value)
            }
            Ok(Err(e)) if !is_transient(&e) => Err(e),
            _ => Ok(from_rows(&self.lock().rows).unwrap_or(fallback)),
        }
    }
}

#[async_trait]
impl Store for ResilientStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(
            self.settings.read_budget.max(Duration::from_secs(1)),
            self.inner.ping(),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            )),
        }
    }

    async fn migration_report(&self) -> Result<MigrationReport, StoreError> {
        match tokio::time::timeout(
            self.settings.read_budget.max(Duration::from_secs(1)),
            self.inner.migration_report(),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            )),
        }
    }

    async fn upsert_call(&self, call: &NewCall) -> Result<CallRow, StoreError> {
        match self.try_direct(self.inner.upsert_call(call)).await? {
            Ok(row) => {
                self.lock().rows.call(&row);
                Ok(row)
            }
            Err(why) => {
                let platform = call.platform.as_str();
                if let Some(known) = self.lock().rows.call_by_ref(platform, &call.call_ref) {
                    return Ok(known);
                }
                self.journal(why, Record::UpsertCall { call: call.clone() }, |_| {
                    CallRow::new_call(call)
                })
                .await
            }
        }
    }

    async fn find_call(
        &self,
        platform: Platform,
        call_ref: &str,
    ) -> Result<Option<CallRow>, StoreError> {
        self.read(
            |rows| rows.call_by_ref(platform.as_str(), call_ref).map(Some),
            self.inner.find_call(platform, call_ref),
            |rows, found| {
                if let Some(row) = found {
                    rows.call(row);
                }
            },
            None,
        )
        .await
    }

    async fn find_call_by_ultravox_id(
        &self,
        ultravox_call_id: &str,
    ) -> Result<Option<CallRow>, StoreError> {
        self.read(
            |rows| rows.call_by_ultravox(ultravox_call_id).map(Some),
            self.inner.find_call_by_ultravox_id(ultravox_call_id),
            |rows, found| {
                if let Some(row) = found {
                    rows.call(row);
                }
            },
            None,
        )
        .await
    }

    async fn mark_app_started(&self, call_id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let call_id = self.alias(call_id);
        match self
            .try_direct(self.inner.mark_app_started(call_id, at))
            .await?
        {
            Ok(()) => Ok(()),
            Err(why) => {
                self.journal(why, Record::AppStarted { call_id, at }, |_| ())
                    .await
            }
        }
    }

    async fn record_call_status(
        &self,
        call_id: Uuid,
        update: &CallStatusUpdate,
    ) -> Result<(), StoreError> {
        let call_id = self.alias(call_id);
        match self
            .try_direct(self.inner.record_call_status(call_id, update))
            .await?
        {
            Ok(()) => {
                self.lock().rows.status(call_id, update);
                Ok(())
            }
            Err(why) => {
                let record = Record::CallStatus {
                    call_id,
                    update: update.clone(),
                };
                self.journal(why, record, |_| ()).await
            }
        }
    }

    async fn set_ultravox_call_id(
        &self,
        call_id: Uuid,
        ultravox_call_id: &str,
    ) -> Result<(), StoreError> {
        let call_id = self.alias(call_id);
        match self
            .try_direct(self.inner.set_ultravox_call_id(call_id, ultravox_call_id))
            .await?
        {
            Ok(()) => {
                self.lock().rows.link(call_id, ultravox_call_id);
                Ok(())
            }
            Err(why) => {
                if let Some(linked) = self.lock().rows.linked_elsewhere(call_id, ultravox_call_id) {
                    return Err(StoreError::Conflict(format!(
                        "call {call_id} is already linked to another Ultravox call ({linked})"
                    )));
                }
                let record = Record::UltravoxLink {
                    call_id,
                    ultravox_call_id: ultravox_call_id.to_string(),
                };
                self.journal(why, record, |_| ()).await
            }
        }
    }

    async fn append_call_event(&self, event: &NewCallEvent) -> Result<(), StoreError> {
        let mut event = std::borrow::Cow::Borrowed(event);
        let mapped = self.alias(event.call_id);
        if mapped != event.call_id {
            event.to_mut().call_id = mapped;
        }
        match self
            .try_direct(self.inner.append_call_event(&event))
            .await?
        {
            Ok(()) => Ok(()),
            Err(why) => {
                let record = Record::CallEvent {
                    event: event.into_owned(),
                };
                self.journal(why, record, |_| ()).await
            }
        }
    }

    async fn call_events(&self, call_id: Uuid) -> Result<Vec<CallEventRow>, StoreError> {
        // On the call path (a transfer gate's verdict is read back when the dial ends): within
        // the read budget, else none (the verdict then counts as a plain decline).
        self.read(
            |_| None,
            self.inner.call_events(self.alias(call_id)),
            |_, _| {},
            Vec::new(),
        )
        .await
    }

    async fn begin_invocation(
        &self,
        log: &NewToolCallLog,
        plan: &Plan,
        windows: &CountWindows,
        check: LimitCheck<'_>,
    ) -> Result<Begun, StoreError> {
        let mut log = std::borrow::Cow::Borrowed(log);
        if let Some(call_id) = log.call_id {
            let mapped = self.alias(call_id);
            if mapped != call_id {
                log.to_mut().call_id = Some(mapped);
            }
        }
        let plan = &apply::plan_with_alias(plan, &self.lock().aliases);
        match self
            .try_direct(self.inner.begin_invocation(&log, plan, windows, check))
            .await?
        {
            Ok(begun) => Ok(begun),
            Err(why) => {
                // Decided here, from what this instance knows (the per-call limits of the
                // in-memory admission already hold across the outage).
                let decided = {
                    let state = self.lock();
                    match state.rows.invocation(
                        log.platform.as_str(),
                        &log.call_ref,
                        &log.invocation_key,
                    ) {
                        Some(row) => Err(row),
                        None => Ok(state.rows.count(&log, windows)),
                    }
                };
                let counts = match decided {
                    Err(row) => return Ok(Begun::Duplicate(Box::new(row))),
                    Ok(counts) => counts,
                };
                let (plan, begun) = match check(&counts) {
                    Some(refusal) => {
                        let outcome = Recorded::of(&Err(refusal), Utc::now(), 0.0);
                        (Plan::Fail(outcome.clone()), Begun::Recorded(outcome))
                    }
                    None => {
                        let begun = match plan.as_ref() {
                            Plan::Run => Begun::Running,
                            Plan::Complete { outcome, .. } | Plan::Fail(outcome) => {
                                Begun::Recorded(outcome.clone())
                            }
                        };
                        (plan.clone().into_owned(), begun)
                    }
                };
                let record = Record::BeginInvocation {
                    log: log.into_owned(),
                    plan,
                };
                self.journal(why, record, |_| begun).await
            }
        }
    }

    async fn finish_invocation(&self, log_id: Uuid, outcome: &Recorded) -> Result<(), StoreError> {
        match self
            .try_direct(self.inner.finish_invocation(log_id, outcome))
            .await?
        {
            Ok(()) => Ok(()),
            Err(why) => {
                let record = Record::FinishInvocation {
                    log_id,
                    outcome: outcome.clone(),
                };
                self.journal(why, record, |_| ()).await
            }
        }
    }

    async fn tool_call_log(&self, id: Uuid) -> Result<Option<ToolCallLogRow>, StoreError> {
        self.read(
            |rows| rows.log(id).map(Some),
            self.inner.tool_call_log(id),
            |_, _| {},
            None,
        )
        .await
    }

    async fn find_invocation(
        &self,
        platform: Platform,
        call_ref: &str,
        invocation_key: &str,
    ) -> Result<Option<ToolCallLogRow>, StoreError> {
        self.read(
            |rows| {
                rows.invocation(platform.as_str(), call_ref, invocation_key)
                    .map(Some)
            },
            self.inner
                .find_invocation(platform, call_ref, invocation_key),
            |_, _| {},
            None,
        )
        .await
    }

    async fn tool_call_logs_for_call(
        &self,
        platform: Platform,
        call_ref: &str,
    ) -> Result<Vec<ToolCallLogRow>, StoreError> {
        self.bounded(self.inner.tool_call_logs_for_call(platform, call_ref))
            .await
    }

    async fn start_transfer(
        &self,
        attempt: &NewTransferAttempt,
    ) -> Result<TransferStart, StoreError> {
        let mut attempt = std::borrow::Cow::Borrowed(attempt);
        let mapped = self.alias(attempt.call_id);
        if mapped != attempt.call_id {
            attempt.to_mut().call_id = mapped;
        }
        match self.try_direct(self.inner.start_transfer(&attempt)).await? {
            Ok(started) => {
                if matches!(started, TransferStart::Started) {
                    self.lock().rows.attempt(rows::new_attempt_row(&attempt));
                }
                Ok(started)
            }
            Err(why) => {
                if let Some(dialing) = self.lock().rows.dialing(attempt.call_id) {
                    return Ok(TransferStart::AlreadyDialing(Box::new(dialing)));
                }
                let record = Record::StartTransfer {
                    attempt: attempt.into_owned(),
                };
                self.journal(why, record, |_| TransferStart::Started).await
            }
        }
    }

    async fn dialing_transfer(
        &self,
        call_id: Uuid,
    ) -> Result<Option<TransferAttemptRow>, StoreError> {
        let call_id = self.alias(call_id);
        if self.journaling()
            && let Some(known) = self.lock().rows.attempt_state(call_id)
        {
            return Ok(known);
        }
        self.read(
            |rows| rows.dialing(call_id).map(Some),
            self.inner.dialing_transfer(call_id),
            |rows, found| {
                if let Some(row) = found {
                    rows.attempt(row.clone());
                }
            },
            None,
        )
        .await
    }

    async fn transfer_attempt(&self, id: Uuid) -> Result<Option<TransferAttemptRow>, StoreError> {
        self.read(
            |rows| rows.attempt_by_id(id).map(Some),
            self.inner.transfer_attempt(id),
            |rows, found| {
                if let Some(row) = found {
                    rows.attempt(row.clone());
                }
            },
            None,
        )
        .await
    }

    async fn transfer_attempts(
        &self,
        call_id: Uuid,
    ) -> Result<Vec<TransferAttemptRow>, StoreError> {
        // On the call path (the chain's start, for its ring budget): within the read budget,
        // else the attempts memory holds.
        let call_id = self.alias(call_id);
        self.read(
            |rows| {
                let found = rows.attempts_of(call_id);
                (!found.is_empty()).then_some(found)
            },
            self.inner.transfer_attempts(call_id),
            |_, _| {},
            Vec::new(),
        )
        .await
    }

    async fn finish_transfer(&self, finish: &TransferFinish) -> Result<bool, StoreError> {
        let finish = &apply::finish_with_alias(finish, &self.lock().aliases);
        match self.try_direct(self.inner.finish_transfer(finish)).await? {
            Ok(ended) => {
                if ended {
                    self.lock().rows.finished(finish);
                }
                Ok(ended)
            }
            Err(why) => {
                if self.lock().rows.already_ended(finish.attempt_id) {
                    return Ok(false);
                }
                let record = Record::FinishTransfer {
                    finish: finish.clone().into_owned(),
                };
                self.journal(why, record, |_| true).await
            }
        }
    }

    async fn mark_transfer_answered(
        &self,
        attempt_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        match self
            .try_direct(self.inner.mark_transfer_answered(attempt_id, at))
            .await?
        {
            Ok(marked) => {
                if marked {
                    self.lock().rows.answered(attempt_id, at);
                }
                Ok(marked)
            }
            Err(why) => {
                if self.lock().rows.already_ended(attempt_id) {
                    return Ok(false);
                }
                let call_id = self
                    .lock()
                    .rows
                    .attempt_by_id(attempt_id)
                    .map(|a| a.call_id);
                let record = Record::TransferAnswered {
                    attempt_id,
                    at,
                    call_id,
                };
                self.journal(why, record, |_| true).await
            }
        }
    }

    async fn dialing_attempts(&self) -> Result<Vec<DialingAttempt>, StoreError> {
        // The reconciler waits for the replay: the journal may hold these attempts' outcomes.
        if self.journaling() {
            return Ok(Vec::new());
        }
        self.inner.dialing_attempts().await
    }

    async fn pending_invocations(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ToolCallLogRow>, StoreError> {
        if self.journaling() {
            return Ok(Vec::new());
        }
        self.inner.pending_invocations(before, limit).await
    }

    async fn abandon_invocation(
        &self,
        log_id: Uuid,
        outcome: &Recorded,
        callback: Option<&NewCallbackRequest>,
    ) -> Result<bool, StoreError> {
        self.inner
            .abandon_invocation(log_id, outcome, callback)
            .await
    }

    async fn insert_callback_request(
        &self,
        request: &NewCallbackRequest,
    ) -> Result<(), StoreError> {
        let mut request = std::borrow::Cow::Borrowed(request);
        if let Some(call_id) = request.call_id {
            let mapped = self.alias(call_id);
            if mapped != call_id {
                request.to_mut().call_id = Some(mapped);
            }
        }
        match self
            .try_direct(self.inner.insert_callback_request(&request))
            .await?
        {
            Ok(()) => Ok(()),
            Err(why) => {
                let record = Record::CallbackRequest {
                    request: request.into_owned(),
                };
                self.journal(why, record, |_| ()).await
            }
        }
    }

    async fn callback_requests(
        &self,
        filter: &CallbackFilter,
    ) -> Result<Vec<CallbackRequestRow>, StoreError> {
        let listed = self.bounded(self.inner.callback_requests(filter)).await;
        match listed {
            // Asked about one call (has a message been taken?): while the database cannot
            // say, "none" leads to ringing the on-call team, which never drops the caller.
            Err(e) if filter.call_id.is_some() && is_transient(&e) => {
                tracing::warn!(error = %e, "callback requests of the call unknown: the database does not answer");
                Ok(Vec::new())
            }
            other => other,
        }
    }
}

mod delegate;
