//! Issue 12: calls go on while the database is down or slow. A fault-injecting TCP relay sits
//! between lifeline and PostgreSQL (it black-holes, cuts or delays, as crates.io's ChaosProxy
//! does); the call path falls back on the local journal and the journal is replayed when the
//! database answers again. After each test the end-of-test invariants are checked on the
//! database itself (nothing left pending or dialing, every failed transfer with its critical
//! callback request).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::db_lock::DbLock;
use common::process::LifelineProcess;
use common::relay::{Fault, Relay, target_of, through};
use common::{
    Engine, FakeFeatureServer, RIVERSIDE_PASS, RIVERSIDE_USER, TestApp, TestDb, message_args,
    transfer_args,
};
use lifeline::Server;
use lifeline::config::Config;
use lifeline::store::resilient::{JournalSettings, ResilientStore};
use lifeline::store::{CallbackFilter, Store};
use lifeline::tools::Platform;
use serde_json::Value;

on_both_engines!(replaying_a_journal_twice_changes_nothing);

/// lifeline on a PostgreSQL test database reached through a relay.
struct BehindRelay {
    server: Server,
    relay: Relay,
    /// The database itself, not through the relay (for checking what was written).
    direct: Arc<dyn Store>,
    _journal: tempfile::TempDir,
    db: TestDb,
}

/// `url` with its host and port replaced by `addr`.
impl BehindRelay {
    async fn start(sections: &str) -> Self {
        let mut db = TestDb::new(Engine::Postgres).await;
        db.watch_invariants();
        let direct = db.store().await;
        let relay = Relay::start(target_of(&db.url).await).await;
        let journal = tempfile::tempdir().unwrap();
        let dir = journal.path().to_string_lossy().into_owned();
        let toml = format!(
            "{}\n[journal]\nprobe_interval_ms = 100\n",
            common::config_toml(sections)
        );
        let config = Config::build(
            &common::process_settings(&through(&db.url, relay.addr())),
            Some((&toml, "test.toml".as_ref())),
            &|key| (key == "LIFELINE_JOURNAL_DIR").then(|| dir.clone()),
        )
        .expect("test config");
        let server = Server::start(config).await.expect("start server");
        Self {
            server,
            relay,
            direct,
            _journal: journal,
            db,
        }
    }

    /// The feature-server of a new call (each call its own call_sid).
    async fn feature_server(&self) -> FakeFeatureServer {
        new_call(&format!("ws://{}/jambonz", self.server.addr)).await
    }

    async fn drained(&self) {
        common::journal_drained(&self.server.state.journal).await;
    }

