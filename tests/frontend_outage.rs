//! Critical first after a frontend outage (issue 12): the clinic's frontend is down for 40 s
//! (connections refused), then answers 503, then is up. 30 normal, 30 urgent and 30 critical
//! requests wait meanwhile. Every one must be delivered, and once the frontend is back, critical
//! before urgent before normal, oldest first within each: backoff from attempts made while the
//! frontend was down must not put a critical request behind a normal one.
//!
//! Driven by the worker's manual clock, on both engines: the test runs worker passes until none
//! does anything, then moves the clock to the next moment something is due. Nothing sleeps and
//! nothing is timed; the frontend's state follows the same clock.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use common::{Engine, TestDb};
use lifeline::config::{Config, ProcessSettings};
use lifeline::store::{
    CallbackFilter, DeliveryOutcome, DeliveryRecord, NewCallbackRequest, StaffAction, Store,
    TenantScope,
};
use lifeline::tools::urgency::Urgency;
use lifeline::worker::Worker;
use lifeline::worker::clock::{ManualWallClock, WallClock};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

on_both_engines!(
    critical_first_after_a_frontend_outage_with_a_short_schedule,
    critical_first_after_a_frontend_outage_with_the_production_schedule,
    aligning_moves_only_the_waiting_requests_of_the_frontends_tenants,
);

/// The frontend refuses connections for this long ...
const DOWN_SECS: i64 = 40;
/// ... then answers 503 until this long after the outage began.
const FAILING_UNTIL_SECS: i64 = 70;
const PER_URGENCY: usize = 30;

/// Seconds, short enough that a request waiting out its backoff is noticed, long enough that
/// none becomes a dead letter during the outage (the schedule's sum is its patience).
async fn critical_first_after_a_frontend_outage_with_a_short_schedule(engine: Engine) {
    outage(
        engine,
        "retry_schedule_secs = [10, 30, 120]\njitter_percent = 0",
    )
    .await;
}

/// The production schedule (5, 15, 60 minutes, with jitter): the gap the issue measured in
/// seconds would be minutes here.
async fn critical_first_after_a_frontend_outage_with_the_production_schedule(engine: Engine) {
    outage(engine, "").await;
}

/// One POST the frontend received.
#[derive(Debug, Clone)]
struct Post {
    id: Uuid,
    status: u16,
}

/// Answers 503 until the clock reaches `up_at`, then 200; records every POST.
struct Frontend {
    clock: Arc<ManualWallClock>,
    up_at: DateTime<Utc>,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Respond for Frontend {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = request.body_json().expect("a JSON body");
        let id = body["id"].as_str().unwrap().parse().unwrap();
        let status = if self.clock.now() < self.up_at {
            503
        } else {
            200
        };
        self.posts.lock().unwrap().push(Post { id, status });
        ResponseTemplate::new(status).set_body_json(json!({ "received": id }))
    }
}

