//! A clinic's paging (`[tenants.paging]`: a critical callback request pages the on-call ladder by
//! SMS until someone acknowledges it) and its texts to callers (`[tenants.caller_sms]`: what
//! happens next, after a message is taken or a transfer fails).

use std::time::Duration;

use serde::Deserialize;

use super::validate::{non_empty, phone};
use crate::phone::E164;

/// How a clinic's critical callback requests are paged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagingSettings {
    /// Unacknowledged this long, a page goes to the next rung of the ladder.
    pub ack_after: Duration,
    /// Acknowledged but not resolved this long, the acknowledger is reminded (again every
    /// `remind_after`).
    pub remind_after: Duration,
    /// The clinic's manager: the last rung, after the on-call numbers (`[tenants.alerts] sms`).
    pub manager: Option<E164>,
    /// How many times the whole ladder is walked before paging stops (the dashboard and the
    /// webhook alert still show the request).
    pub rounds: u32,
}

/// What a clinic texts its callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerSms {
    /// When the caller can expect the call back, as a phrase ("within 30 minutes").
    pub callback_window: String,
    /// Where to go meanwhile if it gets worse ("City Animal ER, 24 hours, +1 416 555 0199").
    pub emergency_fallback: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPaging {
    ack_minutes: Option<u64>,
    remind_minutes: Option<u64>,
    manager: Option<String>,
    rounds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallerSms {
    callback_window: Option<String>,
    emergency_fallback: Option<String>,
}

impl RawPaging {
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> PagingSettings {
        let minutes = |field: &str, v: Option<u64>, default: u64, problems: &mut Vec<String>| {
            let m = v.unwrap_or(default);
            if !(1..=24 * 60).contains(&m) {
                problems.push(format!(
                    "{label}: paging.{field} must be between 1 and 1440"
                ));
            }
            Duration::from_secs(m * 60)
        };
        let ack_after = minutes("ack_minutes", self.ack_minutes, 5, problems);
        let remind_after = minutes("remind_minutes", self.remind_minutes, 30, problems);
        let manager =
            non_empty(self.manager).and_then(|m| phone(label, "paging.manager", &m, problems));
        let rounds = self.rounds.unwrap_or(3);
        if !(1..=10).contains(&rounds) {
            problems.push(format!("{label}: paging.rounds must be between 1 and 10"));
        }
        PagingSettings {
            ack_after,
            remind_after,
            manager,
            rounds,
        }
    }
}

impl RawCallerSms {
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> CallerSms {
        let callback_window = non_empty(self.callback_window).unwrap_or_else(|| "soon".into());
        let emergency_fallback = non_empty(self.emergency_fallback);
        for (field, text) in [
            ("callback_window", Some(&callback_window)),
            ("emergency_fallback", emergency_fallback.as_ref()),
        ] {
            if text.is_some_and(|t| t.chars().count() > 200) {
                problems.push(format!(
                    "{label}: caller_sms.{field} must be at most 200 characters (it goes in a text)"
                ));
            }
        }
        CallerSms {
            callback_window,
            emergency_fallback,
        }
    }
}