    async fn readyz(&self) -> Value {
        reqwest::get(format!("http://{}/readyz", self.server.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

async fn new_call(ws_url: &str) -> FakeFeatureServer {
    FakeFeatureServer::connect_as(
        ws_url,
        RIVERSIDE_USER,
        RIVERSIDE_PASS,
        &uuid::Uuid::new_v4().to_string(),
    )
    .await
    .expect("connect")
}

/// The answer a tool call got: a model-facing text, or the error lifeline reported.
fn recorded(out: &Value) -> &str {
    out["result"].as_str().unwrap_or_default()
}

fn verb_names(verbs: &[Value]) -> Vec<&str> {
    verbs.iter().filter_map(|v| v["verb"].as_str()).collect()
}

/// A message, and the row and the callback request it makes, for each call.
async fn assert_one_message_each(direct: &dyn Store, call_sids: &[String]) {
    for sid in call_sids {
        let call = direct
            .find_call(Platform::Jambonz, sid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("call {sid} is known after the replay"));
        let logs = direct
            .tool_call_logs_for_call(Platform::Jambonz, sid)
            .await
            .unwrap();
        assert_eq!(logs.len(), 1, "{sid}: {logs:?}");
        assert_eq!(logs[0].status, "success");
        assert_eq!(logs[0].call_id, Some(call.id));
        let callbacks = direct
            .callback_requests(&CallbackFilter {
                call_id: Some(call.id),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(callbacks.len(), 1, "{sid}: {callbacks:?}");
        assert_eq!(callbacks[0].tool_call_log_id, Some(logs[0].id));
    }
}

/// The database black-holed mid-call (connections stay open and nothing comes back, the worst
/// kind of outage: every wait runs to its end). Calls already running record messages; new
/// calls are acked with their application, record messages, and one transfers (it dials);
/// `/readyz` says degraded; when the database is back the journal is replayed and every
/// acknowledged record is there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_under_load_calls_go_on_and_nothing_is_lost() {
    let app = BehindRelay::start("").await;
    let mut before = Vec::new();
    for _ in 0..4 {
        let mut fs = app.feature_server().await;
        fs.session_new().await;
        before.push(fs);
    }
    app.relay.set(Fault::BlackHole);

    for (i, fs) in before.iter_mut().enumerate() {
        let id = format!("msg-{i}");
        fs.tool_call(
            &id,
            "collectNameNumberConcernPetName",
            message_args("limping"),
        )
        .await;
        let out = fs.tool_output(&id).await;
        assert!(recorded(&out).starts_with("Recorded"), "{out}");
    }
    // Calls that start during the outage: acked with the clinic's application at once.
    let mut during = Vec::new();
    for i in 0..2 {
        let mut fs = app.feature_server().await;
        let ack = fs.session_new().await;
        let verbs = ack["data"].as_array().expect("the application");
        assert!(verb_names(verbs).contains(&"llm"), "{ack}");
        let id = format!("new-{i}");
        fs.tool_call(
            &id,
            "collectNameNumberConcernPetName",
            message_args("vomiting"),
        )
        .await;
        let out = fs.tool_output(&id).await;
        assert!(recorded(&out).starts_with("Recorded"), "{out}");
        during.push(fs);
    }
    // A transfer dials.
    let mut caller = app.feature_server().await;
    caller.session_new().await;
    caller.tool_call("xfer", "transfer", transfer_args()).await;
    let out = caller.tool_output("xfer").await;
    assert!(out["result"].as_str().is_some(), "{out}");
    assert!(!recorded(&out).contains("\"error\""), "{out}");
    assert_eq!(verb_names(&caller.redirect().await), ["say", "dial"]);

    let status = app.server.state.journal.status();
    assert!(status.journaling && status.depth > 0, "{status:?}");
    let ready = app.readyz().await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(
        ready["reason"]
            .as_str()
            .unwrap()
            .starts_with("database unreachable, "),
        "{ready}"
    );

    app.relay.set(Fault::None);
    app.relay.reset();
    app.drained().await;
    assert_eq!(app.readyz().await["status"], "ready");

    let sids: Vec<String> = before
        .iter()
        .chain(during.iter())
        .map(|fs| fs.call_sid.clone())
        .collect();
    assert_one_message_each(app.direct.as_ref(), &sids).await;
    let call = app
        .direct
        .find_call(Platform::Jambonz, &caller.call_sid)
        .await
        .unwrap()
        .expect("the transferring call");
    let attempts = app.direct.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0].status, "dialing");
    // The on-call person picks up: the attempt the journal started ends in the database.
    caller.llm_complete("normal conversation end").await;
    caller.dial_result("completed", 200).await;
    let attempts = app.direct.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts[0].status, "succeeded");
    for mut fs in before.into_iter().chain(during).chain([caller]) {
        fs.call_status("completed", Some(30)).await;
        fs.close().await;
    }
    let status = app.server.state.journal.status();
    assert_eq!(status.set_aside, 0, "{status:?}");
    drop(app.db);
}

/// Every database round trip takes 3 s more than usual: tool calls are still answered with
/// their real result (lifeline's own timeout answer would say `timeout`), because past the
/// write budget the journal records them; the replay catches up once the database is fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_database_still_gets_answers_within_the_tool_deadline() {
    let app = BehindRelay::start("").await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut fs = app.feature_server().await;
        fs.session_new().await;
        calls.push(fs);
    }
    app.relay.set(Fault::Latency(Duration::from_secs(3)));
    for (i, fs) in calls.iter_mut().enumerate() {
        let id = format!("slow-{i}");
        fs.tool_call(
            &id,
            "collectNameNumberConcernPetName",
            message_args("coughing"),
        )
        .await;
        let out = fs.tool_output(&id).await;
        assert!(recorded(&out).starts_with("Recorded"), "{out}");
    }
    app.relay.set(Fault::None);
    app.relay.reset();
    app.drained().await;
    let sids: Vec<String> = calls.iter().map(|fs| fs.call_sid.clone()).collect();
    assert_one_message_each(app.direct.as_ref(), &sids).await;
    for mut fs in calls {
        fs.call_status("completed", Some(30)).await;
        fs.close().await;
    }
}

