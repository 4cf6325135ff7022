//! Input lifeline must take even when it is odd, through its real interfaces, on both engines:
//! NUL characters (which PostgreSQL cannot store) in what the model sends, in call data from the
//! wire and in a frontend's answer; a `hang_up` reason longer than any text argument may be.
//!
//! NUL is stored as U+FFFD on both engines (see `src/store/text.rs`): the caller's request is
//! kept, never refused or lost over one stray character.

mod common;

use std::time::Duration;

use common::{Engine, TestApp, TestDb};
use lifeline::store::{CallbackFilter, StoreError};
use lifeline::tools::Platform;
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

on_both_engines!(
    nul_in_a_jambonz_tool_call_is_stored_escaped_and_shown_to_staff,
    nul_in_an_http_tool_call_is_stored_and_answered_200,
    nul_in_call_data_from_the_wire_is_stored_escaped_and_the_call_still_transfers,
    a_frontends_answer_with_nul_is_kept_escaped,
    lookups_escape_their_keys_as_writes_do,
    hang_up_with_a_long_or_unreadable_reason_still_hangs_up,
);

const NURSE: &str = "night-nurse";
const NURSE_PASSWORD: &str = "correct horse battery";
const TOOL_KEY: &str = "global-tool-key-0123456789";

/// A staff account (for the dashboard) and an HTTP tool key.
fn sections() -> String {
    format!(
        r#"
[ultravox]
tool_api_keys = ["{TOOL_KEY}"]

[[staff]]
username = "{NURSE}"
password_hash = "{}"
"#,
        lifeline::ops::admin::auth::hash_password(NURSE_PASSWORD).unwrap()
    )
}

/// The `tool_data` of a log row (the store's row type leaves it out).
async fn tool_data(db: &TestDb, log_id: Uuid) -> Value {
    let sql = "SELECT tool_data FROM tool_call_logs WHERE id = $1";
    let data: sqlx::types::Json<Value> = if db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(log_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query_scalar(sql)
            .bind(log_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    data.0
}

fn sanitized(data: &Value) -> Vec<String> {
    let mut paths: Vec<String> = data["sanitized"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_data.sanitized in {data}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    paths.sort();
    paths
}

/// Runs `lifeline callbacks ARGS` against the app's database.
async fn cli(db: &TestDb, args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .arg("callbacks")
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("USER", NURSE)
            .output(),
    )
    .await
    .expect("cli hung")
    .expect("run cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).expect("the CLI prints UTF-8"),
    )
}

/// A logged-in staff browser: the login form's CSRF token and cookie, then the session cookie.
struct Staff {
    http: reqwest::Client,
    base: String,
    cookies: Vec<String>,
}

impl Staff {
    async fn login(app: &TestApp) -> Self {
        let mut staff = Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.http_url(""),
            cookies: Vec::new(),
        };
        let form = staff.get("/admin/login").await;
        let csrf = hidden(&form, "csrf");
        let status = staff
            .post(
                "/admin/login",
                &[
                    ("username", NURSE),
                    ("password", NURSE_PASSWORD),
                    ("csrf", &csrf),
                ],
            )
            .await;
        assert_eq!(status, 303, "logged in");
        staff
    }

    fn keep(&mut self, response: &reqwest::Response) {
        for c in response.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap().to_string();
            let name = pair.split('=').next().unwrap().to_string();
            self.cookies.retain(|c| !c.starts_with(&format!("{name}=")));
            self.cookies.push(pair);
        }
    }

    async fn get(&mut self, path: &str) -> String {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", self.cookies.join("; "))
            .send()
            .await
            .unwrap();
        self.keep(&response);
        assert_eq!(response.status(), 200, "{path}");
        response.text().await.unwrap()
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> u16 {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", self.cookies.join("; "))
            .header("origin", self.base.trim_end_matches('/'))
            .form(form)
            .send()
            .await
            .unwrap();
        self.keep(&response);
        response.status().as_u16()
    }
}

fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body.find(&marker).expect("hidden input") + marker.len();
    body[start..start + body[start..].find('"').unwrap()].to_string()
}

// --- the model's arguments -----------------------------------------------------------------------

