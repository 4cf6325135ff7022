//! Test harness: a fresh database per test (SQLite file or PostgreSQL database), the app served
//! on port 0, and a fake Jambonz feature-server that follows the protocol's rules and the real
//! feature-server's behaviour (v0.9.8, `jambonz/jambonz-feature-server`, read with the search
//! tool; file and function cited where the fake does what it does).
//!
//! Every test that starts an app gets the invariants of `invariants.rs` checked when its database
//! is dropped.
#![allow(dead_code)]

pub mod db_lock;
pub mod invariants;
pub mod process;
pub mod relay;

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

/// Waits until `journal` was replayed and writes go to the database again (a guard against a
/// hang, not a measure).
pub async fn journal_drained(journal: &lifeline::store::resilient::ResilientStore) {
    let mut changed = journal.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        while journal.status().journaling {
            let _ = changed.changed().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the journal was not replayed: {:?}", journal.status()));
}

/// A transfer request as the model makes it: Jeremy Greven's dog Max, critical.
pub fn transfer_args() -> Value {
    json!({
        "urgency_reason": "CRITICAL EMERGENCY: dog was hit by car",
        "first_name": "Jeremy",
        "last_name": "Greven",
        "callback_number": "4168189171",
        "pet_name": "Max",
        "species": "Dog",
    })
}

/// A message for a callback about Jeremy Greven's cat Tommie, with this concern.
pub fn message_args(concern: &str) -> Value {
    json!({
        "callback_number": "(416) 818-9171",
        "first_name": "Jeremy",
        "last_name": "Greven",
        "pet_name": "Tommie",
        "species": "Cat",
        "concern_description": concern,
    })
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
    /// Check `invariants` when the test is done with the database.
    invariants: bool,
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
                    invariants: false,
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
                    invariants: false,
                }
            }
        }
    }

    /// Checks the end-of-test invariants (`invariants.rs`) when this database is dropped: for
    /// every test that runs the app against it (black-box tests), not for store tests that
    /// leave rows half-done on purpose.
    pub fn watch_invariants(&mut self) {
        self.invariants = true;
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
        // Not while the test is failing already: a second panic would abort.
        let broken = if self.invariants && !std::thread::panicking() {
            let url = self.url.clone();
            // Drop runs inside the test's runtime, whose workers keep running the app's tasks
            // (the last outcomes may still be being written): check from a thread of its own.
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(invariants::assert_hold(&url));
            })
            .join()
            .err()
        } else {
            None
        };
        self.drop_pg_database();
        if let Some(panic) = broken {
            std::panic::resume_unwind(panic);
        }
    }
}

