//! `queuebench`: measures callback delivery against a local frontend sink, with real
//! `lifeline worker` processes on a real database; prints a JSON report.
//!
//! Latency mode (default): starts the workers, then queues `--count` requests at `--rate` per
//! second, as the tools do (one committed insert each); reports the time from the start of each
//! insert to the sink receiving its POST.
//!
//! Drain mode (`--drain`): queues a backlog of `--count` requests first, then starts the workers
//! and reports how fast they empty it (until the sink has every request and every row is
//! `posted`).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::http::HeaderMap;
use chrono::Utc;
use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use lifeline::store::{self, NewCallbackRequest, Store};
use lifeline::tools::urgency::Urgency;

#[derive(Parser, Debug)]
#[command(about = "Callback delivery latency and drain rate; prints a JSON report")]
struct Args {
    /// The database the workers use (PostgreSQL for the targets).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The lifeline binary (a release build).
    #[arg(long, default_value = "target/release/lifeline")]
    lifeline: String,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Requests to queue.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// Latency mode: requests queued per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Drain mode: queue everything first, then start the workers.
    #[arg(long)]
    drain: bool,
    /// Worker settings.
    #[arg(long, default_value_t = 100)]
    batch_size: u32,
    #[arg(long, default_value_t = 128)]
    concurrency: u32,
}

#[derive(Default)]
struct Sink {
    arrived: Mutex<HashMap<String, Instant>>,
    done: tokio::sync::Notify,
}

async fn receive(
    axum::extract::State(sink): axum::extract::State<Arc<Sink>>,
    headers: HeaderMap,
) -> axum::http::StatusCode {
    let now = Instant::now();
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        sink.arrived
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_insert(now);
        sink.done.notify_waiters();
    }
    axum::http::StatusCode::NO_CONTENT
}

fn request(n: usize) -> NewCallbackRequest {
    NewCallbackRequest {
        id: Uuid::now_v7(),
        created_at: Utc::now(),
        tenant_id: "bench".into(),
        call_id: None,
        call_sid: Some(format!("CA{n:032}")),
        tool_call_log_id: None,
        transfer_attempt_id: None,
        reason: "message",
        callback_number: format!("+1416555{:04}", n % 10_000),
        caller_name: Some("Bench Caller".into()),
        first_name: Some("Bench".into()),
        last_name: Some("Caller".into()),
        pet_name: Some("Tommie".into()),
        species: Some("Cat".into()),
        breed: None,
        age: None,
        concern_description: Some("benchmark request".into()),
        urgency_reason: None,
        urgency: Urgency::Normal,
        metadata: json!({}),
        text_caller: false,
    }
}