/// A call that began while the database was unreachable is known afterwards: it transfers,
/// and the attempt is recorded against the call the journal created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_begun_during_the_outage_transfers_after_recovery() {
    let app = BehindRelay::start("").await;
    app.relay.set(Fault::Cut);
    let mut fs = app.feature_server().await;
    let ack = fs.session_new().await;
    assert!(
        ack["data"].as_array().is_some_and(|v| !v.is_empty()),
        "{ack}"
    );
    app.relay.set(Fault::None);
    app.drained().await;

    fs.tool_call("xfer-after", "transfer", transfer_args())
        .await;
    let out = fs.tool_output("xfer-after").await;
    assert!(!recorded(&out).contains("\"error\""), "{out}");
    assert_eq!(verb_names(&fs.redirect().await), ["say", "dial"]);
    let call = app
        .direct
        .find_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap()
        .expect("the call begun during the outage");
    let attempts = app.direct.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    fs.llm_complete("normal conversation end").await;
    fs.dial_result("completed", 200).await;
    fs.call_status("completed", Some(40)).await;
    fs.close().await;
}

/// A transfer was ringing when the database went away; nobody answers, on either number. The
/// caller is told a team member will call back, the critical callback request is journaled and
/// the on-call team is alerted at once, without the database; after the replay the request is
/// in the database, with both failed attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ringing_transfer_failing_during_the_outage_gets_its_critical_callback() {
    let hook = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let app = BehindRelay::start(&format!(
        "[alerts]\nwebhook_url = \"{}/hook\"\n",
        hook.uri()
    ))
    .await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.tool_call("xfer", "transfer", transfer_args()).await;
    fs.tool_output("xfer").await;
    assert_eq!(verb_names(&fs.redirect().await), ["say", "dial"]);
    fs.llm_complete("normal conversation end").await;

    app.relay.set(Fault::BlackHole);
    let next = fs.dial_result("no-answer", 487).await;
    assert_eq!(
        verb_names(&next),
        ["say", "dial"],
        "the secondary is dialled"
    );
    let last = fs.dial_result("no-answer", 487).await;
    assert!(!verb_names(&last).contains(&"dial"), "{last:?}");

    // Alerted without the database (the worker cannot see the request yet).
    let alerted = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let requests = hook.received_requests().await.unwrap_or_default();
            let texts: Vec<String> = requests
                .iter()
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .collect();
            if let Some(t) = texts.iter().find(|t| t.contains("CRITICAL")) {
                return t.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a direct critical alert");
    assert!(alerted.contains("sent directly"), "{alerted}");
    assert!(alerted.contains("4168189171"), "{alerted}");

    app.relay.set(Fault::None);
    app.relay.reset();
    app.drained().await;
    let call = app
        .direct
        .find_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap()
        .unwrap();
    let attempts = app.direct.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts.iter().all(|a| a.status == "failed"),
        "{attempts:?}"
    );
    let callbacks = app
        .direct
        .callback_requests(&CallbackFilter {
            call_id: Some(call.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!(callbacks[0].urgency_level, "critical");
    assert_eq!(callbacks[0].reason, "failed_transfer");
    fs.call_status("completed", Some(60)).await;
    fs.close().await;
}

/// What two `lifeline serve` processes in a row share: a database behind a relay, a journal
/// directory and a configuration naming it.
struct ProcessSetup {
    direct: Arc<dyn Store>,
    relay: Relay,
    toml: String,
    url: String,
    _journal: tempfile::TempDir,
    _db: TestDb,
}

impl ProcessSetup {
    async fn new() -> Self {
        let mut db = TestDb::new(Engine::Postgres).await;
        db.watch_invariants();
        let direct = db.store().await;
        let relay = Relay::start(target_of(&db.url).await).await;
        let journal = tempfile::tempdir().unwrap();
        let toml = format!(
            "{}\n[journal]\ndir = \"{}\"\nprobe_interval_ms = 100\n",
            common::config_toml(""),
            journal.path().display()
        );
        let url = through(&db.url, relay.addr());
        Self {
            direct,
            relay,
            toml,
            url,
            _journal: journal,
            _db: db,
        }
    }
}

/// kill -9 while the database is unreachable and the journal holds acknowledged records: the
/// next process started on the same journal replays them at start; nothing is lost and
/// nothing is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_outage_then_replay_at_start() {
    let setup = ProcessSetup::new().await;
    let (direct, relay, toml, url) = (&setup.direct, &setup.relay, &setup.toml, &setup.url);
    let mut first = LifelineProcess::serve(url, toml).await;
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut fs = new_call(&first.ws_url()).await;
        fs.session_new().await;
        calls.push(fs);
    }
    relay.set(Fault::BlackHole);
    for (i, fs) in calls.iter_mut().enumerate() {
        let id = format!("k-{i}");
        fs.tool_call(
            &id,
            "collectNameNumberConcernPetName",
            message_args("bleeding"),
        )
        .await;
        let out = fs.tool_output(&id).await;
        assert!(recorded(&out).starts_with("Recorded"), "{out}");
    }
    first.crash().await;
    relay.set(Fault::None);
    relay.reset();

    let mut second = LifelineProcess::serve(url, toml).await;
    second
        .wait_for_log("journal replayed into the database; writes go to the database again")
        .await;
    let sids: Vec<String> = calls.iter().map(|fs| fs.call_sid.clone()).collect();
    assert_one_message_each(direct.as_ref(), &sids).await;
    let all = direct
        .callback_requests(&CallbackFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "nothing twice: {all:?}");
    drop(calls);
    second.terminate();
    second.exit_status(Duration::from_secs(30)).await;
}

