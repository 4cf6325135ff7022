//! The Jambonz path end to end: a fake feature-server replaying real protocol messages against
//! lifeline on port 0 and a fresh database, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::{Engine, FakeFeatureServer, TestApp, try_connect};
use lifeline::store::CallbackFilter;
use lifeline::tools::Platform;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::http::StatusCode;

on_both_engines!(
    session_new_is_acked_with_the_tenants_llm_verbs,
    agent_tenant_gets_template_context_and_no_inline_tools,
    collect_info_answers_after_both_rows_are_committed,
    transfer_then_no_answer_creates_a_critical_callback,
    secondary_target_is_tried_before_giving_up,
    answered_transfer_succeeds_and_whispers_first,
    repeated_tool_call_id_transfers_once,
    bad_arguments_get_a_clear_error_and_a_failed_log_row,
    unknown_tool_is_refused_and_logged,
    runaway_model_is_rate_limited,
    hang_up_ends_the_call_after_the_answer,
    reconnect_mid_call_resumes_without_restarting_the_agent,
    call_status_closes_the_call,
    malformed_frames_do_not_kill_the_socket,
    agent_failure_rings_the_team_and_never_drops_the_caller,
    agent_failure_after_a_message_ends_the_call_politely,
);

fn verb_names(verbs: &[Value]) -> Vec<&str> {
    verbs
        .iter()
        .map(|v| v["verb"].as_str().unwrap_or("?"))
        .collect()
}

async fn session_new_is_acked_with_the_tenants_llm_verbs(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    let ack = fs.session_new().await;
    let verbs = ack["data"]
        .as_array()
        .expect("session:new ack carries verbs");
    assert_eq!(verb_names(verbs), ["answer", "llm", "hangup"]);
    let llm = &verbs[1];
    assert_eq!(llm["vendor"], "ultravox");
    assert_eq!(llm["auth"]["apiKey"], "UV_KEY");
    assert_eq!(llm["toolHook"], "/tool-call");
    assert_eq!(llm["actionHook"], "/llm-complete");
    let options = &llm["llmOptions"];
    assert_eq!(
        options["systemPrompt"],
        "You are the after-hours assistant of Riverside Emergency Vet."
    );
    assert_eq!(options["voice"], "Jessica");
    let tools: Vec<&str> = options["selectedTools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(
                t["temporaryTool"]["client"],
                json!({}),
                "declared as client tools"
            );
            t["temporaryTool"]["modelToolName"].as_str().unwrap()
        })
        .collect();
    assert_eq!(tools, ["collect_info", "transfer", "hang_up"]);

    let call = app
        .store
        .find_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap()
        .expect("call row");
    assert_eq!(call.tenant_id, "riverside");
    assert_eq!(call.from_number.as_deref(), Some("+15083084809"));
    assert_eq!(call.to_number.as_deref(), Some("+15083728299"));
    // Marked once the ack left; give the socket task a moment to write it.
    for _ in 0..50 {
        let c = app.call(&fs.call_sid).await;
        if c.app_started_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = app.call(&fs.call_sid).await;
    assert!(
        c.app_started_at.is_some(),
        "the call is marked started after its ack"
    );
    fs.assert_verbs_valid();
}

async fn agent_tenant_gets_template_context_and_no_inline_tools(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs =
        FakeFeatureServer::connect(&app.ws_url(), common::HILLSIDE_USER, common::HILLSIDE_PASS)
            .await
            .unwrap();
    let mut msg = fs.session_message("session:new");
    msg["data"]["to"] = json!("+15083728300");
    msg["data"]["account_sid"] = json!("another-account");
    let ack = fs.request(msg).await;
    let llm = &ack["data"][1];
    assert_eq!(llm["auth"]["agent_id"], "0b7c2b8e-agent");
    assert!(
        llm.get("model").is_none(),
        "agent calls take the agent's model"
    );
    let options = &llm["llmOptions"];
    assert!(
        options.get("selectedTools").is_none(),
        "agents refuse selectedTools"
    );
    let ctx = options["templateContext"].as_object().unwrap();
    assert_eq!(ctx["callback_number"], "+15083084809");
    assert_eq!(ctx["caller_phone_last4"], "4809");
    assert_eq!(ctx["client_name"], "Hillside Animal Hospital");
    assert!(
        ctx.values().all(Value::is_string),
        "template values are strings"
    );
    fs.assert_verbs_valid();
}