fn config(db: &TestDb, frontend_url: &str, schedule: &str) -> Arc<Config> {
    let toml = format!(
        r#"
[delivery]
frontend_url = "{frontend_url}"
timeout_ms = 2000
{schedule}

[worker]
in_process = false
batch_size = 10
concurrency = 10

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
    );
    let process = ProcessSettings {
        database_url: db.url.clone().into(),
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        config_path: None,
        database_max_connections: 16,
        database_worker_connections: 4,
    };
    Arc::new(
        Config::build(&process, Some((&toml, Path::new("outage.toml"))), &|_| None)
            .unwrap_or_else(|e| panic!("{e}")),
    )
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
        callback_number: format!("+1416555{n:04}"),
        caller_name: Some(format!("Caller {n}")),
        first_name: None,
        last_name: None,
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

async fn all_rows(store: &Arc<dyn Store>) -> Vec<lifeline::store::CallbackRequestRow> {
    store
        .callback_requests(&CallbackFilter::default())
        .await
        .unwrap()
}

async fn outage(engine: Engine, schedule: &str) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    // The frontend's address is taken now, but nothing listens on it until the outage's first
    // 40 s are over: connections are refused, as by a frontend that is down.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let mut socket = Some(socket);
    let mut frontend: Option<MockServer> = None;

    let t0 = DateTime::parse_from_rfc3339("2026-12-01T23:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let clock = Arc::new(ManualWallClock::new(t0));
    let posts = Arc::new(Mutex::new(Vec::<Post>::new()));
    let worker = Worker::new(
        config(&db, &format!("http://{addr}/callbacks"), schedule),
        store.clone(),
    )
    .unwrap()
    .with_clock(clock.clone());

    // Normal requests are the oldest, critical the newest: age alone would deliver normal first.
    let mut queued: HashMap<Uuid, (i32, DateTime<Utc>)> = HashMap::new();
    for (rank, urgency) in [Urgency::Critical, Urgency::Urgent, Urgency::Normal]
        .into_iter()
        .enumerate()
    {
        for n in 0..PER_URGENCY {
            let older = (2 - rank) * PER_URGENCY + n;
            let created = t0 - TimeDelta::seconds(10) + TimeDelta::milliseconds(100 * older as i64);
            let r = request(rank * PER_URGENCY + n, urgency, created);
            store.insert_callback_request(&r).await.unwrap();
            queued.insert(r.id, (rank as i32, created));
        }
    }

    // Passes that delivered something, in order, with what each delivered.
    let mut passes: Vec<Vec<Uuid>> = Vec::new();
    let mut steps = 0;
    loop {
        let now = clock.now();
        if now >= t0 + TimeDelta::seconds(DOWN_SECS) && frontend.is_none() {
            // The frontend comes up on its address: 503 at first, then 200.
            let listener = socket
                .take()
                .unwrap()
                .listen(1024)
                .unwrap()
                .into_std()
                .unwrap();
            let server = MockServer::builder().listener(listener).start().await;
            Mock::given(method("POST"))
                .and(path("/callbacks"))
                .respond_with(Frontend {
                    clock: clock.clone(),
                    up_at: t0 + TimeDelta::seconds(FAILING_UNTIL_SECS),
                    posts: posts.clone(),
                })
                .mount(&server)
                .await;
            frontend = Some(server);
        }
        // Every pass that has something to do at this moment.
        for pass in 0.. {
            assert!(pass < 100, "passes at {now} never run out");
            let before = posts.lock().unwrap().len();
            let report = worker.run_once().await.unwrap();
            let delivered: Vec<Uuid> = posts.lock().unwrap()[before..]
                .iter()
                .filter(|p| p.status == 200)
                .map(|p| p.id)
                .collect();
            if !delivered.is_empty() {
                passes.push(delivered);
            }
            if report.handled() == 0 {
                break;
            }
        }
        let rows = all_rows(&store).await;
        if rows
            .iter()
            .all(|r| r.status != "pending" && r.status != "failed")
        {
            break;
        }
        // Then to the next moment anything is due.
        let next = rows
            .iter()
            .filter(|r| r.status == "pending" || r.status == "failed")
            .map(|r| r.next_retry_at.expect("a waiting request has a due time"))
            .min()
            .unwrap();
        assert!(
            next > now,
            "a request due at {next} was not handled at {now}"
        );
        clock.set(next);
        steps += 1;
        assert!(steps < 200, "the outage never ends: {rows:#?}");
    }

    // Every request delivered, exactly once; none was lost to the outage.
    let rows = all_rows(&store).await;
    assert_eq!(rows.len(), 3 * PER_URGENCY);
    let posts = posts.lock().unwrap().clone();
    let mut delivered: HashMap<Uuid, usize> = HashMap::new();
    for p in posts.iter().filter(|p| p.status == 200) {
        *delivered.entry(p.id).or_default() += 1;
    }
    for r in &rows {
        assert_eq!(r.status, "posted", "{r:?}");
        assert_eq!(delivered.get(&r.id), Some(&1), "delivered once: {r:?}");
        // Only the failures that opened the circuit count against a request; trials of a
        // frontend that is down do not.
        assert!(r.retry_count <= 1, "{r:?}");
    }
    // The outage was real: the frontend was tried while it refused connections and while it
    // answered 503.
    assert!(posts.iter().any(|p| p.status == 503), "503s were answered");
    let mut refused = 0;
    for r in &rows {
        refused += store
            .delivery_attempts(r.id)
            .await
            .unwrap()
            .iter()
            .filter(|a| a.outcome == "retry" && a.status_code.is_none())
            .count();
    }
    assert!(refused > 0, "attempts while connections were refused");

    // After recovery: critical, then urgent, then normal, pass after pass (a pass may mix two
    // levels where one ends and the next begins) ...
    let ranks: Vec<(i32, i32)> = passes
        .iter()
        .map(|p| {
            let r = p.iter().map(|id| queued[id].0);
            (r.clone().min().unwrap(), r.max().unwrap())
        })
        .collect();
    for pair in ranks.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "a less urgent request went before a more urgent one: passes by (most, least) \
             urgent rank {ranks:?}"
        );
    }
    // ... and oldest first within each level. The first pass after recovery holds the
    // circuit's three trials, which of the first requests claimed they are is up to the
    // scheduler; from then on, claim order alone decides.
    let shown: Vec<Vec<(i32, i64)>> = passes
        .iter()
        .map(|p| {
            let mut v: Vec<(i32, i64)> = p
                .iter()
                .map(|id| (queued[id].0, (queued[id].1 - t0).num_milliseconds()))
                .collect();
            v.sort();
            v
        })
        .collect();
    let mut newest_so_far: HashMap<i32, DateTime<Utc>> = HashMap::new();
    for pass in &passes[1..] {
        let mut newest_here: HashMap<i32, DateTime<Utc>> = HashMap::new();
        for id in pass {
            let (rank, created) = queued[id];
            if let Some(before) = newest_so_far.get(&rank) {
                assert!(
                    *before <= created,
                    "a younger request of the same urgency went in an earlier pass: {shown:?}"
                );
            }
            let newest = newest_here.entry(rank).or_insert(created);
            *newest = (*newest).max(created);
        }
        newest_so_far.extend(newest_here);
    }
    drop(frontend);
}

