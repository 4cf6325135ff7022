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
    /// The lines [`LifelineProcess::wait_for_log`] has read so far.
    seen: Vec<Value>,
    _config: tempfile::TempDir,
}

impl LifelineProcess {
    /// Starts `lifeline serve` on `database_url` with the configuration `toml` and waits until
    /// it serves.
    pub async fn serve(database_url: &str, toml: &str) -> Self {
        Self::serve_limited(database_url, toml, None).await
    }

    /// The same, with the shell's `ulimit` applied first (e.g. `-Sn 1024`: a soft open-files
    /// limit of 1024, as containers often start with).
    pub async fn serve_limited(database_url: &str, toml: &str, ulimit: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("lifeline.toml");
        std::fs::write(&config, toml).expect("write config");
        let binary = env!("CARGO_BIN_EXE_lifeline");
        let mut command = match ulimit {
            None => Command::new(binary),
            Some(args) => {
                // `exec`: the process is lifeline itself, with the shell's limits.
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("ulimit {args} && exec \"$0\" \"$@\""))
                    .arg(binary);
                sh
            }
        };
        let mut child = command
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
            seen: Vec::new(),
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

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("lifeline still running")
    }

    /// A log line already read (by [`LifelineProcess::wait_for_log`]) whose message is `message`.
    pub fn logged(&self, message: &str) -> Option<&Value> {
        self.seen.iter().find(|v| v["fields"]["message"] == message)
    }

    /// Waits for the log line whose message is `message` (or finds it among the lines already
    /// read: waiting for start-up reads past what the process logged before it, such as a
    /// journal replay that finishes before `lifeline serving`).
    pub async fn wait_for_log(&mut self, message: &str) -> Value {
        if let Some(v) = self.logged(message) {
            return v.clone();
        }
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(v) = self.logs.recv().await {
                self.seen.push(v.clone());
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
            Err(_) => {
                // What it did log, to tell why.
                for v in &self.seen {
                    eprintln!("lifeline logged: {v}");
                }
                panic!("lifeline never logged {message:?}")
            }
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
