//! The Twilio + Ultravox path, black-box: lifeline on port 0 and a fresh database; Twilio's and
//! Ultravox's REST APIs faked on loopback (wiremock); Twilio's webhooks signed as Twilio signs
//! them (some are fixtures signed by the official `twilio` library); Ultravox's data connection
//! played by a WebSocket client with Ultravox's signed headers.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use common::{Engine, TestDb};
use futures_util::{SinkExt, StreamExt};
use lifeline::Server;
use lifeline::config::{Config, ProcessSettings};
use lifeline::protocol::twilio::compute_signature;
use lifeline::protocol::ultravox::sign_data_connection;
use lifeline::store::{CallRow, CallbackFilter, Store};
use lifeline::tools::Platform;
use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::{Value, json};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

on_both_engines!(
    gate_accepts_on_1_and_the_attempt_is_accepted,
    gate_declines_a_machine_then_another_key,
    gate_declines_on_silence,
    incoming_call_creates_the_ultravox_call_records_the_mapping_and_connects_the_caller,
    agent_calls_send_only_the_prompts_variables_as_strings_and_the_agent_is_fetched_once,
    forged_or_missing_twilio_signatures_are_refused_and_nothing_happens,
    ultravox_down_at_setup_rings_the_on_call_team_and_no_answer_leaves_a_critical_callback,
    ultravox_down_with_the_record_fallback_takes_a_message_that_becomes_a_callback,
    data_connection_transfer_then_no_answer_twice_ends_in_a_critical_callback_request,
    forged_stale_or_missing_ultravox_signatures_are_refused,
    http_tool_transfers_the_call_named_by_its_header_once_however_often_it_is_repeated,
    http_tools_authenticate_and_never_trust_a_call_sid_in_the_body,
    http_hang_up_ends_the_call_and_collect_without_a_call_uses_the_tenant_key,
    call_the_platform_refuses_fails_at_once_with_a_critical_callback_request,
    answered_transfer_ends_the_call_and_status_callbacks_close_it_in_sequence_order,
    a_repeat_while_the_first_creates_the_ultravox_call_joins_the_same_call,
    a_repeat_after_the_setup_fell_back_rings_the_same_attempt,
    twilio_giving_up_on_the_first_request_does_not_lose_the_ultravox_call_it_creates,
    call_setup_is_claimed_once_and_a_dead_claim_is_taken_over,
    concurrent_repeats_of_a_recording_make_one_callback_request_with_or_without_a_call,
    // Issue 12: what cannot be read is still answered in the caller's protocol.
    dial_webhooks_with_an_unreadable_attempt_answer_twiml,
    unreadable_data_connection_tool_invocations_get_an_error_result,
);

const PUBLIC: &str = "https://example.com";
/// The token and account of `fixtures/twilio/webhooks.jsonl`, signed by the official library.
const TOKEN: &str = "12345";
const ACCOUNT: &str = "AC00000000000000000000000000000000";
const CALL_SID: &str = "CA11111111111111111111111111111111";
const CALLER: &str = "+14158675309";
/// Riverside's number (the fixtures' `To`).
const RIVERSIDE: &str = "+15005550006";
const HILLSIDE: &str = "+15083728300";
const LAKESIDE: &str = "+15083728301";
const DC_SECRET: &str = "test-shared-secret-0123";
const TOOL_KEY: &str = "global-tool-key-0123456789";
const LAKESIDE_TOOL_KEY: &str = "lakeside-tool-key-0123456789";
const JOIN_URL: &str = "wss://example.ultravox.ai/calls/abc/join";

fn config_toml(twilio: &str, ultravox: &str) -> String {
    format!(
        r#"
[server]
public_url = "{PUBLIC}"

[twilio]
account_sid = "{ACCOUNT}"
auth_token = "{TOKEN}"
api_base = "{twilio}"
update_deadline_ms = 600

[ultravox]
api_base = "{ultravox}"
data_connection_secrets = ["{DC_SECRET}"]
tool_api_keys = ["{TOOL_KEY}"]
setup_timeout_ms = 1500

[[tenants]]
id = "riverside"
name = "Riverside Emergency Vet"
numbers = ["{RIVERSIDE}"]
[tenants.transfer]
primary = "+15557654321"
secondary = "+15557654322"
caller_id = "+15551230000"
ring_timeout_secs = 20
[tenants.ultravox]
api_key = "UV_KEY"
system_prompt = "You are the after-hours assistant of {{{{client_name}}}}. Today is {{{{day_of_week}}}}."
voice = "Jessica"

[[tenants]]
id = "hillside"
name = "Hillside Animal Hospital"
numbers = ["{HILLSIDE}"]
[tenants.transfer]
primary = "+15557650000"
[tenants.ultravox]
api_key = "UV_KEY_2"
agent_id = "agent-hillside"
[tenants.business_hours]
timezone = "America/Toronto"
[tenants.business_hours.hours]
monday = {{ open = "00:00", close = "24:00" }}
tuesday = {{ open = "00:00", close = "24:00" }}
wednesday = {{ open = "00:00", close = "24:00" }}
thursday = {{ open = "00:00", close = "24:00" }}
friday = {{ open = "00:00", close = "24:00" }}
saturday = {{ open = "00:00", close = "24:00" }}
sunday = {{ open = "00:00", close = "24:00" }}

[[tenants]]
id = "lakeside"
name = "Lakeside Pet Clinic"
numbers = ["{LAKESIDE}"]
fallback = "record"
tool_api_key = "{LAKESIDE_TOOL_KEY}"
[tenants.transfer]
primary = "+15557659999"
[tenants.ultravox]
api_key = "UV_KEY_3"
agent_id = "agent-lakeside"
"#
    )
}

struct Harness {
    server: Server,
    store: Arc<dyn Store>,
    twilio: MockServer,
    ultravox: MockServer,
    http: reqwest::Client,
    _db: TestDb,
}

impl Harness {
    async fn start(engine: Engine) -> Self {
        let mut db = TestDb::new(engine).await;
        // The end-of-test invariants (tests/common/invariants.rs), as for every black-box test.
        db.watch_invariants();
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
        let toml = config_toml(&twilio.uri(), &ultravox.uri());
        let config = Config::build(&process, Some((&toml, "twilio.toml".as_ref())), &|_| None)
            .expect("test config");
        let server = Server::start(config).await.expect("start server");
        let store = server.state.store.clone();
        Self {
            server,
            store,
            twilio,
            ultravox,
            http: reqwest::Client::new(),
            _db: db,
        }
    }

    /// Posts a form webhook signed as Twilio signs a request to `PUBLIC` + `path`.
    async fn webhook(&self, path: &str, params: &[(&str, &str)]) -> (u16, String) {
        let owned: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let signature = compute_signature(TOKEN, &format!("{PUBLIC}{path}"), &owned);
        self.post_form(path, params, Some(&signature)).await
    }

    async fn post_form(
        &self,
        path: &str,
        params: &[(&str, &str)],
        signature: Option<&str>,
    ) -> (u16, String) {
        let body = serde_urlencoded::to_string(params).unwrap();
        self.post_raw(path, body, signature).await
    }

