//! Issue 14: a transfer is taken only by a human who presses 1, each attempt ends with a typed
//! outcome, and the transfer walks the clinic's on-call chain. Through the fake feature-server
//! (which runs the confirm application as `lib/utils/place-outdial.js` does), on both engines.

mod common;

use common::{Engine, FakeFeatureServer, TestApp, TestDb, config_toml};
use lifeline::store::TransferAttemptRow;
use serde_json::{Value, json};

on_both_engines!(
    gate_accepts_on_1,
    gate_declines_on_silence_then_on_another_key,
    gate_declines_a_machine,
    chain_walks_three_steps_and_ends_in_a_critical_request,
    caller_hang_up_mid_chain_stops_it,
);

fn verb_names(verbs: &[Value]) -> Vec<&str> {
    verbs.iter().filter_map(|v| v["verb"].as_str()).collect()
}

async fn start_transfer(fs: &mut FakeFeatureServer, id: &str) -> Vec<Value> {
    fs.session_new().await;
    fs.tool_call(
        id,
        "transfer",
        json!({
            "urgency_reason": "dog was hit by car, call 4165550123",
            "first_name": "Jeremy",
            "last_name": "Greven",
            "callback_number": "4168189171",
            "pet_name": "Max",
        }),
    )
    .await;
    fs.tool_output(id).await;
    let verbs = fs.redirect().await;
    fs.llm_complete("normal conversation end").await;
    verbs
}

async fn attempts(app: &TestApp, fs: &FakeFeatureServer) -> Vec<TransferAttemptRow> {
    let call = app.call(&fs.call_sid).await;
    app.store.transfer_attempts(call.id).await.unwrap()
}

fn outcomes(rows: &[TransferAttemptRow]) -> Vec<(&str, Option<&str>, Option<i32>)> {
    rows.iter()
        .map(|a| (a.target_role.as_str(), a.outcome.as_deref(), a.chain_step))
        .collect()
}

async fn gate_accepts_on_1(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    start_transfer(&mut fs, "inv-gate-1").await;

    let app_verbs = fs.dial_confirm().await;
    assert_eq!(verb_names(&app_verbs), ["say", "config", "gather"]);
    let whisper = app_verbs[0]["text"].as_str().unwrap();
    assert!(whisper.contains("Jeremy Greven"), "{whisper}");
    assert!(whisper.contains("Max"), "{whisper}");
    assert!(whisper.contains("critical"), "urgency: {whisper}");
    assert!(!whisper.contains("4165550123"), "numbers masked: {whisper}");
    assert_eq!(app_verbs[2]["numDigits"], 1);
    assert!(app_verbs[1]["amd"]["actionHook"].is_string());

    // A human detected: the gate goes on.
    assert!(fs.dial_amd("amd_human_detected").await.is_empty());
    let ack = fs.dial_gate(Some("1")).await;
    assert_eq!(verb_names(&ack), ["say"], "still connected: accepted");
    // Bridged; the dial reports `completed` when the call ends.
    let ack = fs.dial_result("completed", 200).await;
    assert_eq!(verb_names(&ack), ["hangup"]);

    let rows = attempts(&app, &fs).await;
    assert_eq!(outcomes(&rows), [("primary", Some("accepted"), Some(1))]);
    assert_eq!(rows[0].status, "succeeded");
    assert!(rows[0].accepted_at.is_some());
    assert!(rows[0].ring_ms.is_some());
    let call = app.call(&fs.call_sid).await;
    assert!(app.callbacks_of(call.id).await.is_empty());
    fs.assert_verbs_valid();
}

async fn gate_declines_on_silence_then_on_another_key(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    start_transfer(&mut fs, "inv-gate-2").await;

    // Voicemail, a pocket: nobody presses anything.
    fs.dial_confirm().await;
    let ack = fs.dial_gate(None).await;
    assert_eq!(verb_names(&ack), ["hangup"], "the leg is hung up: declined");
    let next = fs.dial_declined().await;
    assert_eq!(verb_names(&next), ["say", "dial"], "the chain moves on");
    assert_eq!(next[1]["target"][0]["number"], "+15557654322");

    // The secondary answers and presses 2.
    fs.dial_confirm().await;
    let ack = fs.dial_gate(Some("2")).await;
    assert_eq!(verb_names(&ack), ["hangup"]);
    let last = fs.dial_declined().await;
    assert_eq!(verb_names(&last), ["say", "hangup"], "callback promised");

    let rows = attempts(&app, &fs).await;
    assert_eq!(
        outcomes(&rows),
        [
            ("primary", Some("declined"), Some(1)),
            ("secondary", Some("declined"), Some(2))
        ]
    );
    assert!(rows.iter().all(|a| a.accepted_at.is_none()));
    let call = app.call(&fs.call_sid).await;
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].urgency_level, "critical");
    fs.assert_verbs_valid();
}

