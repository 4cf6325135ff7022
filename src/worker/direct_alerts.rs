//! Alerts sent straight from the call path while the database is unreachable: a critical
//! callback request that only the journal holds cannot wait for the delivery worker (which
//! reads the database), and operators must hear that the journal is in use, and when it is
//! drained.

use std::sync::Arc;

use crate::config::Config;
use crate::phone::mask;
use crate::store::NewCallbackRequest;
use crate::store::resilient::DirectAlerts;

use super::alerts::{Target, send_target, targets};

/// Sends through the tenant's alert channels (SMS, webhooks), without the database.
pub struct ChannelAlerts {
    http: reqwest::Client,
    config: Arc<Config>,
}

impl ChannelAlerts {
    pub fn new(http: reqwest::Client, config: Arc<Config>) -> Self {
        Self { http, config }
    }

    fn send(&self, targets: Vec<Target>, text: String, what: &'static str) {
        if targets.is_empty() {
            return;
        }
        let http = self.http.clone();
        let config = self.config.clone();
        tokio::spawn(async move {
            for target in targets {
                match send_target(&http, &config, &target, &text).await {
                    Ok(_) => tracing::info!(what, channel = target.channel, "direct alert sent"),
                    Err((_, e)) => tracing::error!(
                        what,
                        channel = target.channel,
                        error = %e.replace(&target.to, &mask(&target.to)),
                        "direct alert not sent"
                    ),
                }
            }
        });
    }

    /// The operators' channel (the global alerts webhook): the journal is the instance's
    /// business, not a clinic's on-call phone's.
    fn operators(&self) -> Vec<Target> {
        targets(&self.config, None)
    }
}

/// The text of a critical request's direct alert (the same facts as the worker's alert).
pub fn critical_text(tenant_name: &str, r: &NewCallbackRequest) -> String {
    let who = r.caller_name.as_deref().unwrap_or("the caller");
    let pet = r
        .pet_name
        .as_deref()
        .map(|p| format!(" about {p}"))
        .unwrap_or_default();
    let concern = r
        .concern_description
        .as_deref()
        .map(|c| format!(": {}", c.chars().take(120).collect::<String>()))
        .unwrap_or_default();
    let why = if r.reason == "failed_transfer" {
        "transfer to on-call failed"
    } else {
        "critical message"
    };
    let id = r.id.to_string();
    format!(
        "lifeline CRITICAL: {tenant_name}: call back {who} at {}{pet}{concern} ({why}; ref {}; \
         sent directly: the database is unreachable)",
        r.callback_number,
        &id[..8]
    )
}

impl DirectAlerts for ChannelAlerts {
    fn critical(&self, request: &NewCallbackRequest) {
        let tenant = self.config.tenant(&request.tenant_id).map(|t| t.as_ref());
        let name = tenant.map_or(request.tenant_id.as_str(), |t| t.name.as_str());
        self.send(
            targets(&self.config, tenant),
            critical_text(name, request),
            "critical callback request",
        );
    }

    fn journal_in_use(&self, reason: &str) {
        self.send(
            self.operators(),
            format!(
                "lifeline: the database is unreachable ({reason}); calls go on and are written \
                 to the local journal, replayed when the database answers"
            ),
            "journal in use",
        );
    }

    fn journal_drained(&self, replayed: u64) {
        self.send(
            self.operators(),
            format!(
                "lifeline: the database answers again; {replayed} journaled records were \
                 replayed into it"
            ),
            "journal drained",
        );
    }
}