async fn collect_info_answers_after_both_rows_are_committed(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let args = json!({
        "callback_number": "(416) 818-9171",
        "first_name": "Jeremy",
        "last_name": "Greven",
        "pet_name": "Tommie",
        "species": "Cat",
        "concern_description": "needs a refill of her thyroid medication",
    });
    fs.tool_call(
        "inv-collect-1",
        "collectNameNumberConcernPetName",
        args.clone(),
    )
    .await;
    let out = fs.tool_output("inv-collect-1").await;
    let text = out["result"].as_str().unwrap();
    assert!(
        text.contains("9171"),
        "the model is told where the callback goes: {text}"
    );

    // The answer came after the commit: both rows are visible now, linked to each other.
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.status, "success");
    assert_eq!(log.tool_name, "collectNameNumberConcernPetName");
    assert_eq!(log.canonical_tool, "collect_info");
    assert_eq!(log.tenant_id, "riverside");
    assert_eq!(log.tool_parameters.0, args);
    assert_eq!(log.callback_number.as_deref(), Some("+14168189171"));
    let cbs = app
        .store
        .callback_requests(&CallbackFilter::default())
        .await
        .unwrap();
    assert_eq!(cbs.len(), 1);
    let cb = &cbs[0];
    assert_eq!(cb.tool_call_log_id, Some(log.id));
    assert_eq!(cb.callback_number, "+14168189171");
    assert_eq!(cb.caller_name.as_deref(), Some("Jeremy Greven"));
    assert_eq!(cb.pet_name.as_deref(), Some("Tommie"));
    assert_eq!(cb.species.as_deref(), Some("Cat"));
    assert_eq!(cb.urgency_level, "normal");
    assert_eq!(cb.reason, "message");
    assert_eq!(cb.status, "pending");
    assert_eq!(cb.tenant_id, "riverside");
    assert_eq!(cb.call_sid.as_deref(), Some(fs.call_sid.as_str()));
    assert!(cb.call_id.is_some());
}

/// Starts a call on `fs`, asks for a transfer and returns the redirect's verbs.
async fn start_transfer(fs: &mut FakeFeatureServer, id: &str) -> Vec<Value> {
    fs.session_new().await;
    fs.tool_call(
        id,
        "transferFromAiTriageWithMetadata",
        json!({
            "urgency_reason": "CRITICAL EMERGENCY: dog was hit by car",
            "first_name": "Jeremy",
            "last_name": "Greven",
            "callback_number": "4168189171",
            "pet_name": "Max",
            "species": "Dog",
        }),
    )
    .await;
    let out = fs.tool_output(id).await;
    assert!(
        out["result"].as_str().unwrap().contains("Transferring"),
        "{out}"
    );
    // Tool output first, then the redirect that ends the llm verb.
    let verbs = fs.redirect().await;
    // Jambonz then reports the llm's end; the ack must be empty or it would undo the transfer.
    let ack = fs.llm_complete("normal conversation end").await;
    assert!(
        ack.get("data").is_none(),
        "llm actionHook acked empty: {ack}"
    );
    verbs
}

