//! Test harness: a fresh database per test (SQLite file or PostgreSQL database), the app served
//! on port 0, and a fake Jambonz feature-server that follows the protocol's rules.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use lifeline::Server;
use lifeline::config::{Config, ProcessSettings};
use lifeline::store::{self, Store};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// The two engines every store-touching test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Expands each named `async fn NAME(engine: Engine)` into `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::common::Engine::Sqlite).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::common::Engine::Postgres).await
                }
            }
        )*
    };
}

/// The administrative PostgreSQL URL tests create their databases from.
pub fn pg_admin_url() -> String {
    std::env::var("LIFELINE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(engine: Engine) -> Self {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path: PathBuf = dir.path().join("lifeline.db");
                Self {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
            Engine::Postgres => {
                let admin = pg_admin_url();
                let name = format!("lifeline_test_{}", Uuid::new_v4().simple());
                let pool = sqlx::PgPool::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is required for these tests and is not reachable at \
                         LIFELINE_TEST_PG_URL={admin}: {e}. Run ./scripts/test.sh, which starts one."
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&pool)
                    .await
                    .expect("create test database");
                pool.close().await;
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Self {
                    url: format!("{base}/{name}"),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    /// A migrated store on this database.
    pub async fn store(&self) -> Arc<dyn Store> {
        let store = store::connect(&self.url).await.expect("connect store");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = pg_admin_url();
        // Drop runs inside the test's runtime; a thread with its own runtime may block.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(pool) = sqlx::PgPool::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&pool)
                    .await;
                }
            });
        })
        .join();
    }
}

pub const RIVERSIDE_USER: &str = "riverside";
pub const RIVERSIDE_PASS: &str = "riverside-secret-1";
pub const HILLSIDE_USER: &str = "hillside";
pub const HILLSIDE_PASS: &str = "hillside-secret-22";

/// Two clinics: Riverside has a secondary on-call number, Hillside does not.
pub fn config_toml(extra_limits: &str) -> String {
    format!(
        r#"
[limits]
{extra_limits}

[jambonz]
ping_interval_secs = 1

[[tenants]]
id = "riverside"
name = "Riverside Emergency Vet"
numbers = ["+15083728299"]
[tenants.jambonz]
username = "{RIVERSIDE_USER}"
password = "{RIVERSIDE_PASS}"
account_sid = "9351f46a-678c-43f5-b8a6-d4eb58d131af"
[tenants.transfer]
primary = "+15557654321"
secondary = "+15557654322"
trunk = "MyCarrier"
caller_id = "+15551230000"
ring_timeout_secs = 20
[tenants.ultravox]
api_key = "UV_KEY"
system_prompt = "You are the after-hours assistant of Riverside Emergency Vet."
voice = "Jessica"

[[tenants]]
id = "hillside"
name = "Hillside Animal Hospital"
numbers = ["+15083728300"]
[tenants.jambonz]
username = "{HILLSIDE_USER}"
password = "{HILLSIDE_PASS}"
[tenants.transfer]
primary = "+15557650000"
[tenants.ultravox]
api_key = "UV_KEY_2"
agent_id = "0b7c2b8e-agent"
"#
    )
}

/// A running app on a fresh database.
pub struct TestApp {
    pub server: Server,
    pub store: Arc<dyn Store>,
    pub db: TestDb,
}

impl TestApp {
    pub async fn start(engine: Engine) -> Self {
        Self::start_with_limits(engine, "").await
    }

    /// Starts with extra TOML sections (e.g. `[delivery]`, `[worker]`) besides the two clinics.
    pub async fn start_with_sections(engine: Engine, sections: &str) -> Self {
        // The limits text goes right after `[limits]`; a section header there ends that table.
        Self::start_with_limits(engine, sections).await
    }

    pub async fn start_with_limits(engine: Engine, limits: &str) -> Self {
        let db = TestDb::new(engine).await;
        let process = ProcessSettings {
            database_url: db.url.clone(),
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            config_path: None,
            database_max_connections: 16,
        };
        let toml = config_toml(limits);
        let config = Config::build(&process, Some((&toml, "test.toml".as_ref())), &|_| None)
            .expect("test config");
        let server = Server::start(config).await.expect("start server");
        let store = server.state.store.clone();
        Self { server, store, db }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/jambonz", self.server.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.addr)
    }

