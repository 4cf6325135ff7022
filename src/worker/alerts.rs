//! On-call alerts: an SMS through the Twilio Messages API to each of the tenant's on-call
//! numbers, and a Slack-compatible webhook (the tenant's and the global backup).
//!
//! A round sends only what has not been sent yet, so a retried alert never texts someone twice
//! for the same reason.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;

use crate::config::{AlertSettings, Config, Tenant, TwilioSettings};
use crate::phone::mask;
use crate::store::{AlertOutcome, AlertSend, CallbackRequestRow, ClaimedAlert, Store};

use super::clock::WallClock;
use super::schedule::next_wait;

/// One place an alert goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub channel: &'static str,
    /// Where to send: a number, or a webhook URL (a secret).
    pub to: String,
}

impl Target {
    /// How the target is stored and logged: an SMS number as it is (the database holds numbers
    /// anyway; logs mask it), a webhook as its host and a digest of its URL, never the URL.
    pub fn key(&self) -> String {
        match self.channel {
            "sms" => self.to.clone(),
            _ => {
                use sha2::{Digest, Sha256};
                let digest = hex::encode(Sha256::digest(self.to.as_bytes()));
                let host = reqwest::Url::parse(&self.to)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_else(|| "webhook".into());
                format!("{host}#{}", &digest[..12])
            }
        }
    }

    /// The target as logs show it at info level.
    fn masked(&self) -> String {
        match self.channel {
            "sms" => mask(&self.to),
            _ => self.key(),
        }
    }
}

/// Every target of a tenant's alerts: its SMS numbers, its webhook, the global webhook.
pub fn targets(config: &Config, tenant: Option<&Tenant>) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(t) = tenant {
        out.extend(t.alerts.sms.iter().map(|n| Target {
            channel: "sms",
            to: n.to_string(),
        }));
        if let Some(url) = &t.alerts.webhook_url {
            out.push(Target {
                channel: "webhook",
                to: url.clone(),
            });
        }
    }
    if let Some(url) = &config.alerts.webhook_url
        && !out.iter().any(|t| &t.to == url)
    {
        out.push(Target {
            channel: "webhook",
            to: url.clone(),
        });
    }
    out
}

/// The alert's text: who to call back, at which number, about what, and why staff are told.
pub fn text(kind: &str, tenant_name: &str, request: &CallbackRequestRow) -> String {
    let who = request.caller_name.as_deref().unwrap_or("the caller");
    let pet = request
        .pet_name
        .as_deref()
        .map(|p| format!(" about {p}"))
        .unwrap_or_default();
    let concern: String = request
        .concern_description
        .as_deref()
        .map(|c| {
            let short: String = c.chars().take(120).collect();
            if short.len() < c.len() {
                format!(": {short}…")
            } else {
                format!(": {short}")
            }
        })
        .unwrap_or_default();
    let why = match (kind, request.reason.as_str()) {
        ("dead_letter", _) => format!(
            "could NOT be delivered to the callback system ({})",
            request
                .dead_letter_reason
                .as_deref()
                .unwrap_or("delivery failed")
        ),
        (_, "failed_transfer") => "transfer to on-call failed".to_string(),
        _ => "critical message".to_string(),
    };
    let id = request.id.to_string();
    format!(
        "lifeline {}: {tenant_name}: call back {who} at {}{pet}{concern} ({why}; ref {})",
        request.urgency_level.to_uppercase(),
        request.callback_number,
        &id[..8]
    )
}