async fn spawn_worker(args: &Args, config: &std::path::Path) -> anyhow::Result<Child> {
    let mut child = Command::new(&args.lifeline)
        .arg("worker")
        .env("DATABASE_URL", &args.database_url)
        .env("LIFELINE_CONFIG", config)
        .env("RUST_LOG", "warn,lifeline::worker=info")
        // PostgreSQL allows 100 connections by default; leave room for the benchmark's own.
        .env(
            "DATABASE_MAX_CONNECTIONS",
            (60 / args.workers.max(1)).clamp(4, 32).to_string(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.lifeline))?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    loop {
        let Some(line) = lines.next_line().await? else {
            bail!("the worker exited before starting");
        };
        if line.contains("delivery worker started") {
            break;
        }
    }
    // Drain its output (it logs every attempt) so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sink = Arc::new(Sink::default());
    let app = axum::Router::new()
        .route("/callbacks", axum::routing::post(receive))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink_url = format!("http://{}/callbacks", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile_dir()?;
    let config = dir.join("queuebench.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[delivery]
frontend_url = "{sink_url}"
api_key = "bench-api-key"
signing_secret = "bench-signing-secret-123"
[worker]
batch_size = {}
concurrency = {}
poll_interval_ms = 5000
[[tenants]]
id = "bench"
name = "Bench Clinic"
numbers = ["+15550000000"]
[tenants.transfer]
primary = "+15550000001"
[tenants.ultravox]
api_key = "bench"
agent_id = "bench-agent"
"#,
            args.batch_size, args.concurrency
        ),
    )?;

    let store = store::connect_with_pool(&args.database_url, 16).await?;
    store.migrate().await?;
    let mut queued_at: HashMap<String, Instant> = HashMap::with_capacity(args.count);
    let mut workers = Vec::new();

    let report = if args.drain {
        // The backlog, queued by 16 writers.
        let reqs: Vec<NewCallbackRequest> = (0..args.count).map(request).collect();
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for chunk in reqs.chunks(args.count.div_ceil(16).max(1)) {
            let (store, chunk) = (store.clone(), chunk.to_vec());
            set.spawn(async move {
                for r in &chunk {
                    store.insert_callback_request(r).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = set.join_next().await {
            done??;
        }
        let queue_secs = started.elapsed().as_secs_f64();
        let start = Instant::now();
        for _ in 0..args.workers {
            workers.push(spawn_worker(&args, &config).await?);
        }
        wait_for(&sink, args.count).await?;
        let arrived_secs = start.elapsed().as_secs_f64();
        wait_posted(&args.database_url, store.as_ref(), args.count).await?;
        let recorded_secs = start.elapsed().as_secs_f64();
        json!({
            "mode": "drain",
            "backlog": args.count,
            "workers": args.workers,
            "queue_seconds": queue_secs,
            "all_posts_received_seconds": arrived_secs,
            "all_rows_posted_seconds": recorded_secs,
            "deliveries_per_second": args.count as f64 / recorded_secs,
        })
    } else {
        for _ in 0..args.workers {
            workers.push(spawn_worker(&args, &config).await?);
        }
        let interval = Duration::from_secs_f64(1.0 / args.rate);
        let mut next = tokio::time::Instant::now();
        for n in 0..args.count {
            tokio::time::sleep_until(next).await;
            next += interval;
            let r = request(n);
            queued_at.insert(r.id.to_string(), Instant::now());
            store.insert_callback_request(&r).await?;
        }
        wait_for(&sink, args.count).await?;
        let arrived = sink.arrived.lock().unwrap().clone();
        let mut ms: Vec<f64> = queued_at
            .iter()
            .map(|(id, at)| (arrived[id] - *at).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        json!({
            "mode": "latency",
            "requests": args.count,
            "rate_per_second": args.rate,
            "workers": args.workers,
            "enqueue_to_post_ms": {
                "p50": percentile(&ms, 50.0),
                "p90": percentile(&ms, 90.0),
                "p99": percentile(&ms, 99.0),
                "max": ms.last().copied().unwrap_or(f64::NAN),
            },
        })
    };
    for w in &workers {
        if let Some(pid) = w.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for mut w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(15), w.wait()).await;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

async fn wait_for(sink: &Sink, n: usize) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let notified = sink.done.notified();
            if sink.arrived.lock().unwrap().len() >= n {
                return;
            }
            notified.await;
        }
    })
    .await
    .context("the sink did not get every request within 10 minutes")
}

/// Waits until `n` rows are `posted` (the workers recorded every delivery).
async fn wait_posted(database_url: &str, store: &dyn Store, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let pg = if database_url.starts_with("postgres") {
        Some(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(database_url)
                .await?,
        )
    } else {
        None
    };
    loop {
        let posted = match &pg {
            Some(pool) => {
                let (count,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM callback_requests WHERE status = 'posted'",
                )
                .fetch_one(pool)
                .await?;
                usize::try_from(count).unwrap_or(0)
            }
            None => store
                .callback_requests(&lifeline::store::CallbackFilter {
                    status: Some("posted".into()),
                    limit: Some(i64::try_from(n).unwrap_or(i64::MAX)),
                    ..Default::default()
                })
                .await?
                .len(),
        };
        if posted >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {posted} of {n} rows posted after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("queuebench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
