//! `floorserver`: the least a jambonz WebSocket application can do per `collect_info` tool call,
//! built from lifeline's own stack (tokio, axum's WebSocket, serde_json, sqlx, mimalloc). It
//! answers `session:new` with an `llm` verb and each `llm:tool-call` with an `llm:tool-output`,
//! and, unless `--no-db`, first writes the peer's log row and callback row in one autocommitted
//! statement: one round trip, one durable commit (`synchronous_commit=on`).
//!
//! It is a measuring stick, not a service: no call state, no limits, no idempotency, no
//! journal. `scripts/bench-floor.sh` drives it with the peer's own load client beside lifeline
//! and the peer, so that the latency and CPU that any server doing the same durable work needs
//! on a machine are measured, not guessed. It listens on loopback only and still checks the
//! Basic credentials it is given (lifeline's rule: every surface authenticates).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use clap::Parser;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The peer's two rows (`../shared/bench/node-baseline/schema.sql`) in one statement.
const LOG_AND_QUEUE: &str = "WITH l AS (
  INSERT INTO tool_call_logs (twilio_call_sid, tool_name, tool_parameters, status,
      callback_number, caller_name, urgency_level, processed_at)
  VALUES ($1, $2, $3, 'success', $4, $5, 'normal', now()) RETURNING id)
INSERT INTO callback_requests (callback_number, caller_name, pet_name, species,
    concern_description, urgency_level, call_sid, tool_call_log_id)
SELECT $4, $5, $6, $7, $8, 'normal', $1, id FROM l";

#[derive(Parser, Debug)]
#[command(
    about = "The floor under a jambonz tool call: answer at once, or after one durable insert"
)]
struct Args {
    /// Port on 127.0.0.1 (0: any free port; the one taken is printed).
    #[arg(long, default_value_t = 3500)]
    port: u16,
    /// PostgreSQL holding the peer's schema (`node-baseline/schema.sql`).
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Answer without any database work (the transport's floor).
    #[arg(long)]
    no_db: bool,
    /// Connections in the pool (the peer's default is 10).
    #[arg(long, default_value_t = 10)]
    pool: u32,
    /// `user:password` the client must present with HTTP Basic.
    #[arg(long, default_value = "bench:bench-password-123")]
    basic: String,
}

struct Floor {
    db: Option<PgPool>,
    authorization: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = if args.no_db {
        None
    } else {
        let url = args
            .database_url
            .context("--database-url (or DATABASE_URL) is needed unless --no-db")?;
        let pool = PgPoolOptions::new()
            .max_connections(args.pool)
            .min_connections(args.pool)
            .connect(&url)
            .await
            .context("connecting to PostgreSQL")?;
        Some(pool)
    };
    let authorization = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(&args.basic)
    );
    let floor = Arc::new(Floor { db, authorization });
    let app = Router::new()
        .route("/jambonz", get(upgrade))
        .with_state(floor);
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    // Standard output, so that whoever started it with port 0 learns the port.
    println!("floorserver listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn upgrade(
    State(floor): State<Arc<Floor>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if presented != Some(floor.authorization.as_str()) {
        return (StatusCode::UNAUTHORIZED, "Basic credentials required").into_response();
    }
    ws.protocols(["ws.jambonz.org"])
        .on_upgrade(move |socket| session(floor, socket))
}

/// One call: every tool call is answered by its own task, as lifeline and the peer do, so a
/// slow commit holds up only its own answer.
async fn session(floor: Arc<Floor>, socket: WebSocket) {
    use futures_util::{SinkExt, StreamExt};
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(text) = rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
    });
    let mut call_sid = String::new();
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match frame["type"].as_str() {
            Some("session:new") => {
                call_sid = frame["call_sid"].as_str().unwrap_or_default().to_owned();
                let ack = json!({"type": "ack", "msgid": frame["msgid"], "data": [{
                    "verb": "llm", "vendor": "ultravox", "model": "fixie-ai/ultravox",
                    "auth": {"apiKey": "x"}, "actionHook": "/final", "toolHook": "/toolCall",
                    "llmOptions": {"systemPrompt": "floor"}}]});
                let _ = tx.send(ack.to_string());
            }
            Some("llm:tool-call") => {
                let floor = floor.clone();
                let tx = tx.clone();
                let call_sid = call_sid.clone();
                tokio::spawn(async move {
                    let answer = tool_call(&floor, &call_sid, &frame["data"]).await;
                    let _ = tx.send(answer.to_string());
                });
            }
            _ => {}
        }
    }
    drop(tx);
    let _ = writer.await;
}

async fn tool_call(floor: &Floor, call_sid: &str, data: &Value) -> Value {
    let id = data["tool_call_id"].clone();
    let outcome = match &floor.db {
        None => Ok(()),
        Some(db) => {
            let args = &data["args"];
            let text = |k: &str| args[k].as_str().unwrap_or_default().to_owned();
            let caller = format!("{} {}", text("first_name"), text("last_name"));
            sqlx::query(LOG_AND_QUEUE)
                .bind(call_sid)
                .bind(data["name"].as_str().unwrap_or_default())
                .bind(sqlx::types::Json(args))
                .bind(text("callback_number"))
                .bind(caller)
                .bind(text("pet_name"))
                .bind(text("species"))
                .bind(text("concern_description"))
                .execute(db)
                .await
                .map(|_| ())
        }
    };
    let result = match outcome {
        Ok(()) => json!({"type": "client_tool_result", "invocation_id": id,
                         "result": "Information recorded successfully"}),
        Err(e) => json!({"type": "client_tool_result", "invocation_id": id,
                         "error_message": e.to_string()}),
    };
    json!({"type": "command", "command": "llm:tool-output", "queueCommand": false,
           "tool_call_id": id, "data": result})
}