    async fn post_raw(&self, path: &str, body: String, signature: Option<&str>) -> (u16, String) {
        let mut request = self
            .http
            .post(format!("http://{}{path}", self.server.addr))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(signature) = signature {
            request = request.header("X-Twilio-Signature", signature);
        }
        let response = request.send().await.expect("post");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// Twilio's voice webhook for a new call from `CALLER` to `to`.
    async fn incoming(&self, call_sid: &str, to: &str) -> String {
        let (status, body) = self
            .webhook(
                "/twilio/incoming",
                &[
                    ("AccountSid", ACCOUNT),
                    ("ApiVersion", "2010-04-01"),
                    ("CallSid", call_sid),
                    ("CallStatus", "ringing"),
                    ("Called", to),
                    ("Caller", CALLER),
                    ("Direction", "inbound"),
                    ("From", CALLER),
                    ("To", to),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Ultravox accepts call creation, with a new call id each time.
    async fn ultravox_creates_calls(&self, route: &str) {
        Mock::given(method("POST"))
            .and(path(route.to_string()))
            .respond_with(|_: &Request| {
                ResponseTemplate::new(201).set_body_json(json!({
                    "callId": uuid::Uuid::new_v4().to_string(),
                    "joinUrl": JOIN_URL,
                    "created": "2026-11-22T00:00:00Z",
                }))
            })
            .mount(&self.ultravox)
            .await;
    }

    /// Twilio accepts live-call updates of `call_sid`; `expect` of them must arrive.
    async fn twilio_updates(&self, call_sid: &str, expect: u64) {
        Mock::given(method("POST"))
            .and(path(format!(
                "/2010-04-01/Accounts/{ACCOUNT}/Calls/{call_sid}.json"
            )))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "sid": call_sid, "account_sid": ACCOUNT, "status": "in-progress",
            })))
            .expect(expect)
            .mount(&self.twilio)
            .await;
    }

    /// The TwiML of every live-call update Twilio received, in order.
    async fn twiml_updates(&self) -> Vec<String> {
        self.twilio
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| {
                let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&r.body).ok()?;
                form.into_iter().find(|(k, _)| k == "Twiml").map(|(_, v)| v)
            })
            .collect()
    }

    async fn call(&self, call_sid: &str) -> CallRow {
        self.store
            .find_call(Platform::Twilio, call_sid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no call {call_sid}"))
    }

    /// Opens the call's data connection as Ultravox does.
    async fn data_connection(
        &self,
        ultravox_call_id: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        let timestamp = Utc::now().to_rfc3339();
        let signature = sign_data_connection(DC_SECRET, ultravox_call_id, &timestamp);
        let (ws, _) = self
            .connect_data(ultravox_call_id, &timestamp, &signature)
            .await
            .expect("data connection accepted");
        ws
    }

    async fn connect_data(
        &self,
        call_id: &str,
        timestamp: &str,
        signature: &str,
    ) -> Result<
        (
            tokio_tungstenite::WebSocketStream<
                tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
            >,
            tokio_tungstenite::tungstenite::handshake::client::Response,
        ),
        tokio_tungstenite::tungstenite::Error,
    > {
        let mut request = format!("ws://{}/ultravox", self.server.addr)
            .into_client_request()
            .unwrap();
        let h = request.headers_mut();
        for (name, value) in [
            ("X-Ultravox-Call-ID", call_id),
            ("X-Ultravox-Signature-Timestamp", timestamp),
            ("X-Ultravox-Signature", signature),
        ] {
            if !value.is_empty() {
                h.insert(name, HeaderValue::from_str(value).unwrap());
            }
        }
        tokio_tungstenite::connect_async(request).await
    }

    /// Calls an HTTP tool as Ultravox does.
    async fn tool(
        &self,
        route: &str,
        key: Option<&str>,
        ultravox_call_id: Option<&str>,
        body: Value,
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("http://{}{route}", self.server.addr))
            .json(&body);
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        if let Some(id) = ultravox_call_id {
            request = request.header("X-Ultravox-Call-Id", id);
        }
        request.send().await.expect("tool request")
    }

    async fn callbacks(&self, tenant: &str) -> Vec<lifeline::store::CallbackRequestRow> {
        self.store
            .callback_requests(&CallbackFilter {
                tenant_id: Some(tenant.into()),
                ..Default::default()
            })
            .await
            .unwrap()
    }
}

/// The attempt id in the URLs of a transfer's TwiML.
fn attempt_of(twiml: &str) -> String {
    let start = twiml.find("attempt=").expect("attempt in the TwiML") + "attempt=".len();
    twiml[start..start + 36].to_string()
}

/// An XML document as a comparable tree: (name, sorted attributes, text, children).
#[derive(Debug, PartialEq)]
struct Node {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<Node>,
}

fn parse_xml(xml: &str) -> Node {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Node> = vec![Node {
        name: "#document".into(),
        attrs: vec![],
        text: String::new(),
        children: vec![],
    }];
    let open = |e: &quick_xml::events::BytesStart| {
        let mut attrs: Vec<(String, String)> = e
            .attributes()
            .map(|a| {
                let a = a.unwrap();
                (
                    a.key.as_ref().to_string(),
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .unwrap()
                        .into_owned(),
                )
            })
            .collect();
        attrs.sort();
        Node {
            name: e.name().as_ref().to_string(),
            attrs,
            text: String::new(),
            children: vec![],
        }
    };
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => stack.push(open(&e)),
            Event::Empty(e) => {
                let node = open(&e);
                stack.last_mut().unwrap().children.push(node);
            }
            Event::End(_) => {
                let node = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(node);
            }
            Event::Text(t) => stack.last_mut().unwrap().text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let text = match r.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .expect("only predefined entities")
                        .to_string(),
                };
                stack.last_mut().unwrap().text.push_str(&text);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    stack.pop().unwrap()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/twilio")
            .join(name),
    )
    .expect("fixture")
}

/// Asserts two TwiML documents are the same tree (attribute order and quoting aside).
fn assert_same_twiml(ours: &str, official: &str) {
    assert_eq!(
        parse_xml(ours.trim()),
        parse_xml(official.trim()),
        "\nours:     {ours}\nofficial: {official}"
    );
}

/// Our TwiML with the run's attempt id replaced by the fixtures' fixed one.
fn with_fixture_attempt(twiml: &str) -> String {
    twiml.replace(&attempt_of(twiml), "00000000-0000-7000-8000-000000000001")
}