async fn transfer_then_no_answer_creates_a_critical_callback(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::HILLSIDE_USER,
        common::HILLSIDE_PASS,
        "hill-call-1",
    )
    .await
    .unwrap();
    let verbs = start_transfer(&mut fs, "inv-transfer-1").await;
    assert_eq!(verb_names(&verbs), ["say", "dial"]);
    let dial = &verbs[1];
    assert_eq!(dial["target"][0]["type"], "phone");
    assert_eq!(
        dial["target"][0]["number"], "+15557650000",
        "the tenant's target, from our records"
    );
    assert_eq!(dial["actionHook"], "/dial-action");
    assert_eq!(dial["timeout"], 25);

    let ack = fs.dial_result("no-answer", 487).await;
    assert_eq!(verb_names(&ack), ["say", "hangup"]);
    assert!(
        ack[0]["text"].as_str().unwrap().contains("9 1 7 1"),
        "{}",
        ack[0]
    );

    let call = app.call("hill-call-1").await;
    assert_eq!(call.transfer_outcome.as_deref(), Some("failed"));
    let attempts = app.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, "failed");
    assert_eq!(attempts[0].dial_call_status.as_deref(), Some("no-answer"));
    assert_eq!(attempts[0].callback_number, "+14168189171");
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, "hill-call-1")
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(
        logs[0].status, "failed",
        "the failed transfer shows in tool_call_logs"
    );
    assert!(
        logs[0]
            .error_message
            .as_deref()
            .unwrap()
            .contains("no-answer")
    );
    assert_eq!(logs[0].callback_number.as_deref(), Some("+14168189171"));

    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].urgency_level, "critical");
    assert_eq!(cbs[0].reason, "failed_transfer");
    assert_eq!(cbs[0].callback_number, "+14168189171");
    assert_eq!(cbs[0].caller_name.as_deref(), Some("Jeremy Greven"));
    assert_eq!(cbs[0].pet_name.as_deref(), Some("Max"));
    assert_eq!(cbs[0].transfer_attempt_id, Some(attempts[0].id));
    fs.assert_verbs_valid();
}

async fn secondary_target_is_tried_before_giving_up(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    let verbs = start_transfer(&mut fs, "inv-transfer-2").await;
    let dial = &verbs[1];
    assert_eq!(dial["target"][0]["number"], "+15557654321");
    assert_eq!(dial["target"][0]["trunk"], "MyCarrier");
    assert_eq!(dial["callerId"], "+15551230000");
    assert_eq!(dial["timeout"], 20);

    // A ring timeout may report a non-final status (the feature-server's typo): a failure.
    let ack = fs.dial_result("ringing", 180).await;
    assert_eq!(
        verb_names(&ack),
        ["say", "dial"],
        "secondary dialled: {ack:?}"
    );
    assert_eq!(ack[1]["target"][0]["number"], "+15557654322");
    let call = app.call(&fs.call_sid).await;
    assert!(
        app.callbacks_of(call.id).await.is_empty(),
        "no callback request while the secondary rings"
    );

    let ack = fs.dial_result("busy", 486).await;
    assert_eq!(verb_names(&ack), ["say", "hangup"]);
    let attempts = app.store.transfer_attempts(call.id).await.unwrap();
    let roles: Vec<(&str, &str)> = attempts
        .iter()
        .map(|a| (a.target_role.as_str(), a.status.as_str()))
        .collect();
    assert_eq!(roles, [("primary", "failed"), ("secondary", "failed")]);
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1, "one callback request for the whole transfer");
    assert_eq!(cbs[0].urgency_level, "critical");
    assert_eq!(cbs[0].transfer_attempt_id, Some(attempts[1].id));
    fs.assert_verbs_valid();
}

