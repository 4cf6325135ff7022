//! On-call alerts: an SMS through the Twilio Messages API to each of the tenant's on-call
//! numbers, and a Slack-compatible webhook (the tenant's and the global backup).
//!
//! A round sends only what has not been sent yet, so a retried alert never texts someone twice
//! for the same reason.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::config::{AlertSettings, Config, Tenant, TwilioSettings};
use crate::phone::mask;
use crate::store::{AlertOutcome, AlertSend, CallbackRequestRow, ClaimedAlert};

use super::schedule::next_wait;

/// One place an alert goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub channel: &'static str,
    pub to: String,
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

/// Sends what is missing of `claimed` and says where the alert stands.
pub async fn send_round(
    http: &reqwest::Client,
    config: &Config,
    claimed: &ClaimedAlert,
    now: DateTime<Utc>,
) -> (Vec<AlertSend>, AlertOutcome) {
    let tenant = config.tenant(&claimed.alert.tenant_id).map(|t| t.as_ref());
    let all = targets(config, tenant);
    if all.is_empty() {
        return (Vec::new(), AlertOutcome::Skipped);
    }
    let tenant_name = tenant.map_or(claimed.alert.tenant_id.as_str(), |t| t.name.as_str());
    let body = text(&claimed.alert.kind, tenant_name, &claimed.request);
    let settings = &config.alerts;
    let mut sends = Vec::new();
    for target in all.iter().filter(|t| {
        !claimed
            .sent
            .iter()
            .any(|(c, to)| c == t.channel && to == &t.to)
    }) {
        let result = match target.channel {
            "sms" => match (&config.twilio, &settings.sms_from) {
                (Some(twilio), Some(from)) => {
                    send_sms(http, twilio, &from.to_string(), &target.to, &body, settings).await
                }
                _ => Err((
                    None,
                    "SMS alerts need [twilio] and alerts.sms_from".to_string(),
                )),
            },
            _ => send_webhook(http, &target.to, &body, settings.timeout).await,
        };
        let (ok, status_code, error) = match result {
            Ok(code) => (true, Some(code), None),
            Err((code, e)) => (false, code, Some(e)),
        };
        if let Some(e) = &error {
            tracing::warn!(
                alert = %claimed.alert.callback_request_id,
                kind = %claimed.alert.kind,
                channel = target.channel,
                to = %mask_target(target),
                error = %e,
                "alert not sent"
            );
        }
        sends.push(AlertSend {
            channel: target.channel,
            target: target.to.clone(),
            at: now,
            ok,
            status_code,
            error,
        });
    }
    let failed: Vec<&AlertSend> = sends.iter().filter(|s| !s.ok).collect();
    let outcome = if failed.is_empty() {
        AlertOutcome::Sent
    } else {
        let error = failed
            .iter()
            .map(|s| {
                format!(
                    "{} {}: {}",
                    s.channel,
                    mask_target(&Target {
                        channel: s.channel,
                        to: s.target.clone()
                    }),
                    s.error.as_deref().unwrap_or("failed")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let failures = u32::try_from(claimed.alert.failures).unwrap_or(0) + 1;
        match next_wait(&settings.retry_schedule, failures, 0.1, None, Duration::MAX) {
            Some(wait) => AlertOutcome::Retry {
                at: now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX),
                error,
            },
            None => AlertOutcome::Failed { error },
        }
    };
    (sends, outcome)
}

/// A target as logs may show it: numbers masked, webhook URLs cut to their host.
fn mask_target(t: &Target) -> String {
    match t.channel {
        "sms" => mask(&t.to),
        _ => reqwest::Url::parse(&t.to)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "webhook".into()),
    }
}

type SendResult = Result<i32, (Option<i32>, String)>;

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
        .basic_auth(&twilio.account_sid, Some(&twilio.auth_token))
        .form(&[("To", to), ("From", from), ("Body", body)])
        .timeout(settings.timeout)
        .send()
        .await
        .map_err(|e| (None, format!("Twilio Messages API: {e}")))?;
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
        .map_err(|e| (None, format!("webhook: {e}")))?;
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
