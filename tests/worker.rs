//! The callback delivery worker, black box: requests are queued through the store (as the tools
//! queue them) or through a live call, workers run as tasks or as `lifeline worker` processes, and
//! a fake clinic frontend on loopback records every POST it receives.
//!
//! Timeouts here only guard against a hung test; none is a performance assertion.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use common::{Engine, TestApp, TestDb};
use hmac::{Hmac, KeyInit, Mac};
use lifeline::config::{Config, ProcessSettings};
use lifeline::store::{CallbackFilter, NewCallbackRequest, StaffAction, Store};
use lifeline::tools::urgency::Urgency;
use lifeline::worker::Worker;
use lifeline::worker::clock::ManualWallClock;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

on_both_engines!(
    the_backoff_schedule_ends_in_a_dead_letter_that_is_never_retried_by_itself,
    retry_after_decides_when_a_busy_frontend_is_tried_again,
    any_2xx_is_delivered_with_lifelines_headers_and_a_400_is_not_retried,
    alerts_reach_each_contact_once_per_request_and_reason,
    a_retried_request_that_dies_again_alerts_again,
    a_resolved_request_is_neither_delivered_nor_alerted,
    an_open_circuit_turns_requests_past_their_schedule_into_dead_letters,
    a_collected_message_reaches_the_frontend_through_the_in_process_worker,
    shutdown_finishes_in_flight_deliveries_and_releases_what_cannot_finish,
    a_late_answer_after_the_lease_was_rescued_changes_nothing,
    an_open_circuit_defers_requests_without_counting_attempts,
    operators_list_show_retry_cancel_and_resolve_from_the_cli,
);

const API_KEY: &str = "frontend-api-key-123";
const SIGNING_SECRET: &str = "frontend-signing-secret";
const HANG_GUARD: Duration = Duration::from_secs(60);

// --- the fake frontend ---------------------------------------------------------------------------

/// One POST the frontend received.
#[derive(Debug, Clone)]
struct Received {
    key: String,
    headers: HeaderMap,
    body: Value,
    raw: Bytes,
}

/// How the frontend answers one POST.
#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    WithHeader(u16, &'static str, &'static str),
    Text(u16, &'static str),
    /// Never answers (a frontend stuck mid-request).
    Hang,
    /// Answers with this status after a while.
    Slow(Duration, u16),
    /// Answers with this status when the test opens the gate.
    Gated(Arc<tokio::sync::Notify>, u16),
}

type Script = Box<dyn Fn(&Received, usize) -> Reply + Send + Sync>;

struct FrontendState {
    received: Mutex<Vec<Received>>,
    script: Script,
    arrived: tokio::sync::Notify,
}

/// A clinic frontend on loopback.
struct Frontend {
    url: String,
    state: Arc<FrontendState>,
}

impl Frontend {
    /// Answers every POST with 200 and a JSON body.
    async fn healthy() -> Self {
        Self::scripted(|_, _| Reply::Status(200)).await
    }

