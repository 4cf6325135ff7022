//! Jambonz settings: the process-wide WebSocket endpoint (`[jambonz]`) and how Jambonz reaches
//! a tenant (`[tenants.jambonz]`: the Basic credentials it presents on the upgrade).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::validate::non_empty;

/// Settings of the Jambonz WebSocket endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct JambonzSettings {
    /// How often we ping an idle socket so load balancers keep it open (Jambonz never pings).
    pub ping_interval: Duration,
}

/// How Jambonz reaches a tenant.
#[derive(Debug, Clone)]
pub struct JambonzTenant {
    pub account_sid: Option<String>,
    pub application_sid: Option<String>,
    /// Basic-auth credentials Jambonz presents on the WebSocket upgrade.
    pub username: String,
    pub password: SecretString,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJambonz {
    ping_interval_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJambonzTenant {
    account_sid: Option<String>,
    application_sid: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: SecretString,
}

impl RawJambonz {
    /// The endpoint's settings; a zero ping interval is a problem.
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> JambonzSettings {
        let settings = JambonzSettings {
            ping_interval: Duration::from_secs(self.ping_interval_secs.unwrap_or(25)),
        };
        if settings.ping_interval.is_zero() {
            problems.push("jambonz.ping_interval_secs must be at least 1".into());
        }
        settings
    }
}

impl RawJambonzTenant {
    /// The tenant's credentials; a blank user name or a short password is a problem.
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> JambonzTenant {
        if self.username.trim().is_empty() {
            problems.push(format!("{label}: jambonz.username is required"));
        }
        if self.password.expose_secret().chars().count() < 12 {
            problems.push(format!(
                "{label}: jambonz.password must be at least 12 characters"
            ));
        }
        if self.username.contains(':') {
            problems.push(format!("{label}: jambonz.username cannot contain ':'"));
        }
        JambonzTenant {
            account_sid: non_empty(self.account_sid),
            application_sid: non_empty(self.application_sid),
            username: self.username,
            password: self.password,
        }
    }
}
