//! The on-call dashboard over HTTP, as a browser uses it: login with the form's CSRF cookie,
//! the session cookie, every view, every action (with its CSRF token and origin), the live feed,
//! and what is refused: no session, a forged or cross-site action, another clinic's data, too
//! many failed logins.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{Engine, TestApp};
use lifeline::ops::admin::auth::hash_password;
use lifeline::store::{DeliveryOutcome, DeliveryRecord, NewCallbackRequest, Store};
use lifeline::tools::urgency::Urgency;
use serde_json::json;
use uuid::Uuid;

on_both_engines!(
    pages_and_actions_refuse_requests_without_a_session,
    login_sets_a_strict_session_cookie_and_logout_ends_it,
    repeated_failed_logins_lock_the_account,
    logins_need_the_forms_token_and_this_site,
    needs_callback_lists_open_requests_critical_first_with_tel_links,
    actions_are_audited_and_refused_without_token_or_from_another_site,
    staff_of_one_clinic_see_and_touch_only_its_requests,
    timeline_dead_letters_alerts_and_stats_show_a_calls_story,
    the_live_feed_streams_new_requests_as_they_are_queued,
    accounts_made_with_the_cli_log_in_and_removing_one_ends_its_sessions,
    on_call_figures_per_clinic_day_match_a_seeded_scenario,
);

const NURSE: &str = "night-nurse";
const NURSE_PASSWORD: &str = "correct horse battery";
const HILLSIDE_NURSE: &str = "hillside-nurse";

/// Two staff accounts: one for every clinic, one for Hillside only.
fn staff_sections() -> String {
    format!(
        r#"
[[staff]]
username = "{NURSE}"
password_hash = "{}"

[[staff]]
username = "{HILLSIDE_NURSE}"
password_hash = "{}"
tenant = "hillside"
"#,
        hash_password(NURSE_PASSWORD).unwrap(),
        hash_password(NURSE_PASSWORD).unwrap(),
    )
}

async fn app(engine: Engine) -> TestApp {
    TestApp::start_with_sections(engine, &staff_sections()).await
}