/// The same journal replayed twice (a crash after the replay wrote but before it removed the
/// segment, or a copy restored by an operator) writes nothing the second time. The journal is
/// filled by holding the database's lock past the write budget, on both engines, with every
/// kind of record a call makes: messages, a transfer that rings two numbers and fails (the
/// attempts, their ends, the critical callback request), status events.
async fn replaying_a_journal_twice_changes_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let lock = DbLock::hold(&app.db.url, "tool_call_logs").await;
    for i in 0..2 {
        let id = format!("twice-{i}");
        fs.tool_call(
            &id,
            "collectNameNumberConcernPetName",
            message_args("itching"),
        )
        .await;
        let out = fs.tool_output(&id).await;
        assert!(recorded(&out).starts_with("Recorded"), "{out}");
    }
    fs.tool_call("twice-xfer", "transfer", transfer_args())
        .await;
    fs.tool_output("twice-xfer").await;
    assert_eq!(verb_names(&fs.redirect().await), ["say", "dial"]);
    fs.llm_complete("normal conversation end").await;
    assert_eq!(
        verb_names(&fs.dial_result("no-answer", 487).await),
        ["say", "dial"]
    );
    fs.dial_result("busy", 486).await;
    fs.call_status("completed", Some(20)).await;
    assert!(app.server.state.journal.status().journaling);

    // A copy of the journal as it stands (fsynced before the answers above).
    let copy = tempfile::tempdir().unwrap();
    let mut copied = 0;
    for entry in std::fs::read_dir(app.journal_dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "journal") {
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
            copied += 1;
        }
    }
    assert!(copied > 0, "the journal holds the call");
    lock.release().await;
    app.journal_drained().await;

    let direct = app.db.store().await;
    let call = direct
        .find_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap()
        .expect("the call");
    let count = || async {
        let logs = direct
            .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
            .await
            .unwrap();
        let callbacks = direct
            .callback_requests(&CallbackFilter::default())
            .await
            .unwrap();
        let attempts = direct.transfer_attempts(call.id).await.unwrap();
        let events = direct.call_events(call.id).await.unwrap();
        (
            logs.iter().map(|l| l.status.clone()).collect::<Vec<_>>(),
            callbacks
                .iter()
                .map(|c| c.urgency_level.clone())
                .collect::<Vec<_>>(),
            attempts
                .iter()
                .map(|a| a.status.clone())
                .collect::<Vec<_>>(),
            events.len(),
        )
    };
    let first = count().await;
    assert_eq!(first.0, ["success", "success", "failed"], "{first:?}");
    assert_eq!(first.1, ["critical", "normal", "normal"], "{first:?}");
    assert_eq!(first.2, ["failed", "failed"], "{first:?}");

    let again = ResilientStore::open(
        direct.clone(),
        JournalSettings {
            dir: copy.path().to_path_buf(),
            write_budget: Duration::from_millis(800),
            read_budget: Duration::from_millis(400),
            probe_interval: Duration::from_millis(100),
        },
    )
    .unwrap();
    assert!(again.status().journaling);
    assert!(again.try_replay().await, "{:?}", again.status());
    let status = again.status();
    assert_eq!(status.set_aside, 0, "{status:?}");
    assert!(
        status.replayed as usize >= status_records(&first),
        "{status:?}"
    );
    assert_eq!(count().await, first, "nothing written twice");
    fs.close().await;
}