async fn answered_transfer_succeeds_and_whispers_first(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    start_transfer(&mut fs, "inv-transfer-3").await;

    // The on-call person picks up: Jambonz asks what to play them before bridging.
    let mut confirm = common::fixture("verb:hook", Some("/dialAction"));
    confirm["type"] = json!("dial:confirm");
    confirm["hook"] = json!(fs.confirm_hook.clone().expect("confirmHook on the target"));
    let ack = fs.request(confirm).await;
    let whisper = ack["data"][0]["text"]
        .as_str()
        .expect("whisper")
        .to_string();
    assert!(whisper.contains("Jeremy Greven"), "{whisper}");
    assert!(whisper.contains("hit by car"), "{whisper}");

    let ack = fs.dial_result("completed", 200).await;
    assert_eq!(verb_names(&ack), ["hangup"]);
    let call = app.call(&fs.call_sid).await;
    assert_eq!(call.transfer_outcome.as_deref(), Some("succeeded"));
    assert!(
        app.store
            .callback_requests(&CallbackFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs[0].status, "success");
    fs.assert_verbs_valid();
}

async fn repeated_tool_call_id_transfers_once(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let args = json!({"urgency_reason": "emergency", "callback_number": "4168189171"});
    fs.tool_call("inv-dup", "transfer", args.clone()).await;
    fs.tool_call("inv-dup", "transfer", args.clone()).await;
    let first = fs.tool_output("inv-dup").await;
    let second = fs.tool_output("inv-dup").await;
    assert_eq!(
        first["result"], second["result"],
        "the repeat gets the recorded result"
    );
    fs.redirect().await;
    // A third, later repeat (Ultravox re-invokes after a late answer).
    fs.tool_call("inv-dup", "transfer", args).await;
    fs.tool_output("inv-dup").await;
    fs.expect_silence(Duration::from_millis(500)).await;
    let redirects = fs
        .verb_arrays
        .iter()
        .filter(|v| v.as_array().unwrap().iter().any(|x| x["verb"] == "dial"))
        .count();
    assert_eq!(redirects, 1, "one dial for three invocations");
    let call = app.call(&fs.call_sid).await;
    assert_eq!(app.store.transfer_attempts(call.id).await.unwrap().len(), 1);
    assert_eq!(
        app.store
            .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn bad_arguments_get_a_clear_error_and_a_failed_log_row(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.tool_call(
        "inv-bad",
        "collect_info",
        json!({"callback_number": "user-provided number", "concern_description": "cough"}),
    )
    .await;
    let out = fs.tool_output("inv-bad").await;
    let err: Value = serde_json::from_str(out["result"].as_str().unwrap()).unwrap();
    assert_eq!(err["error"], "validation");
    assert_eq!(err["retryable"], false);
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("callback_number \"user-provided number\""),
        "{err}"
    );
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].status, "failed");
    assert_eq!(logs[0].error_kind.as_deref(), Some("validation"));
    assert!(
        app.store
            .callback_requests(&CallbackFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Arguments that are not an object at all.
    fs.tool_call("inv-bad-2", "collect_info", json!("just text"))
        .await;
    let out = fs.tool_output("inv-bad-2").await;
    assert!(
        out["result"]
            .as_str()
            .unwrap()
            .contains("must be a JSON object")
    );
}

async fn unknown_tool_is_refused_and_logged(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.tool_call("inv-x", "coldTransfer", json!({"target": "+15550000000"}))
        .await;
    let out = fs.tool_output("inv-x").await;
    let err: Value = serde_json::from_str(out["result"].as_str().unwrap()).unwrap();
    assert_eq!(err["error"], "not_found");
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs[0].canonical_tool, "unknown");
    assert_eq!(logs[0].status, "failed");
    fs.expect_silence(Duration::from_millis(300)).await;
}

async fn runaway_model_is_rate_limited(engine: Engine) {
    let app = TestApp::start_with_limits(engine, "tool_calls_per_call = 3").await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    for i in 0..4 {
        let id = format!("inv-rl-{i}");
        fs.tool_call(
            &id,
            "collect_info",
            json!({"callback_number": "4168189171", "concern_description": format!("try {i}")}),
        )
        .await;
        let out = fs.tool_output(&id).await;
        let text = out["result"].as_str().unwrap();
        if i < 3 {
            assert!(text.starts_with("Recorded"), "call {i}: {text}");
        } else {
            let err: Value = serde_json::from_str(text).unwrap();
            assert_eq!(err["error"], "rate_limited", "{err}");
        }
    }
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 4, "the refused call is logged too");
    assert_eq!(logs[3].error_kind.as_deref(), Some("rate_limited"));
    assert_eq!(
        app.store
            .callback_requests(&CallbackFilter::default())
            .await
            .unwrap()
            .len(),
        3
    );
}

async fn hang_up_ends_the_call_after_the_answer(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.tool_call("inv-bye", "hangUp", json!({})).await;
    let out = fs.tool_output("inv-bye").await;
    assert_eq!(out["result"], "The call is ending.");
    let verbs = fs.redirect().await;
    assert_eq!(verb_names(&verbs), ["hangup"]);
    fs.assert_verbs_valid();
}