    /// The call row of a Jambonz call (it must exist).
    pub async fn call(&self, call_sid: &str) -> lifeline::store::CallRow {
        self.store
            .find_call(lifeline::tools::Platform::Jambonz, call_sid)
            .await
            .expect("find call")
            .unwrap_or_else(|| panic!("no call {call_sid}"))
    }

    /// The callback requests of a call, in queue order.
    pub async fn callbacks_of(&self, call_id: Uuid) -> Vec<lifeline::store::CallbackRequestRow> {
        self.store
            .callback_requests(&lifeline::store::CallbackFilter {
                call_id: Some(call_id),
                ..Default::default()
            })
            .await
            .expect("callback requests")
    }

    /// Connects as the feature-server of the Riverside clinic.
    pub async fn feature_server(&self) -> FakeFeatureServer {
        FakeFeatureServer::connect(&self.ws_url(), RIVERSIDE_USER, RIVERSIDE_PASS)
            .await
            .expect("connect")
    }
}

/// Loads a fixture message of `kind` (and `hook` in the fixture, for verb:hook) from
/// `fixtures/jambonz/feature-server.jsonl`.
pub fn fixture(kind: &str, fixture_hook: Option<&str>) -> Value {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/jambonz/feature-server.jsonl"),
    )
    .expect("fixtures");
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("fixture json"))
        .find(|m| {
            m["type"] == kind && (fixture_hook.is_none() || m["hook"] == fixture_hook.unwrap())
        })
        .unwrap_or_else(|| panic!("no fixture {kind} {fixture_hook:?}"))
}

/// A fresh 22-character msgid, like the feature-server's short-uuids.
pub fn msgid() -> String {
    Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// A Jambonz feature-server client that follows the protocol: Basic auth, the `ws.jambonz.org`
/// subprotocol, snake-cased data, acks awaited at most 5 s, hooks as the app configured them.
pub struct FakeFeatureServer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub call_sid: String,
    /// Hooks the app configured in its verbs, as Jambonz would echo them.
    pub tool_hook: Option<String>,
    pub llm_action_hook: Option<String>,
    pub dial_action_hook: Option<String>,
    pub confirm_hook: Option<String>,
    /// Every verb array the app sent (acks with verbs, redirects), for the validator.
    pub verb_arrays: Vec<Value>,
    /// Messages received while waiting for something else.
    backlog: Vec<Value>,
    pub pings: usize,
    /// How many of `verb_arrays` went through the validator already.
    validated: usize,
}

impl Drop for FakeFeatureServer {
    /// Every verb array the app sent in a test goes through jambonz's validator, whether or not
    /// the test asked (not while a test is already failing: a second panic would abort).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.assert_verbs_valid();
        }
    }
}

/// The upgrade's failure, for auth tests.
pub async fn try_connect(
    url: &str,
    auth: Option<(&str, &str)>,
    subprotocol: Option<&str>,
) -> Result<(), StatusCode> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = subprotocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_str(p).unwrap());
    }
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Basic {token}")).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status()),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

impl FakeFeatureServer {
    pub async fn connect(url: &str, user: &str, pass: &str) -> anyhow::Result<Self> {
        Self::connect_as(url, user, pass, "9fb35c28-9688-4531-943c-e280b04f3adf").await
    }

