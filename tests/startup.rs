//! The binary started with each setting an operator commonly gets wrong: it must exit at once
//! (no retry loop, no pool timeout) with one message that names the thing to fix — the path,
//! the host and port, the key, the line.
//!
//! How long each took is printed (`--nocapture` shows it), never asserted: the guard below only
//! catches a process that hangs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

/// How long a process may take before the test calls it hung (not a performance bound).
const HANG_GUARD: Duration = Duration::from_secs(30);

struct Exit {
    code: Option<i32>,
    stderr: String,
}

fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo.toml")
}

/// Runs `lifeline ARGS` in `cwd` with only `env` set; returns how it ended and prints how long
/// that took.
async fn lifeline(case: &str, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Exit {
    lifeline_as(case, args, env, cwd, false).await
}

async fn lifeline_as(
    case: &str,
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &Path,
    as_nobody: bool,
) -> Exit {
    let bin = env!("CARGO_BIN_EXE_lifeline");
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(HANG_GUARD, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{case}: lifeline did not exit within {HANG_GUARD:?}"))
        .expect("run lifeline");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "[startup] {case}: exit {:?} after {} ms",
        out.status.code(),
        took.as_millis()
    );
    Exit {
        code: out.status.code(),
        stderr,
    }
}

fn assert_says(case: &str, exit: &Exit, code: i32, needles: &[&str]) {
    assert_eq!(
        exit.code,
        Some(code),
        "{case}: exit code; stderr:\n{}",
        exit.stderr
    );
    for n in needles {
        assert!(
            exit.stderr.contains(n),
            "{case}: the message must name {n:?}; stderr:\n{}",
            exit.stderr
        );
    }
}

fn serve_env<'a>(database_url: &'a str, config: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", database_url),
        ("LIFELINE_CONFIG", config),
        ("PORT", "0"),
        ("LIFELINE_BIND", "127.0.0.1"),
    ]
}

#[tokio::test]
async fn sqlite_in_a_missing_directory_names_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let url = format!("sqlite://{}/lifeline.db?mode=rwc", missing.display());
    let config = demo_config();
    let exit = lifeline(
        "sqlite missing directory",
        &["serve"],
        &serve_env(&url, config.to_str().unwrap()),
        dir.path(),
    )
    .await;
    assert_says(
        "sqlite missing directory",
        &exit,
        1,
        &[&missing.display().to_string(), "does not exist"],
    );
    assert!(!exit.stderr.contains("code: 14"), "{}", exit.stderr);
}

#[tokio::test]
async fn sqlite_in_an_unwritable_directory_names_it_and_who_owns_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Others must reach the directory when the test drops privileges below.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = dir.path().join("read-only");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    // root writes anywhere: then run lifeline as nobody, as a non-root container would.
    let as_nobody = std::fs::write(locked.join("probe"), b"").is_ok();
    if as_nobody {
        let _ = std::fs::remove_file(locked.join("probe"));
    }
    let url = format!("sqlite://{}/lifeline.db", locked.display());
    let config = demo_config();
    let exit = lifeline_as(
        "sqlite unwritable directory",
        &["serve"],
        &serve_env(&url, config.to_str().unwrap()),
        dir.path(),
        as_nobody,
    )
    .await;
    assert_says(
        "sqlite unwritable directory",
        &exit,
        1,
        &[
            &locked.display().to_string(),
            "not writable",
            "mode 555",
            "RAILWAY_RUN_UID=0",
        ],
    );
}

