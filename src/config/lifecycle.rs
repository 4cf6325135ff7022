//! How a `serve` process stops (`[shutdown]`) and how it recovers work whose owner went away
//! (`[reconciler]`).
//!
//! ```toml
//! [shutdown]
//! grace_secs = 20          # in-flight tool calls get this long after SIGTERM
//!
//! [reconciler]
//! interval_ms = 30000      # how often stale transfers and invocations are looked for
//! margin_ms = 60000        # how long past its deadline something may stay unfinished
//! ```

use std::time::Duration;

use serde::Deserialize;

/// Shutdown and recovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleSettings {
    /// After SIGTERM, how long in-flight tool calls may take to finish before the call sockets
    /// are closed (1001, so Jambonz reconnects to another instance) and the process exits.
    pub shutdown_grace: Duration,
    /// How often the reconciler runs.
    pub reconcile_interval: Duration,
    /// How long past its ring timeout (or past its call's end) a transfer attempt may stay
    /// `dialing`, and how old a `pending` invocation may grow, before the reconciler ends it.
    pub reconcile_margin: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            reconcile_interval: Duration::from_secs(30),
            reconcile_margin: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconciler {
    interval_ms: Option<u64>,
    margin_ms: Option<u64>,
}

/// Validates `[shutdown]` and `[reconciler]` together.
pub(super) fn validate(
    shutdown: &RawShutdown,
    reconciler: &RawReconciler,
    problems: &mut Vec<String>,
) -> LifecycleSettings {
    let d = LifecycleSettings::default();
    let settings = LifecycleSettings {
        shutdown_grace: shutdown
            .grace_secs
            .map(Duration::from_secs)
            .unwrap_or(d.shutdown_grace),
        reconcile_interval: reconciler
            .interval_ms
            .map(Duration::from_millis)
            .unwrap_or(d.reconcile_interval),
        reconcile_margin: reconciler
            .margin_ms
            .map(Duration::from_millis)
            .unwrap_or(d.reconcile_margin),
    };
    if !(1..=600).contains(&settings.shutdown_grace.as_secs()) {
        problems.push(
            "shutdown.grace_secs must be between 1 and 600 (the platform kills the process after its own grace period)"
                .into(),
        );
    }
    if !(50..=3_600_000).contains(&settings.reconcile_interval.as_millis()) {
        problems.push("reconciler.interval_ms must be between 50 and 3600000".into());
    }
    if !(100..=86_400_000).contains(&settings.reconcile_margin.as_millis()) {
        problems.push(
            "reconciler.margin_ms must be between 100 and 86400000 (a transfer's outcome may arrive that long after its ring timeout)"
                .into(),
        );
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (LifecycleSettings, Vec<String>) {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            shutdown: RawShutdown,
            #[serde(default)]
            reconciler: RawReconciler,
        }
        let file: File = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let settings = validate(&file.shutdown, &file.reconciler, &mut problems);
        (settings, problems)
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(""), (LifecycleSettings::default(), vec![]));
        let (s, problems) =
            parse("[shutdown]\ngrace_secs = 5\n[reconciler]\ninterval_ms = 200\nmargin_ms = 1500");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.shutdown_grace, Duration::from_secs(5));
        assert_eq!(s.reconcile_interval, Duration::from_millis(200));
        assert_eq!(s.reconcile_margin, Duration::from_millis(1500));
    }

    #[test]
    fn out_of_range_values_are_each_reported() {
        let (_, problems) =
            parse("[shutdown]\ngrace_secs = 0\n[reconciler]\ninterval_ms = 1\nmargin_ms = 0");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("shutdown.grace_secs"));
        assert!(problems[1].contains("reconciler.interval_ms"));
        assert!(problems[2].contains("reconciler.margin_ms"));
    }
}
