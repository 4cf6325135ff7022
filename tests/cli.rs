//! The `lifeline` binary as an operator runs it: `migrate`, `serve` with a broken configuration,
//! and `serve` answering health checks until SIGTERM. Black box: only the process's environment,
//! exit code, output and the database it was pointed at are looked at.
//!
//! Timeouts here only guard against a hung process; none of them is a performance assertion.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use common::{Engine, TestDb};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

on_both_engines!(
    migrate_creates_the_schema_and_can_run_again,
    serve_answers_health_checks_and_exits_zero_on_sigterm,
    sigterm_right_after_serving_is_logged_still_shuts_down_gracefully,
);

/// How long a process may take before the test calls it hung.
const HANG_GUARD: Duration = Duration::from_secs(30);

/// The tables `lifeline migrate` creates.
const TABLES: [&str; 5] = [
    "calls",
    "call_events",
    "tool_call_logs",
    "transfer_attempts",
    "callback_requests",
];

/// The binary with an empty environment (nothing from the developer's shell leaks in) plus `env`.
fn lifeline(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lifeline"));
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the command to completion.
async fn run(mut cmd: Command) -> Finished {
    let out = tokio::time::timeout(HANG_GUARD, cmd.output())
        .await
        .expect("lifeline hung")
        .expect("run lifeline");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The file behind a `sqlite://PATH?mode=rwc` URL.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url.strip_prefix("sqlite://").expect("sqlite url");
    PathBuf::from(rest.split('?').next().unwrap())
}

/// Which of `TABLES` exist in the database at `url`.
async fn existing_tables(engine: Engine, url: &str) -> Vec<String> {
    let mut names: Vec<String> = match engine {
        Engine::Sqlite => {
            if !sqlite_path(url).exists() {
                return Vec::new();
            }
            let pool = sqlx::SqlitePool::connect(url).await.expect("open sqlite");
            let names = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
                .fetch_all(&pool)
                .await
                .expect("sqlite_master");
            pool.close().await;
            names
        }
        Engine::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("open postgres");
            let names = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema()",
            )
            .fetch_all(&pool)
            .await
            .expect("information_schema.tables");
            pool.close().await;
            names
        }
    };
    names.retain(|n| TABLES.contains(&n.as_str()));
    names.sort();
    names
}

fn all_tables() -> Vec<String> {
    let mut t: Vec<String> = TABLES.iter().map(|s| s.to_string()).collect();
    t.sort();
    t
}

/// The JSON log lines of an output.
fn log_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

fn has_message(logs: &[Value], message: &str) -> bool {
    logs.iter().any(|l| l["fields"]["message"] == message)
}

// ------------------------------------------------------------------------------------------------

async fn migrate_creates_the_schema_and_can_run_again(engine: Engine) {
    let db = TestDb::new(engine).await;
    assert!(
        existing_tables(engine, &db.url).await.is_empty(),
        "the database starts empty"
    );

    let first = run(lifeline(&["migrate"], &[("DATABASE_URL", &db.url)])).await;
    assert!(
        first.status.success(),
        "migrate failed: {:?}\nstdout: {}\nstderr: {}",
        first.status,
        first.stdout,
        first.stderr
    );
    assert!(
        has_message(&log_lines(&first.stdout), "migrations applied"),
        "{}",
        first.stdout
    );
    assert_eq!(existing_tables(engine, &db.url).await, all_tables());

    let again = run(lifeline(&["migrate"], &[("DATABASE_URL", &db.url)])).await;
    assert!(
        again.status.success(),
        "a second migrate failed: {:?}\n{}",
        again.status,
        again.stderr
    );
    assert_eq!(existing_tables(engine, &db.url).await, all_tables());
}