async fn dial_action(h: &Harness, attempt: &str, status: &str, bridged: bool) -> String {
    let (code, body) = h
        .webhook(
            &format!("/twilio/dial-action?attempt={attempt}"),
            &[
                ("AccountSid", ACCOUNT),
                ("CallSid", CALL_SID),
                ("CallStatus", "in-progress"),
                ("DialBridged", if bridged { "true" } else { "false" }),
                ("DialCallSid", "CA22222222222222222222222222222222"),
                ("DialCallStatus", status),
                ("Direction", "inbound"),
                ("From", CALLER),
                ("To", RIVERSIDE),
            ],
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body
}

// ------------------------------------------------------------------------------------------------

async fn incoming_call_creates_the_ultravox_call_records_the_mapping_and_connects_the_caller(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    let twiml = h.incoming(CALL_SID, RIVERSIDE).await;
    // The same document the official library writes for <Connect><Stream url=joinUrl/>.
    assert_same_twiml(&twiml, &fixture("bridge.xml"));

    let call = h.call(CALL_SID).await;
    assert_eq!(call.tenant_id, "riverside");
    assert!(
        call.ultravox_call_id.is_some(),
        "mapping recorded before answering"
    );
    assert!(call.app_started_at.is_some());
    assert_eq!(call.from_number.as_deref(), Some(CALLER));

    let requests = h.ultravox.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let sent: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(requests[0].headers["x-api-key"], "UV_KEY");
    assert_eq!(sent["medium"], json!({ "twilio": {} }));
    assert_eq!(
        sent["dataConnection"]["websocketUrl"],
        "wss://example.com/ultravox"
    );
    assert_eq!(sent["sharedSecrets"], json!([DC_SECRET]));
    let prompt = sent["systemPrompt"].as_str().unwrap();
    assert!(
        prompt
            .starts_with("You are the after-hours assistant of Riverside Emergency Vet. Today is "),
        "{prompt}"
    );
    assert!(!prompt.contains("{{"), "{prompt}");
    let tools: Vec<&str> = sent["selectedTools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["temporaryTool"]["dataConnection"], json!({}));
            t["temporaryTool"]["modelToolName"].as_str().unwrap()
        })
        .collect();
    assert_eq!(tools, ["collect_info", "transfer", "hang_up"]);
    assert_eq!(sent["metadata"]["lifeline_call_id"], call.id.to_string());

    // Twilio repeats the webhook (its own retry): still one call row, and the same answer for
    // the same Ultravox call, which is created once.
    let again = h.incoming(CALL_SID, RIVERSIDE).await;
    assert_eq!(h.call(CALL_SID).await.id, call.id);
    assert_eq!(again, twiml);
    assert_eq!(h.ultravox.received_requests().await.unwrap().len(), 1);
    assert_eq!(
        h.call(CALL_SID).await.ultravox_call_id,
        call.ultravox_call_id
    );
}

async fn agent_calls_send_only_the_prompts_variables_as_strings_and_the_agent_is_fetched_once(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    Mock::given(method("GET"))
        .and(path("/api/agents/agent-hillside"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "agentId": "agent-hillside",
            "callTemplate": { "systemPrompt":
                "You answer for {{client_name}}. Open now: {{ is_the_clinic_open }}. \
                 Caller ends in {{caller_phone_last4}}; temperature {{agent_temperature}}; \
                 {{unknown_variable}}" },
        })))
        .expect(1)
        .mount(&h.ultravox)
        .await;
    h.ultravox_creates_calls("/api/agents/agent-hillside/calls")
        .await;
    h.incoming("CA00000000000000000000000000000001", HILLSIDE)
        .await;
    h.incoming("CA00000000000000000000000000000002", HILLSIDE)
        .await;

    let creates: Vec<Value> = h
        .ultravox
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/calls"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(creates.len(), 2);
    let context = &creates[0]["templateContext"];
    assert_eq!(
        context,
        &json!({
            "client_name": "Hillside Animal Hospital",
            // Hillside is open around the clock, computed in Toronto time.
            "is_the_clinic_open": "yes",
            "caller_phone_last4": "5309",
            "agent_temperature": "0.4",
        })
    );
    // An agent call takes no tools or secrets (Ultravox refuses them there).
    assert!(creates[0].get("selectedTools").is_none());
    assert!(creates[0].get("sharedSecrets").is_none());
    assert_eq!(
        creates[0]["dataConnection"]["websocketUrl"],
        "wss://example.com/ultravox"
    );
}

async fn forged_or_missing_twilio_signatures_are_refused_and_nothing_happens(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    let params = [
        ("AccountSid", ACCOUNT),
        ("CallSid", CALL_SID),
        ("CallStatus", "ringing"),
        ("From", CALLER),
        ("To", RIVERSIDE),
    ];
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let wrong_token = compute_signature(
        "not-the-token",
        &format!("{PUBLIC}/twilio/incoming"),
        &owned,
    );
    let wrong_url = compute_signature(TOKEN, "https://attacker.example/twilio/incoming", &owned);
    let good = compute_signature(TOKEN, &format!("{PUBLIC}/twilio/incoming"), &owned);
    for signature in [
        None,
        Some(""),
        Some(wrong_token.as_str()),
        Some(wrong_url.as_str()),
    ] {
        let (status, _) = h.post_form("/twilio/incoming", &params, signature).await;
        assert_eq!(status, 403);
    }
    // A signed request whose body was changed afterwards.
    let mut tampered = params;
    tampered[3] = ("From", "+15550000000");
    let (status, _) = h
        .post_form("/twilio/incoming", &tampered, Some(&good))
        .await;
    assert_eq!(status, 403);
    for route in [
        "/twilio/dial-action",
        "/twilio/status",
        "/twilio/whisper",
        "/twilio/recording",
    ] {
        let (status, _) = h.post_form(route, &params, Some(&good)).await;
        assert_eq!(status, 403, "{route}");
    }
    assert!(
        h.store
            .find_call(Platform::Twilio, CALL_SID)
            .await
            .unwrap()
            .is_none()
    );
    assert!(h.ultravox.received_requests().await.unwrap().is_empty());
    // Every refusal is counted by route (the process's registry is shared by the tests of this
    // binary when they run in one process: at least ours).
    let metrics = h
        .http
        .get(format!("http://{}/metrics", h.server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (route, refused) in [
        ("/twilio/incoming", 5.0),
        ("/twilio/dial-action", 1.0),
        ("/twilio/status", 1.0),
        ("/twilio/whisper", 1.0),
        ("/twilio/recording", 1.0),
    ] {
        let series = format!("lifeline_twilio_webhooks_refused_total{{path=\"{route}\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
            .trim()
            .parse()
            .unwrap();
        assert!(count >= refused, "{route}: {count}");
    }
}

async fn ultravox_down_at_setup_rings_the_on_call_team_and_no_answer_leaves_a_critical_callback(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    Mock::given(method("POST"))
        .and(path("/api/calls"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&h.ultravox)
        .await;
    let twiml = h.incoming(CALL_SID, RIVERSIDE).await;
    let attempt = attempt_of(&twiml);
    assert!(twiml.contains("<Number"), "{twiml}");
    assert!(twiml.contains("+15557654321"), "{twiml}");
    assert!(twiml.contains("https://example.com/twilio/dial-action?attempt="));
    let call = h.call(CALL_SID).await;
    assert!(call.ultravox_call_id.is_none());

    // The primary does not answer: the secondary rings.
    let next = dial_action(&h, &attempt, "no-answer", false).await;
    assert!(next.contains("+15557654322"), "{next}");
    assert!(h.callbacks("riverside").await.is_empty());
    // Nor does the secondary: a critical callback request for the caller's own number.
    let last = dial_action(&h, &attempt_of(&next), "busy", false).await;
    assert_same_twiml(
        &last,
        &fixture("lib-callback-promise.xml").replace("8 3 0 9", "5 3 0 9"),
    );
    let callbacks = h.callbacks("riverside").await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].urgency_level, "critical");
    assert_eq!(callbacks[0].callback_number, CALLER);
    assert_eq!(callbacks[0].call_id, Some(call.id));
}

async fn ultravox_down_with_the_record_fallback_takes_a_message_that_becomes_a_callback(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    Mock::given(method("GET"))
        .and(path("/api/agents/agent-lakeside"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&h.ultravox)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/agents/agent-lakeside/calls"))
        .respond_with(ResponseTemplate::new(400).set_body_string("bad request"))
        .mount(&h.ultravox)
        .await;
    let twiml = h.incoming(CALL_SID, LAKESIDE).await;
    assert_same_twiml(&twiml, &fixture("lib-record-fallback.xml"));

    let recording = [
        ("AccountSid", ACCOUNT),
        ("CallSid", CALL_SID),
        ("From", CALLER),
        ("To", LAKESIDE),
        ("RecordingUrl", "https://api.twilio.com/recordings/RE123"),
        ("RecordingSid", "RE123"),
        ("RecordingDuration", "14"),
    ];
    for _ in 0..2 {
        let (status, body) = h.webhook("/twilio/recording", &recording).await;
        assert_eq!(status, 200);
        assert!(body.contains("Your message has been recorded"), "{body}");
    }
    let callbacks = h.callbacks("lakeside").await;
    assert_eq!(
        callbacks.len(),
        1,
        "one request per recording, however often Twilio posts it"
    );
    assert_eq!(callbacks[0].callback_number, CALLER);
    assert!(
        callbacks[0]
            .concern_description
            .as_deref()
            .unwrap()
            .contains("https://api.twilio.com/recordings/RE123")
    );
}

async fn data_connection_transfer_then_no_answer_twice_ends_in_a_critical_callback_request(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.twilio_updates(CALL_SID, 1).await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let call = h.call(CALL_SID).await;
    let mut ws = h
        .data_connection(call.ultravox_call_id.as_deref().unwrap())
        .await;
    let invocation = json!({
        "type": "data_connection_tool_invocation",
        "toolName": "transfer",
        "invocationId": "inv-42",
        "parameters": {
            "urgency_reason": "CRITICAL EMERGENCY: dog was hit by a car",
            "first_name": "Jeremy", "last_name": "Greven",
            "callback_number": "4168189171", "pet_name": "Max",
        },
    });
    ws.send(Message::Text(invocation.to_string().into()))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["type"], "data_connection_tool_result");
    assert_eq!(reply["invocationId"], "inv-42");
    assert!(
        reply["result"].as_str().unwrap().contains("Transferring"),
        "{reply}"
    );

    let updates = h.twiml_updates().await;
    assert_eq!(updates.len(), 1);
    let transfer = &updates[0];
    // The transfer TwiML is the document the official library writes for the same verbs.
    assert_same_twiml(
        &with_fixture_attempt(transfer),
        &fixture("lib-transfer-route.xml"),
    );
    let whisper_path = format!("/twilio/whisper?attempt={}", attempt_of(transfer));
    let (status, whisper) = h
        .webhook(
            &whisper_path,
            &[("CallSid", "CA2"), ("AccountSid", ACCOUNT)],
        )
        .await;
    assert_eq!(status, 200);
    assert!(whisper.contains("Jeremy Greven"), "{whisper}");
    assert!(whisper.contains("hit by a car"), "{whisper}");

    let next = dial_action(&h, &attempt_of(transfer), "no-answer", false).await;
    assert!(next.contains("+15557654322"), "secondary rings: {next}");
    let last = dial_action(&h, &attempt_of(&next), "no-answer", false).await;
    assert!(last.contains("9 1 7 1"), "{last}");
    assert!(last.contains("<Hangup"), "{last}");

    let callbacks = h.callbacks("riverside").await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].urgency_level, "critical");
    assert_eq!(callbacks[0].callback_number, "+14168189171");
    assert_eq!(callbacks[0].reason, "failed_transfer");
    let logs = h
        .store
        .tool_call_logs_for_call(Platform::Twilio, CALL_SID)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        logs[0].status, "failed",
        "the transfer's log shows it failed"
    );

    // A repeat of the invocation (Ultravox re-invokes) transfers nothing new.
    ws.send(Message::Text(invocation.to_string().into()))
        .await
        .unwrap();
    let again = next_json(&mut ws).await;
    assert_eq!(again["invocationId"], "inv-42");
    assert_eq!(h.twiml_updates().await.len(), 1);
}

