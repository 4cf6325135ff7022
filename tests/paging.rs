//! Paging until acknowledged and texts to callers (issue 14), black box: callback requests are
//! queued through the store (as the tools queue them), the worker runs on a manual clock, Twilio's
//! Messages API is a wiremock server, and texts to the Twilio number arrive as signed webhooks
//! on the running server, as Twilio sends them.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, TimeDelta, Utc};
use common::{Engine, TestApp, TestDb};
use lifeline::protocol::twilio::compute_signature;
use lifeline::store::{NewCall, NewCallbackRequest, StaffAction, Store};
use lifeline::tools::Platform;
use lifeline::tools::urgency::Urgency;
use lifeline::worker::Worker;
use lifeline::worker::clock::{ManualWallClock, WallClock};
use serde_json::json;
use uuid::Uuid;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

on_both_engines!(
    an_unacknowledged_page_climbs_the_ladder_until_a_texted_code_acknowledges_it,
    forged_and_unknown_texts_acknowledge_nothing,
    callers_are_texted_what_happens_next_unless_they_said_stop,
);

const PUBLIC: &str = "https://lifeline.example.org";
const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "twilio-auth-token";
const FROM: &str = "+15550001111";
const ONCALL_1: &str = "+12015550101";
const ONCALL_2: &str = "+12015550102";
const MANAGER: &str = "+12015550199";
const CALLER: &str = "+12015550123";

struct Harness {
    app: TestApp,
    twilio: MockServer,
    clock: Arc<ManualWallClock>,
    worker: Worker,
    http: reqwest::Client,
}