async fn gate_declines_a_machine(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    start_transfer(&mut fs, "inv-gate-3").await;

    fs.dial_confirm().await;
    let ack = fs.dial_amd("amd_machine_detected").await;
    assert_eq!(verb_names(&ack), ["hangup"], "a machine is hung up on");
    let next = fs.dial_declined().await;
    assert_eq!(verb_names(&next), ["say", "dial"]);

    let end = fs.dial_result("no-answer", 487).await;
    assert_eq!(verb_names(&end), ["say", "hangup"]);

    let rows = attempts(&app, &fs).await;
    assert_eq!(rows[0].outcome.as_deref(), Some("machine"));
    assert_eq!(rows[1].outcome.as_deref(), Some("no_answer"));
    assert!(rows[0].accepted_at.is_none());
    fs.assert_verbs_valid();
}

/// Riverside with an on-call schedule: a rotation (overridden for as long as the test can
/// run, so who is on call does not depend on today's date), a fixed number, a final step.
fn chain_config() -> String {
    let oncall = r#"
[tenants.oncall]
timezone = "America/Toronto"
total_ring_budget_secs = 120
[[tenants.oncall.rotations]]
name = "vets"
period = "weekly"
handoff = "08:00"
start = "2026-01-05"
members = ["+15557650001", "+15557650002"]
[[tenants.oncall.overrides]]
rotation = "vets"
from = "2000-01-01"
until = "2199-12-31"
number = "+15557650009"
[[tenants.oncall.steps]]
rotation = "vets"
ring_timeout_secs = 20
[[tenants.oncall.steps]]
number = "+15557650003"
ring_timeout_secs = 15
[tenants.oncall.final]
number = "+15557650004"
ring_timeout_secs = 25
"#;
    let base = config_toml("");
    let marker = "\n[[tenants]]\nid = \"hillside\"";
    assert!(base.contains(marker));
    base.replacen(marker, &format!("{oncall}{marker}"), 1)
}

async fn chain_walks_three_steps_and_ends_in_a_critical_request(engine: Engine) {
    let db = TestDb::new(engine).await;
    let app = TestApp::start_on(db, &chain_config()).await;
    let mut fs = app.feature_server().await;
    let verbs = start_transfer(&mut fs, "inv-chain-1").await;
    let dial = &verbs[1];
    assert_eq!(dial["target"][0]["number"], "+15557650009", "the override");
    assert_eq!(dial["timeout"], 20);

    let next = fs.dial_result("no-answer", 487).await;
    assert_eq!(verb_names(&next), ["say", "dial"]);
    assert_eq!(next[1]["target"][0]["number"], "+15557650003");
    assert_eq!(next[1]["timeout"], 15);

    let last = fs.dial_result("busy", 486).await;
    assert_eq!(verb_names(&last), ["say", "dial"]);
    assert_eq!(last[1]["target"][0]["number"], "+15557650004");
    assert_eq!(last[1]["timeout"], 25);

    let end = fs.dial_result("ringing", 180).await;
    assert_eq!(verb_names(&end), ["say", "hangup"]);
    assert!(
        end[0]["text"].as_str().unwrap().contains("call you back"),
        "{end:?}"
    );

    let rows = attempts(&app, &fs).await;
    assert_eq!(
        outcomes(&rows),
        [
            ("primary", Some("no_answer"), Some(1)),
            ("secondary", Some("busy"), Some(2)),
            ("final", Some("no_answer"), Some(3)),
        ]
    );
    let call = app.call(&fs.call_sid).await;
    assert_eq!(call.transfer_outcome.as_deref(), Some("failed"));
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].urgency_level, "critical");
    assert_eq!(cbs[0].transfer_attempt_id, Some(rows[2].id));
    fs.assert_verbs_valid();
}

async fn caller_hang_up_mid_chain_stops_it(engine: Engine) {
    let db = TestDb::new(engine).await;
    let app = TestApp::start_on(db, &chain_config()).await;
    let mut fs = app.feature_server().await;
    start_transfer(&mut fs, "inv-chain-2").await;
    let next = fs.dial_result("no-answer", 487).await;
    assert_eq!(verb_names(&next), ["say", "dial"]);
    fs.dial_progress("ringing", 180).await;
    let call_sid = fs.call_sid.clone();
    fs.caller_hangs_up().await;

    let call = app.call(&call_sid).await;
    let rows = app.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(
        outcomes(&rows),
        [
            ("primary", Some("no_answer"), Some(1)),
            ("secondary", Some("caller_hung_up"), Some(2)),
        ],
        "the final step is never rung"
    );
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1, "the caller who left is called back");
    assert_eq!(cbs[0].urgency_level, "critical");
}