async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn forged_stale_or_missing_ultravox_signatures_are_refused(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let id = h.call(CALL_SID).await.ultravox_call_id.unwrap();
    let now = Utc::now().to_rfc3339();
    let stale = (Utc::now() - chrono::TimeDelta::seconds(120)).to_rfc3339();
    let cases = [
        (
            now.clone(),
            sign_data_connection("another-secret-0123456", &id, &now),
        ),
        (stale.clone(), sign_data_connection(DC_SECRET, &id, &stale)),
        (now.clone(), String::new()),
        (String::new(), sign_data_connection(DC_SECRET, &id, &now)),
        // Signed for another call.
        (
            now.clone(),
            sign_data_connection(DC_SECRET, "other-call", &now),
        ),
    ];
    for (timestamp, signature) in cases {
        match h.connect_data(&id, &timestamp, &signature).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 401)
            }
            other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
        }
    }
    // Any of several comma-separated signatures may match (secret rotation).
    let good = sign_data_connection(DC_SECRET, &id, &now);
    let (ws, _) = h
        .connect_data(&id, &now, &format!("deadbeef,{good}"))
        .await
        .expect("accepted");
    drop(ws);
}

async fn http_tool_transfers_the_call_named_by_its_header_once_however_often_it_is_repeated(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.twilio_updates(CALL_SID, 1).await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let id = h.call(CALL_SID).await.ultravox_call_id.unwrap();
    // The original tool's body, exactly as Ultravox sends it.
    let body = json!({
        "urgency_reason": "CRITICAL EMERGENCY: dog was hit by car",
        "first_name": "Jeremy", "last_name": "Greven",
        "callback_number": "4168189171", "pet_name": "Max",
        "species": "Dog", "breed": "Labrador Retriever",
    });
    let mut answers = Vec::new();
    for _ in 0..3 {
        let response = h
            .tool(
                "/twilio/transferToOnCall",
                Some(TOOL_KEY),
                Some(&id),
                body.clone(),
            )
            .await;
        assert_eq!(response.status(), 200);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(h.twiml_updates().await.len(), 1, "one transfer");
    let logs = h
        .store
        .tool_call_logs_for_call(Platform::Twilio, CALL_SID)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].tool_name, "transferFromAiTriageWithMetadata");
    assert_eq!(logs[0].canonical_tool, "transfer");
    // The same tool by its canonical route is the same invocation.
    let response = h
        .tool("/ultravox/tools/transfer", Some(TOOL_KEY), Some(&id), body)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(h.twiml_updates().await.len(), 1);
    // The on-call person answers and the bridged call ends: the transfer has its outcome.
    let updates = h.twiml_updates().await;
    dial_action(&h, &attempt_of(&updates[0]), "completed", true).await;
}

async fn http_tools_authenticate_and_never_trust_a_call_sid_in_the_body(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.twilio_updates(CALL_SID, 0).await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let id = h.call(CALL_SID).await.ultravox_call_id.unwrap();
    let body = json!({ "urgency_reason": "emergency", "call_sid": CALL_SID });
    for key in [None, Some(""), Some("wrong-key-0123456789")] {
        let r = h
            .tool("/twilio/transferToOnCall", key, Some(&id), body.clone())
            .await;
        assert_eq!(r.status(), 401);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer["message"],
            "Unauthorized: Invalid or missing API key"
        );
    }
    // A call_sid in the body is not a call: without the header nothing is transferred.
    let r = h
        .tool(
            "/twilio/transferToOnCall",
            Some(TOOL_KEY),
            None,
            body.clone(),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = h
        .tool(
            "/twilio/transferToOnCall",
            Some(TOOL_KEY),
            Some("9f0c3a52-0000-4000-8000-000000000000"),
            body.clone(),
        )
        .await;
    assert_eq!(r.status(), 404);
    // Lakeside's own key cannot act on Riverside's call.
    let r = h
        .tool(
            "/twilio/transferToOnCall",
            Some(LAKESIDE_TOOL_KEY),
            Some(&id),
            body.clone(),
        )
        .await;
    assert_eq!(r.status(), 404);
    // Bad input gets a precise error in the tool protocol's shape.
    let r = h
        .http
        .post(format!("http://{}/twilio/collectCallerInfo", h.server.addr))
        .header("X-API-Key", TOOL_KEY)
        .header("X-Ultravox-Call-Id", &id)
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = h
        .tool(
            "/twilio/collectCallerInfo",
            Some(TOOL_KEY),
            Some(&id),
            json!({ "callback_number": "12", "concern_description": "limping" }),
        )
        .await;
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "validation");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("callback_number"),
        "{answer}"
    );
}

