//! Hostile load, black box: connections that never finish a request (no credentials needed to
//! open one) must be closed and must never starve a call of descriptors; the soft open-files
//! limit is raised at start.
//!
//! "Waits" here poll for a state with a generous deadline; the figures printed (how long the
//! valid call waited) are measurements, not assertions.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::process::LifelineProcess;
use common::{Engine, FakeFeatureServer, TestApp, TestDb};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

on_both_engines!(
    half_open_connections_time_out_and_a_call_is_still_answered,
    with_a_hard_limit_of_1024_the_oldest_half_open_connections_make_room_for_a_call,
    half_open_connections_from_one_address_are_capped,
    a_burst_on_one_call_is_refused_in_memory_and_other_calls_are_answered,
    out_of_descriptors_the_oldest_half_open_connections_are_closed,
);

const TOOL_KEY: &str = "riverside-tool-key-0123456789";
const HALF_OPEN: usize = 1100;

/// The test configuration with `server` settings and an HTTP tool key for Riverside.
fn config(server: &str) -> String {
    common::config_toml(&format!("[server]\n{server}\n")).replacen(
        "numbers = [\"+15083728299\"]",
        &format!("numbers = [\"+15083728299\"]\ntool_api_key = \"{TOOL_KEY}\""),
        1,
    )
}

/// This test process opens more than a thousand sockets: its own soft limit goes up first.
fn raise_own_limit() {
    let soft = rlimit::increase_nofile_limit(u64::MAX).expect("raise the test's open files limit");
    assert!(
        soft >= 4 * HALF_OPEN as u64,
        "this test needs an open files limit of at least {} (the hard limit is {soft})",
        4 * HALF_OPEN
    );
}

/// Opens `n` connections from `from` (any 127.x address is loopback on Linux) that never finish
/// a request: some send nothing, some half a request head and, `with_bodies`, some a head whose
/// body never comes.
async fn half_open(addr: SocketAddr, from: IpAddr, n: usize, with_bodies: bool) -> Vec<TcpStream> {
    let kinds = if with_bodies { 3 } else { 2 };
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(from, 0)).unwrap();
        let mut stream = socket.connect(addr).await.expect("connect");
        match i % kinds {
            0 => {}
            1 => stream
                .write_all(b"POST /twilio/incoming HTTP/1.1\r\nHost: lifeline\r\nContent-Le")
                .await
                .unwrap(),
            _ => stream
                .write_all(
                    b"POST /ultravox/tools/collect_info HTTP/1.1\r\nHost: lifeline\r\n\
                      Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ca",
                )
                .await
                .unwrap(),
        }
        sockets.push(stream);
    }
    sockets
}

