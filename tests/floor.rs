//! `floorserver`, the measuring stick of `scripts/bench-floor.sh`: the floor it measures is only
//! a floor if it does the peer's durable work and answers in jambonz's protocol. Driven as the
//! bench drives it: the real binary, a WebSocket client speaking as the feature-server, and
//! PostgreSQL holding the peer's two tables (`../shared/bench/node-baseline/schema.sql`).
//!
//! Timeouts here only guard against a hung process; none of them is a performance assertion.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Engine, TestDb};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

const HANG_GUARD: Duration = Duration::from_secs(30);

/// The peer's tables, as `node-baseline/schema.sql` creates them (that file lives beside the
/// project, not in it, so a clean clone's CI has it only here).
const PEER_SCHEMA: &str = "
create table tool_call_logs (
  id uuid primary key default gen_random_uuid(),
  created_at timestamptz not null default now(),
  twilio_call_sid text, tool_name text not null, tool_parameters jsonb not null default '{}',
  status text not null default 'pending', error_message text, callback_number text, caller_name text,
  urgency_level text, result jsonb, processed_at timestamptz);
create table callback_requests (
  id uuid primary key default gen_random_uuid(),
  created_at timestamptz not null default now(),
  callback_number text not null, caller_name text, pet_name text, species text, concern_description text,
  urgency_level text not null default 'normal', call_sid text, tool_call_log_id uuid references tool_call_logs(id),
  status text not null default 'pending');";

struct Floor {
    _child: Child,
    url: String,
}

async fn start(database_url: Option<&str>) -> Floor {
    let mut command = Command::new(env!("CARGO_BIN_EXE_floorserver"));
    command.arg("--port").arg("0").env_clear();
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.arg("--no-db"),
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn floorserver");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(HANG_GUARD, lines.next_line())
        .await
        .expect("floorserver printed nothing")
        .expect("read stdout")
        .expect("floorserver exited before listening");
    let addr = line
        .strip_prefix("floorserver listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    Floor {
        _child: child,
        url: format!("ws://{addr}/jambonz"),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a call as `loadgen.js` does: Basic credentials, jambonz's subprotocol, `session:new`.
async fn open_call(url: &str, call_sid: &str) -> Socket {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_static("Basic YmVuY2g6YmVuY2gtcGFzc3dvcmQtMTIz"), // bench:bench-password-123
    );
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ws.jambonz.org"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "ws.jambonz.org"
    );
    let new = json!({"type": "session:new", "msgid": "m1", "call_sid": call_sid,
        "data": {"call_sid": call_sid, "from": "+14165551000", "to": "+15005550006"}});
    ws.send(Message::text(new.to_string())).await.unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["msgid"], "m1");
    assert_eq!(ack["data"][0]["verb"], "llm");
    assert_eq!(ack["data"][0]["toolHook"], "/toolCall");
    ws
}

async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(HANG_GUARD, ws.next())
            .await
            .expect("no frame")
            .expect("socket closed")
            .expect("socket error");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("JSON frame");
        }
    }
}

/// `llm:tool-call` as the feature-server sends it (`../shared/reference/jambonz-protocol.md`).
fn tool_call(id: &str, number: &str) -> Message {
    Message::text(
        json!({"type": "llm:tool-call", "msgid": format!("m-{id}"), "hook": "/toolCall",
            "data": {"tool_call_id": id, "name": "collectNameNumberConcernPetName", "args": {
                "callback_number": number, "first_name": "Load", "last_name": "Test",
                "pet_name": "Rex", "species": "Dog", "concern_description": "refill request"}}})
        .to_string(),
    )
}

#[tokio::test]
async fn floorserver_refuses_a_client_without_credentials() {
    let floor = start(None).await;
    let refused = common::try_connect(&floor.url, None, Some("ws.jambonz.org")).await;
    assert_eq!(refused, Err(StatusCode::UNAUTHORIZED));
    let wrong =
        common::try_connect(&floor.url, Some(("bench", "guess")), Some("ws.jambonz.org")).await;
    assert_eq!(wrong, Err(StatusCode::UNAUTHORIZED));
}

#[tokio::test]
async fn floorserver_without_a_database_answers_every_tool_call() {
    let floor = start(None).await;
    let mut ws = open_call(&floor.url, "call-nodb").await;
    for id in ["t1", "t2", "t3"] {
        ws.send(tool_call(id, "+14165550001")).await.unwrap();
    }
    let mut answered = Vec::new();
    for _ in 0..3 {
        let out = next_json(&mut ws).await;
        assert_eq!(out["command"], "llm:tool-output");
        assert_eq!(out["data"]["invocation_id"], out["tool_call_id"]);
        assert_eq!(out["data"]["result"], "Information recorded successfully");
        answered.push(out["tool_call_id"].as_str().unwrap().to_owned());
    }
    answered.sort();
    assert_eq!(answered, ["t1", "t2", "t3"]);
}

#[tokio::test]
async fn floorserver_commits_the_peers_two_rows_before_each_answer() {
    let db = TestDb::new(Engine::Postgres).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::raw_sql(PEER_SCHEMA).execute(&pool).await.unwrap();
    let floor = start(Some(&db.url)).await;
    let mut ws = open_call(&floor.url, "call-db").await;
    for (i, id) in ["d1", "d2", "d3"].iter().enumerate() {
        ws.send(tool_call(id, &format!("+1416555000{i}")))
            .await
            .unwrap();
        let out = next_json(&mut ws).await;
        assert_eq!(out["tool_call_id"], *id);
        assert_eq!(
            out["data"]["result"], "Information recorded successfully",
            "{out}"
        );
        // Answered, so committed: a second connection sees both rows, linked.
        let (logs, requests): (i64, i64) = sqlx::query_as(
            "select (select count(*) from tool_call_logs where twilio_call_sid = 'call-db'),
                    (select count(*) from callback_requests c join tool_call_logs l
                       on l.id = c.tool_call_log_id
                      where c.call_sid = 'call-db' and c.callback_number = l.callback_number
                        and c.pet_name = 'Rex')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!((logs, requests), (i as i64 + 1, i as i64 + 1));
    }

    // A failed write is an error in the answer, never a success.
    sqlx::query("drop table callback_requests")
        .execute(&pool)
        .await
        .unwrap();
    ws.send(tool_call("d4", "+14165550009")).await.unwrap();
    let out = next_json(&mut ws).await;
    assert_eq!(out["tool_call_id"], "d4");
    assert!(out["data"]["result"].is_null(), "{out}");
    assert!(
        out["data"]["error_message"]
            .as_str()
            .is_some_and(|e| e.contains("callback_requests")),
        "{out}"
    );
}