#[tokio::test]
async fn migrate_exits_nonzero_when_the_database_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    // The directory does not exist, so not even mode=rwc can create the file.
    let url = format!(
        "sqlite://{}/missing-dir/x.db?mode=rwc",
        dir.path().display()
    );
    let out = run(lifeline(&["migrate"], &[("DATABASE_URL", &url)])).await;
    assert!(!out.status.success(), "migrate succeeded on {url}");
    assert!(
        out.stderr.to_lowercase().contains("error"),
        "stderr says why: {}",
        out.stderr
    );
}

/// A configuration with seven distinct problems.
const BROKEN_CONFIG: &str = r#"
[[tenants]]
id = "Bad Id"
name = "Bad Clinic"
numbers = ["12", "call-me-maybe"]
[tenants.jambonz]
username = "bad"
password = "${LIFELINE_TEST_UNSET_SECRET}-but-long-enough"
[tenants.transfer]
primary = "+15557654321"

[[tenants]]
id = "no-agent"
name = "Clinic Without Agent"
numbers = ["+15083728300"]
[tenants.transfer]
primary = "not a phone"
"#;

#[tokio::test]
async fn serve_with_a_broken_config_exits_2_listing_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.toml");
    std::fs::write(&config, BROKEN_CONFIG).unwrap();
    let db_file = dir.path().join("never.db");
    let url = format!("sqlite://{}?mode=rwc", db_file.display());

    // `serve` explicitly, and with no subcommand (serve is the default).
    for args in [&["serve"][..], &[][..]] {
        let out = run(lifeline(
            args,
            &[
                ("DATABASE_URL", &url),
                ("LIFELINE_CONFIG", config.to_str().unwrap()),
                ("PORT", "0"),
                ("LIFELINE_BIND", "127.0.0.1"),
            ],
        ))
        .await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "args {args:?}: stderr: {}",
            out.stderr
        );
        let stderr = out.stderr;
        for problem in [
            "invalid configuration (7 problems):",
            "environment variable LIFELINE_TEST_UNSET_SECRET is not set",
            "tenant \"Bad Id\": id must be non-empty and use only a-z, 0-9, '-' and '_'",
            "tenant \"Bad Id\": number \"12\" has 2 digits",
            "tenant \"Bad Id\": number \"call-me-maybe\" contains characters that are not digits",
            "tenant \"Bad Id\": [ultravox] settings are required",
            "tenant \"no-agent\": transfer.primary \"not a phone\" contains characters that are not digits",
            "tenant \"no-agent\": [ultravox] settings are required",
        ] {
            assert!(
                stderr.contains(problem),
                "missing {problem:?} in:\n{stderr}"
            );
        }
        assert_eq!(
            stderr.matches("invalid configuration").count(),
            1,
            "one message: {stderr}"
        );
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("  - ")).count(),
            7,
            "one line per problem: {stderr}"
        );
        assert!(
            !has_message(&log_lines(&out.stdout), "lifeline serving"),
            "{}",
            out.stdout
        );
        assert!(
            !db_file.exists(),
            "the database is not touched before the configuration is valid"
        );
    }
}

// ------------------------------------------------------------------------------------------------

/// Reads JSON log lines from the child's stdout until `message`; returns that line.
async fn wait_for_log(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    message: &str,
) -> Value {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(HANG_GUARD, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == message
            {
                return Some(v);
            }
            seen.push(line);
        }
        None
    })
    .await;
    match found {
        Ok(Some(v)) => v,
        Ok(None) => panic!("lifeline exited before logging {message:?}; it logged:\n{seen:#?}"),
        Err(_) => panic!("no {message:?} log; got:\n{seen:#?}"),
    }
}

fn terminate(child: &Child) {
    let pid = child.id().expect("child still running");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM {pid}");
}

