//! The callback delivery worker: claims due callback requests (most urgent first), POSTs them to
//! the tenant's frontend, records every attempt, retries on a schedule, turns what cannot be
//! delivered into a dead letter, and alerts on-call staff about dead letters and critical
//! requests.
//!
//! Any number of workers may share a database (in `lifeline serve`, or as `lifeline worker`
//! processes): claims are leases, completions are fenced on the claim's attempt number, and an
//! expired lease (a worker that died mid-delivery) is returned by any worker's rescuer. Workers
//! wake on the store's queue signal (`LISTEN/NOTIFY` on PostgreSQL), and poll only as a fallback.

pub mod alerts;
pub mod clock;
pub mod delivery;
pub mod direct_alerts;
pub mod gate;
pub mod paging;
pub mod schedule;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::breaker::{CircuitBreaker, Clock, SystemClock};
use crate::config::{Config, DeliverySettings, Frontend};
use crate::store::{
    AlertOutcome, AlertRecord, CallbackRequestRow, ClaimedAlert, DeliveryOutcome, DeliveryRecord,
    Store, StoreError,
};

use clock::{InstantsOf, SystemWallClock, WallClock};
use delivery::Verdict;
use gate::{FrontendLine, frontend_unavailable};

/// The shortest time between two claims a queue signal starts (see [`Worker::run`]).
const WAKE_GATHER: Duration = Duration::from_millis(10);

/// Alerts claimed per query (they are few, and each may send several messages).
const ALERT_BATCH: i64 = 10;

/// One delivery worker.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    config: Arc<Config>,
    store: Arc<dyn Store>,
    http: reqwest::Client,
    clock: Arc<dyn WallClock>,
    /// One breaker per frontend URL (a frontend that is down is left alone for a while instead
    /// of being sent every due request), with the due time its waiting requests share while
    /// it is down (see [`gate`]).
    lines: HashMap<String, Arc<FrontendLine>>,
    /// Whether any frontend is configured; without one, requests wait for staff (and the
    /// dashboard) and only alerts are sent.
    delivers: bool,
}

/// What one pass of [`Worker::run_once`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub rescued: u64,
    pub delivered: u32,
    pub retried: u32,
    pub dead_lettered: u32,
    /// Put back without an attempt because the frontend's circuit was open.
    pub deferred: u32,
    /// Completed after the lease was lost (another worker owns the request now).
    pub fenced_out: u32,
    pub alerts: u32,
}

impl PassReport {
    fn add(&mut self, other: PassReport) {
        self.rescued += other.rescued;
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.deferred += other.deferred;
        self.fenced_out += other.fenced_out;
        self.alerts += other.alerts;
    }

    /// Requests and alerts handled.
    pub fn handled(&self) -> u32 {
        self.delivered + self.retried + self.dead_lettered + self.deferred + self.alerts
    }
}

/// A claimed unit of work.
enum Job {
    Callback(Box<CallbackRequestRow>),
    Alert(Box<ClaimedAlert>),
}

/// What a job holds, so that its lease can be given back if it is cut short.
#[derive(Debug, Clone)]
enum JobKey {
    Callback {
        id: Uuid,
        attempt: i32,
    },
    Alert {
        id: Uuid,
        kind: String,
        attempt: i32,
    },
}

impl Job {
    fn key(&self) -> JobKey {
        match self {
            Job::Callback(r) => JobKey::Callback {
                id: r.id,
                attempt: r.delivery_attempt,
            },
            Job::Alert(a) => JobKey::Alert {
                id: a.alert.callback_request_id,
                kind: a.alert.kind.clone(),
                attempt: a.alert.attempt,
            },
        }
    }
}