/// At least as many records as the call made (a lower bound that catches an empty replay).
fn status_records(counts: &(Vec<String>, Vec<String>, Vec<String>, usize)) -> usize {
    counts.0.len() + counts.2.len()
}

/// kill -9 during the outage, and the platform restarts the process before the database is
/// back: with records in its journal the process starts degraded instead of failing, serves
/// new calls through the journal, and migrates and replays when the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_restarted_during_the_outage_serves_calls_then_replays() {
    let setup = ProcessSetup::new().await;
    let (direct, relay, toml, url) = (&setup.direct, &setup.relay, &setup.toml, &setup.url);
    let mut first = LifelineProcess::serve(url, toml).await;
    let mut before = new_call(&first.ws_url()).await;
    before.session_new().await;
    relay.set(Fault::Cut);
    before
        .tool_call(
            "r-0",
            "collectNameNumberConcernPetName",
            message_args("seizure"),
        )
        .await;
    assert!(recorded(&before.tool_output("r-0").await).starts_with("Recorded"));
    first.crash().await;

    // Still unreachable: the new process starts all the same.
    let mut second = LifelineProcess::serve(url, toml).await;
    let mut after = new_call(&second.ws_url()).await;
    let ack = after.session_new().await;
    assert!(
        ack["data"].as_array().is_some_and(|v| !v.is_empty()),
        "{ack}"
    );
    after
        .tool_call(
            "r-1",
            "collectNameNumberConcernPetName",
            message_args("not eating"),
        )
        .await;
    assert!(recorded(&after.tool_output("r-1").await).starts_with("Recorded"));

    relay.set(Fault::None);
    second
        .wait_for_log("journal replayed into the database; writes go to the database again")
        .await;
    let sids = [before.call_sid.clone(), after.call_sid.clone()];
    assert_one_message_each(direct.as_ref(), &sids).await;
    drop((before, after));
    second.terminate();
    second.exit_status(Duration::from_secs(30)).await;
}