async fn http_hang_up_ends_the_call_and_collect_without_a_call_uses_the_tenant_key(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let id = h.call(CALL_SID).await.ultravox_call_id.unwrap();
    let r = h
        .tool("/twilio/hangUp", Some(TOOL_KEY), Some(&id), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-ultravox-response-type"], "hang-up");
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "strict": true }));

    // The original collect tool sends no call id; Lakeside's own key names the clinic.
    let body = json!({
        "callback_number": "+14168189171", "first_name": "Jeremy", "last_name": "Greven",
        "pet_name": "Tommie", "concern_description": "needs a refill of Apoquel",
    });
    for _ in 0..2 {
        let r = h
            .tool(
                "/twilio/collectCallerInfo",
                Some(LAKESIDE_TOOL_KEY),
                None,
                body.clone(),
            )
            .await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["success"], true);
    }
    let callbacks = h.callbacks("lakeside").await;
    assert_eq!(callbacks.len(), 1, "a repeated message is recorded once");
    assert_eq!(callbacks[0].callback_number, "+14168189171");
    assert_eq!(callbacks[0].pet_name.as_deref(), Some("Tommie"));
}

async fn call_the_platform_refuses_fails_at_once_with_a_critical_callback_request(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/2010-04-01/Accounts/{ACCOUNT}/Calls/{CALL_SID}.json"
        )))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "code": 21220, "message": "Call is not in-progress. Cannot redirect.",
            "more_info": "https://www.twilio.com/docs/errors/21220", "status": 400,
        })))
        .expect(1)
        .mount(&h.twilio)
        .await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let id = h.call(CALL_SID).await.ultravox_call_id.unwrap();
    let r = h
        .tool(
            "/ultravox/tools/transfer",
            Some(TOOL_KEY),
            Some(&id),
            json!({ "urgency_reason": "bleeding heavily", "callback_number": "(416) 818-9171" }),
        )
        .await;
    assert_eq!(r.status(), 502);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "external");
    assert!(
        answer["message"].as_str().unwrap().contains("9171"),
        "{answer}"
    );
    let callbacks = h.callbacks("riverside").await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].urgency_level, "critical");
    assert_eq!(callbacks[0].callback_number, "+14168189171");
}

async fn answered_transfer_ends_the_call_and_status_callbacks_close_it_in_sequence_order(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.twilio_updates(CALL_SID, 1).await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let call = h.call(CALL_SID).await;
    let id = call.ultravox_call_id.clone().unwrap();
    let r = h
        .tool(
            "/ultravox/tools/transfer",
            Some(TOOL_KEY),
            Some(&id),
            json!({ "urgency_reason": "seizure" }),
        )
        .await;
    assert_eq!(r.status(), 200);

    // Twilio's own requests, signed by the official library (fixtures/twilio/webhooks.jsonl).
    let hooks: Vec<Value> = fixture("webhooks.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hook = |name: &str| hooks.iter().find(|h| h["name"] == name).unwrap().clone();
    let completed = hook("dial-action-completed");
    let path = completed["url"]
        .as_str()
        .unwrap()
        .trim_start_matches(PUBLIC);
    let (status, body) = h
        .post_raw(
            path,
            completed["body"].as_str().unwrap().to_string(),
            completed["signature"].as_str(),
        )
        .await;
    assert_eq!(status, 200);
    assert_same_twiml(
        &body,
        r#"<?xml version="1.0" encoding="UTF-8"?><Response><Hangup /></Response>"#,
    );
    let attempts = h.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, "succeeded");
    assert!(h.callbacks("riverside").await.is_empty());

    let status_hook = hook("status-completed");
    let path = status_hook["url"]
        .as_str()
        .unwrap()
        .trim_start_matches(PUBLIC);
    let progress = |status: &'static str, sequence: &'static str| {
        [
            ("AccountSid", ACCOUNT),
            ("CallSid", CALL_SID),
            ("CallStatus", status),
            ("SequenceNumber", sequence),
        ]
    };
    assert_eq!(h.webhook(path, &progress("in-progress", "2")).await.0, 200);
    // Sequence 1 arrives after 2: on the timeline, but the call stays in progress.
    assert_eq!(h.webhook(path, &progress("ringing", "1")).await.0, 200);
    assert_eq!(h.call(CALL_SID).await.status, "in-progress");
    let (code, _) = h
        .post_raw(
            path,
            status_hook["body"].as_str().unwrap().to_string(),
            status_hook["signature"].as_str(),
        )
        .await;
    assert_eq!(code, 200);
    let row = h.call(CALL_SID).await;
    assert_eq!(row.status, "completed");
    assert_eq!(row.duration_seconds, Some(42));
    assert!(row.ended_at.is_some());
}

/// Ultravox creates calls, each with its own id and join URL, after `delay` (Twilio's repeat
/// can then arrive while the first request waits).
async fn ultravox_creates_distinct_calls(h: &Harness, route: &str, delay: Duration) {
    Mock::given(method("POST"))
        .and(path(route.to_string()))
        .respond_with(move |_: &Request| {
            let id = uuid::Uuid::new_v4();
            ResponseTemplate::new(201)
                .set_body_json(json!({
                    "callId": id.to_string(),
                    "joinUrl": format!("wss://example.ultravox.ai/calls/{id}/join"),
                    "created": "2026-11-22T00:00:00Z",
                }))
                .set_delay(delay)
        })
        .mount(&h.ultravox)
        .await;
}

