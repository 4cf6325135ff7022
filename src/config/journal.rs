//! Where the call path's journal lives and how long the database gets before it is used
//! (`[journal]`).
//!
//! ```toml
//! [journal]
//! dir = "/data/lifeline-journal"   # or LIFELINE_JOURNAL_DIR; must survive a redeploy
//! write_budget_ms = 800            # a write waits this long for the database, then is journaled
//!                                  # (default: 40 % of limits.tool_timeout_ms, at most 800)
//! read_budget_ms = 400             # a lookup waits this long, then memory answers
//!                                  # (default: 20 % of limits.tool_timeout_ms, at most 400)
//! probe_interval_ms = 1000         # how often the database is tried while the journal holds records
//! ```
//!
//! Without a setting, the journal of an SQLite database lives beside its file
//! (`lifeline.db` → `lifeline.db.lifeline-journal/`); that of a PostgreSQL database in
//! `./lifeline-journal/<digest of the database URL>` under the working directory.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::non_empty;

/// How the call path falls back on the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalSettings {
    /// Where the journal's segments live. On a platform with ephemeral disks this must be a
    /// mounted volume, or a redeploy during an outage loses what the journal holds.
    pub dir: PathBuf,
    /// How long a write of the call path may wait for the database before it is journaled.
    pub write_budget: Duration,
    /// How long a read of the call path may wait for the database before the rows this
    /// instance holds in memory answer it.
    pub read_budget: Duration,
    /// How often the database is probed while the journal holds records.
    pub probe_interval: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournal {
    dir: Option<String>,
    write_budget_ms: Option<u64>,
    read_budget_ms: Option<u64>,
    probe_interval_ms: Option<u64>,
}

/// The journal directory used when none is configured.
pub fn default_dir(database_url: &str) -> PathBuf {
    if let Some(rest) = database_url.strip_prefix("sqlite:") {
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or_default();
        if !path.is_empty() && !path.contains(":memory:") {
            return PathBuf::from(format!("{path}.lifeline-journal"));
        }
    }
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(database_url.as_bytes()));
    PathBuf::from("lifeline-journal").join(&digest[..16])
}

impl RawJournal {
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        database_url: &str,
        tool_timeout: Duration,
        problems: &mut Vec<String>,
    ) -> JournalSettings {
        let dir = non_empty(self.dir)
            .or_else(|| non_empty(env("LIFELINE_JOURNAL_DIR")))
            .map(PathBuf::from)
            .unwrap_or_else(|| default_dir(database_url));
        let settings = JournalSettings {
            dir,
            // By default a lookup and a write together take at most 60 % of the tool deadline.
            write_budget: self
                .write_budget_ms
                .map(Duration::from_millis)
                .unwrap_or_else(|| (tool_timeout * 2 / 5).min(Duration::from_millis(800))),
            read_budget: self
                .read_budget_ms
                .map(Duration::from_millis)
                .unwrap_or_else(|| (tool_timeout / 5).min(Duration::from_millis(400))),
            probe_interval: Duration::from_millis(self.probe_interval_ms.unwrap_or(1000)),
        };
        // A tool call may read its call, then log itself, then act: the budgets must leave the
        // action time before the model's deadline.
        let spent = settings.write_budget + settings.read_budget;
        if settings.write_budget.is_zero() || spent >= tool_timeout {
            problems.push(format!(
                "journal.write_budget_ms ({}) plus journal.read_budget_ms ({}) must be above 0 and \
                 below limits.tool_timeout_ms ({}): past the budgets the journal takes over, and \
                 the tool must still act before the model's deadline",
                settings.write_budget.as_millis(),
                settings.read_budget.as_millis(),
                tool_timeout.as_millis()
            ));
        }
        if !(50..=60_000).contains(&settings.probe_interval.as_millis()) {
            problems.push("journal.probe_interval_ms must be between 50 and 60000".into());
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_directory_follows_the_database() {
        assert_eq!(
            default_dir("sqlite:///var/lib/lifeline/lifeline.db?mode=rwc"),
            PathBuf::from("/var/lib/lifeline/lifeline.db.lifeline-journal")
        );
        assert_eq!(
            default_dir("sqlite:data/x.db"),
            PathBuf::from("data/x.db.lifeline-journal")
        );
        let pg = default_dir("postgres://u@db:5432/lifeline");
        assert!(pg.starts_with("lifeline-journal"), "{pg:?}");
        assert_ne!(pg, default_dir("postgres://u@db:5432/other"));
    }

    #[test]
    fn budgets_must_leave_room_before_the_tool_deadline() {
        let raw = RawJournal {
            write_budget_ms: Some(1700),
            ..RawJournal::default()
        };
        let mut problems = Vec::new();
        raw.validate(
            &|_| None,
            "sqlite:x.db",
            Duration::from_millis(2000),
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("journal.write_budget_ms"));
    }

    #[test]
    fn the_environment_names_the_directory() {
        let mut problems = Vec::new();
        let s = RawJournal::default().validate(
            &|k| (k == "LIFELINE_JOURNAL_DIR").then(|| "/data/j".to_string()),
            "postgres://x/y",
            Duration::from_millis(2000),
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.dir, PathBuf::from("/data/j"));
    }
}
