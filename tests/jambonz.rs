//! The Jambonz path end to end: a fake feature-server replaying real protocol messages against
//! lifeline on port 0 and a fresh database, on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::db_lock::DbLock;
use common::process::LifelineProcess;
use common::relay::{Fault, Relay};
use common::{Engine, FakeFeatureServer, TestApp, TestDb, transfer_args, try_connect};
use lifeline::store::{CallRow, CallbackFilter, CallbackRequestRow, TransferAttemptRow};
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
    // Issue 11: what the real feature-server does.
    ultravox_failing_to_start_the_call_rings_the_on_call_team,
    a_lost_session_ack_is_recovered_by_the_reconnect_that_carries_it,
    an_application_too_large_for_one_frame_is_never_counted_as_sent,
    the_caller_hanging_up_while_on_call_rings_gets_a_callback_not_a_secondary,
    answers_lost_with_a_dying_socket_are_sent_again_on_reconnect,
    a_call_that_ends_before_its_dial_reports_still_gets_its_callback,
    the_close_handshake_is_answered_with_jambonzs_own_code,
    // Issue 11: failure paths.
    a_transfer_slower_than_its_answer_deadline_still_reaches_its_dial,
    an_http_tool_call_outlives_the_client_that_gave_up,
    the_reconciler_ends_a_transfer_nobody_reports_and_the_call_can_transfer_again,
    a_crash_mid_transfer_is_settled_by_another_instance,
    sigterm_lets_the_transfer_in_flight_finish_then_closes_sockets_with_1001,
    // Issue 12.
    a_tool_call_that_cannot_be_read_gets_an_error_answer,
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
    // This clinic texts no one (no [tenants.caller_sms]): no text is queued to wait for good.
    assert!(app.store.caller_text(cb.id).await.unwrap().is_none());
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
    // The on-call person answers and the call ends.
    fs.dial_result("completed", 200).await;
    fs.call_status("completed", Some(90)).await;
    fs.close().await;
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
    // A repeat of an admitted tool call is answered as the repeat it is, at the limit or not
    // (the admission finds it among the call's admitted keys and does not count it).
    fs.tool_call(
        "inv-rl-0",
        "collect_info",
        json!({"callback_number": "4168189171", "concern_description": "try 0"}),
    )
    .await;
    let again = fs.tool_output("inv-rl-0").await;
    let again = again["result"].as_str().unwrap();
    assert!(again.starts_with("Recorded"), "the repeat: {again}");
    // Issue 12: a call over its limit is refused before it takes a database connection, so it
    // has no log row of its own; it is recorded on the call's timeline instead.
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 3, "only the admitted calls have log rows");
    let call = app.call(&fs.call_sid).await;
    let refused = wait_for_event(&app, call.id, "tool_calls_refused").await;
    assert_eq!(refused["count"], 1, "{refused}");
    assert_eq!(refused["invocations"][0]["invocation_id"], "inv-rl-3");
    assert_eq!(refused["reasons"]["per_call"], 1, "{refused}");
    assert_eq!(
        app.store
            .callback_requests(&CallbackFilter::default())
            .await
            .unwrap()
            .len(),
        3
    );
}