async fn reconnect_mid_call_resumes_without_restarting_the_agent(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    start_transfer(&mut fs, "inv-transfer-rc").await;
    let call_sid = fs.call_sid.clone();
    fs.drop_connection().await;

    // Jambonz reconnects and replays the original session:new data as session:reconnect.
    let mut fs = FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        &call_sid,
    )
    .await
    .unwrap();
    let msg = fs.session_message("session:reconnect");
    let ack = fs.request(msg).await;
    assert!(
        ack.get("data").is_none(),
        "resume, do not restart the agent: {ack}"
    );
    // The dial started on the old socket reports on the new one.
    fs.dial_action_hook = Some("/dial-action".into());
    let ack = fs.dial_result("no-answer", 487).await;
    assert_eq!(
        verb_names(&ack),
        ["say", "dial"],
        "secondary after the reconnect"
    );
    let calls = app.call(&call_sid).await;
    assert_eq!(
        app.store.transfer_attempts(calls.id).await.unwrap().len(),
        2
    );
}

async fn call_status_closes_the_call(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.call_status("in-progress", None).await;
    fs.call_status("completed", Some(42)).await;
    let mut call = None;
    for _ in 0..100 {
        let c = app.call(&fs.call_sid).await;
        if c.ended_at.is_some() {
            call = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let call = call.expect("call closed by call:status completed");
    assert_eq!(call.status, "completed");
    assert_eq!(call.duration_seconds, Some(42));
    let events = app.store.call_events(call.id).await.unwrap();
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "status")
        .map(|e| e.detail.0["call_status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["in-progress", "completed"]);
    fs.close().await;
}

async fn malformed_frames_do_not_kill_the_socket(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.send_text("this is not json").await;
    fs.send_text(r#"{"no_type": true}"#).await;
    fs.send(&json!({"type": "bogus:type", "msgid": "x1", "data": {}}))
        .await;
    fs.send(&json!({"type": "llm:tool-call", "msgid": "x2", "data": {"oops": 1}}))
        .await;
    // Unknown types that want an ack still get one (session:adulting, queue:status…).
    let ack = fs
        .request(
            json!({"type": "session:redirect", "call_sid": fs.call_sid, "hook": "/x", "data": {}}),
        )
        .await;
    assert!(ack.get("data").is_none());
    let ack = fs.session_new().await;
    assert!(ack["data"].is_array(), "the socket still works");
    // Idle sockets are pinged (1 s in the test configuration) to keep load balancers open.
    fs.expect_silence(Duration::from_millis(2500)).await;
    assert!(fs.pings >= 1, "lifeline pings idle sockets");
}

async fn agent_failure_rings_the_team_and_never_drops_the_caller(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    // Ultravox fails mid-call: without lifeline the stack would reach `hangup`.
    let ack = fs.llm_complete("server error").await;
    let verbs = ack["data"].as_array().expect("verbs instead of the hangup");
    assert_eq!(verb_names(verbs), ["say", "dial"]);
    assert_eq!(verbs[1]["target"][0]["number"], "+15557654321");
    let ack = fs.dial_result("no-answer", 487).await;
    assert_eq!(ack[1]["target"][0]["number"], "+15557654322");
    let ack = fs.dial_result("failed", 503).await;
    assert_eq!(verb_names(&ack), ["say", "hangup"]);
    assert!(
        ack[0]["text"].as_str().unwrap().contains("4 8 0 9"),
        "{}",
        ack[0]
    );
    let call = app.call(&fs.call_sid).await;
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].urgency_level, "critical");
    assert_eq!(
        cbs[0].callback_number, "+15083084809",
        "the caller's own number"
    );
    assert!(
        cbs[0]
            .urgency_reason
            .as_deref()
            .unwrap()
            .contains("server error")
    );
    fs.assert_verbs_valid();
}

async fn agent_failure_after_a_message_ends_the_call_politely(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.tool_call(
        "inv-msg",
        "collect_info",
        json!({"callback_number": "4168189171", "concern_description": "itchy ears"}),
    )
    .await;
    fs.tool_output("inv-msg").await;
    let ack = fs.llm_complete("connection failure").await;
    let verbs = ack["data"].as_array().unwrap();
    assert_eq!(verb_names(verbs), ["say", "hangup"]);
    assert!(
        verbs[0]["text"]
            .as_str()
            .unwrap()
            .contains("message has been recorded")
    );
    let call = app.call(&fs.call_sid).await;
    assert!(
        app.store
            .transfer_attempts(call.id)
            .await
            .unwrap()
            .is_empty()
    );
    fs.assert_verbs_valid();
}

#[tokio::test]
async fn wrong_or_missing_credentials_get_401_before_the_upgrade() {
    let app = TestApp::start(Engine::Sqlite).await;
    let url = app.ws_url();
    let proto = Some("ws.jambonz.org");
    assert_eq!(
        try_connect(&url, Some(("riverside", "wrong-password")), proto).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        try_connect(&url, Some(("nobody", common::RIVERSIDE_PASS)), proto).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        try_connect(&url, None, proto).await,
        Err(StatusCode::UNAUTHORIZED)
    );
    // Another tenant's password with this tenant's user name.
    assert_eq!(
        try_connect(
            &url,
            Some((common::RIVERSIDE_USER, common::HILLSIDE_PASS)),
            proto
        )
        .await,
        Err(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        try_connect(
            &url,
            Some((common::RIVERSIDE_USER, common::RIVERSIDE_PASS)),
            None
        )
        .await,
        Err(StatusCode::BAD_REQUEST),
        "the jambonz subprotocol is required"
    );
    assert_eq!(
        try_connect(
            &url,
            Some((common::RIVERSIDE_USER, common::RIVERSIDE_PASS)),
            proto
        )
        .await,
        Ok(())
    );
}

#[tokio::test]
async fn a_call_for_another_account_is_turned_away() {
    let app = TestApp::start(Engine::Sqlite).await;
    let mut fs = app.feature_server().await;
    let mut msg = fs.session_message("session:new");
    msg["data"]["account_sid"] = json!("someone-elses-account");
    let ack = fs.request(msg).await;
    assert_eq!(
        verb_names(ack["data"].as_array().unwrap()),
        ["say", "hangup"]
    );
    assert!(
        app.store
            .find_call(Platform::Jambonz, &fs.call_sid)
            .await
            .unwrap()
            .is_none(),
        "no call recorded for a tenant the credentials do not match"
    );
    assert!(
        !ack.to_string().contains("UV_KEY"),
        "no secrets to strangers"
    );
}

#[tokio::test]
async fn another_tenants_credentials_cannot_take_over_a_call() {
    let app = TestApp::start(Engine::Sqlite).await;
    let mut riverside = app.feature_server().await;
    riverside.session_new().await;
    let call_sid = riverside.call_sid.clone();
    let mut intruder = FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::HILLSIDE_USER,
        common::HILLSIDE_PASS,
        &call_sid,
    )
    .await
    .unwrap();
    for kind in ["session:new", "session:reconnect"] {
        let mut msg = intruder.session_message(kind);
        msg["data"]["to"] = json!("+15083728300");
        let ack = intruder.request(msg).await;
        assert_eq!(
            verb_names(ack["data"].as_array().unwrap()),
            ["say", "hangup"],
            "{kind}"
        );
        assert!(
            !ack.to_string().contains("UV_KEY"),
            "no secrets to another tenant"
        );
    }
    let call = app.call(&call_sid).await;
    assert_eq!(call.tenant_id, "riverside");
}

#[tokio::test]
async fn shutdown_closes_call_sockets_with_1001_so_jambonz_reconnects() {
    let app = TestApp::start(Engine::Sqlite).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let TestApp { server, .. } = app;
    let stopping = tokio::spawn(server.shutdown());
    // 1000 would make Jambonz stop talking to us for the rest of the call.
    assert_eq!(fs.expect_close().await, Some(1001));
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::start(Engine::Sqlite).await;
    let health = reqwest::get(app.http_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(app.http_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
}