impl Worker {
    /// A worker on `store` with the delivery, worker and alert settings of `config`.
    pub fn new(config: Arc<Config>, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(config.worker.concurrency)
            .user_agent(concat!("lifeline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let lines = gate::lines(&config, &(Arc::new(SystemClock) as Arc<dyn Clock>));
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "lifeline".into());
        let id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Ok(Self {
            inner: Arc::new(Inner {
                id,
                delivers: !lines.is_empty(),
                config,
                store,
                http,
                clock: Arc::new(SystemWallClock),
                lines,
            }),
        })
    }

    /// The same worker reading time from `clock` (tests move it instead of waiting), its
    /// frontends' circuit breakers included.
    pub fn with_clock(self, clock: Arc<dyn WallClock>) -> Self {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            panic!("with_clock must be called before the worker is cloned or started")
        });
        let instants: Arc<dyn Clock> = Arc::new(InstantsOf::new(clock.clone()));
        let lines = inner
            .lines
            .iter()
            .map(|(url, line)| {
                let breaker = CircuitBreaker::with_clock(
                    line.breaker.api(),
                    line.breaker.settings(),
                    instants.clone(),
                );
                let line = FrontendLine::new(Arc::new(breaker), line.scope.clone());
                (url.clone(), Arc::new(line))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                clock,
                lines,
                ..inner
            }),
        }
    }

    /// This worker's id, as written in leases and attempt records.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// One pass: returns expired leases, claims one batch, handles every claimed request and
    /// alert, and reports. The loop of [`Worker::run`] does the same continuously.
    pub async fn run_once(&self) -> Result<PassReport, StoreError> {
        let mut report = PassReport {
            rescued: self.inner.rescue().await?,
            ..PassReport::default()
        };
        let batch = i64::from(self.inner.config.worker.batch_size);
        let (jobs, _) = self.inner.claim(batch).await?;
        let mut set = JoinSet::new();
        for job in jobs {
            set.spawn(self.inner.clone().handle(job));
        }
        while let Some(done) = set.join_next().await {
            match done {
                Ok(r) => report.add(r),
                // A bug in a job: let the caller see it as it was.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => tracing::error!(error = %e, "a delivery task was cancelled"),
            }
        }
        self.page_once().await?;
        Ok(report)
    }

    /// One pass of paging and caller texts ([`paging`]): pages due, re-pages, reminders, texts
    /// to callers. [`Worker::run_once`] makes one too; [`Worker::run`] makes one every
    /// `worker.poll_interval`.
    pub async fn page_once(&self) -> Result<paging::PagingReport, StoreError> {
        let inner = &self.inner;
        paging::pass(
            &inner.http,
            &inner.config,
            inner.store.as_ref(),
            inner.clock.as_ref(),
            inner.config.worker.lease,
        )
        .await
    }

    /// Runs until `shutdown` turns true; then stops claiming, lets in-flight deliveries finish
    /// within `worker.shutdown_grace`, and gives back the leases of those that did not.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let inner = self.inner;
        let settings = inner.config.worker.clone();
        let mut signal = inner.store.queue_signal();
        tracing::info!(
            worker = %inner.id,
            delivers = inner.delivers,
            batch_size = settings.batch_size,
            concurrency = settings.concurrency,
            "delivery worker started"
        );
        if !inner.delivers {
            tracing::warn!(
                "no frontend configured (delivery.frontend_url or [tenants.frontend]): callback \
                 requests stay pending for staff; only alerts are sent"
            );
        }
        for t in &inner.config.tenants {
            if alerts::targets(&inner.config, Some(t)).is_empty() {
                tracing::warn!(
                    tenant = %t.id,
                    "no alert contacts ([tenants.alerts] or alerts.webhook_url): this tenant's \
                     critical requests and dead letters alert nobody"
                );
            }
        }
        match inner.rescue().await {
            Ok(n) if n > 0 => tracing::info!(rescued = n, "returned expired leases at start-up"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "could not return expired leases"),
        }

        // Claims are refilled in batches, not one row per finished delivery: a claim is a
        // round trip and a commit, and claiming single rows caps throughput at one claim
        // latency per delivery.
        let batch = usize::try_from(settings.batch_size).unwrap_or(1);
        let refill_at = settings
            .concurrency
            .saturating_sub(batch.min(settings.concurrency / 2).max(1));
        // Paging runs beside deliveries, so that a slow frontend never delays a page.
        let pager = {
            let worker = Worker {
                inner: inner.clone(),
            };
            let mut shutdown = shutdown.clone();
            let every = settings.poll_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if let Err(e) = worker.page_once().await {
                                tracing::error!(error = %e, "paging pass failed; trying again at the next poll");
                            }
                        }
                        changed = shutdown.changed() => {
                            if changed.is_err() || *shutdown.borrow() {
                                break;
                            }
                        }
                    }
                }
            })
        };
        let mut inflight: JoinSet<PassReport> = JoinSet::new();
        let mut keys: HashMap<tokio::task::Id, JobKey> = HashMap::new();
        let mut more = true;
        let mut last_claim = tokio::time::Instant::now();
        let mut poll = tokio::time::interval(settings.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rescue = tokio::time::interval(settings.rescue_interval);
        rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        rescue.reset();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if more && inflight.len() <= refill_at {
                // Seen before claiming: work queued from here on wakes us again.
                signal.borrow_and_update();
                last_claim = tokio::time::Instant::now();
                let free = settings.concurrency - inflight.len();
                let want = i64::try_from(free)
                    .unwrap_or(i64::MAX)
                    .min(i64::from(settings.batch_size));
                match inner.claim(want).await {
                    Ok((jobs, full)) => {
                        more = full;
                        for job in jobs {
                            let key = job.key();
                            let handle = inflight.spawn(inner.clone().handle(job));
                            keys.insert(handle.id(), key);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "claiming work failed; trying again at the next poll");
                        more = false;
                    }
                }
                if more && inflight.len() <= refill_at {
                    // A full batch: there is probably more, fetch again at once.
                    continue;
                }
            }
            tokio::select! {
                Some(done) = inflight.join_next_with_id(), if !inflight.is_empty() => {
                    match done {
                        Ok((id, _)) => { keys.remove(&id); }
                        Err(e) => {
                            // The lease stays until it expires; then the request is rescued.
                            keys.remove(&e.id());
                            tracing::error!(error = %e, "a delivery task failed");
                        }
                    }
                }
                changed = signal.changed() => {
                    if changed.is_err() {
                        // The store is gone; polling is all that is left.
                        signal = inner.store.queue_signal();
                    }
                    // Under call load every commit signals: one claim per commit would be a
                    // query per tool call. Claims follow each other at most this often, and
                    // the work queued meanwhile is claimed together.
                    tokio::time::sleep_until(last_claim + WAKE_GATHER).await;
                    more = true;
                }
                _ = poll.tick() => more = true,
                _ = rescue.tick() => {
                    match inner.rescue().await {
                        Ok(n) if n > 0 => {
                            tracing::warn!(rescued = n, "returned expired leases (a worker stopped mid-delivery)");
                            more = true;
                        }
                        Ok(_) => {}
                        Err(e) => tracing::error!(error = %e, "could not return expired leases"),
                    }
                }
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // Whoever could tell us to stop is gone: stop now.
                        break;
                    }
                }
            }
        }

        tracing::info!(
            worker = %inner.id,
            in_flight = inflight.len(),
            "delivery worker stopping: no more claims"
        );
        let deadline = tokio::time::Instant::now() + settings.shutdown_grace;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, inflight.join_next_with_id()).await {
                Ok(Some(Ok((id, _)))) => {
                    keys.remove(&id);
                }
                Ok(Some(Err(e))) => {
                    keys.remove(&e.id());
                }
                Ok(None) | Err(_) => break,
            }
        }
        inflight.abort_all();
        pager.abort();
        while inflight.join_next().await.is_some() {}
        for key in keys.into_values() {
            let released = match &key {
                JobKey::Callback { id, attempt } => {
                    inner
                        .store
                        .release_callback(*id, *attempt, &inner.id, inner.clock.now())
                        .await
                }
                JobKey::Alert { id, kind, attempt } => {
                    inner
                        .store
                        .release_alert(*id, kind, *attempt, &inner.id)
                        .await
                }
            };
            if let Err(e) = released {
                tracing::error!(error = %e, ?key, "could not release a lease; it expires by itself");
            }
        }
        tracing::info!(worker = %inner.id, "delivery worker stopped");
    }
}

