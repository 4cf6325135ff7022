//! The deployment files, checked without Docker or Railway: the Dockerfile's dependency-cache
//! stage stands in for every target the manifest declares (so a new binary cannot break the
//! image build), and the Railway files describe a web and a worker service whose start
//! commands the binary accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `cargo metadata` of a manifest (no dependencies, no network).
fn metadata(manifest: &Path) -> Result<Value, String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .arg("--manifest-path")
        .arg(manifest)
        .output()
        .expect("run cargo metadata");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("metadata JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The source files of the package's binary and library targets, relative to its directory.
fn bin_and_lib_sources(meta: &Value, dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap();
    meta["packages"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "bin" || k == "lib")
        })
        .map(|t| {
            Path::new(t["src_path"].as_str().unwrap())
                .strip_prefix(&dir)
                .unwrap()
                .to_path_buf()
        })
        .collect()
}

#[test]
fn the_docker_cache_stage_stubs_every_binary_and_library_the_manifest_declares() {
    let real = metadata(&root().join("Cargo.toml")).expect("the real manifest");
    let targets = bin_and_lib_sources(&real, root());
    assert!(
        targets.contains(&PathBuf::from("src/bin/queuebench.rs")),
        "{targets:?}"
    );

    // What the Dockerfile's first stage has: the manifest, the lock file, the stub script.
    let dir = tempfile::tempdir().unwrap();
    for f in ["Cargo.toml", "Cargo.lock"] {
        std::fs::copy(root().join(f), dir.path().join(f)).unwrap();
    }
    let status = Command::new("sh")
        .arg(root().join("scripts/docker-stub-targets.sh"))
        .arg("Cargo.toml")
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    for t in &targets {
        assert!(
            dir.path().join(t).is_file(),
            "the cache stage has no stand-in for {}",
            t.display()
        );
    }
    // Cargo accepts the stubbed tree as the same package.
    let stubbed = metadata(&dir.path().join("Cargo.toml")).expect("the stubbed manifest");
    let mut got = bin_and_lib_sources(&stubbed, dir.path());
    let mut want = targets.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // And the Dockerfile runs the script before its first build.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile.lines().collect();
    let copy = lines
        .iter()
        .position(|l| l.starts_with("COPY scripts/docker-stub-targets.sh"))
        .expect("the Dockerfile copies the stub script");
    let first_build = lines
        .iter()
        .position(|l| l.contains("cargo build"))
        .unwrap();
    assert!(copy < first_build);
    assert!(
        lines[first_build].contains("docker-stub-targets Cargo.toml &&"),
        "the first build runs after the stubs: {}",
        lines[first_build]
    );
    assert!(
        !dockerfile.contains("echo 'fn main() {}' >"),
        "no hand-written stub list to forget a binary in"
    );
}

fn railway(file: &str) -> toml::Value {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Runs the binary with `args` and `--help`: the subcommand exists.
fn accepts(args: &[&str]) -> bool {
    Command::new(env!("CARGO_BIN_EXE_lifeline"))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn railway_describes_a_web_service_gated_on_readiness_and_a_worker_service() {
    let web = railway("railway.toml");
    let worker = railway("railway.worker.toml");
    for (name, service) in [("web", &web), ("worker", &worker)] {
        assert_eq!(
            service["build"]["builder"].as_str(),
            Some("DOCKERFILE"),
            "{name}"
        );
        assert_eq!(
            service["build"]["dockerfilePath"].as_str(),
            Some("Dockerfile"),
            "{name}"
        );
        assert_eq!(
            service["deploy"]["restartPolicyType"].as_str(),
            Some("ON_FAILURE"),
            "{name}"
        );
    }
    let start = |s: &toml::Value| -> Vec<String> {
        s["deploy"]["startCommand"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let web_start = start(&web);
    let worker_start = start(&worker);
    assert_eq!(web_start, ["/usr/local/bin/lifeline", "serve"]);
    assert_eq!(worker_start, ["/usr/local/bin/lifeline", "worker"]);
    assert!(accepts(&["serve"]) && accepts(&["worker"]));
    assert_eq!(web["deploy"]["healthcheckPath"].as_str(), Some("/readyz"));
    assert!(
        worker["deploy"].get("healthcheckPath").is_none(),
        "the worker serves no HTTP"
    );
    // The Dockerfile installs the binary where the start commands look for it.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(dockerfile.contains("/src/target/release/lifeline /usr/local/bin/lifeline"));
}