/// Waits until the server has closed (EOF or reset) at least `target` of `sockets`, or 60 s
/// have passed; how many it closed.
async fn wait_closed(sockets: Vec<TcpStream>, target: usize) -> usize {
    let closed = Arc::new(AtomicUsize::new(0));
    let reads: Vec<_> = sockets
        .into_iter()
        .map(|mut s| {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        // A response (a body that never came gets a 400) before the close.
                        Ok(_) => {}
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while closed.load(Ordering::SeqCst) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for read in reads {
        read.abort();
    }
    closed.load(Ordering::SeqCst)
}

/// A valid call while the half-open connections are held: a Jambonz call (session:new acked,
/// a collect_info answered) and an HTTP tool call. Returns how long it took.
async fn valid_calls(ws_url: &str, http_base: &str, call_sid: &str) -> Duration {
    let started = Instant::now();
    let mut fs = FakeFeatureServer::connect_as(
        ws_url,
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        call_sid,
    )
    .await
    .expect("a call connects");
    let out = fs
        .collect_info_call(&format!("{call_sid}-inv"), "my cat is limping")
        .await;
    assert!(
        out["result"].as_str().unwrap().starts_with("Recorded"),
        "{out}"
    );
    let response = reqwest::Client::new()
        .post(format!("{http_base}/ultravox/tools/collect_info"))
        .header("X-API-Key", TOOL_KEY)
        .json(&json!({
            "callback_number": "(416) 818-9171",
            "concern_description": format!("message during {call_sid}"),
        }))
        .send()
        .await
        .expect("the HTTP tool answers");
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    let took = started.elapsed();
    fs.close().await;
    took
}

/// A counter's value in `/metrics` (0 when absent).
async fn metric(http_base: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{http_base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The soft and hard "Max open files" of a process.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// The soft limit a container often starts with is raised to the hard limit (read from the
/// process itself); 1,100 connections that never finish their request (a third say nothing,
/// a third stop mid-head, a third never send their whole body) are all closed by the header and
/// body timeouts, while a Jambonz call and an HTTP tool call are answered.
async fn half_open_connections_time_out_and_a_call_is_still_answered(engine: Engine) {
    raise_own_limit();
    let db = TestDb::new(engine).await;
    let toml = config(
        "request_header_timeout_secs = 2\nrequest_body_timeout_secs = 2\n\
         max_pending_per_address = 0",
    );
    let mut lifeline = LifelineProcess::serve_limited(&db.url, &toml, Some("-S -n 1024")).await;
    let (soft, hard) = open_files_limits(lifeline.pid());
    assert!(
        hard > 1024,
        "the hard limit ({hard}) must exceed 1024 for this test"
    );
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");
    let raised = lifeline
        .logged("open files limit raised")
        .expect("the raise is logged")
        .clone();
    assert_eq!(raised["fields"]["soft_before"], 1024, "{raised}");
    assert_eq!(raised["fields"]["soft_after"], soft, "{raised}");
    assert_eq!(raised["fields"]["hard"], hard, "{raised}");

    let http = format!("http://{}", lifeline.addr);
    let sockets = half_open(lifeline.addr, [127, 0, 0, 1].into(), HALF_OPEN, true).await;
    let took = valid_calls(&lifeline.ws_url(), &http, "hostile-timeout").await;
    println!(
        "{engine:?}: with {HALF_OPEN} half-open connections held, the valid Jambonz call and \
         HTTP tool call took {took:?}"
    );
    let closed = wait_closed(sockets, HALF_OPEN).await;
    assert_eq!(closed, HALF_OPEN, "every half-open connection is closed");
    assert!(metric(&http, "lifeline_connections_timed_out_total").await >= (HALF_OPEN / 3) as f64);

    lifeline.terminate();
    let status = lifeline.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A host whose hard limit is 1024 (it cannot be raised): the connection cap derived from it
/// (1024 − 512) is reached by 1,100 half-open connections from five addresses, and the ones
/// that waited longest are closed to make room, long before their header timeout; a new call
/// is answered.
async fn with_a_hard_limit_of_1024_the_oldest_half_open_connections_make_room_for_a_call(
    engine: Engine,
) {
    raise_own_limit();
    let db = TestDb::new(engine).await;
    // Only eviction can close them within the test's deadline.
    let toml = config("request_header_timeout_secs = 300");
    let mut lifeline = LifelineProcess::serve_limited(&db.url, &toml, Some("-n 1024")).await;
    assert_eq!(open_files_limits(lifeline.pid()), (1024, 1024));
    // Logged by the accept loop, which may start after "lifeline serving".
    let limits = match lifeline.logged("connection limits") {
        Some(line) => line.clone(),
        None => lifeline.wait_for_log("connection limits").await,
    };
    assert_eq!(limits["fields"]["max_connections"], 512, "{limits}");

    let http = format!("http://{}", lifeline.addr);
    let mut sockets = Vec::new();
    for last in 2..7u8 {
        sockets.extend(
            half_open(
                lifeline.addr,
                [127, 0, 0, last].into(),
                HALF_OPEN / 5,
                false,
            )
            .await,
        );
    }
    let took = valid_calls(&lifeline.ws_url(), &http, "hostile-cap").await;
    println!(
        "{engine:?}: at the connection cap with {HALF_OPEN} half-open connections, the valid \
         Jambonz call and HTTP tool call took {took:?}"
    );
    let closed = wait_closed(sockets, HALF_OPEN - 512).await;
    assert!(
        closed >= HALF_OPEN - 512,
        "only {closed} of {HALF_OPEN} half-open connections were closed"
    );
    assert!(
        metric(
            &http,
            "lifeline_connections_evicted_total{reason=\"total\"}"
        )
        .await
            >= (HALF_OPEN - 512) as f64
    );
    lifeline.terminate();
    let status = lifeline.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A `max_connections` set above what the process can open (hard limit 1024): `accept` runs out
/// of descriptors, and instead of waiting, the connections that waited longest are closed so a
/// call still gets in.
async fn out_of_descriptors_the_oldest_half_open_connections_are_closed(engine: Engine) {
    raise_own_limit();
    let db = TestDb::new(engine).await;
    let toml = config(
        "request_header_timeout_secs = 300\nmax_connections = 4000\n\
         max_pending_connections = 4000\nmax_pending_per_address = 0",
    );
    let mut lifeline = LifelineProcess::serve_limited(&db.url, &toml, Some("-n 1024")).await;
    let http = format!("http://{}", lifeline.addr);
    let sockets = half_open(lifeline.addr, [127, 0, 0, 1].into(), HALF_OPEN, false).await;
    let took = valid_calls(&lifeline.ws_url(), &http, "hostile-emfile").await;
    println!(
        "{engine:?}: out of descriptors with {HALF_OPEN} half-open connections, the valid \
         Jambonz call and HTTP tool call took {took:?}"
    );
    // Each time `accept` finds no descriptor, 16 waiting connections are closed.
    let evicted = metric(
        &http,
        "lifeline_connections_evicted_total{reason=\"descriptors\"}",
    )
    .await as usize;
    assert!(evicted >= 16, "{evicted} evicted");
    let closed = wait_closed(sockets, evicted).await;
    assert!(
        closed >= evicted,
        "{closed} half-open connections were closed, {evicted} evicted"
    );
    lifeline.terminate();
    let status = lifeline.exit_status(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// 1,100 half-open connections from one address keep at most `max_pending_per_address` (the
/// default, 256) open; a call from that same address (a proxy's) is still answered.
async fn half_open_connections_from_one_address_are_capped(engine: Engine) {
    raise_own_limit();
    let app = TestApp::start_on(
        TestDb::new(engine).await,
        &config("request_header_timeout_secs = 300"),
    )
    .await;
    let sockets = half_open(app.server.addr, [127, 0, 0, 1].into(), HALF_OPEN, false).await;
    let http = app.http_url("");
    let took = valid_calls(&app.ws_url(), &http, "hostile-address").await;
    println!(
        "{engine:?}: with {HALF_OPEN} half-open connections from its own address, the valid \
         Jambonz call and HTTP tool call took {took:?}"
    );
    let closed = wait_closed(sockets, HALF_OPEN - 256).await;
    assert!(
        closed >= HALF_OPEN - 256,
        "only {closed} of {HALF_OPEN} half-open connections were closed"
    );
    assert!(
        metric(
            &http,
            "lifeline_connections_evicted_total{reason=\"address\"}"
        )
        .await
            >= (HALF_OPEN - 256) as f64
    );
}

/// Issue 12: 1,000 tool calls at once on one call socket. What the per-call limit refuses is
/// refused in memory (no log row, no database connection: one `tool_calls_refused` event on the
/// call's timeline counts them), what was admitted runs and is logged once, a repeat of an
/// admitted call gets its original's answer, and another call's tool calls meanwhile are
/// answered normally.
async fn a_burst_on_one_call_is_refused_in_memory_and_other_calls_are_answered(engine: Engine) {
    const BURST: usize = 1000;
    let app = TestApp::start(engine).await;
    let mut burst = FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        "burst-call",
    )
    .await
    .unwrap();
    burst.session_new().await;
    let mut quiet = FakeFeatureServer::connect_as(
        &app.ws_url(),
        common::RIVERSIDE_USER,
        common::RIVERSIDE_PASS,
        "quiet-call",
    )
    .await
    .unwrap();
    quiet.session_new().await;
    let args = |i: usize| json!({"callback_number": "4168189171", "concern_description": format!("burst {i}")});

    let (_, quiet_took) = tokio::join!(
        async {
            for i in 0..BURST {
                burst
                    .tool_call(&format!("burst-{i}"), "collect_info", args(i))
                    .await;
            }
        },
        async {
            let mut slowest = Duration::ZERO;
            for i in 0..5 {
                let started = Instant::now();
                quiet
                    .tool_call(&format!("quiet-{i}"), "collect_info", args(i))
                    .await;
                let out = quiet.tool_output(&format!("quiet-{i}")).await;
                slowest = slowest.max(started.elapsed());
                assert!(
                    out["result"].as_str().unwrap().starts_with("Recorded"),
                    "the other call is answered: {out}"
                );
            }
            slowest
        }
    );
    println!(
        "{engine:?}: during a burst of {BURST} tool calls on one call, the slowest of the other call's 5 tool calls took {quiet_took:?}"
    );

    let mut admitted = Vec::new();
    let mut refused = Vec::new();
    for i in 0..BURST {
        let id = format!("burst-{i}");
        let out = burst.tool_output(&id).await;
        let text = out["result"].as_str().unwrap();
        if text.starts_with("Recorded") {
            admitted.push((id, text.to_string()));
        } else {
            let error: Value = serde_json::from_str(text).unwrap();
            assert_eq!(error["error"], "rate_limited", "{error}");
            refused.push(id);
        }
    }
    assert_eq!(admitted.len() + refused.len(), BURST);
    println!(
        "{engine:?}: {} admitted, {} refused in memory",
        admitted.len(),
        refused.len()
    );
    assert!(
        (1..=30).contains(&admitted.len()),
        "{} admitted (the per-call limit is 30)",
        admitted.len()
    );

    // Only admitted calls reached the database: one row each, all succeeded (a write the
    // database did not commit within its budget is in the journal until it is replayed).
    app.journal_drained().await;
    let logs = app
        .store
        .tool_call_logs_for_call(lifeline::tools::Platform::Jambonz, "burst-call")
        .await
        .unwrap();
    assert_eq!(logs.len(), admitted.len());
    assert!(logs.iter().all(|l| l.status == "success"), "{logs:?}");
    let call = app.call("burst-call").await;
    assert_eq!(app.callbacks_of(call.id).await.len(), admitted.len());
    let quiet_call = app.call("quiet-call").await;
    assert_eq!(app.callbacks_of(quiet_call.id).await.len(), 5);

    // The refusals are on the call's timeline, counted (polled: written once the burst settles).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = app.store.call_events(call.id).await.unwrap();
        let counted: u64 = events
            .iter()
            .filter(|e| e.kind == "tool_calls_refused")
            .map(|e| e.detail.0["count"].as_u64().unwrap())
            .sum();
        if counted == refused.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} refusals recorded of {}",
            refused.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(&app.http_url(""), "lifeline_tool_calls_refused_total").await,
        refused.len() as f64
    );

    // A repeat of an admitted call gets its original's answer, and runs nothing again.
    let (id, original) = &admitted[0];
    let i: usize = id.trim_start_matches("burst-").parse().unwrap();
    burst.tool_call(id, "collect_info", args(i)).await;
    let again = burst.tool_output(id).await;
    assert_eq!(again["result"].as_str().unwrap(), original);
    assert_eq!(
        app.store
            .tool_call_logs_for_call(lifeline::tools::Platform::Jambonz, "burst-call")
            .await
            .unwrap()
            .len(),
        admitted.len()
    );
    burst.close().await;
    quiet.close().await;
}