/// A browser: no redirects followed, cookies kept by hand.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: app.http_url(""),
            cookies: Vec::new(),
        }
    }

    fn host(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, set_cookies: &[String]) {
        for c in set_cookies {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Page {
        let resp = req
            .header("cookie", self.cookie_header())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let set_cookies: Vec<String> = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        self.keep(&set_cookies);
        Page {
            status,
            location,
            set_cookies,
            body: resp.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// A form POST as a same-site page sends it.
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.post_from(path, form, Some(&origin)).await
    }

    async fn post_from(&mut self, path: &str, form: &[(&str, &str)], origin: Option<&str>) -> Page {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("host", self.host())
            .form(form);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        self.send(req).await
    }

    /// Logs in through the form.
    async fn login(&mut self, user: &str, password: &str) -> Page {
        let form = self.get("/admin/login").await;
        assert_eq!(form.status, 200);
        let csrf = hidden(&form.body, "csrf");
        self.post(
            "/admin/login",
            &[("username", user), ("password", password), ("csrf", &csrf)],
        )
        .await
    }

    /// The CSRF token of the logged-in session, read from a page.
    async fn csrf(&mut self) -> String {
        let page = self.get("/admin").await;
        assert_eq!(page.status, 200, "{}", page.body);
        hidden(&page.body, "csrf")
    }
}

/// The value of the first hidden input named `name`.
fn hidden(body: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        + marker.len();
    body[start..start + body[start..].find('"').unwrap()].to_string()
}

fn request(n: usize, tenant: &str, urgency: Urgency) -> NewCallbackRequest {
    NewCallbackRequest {
        id: Uuid::new_v4(),
        created_at: Utc::now(),
        tenant_id: tenant.into(),
        call_id: None,
        call_sid: None,
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
        pet_name: Some("Rex".into()),
        species: Some("Dog".into()),
        breed: None,
        age: None,
        concern_description: Some(format!("concern <b>{n}</b>")),
        urgency_reason: None,
        urgency,
        metadata: json!({}),
        text_caller: true,
    }
}

async fn enqueue(store: &Arc<dyn Store>, r: &NewCallbackRequest) {
    store.insert_callback_request(r).await.unwrap();
}

async fn pages_and_actions_refuse_requests_without_a_session(engine: Engine) {
    let app = app(engine).await;
    let mut b = Browser::new(&app);
    for path in [
        "/admin",
        "/admin/dead-letters",
        "/admin/alerts",
        "/admin/stats",
        "/admin/system",
        "/admin/events",
        &format!("/admin/calls/{}", Uuid::new_v4()),
    ] {
        let page = b.get(path).await;
        assert_eq!(page.status, 303, "{path}");
        assert_eq!(page.location.as_deref(), Some("/admin/login"), "{path}");
    }
    let r = request(1, "riverside", Urgency::Critical);
    enqueue(&app.store, &r).await;
    let page = b
        .post(
            &format!("/admin/callbacks/{}/resolve", r.id),
            &[("csrf", "x"), ("note", "done")],
        )
        .await;
    assert_eq!(page.status, 401);
    // A made-up session cookie is no session.
    b.cookies.push(("lifeline_session".into(), "forged".into()));
    assert_eq!(b.get("/admin").await.status, 303);
    assert!(
        app.store
            .callback_request(r.id)
            .await
            .unwrap()
            .unwrap()
            .resolved_at
            .is_none()
    );
}

async fn login_sets_a_strict_session_cookie_and_logout_ends_it(engine: Engine) {
    let app = app(engine).await;
    let mut b = Browser::new(&app);
    let wrong = b.login(NURSE, "not the password").await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("Wrong username or password"));
    let unknown = b.login("nobody", NURSE_PASSWORD).await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("Wrong username or password"));

    let ok = b.login(NURSE, NURSE_PASSWORD).await;
    assert_eq!(ok.status, 303);
    assert_eq!(ok.location.as_deref(), Some("/admin"));
    let session = ok
        .set_cookies
        .iter()
        .find(|c| c.starts_with("lifeline_session="))
        .expect("session cookie");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(
        !session.contains("Secure"),
        "plain http in tests: {session}"
    );
    let home = b.get("/admin").await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains("Needs callback"));
    assert!(home.body.contains(NURSE));

    let csrf = hidden(&home.body, "csrf");
    // A logout without the token (a forged link) does nothing.
    assert_eq!(
        b.post("/admin/logout", &[("csrf", "nope")]).await.status,
        403
    );
    assert_eq!(b.get("/admin").await.status, 200);
    let out = b.post("/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(b.get("/admin").await.status, 303, "the session is gone");
}

async fn repeated_failed_logins_lock_the_account(engine: Engine) {
    let app = app(engine).await;
    let mut b = Browser::new(&app);
    for _ in 0..5 {
        assert_eq!(b.login(NURSE, "guess").await.status, 401);
    }
    let locked = b.login(NURSE, NURSE_PASSWORD).await;
    assert_eq!(
        locked.status, 429,
        "even the right password waits: {}",
        locked.body
    );
    assert!(locked.body.contains("locked until"));
    // Another account is not affected.
    assert_eq!(b.login(HILLSIDE_NURSE, NURSE_PASSWORD).await.status, 303);
}