    /// Answers as `script` says, given the POST and how many POSTs with its key came before.
    async fn scripted(script: impl Fn(&Received, usize) -> Reply + Send + Sync + 'static) -> Self {
        let state = Arc::new(FrontendState {
            received: Mutex::new(Vec::new()),
            script: Box::new(script),
            arrived: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .route("/callbacks", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/callbacks"),
            state,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `n` POSTs arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let notified = self.state.arrived.notified();
                let got = self.received();
                if got.len() >= n {
                    return got;
                }
                notified.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("frontend got {} of {n} POSTs", self.received().len()))
    }
}

async fn receive(
    axum::extract::State(state): axum::extract::State<Arc<FrontendState>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let received = Received {
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        headers,
        raw,
    };
    let seen = {
        let mut all = state.received.lock().unwrap();
        let seen = all.iter().filter(|r| r.key == received.key).count();
        all.push(received.clone());
        seen
    };
    state.arrived.notify_waiters();
    match (state.script)(&received, seen) {
        Reply::Status(204) => StatusCode::NO_CONTENT.into_response(),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            axum::Json(json!({ "received": received.key })),
        )
            .into_response(),
        Reply::WithHeader(code, name, value) => {
            (StatusCode::from_u16(code).unwrap(), [(name, value)], "busy").into_response()
        }
        Reply::Text(code, text) => (StatusCode::from_u16(code).unwrap(), text).into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Reply::Slow(d, code) => {
            tokio::time::sleep(d).await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
        Reply::Gated(gate, code) => {
            gate.notified().await;
            StatusCode::from_u16(code).unwrap().into_response()
        }
    }
}

// --- configuration and requests ------------------------------------------------------------------

/// The worker settings of most tests: no in-process worker (tests start their own), short leases.
const WORKER: &str = r#"
[worker]
in_process = false
batch_size = 20
concurrency = 16
poll_interval_ms = 200
lease_secs = 30
rescue_interval_secs = 1
shutdown_grace_secs = 2
"#;

fn tenants_toml() -> &'static str {
    r#"
[[tenants]]
id = "riverside"
name = "Riverside Emergency Vet"
numbers = ["+15083728299"]
[tenants.transfer]
primary = "+15557654321"
[tenants.ultravox]
api_key = "UV_KEY"
agent_id = "riverside-agent"
"#
}

fn delivery_toml(frontend_url: &str) -> String {
    format!(
        r#"
[delivery]
frontend_url = "{frontend_url}"
api_key = "{API_KEY}"
signing_secret = "{SIGNING_SECRET}"
timeout_ms = 2000
"#
    )
}

fn config(db: &TestDb, toml: &str) -> Config {
    let process = ProcessSettings {
        database_url: db.url.clone().into(),
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        config_path: None,
        database_max_connections: 16,
        database_worker_connections: 4,
    };
    Config::build(
        &process,
        Some((toml, Path::new("worker-test.toml"))),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn simple_config(db: &TestDb, frontend: &Frontend) -> Arc<Config> {
    Arc::new(config(
        db,
        &format!("{}{WORKER}{}", delivery_toml(&frontend.url), tenants_toml()),
    ))
}

fn request(n: usize, urgency: Urgency, created_at: DateTime<Utc>) -> NewCallbackRequest {
    NewCallbackRequest {
        id: Uuid::new_v4(),
        created_at,
        tenant_id: "riverside".into(),
        call_id: None,
        call_sid: Some(format!("CA{n:032}")),
        tool_call_log_id: None,
        transfer_attempt_id: None,
        reason: if urgency == Urgency::Critical {
            "failed_transfer"
        } else {
            "message"
        },
        callback_number: format!("+1416555{:04}", n % 10_000),
        caller_name: Some(format!("Caller {n}")),
        first_name: Some("Caller".into()),
        last_name: Some(n.to_string()),
        pet_name: Some("Tommie".into()),
        species: Some("Cat".into()),
        breed: None,
        age: None,
        concern_description: Some("vomiting since this evening".into()),
        urgency_reason: None,
        urgency,
        metadata: json!({}),
        text_caller: true,
    }
}

async fn enqueue(store: &Arc<dyn Store>, r: &NewCallbackRequest) {
    store.insert_callback_request(r).await.expect("enqueue");
}

async fn row(store: &Arc<dyn Store>, id: Uuid) -> lifeline::store::CallbackRequestRow {
    store
        .callback_request(id)
        .await
        .unwrap()
        .expect("request row")
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

// --- many workers, exactly once -------------------------------------------------------------------

/// A thousand requests of mixed urgency, queued in shuffled order.
async fn thousand_requests(store: &Arc<dyn Store>) -> HashMap<String, Urgency> {
    let base = at("2026-12-01T22:00:00Z");
    let mut reqs: Vec<NewCallbackRequest> = (0..1000)
        .map(|n| {
            let urgency = match n % 10 {
                0 => Urgency::Critical,
                1 | 2 => Urgency::Urgent,
                _ => Urgency::Normal,
            };
            // Older normal requests than any critical one: urgency must beat age.
            request(n, urgency, base + TimeDelta::milliseconds(n as i64))
        })
        .collect();
    // A fixed shuffle: insertion order is not queue order.
    reqs.sort_by_key(|r| r.id);
    let mut kinds = HashMap::new();
    for r in &reqs {
        kinds.insert(r.id.to_string(), r.urgency);
    }
    // Insert concurrently, as many calls would.
    let mut set = tokio::task::JoinSet::new();
    for chunk in reqs.chunks(100) {
        let store = store.clone();
        let chunk = chunk.to_vec();
        set.spawn(async move {
            for r in &chunk {
                enqueue(&store, r).await;
            }
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
    kinds
}

/// Checks exactly-once delivery of `kinds` and, for a backlog that was queued before the workers
/// started (`in_flight` = how many requests they have in flight at most), urgency order; returns
/// how many POSTs each worker made.
async fn assert_delivered_once(
    store: &Arc<dyn Store>,
    frontend: &Frontend,
    kinds: &HashMap<String, Urgency>,
    in_flight: Option<usize>,
) -> HashMap<String, usize> {
    let got = frontend.wait_for(kinds.len()).await;
    // The frontend sees a POST before the worker records its answer: wait until every request
    // is recorded as posted and released. Then no worker holds a claim, so none can still be
    // posting, and a duplicate would already be in `received`.
    let rows = wait_until_posted_and_released(store, kinds.len()).await;
    let got_after = frontend.received();
    assert_eq!(got_after.len(), got.len(), "no request is posted twice");
    let keys: HashSet<&str> = got_after.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), kinds.len(), "every request, once");
    assert!(keys.iter().all(|k| kinds.contains_key(*k)));

    if let Some(in_flight) = in_flight {
        assert_urgency_order(&got_after, kinds, in_flight);
    }

    assert_eq!(rows.len(), kinds.len());
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for r in &rows {
        assert_eq!(r.status, "posted", "request {} is {}", r.id, r.status);
        assert!(r.posted_to_frontend_at.is_some());
        assert!(r.lease_owner.is_none());
        let attempts = store.delivery_attempts(r.id).await.unwrap();
        assert_eq!(attempts.len(), 1, "one attempt recorded for {}", r.id);
        assert_eq!(attempts[0].outcome, "delivered");
        assert_eq!(attempts[0].status_code, Some(200));
        *per_worker.entry(attempts[0].worker_id.clone()).or_default() += 1;
    }
    per_worker
}

/// Every callback request, once all `n` are `posted` with no lease held (or, after the hang
/// guard, as they are: the caller's assertions then say what is wrong).
async fn wait_until_posted_and_released(
    store: &Arc<dyn Store>,
    n: usize,
) -> Vec<lifeline::store::CallbackRequestRow> {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let rows = store
            .callback_requests(&CallbackFilter {
                limit: Some(10_000),
                ..Default::default()
            })
            .await
            .unwrap();
        let settled = rows.len() == n
            && rows
                .iter()
                .all(|r| r.status == "posted" && r.lease_owner.is_none());
        if settled || tokio::time::Instant::now() >= deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Critical before urgent before normal; only requests in flight together may overtake.
fn assert_urgency_order(got: &[Received], kinds: &HashMap<String, Urgency>, in_flight: usize) {
    let positions = |u: Urgency| -> Vec<usize> {
        got.iter()
            .enumerate()
            .filter(|(_, r)| kinds[&r.key] == u)
            .map(|(i, _)| i)
            .collect()
    };
    let critical = positions(Urgency::Critical);
    let urgent = positions(Urgency::Urgent);
    let normal = positions(Urgency::Normal);
    assert!(
        critical.iter().max().unwrap() < normal.iter().min().unwrap(),
        "every critical request reaches the frontend before any normal one"
    );
    assert!(
        *critical.iter().max().unwrap() < critical.len() + in_flight,
        "critical requests come first (last critical at {})",
        critical.iter().max().unwrap()
    );
    assert!(
        *urgent.iter().min().unwrap() + in_flight >= critical.len(),
        "urgent requests wait for the critical ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_worker_tasks_on_postgres_deliver_a_thousand_requests_exactly_once_critical_first() {
    let db = TestDb::new(Engine::Postgres).await;
    let store = db.store().await;
    let frontend = Frontend::healthy().await;
    let kinds = thousand_requests(&store).await;

    // Four workers, each with its own connection pool, as four instances would have.
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(
            lifeline::store::connect_with_pool(&db.url, 6)
                .await
                .unwrap(),
        );
    }
    let running = RunningWorkers::start(simple_config(&db, &frontend), stores);
    let per_worker = assert_delivered_once(&store, &frontend, &kinds, Some(4 * 16)).await;
    assert!(
        per_worker.len() >= 2,
        "the work is shared between workers: {per_worker:?}"
    );
    running.stop().await;
}

/// Worker tasks running until stopped.
struct RunningWorkers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningWorkers {
    /// One worker per store.
    fn start(config: Arc<Config>, stores: Vec<Arc<dyn Store>>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tasks = stores
            .into_iter()
            .map(|store| {
                let worker = Worker::new(config.clone(), store).unwrap();
                tokio::spawn(worker.run(stopped.clone()))
            })
            .collect();
        Self { stop, tasks }
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        for t in self.tasks {
            tokio::time::timeout(HANG_GUARD, t).await.unwrap().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_tasks_on_sqlite_deliver_every_request_exactly_once_critical_first() {
    let db = TestDb::new(Engine::Sqlite).await;
    let store = db.store().await;
    let frontend = Frontend::healthy().await;
    let kinds = thousand_requests(&store).await;
    // One database file, one store: SQLite's single writer makes each claim atomic.
    let running = RunningWorkers::start(
        simple_config(&db, &frontend),
        vec![store.clone(), store.clone()],
    );
    assert_delivered_once(&store, &frontend, &kinds, Some(2 * 16)).await;
    running.stop().await;
}

/// `lifeline worker` with a config file, output captured.
fn spawn_worker_process(db: &TestDb, config_path: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("worker")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("LIFELINE_CONFIG", config_path)
        .env("RUST_LOG", "info")
        .env("DATABASE_MAX_CONNECTIONS", "6")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lifeline worker")
}

/// Waits until the process logs that its worker started (its LISTEN is then set up).
async fn wait_until_started(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let id = tokio::time::timeout(HANG_GUARD, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v["fields"]["message"] == "delivery worker started" {
                return v["fields"]["worker"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            }
        }
        panic!("worker exited before starting");
    })
    .await
    .expect("worker start");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    id
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("running");
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid}");
}

fn sigterm(child: &Child) {
    signal(child, "-TERM");
}

fn sigkill(child: &Child) {
    signal(child, "-KILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_worker_processes_woken_by_notify_deliver_each_request_once() {
    let db = TestDb::new(Engine::Postgres).await;
    let store = db.store().await;
    let frontend = Frontend::healthy().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("lifeline.toml");
    // Polling every 10 minutes: only LISTEN/NOTIFY can get these requests delivered in time.
    let worker = WORKER.replace("poll_interval_ms = 200", "poll_interval_ms = 600000");
    std::fs::write(
        &config_path,
        format!("{}{worker}{}", delivery_toml(&frontend.url), tenants_toml()),
    )
    .unwrap();
    // A backlog first: the processes drain it most urgent first.
    let mut kinds = thousand_requests(&store).await;
    let mut children = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..4 {
        let mut child = spawn_worker_process(&db, &config_path);
        ids.insert(wait_until_started(&mut child).await);
        children.push(child);
    }
    let mut per_worker = assert_delivered_once(&store, &frontend, &kinds, Some(4 * 16)).await;
    // Then new requests while they idle: only a notification wakes them this soon.
    let now = Utc::now();
    for n in 0..200 {
        let r = request(2000 + n, Urgency::Normal, now);
        kinds.insert(r.id.to_string(), Urgency::Normal);
        enqueue(&store, &r).await;
    }
    for (w, n) in assert_delivered_once(&store, &frontend, &kinds, None).await {
        per_worker.insert(w, n);
    }
    assert!(per_worker.keys().all(|w| ids.contains(w)));
    assert!(
        per_worker.len() >= 2,
        "processes share the work: {per_worker:?}"
    );
    for child in &children {
        sigterm(child);
    }
    for mut child in children {
        let status = tokio::time::timeout(HANG_GUARD, child.wait())
            .await
            .expect("worker exits on SIGTERM")
            .unwrap();
        assert!(status.success(), "worker exit status {status}");
    }
}

/// The call path of `lifeline serve` queues no notification in its transactions (that would
/// serialise their commits); it announces queued work after the commit. A `lifeline worker`
/// process that does not poll still hears of every message a call leaves, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_hears_of_requests_the_call_path_commits() {
    use common::{FakeFeatureServer, RIVERSIDE_PASS, RIVERSIDE_USER};
    let mut db = TestDb::new(Engine::Postgres).await;
    db.watch_invariants();
    let frontend = Frontend::healthy().await;
    let dir = tempfile::tempdir().unwrap();
    let toml = common::config_toml(&format!(
        "{}\n[worker]\nin_process = false\npoll_interval_ms = 600000\n",
        delivery_toml(&frontend.url)
    ));
    let config_path = dir.path().join("lifeline.toml");
    std::fs::write(&config_path, &toml).unwrap();
    let config = Config::build(
        &common::process_settings(&db.url),
        Some((&toml, Path::new("t.toml"))),
        &|_| None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let server = lifeline::Server::start(config).await.expect("start");
    let mut child = spawn_worker_process(&db, &config_path);
    wait_until_started(&mut child).await;

    let ws = format!("ws://{}/jambonz", server.addr);
    let mut calls = Vec::new();
    for n in 0..5 {
        let sid = format!("bbbbbbbb-0000-4000-8000-00000000000{n}");
        let mut fs = FakeFeatureServer::connect_as(&ws, RIVERSIDE_USER, RIVERSIDE_PASS, &sid)
            .await
            .unwrap();
        fs.collect_info_call(
            &format!("inv-{n}"),
            "needs a refill of her thyroid medication",
        )
        .await;
        calls.push(fs);
    }
    let got = frontend.wait_for(5).await;
    let sids: HashSet<&str> = got
        .iter()
        .filter_map(|r| r.body["callSid"].as_str())
        .collect();
    assert_eq!(sids.len(), 5, "each call's message delivered: {sids:?}");

    sigterm(&child);
    let status = tokio::time::timeout(HANG_GUARD, child.wait())
        .await
        .expect("worker exits on SIGTERM")
        .unwrap();
    assert!(status.success(), "worker exit status {status}");
    drop(calls);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_delivery_loses_its_lease_and_another_delivers() {
    let db = TestDb::new(Engine::Postgres).await;
    let store = db.store().await;
    // The first POST never gets an answer; the frontend is fine afterwards.
    let frontend = Frontend::scripted(|_, seen| {
        if seen == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("lifeline.toml");
    // The delivery timeout outlives the test's kill, so the first worker dies mid-request.
    let delivery = delivery_toml(&frontend.url).replace("timeout_ms = 2000", "timeout_ms = 30000");
    let worker = WORKER.replace("lease_secs = 30", "lease_secs = 40");
    std::fs::write(
        &config_path,
        format!("{delivery}{worker}{}", tenants_toml()),
    )
    .unwrap();

    let mut first = spawn_worker_process(&db, &config_path);
    let first_id = wait_until_started(&mut first).await;
    let r = request(1, Urgency::Urgent, Utc::now());
    enqueue(&store, &r).await;
    frontend.wait_for(1).await;
    let held = row(&store, r.id).await;
    assert_eq!(held.lease_owner.as_deref(), Some(first_id.as_str()));
    assert_eq!(held.delivery_attempt, 1);
    sigkill(&first);
    first.wait().await.unwrap();

    // The lease is long; pretend time passed by expiring it, as 40 s would.
    expire_leases(&db).await;
    let mut second = spawn_worker_process(&db, &config_path);
    let second_id = wait_until_started(&mut second).await;
    let got = frontend.wait_for(2).await;
    assert_eq!(
        got[0].key, got[1].key,
        "the same request, with the same Idempotency-Key"
    );
    assert_eq!(got[0].body["attempt"], 1);
    assert_eq!(got[1].body["attempt"], 2);
    let attempts = wait_for_attempts(&store, r.id, 1).await;
    assert_eq!(attempts[0].worker_id, second_id);
    assert_eq!(attempts[0].outcome, "delivered");
    let done = row(&store, r.id).await;
    assert_eq!(done.status, "posted");
    assert_eq!(
        done.retry_count, 0,
        "a dead worker's claim is not a failed attempt"
    );
    sigterm(&second);
    assert!(second.wait().await.unwrap().success());
}

/// Moves every lease's expiry into the past.
async fn expire_leases(db: &TestDb) {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "UPDATE callback_requests SET lease_expires_at = now() - interval '1 second' \
         WHERE lease_owner IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
}

async fn wait_for_attempts(
    store: &Arc<dyn Store>,
    id: Uuid,
    n: usize,
) -> Vec<lifeline::store::DeliveryAttemptRow> {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let attempts = store.delivery_attempts(id).await.unwrap();
            if attempts.len() >= n {
                return attempts;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("attempts recorded")
}

async fn a_late_answer_after_the_lease_was_rescued_changes_nothing(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    // The test decides when each POST is answered: the first (a failure) while the second is
    // still in flight, then the second (a success).
    let (first_gate, second_gate) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let gates = (first_gate.clone(), second_gate.clone());
    let frontend = Frontend::scripted(move |_, seen| {
        if seen == 0 {
            Reply::Gated(gates.0.clone(), 503)
        } else {
            Reply::Gated(gates.1.clone(), 200)
        }
    })
    .await;
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let config = simple_config(&db, &frontend);
    let slow = Worker::new(config.clone(), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let rescuer = Worker::new(config, store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let r = request(5, Urgency::Critical, t0);
    enqueue(&store, &r).await;

    let first = tokio::spawn(async move { slow.run_once().await.unwrap() });
    frontend.wait_for(1).await;
    // The lease (30 s) runs out while the first worker waits for its answer; another worker
    // takes the request over and posts it again.
    clock.advance(TimeDelta::seconds(31));
    let second = tokio::spawn(async move { rescuer.run_once().await.unwrap() });
    frontend.wait_for(2).await;
    // The first answer arrives late, while the second POST is in flight.
    first_gate.notify_one();
    let report = first.await.unwrap();
    assert_eq!(report.fenced_out, 1, "the late answer finds its lease gone");
    assert_eq!(report.retried, 0);
    let in_flight = row(&store, r.id).await;
    assert_eq!(in_flight.status, "pending", "the late 503 changed nothing");
    assert_eq!(in_flight.delivery_attempt, 2);
    assert!(
        in_flight.lease_owner.is_some(),
        "the second worker still holds it"
    );
    second_gate.notify_one();
    let report = second.await.unwrap();
    assert_eq!((report.rescued, report.delivered), (1, 1));

    let done = row(&store, r.id).await;
    assert_eq!(done.status, "posted");
    assert_eq!(done.retry_count, 0);
    assert_eq!(done.last_status_code, Some(200));
    assert!(done.next_retry_at.is_none());
    // Both POSTs are on record, as they happened.
    let attempts = store.delivery_attempts(r.id).await.unwrap();
    let mut seen: Vec<(i32, Option<i32>)> = attempts
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    seen.sort();
    assert_eq!(seen, [(1, Some(503)), (2, Some(200))]);
}

// --- retries and dead letters with a controllable clock -----------------------------------------

async fn the_backoff_schedule_ends_in_a_dead_letter_that_is_never_retried_by_itself(
    engine: Engine,
) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|_, _| Reply::Status(503)).await;
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let worker = Worker::new(simple_config(&db, &frontend), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let r = request(7, Urgency::Normal, t0);
    enqueue(&store, &r).await;

    let mut now = t0;
    // 5, 15, 60 minutes, each moved by up to 10 % either way.
    for (failures, minutes) in [(1, 5), (2, 15), (3, 60)] {
        let report = worker.run_once().await.unwrap();
        assert_eq!(
            report.retried, 1,
            "attempt {failures} fails and is scheduled again"
        );
        let failed = row(&store, r.id).await;
        assert_eq!(failed.status, "failed");
        assert_eq!(failed.retry_count, failures);
        assert_eq!(failed.last_status_code, Some(503));
        assert!(failed.lease_owner.is_none());
        let wait = failed.next_retry_at.unwrap() - now;
        let base = TimeDelta::minutes(minutes);
        assert!(
            wait >= base * 9 / 10 && wait <= base * 11 / 10,
            "after failure {failures} the wait is {wait} (schedule {base})"
        );
        // Not before its time.
        clock.set(failed.next_retry_at.unwrap() - TimeDelta::seconds(5));
        assert_eq!(worker.run_once().await.unwrap().handled(), 0);
        now = failed.next_retry_at.unwrap();
        clock.set(now);
    }
    let report = worker.run_once().await.unwrap();
    assert_eq!(report.dead_lettered, 1, "the fourth failure is the last");
    let dead = row(&store, r.id).await;
    assert_eq!(dead.status, "dead_letter");
    assert_eq!(dead.retry_count, 4);
    assert_eq!(dead.dead_lettered_at, Some(now));
    assert!(
        dead.dead_letter_reason
            .as_deref()
            .unwrap()
            .contains("gave up after 4 failed attempts; last: frontend answered 503"),
        "{:?}",
        dead.dead_letter_reason
    );
    assert!(dead.next_retry_at.is_none());

    // Never again by itself, however long we wait.
    clock.advance(TimeDelta::days(3));
    let report = worker.run_once().await.unwrap();
    assert_eq!(report.delivered + report.retried + report.dead_lettered, 0);
    let posts = frontend.received();
    assert_eq!(posts.len(), 4);
    let attempts: Vec<i64> = posts
        .iter()
        .map(|p| p.body["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    assert!(posts.iter().all(|p| p.key == r.id.to_string()));

    let recorded = store.delivery_attempts(r.id).await.unwrap();
    let outcomes: Vec<&str> = recorded.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "dead_letter"]);
    assert!(recorded.iter().all(|a| a.status_code == Some(503)));

    // The dead letter queued an alert (sent, or skipped without contacts, by the worker).
    let (alerts, _) = store.alerts_for(r.id).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "dead_letter");
    assert_eq!(alerts[0].status, "skipped", "no contacts configured");
}

async fn retry_after_decides_when_a_busy_frontend_is_tried_again(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|_, seen| match seen {
        0 => Reply::WithHeader(429, "retry-after", "120"),
        1 => Reply::WithHeader(503, "retry-after", "Tue, 01 Dec 2026 23:30:00 GMT"),
        _ => Reply::Status(200),
    })
    .await;
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let worker = Worker::new(simple_config(&db, &frontend), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let r = request(8, Urgency::Urgent, t0);
    enqueue(&store, &r).await;

    worker.run_once().await.unwrap();
    let busy = row(&store, r.id).await;
    assert_eq!(
        busy.next_retry_at,
        Some(t0 + TimeDelta::seconds(120)),
        "Retry-After in seconds, exactly"
    );
    clock.set(t0 + TimeDelta::seconds(120));
    worker.run_once().await.unwrap();
    let busy = row(&store, r.id).await;
    assert_eq!(
        busy.next_retry_at,
        Some(at("2026-12-01T23:30:00Z")),
        "Retry-After as a date"
    );
    clock.set(at("2026-12-01T23:30:00Z"));
    assert_eq!(worker.run_once().await.unwrap().delivered, 1);
    assert_eq!(row(&store, r.id).await.status, "posted");
}

async fn any_2xx_is_delivered_with_lifelines_headers_and_a_400_is_not_retried(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|r, _| match r.body["callerName"].as_str() {
        Some("Caller 1") => Reply::Status(204),
        Some("Caller 2") => Reply::Text(200, "OK thanks"),
        Some("Caller 3") => Reply::Text(202, "<html>queued</html>"),
        // PostgreSQL refuses NUL in text and JSON: the answer must still be recordable.
        Some("Caller 5") => Reply::Text(200, "ok\0binary"),
        _ => Reply::Status(400),
    })
    .await;
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let worker = Worker::new(simple_config(&db, &frontend), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let reqs: Vec<NewCallbackRequest> = (1..=5).map(|n| request(n, Urgency::Normal, t0)).collect();
    for r in &reqs {
        enqueue(&store, r).await;
    }
    let report = worker.run_once().await.unwrap();
    assert_eq!((report.delivered, report.dead_lettered), (4, 1));
    for r in reqs[..3].iter().chain(&reqs[4..]) {
        let done = row(&store, r.id).await;
        assert_eq!(
            done.status, "posted",
            "{:?} counts as delivered",
            done.caller_name
        );
        assert_eq!(done.retry_count, 0);
    }
    let refused = row(&store, reqs[3].id).await;
    assert_eq!(refused.status, "dead_letter");
    assert_eq!(
        refused.error_message.as_deref(),
        Some("frontend answered 400 Bad Request")
    );
    assert_eq!(
        refused.frontend_response.unwrap().0,
        json!({ "received": reqs[3].id.to_string() }),
        "the dead letter keeps the frontend's last answer"
    );
    let text = row(&store, reqs[1].id).await.frontend_response.unwrap().0;
    assert_eq!(text, json!("OK thanks"));
    assert_eq!(refused.retry_count, 1);
    assert_eq!(refused.last_status_code, Some(400));
    assert!(
        refused
            .dead_letter_reason
            .unwrap()
            .contains("frontend refused the request")
    );
    let attempts = store.delivery_attempts(reqs[3].id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, "rejected");
    assert_eq!(
        row(&store, reqs[4].id).await.frontend_response.unwrap().0,
        json!("okbinary")
    );
    clock.advance(TimeDelta::days(1));
    worker.run_once().await.unwrap();
    assert_eq!(
        frontend.received().len(),
        5,
        "a 400 is never sent again by itself"
    );

    // What the frontend saw: the original keys, lifeline's, and verifiable headers.
    let post = frontend
        .received()
        .into_iter()
        .find(|p| p.body["callerName"] == "Caller 2")
        .unwrap();
    let id = reqs[1].id.to_string();
    let h = |name: &str| {
        post.headers
            .get(name)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(h("authorization"), format!("Bearer {API_KEY}"));
    assert_eq!(h("x-request-id"), id);
    assert_eq!(h("idempotency-key"), id);
    assert_eq!(h("content-type"), "application/json");
    let ts = h("x-lifeline-timestamp");
    assert_eq!(ts, t0.timestamp().to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(SIGNING_SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&post.raw);
    assert_eq!(
        h("x-lifeline-signature"),
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    );
    let b = &post.body;
    assert_eq!(b["id"], id);
    assert_eq!(b["callbackNumber"], reqs[1].callback_number);
    assert_eq!(b["callerName"], "Caller 2");
    assert_eq!(b["petName"], "Tommie");
    assert_eq!(b["species"], "Cat");
    assert_eq!(b["concernDescription"], "vomiting since this evening");
    assert_eq!(b["urgencyLevel"], "normal");
    assert_eq!(b["callSid"], reqs[1].call_sid.clone().unwrap());
    assert_eq!(b["createdAt"], "2026-12-01T23:00:00.000Z");
    assert_eq!(b["tenantId"], "riverside");
    assert_eq!(b["reason"], "message");
    assert_eq!(b["toolCallLogId"], Value::Null);
    assert_eq!(b["attempt"], 1);
}

// --- alerts -------------------------------------------------------------------------------------

async fn alerts_reach_each_contact_once_per_request_and_reason(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let twilio = MockServer::start().await;
    let sid = "AC0123456789abcdef0123456789abcdef";
    let messages = format!("/2010-04-01/Accounts/{sid}/Messages.json");
    Mock::given(method("POST"))
        .and(path(messages.clone()))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"sid": "SM1"})))
        .mount(&twilio)
        .await;
    let slack = MockServer::start().await;
    // The webhook fails once, then works.
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&slack)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;
    // The frontend refuses the request: a dead letter, on top of a critical request.
    let frontend = Frontend::scripted(|_, _| Reply::Status(422)).await;
    let toml = format!(
        r#"{delivery}{WORKER}
[server]
public_url = "https://lifeline.example.org"
[twilio]
account_sid = "{sid}"
auth_token = "twilio-auth-token"
api_base = "{twilio_url}"
[alerts]
sms_from = "+15550001111"
{tenants}
[tenants.alerts]
sms = ["+15557770001", "+15557770002"]
webhook_url = "{slack_url}/hook"
"#,
        delivery = delivery_toml(&frontend.url),
        twilio_url = twilio.uri(),
        slack_url = slack.uri(),
        tenants = tenants_toml(),
    );
    let config = Arc::new(config(&db, &toml));
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let r = request(9, Urgency::Critical, t0);
    enqueue(&store, &r).await;

    // Four workers at once: each message still goes out once.
    let workers: Vec<Worker> = (0..4)
        .map(|_| {
            Worker::new(config.clone(), store.clone())
                .unwrap()
                .with_clock(clock.clone())
        })
        .collect();
    for _ in 0..3 {
        let passes = workers.iter().map(|w| w.run_once());
        for report in futures_util::future::join_all(passes).await {
            report.unwrap();
        }
    }
    assert_eq!(row(&store, r.id).await.status, "dead_letter");
    let (alerts, sends) = store.alerts_for(r.id).await.unwrap();
    let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["critical_request", "dead_letter"]);
    let mut statuses: Vec<&str> = alerts.iter().map(|a| a.status.as_str()).collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["pending", "sent"],
        "the alert whose webhook failed waits for its retry"
    );
    let sms: Vec<wiremock::Request> = twilio.received_requests().await.unwrap();
    assert_eq!(sms.len(), 4, "two contacts × two reasons");
    let bodies: Vec<HashMap<String, String>> = sms
        .iter()
        .map(|r| serde_urlencoded::from_bytes(&r.body).unwrap())
        .collect();
    for to in ["+15557770001", "+15557770002"] {
        assert_eq!(bodies.iter().filter(|b| b["To"] == to).count(), 2);
    }
    assert!(bodies.iter().all(|b| b["From"] == "+15550001111"));
    let critical_text = &bodies
        .iter()
        .find(|b| b["Body"].contains("transfer to on-call failed"))
        .unwrap()["Body"];
    assert!(
        critical_text.contains("Riverside Emergency Vet"),
        "{critical_text}"
    );
    assert!(
        critical_text.contains(&r.callback_number),
        "{critical_text}"
    );
    assert!(critical_text.contains("Caller 9"), "{critical_text}");
    assert!(
        bodies
            .iter()
            .any(|b| b["Body"].contains("could NOT be delivered"))
    );
    let auth = sms[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(auth.starts_with("Basic "));

    // The webhook's retry: only the webhook is sent again.
    clock.advance(TimeDelta::minutes(5));
    for w in &workers {
        w.run_once().await.unwrap();
    }
    assert_eq!(
        twilio.received_requests().await.unwrap().len(),
        4,
        "no SMS twice"
    );
    let hooks = slack.received_requests().await.unwrap();
    // First round: one failure (500) then one success for the other alert; then one retry.
    assert_eq!(hooks.len(), 3);
    let hook_body: Value = serde_json::from_slice(&hooks[2].body).unwrap();
    assert!(
        hook_body["text"]
            .as_str()
            .unwrap()
            .contains("Riverside Emergency Vet")
    );
    let (alerts, sends_after) = store.alerts_for(r.id).await.unwrap();
    assert!(alerts.iter().all(|a| a.status == "sent"), "{alerts:?}");
    assert_eq!(sends_after.iter().filter(|s| s.ok).count(), 6);
    assert_eq!(sends_after.len(), sends.len() + 1);

    // Nothing more, ever.
    clock.advance(TimeDelta::days(1));
    for w in &workers {
        w.run_once().await.unwrap();
    }
    assert_eq!(twilio.received_requests().await.unwrap().len(), 4);
    assert_eq!(slack.received_requests().await.unwrap().len(), 3);
}

/// A webhook that records every alert text.
async fn webhook() -> MockServer {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    hook
}

fn with_webhook(db: &TestDb, frontend: &Frontend, hook: &MockServer) -> Arc<Config> {
    Arc::new(config(
        db,
        &format!(
            "{}{WORKER}[alerts]\nwebhook_url = \"{}/hook\"\n{}",
            delivery_toml(&frontend.url),
            hook.uri(),
            tenants_toml()
        ),
    ))
}

async fn hook_texts(hook: &MockServer) -> Vec<String> {
    hook.received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect()
}

async fn a_retried_request_that_dies_again_alerts_again(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|_, _| Reply::Status(410)).await;
    let hook = webhook().await;
    let worker = Worker::new(with_webhook(&db, &frontend, &hook), store.clone()).unwrap();
    let r = request(3, Urgency::Urgent, Utc::now());
    enqueue(&store, &r).await;
    worker.run_once().await.unwrap();
    worker.run_once().await.unwrap();
    assert_eq!(hook_texts(&hook).await.len(), 1, "the dead letter alerted");

    // Staff queue it again; it fails again: staff hear about it again.
    store
        .staff_action(r.id, &StaffAction::Retry, "night-nurse", Utc::now())
        .await
        .unwrap();
    worker.run_once().await.unwrap();
    worker.run_once().await.unwrap();
    let texts = hook_texts(&hook).await;
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts.iter().all(|t| t.contains("could NOT be delivered")));
    let (alerts, sends) = store.alerts_for(r.id).await.unwrap();
    assert_eq!(alerts.len(), 1);
    assert_eq!((alerts[0].round, alerts[0].status.as_str()), (2, "sent"));
    let rounds: Vec<i32> = sends.iter().map(|s| s.round).collect();
    assert_eq!(rounds, [1, 2]);
    // The webhook's URL is a secret: rows keep its host and a digest.
    assert!(
        sends.iter().all(|s| s.target.starts_with("127.0.0.1#")),
        "{sends:?}"
    );
}

async fn a_resolved_request_is_neither_delivered_nor_alerted(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::healthy().await;
    let hook = webhook().await;
    let worker = Worker::new(with_webhook(&db, &frontend, &hook), store.clone()).unwrap();
    let r = request(4, Urgency::Critical, Utc::now());
    enqueue(&store, &r).await;
    // Staff called back before the worker ran (say the frontend was down until now).
    store
        .staff_action(
            r.id,
            &StaffAction::Resolve {
                note: Some("called back from the clinic".into()),
            },
            "night-nurse",
            Utc::now(),
        )
        .await
        .unwrap();
    worker.run_once().await.unwrap();
    assert!(frontend.received().is_empty(), "nothing to deliver");
    assert!(hook_texts(&hook).await.is_empty(), "nobody to page");
    let (alerts, _) = store.alerts_for(r.id).await.unwrap();
    assert_eq!(alerts[0].status, "skipped");
    assert_eq!(
        alerts[0].last_error.as_deref(),
        Some("staff resolved the request already")
    );
    let err = store
        .staff_action(r.id, &StaffAction::Retry, "night-nurse", Utc::now())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("resolved by staff"), "{err}");
}

async fn an_open_circuit_turns_requests_past_their_schedule_into_dead_letters(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|_, _| Reply::Status(503)).await;
    let hook = webhook().await;
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let worker = Worker::new(with_webhook(&db, &frontend, &hook), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    // Five fresh requests fail and open the circuit.
    for n in 0..5 {
        enqueue(&store, &request(n, Urgency::Normal, t0)).await;
    }
    assert_eq!(worker.run_once().await.unwrap().retried, 5);
    // One queued 81 minutes ago (past 5 + 15 + 60) is not deferred any longer.
    let old = request(9, Urgency::Normal, t0 - TimeDelta::minutes(81));
    enqueue(&store, &old).await;
    // A young one waits for the circuit.
    let young = request(10, Urgency::Normal, t0);
    enqueue(&store, &young).await;
    let report = worker.run_once().await.unwrap();
    assert_eq!((report.dead_lettered, report.deferred), (1, 1));
    let dead = row(&store, old.id).await;
    assert_eq!(dead.status, "dead_letter");
    assert!(
        dead.dead_letter_reason
            .unwrap()
            .contains("past its retry schedule"),
        "staff learn why"
    );
    let waiting = row(&store, young.id).await;
    assert_eq!(waiting.status, "pending");
    assert!(waiting.next_retry_at.unwrap() >= t0 + TimeDelta::seconds(5));
    assert_eq!(
        frontend.received().len(),
        5,
        "nothing sent while the circuit is open"
    );
    worker.run_once().await.unwrap();
    assert_eq!(hook_texts(&hook).await.len(), 1, "the dead letter alerted");
}

// --- the worker inside `lifeline serve` ------------------------------------------------------------

async fn a_collected_message_reaches_the_frontend_through_the_in_process_worker(engine: Engine) {
    let frontend = Frontend::healthy().await;
    // Polling every 10 minutes: the commit itself must wake the worker.
    let sections = format!(
        "{}\n[worker]\npoll_interval_ms = 600000\n",
        delivery_toml(&frontend.url)
    );
    let app = TestApp::start_with_sections(engine, &sections).await;
    let mut fs = app.feature_server().await;
    fs.collect_info_call("inv-collect-1", "needs a refill of her thyroid medication")
        .await;
    let got = frontend.wait_for(1).await;
    let b = &got[0].body;
    assert_eq!(b["callbackNumber"], "+14168189171");
    assert_eq!(b["callerName"], "Jeremy Greven");
    assert_eq!(b["petName"], "Tommie");
    assert_eq!(b["tenantId"], "riverside");
    assert_eq!(b["reason"], "message");
    assert_eq!(b["callSid"], fs.call_sid);
    let log = &app
        .store
        .tool_call_logs_for_call(lifeline::tools::Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap()[0];
    assert_eq!(b["toolCallLogId"], log.id.to_string());
    let id: Uuid = b["id"].as_str().unwrap().parse().unwrap();
    wait_for_attempts(&app.store, id, 1).await;
    assert_eq!(row(&app.store, id).await.status, "posted");
}

/// The advisory lock a Jambonz call's invocations are logged under (the same namespace and hash
/// as lifeline's: "LIFE", then the first four bytes of SHA-256 of `jambonz\0<call_sid>`).
fn call_lock(call_sid: &str) -> (i32, i32) {
    use sha2::Digest;
    let digest = Sha256::new()
        .chain_update(b"jambonz")
        .chain_update([0])
        .chain_update(call_sid.as_bytes())
        .finalize();
    (
        0x4C49_4645,
        i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
    )
}

/// Every connection of the call path's pool (1, its one log lane's) is held by a tool call
/// waiting for its call's lock, which the test holds from outside (the second call's tool call
/// waits for the lane): the in-process worker, with its own pool, still claims and delivers a
/// new request. (Sharing one pool, its claim would wait for a connection until the tool calls
/// finish.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_worker_delivers_while_every_call_path_connection_is_busy() {
    use common::{FakeFeatureServer, RIVERSIDE_PASS, RIVERSIDE_USER};
    let mut db = TestDb::new(Engine::Postgres).await;
    db.watch_invariants();
    let frontend = Frontend::healthy().await;
    let toml = common::config_toml(&format!(
        "{}\n[worker]\npoll_interval_ms = 600000\n",
        delivery_toml(&frontend.url)
    ));
    let mut process = common::process_settings(&db.url);
    process.database_max_connections = 1;
    process.database_worker_connections = 2;
    let config = Config::build(&process, Some((&toml, Path::new("t.toml"))), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let server = lifeline::Server::start(config).await.expect("start");
    let ws = format!("ws://{}/jambonz", server.addr);

    let blocker = sqlx::PgPool::connect(&db.url).await.unwrap();
    let mut held = blocker.acquire().await.unwrap();
    let mut sockets = Vec::new();
    for sid in [
        "aaaaaaaa-0000-4000-8000-000000000001",
        "aaaaaaaa-0000-4000-8000-000000000002",
    ] {
        let mut fs = FakeFeatureServer::connect_as(&ws, RIVERSIDE_USER, RIVERSIDE_PASS, sid)
            .await
            .unwrap();
        fs.session_new().await;
        let (namespace, key) = call_lock(sid);
        sqlx::query("SELECT pg_advisory_lock($1, $2)")
            .bind(namespace)
            .bind(key)
            .execute(&mut *held)
            .await
            .unwrap();
        fs.tool_call(
            "inv-blocked",
            "collectNameNumberConcernPetName",
            json!({
                "callback_number": "(416) 818-9171",
                "first_name": "Jeremy",
                "last_name": "Greven",
                "pet_name": "Tommie",
                "concern_description": "vomiting since this evening",
            }),
        )
        .await;
        sockets.push(fs);
    }
    // The call path's connection waits in the database for the lock the test holds.
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let (waiting,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'lifeline' AND wait_event = 'advisory'",
            )
            .fetch_one(&blocker)
            .await
            .unwrap();
            if waiting == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the first tool call waits for its call's lock");

    // A request queued meanwhile (by another instance, say) is delivered now.
    let outside = db.store().await;
    let queued = request(1, Urgency::Critical, Utc::now());
    enqueue(&outside, &queued).await;
    let got = frontend.wait_for(1).await;
    assert_eq!(got[0].body["id"], queued.id.to_string());

    // Released, the tool calls finish and their requests are delivered too.
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *held)
        .await
        .unwrap();
    for fs in &mut sockets {
        fs.tool_output("inv-blocked").await;
    }
    frontend.wait_for(3).await;
    drop(held);
    blocker.close().await;
    server.shutdown().await.unwrap();
}

// --- shutdown -----------------------------------------------------------------------------------

async fn shutdown_finishes_in_flight_deliveries_and_releases_what_cannot_finish(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|r, _| match r.body["callerName"].as_str() {
        Some("Caller 1") => Reply::Slow(Duration::from_millis(800), 200),
        _ => Reply::Hang,
    })
    .await;
    let toml = format!(
        "{}{}{}",
        delivery_toml(&frontend.url).replace("timeout_ms = 2000", "timeout_ms = 20000"),
        WORKER,
        tenants_toml()
    );
    let worker = Worker::new(Arc::new(config(&db, &toml)), store.clone()).unwrap();
    let worker_id = worker.id().to_string();
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(worker.run(stopped));
    let slow = request(1, Urgency::Critical, Utc::now());
    let stuck = request(2, Urgency::Normal, Utc::now());
    enqueue(&store, &slow).await;
    enqueue(&store, &stuck).await;
    frontend.wait_for(2).await;
    assert_eq!(
        row(&store, stuck.id).await.lease_owner.as_deref(),
        Some(worker_id.as_str())
    );

    stop.send(true).unwrap();
    tokio::time::timeout(HANG_GUARD, running)
        .await
        .unwrap()
        .unwrap();
    // The slow one finished within the grace period and was recorded.
    let done = row(&store, slow.id).await;
    assert_eq!(done.status, "posted");
    // The stuck one was given back untouched, for the next worker.
    let back = row(&store, stuck.id).await;
    assert_eq!(back.status, "pending");
    assert!(back.lease_owner.is_none());
    assert_eq!(back.retry_count, 0);
    assert!(store.delivery_attempts(stuck.id).await.unwrap().is_empty());
    // ... and nothing claims after the stop.
    let later = request(3, Urgency::Critical, Utc::now());
    enqueue(&store, &later).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(frontend.received().len(), 2);
}

// --- circuit breaker ------------------------------------------------------------------------------

async fn an_open_circuit_defers_requests_without_counting_attempts(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|_, _| Reply::Status(502)).await;
    let toml = format!(
        "{}{}{}",
        delivery_toml(&frontend.url),
        WORKER
            .replace("concurrency = 16", "concurrency = 1")
            .replace("batch_size = 20", "batch_size = 1"),
        tenants_toml()
    );
    let t0 = at("2026-12-01T23:00:00Z");
    let clock = Arc::new(ManualWallClock::new(t0));
    let worker = Worker::new(Arc::new(config(&db, &toml)), store.clone())
        .unwrap()
        .with_clock(clock.clone());
    let reqs: Vec<NewCallbackRequest> = (1..=8).map(|n| request(n, Urgency::Normal, t0)).collect();
    for r in &reqs {
        enqueue(&store, r).await;
    }
    // One at a time: five failures open the circuit.
    for _ in 0..5 {
        assert_eq!(worker.run_once().await.unwrap().retried, 1);
    }
    assert_eq!(frontend.received().len(), 5);
    // The rest are handed back without a POST and without an attempt counted.
    for _ in 0..3 {
        assert_eq!(worker.run_once().await.unwrap().deferred, 1);
    }
    assert_eq!(
        frontend.received().len(),
        5,
        "an open circuit sends nothing"
    );
    let mut deferred = 0;
    for r in &reqs {
        let now = row(&store, r.id).await;
        let attempts = store.delivery_attempts(r.id).await.unwrap();
        if now.status == "failed" {
            assert_eq!((now.retry_count, attempts.len()), (1, 1));
        } else {
            deferred += 1;
            assert_eq!(now.status, "pending");
            assert_eq!(now.retry_count, 0);
            assert!(attempts.is_empty(), "no attempt recorded for a deferral");
            assert!(
                now.next_retry_at.unwrap() > t0,
                "due again when the circuit half-opens"
            );
            assert!(now.error_message.unwrap().contains("circuit open"));
        }
    }
    assert_eq!(deferred, 3);
}

// --- the operators' CLI ---------------------------------------------------------------------------

async fn cli(db: &TestDb, args: &[&str]) -> (i32, String, String) {
    let out = tokio::time::timeout(
        HANG_GUARD,
        Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .arg("callbacks")
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("USER", "night-nurse")
            .output(),
    )
    .await
    .expect("cli hung")
    .expect("run cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn operators_list_show_retry_cancel_and_resolve_from_the_cli(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let frontend = Frontend::scripted(|_, seen| {
        if seen == 0 {
            Reply::Status(400)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let worker = Worker::new(simple_config(&db, &frontend), store.clone()).unwrap();
    let refused = request(1, Urgency::Critical, Utc::now());
    let other = request(2, Urgency::Normal, Utc::now());
    enqueue(&store, &refused).await;
    worker.run_once().await.unwrap();
    // Queued but not yet delivered (no worker runs until the retry below).
    enqueue(&store, &other).await;
    let (id, other_id) = (refused.id.to_string(), other.id.to_string());

    let (code, out, _) = cli(&db, &["list", "--status", "dead_letter"]).await;
    assert_eq!(code, 0);
    assert!(out.contains(&id) && !out.contains(&other_id), "{out}");
    assert!(
        out.contains("critical") && out.contains(&refused.callback_number),
        "{out}"
    );
    let (_, out, _) = cli(&db, &["list", "--urgency", "normal", "--json"]).await;
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], other_id);
    let (code, _, err) = cli(&db, &["list", "--status", "lost"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("invalid value 'lost'"), "{err}");

    let (code, out, _) = cli(&db, &["show", &id]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("dead_letter") && out.contains("rejected") && out.contains("400"),
        "{out}"
    );

    // A pending request can be cancelled before it goes out.
    let (code, _, _) = cli(
        &db,
        &["cancel", &other_id, "--note", "duplicate of a walk-in"],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(row(&store, other.id).await.status, "cancelled");
    let (code, _, err) = cli(&db, &["cancel", &other_id]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cancelled"), "{err}");

    // Retry: delivered this time.
    let (code, out, _) = cli(&db, &["retry", &id]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is now pending"), "{out}");
    worker.run_once().await.unwrap();
    let delivered = row(&store, refused.id).await;
    assert_eq!(delivered.status, "posted");
    // A delivered request is not posted again.
    let (code, _, err) = cli(&db, &["retry", &id]).await;
    assert_eq!(code, 1);
    assert!(err.contains("already delivered"), "{err}");

    assert_eq!(
        frontend.received().len(),
        2,
        "a cancelled request is not delivered"
    );

    let (code, _, err) = cli(&db, &["resolve", &id, "--note", ""]).await;
    assert_eq!(code, 1);
    assert!(err.contains("--note"), "{err}");
    let (code, _, _) = cli(&db, &["resolve", &id, "--note", "called back, dog is fine"]).await;
    assert_eq!(code, 0);
    let resolved = row(&store, refused.id).await;
    assert_eq!(resolved.resolved_by.as_deref(), Some("night-nurse"));
    assert_eq!(
        resolved.resolution_note.as_deref(),
        Some("called back, dog is fine")
    );

    let (code, out, _) = cli(&db, &["show", &id, "--json"]).await;
    assert_eq!(code, 0);
    let doc: Value = serde_json::from_str(&out).unwrap();
    let actions: Vec<&str> = doc["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["retry", "resolve"]);
    assert_eq!(doc["audit"][0]["actor"], "night-nurse");
    assert_eq!(doc["attempts"].as_array().unwrap().len(), 2);

    let missing = Uuid::new_v4().to_string();
    let (code, _, err) = cli(&db, &["show", &missing]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no callback request"), "{err}");
}
