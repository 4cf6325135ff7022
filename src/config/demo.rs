//! `[demo]`: a configuration made to be tried, with a dashboard login everybody knows (it is
//! printed in the README). The account exists only while the configuration says `[demo]`: it is
//! never written to the database, so a production configuration started on the same database
//! has no such account. A demo cannot carry real calls: `[twilio]` or an `https://` public URL
//! (a deployment reachable from the internet) refuse it.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{AdminSettings, ConfiguredStaff, valid_username};

/// The shortest demo password (the same floor as every staff password).
const MIN_PASSWORD_CHARS: usize = 12;

/// What start-up tells about a demo configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSettings {
    /// The dashboard account anyone reading the configuration can log in with.
    pub staff_username: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDemo {
    #[serde(default)]
    staff_username: String,
    #[serde(default)]
    staff_password: SecretString,
}

impl RawDemo {
    /// Adds the demo account to `admin.staff` (every clinic), or lists why it cannot be.
    pub(super) fn validate(
        self,
        admin: &mut AdminSettings,
        twilio: bool,
        public_url: Option<&str>,
        problems: &mut Vec<String>,
    ) -> DemoSettings {
        let before = problems.len();
        if !valid_username(&self.staff_username) {
            problems.push(
                "demo.staff_username must be 1-64 of a-z, A-Z, 0-9, '.', '_', '-', '@'".into(),
            );
        }
        if self.staff_password.expose_secret().chars().count() < MIN_PASSWORD_CHARS {
            problems.push(format!(
                "demo.staff_password must be at least {MIN_PASSWORD_CHARS} characters"
            ));
        }
        if twilio {
            problems.push(
                "[demo] cannot be used with [twilio]: a demo's dashboard password is public, and real calls would reach it; remove [demo] (make accounts with `lifeline staff add`)".into(),
            );
        }
        if let Some(url) = public_url.filter(|u| u.starts_with("https://")) {
            problems.push(format!(
                "[demo] cannot be used with an https server.public_url ({url}): a demo's dashboard password is public; remove [demo] (make accounts with `lifeline staff add`)"
            ));
        }
        if admin
            .staff
            .iter()
            .any(|s| s.username == self.staff_username)
        {
            problems.push(format!(
                "demo.staff_username {:?} is also a [[staff]] account",
                self.staff_username
            ));
        }
        if problems.len() == before {
            match crate::password::hash_password(self.staff_password.expose_secret()) {
                Ok(hash) => admin.staff.push(ConfiguredStaff {
                    username: self.staff_username.clone(),
                    password_hash: hash,
                    tenant: None,
                }),
                Err(e) => problems.push(format!("demo.staff_password cannot be hashed: {e}")),
            }
        }
        DemoSettings {
            staff_username: self.staff_username,
        }
    }
}