impl Inner {
    async fn rescue(&self) -> Result<u64, StoreError> {
        let n = self.store.rescue_expired(self.clock.now()).await?;
        if n > 0 {
            metrics::counter!("lifeline_leases_rescued_total").increment(n);
        }
        Ok(n)
    }

    /// Claims up to `limit` jobs (alerts first: they are few and tell people to act); says
    /// whether a claim came back full, i.e. there is probably more.
    async fn claim(&self, limit: i64) -> Result<(Vec<Job>, bool), StoreError> {
        let now = self.clock.now();
        let lease_until = now
            + chrono::Duration::from_std(self.config.worker.lease)
                .unwrap_or(chrono::Duration::seconds(60));
        let want_alerts = limit.min(ALERT_BATCH);
        let alerts = self
            .store
            .claim_alerts(&self.id, now, lease_until, want_alerts)
            .await?;
        let mut full = i64::try_from(alerts.len()).unwrap_or(0) == want_alerts;
        let mut jobs: Vec<Job> = alerts
            .into_iter()
            .map(|a| Job::Alert(Box::new(a)))
            .collect();
        let want = limit - i64::try_from(jobs.len()).unwrap_or(0);
        if self.delivers && want > 0 {
            let requests = self
                .store
                .claim_callbacks(&self.id, now, lease_until, want)
                .await?;
            full |= i64::try_from(requests.len()).unwrap_or(0) == want;
            jobs.extend(requests.into_iter().map(|r| Job::Callback(Box::new(r))));
        }
        Ok((jobs, full))
    }