/// The longest wait between alert rounds (a misconfigured schedule cannot overflow time).
const MAX_ALERT_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Sends, all at once, what is missing of `claimed`'s round; records each message as soon as
/// it is sent; says where the alert stands.
pub async fn send_round(
    http: &reqwest::Client,
    config: &Config,
    store: &dyn Store,
    claimed: &ClaimedAlert,
    clock: &dyn WallClock,
) -> (Vec<AlertSend>, AlertOutcome) {
    if claimed.request.resolved_at.is_some() {
        return (
            Vec::new(),
            AlertOutcome::Skipped {
                reason: "staff resolved the request already".into(),
            },
        );
    }
    let tenant = config.tenant(&claimed.alert.tenant_id).map(|t| t.as_ref());
    let mut all = targets(config, tenant);
    if claimed.alert.kind == "critical_request" && tenant.is_some_and(|t| t.paging.is_some()) {
        // The clinic pages its ladder one rung at a time (see `paging`): texting every on-call
        // number at once as well would defeat it. Webhooks still get the alert.
        all.retain(|t| t.channel != "sms");
    }
    if all.is_empty() {
        return (
            Vec::new(),
            AlertOutcome::Skipped {
                reason: "no alert channel configured".into(),
            },
        );
    }
    let tenant_name = tenant.map_or(claimed.alert.tenant_id.as_str(), |t| t.name.as_str());
    let body = text(&claimed.alert.kind, tenant_name, &claimed.request);
    let settings = &config.alerts;
    let missing = all.iter().filter(|t| {
        let key = t.key();
        !claimed
            .sent
            .iter()
            .any(|(c, to)| c == t.channel && *to == key)
    });
    let sends = futures_util::future::join_all(missing.map(|target| async {
        let result = send_target(http, config, target, &body).await;
        let (ok, status_code, error) = match result {
            Ok(code) => (true, Some(code), None),
            // Twilio quotes the number it refused: keep it out of logs and rows.
            Err((code, e)) => (false, code, Some(e.replace(&target.to, &mask(&target.to)))),
        };
        if let Some(e) = &error {
            tracing::warn!(
                alert = %claimed.alert.callback_request_id,
                kind = %claimed.alert.kind,
                channel = target.channel,
                to = %target.masked(),
                error = %e,
                "alert not sent"
            );
        }
        let send = AlertSend {
            channel: target.channel,
            target: target.key(),
            at: clock.now(),
            ok,
            status_code,
            error,
        };
        // Written now, not with the round's outcome: a round cut short (a lost lease, a crash)
        // must not text anyone twice.
        if let Err(e) = store.record_alert_send(&claimed.alert, &send).await {
            tracing::error!(error = %e, "could not record an alert message");
        }
        send
    }))
    .await;

    let failed: Vec<&AlertSend> = sends.iter().filter(|s| !s.ok).collect();
    let outcome = if failed.is_empty() {
        AlertOutcome::Sent
    } else {
        let error = failed
            .iter()
            .map(|s| {
                let shown = if s.channel == "sms" {
                    mask(&s.target)
                } else {
                    s.target.clone()
                };
                format!(
                    "{} {shown}: {}",
                    s.channel,
                    s.error.as_deref().unwrap_or("failed")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let failures = u32::try_from(claimed.alert.failures).unwrap_or(0) + 1;
        match next_wait(
            &settings.retry_schedule,
            failures,
            0.1,
            None,
            MAX_ALERT_WAIT,
        ) {
            Some(wait) => AlertOutcome::Retry {
                at: clock.now()
                    + chrono::Duration::from_std(wait.min(MAX_ALERT_WAIT))
                        .unwrap_or(chrono::Duration::hours(24)),
                error,
            },
            None => AlertOutcome::Failed { error },
        }
    };
    (sends, outcome)
}

/// The HTTP status of a sent message, or the status (if any) and why it was not sent.
pub(crate) type SendResult = Result<i32, (Option<i32>, String)>;

/// Sends `body` to one target: an SMS through Twilio's Messages API, or a webhook.
pub(crate) async fn send_target(
    http: &reqwest::Client,
    config: &Config,
    target: &Target,
    body: &str,
) -> SendResult {
    let settings = &config.alerts;
    match target.channel {
        "sms" => match (&config.twilio, &settings.sms_from) {
            (Some(twilio), Some(from)) => {
                send_sms(http, twilio, &from.to_string(), &target.to, body, settings).await
            }
            _ => Err((
                None,
                "SMS alerts need [twilio] and alerts.sms_from".to_string(),
            )),
        },
        _ => send_webhook(http, &target.to, body, settings.timeout).await,
    }
}

async fn send_sms(
    http: &reqwest::Client,
    twilio: &TwilioSettings,
    from: &str,
    to: &str,
    body: &str,
    settings: &AlertSettings,
) -> SendResult {
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        twilio.api_base, twilio.account_sid
    );
    let response = http
        .post(url)
        .basic_auth(&twilio.account_sid, Some(twilio.auth_token.expose_secret()))
        .form(&[("To", to), ("From", from), ("Body", body)])
        .timeout(settings.timeout)
        .send()
        .await
        .map_err(|e| (None, format!("Twilio Messages API: {}", e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        return Ok(i32::from(status.as_u16()));
    }
    // Twilio explains refusals in {"code": 21211, "message": "..."}.
    let detail = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .map(|v| format!(" (code {}: {})", v["code"], v["message"]))
        .unwrap_or_default();
    Err((
        Some(i32::from(status.as_u16())),
        format!("Twilio Messages API answered {status}{detail}"),
    ))
}

async fn send_webhook(
    http: &reqwest::Client,
    url: &str,
    text: &str,
    timeout: Duration,
) -> SendResult {
    let response = http
        .post(url)
        .json(&json!({ "text": text }))
        .timeout(timeout)
        .send()
        .await
        // The URL is a secret: never in an error.
        .map_err(|e| (None, format!("webhook: {}", e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        Ok(i32::from(status.as_u16()))
    } else {
        Err((
            Some(i32::from(status.as_u16())),
            format!("webhook answered {status}"),
        ))
    }
}
