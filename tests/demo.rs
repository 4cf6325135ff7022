//! The README's first command, as a new user runs it: `LIFELINE_CONFIG=fixtures/demo.toml` and
//! nothing else (the default SQLite file in the current directory), through the built binary.
//! The demo must be explorable at once: `/healthz` answers, the dashboard opens with the login
//! the README prints, and a (fake) Jambonz call is accepted and its callback request shows on
//! the dashboard. The only difference from the README: `PORT=0` and loopback, so tests can run
//! side by side (`cargo run --release` picking this binary is checked in tests/readme.rs).

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::FakeFeatureServer;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const HANG_GUARD: Duration = Duration::from_secs(30);

/// The text between `before` and the next `after` in `text`.
fn between<'a>(text: &'a str, before: &str, after: &str) -> &'a str {
    let start = text
        .find(before)
        .unwrap_or_else(|| panic!("README has no {before:?}"))
        + before.len();
    let len = text[start..].find(after).unwrap();
    &text[start..start + len]
}

/// A dashboard visitor: cookies kept by hand, redirects not followed.
struct Visitor {
    http: reqwest::Client,
    base: String,
    cookies: Vec<(String, String)>,
}

impl Visitor {
    async fn send(&mut self, req: reqwest::RequestBuilder) -> (u16, String) {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let resp = req.header("cookie", cookie).send().await.unwrap();
        let status = resp.status().as_u16();
        for c in resp.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap().split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            self.cookies.retain(|(name, _)| name != k);
            if !v.is_empty() {
                self.cookies.push((k.to_string(), v.to_string()));
            }
        }
        (status, resp.text().await.unwrap())
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn login(&mut self, username: &str, password: &str) -> u16 {
        let (status, form) = self.get("/admin/login").await;
        assert_eq!(status, 200, "{form}");
        let marker = "name=\"csrf\" value=\"";
        let csrf = between(&form, marker, "\"").to_string();
        let req = self
            .http
            .post(format!("{}/admin/login", self.base))
            .header("origin", &self.base)
            .form(&[
                ("username", username),
                ("password", password),
                ("csrf", &csrf),
            ]);
        self.send(req).await.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_run_command_serves_an_explorable_demo() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    // The access the README documents.
    let user = between(&readme, "log in as **`", "`**");
    let password = between(&readme, "with password **`", "`**");

    // A fresh directory holding what the command names (a clone has it at this path).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("fixtures")).unwrap();
    std::fs::copy(
        root.join("fixtures/demo.toml"),
        dir.path().join("fixtures/demo.toml"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .env_clear()
        .env("LIFELINE_CONFIG", "fixtures/demo.toml")
        .env("PORT", "0")
        .env("LIFELINE_BIND", "127.0.0.1")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn lifeline");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut demo_warning = None;
    let serving = tokio::time::timeout(HANG_GUARD, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let message = v["fields"]["message"].as_str().unwrap_or_default();
            if message.starts_with("DEMO MODE") {
                demo_warning = Some(v.clone());
            }
            if message == "lifeline serving" {
                return v;
            }
        }
        panic!("lifeline exited before serving")
    })
    .await
    .expect("lifeline serving");
    let demo_warning = demo_warning.expect("start-up says loudly that this is a demo");
    assert_eq!(demo_warning["level"], "WARN");
    assert_eq!(demo_warning["fields"]["staff"], user);
    assert!(
        dir.path().join("lifeline.db").exists(),
        "the default database, in the current directory"
    );
    let addr = serving["fields"]["addr"].as_str().unwrap().to_string();
    let base = format!("http://{addr}");

    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");

    let mut visitor = Visitor {
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        base: base.clone(),
        cookies: Vec::new(),
    };
    assert_eq!(
        visitor.login(user, "not the demo password").await,
        401,
        "a wrong password is refused"
    );
    assert_eq!(
        visitor.login(user, password).await,
        303,
        "the README's login"
    );
    let (status, page) = visitor.get("/admin").await;
    assert_eq!(status, 200);
    assert!(page.contains("Nobody is waiting for a callback."), "{page}");

    // A fake call from the demo clinic's Jambonz: accepted, and its message reaches the
    // dashboard.
    let mut call =
        FakeFeatureServer::connect(&format!("ws://{addr}/jambonz"), "demo", "demo-password-123")
            .await
            .expect("the demo clinic's Jambonz credentials are accepted");
    let output = call
        .collect_info_call("demo-call-1", "limping since this afternoon")
        .await;
    assert!(
        output["result"].to_string().to_lowercase().contains("call"),
        "the model is told a callback is arranged: {output}"
    );
    let (status, page) = visitor.get("/admin").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("Tommie") && page.contains("tel:+14168189171"),
        "the caller's request is on the dashboard: {page}"
    );
    call.close().await;

    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(HANG_GUARD, child.wait())
        .await
        .expect("exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
