//! The operators' surfaces, black box: `/metrics` (who may scrape, what a call leaves in it),
//! `/readyz` (database and migrations), the security headers every response carries, and the
//! queue figures the dashboard and `/metrics` share.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::{Engine, TestApp, TestDb};
use lifeline::store::{DeliveryOutcome, DeliveryRecord, NewCallbackRequest, StaffAction, Store};
use lifeline::tools::urgency::Urgency;
use serde_json::{Value, json};
use uuid::Uuid;

on_both_engines!(
    metrics_refuse_scrapers_without_the_configured_token,
    metrics_answer_local_scrapers_when_no_token_is_configured,
    metrics_after_collect_info_show_the_call_the_queue_and_the_circuits,
    readyz_wants_every_migration_applied,
    queue_stats_count_requests_by_status_and_urgency,
    logs_name_the_call_and_the_invocation_and_keep_the_caller_private,
);

const METRICS_TOKEN: &str = "scrape-token-0123456789abcdef";

/// The gauges read at scrape time are process-wide: under `cargo test` (one process for this
/// file) two tests scraping at once would each see the other's database. nextest runs each test
/// in its own process, where this lock costs nothing.
static SCRAPES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Twilio account and an `https://` public URL (the Twilio routes exist, HSTS is sent).
const TWILIO_SECTIONS: &str = r#"
[server]
public_url = "https://lifeline.example.com"
[twilio]
account_sid = "AC00000000000000000000000000000000"
auth_token = "twilio-auth-token-for-tests"
[ultravox]
data_connection_secrets = ["0123456789abcdef"]
"#;

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(app.http_url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("request")
}

/// The value of the first sample of `name` whose labels include `labels`.
fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(body, name, labels).into_iter().next()
}

/// Every sample of `name` whose labels include `labels`.
fn samples(body: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse().expect("a number"))
        .collect()
}

async fn metrics_refuse_scrapers_without_the_configured_token(engine: Engine) {
    let _serial = SCRAPES.lock().await;
    let sections = format!("[ops]\nmetrics_token = \"{METRICS_TOKEN}\"\n");
    let app = TestApp::start_with_sections(engine, &sections).await;
    // A loopback client is no exception once a token is configured.
    for headers in [
        vec![],
        vec![("authorization", "Bearer not-the-token-0123456789")],
        vec![("authorization", "Basic c2NyYXBlcjpzZWNyZXQ=")],
    ] {
        let response = get(&app, "/metrics", &headers).await;
        assert_eq!(response.status(), 401, "{headers:?}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"lifeline metrics\""
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(
            body["message"].as_str().unwrap().contains("Bearer"),
            "{body}"
        );
    }
    let bearer = format!("Bearer {METRICS_TOKEN}");
    let response = get(&app, "/metrics", &[("authorization", &bearer)]).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = response.text().await.unwrap();
    assert_eq!(
        sample(&body, "lifeline_metrics_database_up", &[]),
        Some(1.0)
    );
}

async fn metrics_answer_local_scrapers_when_no_token_is_configured(engine: Engine) {
    let _serial = SCRAPES.lock().await;
    let app = TestApp::start(engine).await;
    // The test talks to 127.0.0.1: a local scraper.
    let response = get(&app, "/metrics", &[]).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("# TYPE lifeline_callback_requests gauge"),
        "{body}"
    );
    // The same request relayed by a proxy on this host is someone else's.
    let response = get(&app, "/metrics", &[("x-forwarded-for", "203.0.113.7")]).await;
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("ops.metrics_token"),
        "{body}"
    );
}

