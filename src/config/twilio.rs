//! The Twilio account lifeline answers webhooks for and updates live calls on (`[twilio]`).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::validate::base_url;

/// The Twilio account lifeline answers webhooks for and updates live calls on.
#[derive(Debug, Clone)]
pub struct TwilioSettings {
    /// `AC…`
    pub account_sid: String,
    /// Signs webhooks (`X-Twilio-Signature`) and authenticates REST calls.
    pub auth_token: SecretString,
    /// `https://api.twilio.com` (a fake on loopback in tests).
    pub api_base: String,
    /// How long a live-call update may take, retries included. Must leave room within the tool
    /// timeout to record a failed transfer and its callback request.
    pub update_deadline: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTwilio {
    #[serde(default)]
    account_sid: String,
    #[serde(default)]
    auth_token: SecretString,
    api_base: Option<String>,
    update_deadline_ms: Option<u64>,
}

impl RawTwilio {
    pub(super) fn validate(self, problems: &mut Vec<String>) -> TwilioSettings {
        if !(self.account_sid.starts_with("AC") && self.account_sid.len() == 34) {
            problems.push(
                "twilio.account_sid must be an account SID (AC followed by 32 characters)".into(),
            );
        }
        if self.auth_token.expose_secret().trim().is_empty() {
            problems.push("twilio.auth_token is required".into());
        }
        let deadline = Duration::from_millis(self.update_deadline_ms.unwrap_or(1500));
        if !(200..=30_000).contains(&deadline.as_millis()) {
            problems.push("twilio.update_deadline_ms must be between 200 and 30000".into());
        }
        TwilioSettings {
            account_sid: self.account_sid,
            auth_token: self.auth_token,
            api_base: base_url(
                "twilio.api_base",
                self.api_base,
                "https://api.twilio.com",
                problems,
            ),
            update_deadline: deadline,
        }
    }
}
