//! What the agent is told about the clinic and the caller, black box: the same clinic gets the
//! same prompt context on Jambonz (the `session:new` ack over the socket) and on Twilio (the
//! Ultravox call lifeline creates for `/twilio/incoming`, faked with wiremock); a tenant whose
//! session ack could not fit in one jambonz frame stops the binary at start.

mod common;

use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use common::{
    Engine, FakeFeatureServer, HILLSIDE_PASS, HILLSIDE_USER, RIVERSIDE_PASS, RIVERSIDE_USER, TestDb,
};
use lifeline::Server;
use lifeline::config::{Config, ProcessSettings};
use lifeline::ingress::jambonz::frame_check::session_ack_problems;
use lifeline::ingress::jambonz::session_verbs::largest_session_ack;
use lifeline::protocol::jambonz::MAX_FRAME_BYTES;
use lifeline::protocol::twilio::compute_signature;
use serde_json::{Map, Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

on_both_engines!(
    an_inline_prompt_is_the_same_rendered_text_on_jambonz_and_twilio,
    an_agent_gets_the_same_variables_on_jambonz_and_twilio,
    a_session_ack_too_big_for_one_frame_stops_the_binary_naming_tenant_size_and_limit,
    the_longest_prompt_that_fits_reaches_jambonz_whole_in_one_message,
);

const PUBLIC: &str = "https://example.com";
const TOKEN: &str = "12345";
const ACCOUNT: &str = "AC00000000000000000000000000000000";
/// The fixtures' caller and Riverside's number.
const CALLER: &str = "+15083084809";
const RIVERSIDE: &str = "+15083728299";
const HILLSIDE: &str = "+15083728300";

/// Every variable lifeline fills (`original-system.md` §1.1 step 3).
const VARIABLES: [&str; 30] = [
    "call_sid",
    "caller_phone_number",
    "callback_number",
    "caller_phone_last4",
    "caller_phone_formatted",
    "caller_phone_digits",
    "to_phone_number",
    "to_phone_formatted",
    "client_id",
    "client_name",
    "office_name",
    "office_phone",
    "office_website",
    "office_hours",
    "primary_transfer_number",
    "secondary_transfer_number",
    "vetwise_phone",
    "voicemail_enabled",
    "business_hours_enabled",
    "current_date",
    "current_time",
    "current_datetime",
    "day_of_week",
    "time_of_day",
    "clinic_open",
    "clinic_closed",
    "is_the_clinic_open",
    "agent_name",
    "agent_temperature",
    "debug_mode",
];

/// What Hillside's Ultravox agent's prompt uses (served by the fake Ultravox).
const AGENT_PROMPT: &str = "You answer for {{client_name}} ({{office_hours}}). It is \
    {{current_datetime}}; open: {{is_the_clinic_open}}. The caller's number ends in \
    {{caller_phone_last4}}; read it back as {{caller_phone_digits}}.";

/// An inline prompt naming every variable.
fn inline_prompt() -> String {
    VARIABLES
        .iter()
        .map(|v| format!("{v}: {{{{{v}}}}}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One clinic on both platforms (inline prompt), one agent clinic on both.
fn config_toml(twilio: &str, ultravox: &str, riverside_prompt: &str) -> String {
    let prompt = toml::Value::String(riverside_prompt.to_string());
    format!(
        r#"
[server]
public_url = "{PUBLIC}"

[twilio]
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"
api_base = "{twilio}"

[ultravox]
api_base = "{ultravox}"
data_connection_secrets = ["test-shared-secret-0123"]
setup_timeout_ms = 3000

[[tenants]]
id = "riverside"
name = "Riverside Emergency Vet"
numbers = ["{RIVERSIDE}"]
[tenants.jambonz]
username = "{RIVERSIDE_USER}"
password = "{RIVERSIDE_PASS}"
[tenants.transfer]
primary = "+15557654321"
secondary = "+15557654322"
[tenants.ultravox]
api_key = "UV_KEY"
system_prompt = {prompt}
voice = "Jessica"
temperature = 0.3
[tenants.business_hours]
timezone = "America/New_York"
[tenants.business_hours.hours]
monday = {{ open = "08:00", close = "18:00" }}
tuesday = {{ open = "08:00", close = "18:00" }}
wednesday = {{ open = "08:00", close = "18:00" }}
thursday = {{ open = "08:00", close = "18:00" }}
friday = {{ open = "08:00", close = "18:00" }}
[tenants.profile]
office_phone = "+15083720000"
office_website = "https://riverside.example"
office_hours = "Weekdays, 8 AM to 6 PM"
agent_name = "Nora"
voicemail_enabled = true

[[tenants]]
id = "hillside"
name = "Hillside Animal Hospital"
numbers = ["{HILLSIDE}"]
[tenants.jambonz]
username = "{HILLSIDE_USER}"
password = "{HILLSIDE_PASS}"
[tenants.transfer]
primary = "+15557650000"
[tenants.ultravox]
api_key = "UV_KEY_2"
agent_id = "agent-hillside"
[tenants.business_hours]
timezone = "America/Chicago"
[tenants.business_hours.hours]
saturday = {{ open = "09:00", close = "13:00" }}
[tenants.profile]
office_hours = "Saturdays, 9 AM to 1 PM"
"#
    )
}

struct Harness {
    server: Server,
    ultravox: MockServer,
    _twilio: MockServer,
    http: reqwest::Client,
    _db: TestDb,
}

impl Harness {
    async fn start(engine: Engine, riverside_prompt: &str) -> Self {
        let db = TestDb::new(engine).await;
        let twilio = MockServer::start().await;
        let ultravox = MockServer::start().await;
        let process = ProcessSettings {
            database_url: db.url.clone().into(),
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            config_path: None,
            database_max_connections: 16,
            database_worker_connections: 4,
        };
        let toml = config_toml(&twilio.uri(), &ultravox.uri(), riverside_prompt);
        let config = Config::build(&process, Some((&toml, "prompt.toml".as_ref())), &|_| None)
            .expect("test config");
        let server = Server::start(config).await.expect("start server");
        for route in ["/api/calls", "/api/agents/agent-hillside/calls"] {
            Mock::given(method("POST"))
                .and(path(route))
                .respond_with(|_: &Request| {
                    let id = uuid::Uuid::new_v4();
                    ResponseTemplate::new(201).set_body_json(json!({
                        "callId": id.to_string(),
                        "joinUrl": format!("wss://example.ultravox.ai/calls/{id}/join"),
                    }))
                })
                .mount(&ultravox)
                .await;
        }
        Mock::given(method("GET"))
            .and(path("/api/agents/agent-hillside"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "agentId": "agent-hillside",
                "callTemplate": { "systemPrompt": AGENT_PROMPT },
            })))
            .mount(&ultravox)
            .await;
        Self {
            server,
            ultravox,
            _twilio: twilio,
            http: reqwest::Client::new(),
            _db: db,
        }
    }

    /// The `llmOptions` of the `session:new` ack for a call `call_sid` from `CALLER` to `to`,
    /// as the feature-server receives it.
    async fn jambonz_llm_options(
        &self,
        user: &str,
        pass: &str,
        call_sid: &str,
        to: &str,
    ) -> (Map<String, Value>, usize) {
        let url = format!("ws://{}/jambonz", self.server.addr);
        let mut fs = FakeFeatureServer::connect_as(&url, user, pass, call_sid)
            .await
            .expect("connect");
        let mut msg = fs.session_message("session:new");
        msg["data"]["to"] = json!(to);
        let ack = fs.request(msg).await;
        let size = ack.to_string().len();
        let llm = ack["data"]
            .as_array()
            .expect("verbs")
            .iter()
            .find(|v| v["verb"] == "llm")
            .expect("an llm verb")
            .clone();
        let options = llm["llmOptions"].as_object().expect("llmOptions").clone();
        fs.close().await;
        (options, size)
    }

    /// The body of the Ultravox call lifeline creates for Twilio's `/twilio/incoming` of a call
    /// `call_sid` from `CALLER` to `to`.
    async fn twilio_ultravox_request(&self, call_sid: &str, to: &str) -> Value {
        let before = self.ultravox.received_requests().await.unwrap().len();
        let params: Vec<(String, String)> = [
            ("AccountSid", ACCOUNT),
            ("ApiVersion", "2010-04-01"),
            ("CallSid", call_sid),
            ("CallStatus", "ringing"),
            ("Called", to),
            ("Caller", CALLER),
            ("Direction", "inbound"),
            ("From", CALLER),
            ("To", to),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let signature = compute_signature(TOKEN, &format!("{PUBLIC}/twilio/incoming"), &params);
        let response = self
            .http
            .post(format!("http://{}/twilio/incoming", self.server.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("X-Twilio-Signature", signature)
            .body(serde_urlencoded::to_string(&params).unwrap())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 200);
        let twiml = response.text().await.unwrap();
        assert!(twiml.contains("<Connect>"), "{twiml}");
        let created: Vec<Value> = self
            .ultravox
            .received_requests()
            .await
            .unwrap()
            .iter()
            .skip(before)
            .filter(|r| r.method.as_str() == "POST")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        assert_eq!(created.len(), 1, "one Ultravox call");
        created[0].clone()
    }
}

/// Runs `compare` on a call set up on each platform, both within one minute: the prompt
/// context has the time to the minute, so two calls a minute apart may rightly differ. Tried
/// again (new calls) when a minute boundary fell between them.
async fn within_one_minute<F, Fut>(mut both: F)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Box<dyn FnOnce()>>,
{
    for attempt in 0..3 {
        let before = Utc::now().timestamp() / 60;
        // Both platforms' calls carry the same id, so `call_sid` is the same too.
        let compare = both(format!("9fb35c28-9688-4531-943c-e280b04f3a{attempt:02}")).await;
        if Utc::now().timestamp() / 60 == before {
            compare();
            return;
        }
    }
    panic!("a minute boundary fell inside each of three tries");
}

async fn an_inline_prompt_is_the_same_rendered_text_on_jambonz_and_twilio(engine: Engine) {
    let h = Harness::start(engine, &inline_prompt()).await;
    let h = &h;
    within_one_minute(|call_sid| async move {
        let (jambonz, _) = h
            .jambonz_llm_options(RIVERSIDE_USER, RIVERSIDE_PASS, &call_sid, RIVERSIDE)
            .await;
        let twilio = h.twilio_ultravox_request(&call_sid, RIVERSIDE).await;
        let compare: Box<dyn FnOnce()> = Box::new(move || {
            let on_jambonz = jambonz["systemPrompt"].as_str().expect("a prompt");
            let on_twilio = twilio["systemPrompt"].as_str().expect("a prompt");
            assert_eq!(on_jambonz, on_twilio);
            assert!(!on_jambonz.contains("{{"), "rendered: {on_jambonz}");
            let line = |name: &str| {
                on_jambonz
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_else(|| panic!("no {name} in {on_jambonz}"))
                    .to_string()
            };
            // The whole context, business hours included, not the 5 variables Jambonz had.
            assert_eq!(line("call_sid"), call_sid);
            assert_eq!(line("caller_phone_formatted"), "(508) 308-4809");
            assert_eq!(line("callback_number"), CALLER);
            assert_eq!(line("to_phone_number"), "5083728299");
            assert_eq!(line("vetwise_phone"), "5083728299");
            assert_eq!(line("office_hours"), "Weekdays, 8 AM to 6 PM");
            assert_eq!(line("agent_name"), "Nora");
            assert_eq!(line("agent_temperature"), "0.3");
            assert_eq!(line("business_hours_enabled"), "true");
            assert!(
                ["yes", "no"].contains(&line("is_the_clinic_open").as_str()),
                "{on_jambonz}"
            );
            assert_ne!(line("current_datetime"), "");
        });
        compare
    })
    .await;
}

async fn an_agent_gets_the_same_variables_on_jambonz_and_twilio(engine: Engine) {
    let h = Harness::start(engine, "You answer for {{client_name}}.").await;
    let h = &h;
    within_one_minute(|call_sid| async move {
        let (jambonz, _) = h
            .jambonz_llm_options(HILLSIDE_USER, HILLSIDE_PASS, &call_sid, HILLSIDE)
            .await;
        let twilio = h.twilio_ultravox_request(&call_sid, HILLSIDE).await;
        let compare: Box<dyn FnOnce()> = Box::new(move || {
            let on_jambonz = jambonz["templateContext"].as_object().expect("variables");
            let on_twilio = twilio["templateContext"].as_object().expect("variables");
            // Twilio sends what the agent's prompt names (the agent is read from Ultravox);
            // Jambonz, which cannot wait for Ultravox inside its ack deadline, sends every
            // variable. The agent's prompt gets the same values either way.
            let named: Vec<&str> = on_twilio.keys().map(String::as_str).collect();
            assert_eq!(
                named,
                [
                    "caller_phone_digits",
                    "caller_phone_last4",
                    "client_name",
                    "current_datetime",
                    "is_the_clinic_open",
                    "office_hours",
                ]
            );
            for (name, value) in on_twilio {
                assert_eq!(on_jambonz.get(name), Some(value), "{name}");
            }
            let mut all: Vec<&str> = on_jambonz.keys().map(String::as_str).collect();
            all.sort_unstable();
            let mut want = VARIABLES.to_vec();
            want.sort_unstable();
            assert_eq!(all, want);
            assert!(on_jambonz.values().all(Value::is_string));
            assert_eq!(on_jambonz["call_sid"], call_sid.as_str());
            assert_eq!(on_jambonz["to_phone_number"], "5083728300");
            assert_eq!(
                on_jambonz["caller_phone_digits"],
                "five zero eight... pause... three zero eight... pause... four eight zero nine"
            );
            assert_eq!(on_jambonz["business_hours_enabled"], "true");
        });
        compare
    })
    .await;
}

/// A prompt that is short as written but grows past 24 KiB once its variables are filled.
fn overflowing_prompt() -> String {
    "Caller {{caller_phone_digits}}, {{current_datetime}}.\n".repeat(190)
}

async fn a_session_ack_too_big_for_one_frame_stops_the_binary_naming_tenant_size_and_limit(
    engine: Engine,
) {
    let db = TestDb::new(engine).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lifeline.toml");
    let prompt = overflowing_prompt();
    assert!(prompt.len() < 12 * 1024, "short as written");
    std::fs::write(
        &file,
        config_toml("https://api.twilio.com", "https://api.ultravox.ai", &prompt),
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("LIFELINE_CONFIG", &file)
            .env("PORT", "0")
            .env("LIFELINE_BIND", "127.0.0.1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("lifeline hung")
    .expect("run lifeline");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let prefix = "tenant \"riverside\": its Jambonz session ack can reach ";
    let problem = stderr
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no problem for riverside in:\n{stderr}"));
    let size: usize = problem
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {problem}"));
    assert!(size > MAX_FRAME_BYTES, "{problem}");
    assert!(
        problem.contains("over the 24576-byte frame limit of jambonz"),
        "{problem}"
    );
    assert!(
        !stderr.contains("hillside"),
        "only the tenant that does not fit: {stderr}"
    );
    // The size is the frame's, not the prompt's: the rendered prompt is what grew.
    assert!(size > prompt.len() * 2, "{size} vs {}", prompt.len());
    // Refused before the database was touched.
    assert!(untouched(engine, &db.url).await, "the database was touched");
}

/// Whether nothing was created in the database at `url`.
async fn untouched(engine: Engine, url: &str) -> bool {
    match engine {
        Engine::Sqlite => {
            let file = url
                .strip_prefix("sqlite://")
                .and_then(|rest| rest.split('?').next())
                .expect("sqlite url");
            !std::path::Path::new(file).exists()
        }
        Engine::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            let (tables,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            pool.close().await;
            tables == 0
        }
    }
}

/// A prompt as long as the check allows: the ack a real call gets fits, and is within the
/// bound the check computed.
async fn the_longest_prompt_that_fits_reaches_jambonz_whole_in_one_message(engine: Engine) {
    let line = "Caller {{caller_phone_digits}}, {{current_datetime}}.\n";
    let fits = |copies: usize| {
        let process = ProcessSettings {
            database_url: "sqlite://unused.db".into(),
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            config_path: None,
            database_max_connections: 16,
            database_worker_connections: 4,
        };
        let toml = config_toml(
            "https://api.twilio.com",
            "https://api.ultravox.ai",
            &line.repeat(copies),
        );
        // What `lifeline serve` checks at start: the settings, then every Jambonz ack's size.
        Config::build(&process, Some((&toml, "t.toml".as_ref())), &|_| None)
            .map_err(|e| e.0)
            .and_then(|config| {
                let problems = session_ack_problems(&config);
                if problems.is_empty() {
                    Ok(config)
                } else {
                    Err(problems)
                }
            })
    };
    // The longest repetition the configuration accepts (it accepts 1 and refuses 400).
    let (mut copies, mut refused) = (1, 400);
    assert!(fits(copies).is_ok() && fits(refused).is_err());
    while refused - copies > 1 {
        let mid = (copies + refused) / 2;
        if fits(mid).is_ok() {
            copies = mid;
        } else {
            refused = mid;
        }
    }
    let bound = largest_session_ack(&fits(copies).unwrap().tenants[0]);
    assert!(bound <= MAX_FRAME_BYTES);
    let h = Harness::start(engine, &line.repeat(copies)).await;
    let (options, size) = h
        .jambonz_llm_options(
            RIVERSIDE_USER,
            RIVERSIDE_PASS,
            "9fb35c28-9688-4531-943c-e280b04f3adf",
            RIVERSIDE,
        )
        .await;
    let prompt = options["systemPrompt"].as_str().unwrap();
    assert_eq!(prompt.lines().count(), copies);
    assert!(!prompt.contains("{{"));
    assert!(size <= bound, "{size} > {bound}");
}