    async fn handle(self: Arc<Self>, job: Job) -> PassReport {
        match job {
            Job::Callback(request) => self.deliver(&request).await,
            Job::Alert(alert) => self.alert(&alert).await,
        }
    }

    fn frontend_for(&self, tenant_id: &str) -> Option<&Frontend> {
        self.config
            .tenant(tenant_id)
            .and_then(|t| t.frontend.as_ref())
            .or(self.config.delivery.frontend.as_ref())
    }

    /// Delivers one claimed request and records the attempt.
    async fn deliver(&self, request: &CallbackRequestRow) -> PassReport {
        let mut report = PassReport::default();
        let settings = &self.config.delivery;
        let started_at = self.clock.now();
        let Some(frontend) = self.frontend_for(&request.tenant_id) else {
            let record = self.record(
                request,
                started_at,
                None,
                DeliveryOutcome::DeadLetter {
                    reason: format!("no frontend configured for tenant {:?}", request.tenant_id),
                    rejected: false,
                },
            );
            self.save(&record, &mut report).await;
            return report;
        };
        let line = self.lines.get(&frontend.url);
        let permit = match line.map(|l| l.breaker.acquire()).transpose() {
            Ok(p) => p,
            Err(open) => {
                let line = line.expect("a refusal comes from a breaker");
                // Left alone until the circuit lets trials through, due with every other
                // waiting request of this frontend (see `gate`) ...
                let mut gate = line.hold().await;
                let now = self.clock.now();
                let at = gate.deferred_until(self.store.as_ref(), now).await;
                let outcome = if past_patience(settings, request.created_at, now) {
                    // ... but not past the whole retry schedule: a request that would have been
                    // a dead letter by now becomes one, so that staff are alerted.
                    DeliveryOutcome::DeadLetter {
                        reason: format!(
                            "frontend unreachable ({open}) and the request is {} minutes old, past its retry schedule",
                            (now - request.created_at).num_minutes()
                        ),
                        rejected: false,
                    }
                } else {
                    DeliveryOutcome::Deferred { at }
                };
                let mut record = self.record(request, started_at, None, outcome);
                record.error = Some(open.to_string());
                self.save(&record, &mut report).await;
                return report;
            }
        };
        let answer = delivery::post(
            &self.http,
            frontend,
            request,
            request.delivery_attempt,
            settings.timeout,
            started_at,
        )
        .await;
        let trial = permit.as_ref().is_some_and(|p| p.is_trial());
        if let Some(p) = permit {
            // A refusal means the frontend is up: only no answer, 408, 429 and 5xx count
            // against it.
            p.record(!matches!(answer.verdict, Verdict::Retry { .. }));
        }
        // A failure's due time depends on the circuit: decided and saved with the gate held.
        let mut held = match (&answer.verdict, line) {
            (Verdict::Retry { .. }, Some(line)) => Some(line.hold().await),
            _ => None,
        };
        let finished = self.clock.now();
        let outcome = match &answer.verdict {
            Verdict::Delivered => DeliveryOutcome::Delivered,
            Verdict::Rejected => DeliveryOutcome::DeadLetter {
                reason: format!(
                    "frontend refused the request: {}",
                    answer.error.as_deref().unwrap_or("rejected")
                ),
                rejected: true,
            },
            Verdict::Retry { retry_after } => {
                let gate = match held.as_mut() {
                    Some(held) => held.due_at(self.store.as_ref(), finished).await,
                    None => None,
                };
                failure_outcome(
                    settings,
                    request.retry_count,
                    request.created_at,
                    &Failure {
                        at: finished,
                        retry_after: *retry_after,
                        trial,
                        unavailable: frontend_unavailable(answer.status),
                        gate,
                        error: answer.error.as_deref().unwrap_or("failed"),
                    },
                )
            }
        };
        let mut record = self.record(request, started_at, answer.status, outcome);
        record.finished_at = finished;
        record.latency_ms = answer.latency.as_secs_f64() * 1000.0;
        record.error = answer.error;
        // The original column holds the frontend's JSON answer; a text answer is kept as a
        // JSON string, so a dead letter shows what the frontend last said either way.
        record.frontend_response = answer
            .json
            .or_else(|| answer.excerpt.clone().map(serde_json::Value::String));
        record.response_excerpt = answer.excerpt;
        metrics::histogram!("lifeline_delivery_latency_seconds")
            .record(answer.latency.as_secs_f64());
        self.save(&record, &mut report).await;
        drop(held);
        report
    }

