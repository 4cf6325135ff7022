//! Staff access to the dashboard: accounts written in the configuration (besides those made
//! with `lifeline staff add`), session length and the lock-out after failed logins.

use std::time::Duration;

use serde::Deserialize;

/// A staff account from the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredStaff {
    pub username: String,
    /// argon2id PHC string (`lifeline staff hash` prints one).
    pub password_hash: String,
    /// The one clinic this account sees; `None`: every clinic.
    pub tenant: Option<String>,
}

/// Dashboard access settings.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub staff: Vec<ConfiguredStaff>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Failed logins of one name within `failure_window` that lock it…
    pub max_failures: i32,
    pub failure_window: Duration,
    /// …for this long.
    pub lockout: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    session_hours: Option<u64>,
    max_failed_logins: Option<i32>,
    lockout_minutes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStaff {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password_hash: String,
    tenant: Option<String>,
}

/// Whether `name` is a username lifeline accepts (also for `lifeline staff add`).
pub fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl RawAdmin {
    pub(super) fn validate(
        self,
        staff: Vec<RawStaff>,
        tenant_ids: &[&str],
        problems: &mut Vec<String>,
    ) -> AdminSettings {
        let session_hours = self.session_hours.unwrap_or(12);
        if !(1..=24 * 14).contains(&session_hours) {
            problems.push("admin.session_hours must be between 1 and 336".into());
        }
        let max_failures = self.max_failed_logins.unwrap_or(5);
        if !(3..=100).contains(&max_failures) {
            problems.push("admin.max_failed_logins must be between 3 and 100".into());
        }
        let lockout = self.lockout_minutes.unwrap_or(15);
        if !(1..=24 * 60).contains(&lockout) {
            problems.push("admin.lockout_minutes must be between 1 and 1440".into());
        }
        let mut accounts: Vec<ConfiguredStaff> = Vec::new();
        for (i, s) in staff.into_iter().enumerate() {
            let label = format!("staff[{i}]");
            if !valid_username(&s.username) {
                problems.push(format!(
                    "{label}: username must be 1-64 of a-z, A-Z, 0-9, '.', '_', '-', '@'"
                ));
            }
            if argon2::password_hash::phc::PasswordHash::new(&s.password_hash).is_err() {
                problems.push(format!(
                    "{label}: password_hash must be an argon2 PHC string (make one with `lifeline staff hash`)"
                ));
            }
            if let Some(t) = &s.tenant
                && !tenant_ids.contains(&t.as_str())
            {
                problems.push(format!("{label}: tenant {t:?} is not configured"));
            }
            if accounts.iter().any(|a| a.username == s.username) {
                problems.push(format!("{label}: username {:?} appears twice", s.username));
            }
            accounts.push(ConfiguredStaff {
                username: s.username,
                password_hash: s.password_hash,
                tenant: s.tenant,
            });
        }
        AdminSettings {
            staff: accounts,
            session_ttl: Duration::from_secs(session_hours * 3600),
            max_failures,
            failure_window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(lockout * 60),
        }
    }
}
