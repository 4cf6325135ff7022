//! Where a configuration comes from: the process's own settings (environment variables and
//! flags), the TOML text (read by `source`), and the `${NAME}` references in
//! it resolved from the environment, so that secrets need not live in the file.

use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;

use secrecy::SecretString;

use super::source::{self, CONFIG_TOML_VAR};
use super::{Config, ConfigError};

impl Config {
    /// Reads the file named by `LIFELINE_CONFIG`, or the text of `LIFELINE_CONFIG_TOML` (one of
    /// them, or neither: no tenants), and builds the configuration.
    pub fn load(process: &ProcessSettings) -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        match source::read(process.config_path.as_deref(), &env)? {
            None => Self::build(process, None, &env),
            Some((text, label)) => Self::build(process, Some((&text, &label)), &env),
        }
    }

    /// Where the configuration came from, for start-up logs (`None`: no file, no tenants).
    pub fn source_label(process: &ProcessSettings) -> Option<String> {
        match &process.config_path {
            Some(path) => Some(path.display().to_string()),
            None => std::env::var(CONFIG_TOML_VAR)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|_| CONFIG_TOML_VAR.to_string()),
        }
    }
}

/// What the process itself is told through the environment or flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessSettings {
    /// Database: `sqlite://path?mode=rwc` (embedded default) or `postgres://…`.
    // A secret (a PostgreSQL URL may carry the password): `--help` does not echo the
    // environment's value either.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://lifeline.db?mode=rwc",
        hide_env_values = true,
        value_parser = secret_arg,
        global = true
    )]
    pub database_url: SecretString,
    /// Address to listen on.
    #[arg(long, env = "LIFELINE_BIND", default_value = "0.0.0.0", global = true)]
    pub bind: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080, global = true)]
    pub port: u16,
    /// TOML file with tenants and limits (or its whole text in `LIFELINE_CONFIG_TOML`).
    #[arg(long = "config", env = "LIFELINE_CONFIG", global = true)]
    pub config_path: Option<PathBuf>,
    /// Largest PostgreSQL connection pool of this process (mind the server's
    /// `max_connections` across instances).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, global = true,
          value_parser = clap::value_parser!(u32).range(2..=512))]
    pub database_max_connections: u32,
    /// PostgreSQL connections of the delivery worker, a pool of their own: the call path never
    /// waits for the worker, and the worker is not starved by call load. `lifeline serve`
    /// opens both pools (up to `DATABASE_MAX_CONNECTIONS` + this); `lifeline worker` only this.
    #[arg(long, env = "DATABASE_WORKER_CONNECTIONS", default_value_t = 4, global = true,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub database_worker_connections: u32,
}

/// A command-line or environment value kept as a secret from the start.
fn secret_arg(value: &str) -> Result<SecretString, Infallible> {
    Ok(SecretString::from(value))
}

/// Hides the password of a connection URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Replaces every `${NAME}` in the strings of `value` by environment variable `NAME`. `key` is
/// where `value` sits (`tenants[0].jambonz.password`): a variable that is not set is a problem
/// that names the key referencing it.
pub(super) fn interpolate(
    value: toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> toml::Value {
    match value {
        toml::Value::String(s) => toml::Value::String(interpolate_str(&s, key, env, problems)),
        toml::Value::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| interpolate(v, &format!("{key}[{i}]"), env, problems))
                .collect(),
        ),
        toml::Value::Table(table) => toml::Value::Table(
            table
                .into_iter()
                .map(|(k, v)| {
                    let path = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    let v = interpolate(v, &path, env, problems);
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

fn interpolate_str(
    s: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => problems.push(format!(
                        "environment variable {name} is not set (referenced by {key})"
                    )),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