    fn record(
        &self,
        request: &CallbackRequestRow,
        at: chrono::DateTime<chrono::Utc>,
        status: Option<reqwest::StatusCode>,
        outcome: DeliveryOutcome,
    ) -> DeliveryRecord {
        DeliveryRecord {
            request_id: request.id,
            attempt: request.delivery_attempt,
            worker_id: self.id.clone(),
            started_at: at,
            finished_at: at,
            latency_ms: 0.0,
            status_code: status.map(|s| i32::from(s.as_u16())),
            error: None,
            response_excerpt: None,
            frontend_response: None,
            outcome,
        }
    }

    /// Writes the attempt's outcome, retrying briefly if the database hiccups: the POST
    /// happened, and forgetting that would post it again (harmless thanks to the
    /// `Idempotency-Key`, but noisy).
    async fn save(&self, record: &DeliveryRecord, report: &mut PassReport) {
        let saved = (|| async { self.store.record_delivery(record).await })
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_times(4),
            )
            .await;
        let outcome = record.outcome.as_str();
        match saved {
            Ok(true) => {
                match &record.outcome {
                    DeliveryOutcome::Delivered => report.delivered += 1,
                    DeliveryOutcome::Retry { .. } => report.retried += 1,
                    DeliveryOutcome::DeadLetter { .. } => report.dead_lettered += 1,
                    DeliveryOutcome::Deferred { .. } => report.deferred += 1,
                }
                metrics::counter!("lifeline_deliveries_total", "outcome" => outcome).increment(1);
                if let DeliveryOutcome::DeadLetter { reason, .. } = &record.outcome {
                    metrics::counter!("lifeline_dead_letters_total").increment(1);
                    tracing::error!(
                        callback_request = %record.request_id,
                        attempt = record.attempt,
                        status = record.status_code,
                        %reason,
                        "callback request is a dead letter; an alert to on-call staff is queued"
                    );
                } else {
                    tracing::info!(
                        callback_request = %record.request_id,
                        attempt = record.attempt,
                        status = record.status_code,
                        outcome,
                        latency_ms = record.latency_ms,
                        error = record.error.as_deref(),
                        "delivery attempt"
                    );
                }
            }
            Ok(false) => {
                report.fenced_out += 1;
                tracing::warn!(
                    callback_request = %record.request_id,
                    attempt = record.attempt,
                    outcome,
                    "lease lost before the attempt was recorded: another worker or staff owns the request now"
                );
            }
            Err(e) if record.frontend_response.is_some() || record.response_excerpt.is_some() => {
                // What the frontend said may be what the database refuses: record the outcome
                // without it rather than post the request again and again.
                tracing::warn!(
                    callback_request = %record.request_id,
                    error = %e,
                    "could not record a delivery attempt; recording it without the frontend's answer"
                );
                let bare = DeliveryRecord {
                    frontend_response: None,
                    response_excerpt: None,
                    ..record.clone()
                };
                Box::pin(self.save(&bare, report)).await;
            }
            Err(e) => {
                tracing::error!(
                    callback_request = %record.request_id,
                    attempt = record.attempt,
                    outcome,
                    error = %e,
                    "could not record a delivery attempt; the lease will expire and the request be retried"
                );
            }
        }
    }

    /// Sends what is missing of one alert and records the round.
    async fn alert(&self, claimed: &ClaimedAlert) -> PassReport {
        let (sends, outcome) = alerts::send_round(
            &self.http,
            &self.config,
            self.store.as_ref(),
            claimed,
            self.clock.as_ref(),
        )
        .await;
        for s in &sends {
            metrics::counter!(
                "lifeline_alerts_total",
                "channel" => s.channel,
                "outcome" => if s.ok { "sent" } else { "failed" }
            )
            .increment(1);
        }
        match &outcome {
            AlertOutcome::Failed { .. } | AlertOutcome::Skipped { .. }
                if claimed.alert.kind == "dead_letter" =>
            {
                // Nobody was told that a caller's request could not be delivered: the one
                // place left is the log (and, with issue 5, the dashboard).
                metrics::counter!("lifeline_unalerted_dead_letters_total").increment(1);
                tracing::error!(
                    callback_request = %claimed.alert.callback_request_id,
                    outcome = outcome_name(&outcome),
                    "a dead letter's alert reached nobody: look at `lifeline callbacks list --status dead_letter`"
                );
            }
            _ => {}
        }
        let record = AlertRecord {
            callback_request_id: claimed.alert.callback_request_id,
            kind: claimed.alert.kind.clone(),
            attempt: claimed.alert.attempt,
            worker_id: self.id.clone(),
            at: self.clock.now(),
            outcome,
        };
        let recorded = (|| async { self.store.record_alert(&record).await })
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_times(4),
            )
            .await;
        match recorded {
            Ok(applied) => {
                tracing::info!(
                    callback_request = %record.callback_request_id,
                    kind = %record.kind,
                    outcome = outcome_name(&record.outcome),
                    applied,
                    "alert round"
                );
            }
            Err(e) => tracing::error!(
                callback_request = %record.callback_request_id,
                error = %e,
                "could not record an alert round; it will be retried when its lease expires"
            ),
        }
        PassReport {
            alerts: 1,
            ..PassReport::default()
        }
    }
}

