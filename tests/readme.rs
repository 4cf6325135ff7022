//! The README as a reader uses it: every ```toml block goes through the real configuration
//! loader (no snippet can teach a key lifeline refuses), the tool tables are what
//! `lifeline tools schema` prints, and the run command names the binary `cargo run` picks.

use std::path::Path;

use lifeline::config::{Config, ProcessSettings};
use lifeline::ops::tools_cli::{Format, Implementation, render};
use toml::Value;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
}

/// Every fenced block of `language`, with the README line its text starts on.
fn blocks(text: &str, language: &str) -> Vec<(usize, String)> {
    let fence = format!("```{language}");
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == fence => current = Some((i + 2, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => out.push(current.take().unwrap()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    assert!(current.is_none(), "an unclosed ```{language} block");
    out
}

/// The smallest valid configuration: one clinic, which README fragments extend.
const BASE: &str = r#"
[[tenants]]
id = "riverside"
name = "Riverside Emergency Vet"
numbers = ["+15083728299"]
[tenants.transfer]
primary = "+15557654321"
[tenants.ultravox]
api_key = "k"
system_prompt = "You are the after-hours assistant."
"#;

/// Lays `fragment` over `base` as pasting it into the file would: tables merge key by key, an
/// array of tables merges entry by entry, and a plain `[tenants.x]` table (a fragment written
/// to follow a `[[tenants]]` entry) goes into the last entry.
fn overlay(base: &mut Value, fragment: Value) {
    match (base, fragment) {
        (Value::Table(b), Value::Table(f)) => {
            for (k, v) in f {
                match b.get_mut(&k) {
                    Some(existing) => overlay(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(f)) if f.iter().all(Value::is_table) => {
            for (i, v) in f.into_iter().enumerate() {
                match b.get_mut(i) {
                    Some(existing) => overlay(existing, v),
                    None => b.push(v),
                }
            }
        }
        (Value::Array(b), f @ Value::Table(_)) if b.last().is_some_and(Value::is_table) => {
            overlay(b.last_mut().unwrap(), f)
        }
        (b, f) => *b = f,
    }
}

/// A plausible value for each `${NAME}` the README's snippets reference (and nothing else: the
/// process's own variables, like `CALLBACK_BATCH_SIZE`, stay unset).
fn env(name: &str) -> Option<String> {
    if !readme().contains(&format!("${{{name}}}")) {
        return None;
    }
    Some(if name.contains("URL") || name.contains("WEBHOOK") {
        "https://hooks.example.com/lifeline".to_string()
    } else {
        format!("{}-0123456789abcdef", name.to_lowercase())
    })
}

fn process() -> ProcessSettings {
    ProcessSettings {
        database_url: "sqlite://readme.db".into(),
        bind: "127.0.0.1".parse().unwrap(),
        port: 0,
        config_path: None,
        database_max_connections: 16,
        database_worker_connections: 4,
    }
}

#[test]
fn every_toml_block_of_the_readme_loads_through_the_real_configuration_loader() {
    let text = readme();
    let blocks = blocks(&text, "toml");
    assert!(blocks.len() >= 6, "found only {} blocks", blocks.len());
    // Each block is read in order on top of the ones before it, as a reader builds a file by
    // following the README (the Twilio block makes the later SMS alerts valid, and so on).
    let mut file: Value = toml::from_str(BASE).unwrap();
    for (line, body) in blocks {
        let fragment: Value = toml::from_str(&body)
            .unwrap_or_else(|e| panic!("README.md line {line}: not TOML by itself: {e}\n{body}"));
        overlay(&mut file, fragment);
        let combined = toml::to_string(&file).unwrap();
        let label = format!("README.md block at line {line}");
        if let Err(e) = Config::build(&process(), Some((&combined, Path::new(&label))), &env) {
            panic!("{label} does not load: {e}\n--- block:\n{body}\n--- as combined:\n{combined}");
        }
    }
}

#[test]
fn the_twilio_snippet_that_used_to_fail_is_refused_with_its_line_when_written_the_old_way() {
    // The README once put the clinic's `fallback` under [ultravox]: the loader must point at it.
    let text = format!("{BASE}\n[ultravox]\nsetup_timeout_ms = 5000\n\nfallback = \"dial\"\n");
    let line = text
        .lines()
        .position(|l| l.starts_with("fallback"))
        .unwrap()
        + 1;
    let err = Config::build(&process(), Some((&text, Path::new("x.toml"))), &env).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "x.toml, line {line}, column 1 (in [ultravox]): unknown field `fallback`"
        )) && msg.contains("[[tenants]] entry"),
        "{msg}"
    );
}

#[test]
fn the_readme_documents_the_tool_parameters_as_lifeline_declares_them() {
    let text = readme();
    let table = render(Implementation::DataConnection, Format::Markdown);
    assert!(
        text.contains(table.trim_end()),
        "README's tool tables differ from `lifeline tools schema --format markdown`:\n{table}"
    );
    assert_eq!(
        table,
        render(Implementation::Client, Format::Markdown),
        "both implementations declare the same parameters"
    );
}

#[test]
fn the_readme_run_command_names_the_binary_cargo_run_picks() {
    let text = readme();
    assert!(text.contains("\nLIFELINE_CONFIG=fixtures/demo.toml cargo run --release\n"));
    // `cargo run` without --bin runs the package's default-run binary.
    let manifest: Value = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        manifest["package"]["default-run"].as_str(),
        Some("lifeline")
    );
    let bins = manifest["bin"].as_array().unwrap();
    assert!(
        bins.len() > 1
            && bins.iter().any(|b| b["name"].as_str() == Some("lifeline")
                && b["path"].as_str() == Some("src/main.rs")),
        "several binaries, so only default-run makes the bare command work"
    );
}

#[test]
fn the_env_example_is_a_dotenv_file_lifeline_reads() {
    // README: `cp .env.example .env`; lifeline reads it with dotenvy at start.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".env.example");
    let vars: Vec<(String, String)> = dotenvy::from_path_iter(&path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!(".env.example: {e}"));
    let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("LIFELINE_CONFIG"), Some("fixtures/demo.toml"));
    assert_eq!(get("DATABASE_URL"), Some("sqlite://lifeline.db?mode=rwc"));
    assert_eq!(get("PORT"), Some("8080"));
}
