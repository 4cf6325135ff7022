//! Configuration of the operators' endpoints (`/metrics`).
//!
//! Every surface authenticates: `/metrics` wants a bearer token when one is configured
//! (`[ops] metrics_token`, or `LIFELINE_METRICS_TOKEN`; the file wins), and otherwise answers
//! local scrapers only.

use std::fmt;

use serde::Deserialize;

use super::validate::non_empty;

/// The shortest accepted metrics token: long enough not to be guessed.
const MIN_TOKEN_CHARS: usize = 16;

/// Settings of the operators' endpoints.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OpsSettings {
    /// The bearer token `/metrics` requires (`Authorization: Bearer …`); `None`: only clients
    /// on the loopback interface may scrape.
    pub metrics_token: Option<String>,
}

impl fmt::Debug for OpsSettings {
    /// The token is a secret: configuration dumps show only whether there is one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpsSettings")
            .field(
                "metrics_token",
                &self.metrics_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOps {
    metrics_token: Option<String>,
}

impl RawOps {
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<String>,
    ) -> OpsSettings {
        let metrics_token =
            non_empty(self.metrics_token).or_else(|| non_empty(env("LIFELINE_METRICS_TOKEN")));
        if let Some(token) = &metrics_token {
            if token.chars().count() < MIN_TOKEN_CHARS {
                problems.push(format!(
                    "ops.metrics_token (or LIFELINE_METRICS_TOKEN) must be at least {MIN_TOKEN_CHARS} characters"
                ));
            }
            // It travels in a header: anything else could never be presented.
            if !token.chars().all(|c| c.is_ascii_graphic()) {
                problems.push(
                    "ops.metrics_token may only hold visible ASCII characters (it is sent as a Bearer token)"
                        .into(),
                );
            }
        }
        OpsSettings { metrics_token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(file: Option<&str>, env_token: Option<&str>) -> (OpsSettings, Vec<String>) {
        let raw = RawOps {
            metrics_token: file.map(str::to_string),
        };
        let env = |n: &str| {
            (n == "LIFELINE_METRICS_TOKEN")
                .then(|| env_token.map(str::to_string))
                .flatten()
        };
        let mut problems = Vec::new();
        let settings = raw.validate(&env, &mut problems);
        (settings, problems)
    }

    #[test]
    fn no_token_means_loopback_only() {
        assert_eq!(build(None, None), (OpsSettings::default(), vec![]));
        assert_eq!(build(Some("  "), Some("")).0.metrics_token, None);
    }

    #[test]
    fn the_file_wins_over_the_environment() {
        let (settings, problems) =
            build(Some("file-token-0123456789"), Some("env-token-0123456789"));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            settings.metrics_token.as_deref(),
            Some("file-token-0123456789")
        );
        let (settings, _) = build(None, Some("env-token-0123456789"));
        assert_eq!(
            settings.metrics_token.as_deref(),
            Some("env-token-0123456789")
        );
    }

    #[test]
    fn short_or_unsendable_tokens_are_refused() {
        let (_, problems) = build(Some("short"), None);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("at least 16 characters"),
            "{problems:?}"
        );
        let (_, problems) = build(None, Some("a token with spaces in it"));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("visible ASCII"), "{problems:?}");
    }

    #[test]
    fn read_from_the_ops_section_of_the_file() {
        use crate::config::{Config, ProcessSettings};
        let process = ProcessSettings {
            database_url: "sqlite://x.db".into(),
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            config_path: None,
            database_max_connections: 16,
            database_worker_connections: 4,
        };
        let env = |n: &str| (n == "METRICS_TOKEN").then(|| "scraper-token-0123456789".to_string());
        let file = "[ops]\nmetrics_token = \"${METRICS_TOKEN}\"\n";
        let cfg = Config::build(&process, Some((file, "t.toml".as_ref())), &env).unwrap();
        assert_eq!(
            cfg.ops.metrics_token.as_deref(),
            Some("scraper-token-0123456789")
        );
        let err = Config::build(
            &process,
            Some((
                "[ops]\nmetrics_token = \"short\"\ntoken = 1\n",
                "t.toml".as_ref(),
            )),
            &env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = Config::build(
            &process,
            Some(("[ops]\nmetrics_token = \"short\"\n", "t.toml".as_ref())),
            &env,
        )
        .unwrap_err();
        assert!(err.to_string().contains("ops.metrics_token"), "{err}");
        // Without the section: loopback scrapers only.
        let cfg = Config::build(&process, None, &env).unwrap();
        assert_eq!(cfg.ops, OpsSettings::default());
    }

    #[test]
    fn debug_output_hides_the_token() {
        let settings = OpsSettings {
            metrics_token: Some("secret-token-0123456789".into()),
        };
        let text = format!("{settings:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }
}