async fn logins_need_the_forms_token_and_this_site(engine: Engine) {
    let app = app(engine).await;
    let mut b = Browser::new(&app);
    // No form, no cookie: refused.
    let bare = b
        .post(
            "/admin/login",
            &[
                ("username", NURSE),
                ("password", NURSE_PASSWORD),
                ("csrf", "x"),
            ],
        )
        .await;
    assert_eq!(bare.status, 403);
    // The form's token, posted from another site: refused.
    let form = b.get("/admin/login").await;
    let csrf = hidden(&form.body, "csrf");
    let cross = b
        .post_from(
            "/admin/login",
            &[
                ("username", NURSE),
                ("password", NURSE_PASSWORD),
                ("csrf", &csrf),
            ],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(cross.status, 403);
    assert!(
        !cross
            .set_cookies
            .iter()
            .any(|c| c.starts_with("lifeline_session="))
    );
}

async fn needs_callback_lists_open_requests_critical_first_with_tel_links(engine: Engine) {
    let app = app(engine).await;
    let normal = request(1, "riverside", Urgency::Normal);
    let critical = request(2, "riverside", Urgency::Critical);
    enqueue(&app.store, &normal).await;
    enqueue(&app.store, &critical).await;
    let mut b = Browser::new(&app);
    b.login(NURSE, NURSE_PASSWORD).await;
    let page = b.get("/admin").await;
    let body = &page.body;
    let (c, n) = (
        body.find(&critical.id.to_string()).unwrap(),
        body.find(&normal.id.to_string()).unwrap(),
    );
    assert!(c < n, "critical first");
    assert!(
        body.contains("href=\"tel:+14165550002\""),
        "a tap calls back"
    );
    assert!(body.contains("Caller 2") && body.contains("Rex") && body.contains("Dog"));
    assert!(body.contains("Transfer failed") && body.contains("Message"));
    assert!(body.contains("waiting for delivery"));
    // The concern is shown as text, never as markup.
    assert!(body.contains("concern &lt;b&gt;2&lt;/b&gt;"), "escaped");
    assert!(!body.contains("<b>2</b>"));
    // The page's only script is a file of this site, which the CSP allows; nothing inline.
    assert!(body.contains("<script src=\"/admin/static/app.js\" defer></script>"));
    assert!(!body.contains("<script>"));
    let headers = reqwest::get(app.http_url("/admin/login")).await.unwrap();
    let h = |n: &str| headers.headers()[n].to_str().unwrap().to_string();
    assert!(h("content-security-policy").contains("script-src 'self'"));
    assert!(h("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(h("x-frame-options"), "DENY");
    assert_eq!(h("x-content-type-options"), "nosniff");
    let js = b.get("/admin/static/app.js").await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("EventSource"));
}

async fn actions_are_audited_and_refused_without_token_or_from_another_site(engine: Engine) {
    let app = app(engine).await;
    let r = request(3, "riverside", Urgency::Urgent);
    enqueue(&app.store, &r).await;
    let mut b = Browser::new(&app);
    b.login(NURSE, NURSE_PASSWORD).await;
    let csrf = b.csrf().await;
    let path = format!("/admin/callbacks/{}/resolve", r.id);

    let forged = b.post(&path, &[("csrf", "forged"), ("note", "x")]).await;
    assert_eq!(forged.status, 403);
    let cross = b
        .post_from(
            &path,
            &[("csrf", &csrf), ("note", "x")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(cross.status, 403);
    // Resolving needs a note (who called back, when, the outcome): none, or only blanks, is
    // refused.
    for note in [None, Some("   ")] {
        let mut form = vec![("csrf", csrf.as_str())];
        if let Some(n) = note {
            form.push(("note", n));
        }
        let bare = b.post(&path, &form).await;
        assert_eq!(bare.status, 400, "{note:?}");
        assert!(bare.body.contains("needs a note"), "{}", bare.body);
    }
    let row = app.store.callback_request(r.id).await.unwrap().unwrap();
    assert!(row.resolved_at.is_none(), "refused actions change nothing");

    let done = b
        .post(
            &path,
            &[("csrf", &csrf), ("note", "called back, dog is fine")],
        )
        .await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location.as_deref(), Some("/admin"));
    let row = app.store.callback_request(r.id).await.unwrap().unwrap();
    assert_eq!(row.resolved_by.as_deref(), Some(NURSE));
    // Marked done twice (two nurses at once): the first note stays.
    let twice = b.post(&path, &[("csrf", &csrf), ("note", "me too")]).await;
    assert_eq!(twice.status, 409);
    assert!(twice.body.contains("already resolved"));
    assert_eq!(
        row.resolution_note.as_deref(),
        Some("called back, dog is fine")
    );
    let page = b.get("/admin").await;
    assert!(
        !page.body.contains(&r.id.to_string()),
        "done requests leave the list"
    );

    // A cancelled request can be queued again; a resolved one cannot.
    let other = request(4, "riverside", Urgency::Normal);
    enqueue(&app.store, &other).await;
    let cancel = b
        .post(
            &format!("/admin/callbacks/{}/cancel", other.id),
            &[("csrf", &csrf), ("note", "duplicate")],
        )
        .await;
    assert_eq!(cancel.status, 303);
    let retry = b
        .post(
            &format!("/admin/callbacks/{}/retry", other.id),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(retry.status, 303);
    let row = app.store.callback_request(other.id).await.unwrap().unwrap();
    assert_eq!(row.status, "pending");
    let again = b
        .post(
            &format!("/admin/callbacks/{}/retry", r.id),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(again.status, 409);
    assert!(again.body.contains("resolved by staff"));

    let trail = app.store.audit_trail(other.id).await.unwrap();
    let actions: Vec<(&str, &str)> = trail
        .iter()
        .map(|a| (a.action.as_str(), a.actor.as_str()))
        .collect();
    assert_eq!(actions, [("cancel", NURSE), ("retry", NURSE)]);
    assert_eq!(
        app.store.audit_trail(r.id).await.unwrap()[0].action,
        "resolve"
    );
}

async fn staff_of_one_clinic_see_and_touch_only_its_requests(engine: Engine) {
    let app = app(engine).await;
    let riverside = request(5, "riverside", Urgency::Critical);
    let hillside = request(6, "hillside", Urgency::Critical);
    enqueue(&app.store, &riverside).await;
    enqueue(&app.store, &hillside).await;
    let mut b = Browser::new(&app);
    assert_eq!(b.login(HILLSIDE_NURSE, NURSE_PASSWORD).await.status, 303);
    let page = b.get("/admin").await;
    assert!(page.body.contains(&hillside.id.to_string()));
    assert!(!page.body.contains(&riverside.id.to_string()));
    let csrf = hidden(&page.body, "csrf");
    let other = b
        .post(
            &format!("/admin/callbacks/{}/resolve", riverside.id),
            &[("csrf", &csrf), ("note", "x")],
        )
        .await;
    assert_eq!(other.status, 404);
    assert!(
        app.store
            .callback_request(riverside.id)
            .await
            .unwrap()
            .unwrap()
            .resolved_at
            .is_none()
    );
    for action in ["retry", "cancel"] {
        let other = b
            .post(
                &format!("/admin/callbacks/{}/{action}", riverside.id),
                &[("csrf", &csrf), ("note", "x")],
            )
            .await;
        assert_eq!(other.status, 404, "{action}");
    }
    // Alerts of the other clinic are not listed; the all-clinic queue figures are not shown.
    let alerts = b.get("/admin/alerts").await;
    assert!(alerts.body.contains("hillside") && !alerts.body.contains("riverside"));
    let system = b.get("/admin/system").await;
    assert_eq!(system.status, 200);
    assert!(!system.body.contains("Delivery queue"));
}

async fn timeline_dead_letters_alerts_and_stats_show_a_calls_story(engine: Engine) {
    let app = app(engine).await;
    // A real call: a Jambonz session with a collect_info tool call.
    let mut fs = app.feature_server().await;
    fs.collect_info_call("inv-1", "vomiting and lethargic, emergency")
        .await;
    let call = app.call(&fs.call_sid).await;
    let cb = app.callbacks_of(call.id).await.remove(0);
    assert_eq!(cb.urgency_level, "critical");
    // The frontend refused it: a dead letter (recorded as the worker records one).
    let claimed = app
        .store
        .claim_callbacks(
            "test-worker",
            Utc::now(),
            Utc::now() + chrono::Duration::seconds(60),
            10,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    app.store
        .record_delivery(&DeliveryRecord {
            request_id: cb.id,
            attempt: claimed[0].delivery_attempt,
            worker_id: "test-worker".into(),
            started_at: Utc::now(),
            finished_at: Utc::now(),
            latency_ms: 12.0,
            status_code: Some(422),
            error: Some("frontend answered 422 Unprocessable Entity".into()),
            response_excerpt: None,
            frontend_response: None,
            outcome: DeliveryOutcome::DeadLetter {
                reason: "frontend refused the request: frontend answered 422".into(),
                rejected: true,
            },
        })
        .await
        .unwrap();

    let mut b = Browser::new(&app);
    b.login(NURSE, NURSE_PASSWORD).await;
    let home = b.get("/admin").await;
    assert!(home.body.contains(&format!("/admin/calls/{}", call.id)));
    let timeline = b.get(&format!("/admin/calls/{}", call.id)).await;
    assert_eq!(timeline.status, 200);
    for needle in [
        "call started",
        "tool call",
        "collectNameNumberConcernPetName",
        "callback request",
        "delivery attempt",
        "HTTP 422",
        "vomiting and lethargic",
    ] {
        assert!(timeline.body.contains(needle), "timeline lacks {needle}");
    }
    let (started, tool) = (
        timeline.body.find("call started").unwrap(),
        timeline.body.find("tool call").unwrap(),
    );
    assert!(started < tool, "in time order");
    assert_eq!(
        b.get(&format!("/admin/calls/{}", Uuid::new_v4()))
            .await
            .status,
        404
    );

    let dead = b.get("/admin/dead-letters").await;
    assert!(dead.body.contains(&cb.id.to_string()));
    assert!(
        dead.body
            .contains("NOT delivered: frontend refused the request")
    );
    assert!(dead.body.contains("Retry delivery"));

    let alerts = b.get("/admin/alerts").await;
    assert_eq!(alerts.status, 200);
    assert!(alerts.body.contains("critical request"));
    assert!(alerts.body.contains("not delivered"));

    let system = b.get("/admin/system").await;
    assert_eq!(system.status, 200);
    assert!(system.body.contains("Circuit breakers") && system.body.contains("Delivery queue"));
    assert!(
        system.body.contains("<td>dead_letter</td><td>1</td>"),
        "one critical dead letter: {}",
        system.body
    );
    assert!(system.body.contains("Nothing is waiting for delivery."));
    let stats = b.get("/admin/stats").await;
    assert_eq!(stats.status, 200);
    let today = Utc::now().date_naive().to_string();
    assert!(stats.body.contains(&today) && stats.body.contains("riverside"));
    // The Hillside nurse sees none of it.
    let mut h = Browser::new(&app);
    h.login(HILLSIDE_NURSE, NURSE_PASSWORD).await;
    assert_eq!(
        h.get(&format!("/admin/calls/{}", call.id)).await.status,
        404
    );
    assert!(!h.get("/admin/stats").await.body.contains("riverside"));
}

async fn the_live_feed_streams_new_requests_as_they_are_queued(engine: Engine) {
    let app = app(engine).await;
    let mut b = Browser::new(&app);
    b.login(NURSE, NURSE_PASSWORD).await;
    let page = b.get("/admin").await;
    let since = page
        .body
        .split("data-since=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let resp = b
        .http
        .get(format!(
            "{}/admin/events?since={}",
            b.base,
            since.replace('+', "%2B")
        ))
        .header("cookie", b.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let r = request(7, "riverside", Urgency::Critical);
    enqueue(&app.store, &r).await;
    let mut resp = resp;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(&r.id.to_string()) && text.contains("\n\n") {
                break;
            }
        }
    })
    .await
    .expect("the new request is streamed");
    assert!(text.contains("event: callback"), "{text}");
    assert!(text.contains("data-urgency=\"critical\""), "{text}");
    assert!(text.contains("tel:+14165550007"), "{text}");

    // Logged out elsewhere: the feed stops sending and ends.
    let csrf = hidden(&page.body, "csrf");
    assert_eq!(
        b.post("/admin/logout", &[("csrf", &csrf)]).await.status,
        303
    );
    let later = request(8, "riverside", Urgency::Critical);
    enqueue(&app.store, &later).await;
    let mut after = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            after.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the feed ends after logout");
    assert!(!after.contains(&later.id.to_string()), "{after}");
}

/// `lifeline staff …` with `stdin` as standard input, run as an operator would: with the
/// service's database and configuration (`staff add --tenant` checks the clinic against it).
async fn staff_cli(app: &TestApp, args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    // A directory without a `.env`, so nothing but the settings below reaches the command.
    let cwd = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .arg("staff")
        .args(args)
        .env_clear()
        .current_dir(cwd.path())
        .env("DATABASE_URL", &app.db.url)
        .env("LIFELINE_CONFIG_TOML", common::config_toml(""))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses before it reads its standard input exits with the pipe unread:
    // the write then finds it closed (EPIPE), which is no failure of the test.
    let written = child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .await;
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn accounts_made_with_the_cli_log_in_and_removing_one_ends_its_sessions(engine: Engine) {
    let app = app(engine).await;
    let (code, _, err) = staff_cli(&app, &["add", "day-vet"], "short\n").await;
    assert_eq!(code, 1);
    assert!(err.contains("at least 12 characters"), "{err}");
    let (code, out, err) = staff_cli(
        &app,
        &["add", "day-vet", "--tenant", "riverside"],
        "a long enough password\n",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("day-vet saved (clinic riverside)"), "{out}");
    let mut b = Browser::new(&app);
    assert_eq!(
        b.login("day-vet", "a long enough password").await.status,
        303
    );
    assert_eq!(b.get("/admin").await.status, 200);

    let (code, _, err) = staff_cli(&app, &["remove", "day-vet"], "").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        b.get("/admin").await.status,
        303,
        "the session ended with the account"
    );
    assert_eq!(
        b.login("day-vet", "a long enough password").await.status,
        401
    );

    let (code, hash, _) = staff_cli(&app, &["hash"], "correct horse battery\n").await;
    assert_eq!(code, 0);
    assert!(lifeline::ops::admin::auth::verify_password(
        "correct horse battery",
        hash.trim()
    ));
}

/// Issue 14 item 6: what on-call managers look at, from a seeded scenario written through the
/// store: a transfer whose primary rang out (25 s) and whose secondary accepted 40 s after the
/// first ring; a critical request acknowledged after 4 minutes and resolved after 30. The
/// dashboard's On call table and `/metrics` show the clinic's day.
async fn on_call_figures_per_clinic_day_match_a_seeded_scenario(engine: Engine) {
    use lifeline::store::{NewCall, NewTransferAttempt, StaffAction, TransferFinish};
    let app = app(engine).await;
    let store = &app.store;
    let base = Utc::now();
    let secs = chrono::Duration::seconds;
    let call = store
        .upsert_call(&NewCall {
            id: Uuid::now_v7(),
            tenant_id: "riverside".into(),
            platform: lifeline::tools::Platform::Jambonz,
            call_ref: "stats-call".into(),
            from_number: Some("+14168189171".into()),
            to_number: Some("+15083728299".into()),
            direction: "inbound".into(),
            status: "in-progress".into(),
            account_sid: None,
            application_sid: None,
            started_at: base,
        })
        .await
        .unwrap();
    let attempt = |role: &'static str, step: i32, at| NewTransferAttempt {
        id: Uuid::now_v7(),
        call_id: call.id,
        tenant_id: "riverside".into(),
        tool_call_log_id: None,
        target_role: role,
        target_number: "+15557654321".into(),
        callback_number: "+14168189171".into(),
        caller_name: None,
        reason: "hit by a car".into(),
        pet_name: Some("Max".into()),
        started_at: at,
        chain_step: Some(step),
    };
    let first = attempt("primary", 1, base);
    let second = attempt("secondary", 2, base + secs(25));
    store.start_transfer(&first).await.unwrap();
    let finish = |a: &NewTransferAttempt, at, ok, outcome: &str, next| TransferFinish {
        attempt_id: a.id,
        call_id: call.id,
        at,
        succeeded: ok,
        dial_call_status: Some(if ok { "completed" } else { "no-answer" }.into()),
        dial_sip_status: Some(if ok { 200 } else { 487 }),
        failure_reason: None,
        next,
        callback: None,
        failed_log: None,
        outcome: Some(outcome.into()),
        ring_ms: Some(25_000),
    };
    assert!(
        store
            .finish_transfer(&finish(
                &first,
                base + secs(25),
                false,
                "no_answer",
                Some(second.clone())
            ))
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_transfer_accepted(second.id, base + secs(40))
            .await
            .unwrap()
    );
    assert!(
        store
            .finish_transfer(&finish(&second, base + secs(300), true, "accepted", None))
            .await
            .unwrap()
    );
    let mut critical = request(1, "riverside", Urgency::Critical);
    critical.created_at = base;
    critical.call_id = Some(call.id);
    store.insert_callback_request(&critical).await.unwrap();
    assert!(
        store
            .acknowledge_page(
                critical.id,
                "+15557654321",
                "sms",
                base + secs(240),
                base + secs(2040)
            )
            .await
            .unwrap()
    );
    store
        .staff_action(
            critical.id,
            &StaffAction::Resolve {
                note: Some("called back, dog seen at the ER".into()),
            },
            NURSE,
            base + secs(1800),
        )
        .await
        .unwrap();

    let mut b = Browser::new(&app);
    b.login(NURSE, NURSE_PASSWORD).await;
    let stats = b.get("/admin/stats").await;
    assert_eq!(stats.status, 200);
    let row = format!(
        "<td>{}</td><td>riverside</td><td>1</td><td>1</td><td>accepted 1, no_answer 1</td>\
         <td>40 s</td><td>40 s</td><td>1</td><td>1</td><td>1</td><td>0</td><td>1</td><td>30 min</td>",
        base.date_naive()
    );
    assert!(stats.body.contains(&row), "{row}\nin\n{}", stats.body);

    let metrics = reqwest::get(app.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter(|l| l.contains("tenant=\"riverside\""))
            .find(|l| labels.iter().all(|x| l.contains(x)))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let t = "lifeline_clinic_day_";
    assert_eq!(
        gauge(&format!("{t}transfer_attempts"), &["outcome=\"accepted\""]),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        gauge(&format!("{t}transfer_attempts"), &["outcome=\"no_answer\""]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&format!("{t}transfer_attempts"), &["outcome=\"machine\""]),
        Some(0.0)
    );
    assert_eq!(
        gauge(&format!("{t}time_to_human_seconds"), &["quantile=\"0.5\""]),
        Some(40.0)
    );
    assert_eq!(
        gauge(&format!("{t}acknowledged"), &["within=\"5m\""]),
        Some(1.0)
    );
    assert_eq!(
        gauge(&format!("{t}resolve_median_seconds"), &[]),
        Some(1800.0)
    );
    assert_eq!(gauge(&format!("{t}paged"), &[]), Some(1.0));
}