/// The detail of the call's event of `kind`, once it is written (polled, 10 s at most).
async fn wait_for_event(app: &TestApp, call_id: uuid::Uuid, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = app.store.call_events(call_id).await.unwrap();
        if let Some(e) = events.iter().find(|e| e.kind == kind) {
            return e.detail.0.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} event; events: {:?}",
            events.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    // The socket drops; Jambonz reconnects and replays the original session:new data as
    // session:reconnect.
    let ack = fs.reconnect().await;
    // Issue 11 changed this answer: it used to carry no data. It now carries the call's
    // application, which the feature-server ignores on an ordinary reconnect (the agent is not
    // restarted: the fake, like the real one, does not run it) and needs when the session:new
    // ack was lost in flight.
    assert_eq!(
        verb_names(ack["data"].as_array().expect("the application")),
        ["answer", "llm", "hangup"]
    );
    // Nothing was lost with the old socket (Jambonz ended the llm after the redirect): nothing
    // is sent again.
    fs.expect_silence(Duration::from_millis(500)).await;
    // The dial started on the old socket reports on the new one.
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
    fs.caller_hangs_up().await;
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

/// Issue 12: an `llm:tool-call` that cannot be read (cut short, invalid JSON, no tool name) is
/// answered with an `llm:tool-output` error whenever its `tool_call_id` can be recovered, instead
/// of leaving the model waiting; nothing runs, and sent again intact it works. One without a
/// readable id is only counted.
async fn a_tool_call_that_cannot_be_read_gets_an_error_answer(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    let hook = fs.tool_hook.clone().unwrap();
    let error_of =
        |out: &Value| -> Value { serde_json::from_str(out["result"].as_str().unwrap()).unwrap() };

    // Cut short mid-arguments (what a truncated frame looks like on the wire).
    fs.send_text(&format!(
        r#"{{"type":"llm:tool-call","msgid":"m1","call_sid":"{}","hook":"{hook}","data":{{"tool_call_id":"broken-cut","name":"collect_info","args":{{"callback_number":"41681"#,
        fs.call_sid
    ))
    .await;
    let error = error_of(&fs.tool_output("broken-cut").await);
    assert_eq!(error["error"], "validation", "{error}");
    assert_eq!(error["retryable"], true, "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("could not be read (the message was cut short)"),
        "{error}"
    );

    // Invalid JSON inside the arguments.
    fs.send_text(&format!(
        r#"{{"type":"llm:tool-call","msgid":"m2","call_sid":"{}","hook":"{hook}","data":{{"tool_call_id":"broken-json","name":"collect_info","args":{{"concern_description":"x" "pet_name":"Max"}}}}}}"#,
        fs.call_sid
    ))
    .await;
    let error = error_of(&fs.tool_output("broken-json").await);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{error}"
    );

    // Valid JSON without a tool name.
    fs.send(
        &json!({"type": "llm:tool-call", "msgid": "m3", "call_sid": fs.call_sid, "hook": hook,
        "data": {"tool_call_id": "broken-name", "args": {}}}),
    )
    .await;
    let error = error_of(&fs.tool_output("broken-name").await);
    assert!(
        error["message"].as_str().unwrap().contains("no tool name"),
        "{error}"
    );

    // Nothing ran.
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert!(logs.is_empty(), "{logs:?}");

    // Without a readable id there is nothing to answer.
    fs.send_text(r#"{"type":"llm:tool-call","data":{"tool_call_id":42,"name":"#)
        .await;
    fs.expect_silence(Duration::from_millis(300)).await;

    // Sent again intact, it works.
    fs.tool_call(
        "broken-cut",
        "collect_info",
        json!({"callback_number": "4168189171", "concern_description": "limping"}),
    )
    .await;
    let out = fs.tool_output("broken-cut").await;
    assert!(
        out["result"].as_str().unwrap().starts_with("Recorded"),
        "{out}"
    );

    let metrics = reqwest::get(app.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |answered: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("lifeline_malformed_frames_total{"))
            .filter(|l| {
                l.contains("socket=\"jambonz\"") && l.contains(&format!("answered=\"{answered}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // The recorder is the process's: the other engine's run of this test may have counted too.
    assert!(count("true") >= 3.0, "{metrics}");
    assert!(count("false") >= 1.0, "{metrics}");
    fs.close().await;
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

/// What is not a WebSocket upgrade is told what is wrong with it, in HTTP (the upgrade is
/// accepted by lifeline itself, `ingress::ws_accept`, not by axum's extractor).
#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_told_what_is_wrong() {
    let app = TestApp::start(Engine::Sqlite).await;
    let url = app.http_url("/jambonz");
    let client = reqwest::Client::new();
    let upgrade = |req: reqwest::RequestBuilder| {
        req.basic_auth(common::RIVERSIDE_USER, Some(common::RIVERSIDE_PASS))
            .header("Sec-WebSocket-Protocol", "ws.jambonz.org")
    };
    // Credentials first, whatever the request.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = upgrade(client.get(&url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.text().await.unwrap(),
        "the Connection header must include 'upgrade'\n"
    );

    let r = upgrade(client.post(&url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);

    let handshake = |version: &'static str| {
        upgrade(client.get(&url))
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", version)
    };
    let r = handshake("8")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.headers()["sec-websocket-version"], "13");

    let r = handshake("13").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(
        r.text().await.unwrap(),
        "the Sec-WebSocket-Key header is missing\n"
    );

    // RFC 6455 §1.3's sample key, and its accept value.
    let r = handshake("13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 101);
    assert_eq!(
        r.headers()["sec-websocket-accept"],
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(r.headers()["sec-websocket-protocol"], "ws.jambonz.org");
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

// ------------------------------------------------------------------------------------------------
// Issue 11. The fake feature-server does what the real one does (tests/common/mod.rs cites where);
// the relay (tests/common/relay.rs) loses bytes and resets connections.

/// Polls (generous deadline) until `done` holds for the call's row and attempts.
async fn wait_for_call(
    app: &TestApp,
    call_sid: &str,
    what: &str,
    done: impl Fn(&CallRow, &[TransferAttemptRow]) -> bool,
) -> (CallRow, Vec<TransferAttemptRow>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let call = app.call(call_sid).await;
        let attempts = app.store.transfer_attempts(call.id).await.unwrap();
        if done(&call, &attempts) {
            return (call, attempts);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what}; call {call:?}, attempts {attempts:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one critical callback request of a failed transfer, with the caller's number.
async fn the_critical_callback(app: &TestApp, call: &CallRow) -> CallbackRequestRow {
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1, "one callback request: {cbs:?}");
    assert_eq!(cbs[0].urgency_level, "critical");
    assert_eq!(cbs[0].reason, "failed_transfer");
    cbs[0].clone()
}

/// Item 1: When Ultravox refuses to create the call, the llm actionHook's completion reason is
/// `connection failure - ${err}` (`lib/tasks/llm/llms/ultravox_s2s.js`, `_startListening`'s
/// catch, with `createCall` throwing `Ultravox Error registering call:${statusCode} -
/// ${data.detail}`), not the bare phrase; other llm tasks report the other failures in their
/// own case and words. Every form rings the on-call team instead of running the `hangup`.
async fn ultravox_failing_to_start_the_call_rings_the_on_call_team(engine: Engine) {
    let app = TestApp::start(engine).await;
    for (i, reason) in [
        "connection failure - Error: Ultravox Error registering call:503 - Service Unavailable",
        "connection failure - Error: Ultravox Error registering call:401 - Invalid API key",
        "Connection Failure - SyntaxError: Unexpected token '<', \"<html>\" is not valid JSON",
        "client error calling function",
    ]
    .into_iter()
    .enumerate()
    {
        let call_sid = format!("uv-start-failure-{i}");
        let mut fs = FakeFeatureServer::connect_as(
            &app.ws_url(),
            common::RIVERSIDE_USER,
            common::RIVERSIDE_PASS,
            &call_sid,
        )
        .await
        .unwrap();
        fs.session_new().await;
        let ack = fs.llm_complete(reason).await;
        let verbs = ack["data"]
            .as_array()
            .unwrap_or_else(|| panic!("{reason:?} was acked empty: the caller hears nothing"));
        assert_eq!(verb_names(verbs), ["say", "dial"], "{reason:?}");
        assert_eq!(verbs[1]["target"][0]["number"], "+15557654321");
        let call = app.call(&call_sid).await;
        let attempts = app.store.transfer_attempts(call.id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert!(
            attempts[0].reason.contains(reason),
            "{}",
            attempts[0].reason
        );
        // Nobody picks up: the caller is called back.
        fs.dial_result("no-answer", 487).await;
        fs.dial_result("no-answer", 487).await;
        let call = app.call(&call_sid).await;
        assert_eq!(
            the_critical_callback(&app, &call).await.callback_number,
            "+15083084809"
        );
        fs.call_status("completed", Some(40)).await;
        fs.close().await;
    }
}

/// Item 2: lifeline wrote its session:new ack, the socket died before the feature-server read it
/// (the relay swallows the ack, then resets the connection). The feature-server moves the
/// unanswered session:new onto its session:reconnect, so that ack must be the application
/// (the fake rejects the call with 480 otherwise, as `lib/middleware.js` does).
async fn a_lost_session_ack_is_recovered_by_the_reconnect_that_carries_it(engine: Engine) {
    let app = TestApp::start(engine).await;
    let relay = Relay::start(app.server.addr).await;
    let url = format!("ws://{}/jambonz", relay.addr());
    let mut fs = FakeFeatureServer::connect(&url, common::RIVERSIDE_USER, common::RIVERSIDE_PASS)
        .await
        .unwrap();
    relay.set(Fault::SwallowToClient);
    fs.session_new_unacked().await;
    relay
        .wait_swallowed(&[r#""type":"ack""#, r#""verb":"llm""#])
        .await;
    relay.reset();
    relay.set(Fault::None);

    let ack = fs.reconnect().await;
    let verbs = ack["data"].as_array().unwrap();
    assert_eq!(verb_names(verbs), ["answer", "llm", "hangup"]);
    assert_eq!(verbs[1]["toolHook"], "/tool-call");
    // The call runs its agent: its tools work on the new socket.
    fs.tool_call(
        "inv-after-lost-ack",
        "collect_info",
        json!({"callback_number": "4168189171", "concern_description": "vomiting twice"}),
    )
    .await;
    let out = fs.tool_output("inv-after-lost-ack").await;
    assert!(
        out["result"].as_str().unwrap().starts_with("Recorded"),
        "{out}"
    );
    let call = app.call(&fs.call_sid).await;
    assert!(call.app_started_at.is_some());
    fs.call_status("completed", Some(30)).await;
    fs.close().await;
}

/// Item 2: A frame over Jambonz's 24 KiB would make the feature-server drop the socket and reject the
/// call, so it is not sent, and not counted as sent: the session ack that does not fit (here
/// because of a call_sid long enough to push it over) is replaced by one that rings the on-call
/// team, and that one is what marks the call started.
async fn an_application_too_large_for_one_frame_is_never_counted_as_sent(engine: Engine) {
    let app = TestApp::start(engine).await;
    let call_sid = format!("oversized-{}", "x".repeat(30 * 1024));
    let mut fs = FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        &call_sid,
    )
    .await
    .unwrap();
    // The fake asserts every frame it receives is under 24 KiB.
    let ack = fs.session_new().await;
    let verbs = ack["data"].as_array().expect("an application");
    assert_eq!(
        verb_names(verbs),
        ["say", "dial"],
        "the team instead of the agent"
    );
    // Marked once the fallback ack is on the wire.
    let (call, _) = wait_for_call(&app, &call_sid, "marked started", |c, _| {
        c.app_started_at.is_some()
    })
    .await;
    let attempts = app.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    fs.dial_progress("ringing", 180).await;
    fs.caller_hangs_up().await;
    let (call, _) = wait_for_call(&app, &call_sid, "transfer failed", |c, _| {
        c.transfer_outcome.is_some()
    })
    .await;
    the_critical_callback(&app, &call).await;
}

/// Item 3: The caller hangs up while the on-call phone rings. The real order
/// (`lib/session/call-session.js` `_callerHungup` → `_callReleased`; `lib/tasks/dial.js`
/// `exec` → `performAction` after the kill): `call:status` completed, then the dial's
/// actionHook with `call_status: completed`, `call_termination_by: caller` and the last
/// provisional `dial_call_status`. Nobody is left to connect: no secondary, the attempt fails and
/// the critical callback request for the caller's number is written.
async fn the_caller_hanging_up_while_on_call_rings_gets_a_callback_not_a_secondary(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    let call_sid = fs.call_sid.clone();
    start_transfer(&mut fs, "inv-hangup-ringing").await;
    fs.dial_progress("ringing", 180).await;
    fs.dial_progress("early-media", 183).await;
    fs.caller_hangs_up().await;

    let (call, attempts) = wait_for_call(&app, &call_sid, "transfer outcome", |c, _| {
        c.transfer_outcome.is_some()
    })
    .await;
    assert_eq!(call.transfer_outcome.as_deref(), Some("failed"));
    assert!(call.ended_at.is_some());
    assert_eq!(attempts.len(), 1, "no secondary for a caller who is gone");
    assert_eq!(attempts[0].target_role, "primary");
    assert_eq!(attempts[0].status, "failed");
    assert_eq!(attempts[0].dial_call_status.as_deref(), Some("early-media"));
    let cb = the_critical_callback(&app, &call).await;
    assert_eq!(cb.callback_number, "+14168189171");
    assert_eq!(cb.caller_name.as_deref(), Some("Jeremy Greven"));
    assert_eq!(cb.transfer_attempt_id, Some(attempts[0].id));
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &call_sid)
        .await
        .unwrap();
    assert_eq!(logs[0].status, "failed");
}

/// Item 4: The transfer's answer and its redirect were written to a socket that died before the
/// feature-server read them (the relay swallows them, then resets). `llm:tool-call` is never
/// acked nor sent again (`ws-requestor.js` `MTYPE_WANTS_ACK`), so only lifeline can recover
/// them: after acking the reconnect, it sends them again, the answer first.
async fn answers_lost_with_a_dying_socket_are_sent_again_on_reconnect(engine: Engine) {
    let app = TestApp::start(engine).await;
    let relay = Relay::start(app.server.addr).await;
    let url = format!("ws://{}/jambonz", relay.addr());
    let mut fs = FakeFeatureServer::connect(&url, common::RIVERSIDE_USER, common::RIVERSIDE_PASS)
        .await
        .unwrap();
    fs.session_new().await;
    relay.set(Fault::SwallowToClient);
    fs.tool_call(
        "inv-lost",
        "transferFromAiTriageWithMetadata",
        transfer_args(),
    )
    .await;
    relay
        .wait_swallowed(&["llm:tool-output", "inv-lost", r#""command":"redirect""#])
        .await;
    relay.reset();
    relay.set(Fault::None);

    fs.reconnect().await;
    let first = fs.next().await;
    assert_eq!(
        first["command"], "llm:tool-output",
        "the answer first: {first}"
    );
    assert_eq!(first["tool_call_id"], "inv-lost");
    assert!(
        first["data"]["result"]
            .as_str()
            .unwrap()
            .contains("Transferring"),
        "{first}"
    );
    let second = fs.next().await;
    assert_eq!(second["command"], "redirect", "then the dial: {second}");
    let verbs = second["data"].as_array().unwrap();
    assert_eq!(verb_names(verbs), ["say", "dial"]);
    assert_eq!(verbs[1]["target"][0]["number"], "+15557654321");

    // Jambonz runs it: the llm ends, the on-call person answers.
    let ack = fs.llm_complete("normal conversation end").await;
    assert!(ack.get("data").is_none());
    assert_eq!(
        verb_names(&fs.dial_result("completed", 200).await),
        ["hangup"]
    );
    let call = app.call(&fs.call_sid).await;
    assert_eq!(call.transfer_outcome.as_deref(), Some("succeeded"));
    assert_eq!(app.store.transfer_attempts(call.id).await.unwrap().len(), 1);
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].status, "success");
    fs.call_status("completed", Some(200)).await;
    fs.close().await;
}

/// Item 4: The call ends (Jambonz reports it and closes with 1000) while its transfer still waits for
/// a dial outcome that will never come. The attempt fails and the caller is called back.
async fn a_call_that_ends_before_its_dial_reports_still_gets_its_callback(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    let call_sid = fs.call_sid.clone();
    start_transfer(&mut fs, "inv-unreported").await;
    fs.call_status("completed", Some(50)).await;
    fs.close().await;
    let (call, attempts) = wait_for_call(&app, &call_sid, "attempt ended", |_, a| {
        a.iter().all(|a| a.status != "dialing")
    })
    .await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, "failed");
    assert_eq!(call.transfer_outcome.as_deref(), Some("failed"));
    let cb = the_critical_callback(&app, &call).await;
    assert_eq!(cb.callback_number, "+14168189171");
    assert_eq!(cb.transfer_attempt_id, Some(attempts[0].id));
}

/// Item 5: The feature-server closes with 1000 at call end (`_clearResources` →
/// `requestor.close()`) and must get its 1000 back, not a dropped connection (1006).
async fn the_close_handshake_is_answered_with_jambonzs_own_code(engine: Engine) {
    let app = TestApp::start(engine).await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    fs.call_status("completed", Some(12)).await;
    assert_eq!(fs.close_handshake().await, Some(1000));
}

/// Item 6 and issue 12: The transfer's durable write is slower than the model's tool deadline
/// (the database is busy: the test holds its lock). Past the write budget the journal takes
/// the write: the model is answered in time, the redirect that dials follows, and once the
/// lock is gone the journal is replayed and the attempt and the outcome are in the database.
async fn a_transfer_slower_than_its_answer_deadline_still_reaches_its_dial(engine: Engine) {
    let app = TestApp::start_with_limits(engine, "tool_timeout_ms = 300").await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    // The socket marks the call started after its ack: on SQLite that write, held up by the
    // lock below, would hold up the socket (and the tool call on it) for the busy timeout.
    wait_for_call(&app, &fs.call_sid.clone(), "call marked started", |c, _| {
        c.app_started_at.is_some()
    })
    .await;
    let lock = DbLock::hold(&app.db.url, "tool_call_logs").await;
    fs.tool_call("inv-slow", "transfer", transfer_args()).await;
    let out = fs.tool_output("inv-slow").await;
    let answer = out["result"].as_str().unwrap();
    assert!(!answer.contains("\"error\""), "answered in time: {answer}");
    assert!(app.server.state.journal.status().journaling);
    let verbs = fs.redirect().await;
    assert_eq!(verb_names(&verbs), ["say", "dial"]);
    lock.release().await;
    app.journal_drained().await;

    let call = app.call(&fs.call_sid).await;
    let attempts = app.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, "dialing");
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    assert_eq!(logs[0].status, "success", "the real outcome is recorded");
    fs.llm_complete("normal conversation end").await;
    fs.dial_result("completed", 200).await;
    fs.call_status("completed", Some(80)).await;
    fs.close().await;
}

/// Item 6: An HTTP tool's client gives up (Ultravox's own timeout, a dropped connection) while the
/// tool's durable write waits; axum drops the handler. The invocation still completes and is
/// recorded, with its callback request.
async fn an_http_tool_call_outlives_the_client_that_gave_up(engine: Engine) {
    const KEY: &str = "test-tool-key-0123456789";
    let app =
        TestApp::start_with_sections(engine, &format!("[ultravox]\ntool_api_keys = [\"{KEY}\"]"))
            .await;
    let mut fs = app.feature_server().await;
    fs.session_new().await;
    // Jambonz reports the Ultravox call it created (snake-cased createCall event).
    let mut event = common::fixture("llm:event", None);
    event["msgid"] = json!(common::msgid());
    event["call_sid"] = json!(fs.call_sid);
    event["hook"] = json!("/llm-event");
    event["data"] =
        json!({"type": "createCall", "call_id": "5d5b1f1e-uv-call", "join_url": "wss://x"});
    fs.send(&event).await;
    wait_for_call(
        &app,
        &fs.call_sid.clone(),
        "ultravox call linked",
        |c, _| c.ultravox_call_id.is_some(),
    )
    .await;

    let lock = DbLock::hold(&app.db.url, "tool_call_logs").await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(app.http_url("/twilio/collectCallerInfo"))
        .header("X-API-Key", KEY)
        .header("X-Ultravox-Call-Id", "5d5b1f1e-uv-call")
        .json(&json!({
            "callback_number": "4168189171",
            "first_name": "Jeremy",
            "last_name": "Greven",
            "concern_description": "ate chocolate",
        }))
        .send()
        .await
        .expect_err("the client gives up while the write waits");
    assert!(gave_up.is_timeout(), "{gave_up}");
    lock.release().await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let logs = loop {
        let logs = app
            .store
            .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
            .await
            .unwrap();
        if logs.iter().any(|l| l.status == "success") {
            break logs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recorded: {logs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].canonical_tool, "collect_info");
    let call = app.call(&fs.call_sid).await;
    let cbs = app.callbacks_of(call.id).await;
    assert_eq!(cbs.len(), 1);
    assert_eq!(cbs[0].tool_call_log_id, Some(logs[0].id));
    fs.call_status("completed", Some(20)).await;
    fs.close().await;
}

/// Item 6: A transfer whose dial never reports (its outcome lost, the feature-server gone quiet) is
/// ended by the reconciler once its ring timeout and the margin have passed: failed, with the
/// critical callback request. The call is no longer stuck "already being transferred".
async fn the_reconciler_ends_a_transfer_nobody_reports_and_the_call_can_transfer_again(
    engine: Engine,
) {
    let toml = common::config_toml("[reconciler]\ninterval_ms = 100\nmargin_ms = 500")
        .replace("ring_timeout_secs = 20", "ring_timeout_secs = 5");
    let app = TestApp::start_on(TestDb::new(engine).await, &toml).await;
    let mut fs = app.feature_server().await;
    let call_sid = fs.call_sid.clone();
    start_transfer(&mut fs, "inv-stuck").await;
    fs.tool_call("inv-again", "transfer", transfer_args()).await;
    let out = fs.tool_output("inv-again").await;
    assert!(
        out["result"]
            .as_str()
            .unwrap()
            .contains("already being transferred"),
        "{out}"
    );

    // The call is read before its attempts: wait for both halves of the reconciler's commit.
    let (call, attempts) = wait_for_call(&app, &call_sid, "reconciled", |c, a| {
        a.iter().all(|a| a.status != "dialing") && c.transfer_outcome.is_some()
    })
    .await;
    assert_eq!(attempts[0].status, "failed");
    assert!(
        attempts[0]
            .failure_reason
            .as_deref()
            .unwrap()
            .contains("never reported"),
        "{:?}",
        attempts[0].failure_reason
    );
    assert_eq!(call.transfer_outcome.as_deref(), Some("failed"));
    let cb = the_critical_callback(&app, &call).await;
    assert_eq!(cb.transfer_attempt_id, Some(attempts[0].id));

    // Free again: a new transfer starts a new attempt.
    fs.tool_call("inv-third", "transfer", transfer_args()).await;
    let out = fs.tool_output("inv-third").await;
    assert!(
        out["result"].as_str().unwrap().contains("Transferring"),
        "{out}"
    );
    fs.redirect().await;
    assert_eq!(
        verb_names(&fs.dial_result("completed", 200).await),
        ["hangup"]
    );
    fs.call_status("completed", Some(300)).await;
    fs.close().await;
}

/// Item 6: The process dies in the middle of a transfer's effect (SIGKILL while the attempt's insert
/// is stalled by a test trigger): the invocation is logged `pending` and no attempt exists.
/// Jambonz reconnects to another instance, whose reconciler ends the invocation as failed and
/// writes the critical callback request; the model gets that answer on the new socket.
async fn a_crash_mid_transfer_is_settled_by_another_instance(engine: Engine) {
    let db = TestDb::new(engine).await;
    if engine == Engine::Postgres {
        // A backend whose client died must notice it even while it waits (as on a real host,
        // where the stalled statement would not be a sleep): otherwise the stalled insert
        // outlives the crash and commits on its own.
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let name = db.url.rsplit('/').next().unwrap().to_string();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {name} SET client_connection_check_interval = 100"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let mut first = LifelineProcess::serve(&db.url, &common::config_toml("")).await;
    stall_transfer_attempts(&db.url, true).await;
    let mut fs = FakeFeatureServer::connect(
        &first.ws_url(),
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
    )
    .await
    .unwrap();
    fs.session_new().await;
    fs.tool_call("inv-crash", "transfer", transfer_args()).await;
    let store = db.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "never logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.crash().await;
    stall_transfer_attempts(&db.url, false).await;

    // Jambonz reconnects to the instance that is left, at once: the invocation is still
    // pending there, until its reconciler ends it; the model then hears what became of its
    // transfer, on the new socket.
    let toml = common::config_toml("[reconciler]\ninterval_ms = 100\nmargin_ms = 2000");
    let app = TestApp::start_on(db, &toml).await;
    let ack = fs.reconnect_to(&app.ws_url()).await;
    assert_eq!(
        verb_names(ack["data"].as_array().unwrap()),
        ["answer", "llm", "hangup"]
    );
    let out = fs.tool_output("inv-crash").await;
    assert!(
        out["result"].as_str().unwrap().contains("interrupted"),
        "{out}"
    );

    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, &fs.call_sid)
        .await
        .unwrap();
    let log = &logs[0];
    assert_eq!(log.status, "failed");
    assert_eq!(log.error_kind.as_deref(), Some("internal"));
    let call = app.call(&fs.call_sid).await;
    assert!(
        app.store
            .transfer_attempts(call.id)
            .await
            .unwrap()
            .is_empty()
    );
    let cb = the_critical_callback(&app, &call).await;
    assert_eq!(cb.callback_number, "+14168189171");
    assert_eq!(cb.tool_call_log_id, Some(log.id));
    assert_eq!(cb.pet_name.as_deref(), Some("Max"));
    fs.call_status("completed", Some(70)).await;
    fs.close().await;
}

/// Makes inserts into `transfer_attempts` stall for several seconds (or stops that): the effect
/// of a transfer is then caught between its logged invocation and its attempt.
async fn stall_transfer_attempts(url: &str, stall: bool) {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
        // SQLite has no sleep: a join of the schema table with itself keeps the insert busy.
        let sql = if stall {
            "CREATE TRIGGER test_stall BEFORE INSERT ON transfer_attempts BEGIN \
             SELECT count(*) FROM sqlite_master a, sqlite_master b, sqlite_master c, \
             sqlite_master d, sqlite_master e, sqlite_master f, sqlite_master g; END"
        } else {
            "DROP TRIGGER test_stall"
        };
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let sql = if stall {
            "CREATE FUNCTION test_stall() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM pg_sleep(30); RETURN NEW; END $$; \
             CREATE TRIGGER test_stall BEFORE INSERT ON transfer_attempts \
             FOR EACH ROW EXECUTE FUNCTION test_stall()"
        } else {
            "DROP TRIGGER test_stall ON transfer_attempts; DROP FUNCTION test_stall()"
        };
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    }
}

/// Item 7: A deploy: SIGTERM to the real binary while one call's transfer is in flight (its durable
/// write waits on a busy database) and another call is just talking. The process stops
/// accepting; the transfer completes, is recorded, and its answer and redirect reach the
/// caller's socket; then both sockets close with 1001 (handshake completed) so Jambonz
/// reconnects elsewhere; the process exits 0 within its grace period. Another instance then
/// takes both calls on.
async fn sigterm_lets_the_transfer_in_flight_finish_then_closes_sockets_with_1001(engine: Engine) {
    const GRACE: Duration = Duration::from_secs(10);
    let db = TestDb::new(engine).await;
    let toml = common::config_toml(&format!("[shutdown]\ngrace_secs = {}", GRACE.as_secs()));
    let mut lifeline = LifelineProcess::serve(&db.url, &toml).await;
    let url = lifeline.ws_url();
    let mut caller = FakeFeatureServer::connect_as(
        &url,
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        "deploy-transfer",
    )
    .await
    .unwrap();
    caller.session_new().await;
    let mut other = FakeFeatureServer::connect_as(
        &url,
        common::HILLSIDE_USER,
        common::HILLSIDE_PASS,
        "deploy-talking",
    )
    .await
    .unwrap();
    let mut msg = other.session_message("session:new");
    msg["data"]["to"] = json!("+15083728300");
    msg["data"]["account_sid"] = json!("another-account");
    other.request(msg).await;

    let lock = DbLock::hold(&db.url, "tool_call_logs").await;
    caller
        .tool_call(
            "inv-deploy",
            "transferFromAiTriageWithMetadata",
            transfer_args(),
        )
        .await;
    lifeline.terminate();
    let signalled = tokio::time::Instant::now();
    lifeline.wait_for_log("shutting down").await;
    // No new connections while the tool call finishes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(lifeline.addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.release().await;

    let out = caller.tool_output("inv-deploy").await;
    assert!(
        out["result"].as_str().unwrap().contains("Transferring"),
        "{out}"
    );
    let verbs = caller.redirect().await;
    assert_eq!(verb_names(&verbs), ["say", "dial"]);
    assert_eq!(caller.expect_close().await, Some(1001));
    assert_eq!(other.expect_close().await, Some(1001));
    let status = lifeline.exit_status(GRACE + Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        signalled.elapsed() < GRACE,
        "exited {:?} after SIGTERM, beyond its {GRACE:?} grace period",
        signalled.elapsed()
    );

    // Recorded before the process went.
    let app = TestApp::start_on(db, &common::config_toml("")).await;
    let logs = app
        .store
        .tool_call_logs_for_call(Platform::Jambonz, "deploy-transfer")
        .await
        .unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].status, "success");
    let call = app.call("deploy-transfer").await;
    let attempts = app.store.transfer_attempts(call.id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, "dialing");

    // Jambonz reconnects to the other instance, and the calls go on there. The llm's
    // actionHook for the redirect was queued while the socket was down (`ws-requestor.js`
    // queues messages until the reconnect's ack); the answer and redirect sent again meanwhile
    // are harmless repeats.
    caller.reconnect_to(&app.ws_url()).await;
    caller.llm_complete("normal conversation end").await;
    assert_eq!(
        verb_names(&caller.dial_result("completed", 200).await),
        ["hangup"]
    );
    caller.call_status("completed", Some(120)).await;
    caller.close().await;
    other.reconnect_to(&app.ws_url()).await;
    other.call_status("completed", Some(60)).await;
    other.close().await;
    let call = app.call("deploy-transfer").await;
    assert_eq!(call.transfer_outcome.as_deref(), Some("succeeded"));
}

/// The relay itself (the tests above rely on it, and issue 12 will put it in front of
/// PostgreSQL): it carries, swallows toward the client, black-holes, resets and cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_relay_does_what_it_says() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An echo server.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let relay = Relay::start(target).await;
    let roundtrip = |fault: Fault| {
        let relay = &relay;
        async move {
            relay.set(fault);
            let mut s = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .map(|_| buf)
        }
    };
    assert_eq!(roundtrip(Fault::None).await, Some(*b"ping"));
    assert_eq!(
        roundtrip(Fault::Latency(Duration::from_millis(20))).await,
        Some(*b"ping")
    );
    assert_eq!(roundtrip(Fault::SwallowToClient).await, None);
    assert!(
        relay.swallowed_text().contains("ping"),
        "kept what it swallowed"
    );
    assert_eq!(roundtrip(Fault::BlackHole).await, None);

    // A reset aborts open connections; new ones are carried.
    relay.set(Fault::None);
    let mut open = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    open.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();
    relay.reset();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
        .await
        .expect("the reset ends the connection");
    assert!(
        matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a reset, not a clean end: {ended:?}"
    );
    assert_eq!(roundtrip(Fault::None).await, Some(*b"ping"));

    // A cut closes connections and refuses new ones their data.
    assert_eq!(roundtrip(Fault::Cut).await, None);
}
