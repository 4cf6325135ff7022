//! `loadgen`: fake Jambonz calls against a running lifeline, reporting JSON.
//!
//! Load mode: `--calls` concurrent call workers, each repeatedly opening a call (session:new),
//! making `--tools-per-call` collect_info tool calls paced so that all workers together offer
//! `--rate` tool calls per second, and hanging up; for `--duration` seconds. Reports throughput
//! and tool-call latency percentiles: from each tool call's intended send time (its slot in the
//! worker's schedule) to its llm:tool-output when the worker was still busy at its slot, so
//! that a server that falls behind shows as latency rather than as a client that quietly sends
//! less (as `../shared/bench/loadgen.js` counts it); and, beside it, from the moment each was
//! actually sent.
//!
//! Idle mode (`--idle N`): opens N calls and holds them for `--hold` seconds, reporting the
//! server's resident memory before and after (`--server-pid`), to check the per-socket cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

const SESSION_NEW: &str = include_str!("../../fixtures/jambonz/feature-server.jsonl");

#[derive(Parser, Debug, Clone)]
#[command(about = "Fake Jambonz calls against lifeline; prints a JSON report")]
struct Args {
    /// lifeline's Jambonz endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/jambonz")]
    url: String,
    #[arg(long, default_value = "demo")]
    user: String,
    #[arg(long, default_value = "demo-password-123")]
    password: String,
    /// Concurrent call workers.
    #[arg(long, default_value_t = 50)]
    calls: u32,
    /// Tool calls per second offered, all workers together.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Seconds of load.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// collect_info calls per fake call before it hangs up.
    #[arg(long, default_value_t = 5)]
    tools_per_call: u32,
    /// Idle mode: open this many calls and hold them.
    #[arg(long)]
    idle: Option<u32>,
    /// Idle mode: seconds to hold the calls open.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// The server's process id, to report its memory (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A label copied into the report (e.g. the engine).
    #[arg(long, default_value = "")]
    label: String,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Default)]
struct Stats {
    /// From each tool call's intended send time (its send, if the worker was ready then).
    tool_latencies_us: Mutex<Vec<u64>>,
    /// From the moment each tool call was sent.
    tool_sent_latencies_us: Mutex<Vec<u64>>,
    session_latencies_us: Mutex<Vec<u64>>,
    calls: AtomicU64,
    errors: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = match args.idle {
        Some(n) => idle(&args, n).await?,
        None => load(&args).await?,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn connect(args: &Args) -> anyhow::Result<Socket> {
    let mut req = args.url.as_str().into_client_request()?;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", args.user, args.password));
    let headers = req.headers_mut();
    headers.insert(
        "Authorization",
        HeaderValue::from_str(&format!("Basic {token}"))?,
    );
    headers.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ws.jambonz.org"),
    );
    // Small buffers: the client side of 10,000 sockets must fit on the same machine.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
    Ok(ws)
}

fn session_new(call_sid: &str) -> anyhow::Result<Value> {
    let mut msg: Value = SESSION_NEW
        .lines()
        .map(serde_json::from_str::<Value>)
        .find(|m| m.as_ref().is_ok_and(|m| m["type"] == "session:new"))
        .context("session:new fixture")??;
    msg["msgid"] = json!(Uuid::new_v4().simple().to_string());
    msg["call_sid"] = json!(call_sid);
    msg["data"]["call_sid"] = json!(call_sid);
    Ok(msg)
}

/// Reads until a message satisfies `pred` (pings are answered by tungstenite).
async fn wait_for(ws: &mut Socket, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no answer within 10 s")?
            .context("socket closed")??;
        if let Message::Text(t) = frame {
            let v: Value = serde_json::from_str(t.as_str())?;
            if pred(&v) {
                return Ok(v);
            }
        }
    }
}

/// Opens a call: connect, session:new, wait for the ack with verbs. Returns the socket and the
/// tool hook the app configured.
async fn open_call(args: &Args, stats: &Stats) -> anyhow::Result<(Socket, String, String)> {
    let call_sid = Uuid::new_v4().to_string();
    let mut ws = connect(args).await?;
    let msg = session_new(&call_sid)?;
    let msgid = msg["msgid"].clone();
    let started = Instant::now();
    ws.send(Message::text(msg.to_string())).await?;
    let ack = wait_for(&mut ws, |v| v["type"] == "ack" && v["msgid"] == msgid).await?;
    stats
        .session_latencies_us
        .lock()
        .await
        .push(started.elapsed().as_micros() as u64);
    let hook = ack["data"]
        .as_array()
        .and_then(|verbs| verbs.iter().find(|v| v["verb"] == "llm"))
        .and_then(|llm| llm["toolHook"].as_str())
        .map(str::to_string);
    let Some(hook) = hook else {
        bail!("session:new ack without an llm toolHook: {ack}");
    };
    stats.calls.fetch_add(1, Ordering::Relaxed);
    Ok((ws, hook, call_sid))
}