async fn metrics_after_collect_info_show_the_call_the_queue_and_the_circuits(engine: Engine) {
    let _serial = SCRAPES.lock().await;
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.collect_info_call("inv-metrics-1", "needs a refill of her thyroid medication")
        .await;
    fs.tool_call(
        "inv-metrics-2",
        "collect_info",
        json!({
            "callback_number": "4168189172",
            "first_name": "Ada",
            "pet_name": "Rex",
            "concern_description": "dog was hit by car and is not breathing well",
        }),
    )
    .await;
    fs.tool_output("inv-metrics-2").await;

    let body = get(&app, "/metrics", &[]).await.text().await.unwrap();
    let success = [
        ("tool", "collect_info"),
        ("platform", "jambonz"),
        ("status", "success"),
    ];
    assert!(
        sample(&body, "lifeline_tool_calls_total", &success).unwrap_or(0.0) >= 2.0,
        "{body}"
    );
    // Histograms with buckets, not summaries (every tool's series exists from the start: the
    // calls made are collect_info's).
    for (histogram, labels) in [
        (
            "lifeline_tool_call_seconds",
            &[("tool", "collect_info")][..],
        ),
        ("lifeline_durable_log_seconds", &[][..]),
    ] {
        assert!(
            body.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram}: {body}"
        );
        assert!(
            sample(&body, &format!("{histogram}_bucket"), &[("le", "0.0005")]).is_some(),
            "{histogram}: {body}"
        );
        assert!(
            sample(&body, &format!("{histogram}_count"), labels).unwrap_or(0.0) >= 2.0,
            "{histogram}: {body}"
        );
    }
    assert!(
        sample(
            &body,
            "lifeline_tool_call_seconds_bucket",
            &[("tool", "collect_info"), ("le", "+Inf")]
        )
        .is_some(),
        "{body}"
    );
    // The call's socket is still open (other tests of this process may hold theirs open too).
    assert!(sample(&body, "lifeline_jambonz_sockets_open", &[]).unwrap() >= 1.0);
    // No frontend is configured: both requests wait for staff.
    let pending = |urgency| {
        sample(
            &body,
            "lifeline_callback_requests",
            &[("status", "pending"), ("urgency", urgency)],
        )
    };
    assert_eq!(pending("normal"), Some(1.0), "{body}");
    assert_eq!(pending("critical"), Some(1.0), "{body}");
    assert_eq!(pending("urgent"), Some(0.0), "{body}");
    assert_eq!(
        sample(
            &body,
            "lifeline_callback_requests",
            &[("status", "dead_letter"), ("urgency", "critical")]
        ),
        Some(0.0)
    );
    let oldest = sample(&body, "lifeline_callback_oldest_pending_seconds", &[]).unwrap();
    assert!(oldest > 0.0 && oldest < 60.0, "{oldest}");
    // The critical request queued one alert (pending, or skipped: nobody to tell).
    let alerts: f64 = samples(
        &body,
        "lifeline_alert_queue",
        &[("kind", "critical_request")],
    )
    .iter()
    .sum();
    assert_eq!(alerts, 1.0, "{body}");
    // Every breaker of the server has its state: Ultravox's is always there, and closed.
    assert_eq!(
        sample(&body, "lifeline_circuit_state", &[("api", "ultravox")]),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "lifeline_metrics_database_up", &[]),
        Some(1.0)
    );
    fs.close().await;
}

/// Runs one statement on the test's database, beside the server's own connections.
async fn execute(engine: Engine, db: &TestDb, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_string());
    match engine {
        Engine::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Engine::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query(sql).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

async fn readyz(app: &TestApp) -> (u16, Value) {
    let response = get(app, "/readyz", &[]).await;
    (
        response.status().as_u16(),
        response.json().await.expect("JSON"),
    )
}

async fn readyz_wants_every_migration_applied(engine: Engine) {
    let app = TestApp::start(engine).await;
    assert_eq!(readyz(&app).await, (200, json!({ "status": "ready" })));

    execute(
        engine,
        &app.db,
        "UPDATE _sqlx_migrations SET success = FALSE WHERE version = 2",
    )
    .await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable");
    assert_eq!(
        body["reason"],
        "migrations failed (dirty): 2 (run `lifeline migrate`)"
    );

    execute(
        engine,
        &app.db,
        "DELETE FROM _sqlx_migrations WHERE version = 3",
    )
    .await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503);
    assert_eq!(
        body["reason"],
        "migrations not applied: 3; failed (dirty): 2 (run `lifeline migrate`)"
    );

    execute(engine, &app.db, "DROP TABLE _sqlx_migrations").await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 503);
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("migrations not applied: the migration table _sqlx_migrations"),
        "{body}"
    );
    // Liveness does not depend on the database.
    assert_eq!(get(&app, "/healthz", &[]).await.status(), 200);
}

/// PostgreSQL only: an SQLite file stays readable through the connections already open on it,
/// whatever happens to its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_degraded_when_the_database_is_gone() {
    let app = TestApp::start(Engine::Postgres).await;
    assert_eq!(readyz(&app).await.0, 200);
    let name = app.db.url.rsplit('/').next().unwrap().to_string();
    let admin = sqlx::PgPool::connect(&common::pg_admin_url())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), readyz(&app))
        .await
        .expect("readyz answers while the database is gone");
    // Calls go on through the journal: the instance stays in rotation and says why.
    assert_eq!(status, 200);
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        body["reason"], "database unreachable, 0 records journaled",
        "{body}"
    );
    assert_eq!(get(&app, "/healthz", &[]).await.status(), 200);
}

