//! The real `lifeline` binary, serving a test database with a test configuration: for what only
//! a process shows (signals, exit codes, a crash).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A `lifeline serve` process.
pub struct LifelineProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Its JSON log lines, read as they come (a full pipe would stall the process).
    logs: mpsc::UnboundedReceiver<Value>,
    _config: tempfile::TempDir,
}

impl LifelineProcess {
    /// Starts `lifeline serve` on `database_url` with the configuration `toml` and waits until
    /// it serves.
    pub async fn serve(database_url: &str, toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("lifeline.toml");
        std::fs::write(&config, toml).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_lifeline"))
            .arg("serve")
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("LIFELINE_CONFIG", &config)
            .env("PORT", "0")
            .env("LIFELINE_BIND", "127.0.0.1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn lifeline serve");
        let (tx, logs) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let mut process = Self {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            logs,
            _config: dir,
        };
        let serving = process.wait_for_log("lifeline serving").await;
        process.addr = serving["fields"]["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no addr in {serving}"));
        process
    }

    /// The Jambonz WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/jambonz", self.addr)
    }

    /// Waits for the log line whose message is `message`.
    pub async fn wait_for_log(&mut self, message: &str) -> Value {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(v) = self.logs.recv().await {
                if v["fields"]["message"] == message {
                    return Some(v);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(v)) => v,
            Ok(None) => panic!("lifeline exited before logging {message:?}"),
            Err(_) => panic!("lifeline never logged {message:?}"),
        }
    }

    /// Sends SIGTERM (what a deploy does).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("lifeline still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Sends SIGKILL (a crash: nothing runs after it).
    pub async fn crash(&mut self) {
        self.child.start_kill().expect("kill lifeline");
        let _ = self.child.wait().await;
    }

    /// Waits for the process to exit (a guard against a hang, not a measure).
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("lifeline did not exit")
            .expect("wait for lifeline")
    }
}