async fn serve_answers_health_checks_and_exits_zero_on_sigterm(engine: Engine) {
    let db = TestDb::new(engine).await;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo.toml");
    let mut child = lifeline(
        &["serve"],
        &[
            ("DATABASE_URL", &db.url),
            ("LIFELINE_CONFIG", demo.to_str().unwrap()),
            ("PORT", "0"),
            ("LIFELINE_BIND", "127.0.0.1"),
            ("RUST_LOG", "info"),
        ],
    )
    .spawn()
    .expect("spawn lifeline serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let serving = wait_for_log(&mut lines, "lifeline serving").await;
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["tenants"], 1, "{serving}");
    let addr = serving["fields"]["addr"]
        .as_str()
        .unwrap_or_else(|| panic!("no addr in {serving}"));
    let addr: std::net::SocketAddr = addr.parse().expect("addr is host:port");
    assert_ne!(addr.port(), 0, "PORT=0 picks a real port");

    // Serving means migrated.
    assert_eq!(existing_tables(engine, &db.url).await, all_tables());

    let http = reqwest::Client::new();
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let resp =
            tokio::time::timeout(HANG_GUARD, http.get(format!("http://{addr}{path}")).send())
                .await
                .expect("request hung")
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "GET {path}");
        let json: Value = resp.json().await.expect("json body");
        assert_eq!(json["status"], body, "GET {path}");
    }

    // The container health check command agrees.
    let port = addr.port().to_string();
    let check = run(lifeline(&["healthcheck"], &[("PORT", &port)])).await;
    assert!(
        check.status.success(),
        "healthcheck of a serving process: {:?} {}",
        check.status,
        check.stderr
    );

    terminate(&child);
    wait_for_log(&mut lines, "shutting down").await;
    let status = tokio::time::timeout(HANG_GUARD, child.wait())
        .await
        .expect("lifeline did not exit after SIGTERM")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = e.read_to_string(&mut stderr).await;
    }
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status:?}; stderr: {stderr}"
    );
    let check = run(lifeline(&["healthcheck"], &[("PORT", &port)])).await;
    assert!(
        !check.status.success(),
        "healthcheck must fail once the server is gone"
    );
}

/// "lifeline serving" is what an operator (or a supervisor reading the logs) takes as "up": a
/// SIGTERM sent as soon as it appears must get the same graceful exit as one sent later. A shell
/// reads the log and signals with its builtin `kill`, so the signal follows the line closely; it
/// is tried several times because a process that installs its handler late survives some tries.
async fn sigterm_right_after_serving_is_logged_still_shuts_down_gracefully(engine: Engine) {
    let db = TestDb::new(engine).await;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo.toml");
    for attempt in 1..=40 {
        let mut child = lifeline(
            &["serve"],
            &[
                ("DATABASE_URL", &db.url),
                ("LIFELINE_CONFIG", demo.to_str().unwrap()),
                ("PORT", "0"),
                ("LIFELINE_BIND", "127.0.0.1"),
                ("RUST_LOG", "info"),
            ],
        )
        .spawn()
        .expect("spawn lifeline serve");
        let pid = child.id().expect("pid");
        let logs: Stdio = child
            .stdout
            .take()
            .unwrap()
            .try_into()
            .expect("stdout as stdio");
        let script = format!(
            r#"while IFS= read -r line; do
                 case "$line" in
                   *'"message":"lifeline serving"'*) kill -TERM {pid}; cat >/dev/null; exit 0;;
                 esac
               done
               exit 1"#
        );
        let mut watcher = Command::new("sh");
        watcher
            .args(["-c", &script])
            .stdin(logs)
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let watched = tokio::time::timeout(HANG_GUARD, watcher.status())
            .await
            .expect("lifeline hung")
            .expect("run sh");
        assert!(
            watched.success(),
            "attempt {attempt}: lifeline never logged \"lifeline serving\""
        );
        let status = tokio::time::timeout(HANG_GUARD, child.wait())
            .await
            .expect("lifeline did not exit after SIGTERM")
            .expect("wait");
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {attempt}: SIGTERM right after \"lifeline serving\" ended the process with \
             {status:?} instead of a graceful exit"
        );
    }
}