async fn nul_in_a_jambonz_tool_call_is_stored_escaped_and_shown_to_staff(engine: Engine) {
    let app = TestApp::start_with_sections(engine, &sections()).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let id = "inv\u{0}nul-1";
    let args = json!({
        "callback_number": "(416) 818-9171",
        "first_name": "Jeremy",
        "last_name": "Greven",
        "pet_name": "Tom\u{0}mie",
        "species": "Cat",
        "concern_description": "vomiting\u{0} since noon",
        "favourite\u{0}toy": "ball\u{0}",
    });
    fs.tool_call(id, "collect_info", args.clone()).await;
    // The answer carries the id exactly as the model sent it (NUL included), so the model can
    // match it; and it is a success, not `database, retryable`.
    let out = fs.tool_output(id).await;
    let text = out["result"].as_str().unwrap();
    assert!(text.starts_with("Recorded."), "{text}");

    let call = app.call(&fs.call_sid).await;
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.status, "success");
    assert_eq!(log.invocation_id.as_deref(), Some("inv\u{FFFD}nul-1"));
    let params = &log.tool_parameters.0;
    assert_eq!(params["pet_name"], "Tom\u{FFFD}mie");
    assert_eq!(params["favourite\u{FFFD}toy"], "ball\u{FFFD}");
    assert_eq!(
        sanitized(&tool_data(&app.db, log.id).await),
        [
            "invocation_id",
            "invocation_key",
            "plan.callback.concern_description",
            "plan.callback.pet_name",
            "tool_parameters.concern_description",
            "tool_parameters.favourite\u{FFFD}toy",
            "tool_parameters.favourite\u{FFFD}toy",
            "tool_parameters.pet_name",
        ]
    );
    let callbacks = app.callbacks_of(call.id).await;
    assert_eq!(callbacks.len(), 1);
    let request = &callbacks[0];
    assert_eq!(request.pet_name.as_deref(), Some("Tom\u{FFFD}mie"));
    assert_eq!(
        request.concern_description.as_deref(),
        Some("vomiting\u{FFFD} since noon")
    );
    assert_eq!(request.tool_call_log_id, Some(log.id));

    // The same tool call again (the same NUL id): recognised as a repeat, nothing written twice.
    fs.tool_call(id, "collect_info", args).await;
    let again = fs.tool_output(id).await;
    assert_eq!(again["result"], out["result"]);
    assert_eq!(
        app.store
            .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(app.callbacks_of(call.id).await.len(), 1);

    // A number the model garbled with NUL is a precise validation error, recorded as such.
    fs.tool_call(
        "inv-bad-number",
        "collect_info",
        json!({ "callback_number": "416\u{0}818", "concern_description": "cough" }),
    )
    .await;
    let refused: Value = serde_json::from_str(
        fs.tool_output("inv-bad-number").await["result"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(refused["error"], "validation", "{refused}");
    assert_eq!(refused["retryable"], false);
    let failed = app
        .store
        .find_invocation(Platform::Jambonz, &fs.call_sid, "id:inv-bad-number")
        .await
        .unwrap()
        .expect("the refused call is logged");
    assert_eq!(failed.status, "failed");
    assert_eq!(failed.error_kind.as_deref(), Some("validation"));

    // Staff see it: the CLI and the dashboard.
    let (code, shown) = cli(&app.db, &["show", &request.id.to_string()]).await;
    assert_eq!(code, 0);
    assert!(shown.contains("vomiting\u{FFFD} since noon"), "{shown}");
    assert!(shown.contains("Tom\u{FFFD}mie"), "{shown}");
    let mut staff = Staff::login(&app).await;
    let page = staff.get("/admin").await;
    assert!(page.contains(&request.id.to_string()), "listed");
    assert!(page.contains("vomiting\u{FFFD} since noon"), "shown");
    // And a note typed with a NUL (a form can send %00) is kept, not a 500.
    let csrf = hidden(&page, "csrf");
    let status = staff
        .post(
            &format!("/admin/callbacks/{}/resolve", request.id),
            &[("csrf", &csrf), ("note", "called\u{0} back")],
        )
        .await;
    assert_eq!(status, 303);
    let row = app
        .store
        .callback_request(request.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.resolution_note.as_deref(), Some("called\u{FFFD} back"));
}

async fn nul_in_an_http_tool_call_is_stored_and_answered_200(engine: Engine) {
    let app = TestApp::start_with_sections(engine, &sections()).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let call = app.call(&fs.call_sid).await;
    // The Ultravox call of this call, as its createCall event links it.
    let ultravox_id = format!("uv-{}", Uuid::new_v4());
    app.store
        .set_ultravox_call_id(call.id, &ultravox_id)
        .await
        .unwrap();

    let response = reqwest::Client::new()
        .post(app.http_url("/ultravox/tools/collect_info"))
        .header("X-API-Key", TOOL_KEY)
        .header("X-Ultravox-Call-Id", &ultravox_id)
        .json(&json!({
            "callback_number": "(416) 818-9171",
            "caller_name": "Jeremy\u{0} Greven",
            "pet_name": "Tom\u{0}mie",
            "concern_description": "limping\u{0}",
            "extra\u{0}": ["x\u{0}"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "not 503");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true, "{body}");

    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].status, "success");
    assert_eq!(
        logs[0].caller_name.as_deref(),
        Some("Jeremy\u{FFFD} Greven")
    );
    assert_eq!(
        logs[0].tool_parameters.0["extra\u{FFFD}"],
        json!(["x\u{FFFD}"])
    );
    let requests = app.callbacks_of(call.id).await;
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].concern_description.as_deref(),
        Some("limping\u{FFFD}")
    );
    assert_eq!(
        requests[0].caller_name.as_deref(),
        Some("Jeremy\u{FFFD} Greven")
    );
    let paths = sanitized(&tool_data(&app.db, logs[0].id).await);
    assert!(
        paths.contains(&"tool_parameters.pet_name".to_string()),
        "{paths:?}"
    );
    // Readable through every list staff use.
    let listed = app
        .store
        .callback_requests(&CallbackFilter {
            tenant_id: Some("riverside".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed[0].pet_name.as_deref(), Some("Tom\u{FFFD}mie"));
}

// --- call data from the wire -----------------------------------------------------------------------

async fn nul_in_call_data_from_the_wire_is_stored_escaped_and_the_call_still_transfers(
    engine: Engine,
) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    let call_sid = fs.call_sid.clone();
    let mut msg = fs.session_message("session:new");
    msg["data"]["from"] = json!("+1508308\u{0}4809");
    msg["data"]["direction"] = json!("inbound\u{0}");
    let ack = fs.request(msg).await;
    let verbs = ack["data"].as_array().expect("the agent starts");
    assert_eq!(verbs[1]["verb"], "llm");

    // The call is recorded, so it can transfer.
    let call = app.call(&call_sid).await;
    assert_eq!(call.from_number.as_deref(), Some("+1508308\u{FFFD}4809"));
    assert_eq!(call.direction, "inbound\u{FFFD}");
    fs.tool_call(
        "inv-transfer",
        "transfer",
        json!({ "callback_number": "4168189171", "reason": "bleeding\u{0}" }),
    )
    .await;
    let out = fs.tool_output("inv-transfer").await;
    assert!(!out["result"].as_str().unwrap().contains("error"), "{out}");
    let redirect = fs.redirect().await;
    assert!(redirect.iter().any(|v| v["verb"] == "dial"), "{redirect:?}");
    let attempts = app.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].reason, "bleeding\u{FFFD}");

    // Errors Jambonz reports (they echo text back) and status changes are recorded too.
    let mut error = common::fixture("jambonz:error", None);
    error["call_sid"] = json!(call_sid);
    error["data"]["details"] = json!("bad\u{0}verb");
    fs.send(&error).await;
    let mut status = common::fixture("call:status", None);
    status["call_sid"] = json!(call_sid);
    status["data"]["call_sid"] = json!(call_sid);
    status["data"]["call_status"] = json!("in-progress\u{0}");
    fs.send(&status).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = app.store.call_events(call.id).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        if kinds.contains(&"jambonz_error") && kinds.contains(&"status") {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events not recorded: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = events.iter().find(|e| e.kind == "jambonz_error").unwrap();
    assert_eq!(error.detail.0["details"], "bad\u{FFFD}verb");
    let status = events.iter().find(|e| e.kind == "status").unwrap();
    assert_eq!(status.detail.0["call_status"], "in-progress\u{FFFD}");
    assert_eq!(app.call(&call_sid).await.status, "in-progress\u{FFFD}");
    // The on-call person answered and the bridged call ended: the transfer has its outcome.
    fs.dial_result("completed", 200).await;
}