    pub async fn connect_as(
        url: &str,
        user: &str,
        pass: &str,
        call_sid: &str,
    ) -> anyhow::Result<Self> {
        let mut req = url.into_client_request()?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Basic {token}"))?,
        );
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("ws.jambonz.org"),
        );
        req.headers_mut()
            .insert("User-Agent", HeaderValue::from_static("jambonz"));
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("ws.jambonz.org"),
            "the app must echo the subprotocol"
        );
        Ok(Self {
            ws,
            call_sid: call_sid.to_string(),
            tool_hook: None,
            llm_action_hook: None,
            dial_action_hook: None,
            confirm_hook: None,
            verb_arrays: Vec::new(),
            backlog: Vec::new(),
            pings: 0,
            validated: 0,
        })
    }

    /// Runs the verb arrays received since the last check through jambonz's validator.
    pub fn assert_verbs_valid(&mut self) {
        if self.verb_arrays.len() > self.validated {
            assert_verbs_valid(&self.verb_arrays[self.validated..]);
            self.validated = self.verb_arrays.len();
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, msg: &Value) {
        self.send_text(&msg.to_string()).await;
    }

    /// The next JSON message from the app within `within` (pings are answered and counted).
    async fn next_message(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame.ok()? {
                Message::Text(t) => {
                    assert!(t.len() < 24 * 1024, "frame over 24 KiB: {} bytes", t.len());
                    let v: Value = serde_json::from_str(t.as_str()).expect("app sent invalid JSON");
                    self.note_verbs(&v);
                    return Some(v);
                }
                Message::Ping(_) => self.pings += 1,
                Message::Close(f) => panic!("app closed the socket: {f:?}"),
                _ => {}
            }
        }
    }

    fn note_verbs(&mut self, v: &Value) {
        let verbs = match (v["type"].as_str(), v["command"].as_str()) {
            (Some("ack"), _) => v.get("data").cloned(),
            (Some("command"), Some("redirect")) => v.get("data").cloned(),
            _ => None,
        };
        let Some(Value::Array(verbs)) = verbs else {
            return;
        };
        for verb in &verbs {
            match verb["verb"].as_str() {
                Some("llm") => {
                    self.tool_hook = verb["toolHook"].as_str().map(str::to_string);
                    self.llm_action_hook = verb["actionHook"].as_str().map(str::to_string);
                }
                Some("dial") => {
                    self.dial_action_hook = verb["actionHook"].as_str().map(str::to_string);
                    self.confirm_hook = verb["target"][0]["confirmHook"]
                        .as_str()
                        .map(str::to_string);
                }
                _ => {}
            }
        }
        self.verb_arrays.push(Value::Array(verbs));
    }

    /// Waits for a message matching `pred`, keeping the others for later.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        loop {
            match self.next_message(Duration::from_secs(5)).await {
                Some(v) if pred(&v) => return v,
                Some(v) => self.backlog.push(v),
                None => panic!(
                    "timed out waiting for {what}; got meanwhile: {:#?}",
                    self.backlog
                ),
            }
        }
    }

    /// Asserts nothing more arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(v) = self.next_message(within).await {
            panic!("expected nothing, got {v}");
        }
    }

    /// Sends a message that wants an ack and returns the ack (the protocol gives 5 s).
    pub async fn request(&mut self, mut msg: Value) -> Value {
        let id = msgid();
        msg["msgid"] = json!(id);
        self.send(&msg).await;
        self.expect("ack", |v| v["type"] == "ack" && v["msgid"] == json!(id))
            .await
    }

    /// `session:new` from the fixture, for this call.
    pub async fn session_new(&mut self) -> Value {
        let msg = self.session_message("session:new");
        self.request(msg).await
    }

    pub fn session_message(&self, kind: &str) -> Value {
        let mut msg = fixture("session:new", None);
        msg["type"] = json!(kind);
        msg["call_sid"] = json!(self.call_sid);
        msg["data"]["call_sid"] = json!(self.call_sid);
        msg
    }

    /// An `llm:tool-call` to the tool hook the app configured.
    pub async fn tool_call(&mut self, tool_call_id: &str, name: &str, args: Value) {
        let mut msg = fixture("llm:tool-call", None);
        msg["msgid"] = json!(msgid());
        msg["call_sid"] = json!(self.call_sid);
        msg["hook"] = json!(self.tool_hook.clone().expect("no toolHook configured"));
        msg["data"] = json!({ "tool_call_id": tool_call_id, "name": name, "args": args });
        self.send(&msg).await;
    }

    /// Starts the call and makes one collect_info call for Jeremy Greven's cat Tommie with this
    /// concern; returns the tool's output.
    pub async fn collect_info_call(&mut self, tool_call_id: &str, concern: &str) -> Value {
        self.session_new().await;
        self.tool_call(
            tool_call_id,
            "collectNameNumberConcernPetName",
            json!({
                "callback_number": "(416) 818-9171",
                "first_name": "Jeremy",
                "last_name": "Greven",
                "pet_name": "Tommie",
                "species": "Cat",
                "concern_description": concern,
            }),
        )
        .await;
        self.tool_output(tool_call_id).await
    }

    /// Waits for the `llm:tool-output` of an invocation; returns its `data`.
    pub async fn tool_output(&mut self, tool_call_id: &str) -> Value {
        let id = tool_call_id.to_string();
        let msg = self
            .expect("llm:tool-output", |v| {
                v["type"] == "command"
                    && v["command"] == "llm:tool-output"
                    && v["tool_call_id"] == json!(id)
            })
            .await;
        assert_eq!(msg["data"]["type"], "client_tool_result");
        assert_eq!(msg["data"]["invocation_id"], json!(tool_call_id));
        msg["data"].clone()
    }

    /// Waits for a `redirect` command; returns its verbs.
    pub async fn redirect(&mut self) -> Vec<Value> {
        let msg = self
            .expect("redirect", |v| {
                v["type"] == "command" && v["command"] == "redirect"
            })
            .await;
        msg["data"].as_array().expect("redirect verbs").clone()
    }

    /// The dial verb's actionHook with a status, from the fixture; returns the ack's verbs.
    pub async fn dial_result(&mut self, status: &str, sip: i64) -> Vec<Value> {
        let mut msg = fixture("verb:hook", Some("/dialAction"));
        msg["call_sid"] = json!(self.call_sid);
        msg["data"]["call_sid"] = json!(self.call_sid);
        msg["hook"] = json!(self.dial_action_hook.clone().expect("no dial actionHook"));
        msg["data"]["dial_call_status"] = json!(status);
        msg["data"]["dial_sip_status"] = json!(sip);
        let ack = self.request(msg).await;
        ack["data"].as_array().cloned().unwrap_or_default()
    }

    /// The llm verb's actionHook (sent by Jambonz when a redirect ends the llm).
    pub async fn llm_complete(&mut self, reason: &str) -> Value {
        let mut msg = fixture("verb:hook", Some("/final"));
        msg["call_sid"] = json!(self.call_sid);
        msg["data"]["call_sid"] = json!(self.call_sid);
        msg["hook"] = json!(self.llm_action_hook.clone().expect("no llm actionHook"));
        msg["data"]["completion_reason"] = json!(reason);
        self.request(msg).await
    }

    /// A `call:status` for this call's own leg.
    pub async fn call_status(&mut self, status: &str, duration: Option<i64>) {
        let mut msg = fixture("call:status", None);
        msg["msgid"] = json!(msgid());
        msg["call_sid"] = json!(self.call_sid);
        msg["data"]["call_sid"] = json!(self.call_sid);
        msg["data"]["call_status"] = json!(status);
        if let Some(d) = duration {
            msg["data"]["duration"] = json!(d);
        }
        self.send(&msg).await;
    }

    /// Waits for the app to close the socket; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("no close within 5 s")?;
            match frame {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Drops the TCP connection without a close handshake (what Jambonz sees as 1006).
    pub async fn drop_connection(mut self) -> Vec<Value> {
        self.assert_verbs_valid();
        let verbs = self.verb_arrays.clone();
        // Dropping the stream resets the TCP connection without a close frame.
        drop(self);
        verbs
    }

    /// Closes like Jambonz does when the call ends (1000).
    pub async fn close(mut self) -> Vec<Value> {
        let _ = self.ws.close(None).await;
        self.assert_verbs_valid();
        self.verb_arrays.clone()
    }
}

/// Runs every verb array through jambonz's own validator (`@jambonz/verb-specifications`, the
/// code the feature-server runs on every ack and redirect).
pub fn assert_verbs_valid(arrays: &[Value]) {
    let script = std::env::var("LIFELINE_VERB_VALIDATOR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/verb-validator/validate.js")
        });
    let installed = script
        .parent()
        .map(|d| d.join("node_modules/@jambonz/verb-specifications").exists())
        .unwrap_or(false);
    if !installed {
        if std::env::var("LIFELINE_REQUIRE_VERB_VALIDATOR").is_ok_and(|v| v == "1") {
            panic!(
                "the jambonz verb validator is required but not installed ({})",
                script.display()
            );
        }
        eprintln!(
            "WARNING: jambonz verb validator not installed; {} verb arrays NOT validated \
             (run ./scripts/test.sh)",
            arrays.len()
        );
        return;
    }
    let mut child = std::process::Command::new("node")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run node");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(Value::Array(arrays.to_vec()).to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().expect("validator output");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "jambonz rejected verbs lifeline emitted: {report}"
    );
    assert!(report.contains("\"ok\":true"), "validator said: {report}");
}