async fn worker(args: Arc<Args>, stats: Arc<Stats>, deadline: Instant, offset: Duration) {
    let per_worker = args.rate / f64::from(args.calls.max(1));
    let interval = Duration::from_secs_f64(1.0 / per_worker.max(0.001));
    tokio::time::sleep(offset).await;
    let mut next = tokio::time::Instant::now();
    while Instant::now() < deadline {
        let (mut ws, hook, call_sid) = match open_call(&args, &stats).await {
            Ok(c) => c,
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("open call: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for i in 0..args.tools_per_call {
            if Instant::now() >= deadline {
                break;
            }
            next += interval;
            // A worker still busy at its slot (with the previous tool call's answer, or with
            // opening the call) sends late, and the wait counts: latency from the slot. A
            // worker that was ready waits for the timer, which fires up to a millisecond late
            // (tokio's timer wheel): latency from the send, so the client's timer is not
            // counted.
            let behind = tokio::time::Instant::now() > next;
            tokio::time::sleep_until(next).await;
            let id = format!("lg-{}", Uuid::new_v4().simple());
            let msg = json!({
                "type": "llm:tool-call",
                "msgid": Uuid::new_v4().simple().to_string(),
                "call_sid": call_sid,
                "hook": hook,
                "data": {
                    "tool_call_id": id,
                    "name": "collect_info",
                    "args": {
                        "callback_number": "+14168189171",
                        "first_name": "Load",
                        "last_name": format!("Caller {i}"),
                        "pet_name": "Rex",
                        "concern_description": "limping since this afternoon",
                    },
                },
            });
            let started = Instant::now();
            let intended = if behind { next.into_std() } else { started };
            let sent = ws.send(Message::text(msg.to_string())).await;
            let got = match sent {
                Ok(()) => {
                    wait_for(&mut ws, |v| {
                        v["command"] == "llm:tool-output" && v["tool_call_id"] == json!(id)
                    })
                    .await
                }
                Err(e) => Err(e.into()),
            };
            match got {
                Ok(out)
                    if out["data"]["result"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("Recorded")) =>
                {
                    stats
                        .tool_latencies_us
                        .lock()
                        .await
                        .push(intended.elapsed().as_micros() as u64);
                    stats
                        .tool_sent_latencies_us
                        .lock()
                        .await
                        .push(started.elapsed().as_micros() as u64);
                }
                Ok(out) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("tool error: {}", out["data"]["result"]);
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("tool call: {e:#}");
                    break;
                }
            }
        }
        // Jambonz closes with 1000 when the call ends.
        let _ = ws.close(None).await;
    }
}

async fn load(args: &Args) -> anyhow::Result<Value> {
    let args = Arc::new(args.clone());
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let spread =
        Duration::from_secs_f64(1.0 / (args.rate / f64::from(args.calls.max(1))).max(0.001));
    let handles: Vec<_> = (0..args.calls)
        .map(|i| {
            let offset = spread.mul_f64(f64::from(i) / f64::from(args.calls.max(1)));
            tokio::spawn(worker(args.clone(), stats.clone(), deadline, offset))
        })
        .collect();
    for h in handles {
        h.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut tools = stats.tool_latencies_us.lock().await.clone();
    let mut sent = stats.tool_sent_latencies_us.lock().await.clone();
    let mut sessions = stats.session_latencies_us.lock().await.clone();
    Ok(json!({
        "mode": "load",
        "label": args.label,
        "offered_rate_per_s": args.rate,
        "workers": args.calls,
        "duration_s": elapsed,
        "calls_opened": stats.calls.load(Ordering::Relaxed),
        "tool_calls": tools.len(),
        "errors": stats.errors.load(Ordering::Relaxed),
        "throughput_per_s": tools.len() as f64 / elapsed,
        "tool_call_latency_ms": percentiles(&mut tools),
        "tool_call_latency_from_send_ms": percentiles(&mut sent),
        "session_new_ack_latency_ms": percentiles(&mut sessions),
    }))
}

async fn idle(args: &Args, n: u32) -> anyhow::Result<Value> {
    let stats = Stats::default();
    let before = rss_kb(args.server_pid);
    let mut sockets = Vec::with_capacity(n as usize);
    let started = Instant::now();
    for _ in 0..n {
        match open_call(args, &stats).await {
            Ok((ws, _, _)) => sockets.push(ws),
            Err(e) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("open call: {e:#}");
            }
        }
    }
    let opened_in = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let after = rss_kb(args.server_pid);
    let open = sockets.len();
    let per_socket = match (before, after) {
        (Some(b), Some(a)) if open > 0 => Some((a.saturating_sub(b)) as f64 * 1024.0 / open as f64),
        _ => None,
    };
    let mut sessions = stats.session_latencies_us.lock().await.clone();
    for mut ws in sockets {
        let _ = ws.close(None).await;
    }
    Ok(json!({
        "mode": "idle",
        "label": args.label,
        "sockets_open": open,
        "errors": stats.errors.load(Ordering::Relaxed),
        "opened_in_s": opened_in,
        "server_rss_kb_before": before,
        "server_rss_kb_with_sockets": after,
        "server_bytes_per_socket": per_socket,
        "session_new_ack_latency_ms": percentiles(&mut sessions),
    }))
}

fn rss_kb(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentiles(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return Value::Null;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i] as f64 / 1000.0
    };
    json!({ "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": at(1.0) })
}