#[tokio::test]
async fn a_sqlite_url_without_mode_creates_the_file_and_an_explicit_mode_ro_says_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("created.db");
    let url = format!("sqlite://{}", file.display());
    let exit = lifeline(
        "sqlite url without mode",
        &["migrate"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    )
    .await;
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    assert!(file.exists(), "the database file is created by default");

    let other = dir.path().join("absent.db");
    let url = format!("sqlite://{}?mode=ro", other.display());
    let exit = lifeline(
        "sqlite mode=ro",
        &["migrate"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    )
    .await;
    assert_says(
        "sqlite mode=ro",
        &exit,
        1,
        &[&other.display().to_string(), "mode="],
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn postgres_refusing_connections_names_host_and_port_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let url = format!("postgres://lifeline:secret@127.0.0.1:{port}/lifeline");
    let exit = lifeline(
        "postgres refused",
        &["migrate"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    )
    .await;
    assert_says(
        "postgres refused",
        &exit,
        1,
        &[&format!("127.0.0.1:{port}"), "connection refused"],
    );
    assert!(!exit.stderr.contains("secret"), "no password in messages");
    assert!(!exit.stderr.contains("pool timed out"), "{}", exit.stderr);
}

/// The test server's host and port, with another user, database or query.
fn pg_url(user: &str, database: &str, query: &str) -> String {
    let admin = common::pg_admin_url();
    let rest = admin.split_once("://").unwrap().1;
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host_port = host_port.split('/').next().unwrap();
    format!("postgres://{user}@{host_port}/{database}{query}")
}

#[tokio::test]
async fn postgres_refusing_the_login_says_authentication_and_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url("no_such_lifeline_role", "postgres", "");
    let exit = lifeline(
        "postgres auth",
        &["migrate"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    )
    .await;
    assert_says(
        "postgres auth",
        &exit,
        1,
        &["no_such_lifeline_role", "authentication"],
    );
}

#[tokio::test]
async fn postgres_database_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url("postgres", "no_such_lifeline_db", "");
    let exit = lifeline(
        "postgres database",
        &["migrate"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    )
    .await;
    assert_says(
        "postgres database",
        &exit,
        1,
        &["no_such_lifeline_db", "does not exist"],
    );
}

#[tokio::test]
async fn postgres_tls_that_cannot_be_verified_says_tls_and_sslmode() {
    let dir = tempfile::tempdir().unwrap();
    // The test server has no certificate from a public authority (or no TLS at all): a
    // verified TLS connection fails either way.
    let url = pg_url("postgres", "postgres", "?sslmode=verify-full");
    let exit = lifeline(
        "postgres tls",
        &["migrate"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    )
    .await;
    assert_says("postgres tls", &exit, 1, &["TLS failed", "sslmode"]);
}

#[tokio::test]
async fn an_address_in_use_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let config = demo_config();
    let exit = lifeline(
        "address in use",
        &["serve"],
        &[
            ("DATABASE_URL", &url),
            ("LIFELINE_CONFIG", config.to_str().unwrap()),
            ("PORT", &port),
            ("LIFELINE_BIND", "127.0.0.1"),
        ],
        dir.path(),
    )
    .await;
    assert_says(
        "address in use",
        &exit,
        1,
        &[&format!("127.0.0.1:{port}"), "in use", "PORT"],
    );
    drop(taken);
}

#[tokio::test]
async fn an_unset_variable_is_named_with_the_key_that_references_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_config()).unwrap().replace(
        "api_key = \"demo-ultravox-key\"",
        "api_key = \"${NOT_SET}\"",
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let exit = lifeline(
        "unset variable",
        &[],
        &serve_env(&url, config.to_str().unwrap()),
        dir.path(),
    )
    .await;
    assert_says(
        "unset variable",
        &exit,
        2,
        &[
            "environment variable NOT_SET is not set",
            "tenants[0].ultravox.api_key",
        ],
    );
}

#[tokio::test]
async fn an_unknown_key_is_named_with_its_line_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(demo_config()).unwrap().replace(
        "[jambonz]\nping_interval_secs = 25\n",
        "[jambonz]\nping_interval_secs = 25\nping_interval = 30\n",
    );
    let line = text
        .lines()
        .position(|l| l.starts_with("ping_interval = "))
        .unwrap()
        + 1;
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let exit = lifeline(
        "unknown key",
        &["serve"],
        &serve_env(&url, config.to_str().unwrap()),
        dir.path(),
    )
    .await;
    assert_says(
        "unknown key",
        &exit,
        2,
        &[
            &format!("c.toml, line {line}, column 1 (in [jambonz])"),
            "unknown field `ping_interval`",
        ],
    );
}

#[tokio::test]
async fn serving_no_clinic_refuses_to_start_and_says_how_to_configure_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let exit = lifeline(
        "no tenants",
        &["serve"],
        &[
            ("DATABASE_URL", &url),
            ("PORT", "0"),
            ("LIFELINE_BIND", "127.0.0.1"),
        ],
        dir.path(),
    )
    .await;
    assert_says(
        "no tenants",
        &exit,
        2,
        &[
            "no clinics configured",
            "LIFELINE_CONFIG",
            "LIFELINE_CONFIG_TOML",
        ],
    );
    // An empty file is no better.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "[limits]\n").unwrap();
    let exit = lifeline(
        "no tenants in the file",
        &["serve"],
        &serve_env(&url, empty.to_str().unwrap()),
        dir.path(),
    )
    .await;
    assert_says(
        "no tenants in the file",
        &exit,
        2,
        &["no clinics configured", "empty.toml has no [[tenants]]"],
    );
}

#[tokio::test]
async fn a_missing_config_file_and_two_config_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let exit = lifeline(
        "missing config file",
        &["serve"],
        &serve_env(&url, "fixtures/nosuch.toml"),
        dir.path(),
    )
    .await;
    assert_says(
        "missing config file",
        &exit,
        2,
        &["fixtures/nosuch.toml", "current directory"],
    );
    let config = demo_config();
    let mut env = serve_env(&url, config.to_str().unwrap());
    env.push(("LIFELINE_CONFIG_TOML", "[limits]\n"));
    let exit = lifeline("two config sources", &["serve"], &env, dir.path()).await;
    assert_says(
        "two config sources",
        &exit,
        2,
        &["both LIFELINE_CONFIG", "LIFELINE_CONFIG_TOML"],
    );
}

#[tokio::test]
async fn a_broken_dotenv_file_is_named_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "PORT=8080\nthis is not a setting\n",
    )
    .unwrap();
    let exit = lifeline("broken .env", &["serve"], &[], dir.path()).await;
    assert_says("broken .env", &exit, 2, &[".env", "this is not a setting"]);
}

#[tokio::test]
async fn a_demo_section_next_to_twilio_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\npublic_url = \"https://lifeline.example.com\"\n\
         [twilio]\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"t\"\n\
         [ultravox]\ndata_connection_secrets = [\"0123456789abcdef\"]\n{}",
        std::fs::read_to_string(demo_config()).unwrap()
    );
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let url = format!("sqlite://{}/l.db", dir.path().display());
    let exit = lifeline(
        "demo with twilio",
        &["serve"],
        &serve_env(&url, config.to_str().unwrap()),
        dir.path(),
    )
    .await;
    assert_says(
        "demo with twilio",
        &exit,
        2,
        &[
            "[demo] cannot be used with [twilio]",
            "https server.public_url",
        ],
    );
    assert!(
        !dir.path().join("l.db").exists(),
        "nothing is opened before the configuration is valid"
    );
}