impl Harness {
    async fn start(engine: Engine) -> Self {
        let twilio = MockServer::start().await;
        let n = Arc::new(AtomicUsize::new(0));
        Mock::given(method("POST"))
            .and(path(format!("/2010-04-01/Accounts/{SID}/Messages.json")))
            .respond_with(move |_: &wiremock::Request| {
                let i = n.fetch_add(1, Ordering::SeqCst);
                ResponseTemplate::new(201)
                    .set_body_json(json!({ "sid": format!("SM{i:032}"), "status": "queued" }))
            })
            .mount(&twilio)
            .await;
        let toml = format!(
            r#"
[server]
public_url = "{PUBLIC}"
[twilio]
account_sid = "{SID}"
auth_token = "{TOKEN}"
api_base = "{twilio}"
[alerts]
sms_from = "{FROM}"
[worker]
in_process = false

[[tenants]]
id = "riverside"
name = "Riverside Emergency Vet"
numbers = ["+15083728299"]
[tenants.transfer]
primary = "+15557654321"
[tenants.ultravox]
api_key = "UV_KEY"
agent_id = "riverside-agent"
[tenants.alerts]
sms = ["{ONCALL_1}", "{ONCALL_2}"]
[tenants.paging]
ack_minutes = 5
remind_minutes = 30
manager = "{MANAGER}"
rounds = 1
[tenants.caller_sms]
callback_window = "within 30 minutes"
emergency_fallback = "City Animal ER (24 hours) at +1 201 555 0150"
"#,
            twilio = twilio.uri()
        );
        let db = TestDb::new(engine).await;
        let app = TestApp::start_on(db, &toml).await;
        let clock = Arc::new(ManualWallClock::new(t0()));
        let worker = Worker::new(app.server.state.config.clone(), app.store.clone())
            .unwrap()
            .with_clock(clock.clone());
        Self {
            app,
            twilio,
            clock,
            worker,
            http: reqwest::Client::new(),
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.app.store
    }

    /// Moves the clock to `minutes` after t0 and runs one worker pass.
    async fn at_minute(&self, minutes: i64) {
        self.clock.set(t0() + TimeDelta::minutes(minutes));
        self.worker.run_once().await.unwrap();
    }

    /// Every text sent so far: (to, body).
    async fn texts(&self) -> Vec<(String, String)> {
        self.twilio
            .received_requests()
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let form: HashMap<String, String> = serde_urlencoded::from_bytes(&r.body).unwrap();
                assert_eq!(form["From"], FROM);
                (form["To"].clone(), form["Body"].clone())
            })
            .collect()
    }

    async fn texts_to(&self, to: &str) -> Vec<String> {
        self.texts()
            .await
            .into_iter()
            .filter(|(t, _)| t == to)
            .map(|(_, b)| b)
            .collect()
    }

    /// Posts a webhook signed as Twilio signs a request to `PUBLIC` + `path` (or with a wrong
    /// signature when `forged`).
    async fn webhook(&self, path: &str, params: &[(&str, &str)], forged: bool) -> u16 {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let token = if forged { "not-the-token" } else { TOKEN };
        let signature = compute_signature(token, &format!("{PUBLIC}{path}"), &owned);
        self.http
            .post(format!("http://{}{path}", self.app.server.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", signature)
            .body(serde_urlencoded::to_string(params).unwrap())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A text to the Twilio number from `from`.
    async fn text_in(&self, from: &str, body: &str, forged: bool) -> u16 {
        self.webhook(
            "/twilio/sms",
            &[
                ("AccountSid", SID),
                ("MessageSid", "SMinbound0000000000000000000000000"),
                ("From", from),
                ("To", FROM),
                ("Body", body),
            ],
            forged,
        )
        .await
    }

    async fn page_state(&self, id: Uuid) -> String {
        self.store().page(id).await.unwrap().expect("page").state
    }

    /// A call with a callback request of `urgency` from `number`.
    async fn request(&self, n: u32, urgency: Urgency, number: &str) -> Uuid {
        let call = self
            .store()
            .upsert_call(&NewCall {
                id: Uuid::new_v4(),
                tenant_id: "riverside".into(),
                platform: Platform::Twilio,
                call_ref: format!("CA{n:032}"),
                from_number: Some(number.into()),
                to_number: Some("+15083728299".into()),
                direction: "inbound".into(),
                status: "completed".into(),
                account_sid: Some(SID.into()),
                application_sid: None,
                started_at: t0(),
            })
            .await
            .unwrap();
        let id = Uuid::new_v4();
        self.store()
            .insert_callback_request(&NewCallbackRequest {
                id,
                created_at: t0(),
                tenant_id: "riverside".into(),
                call_id: Some(call.id),
                call_sid: Some(call.call_ref.clone()),
                tool_call_log_id: None,
                transfer_attempt_id: None,
                reason: if urgency == Urgency::Critical {
                    "failed_transfer"
                } else {
                    "message"
                },
                callback_number: number.into(),
                caller_name: Some("Dana Whitfield".into()),
                first_name: Some("Dana".into()),
                last_name: Some("Whitfield".into()),
                pet_name: Some("Tommie".into()),
                species: Some("cat".into()),
                breed: None,
                age: None,
                concern_description: Some("ate lily leaves an hour ago".into()),
                urgency_reason: None,
                urgency,
                metadata: json!({}),
                text_caller: true,
            })
            .await
            .unwrap();
        // A write the database did not commit within its budget went to the journal: the
        // request (and the page its trigger queues) is there once the journal is replayed.
        self.app.journal_drained().await;
        id
    }

    async fn timeline(&self, id: Uuid) -> Vec<String> {
        let request = self.store().callback_request(id).await.unwrap().unwrap();
        self.store()
            .call_events(request.call_id.unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .filter(|k| k.starts_with("page_") || k.starts_with("caller_text"))
            .collect()
    }

    async fn audit(&self, id: Uuid) -> Vec<String> {
        self.store()
            .audit_trail(id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.action)
            .collect()
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-01T23:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The code a page asks to text back.
fn code_of(page: &str) -> String {
    let after = page.split("Reply ").nth(1).expect("a code in the page");
    after[..4].to_string()
}

async fn an_unacknowledged_page_climbs_the_ladder_until_a_texted_code_acknowledges_it(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    let id = h.request(1, Urgency::Critical, CALLER).await;

    // The first rung is paged at once, and only it (the one-off alert texts nobody: the ladder
    // replaces it).
    h.at_minute(0).await;
    let first = h.texts_to(ONCALL_1).await;
    assert_eq!(first.len(), 1, "{:?}", h.texts().await);
    assert!(h.texts_to(ONCALL_2).await.is_empty());
    let page = &first[0];
    assert!(page.contains(&format!("tel:{CALLER}")), "{page}");
    assert!(page.contains("Tommie (cat)"), "{page}");
    assert!(page.contains("CRITICAL"), "{page}");
    assert!(
        !page.contains("lily"),
        "the concern is not in a page: {page}"
    );
    let code = code_of(page);
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    assert_eq!(h.page_state(id).await, "paging");

    // Within the acknowledgement time, nothing more.
    h.at_minute(4).await;
    assert!(h.texts_to(ONCALL_2).await.is_empty());

    // Not acknowledged in 5 minutes: the next rung, with the same code.
    h.at_minute(5).await;
    let second = h.texts_to(ONCALL_2).await;
    assert_eq!(second.len(), 1);
    assert!(second[0].contains("Escalated"), "{}", second[0]);
    assert_eq!(code_of(&second[0]), code);

    // Then the manager.
    h.at_minute(10).await;
    let manager = h.texts_to(MANAGER).await;
    assert_eq!(manager.len(), 1);
    assert!(manager[0].contains("manager"), "{}", manager[0]);

    // The second on-call person texts the code back: acknowledged, the ladder stops.
    assert_eq!(
        h.text_in(ONCALL_2, &format!("{code} on it"), false).await,
        200
    );
    assert_eq!(h.page_state(id).await, "acknowledged");
    let page = h.store().page(id).await.unwrap().unwrap();
    assert_eq!(page.acknowledged_by.as_deref(), Some(ONCALL_2));
    let sent = h.texts().await.len();
    h.at_minute(20).await;
    assert_eq!(
        h.texts().await.len(),
        sent,
        "no page after the acknowledgement"
    );

    // Acknowledged but not resolved 30 minutes later: a reminder to whoever acknowledged.
    h.clock
        .set(page.acknowledged_at.unwrap() + TimeDelta::minutes(30));
    h.worker.run_once().await.unwrap();
    let reminders: Vec<String> = h
        .texts_to(ONCALL_2)
        .await
        .into_iter()
        .filter(|b| b.contains("REMINDER"))
        .collect();
    assert_eq!(reminders.len(), 1, "{reminders:?}");
    assert!(reminders[0].contains(&format!("tel:{CALLER}")));

    // Resolved with a note: the page closes, and nothing more is sent.
    h.store()
        .staff_action(
            id,
            &StaffAction::Resolve {
                note: Some("Dr Chen called back at 23:50; ER visit advised".into()),
            },
            "nurse",
            h.clock.now(),
        )
        .await
        .unwrap();
    let sent = h.texts().await.len();
    h.clock
        .set(page.acknowledged_at.unwrap() + TimeDelta::minutes(60));
    h.worker.run_once().await.unwrap();
    assert_eq!(h.texts().await.len(), sent);
    assert_eq!(h.page_state(id).await, "closed");

    // Every step is in the call's timeline and the audit log.
    let steps = [
        "page_sent",
        "page_escalated",
        "page_escalated",
        "page_acknowledged",
        "page_reminder",
        "page_closed",
    ];
    let timeline: Vec<String> = h
        .timeline(id)
        .await
        .into_iter()
        .filter(|k| k.starts_with("page_"))
        .collect();
    assert_eq!(timeline, steps);
    let audit = h.audit(id).await;
    assert_eq!(
        audit,
        [
            "page_sent",
            "page_escalated",
            "page_escalated",
            "page_acknowledged",
            "page_reminder",
            "resolve",
            "page_closed"
        ]
    );
}

async fn forged_and_unknown_texts_acknowledge_nothing(engine: Engine) {
    let h = Harness::start(engine).await;
    let id = h.request(2, Urgency::Critical, CALLER).await;
    h.at_minute(0).await;
    let code = code_of(&h.texts_to(ONCALL_1).await[0]);

    // A forged webhook is refused before it is read.
    assert_eq!(h.text_in(ONCALL_1, &code, true).await, 403);
    // The right code from a number that is not on call for the clinic: ignored.
    assert_eq!(h.text_in("+12015550177", &code, false).await, 200);
    // A wrong code from the on-call number: ignored.
    let wrong = if code == "1234" { "4321" } else { "1234" };
    assert_eq!(h.text_in(ONCALL_1, wrong, false).await, 200);
    assert_eq!(h.page_state(id).await, "paging");

    // So the ladder goes on: three workers at once still page the next rung once.
    h.clock.set(t0() + TimeDelta::minutes(5));
    let others: Vec<Worker> = (0..2)
        .map(|_| {
            Worker::new(h.app.server.state.config.clone(), h.store().clone())
                .unwrap()
                .with_clock(h.clock.clone())
        })
        .collect();
    let passes = futures_util::future::join_all(
        others
            .iter()
            .chain(std::iter::once(&h.worker))
            .map(|w| w.page_once()),
    )
    .await;
    for p in passes {
        p.unwrap();
    }
    assert_eq!(h.texts_to(ONCALL_2).await.len(), 1);
    assert!(!h.audit(id).await.contains(&"page_acknowledged".to_string()));

    // The dashboard's acknowledgement is the other way to stop it (the worker's function the
    // dashboard calls): only once.
    let request = h.store().callback_request(id).await.unwrap().unwrap();
    let config = h.app.server.state.config.clone();
    let now = t0() + TimeDelta::minutes(6);
    assert!(
        lifeline::worker::paging::acknowledge_by_staff(
            &config,
            h.store().as_ref(),
            &request,
            "nurse",
            now
        )
        .await
        .unwrap()
    );
    assert!(
        !lifeline::worker::paging::acknowledge_by_staff(
            &config,
            h.store().as_ref(),
            &request,
            "nurse",
            now
        )
        .await
        .unwrap()
    );
    assert_eq!(h.page_state(id).await, "acknowledged");
}

async fn callers_are_texted_what_happens_next_unless_they_said_stop(engine: Engine) {
    let h = Harness::start(engine).await;
    let first = h.request(3, Urgency::Normal, CALLER).await;
    h.at_minute(0).await;
    let texts = h.texts_to(CALLER).await;
    assert_eq!(texts.len(), 1);
    let text = &texts[0];
    assert!(text.contains("Riverside Emergency Vet"), "{text}");
    assert!(text.contains("within 30 minutes"), "{text}");
    assert!(text.contains("City Animal ER"), "{text}");
    assert!(text.contains("Reply STOP"), "{text}");
    let row = h.store().caller_text(first).await.unwrap().unwrap();
    assert_eq!(row.status, "queued");
    let sid = row.message_sid.clone().unwrap();
    assert!(text.contains(&format!(
        "ref {}",
        &first.simple().to_string()[..8].to_uppercase()
    )));
    // The message asks Twilio for status callbacks.
    let asked = h.twilio.received_requests().await.unwrap();
    let form: HashMap<String, String> =
        serde_urlencoded::from_bytes(&asked.last().unwrap().body).unwrap();
    assert_eq!(
        form["StatusCallback"],
        format!("{PUBLIC}/twilio/sms-status")
    );

    // Delivery is tracked through signed status callbacks; a forged one changes nothing.
    let delivered = [
        ("AccountSid", SID),
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "delivered"),
    ];
    assert_eq!(h.webhook("/twilio/sms-status", &delivered, true).await, 403);
    assert_eq!(
        h.store().caller_text(first).await.unwrap().unwrap().status,
        "queued"
    );
    assert_eq!(
        h.webhook("/twilio/sms-status", &delivered, false).await,
        200
    );
    assert_eq!(
        h.store().caller_text(first).await.unwrap().unwrap().status,
        "delivered"
    );
    // A late `sent` (callbacks may arrive out of order) does not take it back.
    let late = [
        ("AccountSid", SID),
        ("MessageSid", sid.as_str()),
        ("MessageStatus", "sent"),
    ];
    assert_eq!(h.webhook("/twilio/sms-status", &late, false).await, 200);
    assert_eq!(
        h.store().caller_text(first).await.unwrap().unwrap().status,
        "delivered"
    );
    assert_eq!(h.timeline(first).await, ["caller_text_sent"]);

    // The caller replies STOP: no more texts to them.
    assert_eq!(h.text_in(CALLER, "STOP", false).await, 200);
    let second = h.request(4, Urgency::Normal, CALLER).await;
    h.at_minute(1).await;
    assert_eq!(h.texts_to(CALLER).await.len(), 1);
    let row = h.store().caller_text(second).await.unwrap().unwrap();
    assert_eq!(row.status, "skipped");
    assert!(row.detail.unwrap().contains("STOP"));

    // START opts back in.
    assert_eq!(h.text_in(CALLER, "start", false).await, 200);
    let third = h.request(5, Urgency::Normal, CALLER).await;
    h.at_minute(2).await;
    assert_eq!(h.texts_to(CALLER).await.len(), 2);
    assert!(
        h.store()
            .caller_text(third)
            .await
            .unwrap()
            .unwrap()
            .message_sid
            .is_some()
    );

    // A number that cannot take texts (a London landline) is never texted.
    let landline = "+442079460000";
    let fourth = h.request(6, Urgency::Normal, landline).await;
    h.at_minute(3).await;
    assert!(h.texts_to(landline).await.is_empty());
    let row = h.store().caller_text(fourth).await.unwrap().unwrap();
    assert_eq!(row.status, "skipped");
    assert!(row.detail.unwrap().contains("mobile"));
}