/// A platform id holding a NUL is stored escaped and found again by the id as the platform
/// sends it, so a call or a repeated invocation is recognised whatever its id holds.
async fn lookups_escape_their_keys_as_writes_do(engine: Engine) {
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let call_ref = "CA\u{0}nul";
    let call = store
        .upsert_call(&lifeline::store::NewCall {
            id: Uuid::now_v7(),
            tenant_id: "riverside".into(),
            platform: Platform::Twilio,
            call_ref: call_ref.into(),
            from_number: Some("+1416\u{0}".into()),
            to_number: None,
            direction: "inbound".into(),
            status: "ringing".into(),
            account_sid: None,
            application_sid: None,
            started_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    assert_eq!(call.call_ref, "CA\u{FFFD}nul");
    let found = store
        .find_call(Platform::Twilio, call_ref)
        .await
        .unwrap()
        .expect("found by the raw id");
    assert_eq!(found.id, call.id);
    store
        .set_ultravox_call_id(call.id, "uv\u{0}1")
        .await
        .unwrap();
    let by_ultravox = store
        .find_call_by_ultravox_id("uv\u{0}1")
        .await
        .unwrap()
        .expect("found by the raw Ultravox id");
    assert_eq!(by_ultravox.ultravox_call_id.as_deref(), Some("uv\u{FFFD}1"));
    assert!(
        store
            .tool_call_logs_for_call(Platform::Twilio, call_ref)
            .await
            .unwrap()
            .is_empty()
    );
}

// --- a frontend's answer ----------------------------------------------------------------------------

async fn a_frontends_answer_with_nul_is_kept_escaped(engine: Engine) {
    let frontend = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/callbacks"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/json")
                .set_body_string(r#"{"received":"ok\u0000","note\u0000":1}"#),
        )
        .mount(&frontend)
        .await;
    let sections = format!(
        "[delivery]\nfrontend_url = \"{}/callbacks\"\n[worker]\nin_process = false\n",
        frontend.uri()
    );
    let app = TestApp::start_with_sections(engine, &sections).await;
    let mut fs = app.feature_server().await;
    fs.collect_info_call("inv-deliver", "sneezing").await;
    let call = app.call(&fs.call_sid).await;
    let id = app.callbacks_of(call.id).await[0].id;
    let worker =
        lifeline::worker::Worker::new(app.server.state.config.clone(), app.store.clone()).unwrap();
    let report = worker.run_once().await.unwrap();
    assert_eq!(report.delivered, 1, "{report:?}");
    let row = app.store.callback_request(id).await.unwrap().unwrap();
    assert_eq!(row.status, "posted");
    assert_eq!(
        row.frontend_response.map(|j| j.0),
        Some(json!({ "received": "ok\u{FFFD}", "note\u{FFFD}": 1 })),
        "what the frontend said is kept, escaped"
    );
    let attempts = app.store.delivery_attempts(id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert!(
        attempts[0]
            .response_excerpt
            .as_deref()
            .unwrap()
            .contains("ok\\u0000")
    );
}

// --- hang_up ------------------------------------------------------------------------------------------

async fn hang_up_with_a_long_or_unreadable_reason_still_hangs_up(engine: Engine) {
    let app = TestApp::start(engine).await;
    // Over the 2,000-character limit of text arguments, in characters of two and four bytes.
    let long = format!("the caller said goodbye {}", "é🐈".repeat(1200));
    for (n, args) in [
        json!({ "reason": long }),
        json!({ "reason": { "code": 3 } }),
        json!(["goodbye"]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut fs = app.feature_server().await;
        fs.session_new().await;
        let id = format!("inv-bye-{n}");
        fs.tool_call(&id, "hang_up", args.clone()).await;
        let out = fs.tool_output(&id).await;
        assert_eq!(out["result"], "The call is ending.", "{args}");
        let verbs = fs.redirect().await;
        assert_eq!(verbs.len(), 1);
        assert_eq!(verbs[0]["verb"], "hangup");
        fs.assert_verbs_valid();

        let log = app
            .store
            .find_invocation(Platform::Jambonz, &fs.call_sid, &format!("id:{id}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.status, "success");
        // The log keeps the arguments as the model sent them.
        assert_eq!(log.tool_parameters.0, args);
        let kept = &log.result.as_ref().unwrap().0["data"]["reason"];
        if n == 0 {
            let kept = kept.as_str().unwrap();
            assert_eq!(kept.chars().count(), 2000);
            assert!(kept.ends_with('…'));
            assert!(long.starts_with(kept.trim_end_matches('…')));
        } else {
            assert_eq!(kept, &Value::Null);
        }
    }
}

// --- the backstop -------------------------------------------------------------------------------------

/// Should text ever reach PostgreSQL unescaped, its refusal is a permanent, precise error, not
/// a database outage (SQLite stores NUL, so there is nothing to refuse there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_nul_is_an_unstorable_error_not_an_outage() {
    let db = TestDb::new(Engine::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let text = sqlx::query("SELECT $1::text")
        .bind("a\u{0}b")
        .execute(&pool)
        .await
        .unwrap_err();
    let json = sqlx::query("SELECT $1::jsonb")
        .bind(sqlx::types::Json(json!({ "a": "b\u{0}" })))
        .execute(&pool)
        .await
        .unwrap_err();
    for e in [text, json] {
        let e = StoreError::from(e);
        assert!(e.is_unstorable(), "{e}");
        let answer = e.tool_error();
        assert_eq!(answer.kind.as_str(), "validation");
        assert!(!answer.retryable);
    }
    let down = StoreError::from(sqlx::Error::PoolTimedOut);
    assert!(!down.is_unstorable());
    assert!(down.tool_error().retryable);
}