/// Waits (5 s at most) until Ultravox has received `n` requests.
async fn ultravox_received(h: &Harness, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.ultravox.received_requests().await.unwrap().len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Ultravox never got request {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The join URL in a `<Connect><Stream>` answer.
fn stream_url(twiml: &str) -> String {
    let doc = parse_xml(twiml.trim());
    let stream = &doc.children[0].children[0].children[0];
    assert_eq!(stream.name, "Stream", "{twiml}");
    stream
        .attrs
        .iter()
        .find(|(k, _)| k == "url")
        .map(|(_, v)| v.clone())
        .expect("url")
}

/// Twilio retries a voice webhook it got no answer to in time when the URL's connection
/// overrides ask for it (`#rc=…&rp=rt` or `rp=all`, docs:
/// https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides — retry count
/// default 1, read timeout up to 15 s), and it uses the answer to the request it retried with.
/// So the retry comes while the first request is still creating the Ultravox call: it must
/// answer with that call, not create a second one the caller would join and lifeline could not
/// map (HTTP tools 404, data connection refused).
async fn a_repeat_while_the_first_creates_the_ultravox_call_joins_the_same_call(engine: Engine) {
    let h = Harness::start(engine).await;
    ultravox_creates_distinct_calls(&h, "/api/calls", Duration::from_millis(700)).await;
    let (first, repeat) = tokio::join!(h.incoming(CALL_SID, RIVERSIDE), async {
        // The first request is inside Ultravox's call creation.
        ultravox_received(&h, 1).await;
        h.incoming(CALL_SID, RIVERSIDE).await
    });
    assert_eq!(repeat, first, "the same TwiML for the same Ultravox call");
    assert_eq!(
        h.ultravox.received_requests().await.unwrap().len(),
        1,
        "one Ultravox call"
    );
    let call = h.call(CALL_SID).await;
    let id = call.ultravox_call_id.clone().expect("mapped");
    assert_eq!(
        stream_url(&first),
        format!("wss://example.ultravox.ai/calls/{id}/join"),
        "the caller joins the call lifeline mapped"
    );
    // The agent's tools find the call by the id the caller joined.
    let r = h
        .tool("/twilio/hangUp", Some(TOOL_KEY), Some(&id), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    // A later repeat too.
    assert_eq!(h.incoming(CALL_SID, RIVERSIDE).await, first);
    assert_eq!(h.ultravox.received_requests().await.unwrap().len(), 1);
    let events = h.store.call_events(call.id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "ultravox_call_created")
            .count(),
        1
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "twilio_incoming_repeated")
            .count(),
        2,
        "{kinds:?}"
    );
}

/// Twilio gives up on a request whose answer is late (its read timeout) and closes the
/// connection, then retries. The first request's Ultravox call is still created and recorded,
/// so the retry answers with it at once — not after the claim goes stale, and not with a second
/// Ultravox call.
async fn twilio_giving_up_on_the_first_request_does_not_lose_the_ultravox_call_it_creates(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    ultravox_creates_distinct_calls(&h, "/api/calls", Duration::from_millis(800)).await;
    let params = [
        ("AccountSid", ACCOUNT),
        ("CallSid", CALL_SID),
        ("CallStatus", "ringing"),
        ("From", CALLER),
        ("To", RIVERSIDE),
    ];
    let owned: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let signature = compute_signature(TOKEN, &format!("{PUBLIC}/twilio/incoming"), &owned);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("http://{}/twilio/incoming", h.server.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", &signature)
        .body(serde_urlencoded::to_string(params).unwrap())
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    ultravox_received(&h, 1).await;
    // Were the first request's work dropped with its connection, the retry would wait for the
    // stale claim and then create a second Ultravox call.
    let repeat = h.incoming(CALL_SID, RIVERSIDE).await;
    assert_eq!(
        h.ultravox.received_requests().await.unwrap().len(),
        1,
        "one Ultravox call"
    );
    let id = h.call(CALL_SID).await.ultravox_call_id.expect("mapped");
    assert_eq!(
        stream_url(&repeat),
        format!("wss://example.ultravox.ai/calls/{id}/join")
    );
}

/// A repeat after Ultravox failed: the same fallback (the same transfer attempt rings), not a
/// second try the first answer did not promise, and not a second attempt.
async fn a_repeat_after_the_setup_fell_back_rings_the_same_attempt(engine: Engine) {
    let h = Harness::start(engine).await;
    Mock::given(method("POST"))
        .and(path("/api/calls"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&h.ultravox)
        .await;
    let first = h.incoming(CALL_SID, RIVERSIDE).await;
    let creates = h.ultravox.received_requests().await.unwrap().len();
    let repeat = h.incoming(CALL_SID, RIVERSIDE).await;
    assert_eq!(attempt_of(&repeat), attempt_of(&first));
    assert_same_twiml(&repeat, &first);
    assert_eq!(
        h.ultravox.received_requests().await.unwrap().len(),
        creates,
        "no new Ultravox call"
    );
    let call = h.call(CALL_SID).await;
    assert_eq!(h.store.transfer_attempts(call.id).await.unwrap().len(), 1);
    // The on-call person answers and the bridged call ends: the transfer has its outcome.
    dial_action(&h, &attempt_of(&first), "completed", true).await;
}

/// The claims behind call setup, on the store: one claimant; a claim left unfinished past the
/// stale time (its process died) is taken over, and the old claimant can no longer finish;
/// linking a call to a second Ultravox call is a conflict, not a silent no-op.
async fn call_setup_is_claimed_once_and_a_dead_claim_is_taken_over(engine: Engine) {
    use lifeline::store::{CallSetup, NewCall, StoreError};
    let db = TestDb::new(engine).await;
    let store = db.store().await;
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-22T03:00:00Z")
        .unwrap()
        .to_utc();
    let s = chrono::TimeDelta::seconds;
    let twilio_call = |call_ref: &str| NewCall {
        id: uuid::Uuid::now_v7(),
        tenant_id: "riverside".into(),
        platform: Platform::Twilio,
        call_ref: call_ref.into(),
        from_number: Some(CALLER.into()),
        to_number: Some(RIVERSIDE.into()),
        direction: "inbound".into(),
        status: "ringing".into(),
        account_sid: Some(ACCOUNT.into()),
        application_sid: None,
        started_at: t0,
    };
    let call = store.upsert_call(&twilio_call(CALL_SID)).await.unwrap();
    let (a, b, c) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let claim = |token, now, stale_before| {
        let store = store.clone();
        async move {
            store
                .claim_call_setup(call.id, token, now, stale_before)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim(a, t0, t0 - s(7)).await, CallSetup::Claimed);
    assert_eq!(claim(b, t0 + s(1), t0 - s(6)).await, CallSetup::InProgress);
    // A's request died; after the stale time B takes over.
    assert_eq!(claim(b, t0 + s(8), t0 + s(1)).await, CallSetup::Claimed);
    let connected_by_a = store
        .connect_call_setup(call.id, a, "uv-a", "wss://uv/a", t0 + s(9))
        .await
        .unwrap();
    assert_eq!(connected_by_a, CallSetup::InProgress, "A lost its claim");
    assert!(!store.fail_call_setup(call.id, a, t0 + s(9)).await.unwrap());
    let connected = CallSetup::Connected {
        ultravox_call_id: "uv-b".into(),
        join_url: "wss://uv/b".into(),
    };
    assert_eq!(
        store
            .connect_call_setup(call.id, b, "uv-b", "wss://uv/b", t0 + s(9))
            .await
            .unwrap(),
        connected
    );
    assert_eq!(claim(c, t0 + s(60), t0 + s(50)).await, connected);
    assert!(!store.fail_call_setup(call.id, b, t0 + s(61)).await.unwrap());
    let row = store
        .find_call(Platform::Twilio, CALL_SID)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.ultravox_call_id.as_deref(), Some("uv-b"));
    assert_eq!(
        store
            .find_call_by_ultravox_id("uv-b")
            .await
            .unwrap()
            .map(|c| c.id),
        Some(call.id)
    );
    // The call's link is the one tools use: another Ultravox call is refused, loudly.
    store.set_ultravox_call_id(call.id, "uv-b").await.unwrap();
    match store.set_ultravox_call_id(call.id, "uv-a").await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("expected a conflict, got {other:?}"),
    }
    match store
        .set_ultravox_call_id(uuid::Uuid::now_v7(), "uv-z")
        .await
    {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected not found, got {other:?}"),
    }
    assert_eq!(
        store
            .find_call(Platform::Twilio, CALL_SID)
            .await
            .unwrap()
            .unwrap()
            .ultravox_call_id
            .as_deref(),
        Some("uv-b")
    );

    // A second call whose setup fell back: repeats see it, a late connect cannot undo it.
    let other = store
        .upsert_call(&twilio_call("CA00000000000000000000000000000009"))
        .await
        .unwrap();
    assert_eq!(
        store
            .claim_call_setup(other.id, a, t0, t0 - s(7))
            .await
            .unwrap(),
        CallSetup::Claimed
    );
    assert!(store.fail_call_setup(other.id, a, t0 + s(1)).await.unwrap());
    assert_eq!(
        store
            .claim_call_setup(other.id, b, t0 + s(30), t0 + s(20))
            .await
            .unwrap(),
        CallSetup::FellBack
    );
    assert_eq!(
        store
            .connect_call_setup(other.id, a, "uv-late", "wss://uv/late", t0 + s(31))
            .await
            .unwrap(),
        CallSetup::FellBack
    );
}

/// Twilio posts a `<Record action>` again when it got no answer in time (the same retry rules
/// as any voice webhook) — possibly while the first post is still being handled. One voice
/// message is one callback request, also for a call lifeline has no row for (its database was
/// down at setup, so the record fallback ran without one).
async fn concurrent_repeats_of_a_recording_make_one_callback_request_with_or_without_a_call(
    engine: Engine,
) {
    let h = Harness::start(engine).await;
    let post_eight = |call_sid: &'static str, recording_sid: &'static str| {
        let h = &h;
        async move {
            let recording = [
                ("AccountSid", ACCOUNT),
                ("CallSid", call_sid),
                ("From", CALLER),
                ("To", LAKESIDE),
                (
                    "RecordingUrl",
                    "https://api.twilio.com/recordings/RE-message",
                ),
                ("RecordingSid", recording_sid),
                ("RecordingDuration", "21"),
            ];
            let answers = futures_util::future::join_all(
                (0..8).map(|_| h.webhook("/twilio/recording", &recording)),
            )
            .await;
            for (status, body) in answers {
                assert_eq!(status, 200);
                assert!(body.contains("Your message has been recorded"), "{body}");
            }
        }
    };

    // No call row.
    post_eight(
        "CA00000000000000000000000000000077",
        "RE00000000000000000000000000000001",
    )
    .await;
    let callbacks = h.callbacks("lakeside").await;
    assert_eq!(callbacks.len(), 1, "one request per recording");
    assert_eq!(callbacks[0].call_id, None);
    assert_eq!(callbacks[0].callback_number, CALLER);

    // With a call row: Ultravox is down and Lakeside takes messages.
    Mock::given(method("POST"))
        .and(path("/api/agents/agent-lakeside/calls"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&h.ultravox)
        .await;
    let twiml = h.incoming(CALL_SID, LAKESIDE).await;
    assert_same_twiml(&twiml, &fixture("lib-record-fallback.xml"));
    post_eight(CALL_SID, "RE00000000000000000000000000000002").await;
    let call = h.call(CALL_SID).await;
    let callbacks = h.callbacks("lakeside").await;
    assert_eq!(callbacks.len(), 2);
    let of_call: Vec<_> = callbacks
        .iter()
        .filter(|c| c.call_id == Some(call.id))
        .collect();
    assert_eq!(of_call.len(), 1);
    assert_eq!(
        of_call[0].metadata.as_ref().unwrap().0["recording_sid"],
        "RE00000000000000000000000000000002"
    );
    assert_eq!(of_call[0].urgency_level, "urgent");
}

/// Issue 12: a dial webhook whose `attempt` cannot be read (not a UUID, repeated) is answered in
/// TwiML, never with a 400 (a Twilio caller would hear "an application error has occurred"): it
/// is taken as the attempt ringing for its call. The signature is still checked first.
async fn dial_webhooks_with_an_unreadable_attempt_answer_twiml(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.twilio_updates(CALL_SID, 1).await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let call = h.call(CALL_SID).await;
    let mut ws = h
        .data_connection(call.ultravox_call_id.as_deref().unwrap())
        .await;
    let invocation = json!({
        "type": "data_connection_tool_invocation",
        "toolName": "transfer",
        "invocationId": "inv-unreadable-attempt",
        "parameters": {
            "urgency_reason": "my dog is limping", "first_name": "Jeremy",
            "last_name": "Greven", "callback_number": "4168189171",
        },
    });
    ws.send(Message::Text(invocation.to_string().into()))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert!(
        reply["result"].as_str().unwrap().contains("Transferring"),
        "{reply}"
    );

    // Unsigned: refused before anything is read, whatever the query.
    let (status, _) = h
        .post_form(
            "/twilio/dial-action?attempt=not-a-uuid",
            &[("CallSid", CALL_SID), ("DialCallStatus", "no-answer")],
            Some("forged"),
        )
        .await;
    assert_eq!(status, 403);

    // The whisper with an unreadable attempt: the on-call person is simply connected.
    let (status, whisper) = h
        .webhook(
            "/twilio/whisper?attempt=not-a-uuid",
            &[("CallSid", "CA2"), ("AccountSid", ACCOUNT)],
        )
        .await;
    assert_eq!(status, 200, "{whisper}");
    assert!(whisper.contains("<Say"), "{whisper}");

    // The primary did not answer: the ringing attempt is the one that ended, so the secondary
    // rings (a 200 with TwiML, not a 400).
    let next = dial_action(&h, "not-a-uuid", "no-answer", false).await;
    assert!(next.contains("<Dial"), "{next}");
    assert!(next.contains("+15557654322"), "the secondary rings: {next}");
    // The same with the attempt given twice, differently: the secondary's attempt ends.
    let other = "0190a0b1-0000-7000-8000-000000000001";
    let last = dial_action(
        &h,
        &format!("{}&attempt={other}", attempt_of(&next)),
        "no-answer",
        false,
    )
    .await;
    assert!(last.contains("<Hangup"), "{last}");
    assert!(last.contains("9 1 7 1"), "a callback is promised: {last}");
    let callbacks = h.callbacks("riverside").await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].urgency_level, "critical");
}

/// Issue 12: a `data_connection_tool_invocation` that cannot be read gets a
/// `data_connection_tool_result` with an error the model can act on, whenever its
/// `invocationId` can be recovered (from the JSON, or from the text of a frame that is not
/// JSON); nothing runs. Sent again intact, the same invocation works.
async fn unreadable_data_connection_tool_invocations_get_an_error_result(engine: Engine) {
    let h = Harness::start(engine).await;
    h.ultravox_creates_calls("/api/calls").await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let call = h.call(CALL_SID).await;
    let mut ws = h
        .data_connection(call.ultravox_call_id.as_deref().unwrap())
        .await;
    let error_of = |reply: &Value, id: &str| -> Value {
        assert_eq!(reply["type"], "data_connection_tool_result", "{reply}");
        assert_eq!(reply["invocationId"], id, "{reply}");
        serde_json::from_str(reply["result"].as_str().unwrap()).unwrap()
    };
    // Parameters that are not an object.
    let frame = json!({
        "type": "data_connection_tool_invocation",
        "toolName": "collect_info",
        "invocationId": "inv-bad-params",
        "parameters": "{\"callback_number\": \"41681",
    });
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let error = error_of(&next_json(&mut ws).await, "inv-bad-params");
    assert_eq!(error["error"], "validation", "{error}");
    assert_eq!(error["retryable"], true, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("parameters must be a JSON object"),
        "{error}"
    );
    // Cut short: not JSON at all.
    let cut = r#"{"type":"data_connection_tool_invocation","toolName":"collect_info","invocationId":"inv-cut","parameters":{"callback_number":"4168"#;
    ws.send(Message::Text(cut.into())).await.unwrap();
    let error = error_of(&next_json(&mut ws).await, "inv-cut");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{error}"
    );
    // No tool name.
    let frame = json!({
        "type": "data_connection_tool_invocation",
        "invocationId": "inv-no-name",
        "parameters": {},
    });
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let error = error_of(&next_json(&mut ws).await, "inv-no-name");
    assert!(
        error["message"].as_str().unwrap().contains("no toolName"),
        "{error}"
    );
    // Nothing ran, nothing was logged.
    let logs = h
        .store
        .tool_call_logs_for_call(Platform::Twilio, CALL_SID)
        .await
        .unwrap();
    assert!(logs.is_empty(), "{logs:?}");

    // Sent again intact, it works.
    let frame = json!({
        "type": "data_connection_tool_invocation",
        "toolName": "collect_info",
        "invocationId": "inv-cut",
        "parameters": {"callback_number": "4168189171", "concern_description": "limping"},
    });
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["invocationId"], "inv-cut");
    assert!(
        reply["result"].as_str().unwrap().starts_with("Recorded"),
        "{reply}"
    );
    // Counted.
    let metrics = h
        .http
        .get(format!("http://{}/metrics", h.server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("lifeline_malformed_frames_total{"))
        .filter(|l| l.contains("socket=\"ultravox\"") && l.contains("answered=\"true\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // The recorder is the process's: under plain `cargo test` the other engine's run of this
    // test counts into it too (nextest runs each test in a process of its own).
    assert!(count >= 3.0, "{metrics}");
}

// ------------------------------------------------------------------------------------------------
// Issue 14: the acceptance gate on the on-call person's leg.

/// A call whose agent asked for a transfer; returns the transfer TwiML given to Twilio.
async fn twilio_transfer(h: &Harness) -> String {
    h.ultravox_creates_calls("/api/calls").await;
    h.twilio_updates(CALL_SID, 1).await;
    h.incoming(CALL_SID, RIVERSIDE).await;
    let call = h.call(CALL_SID).await;
    let mut ws = h
        .data_connection(call.ultravox_call_id.as_deref().unwrap())
        .await;
    let invocation = json!({
        "type": "data_connection_tool_invocation",
        "toolName": "transfer",
        "invocationId": "inv-gate",
        "parameters": {
            "urgency_reason": "CRITICAL EMERGENCY: dog was hit by a car",
            "first_name": "Jeremy", "last_name": "Greven",
            "callback_number": "4168189171", "pet_name": "Max",
        },
    });
    ws.send(Message::Text(invocation.to_string().into()))
        .await
        .unwrap();
    let reply = next_json(&mut ws).await;
    assert_eq!(reply["invocationId"], "inv-gate");
    let updates = h.twiml_updates().await;
    assert_eq!(updates.len(), 1);
    updates[0].clone()
}

/// The whisper request Twilio makes when the on-call leg answers (`<Number url>`, with
/// `AnsweredBy` from `machineDetection`).
async fn whisper_of(h: &Harness, attempt: &str, answered_by: &str) -> String {
    let (status, body) = h
        .webhook(
            &format!("/twilio/whisper?attempt={attempt}"),
            &[
                ("AccountSid", ACCOUNT),
                ("AnsweredBy", answered_by),
                ("CallSid", "CA22222222222222222222222222222222"),
                ("ParentCallSid", CALL_SID),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The `<Gather>` action when a key is pressed.
async fn gate_key(h: &Harness, attempt: &str, digits: &str) -> String {
    let (status, body) = h
        .webhook(
            &format!("/twilio/gate?attempt={attempt}"),
            &[
                ("AccountSid", ACCOUNT),
                ("CallSid", "CA22222222222222222222222222222222"),
                ("Digits", digits),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn attempts_of(h: &Harness) -> Vec<lifeline::store::TransferAttemptRow> {
    let call = h.call(CALL_SID).await;
    h.store.transfer_attempts(call.id).await.unwrap()
}

async fn gate_accepts_on_1_and_the_attempt_is_accepted(engine: Engine) {
    let h = Harness::start(engine).await;
    let transfer = twilio_transfer(&h).await;
    let attempt = attempt_of(&transfer);
    let whisper = whisper_of(&h, &attempt, "human").await;
    // The whisper is the document the official library writes for the same verbs.
    assert_same_twiml(
        &with_fixture_attempt(&whisper),
        &fixture("lib-gate-whisper.xml"),
    );
    let connecting = gate_key(&h, &attempt, "1").await;
    assert_same_twiml(&connecting, &fixture("lib-gate-connecting.xml"));
    let end = dial_action(&h, &attempt, "completed", true).await;
    assert!(end.contains("<Hangup"), "{end}");
    let rows = attempts_of(&h).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome.as_deref(), Some("accepted"));
    assert!(rows[0].accepted_at.is_some());
    assert!(rows[0].ring_ms.is_some());
    assert!(h.callbacks("riverside").await.is_empty());
}

async fn gate_declines_a_machine_then_another_key(engine: Engine) {
    let h = Harness::start(engine).await;
    let transfer = twilio_transfer(&h).await;
    let first = attempt_of(&transfer);
    // A voicemail answers the primary: hung up before the gate.
    let whisper = whisper_of(&h, &first, "machine_start").await;
    assert_same_twiml(&whisper, &fixture("lib-gate-decline.xml"));
    // Twilio: answered, never bridged.
    let next = dial_action(&h, &first, "completed", false).await;
    assert!(next.contains("+15557654322"), "secondary rings: {next}");
    let second = attempt_of(&next);
    whisper_of(&h, &second, "human").await;
    let declined = gate_key(&h, &second, "5").await;
    assert_same_twiml(&declined, &fixture("lib-gate-decline.xml"));
    let last = dial_action(&h, &second, "completed", false).await;
    assert!(last.contains("9 1 7 1"), "callback promised: {last}");
    let rows = attempts_of(&h).await;
    let outcomes: Vec<Option<&str>> = rows.iter().map(|a| a.outcome.as_deref()).collect();
    assert_eq!(outcomes, [Some("machine"), Some("declined")]);
    let callbacks = h.callbacks("riverside").await;
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].urgency_level, "critical");
}

async fn gate_declines_on_silence(engine: Engine) {
    let h = Harness::start(engine).await;
    let transfer = twilio_transfer(&h).await;
    let first = attempt_of(&transfer);
    let whisper = whisper_of(&h, &first, "unknown").await;
    assert!(whisper.contains("<Gather"), "{whisper}");
    // No key: Twilio falls through the <Gather> to the <Hangup/>; no request reaches us
    // until the dial's action.
    let next = dial_action(&h, &first, "completed", false).await;
    assert!(next.contains("+15557654322"), "secondary rings: {next}");
    let second = attempt_of(&next);
    let last = dial_action(&h, &second, "no-answer", false).await;
    assert!(last.contains("<Hangup"), "{last}");
    let rows = attempts_of(&h).await;
    let outcomes: Vec<Option<&str>> = rows.iter().map(|a| a.outcome.as_deref()).collect();
    assert_eq!(outcomes, [Some("declined"), Some("no_answer")]);
}