/// The store side of the mechanism: `align_retries` moves the waiting, unleased requests of the
/// frontend's tenants only; later ones earlier, and sooner ones too when asked to hold them.
async fn aligning_moves_only_the_waiting_requests_of_the_frontends_tenants(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let t0 = DateTime::parse_from_rfc3339("2026-12-01T23:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let gate = t0 + TimeDelta::seconds(30);
    let mut reqs = Vec::new();
    for (n, tenant) in [
        "riverside",
        "riverside",
        "riverside",
        "riverside",
        "hillside",
    ]
    .into_iter()
    .enumerate()
    {
        let mut r = request(n, Urgency::Normal, t0);
        r.tenant_id = tenant.into();
        store.insert_callback_request(&r).await.unwrap();
        reqs.push(r.id);
    }
    // 0: failed, due in 5 minutes. 1: due now (never tried). 2: leased (in flight).
    // 3: resolved by staff. 4: another frontend's tenant, due in 5 minutes.
    let claimed = store
        .claim_callbacks("w", t0, t0 + TimeDelta::seconds(60), 5)
        .await
        .unwrap();
    for r in &claimed {
        if r.id == reqs[2] {
            continue;
        }
        let record = DeliveryRecord {
            request_id: r.id,
            attempt: r.delivery_attempt,
            worker_id: "w".into(),
            started_at: t0,
            finished_at: t0,
            latency_ms: 1.0,
            status_code: Some(503),
            error: Some("frontend answered 503".into()),
            response_excerpt: None,
            frontend_response: None,
            outcome: if r.id == reqs[1] {
                DeliveryOutcome::Deferred { at: t0 }
            } else {
                DeliveryOutcome::Retry {
                    at: t0 + TimeDelta::minutes(5),
                    counted: true,
                }
            },
        };
        assert!(store.record_delivery(&record).await.unwrap());
    }
    store
        .staff_action(reqs[3], &StaffAction::Resolve { note: None }, "nurse", t0)
        .await
        .unwrap();
    let due = |id: Uuid| {
        let store = store.clone();
        async move {
            store
                .callback_request(id)
                .await
                .unwrap()
                .unwrap()
                .next_retry_at
        }
    };
    let before: Vec<_> = {
        let mut v = Vec::new();
        for id in &reqs {
            v.push(due(*id).await);
        }
        v
    };

    // Earlier only: the failed one comes forward; the one due now is left for its claim.
    let scope = TenantScope::AllExcept(vec!["hillside".into()]);
    assert_eq!(
        store.align_retries(&scope, gate, t0, false).await.unwrap(),
        1
    );
    assert_eq!(due(reqs[0]).await, Some(gate));
    assert_eq!(due(reqs[1]).await, before[1]);
    for i in [2, 3, 4] {
        assert_eq!(
            due(reqs[i]).await,
            before[i],
            "request {i} is not waiting here"
        );
    }
    // Holding sooner ones too: everything waiting of the scope is due at the gate.
    let held = gate + TimeDelta::seconds(5);
    assert_eq!(
        store.align_retries(&scope, held, t0, true).await.unwrap(),
        2
    );
    assert_eq!(due(reqs[0]).await, Some(held));
    assert_eq!(due(reqs[1]).await, Some(held));
    assert_eq!(due(reqs[2]).await, before[2], "leased");
    // Only the named tenants.
    let hillside = TenantScope::Only(vec!["hillside".into()]);
    assert_eq!(
        store
            .align_retries(&hillside, gate, t0, false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(due(reqs[4]).await, Some(gate));
    assert_eq!(due(reqs[0]).await, Some(held));
    assert_eq!(
        store
            .align_retries(&TenantScope::Only(Vec::new()), gate, t0, true)
            .await
            .unwrap(),
        0
    );
}