fn assert_security_headers(response: &reqwest::Response, hsts: bool) {
    let h = response.headers();
    let what = response.url().path();
    assert_eq!(
        h["content-security-policy"],
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        "{what}"
    );
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(
        h["referrer-policy"], "strict-origin-when-cross-origin",
        "{what}"
    );
    assert_eq!(
        h.get("strict-transport-security")
            .map(|v| v.to_str().unwrap()),
        hsts.then_some("max-age=31536000; includeSubDomains"),
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers_and_hsts_only_behind_tls() {
    let app = TestApp::start(Engine::Sqlite).await;
    let healthz = get(&app, "/healthz", &[]).await;
    assert_eq!(healthz.status(), 200);
    assert_security_headers(&healthz, false);
    let missing = get(&app, "/no/such/page", &[]).await;
    assert_eq!(missing.status(), 404);
    assert_security_headers(&missing, false);
    // Twilio is not configured here: its routes answer 404 themselves.
    let response = reqwest::Client::new()
        .post(app.http_url("/twilio/incoming"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_security_headers(&response, false);
    // Behind a TLS-terminating proxy.
    let proxied = get(&app, "/healthz", &[("x-forwarded-proto", "https")]).await;
    assert_security_headers(&proxied, true);
    let plain = get(&app, "/healthz", &[("x-forwarded-proto", "http")]).await;
    assert_security_headers(&plain, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_public_url_sends_hsts_on_every_response_refusals_included() {
    let _serial = SCRAPES.lock().await;
    let sections = format!("{TWILIO_SECTIONS}\n[ops]\nmetrics_token = \"{METRICS_TOKEN}\"\n");
    let app = TestApp::start_with_sections(Engine::Sqlite, &sections).await;
    // An unsigned Twilio webhook.
    let forged = reqwest::Client::new()
        .post(app.http_url("/twilio/incoming"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("CallSid=CA123&From=%2B14165550100&To=%2B15083728299")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_security_headers(&forged, true);
    let refused = get(&app, "/metrics", &[]).await;
    assert_eq!(refused.status(), 401);
    assert_security_headers(&refused, true);
    for path in ["/healthz", "/readyz", "/nothing-here"] {
        assert_security_headers(&get(&app, path, &[]).await, true);
    }
}

fn request(n: u32, urgency: Urgency, created_at: DateTime<Utc>) -> NewCallbackRequest {
    NewCallbackRequest {
        id: Uuid::new_v4(),
        created_at,
        tenant_id: "riverside".into(),
        call_id: None,
        call_sid: Some(format!("CA{n:032}")),
        tool_call_log_id: None,
        transfer_attempt_id: None,
        reason: "message",
        callback_number: format!("+1416555{n:04}"),
        caller_name: Some(format!("Caller {n}")),
        first_name: None,
        last_name: None,
        pet_name: None,
        species: None,
        breed: None,
        age: None,
        concern_description: Some("limping since this morning".into()),
        urgency_reason: None,
        urgency,
        metadata: json!({}),
        text_caller: true,
    }
}

async fn queue_stats_count_requests_by_status_and_urgency(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store: Arc<dyn Store> = db.store().await;
    let now = Utc::now();
    let empty = store.queue_stats(now).await.unwrap();
    assert!(empty.by_status.is_empty() && empty.alerts.is_empty());
    assert_eq!(empty.oldest_pending_at, None);
    assert_eq!(empty.oldest_pending_age(), Duration::ZERO);

    let minutes_ago = |m: i64| now - TimeDelta::minutes(m);
    let oldest = request(1, Urgency::Normal, minutes_ago(10));
    for r in [
        &oldest,
        &request(2, Urgency::Normal, minutes_ago(5)),
        &request(3, Urgency::Critical, minutes_ago(1)),
        &request(4, Urgency::Urgent, minutes_ago(3)),
    ] {
        store.insert_callback_request(r).await.unwrap();
    }
    // Staff called the urgent one back.
    let urgent = store
        .callback_requests(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.urgency_level == "urgent")
        .unwrap();
    store
        .staff_action(
            urgent.id,
            &StaffAction::Resolve { note: None },
            "tests",
            now,
        )
        .await
        .unwrap();
    // The critical one is claimed first and refused by the frontend: a dead letter.
    let lease = now + TimeDelta::seconds(60);
    let claimed = store.claim_callbacks("w1", now, lease, 1).await.unwrap();
    assert_eq!(claimed[0].urgency_level, "critical");
    let record = DeliveryRecord {
        request_id: claimed[0].id,
        attempt: claimed[0].delivery_attempt,
        worker_id: "w1".into(),
        started_at: now,
        finished_at: now,
        latency_ms: 12.0,
        status_code: Some(400),
        error: Some("400 Bad Request".into()),
        response_excerpt: None,
        frontend_response: None,
        outcome: DeliveryOutcome::DeadLetter {
            reason: "rejected: 400".into(),
            rejected: true,
        },
    };
    assert!(store.record_delivery(&record).await.unwrap());
    // The oldest normal one is being posted right now.
    let in_flight = store.claim_callbacks("w1", now, lease, 1).await.unwrap();
    assert_eq!(in_flight[0].id, oldest.id);

    let stats = store.queue_stats(now).await.unwrap();
    assert_eq!(stats.at, now);
    assert_eq!(stats.requests("pending", "normal"), 2);
    assert_eq!(stats.requests("dead_letter", "critical"), 1);
    assert_eq!(stats.requests("resolved", "urgent"), 1);
    assert_eq!(stats.requests("pending", "urgent"), 0);
    assert_eq!(stats.requests_with_status("pending"), 2);
    assert_eq!(stats.by_status.iter().map(|c| c.count).sum::<i64>(), 4);
    assert_eq!(stats.in_flight, 1);
    // Claimed or not, it still waits for delivery; PostgreSQL keeps microseconds.
    let oldest_at = stats.oldest_pending_at.expect("an oldest request");
    assert!((oldest_at - oldest.created_at).abs() < TimeDelta::milliseconds(1));
    let age = stats.oldest_pending_age().as_secs_f64();
    assert!((age - 600.0).abs() < 0.01, "{age}");
    // The critical request and its dead letter each queued an alert.
    assert_eq!(stats.alerts("critical_request", "pending"), 1);
    assert_eq!(stats.alerts("dead_letter", "pending"), 1);
    assert_eq!(stats.alerts.iter().map(|c| c.count).sum::<i64>(), 2);
}

/// Every JSON log line of this process, formatted as `lifeline` formats them (the current
/// span's fields with each line), at `info`.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    static LINES: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        struct Sink(&'static Mutex<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        // The layer `lifeline serve` writes its lines with, to a buffer.
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::new("info"))
            .with(lifeline::telemetry::json_lines(move || Sink(lines)));
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber");
        lines
    })
}

/// The captured lines that mention `needle`, parsed.
fn log_lines_with(needle: &str) -> Vec<Value> {
    let text = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    text.lines()
        .filter(|l| l.contains(needle))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn logs_name_the_call_and_the_invocation_and_keep_the_caller_private(engine: Engine) {
    captured_logs();
    let app = TestApp::start(engine).await;
    let call_sid = format!("log-test-{}", Uuid::new_v4());
    let mut fs = common::FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        &call_sid,
    )
    .await
    .unwrap();
    fs.session_new().await;
    fs.tool_call(
        "inv-log-1",
        "collect_info",
        json!({
            "callback_number": "(416) 818-9171",
            "first_name": "Jeremy",
            "pet_name": "Tommie",
            "concern_description": "needs a refill of her thyroid medication",
        }),
    )
    .await;
    fs.tool_output("inv-log-1").await;
    fs.close().await;

    let lines = log_lines_with(&call_sid);
    // The tool call's own line carries every id in its span.
    let done = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tool call done")
        .unwrap_or_else(|| panic!("no tool call line in {lines:#?}"));
    assert_eq!(done["span"]["name"], "tool_call");
    assert_eq!(done["span"]["call"], call_sid.as_str());
    assert_eq!(done["span"]["invocation"], "inv-log-1");
    assert_eq!(done["span"]["tool"], "collect_info");
    assert_eq!(done["span"]["tenant"], "riverside");
    assert_eq!(done["span"]["platform"], "jambonz");
    // The socket's lines name the call too.
    assert!(
        lines.iter().any(
            |l| l["span"]["name"] == "jambonz_socket" && l["span"]["call"] == call_sid.as_str()
        ),
        "{lines:#?}"
    );
    // Nothing at info level holds the caller's number or their concern.
    let everything = String::from_utf8(captured_logs().lock().unwrap().clone()).unwrap();
    for secret in ["8189171", "4168189171", "thyroid"] {
        assert!(
            !everything.contains(secret),
            "{secret} logged:\n{everything}"
        );
    }
}