impl TestDb {
    fn drop_pg_database(&mut self) {
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

/// What the process would get from its environment, for a test database.
pub fn process_settings(database_url: &str) -> ProcessSettings {
    ProcessSettings {
        database_url: database_url.into(),
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        config_path: None,
        database_max_connections: 16,
        database_worker_connections: 4,
    }
}

/// Waits, when dropped, until the journal it holds was replayed. A write that missed its budget
/// under the load of a whole test run goes to the journal; the end-of-test invariants must see
/// it in the database. (Only on a multi-threaded runtime, which the black-box tests use.)
pub struct DrainJournal(Arc<lifeline::store::resilient::ResilientStore>);

impl Drop for DrainJournal {
    fn drop(&mut self) {
        if !self.0.status().journaling || std::thread::panicking() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current()
            && handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
        {
            let journal = self.0.clone();
            tokio::task::block_in_place(|| handle.block_on(journal_drained(&journal)));
        }
    }
}

/// A running app on a fresh database.
pub struct TestApp {
    /// First, so it is dropped first: the test's journaled writes reach the database before
    /// the database's invariants are checked (when `db` is dropped).
    _drain: DrainJournal,
    pub server: Server,
    pub store: Arc<dyn Store>,
    pub db: TestDb,
    /// This instance's own journal directory (two instances on one database each have one).
    pub journal_dir: tempfile::TempDir,
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
        Self::start_on(db, &config_toml(limits)).await
    }

    /// Starts on an existing database (another instance's, say) with a whole configuration.
    pub async fn start_on(mut db: TestDb, toml: &str) -> Self {
        db.watch_invariants();
        let journal_dir = tempfile::tempdir().expect("journal dir");
        let journal = journal_dir.path().to_string_lossy().into_owned();
        let config = Config::build(
            &process_settings(&db.url),
            Some((toml, "test.toml".as_ref())),
            &|key| (key == "LIFELINE_JOURNAL_DIR").then(|| journal.clone()),
        )
        .expect("test config");
        let server = Server::start(config).await.expect("start server");
        let store = server.state.store.clone();
        Self {
            _drain: DrainJournal(server.state.journal.clone()),
            server,
            store,
            db,
            journal_dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/jambonz", self.server.addr)
    }

    /// Waits until the journal was replayed and writes go to the database again.
    pub async fn journal_drained(&self) {
        journal_drained(&self.server.state.journal).await;
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

/// A Jambonz feature-server client that follows the protocol and the real feature-server's
/// behaviour: Basic auth, the `ws.jambonz.org` subprotocol, snake-cased data, acks awaited at most
/// 5 s, hooks as the app configured them, no ack ever sent (the feature-server acks nothing;
/// `llm:tool-call` is fire-and-forget and never re-sent, `lib/utils/ws-requestor.js`
/// `MTYPE_WANTS_ACK`, ~lines 15-23), reconnects with `session:reconnect`, dial actionHook after
/// the caller hangs up, and complete Close handshakes.
pub struct FakeFeatureServer {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Where, and as whom, it connects (again, on a reconnect).
    url: String,
    user: String,
    pass: String,
    pub call_sid: String,
    /// Hooks the app configured in its verbs, as Jambonz would echo them.
    pub tool_hook: Option<String>,
    pub llm_action_hook: Option<String>,
    pub dial_action_hook: Option<String>,
    pub confirm_hook: Option<String>,
    /// The acceptance gate's hooks, from the confirm application (`gather` actionHook, `config`
    /// amd actionHook).
    pub gate_hook: Option<String>,
    pub amd_hook: Option<String>,
    /// Every verb array the app sent (acks with verbs, redirects), for the validator.
    pub verb_arrays: Vec<Value>,
    /// Messages received while waiting for something else.
    backlog: Vec<Value>,
    pub pings: usize,
    /// How many of `verb_arrays` went through the validator already.
    validated: usize,
    /// The session:new data, which every session:reconnect repeats (`ws-requestor.js`
    /// `request()`: `if (type === 'session:reconnect') payload = this._sessionData`).
    session_data: Option<Value>,
    /// A session:new still waiting for its ack, and when it was sent (its 5 s timer runs from
    /// there, even across a reconnect).
    unacked_session_new: Option<(String, tokio::time::Instant)>,
    /// The dial the app asked for, while it runs: its last provisional status and SIP code.
    dial: Option<(String, i64)>,
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

/// Opens a socket as the feature-server does (`ws-requestor.js` `_connect`).
async fn open_socket(
    url: &str,
    user: &str,
    pass: &str,
) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
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
    Ok(ws)
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
        let ws = open_socket(url, user, pass).await?;
        Ok(Self {
            ws,
            url: url.to_string(),
            user: user.to_string(),
            pass: pass.to_string(),
            call_sid: call_sid.to_string(),
            tool_hook: None,
            llm_action_hook: None,
            dial_action_hook: None,
            confirm_hook: None,
            gate_hook: None,
            amd_hook: None,
            verb_arrays: Vec::new(),
            backlog: Vec::new(),
            pings: 0,
            validated: 0,
            session_data: None,
            unacked_session_new: None,
            dial: None,
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
        if msg["type"] == "session:new" {
            self.session_data = Some(msg["data"].clone());
        }
        self.send_text(&msg.to_string()).await;
    }

    /// The next JSON message from the app before `deadline` (pings are answered and counted).
    async fn next_message_until(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame.ok()? {
                Message::Text(t) => {
                    // The feature-server's `ws` client refuses bigger frames
                    // (`maxPayload: JAMBONES_WS_MAX_PAYLOAD || 24 * 1024`, `_connect`).
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

    async fn next_message(&mut self, within: Duration) -> Option<Value> {
        self.next_message_until(tokio::time::Instant::now() + within)
            .await
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
                    // A new dial starts (lib/tasks/dial.js: results start empty, the B leg's
                    // first status is `trying`).
                    self.dial = Some(("trying".to_string(), 100));
                }
                Some("gather") => {
                    self.gate_hook = verb["actionHook"].as_str().map(str::to_string);
                }
                Some("config") => {
                    if let Some(hook) = verb["amd"]["actionHook"].as_str() {
                        self.amd_hook = Some(hook.to_string());
                    }
                }
                _ => {}
            }
        }
        self.verb_arrays.push(Value::Array(verbs));
    }

    /// Waits for a message matching `pred`, keeping the others for later.
    pub async fn expect(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.expect_until(
            tokio::time::Instant::now() + Duration::from_secs(5),
            what,
            pred,
        )
        .await
    }

    async fn expect_until(
        &mut self,
        deadline: tokio::time::Instant,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.try_expect_until(deadline, pred).await {
            Some(v) => v,
            None => panic!(
                "timed out waiting for {what}; got meanwhile: {:#?}",
                self.backlog
            ),
        }
    }

    /// A message matching `pred` before `deadline`, keeping the others for later.
    async fn try_expect_until(
        &mut self,
        deadline: tokio::time::Instant,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Some(self.backlog.remove(i));
        }
        loop {
            match self.next_message_until(deadline).await {
                Some(v) if pred(&v) => return Some(v),
                Some(v) => self.backlog.push(v),
                None => return None,
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

    /// `session:new` whose ack is not waited for here (it may be lost in flight); a
    /// [`FakeFeatureServer::reconnect`] then carries it, as the feature-server does.
    pub async fn session_new_unacked(&mut self) {
        let mut msg = self.session_message("session:new");
        let id = msgid();
        msg["msgid"] = json!(id);
        self.send(&msg).await;
        self.unacked_session_new = Some((id, tokio::time::Instant::now()));
    }

    pub fn session_message(&self, kind: &str) -> Value {
        let mut msg = fixture("session:new", None);
        msg["type"] = json!(kind);
        msg["call_sid"] = json!(self.call_sid);
        msg["data"]["call_sid"] = json!(self.call_sid);
        msg
    }

    /// The socket dropped (not closed with 1000): the feature-server opens a new one to the same
    /// URL and sends `session:reconnect` with the session:new data (`ws-requestor.js`
    /// `_onSocketClosed`, `_connect`: `if (this.connections > 1) this.request('session:reconnect')`).
    /// Returns the reconnect's ack.
    ///
    /// If the session:new was still waiting for its ack, the feature-server moves that pending
    /// request onto the reconnect (`request()`, "special case: reconnecting before we received
    /// ack to session:new", ~lines 244-252): the reconnect's ack resolves the session:new, within
    /// the session:new's own 5 s, and `lib/middleware.js` `invokeWebCallback` (~461) then runs
    /// `normalizeJambones` on its data, rejecting the call with SIP 480 unless it is a non-empty
    /// verb array. On an ordinary reconnect the ack's data is ignored (the reconnect's promise
    /// only releases the queued messages).
    pub async fn reconnect(&mut self) -> Value {
        let ws = open_socket(&self.url, &self.user, &self.pass)
            .await
            .expect("reconnect");
        // The old socket is gone for the feature-server (`_onClose` dropped it), and what it
        // had not read with it.
        drop(std::mem::replace(&mut self.ws, ws));
        self.backlog.clear();
        let id = msgid();
        let msg = json!({
            "type": "session:reconnect",
            "msgid": id,
            "call_sid": self.call_sid,
            "data": self.session_data.clone().expect("session:new was sent before"),
        });
        self.send_text(&msg.to_string()).await;
        match self.unacked_session_new.take() {
            Some((original, sent_at)) => {
                let deadline = sent_at + Duration::from_secs(5);
                let ack = self
                    .try_expect_until(deadline, |v| v["type"] == "ack" && v["msgid"] == json!(id))
                    .await
                    .unwrap_or_else(|| {
                        panic!(
                            "timeout from far end for msgid {original}: the call is rejected with \
                         SIP 480"
                        )
                    });
                let verbs = ack["data"].as_array().unwrap_or_else(|| {
                    panic!(
                        "the call is rejected with SIP 480: the session:new's answer (the \
                         reconnect's ack) must be an array of verbs, got {ack}"
                    )
                });
                assert!(
                    !verbs.is_empty(),
                    "the call is rejected with SIP 480: no application provided"
                );
                ack
            }
            None => {
                self.expect("the reconnect's ack", |v| {
                    v["type"] == "ack" && v["msgid"] == json!(id)
                })
                .await
            }
        }
    }

    /// [`FakeFeatureServer::reconnect`] to another address (the instance a load balancer picks
    /// after this one went away).
    pub async fn reconnect_to(&mut self, url: &str) -> Value {
        self.url = url.to_string();
        self.reconnect().await
    }

    /// The next message from the app, in the order it came (what arrived while waiting for
    /// something else first).
    pub async fn next(&mut self) -> Value {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        self.next_message(Duration::from_secs(5))
            .await
            .expect("no message from the app within 5 s")
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
            message_args(concern),
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
        // This dial is over; the ack may start another.
        self.dial = None;
        let ack = self.request(msg).await;
        ack["data"].as_array().cloned().unwrap_or_default()
    }

    /// The on-call person picks up. As the feature-server does (`lib/utils/place-outdial.js`
    /// `SingleDialer.exec`, ~lines 205-245: `callStatusChange` in-progress/200, then
    /// `_executeApp(confirmHook)`, ~lines 275-310): the B leg's `call:status` in-progress on
    /// this socket, then `dial:confirm` to the target's confirmHook with the B leg's call-info;
    /// the ack's verbs are the confirm application (only verbs with the `StableCall` or
    /// `Endpoint` precondition are allowed: say, gather, config, hangup…). Returns them.
    pub async fn dial_confirm(&mut self) -> Vec<Value> {
        self.dial_progress("in-progress", 200).await;
        let mut msg = fixture("verb:hook", Some("/dialAction"));
        msg["type"] = json!("dial:confirm");
        msg["call_sid"] = json!(self.call_sid);
        msg["hook"] = json!(
            self.confirm_hook
                .clone()
                .expect("confirmHook on the target")
        );
        msg["data"]["call_sid"] = json!(format!("{}-b", self.call_sid));
        msg["data"]["parent_call_sid"] = json!(self.call_sid);
        msg["data"]["direction"] = json!("outbound");
        msg["data"]["call_status"] = json!("in-progress");
        let ack = self.request(msg).await;
        ack["data"].as_array().cloned().unwrap_or_default()
    }

    /// The confirm application's `gather` ends (`lib/tasks/gather.js` `_resolve`:
    /// `performAction({digits, reason: 'dtmfDetected'})` for a key, `{reason: 'timeout'}`
    /// otherwise): a `verb:hook` to its actionHook with the B leg's call-info. The ack's verbs
    /// replace the confirm application (`Task.performAction` → `replaceApplication`).
    pub async fn dial_gate(&mut self, digits: Option<&str>) -> Vec<Value> {
        let hook = self.gate_hook.clone().expect("no gate gather actionHook");
        let data = match digits {
            Some(d) => json!({ "reason": "dtmfDetected", "digits": d }),
            None => json!({ "reason": "timeout" }),
        };
        self.b_leg_hook(&hook, data).await
    }

    /// An answering-machine detection event of the confirm application's `config` amd
    /// (`lib/tasks/config.js` `_onAmdEvent` → `performHook(cs, actionHook, evt)`; verbs in the
    /// ack redirect the confirm application).
    pub async fn dial_amd(&mut self, kind: &str) -> Vec<Value> {
        let hook = self.amd_hook.clone().expect("no amd actionHook");
        self.b_leg_hook(&hook, json!({ "type": kind, "reason": "long greeting" }))
            .await
    }

    async fn b_leg_hook(&mut self, hook: &str, extra: Value) -> Vec<Value> {
        let mut msg = fixture("verb:hook", Some("/dialAction"));
        msg["call_sid"] = json!(self.call_sid);
        msg["hook"] = json!(hook);
        msg["data"]["call_sid"] = json!(format!("{}-b", self.call_sid));
        msg["data"]["parent_call_sid"] = json!(self.call_sid);
        msg["data"]["direction"] = json!("outbound");
        msg["data"]["call_status"] = json!("in-progress");
        for (k, v) in extra.as_object().expect("object").clone() {
            msg["data"][k] = v;
        }
        let ack = self.request(msg).await;
        ack["data"].as_array().cloned().unwrap_or_default()
    }

    /// The confirm application ended with the B leg hung up (a `hangup` verb ran): the
    /// feature-server's decline path. `place-outdial.js` `_executeApp` emits `decline` (the
    /// dialog is no longer connected); `dial.js` `on('decline')` (~lines 560-570) kills the
    /// dial, whose actionHook reports `this.results` as last set by `callStatusChange`:
    /// in-progress/200 (a hangup from our side emits no `destroy`, so no `completed`).
    /// Returns the ack's verbs (what the caller gets next).
    pub async fn dial_declined(&mut self) -> Vec<Value> {
        self.dial_result("in-progress", 200).await
    }

    /// The on-call leg's progress while the dial rings: a `call:status` of the B leg on the
    /// caller's socket (`direction: outbound`, `parent_call_sid`), as `lib/tasks/dial.js`
    /// reports it; the dial's result will carry the last such status.
    pub async fn dial_progress(&mut self, status: &str, sip: i64) {
        assert!(self.dial.is_some(), "no dial is running");
        let mut msg = fixture("call:status", None);
        msg["msgid"] = json!(msgid());
        msg["call_sid"] = json!(self.call_sid);
        msg["data"]["call_sid"] = json!(format!("b-leg-of-{}", self.call_sid));
        msg["data"]["direction"] = json!("outbound");
        msg["data"]["parent_call_sid"] = json!(self.call_sid);
        msg["data"]["call_status"] = json!(status);
        msg["data"]["sip_status"] = json!(sip);
        self.send(&msg).await;
        self.dial = Some((status.to_string(), sip));
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
        if status == "completed" {
            msg["data"]["call_termination_by"] = json!("caller");
        }
        self.send(&msg).await;
    }

    /// The caller hangs up, and the feature-server does what it does then
    /// (`lib/session/call-session.js`: `_callerHungup` reports `call:status` completed with
    /// `call_termination_by: caller`, then `_callReleased` kills the current task):
    /// - if a dial is running, it is killed and `lib/tasks/dial.js` `exec` still sends its
    ///   actionHook (`performAction` after `awaitTaskDone`), with the caller's completed call-info
    ///   and the dial's last provisional status; the verbs of that ack are never run (the call is
    ///   gone);
    /// - the session ends: `_clearResources` closes the socket with 1000, completing the Close
    ///   handshake.
    pub async fn caller_hangs_up(mut self) -> Vec<Value> {
        self.call_status("completed", Some(63)).await;
        if let Some((status, sip)) = self.dial.take() {
            let mut msg = fixture("verb:hook", Some("/dialAction"));
            msg["call_sid"] = json!(self.call_sid);
            msg["data"]["call_sid"] = json!(self.call_sid);
            msg["hook"] = json!(self.dial_action_hook.clone().expect("no dial actionHook"));
            msg["data"]["call_status"] = json!("completed");
            msg["data"]["call_termination_by"] = json!("caller");
            msg["data"]["sip_status"] = json!(200);
            msg["data"]["dial_call_status"] = json!(status);
            msg["data"]["dial_sip_status"] = json!(sip);
            self.request(msg).await;
        }
        self.close().await
    }

    /// Waits for the app to close the socket; answers its Close (as the feature-server's `ws`
    /// client does) and returns the code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("no close within 30 s")?;
            match frame {
                Ok(Message::Close(f)) => {
                    let code = f.map(|f| u16::from(f.code));
                    // Reading on writes our queued reply, then the stream ends.
                    while let Ok(Some(Ok(_))) =
                        tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await
                    {
                    }
                    return code;
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Drops the TCP connection without a close handshake (what Jambonz sees as 1006).
    pub async fn drop_connection(mut self) -> Vec<Value> {
        self.assert_verbs_valid();
        let verbs = self.verb_arrays.clone();
        // Dropping the stream closes the TCP connection without a close frame.
        drop(self);
        verbs
    }

    /// Closes with 1000 and waits for the app's side of the handshake; returns the code the app
    /// answered with (`None`: the connection ended without one, which the feature-server's `ws`
    /// client reports as 1006).
    pub async fn close_handshake(&mut self) -> Option<u16> {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => {}
                _ => return None,
            }
        }
    }

    /// Closes like Jambonz does when the call ends (1000, `_clearResources` →
    /// `requestor.close()`), and checks the app completed the handshake with the same code.
    pub async fn close(mut self) -> Vec<Value> {
        let answered = self.close_handshake().await;
        assert_eq!(
            answered,
            Some(1000),
            "the app must answer the feature-server's Close with its 1000 (else it sees 1006)"
        );
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