/// A failed POST, as [`failure_outcome`] weighs it.
struct Failure<'a> {
    at: DateTime<Utc>,
    retry_after: Option<Duration>,
    /// The POST was a half-open trial of the frontend's circuit.
    trial: bool,
    /// The failure says the frontend as a whole is unavailable ([`gate::frontend_unavailable`]).
    unavailable: bool,
    /// While the frontend's circuit is not closed, when its waiting requests are due.
    gate: Option<DateTime<Utc>>,
    error: &'a str,
}

/// What a failed POST comes to.
///
/// - A half-open trial the frontend failed as a whole (no answer, 502, 503…) tested the
///   frontend, not the request: not counted, due again when the next trials are let through.
/// - Any other failure is counted and normally waits out the retry schedule; while the circuit
///   is not closed it is due at the gate instead, with every other waiting request of the
///   frontend, so that backoff from attempts made while the frontend was down never puts a
///   critical request behind normal ones. A trial that failed on this request alone (a 500)
///   keeps its backoff, so that it does not take the first trial slot of every period.
/// - A request past its whole retry schedule, in failures or (uncounted) in age, is a dead
///   letter, and staff are alerted.
fn failure_outcome(
    settings: &DeliverySettings,
    retry_count: i32,
    created_at: DateTime<Utc>,
    f: &Failure<'_>,
) -> DeliveryOutcome {
    if f.trial && f.unavailable {
        if past_patience(settings, created_at, f.at) {
            return DeliveryOutcome::DeadLetter {
                reason: format!(
                    "frontend unreachable ({}) and the request is {} minutes old, past its retry schedule",
                    f.error,
                    (f.at - created_at).num_minutes()
                ),
                rejected: false,
            };
        }
        return DeliveryOutcome::Retry {
            at: f.gate.unwrap_or(f.at),
            counted: false,
        };
    }
    let failures = u32::try_from(retry_count).unwrap_or(0) + 1;
    let Some(wait) = schedule::next_wait(
        &settings.retry_schedule,
        failures,
        settings.jitter,
        f.retry_after,
        settings.max_retry_after,
    ) else {
        return DeliveryOutcome::DeadLetter {
            reason: format!(
                "gave up after {failures} failed attempts; last: {}",
                f.error
            ),
            rejected: false,
        };
    };
    let backoff = f.at + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1));
    DeliveryOutcome::Retry {
        at: match f.gate {
            Some(gate) if !f.trial => gate,
            _ => backoff,
        },
        counted: true,
    }
}

/// Whether a request waiting for its frontend is older than its whole retry schedule: it would
/// have been a dead letter by now had it been tried.
fn past_patience(
    settings: &DeliverySettings,
    created_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let patience = settings.retry_schedule.iter().sum::<Duration>();
    (now - created_at).to_std().unwrap_or_default() > patience
}

/// An alert outcome's name, for logs (its error text may quote what it was sent to).
fn outcome_name(outcome: &AlertOutcome) -> &'static str {
    match outcome {
        AlertOutcome::Sent => "sent",
        AlertOutcome::Retry { .. } => "retry",
        AlertOutcome::Failed { .. } => "failed",
        AlertOutcome::Skipped { .. } => "skipped",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The production settings: 5, 15 and 60 minutes, 10 % jitter.
    fn production() -> DeliverySettings {
        DeliverySettings {
            frontend: None,
            timeout: Duration::from_secs(10),
            retry_schedule: vec![
                Duration::from_secs(300),
                Duration::from_secs(900),
                Duration::from_secs(3600),
            ],
            jitter: 0.1,
            max_retry_after: Duration::from_secs(6 * 3600),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn failure(trial: bool, status: Option<u16>, gate: Option<DateTime<Utc>>) -> Failure<'static> {
        Failure {
            at: at("2026-12-01T23:00:40Z"),
            retry_after: None,
            trial,
            unavailable: frontend_unavailable(
                status.map(|s| reqwest::StatusCode::from_u16(s).unwrap()),
            ),
            gate,
            error: "frontend answered 503",
        }
    }

    #[test]
    fn with_the_production_schedule_a_frontend_outage_costs_no_request_its_place() {
        let settings = production();
        let created = at("2026-12-01T22:59:50Z");
        let reopen = at("2026-12-01T23:01:10Z");
        // A failure met while the circuit is open (the attempts that opened it): counted, but
        // due when trials are let through, not 5 minutes (±30 s) later.
        assert_eq!(
            failure_outcome(&settings, 0, created, &failure(false, None, Some(reopen))),
            DeliveryOutcome::Retry {
                at: reopen,
                counted: true
            }
        );
        // A trial of a frontend that is down (no answer, 503): not counted, due at the next
        // trials, however many periods the outage lasts.
        for status in [None, Some(503), Some(502), Some(429)] {
            assert_eq!(
                failure_outcome(&settings, 1, created, &failure(true, status, Some(reopen))),
                DeliveryOutcome::Retry {
                    at: reopen,
                    counted: false
                },
                "{status:?}"
            );
        }
        // A trial the frontend failed on this request alone (500) waits out its backoff, so it
        // does not take the first trial slot of every period.
        let DeliveryOutcome::Retry { at: later, counted } = failure_outcome(
            &settings,
            0,
            created,
            &failure(true, Some(500), Some(reopen)),
        ) else {
            panic!("a retry")
        };
        assert!(counted);
        let wait = (later - at("2026-12-01T23:00:40Z")).num_seconds();
        assert!((270..=330).contains(&wait), "{wait}");
        // Circuit closed: the schedule, as always.
        let DeliveryOutcome::Retry { at: later, counted } =
            failure_outcome(&settings, 1, created, &failure(false, Some(503), None))
        else {
            panic!("a retry")
        };
        assert!(counted);
        let wait = (later - at("2026-12-01T23:00:40Z")).num_seconds();
        assert!((810..=990).contains(&wait), "{wait}");
    }

    #[test]
    fn the_schedule_still_ends_in_a_dead_letter() {
        let settings = production();
        // Counted failures past the schedule.
        let dead = failure_outcome(
            &settings,
            3,
            at("2026-12-01T22:00:00Z"),
            &failure(false, Some(503), Some(at("2026-12-01T23:01:10Z"))),
        );
        assert!(
            matches!(&dead, DeliveryOutcome::DeadLetter { reason, rejected: false }
                if reason.starts_with("gave up after 4 failed attempts")),
            "{dead:?}"
        );
        // Uncounted trials of a frontend down for longer than the schedule's 80 minutes.
        let dead = failure_outcome(
            &settings,
            1,
            at("2026-12-01T21:39:00Z"),
            &failure(true, None, Some(at("2026-12-01T23:01:10Z"))),
        );
        assert!(
            matches!(&dead, DeliveryOutcome::DeadLetter { reason, .. }
                if reason.contains("past its retry schedule")),
            "{dead:?}"
        );
    }
}
