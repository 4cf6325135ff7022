//! Configuration of callback delivery, the worker and on-call alerts.
//!
//! The original worker's environment variables still work (`FRONTEND_CALLBACK_API_URL`,
//! `FRONTEND_API_KEY`, `CALLBACK_POLL_INTERVAL_MS`, `CALLBACK_BATCH_SIZE`); the file's values win.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::validate::{non_empty, non_empty_secret, phone};
use crate::phone::E164;

/// Where a tenant's callback requests are POSTed.
#[derive(Debug, Clone)]
pub struct Frontend {
    pub url: String,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<SecretString>,
    /// Signs each POST (`X-Lifeline-Signature`); none means unsigned.
    pub signing_secret: Option<SecretString>,
}

/// How deliveries are made and retried.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// The frontend of tenants that have none of their own.
    pub frontend: Option<Frontend>,
    /// The whole POST, connection included.
    pub timeout: Duration,
    /// The waits after each failed attempt; one more failure than there are waits makes a dead
    /// letter.
    pub retry_schedule: Vec<Duration>,
    /// Each wait is moved by up to this fraction either way, so a recovering frontend is not hit
    /// by every retry at once.
    pub jitter: f64,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Whether `lifeline serve` runs a worker too (one process is enough).
    pub in_process: bool,
    /// Requests claimed per query.
    pub batch_size: u32,
    /// Deliveries in flight per worker.
    pub concurrency: usize,
    /// How often to look for due work without a wake-up (retries coming due, missed notices).
    pub poll_interval: Duration,
    /// How long a claim holds before another worker may take the request over.
    pub lease: Duration,
    /// How often expired leases are returned.
    pub rescue_interval: Duration,
    /// On SIGTERM, how long in-flight deliveries may take before their leases are released.
    pub shutdown_grace: Duration,
}

/// How on-call staff are alerted.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// The Twilio number SMS alerts are sent from.
    pub sms_from: Option<E164>,
    /// A backup Slack-compatible webhook for every tenant (besides the tenant's own).
    pub webhook_url: Option<String>,
    /// The waits after each failed round; then the alert is marked failed.
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
}

/// A tenant's on-call contacts for alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantAlerts {
    /// Mobile numbers that get an SMS.
    pub sms: Vec<E164>,
    /// A Slack-compatible incoming webhook.
    pub webhook_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDelivery {
    frontend_url: Option<String>,
    api_key: Option<SecretString>,
    signing_secret: Option<SecretString>,
    timeout_ms: Option<u64>,
    retry_schedule_secs: Option<Vec<u64>>,
    jitter_percent: Option<u32>,
    max_retry_after_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    in_process: Option<bool>,
    batch_size: Option<u32>,
    concurrency: Option<usize>,
    poll_interval_ms: Option<u64>,
    lease_secs: Option<u64>,
    rescue_interval_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    sms_from: Option<String>,
    webhook_url: Option<String>,
    retry_schedule_secs: Option<Vec<u64>>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenantFrontend {
    url: Option<String>,
    api_key: Option<SecretString>,
    signing_secret: Option<SecretString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenantAlerts {
    #[serde(default)]
    sms: Vec<String>,
    webhook_url: Option<String>,
}

/// A bearer token must fit in a header (visible ASCII), or every POST would go out without it.
fn check_api_key(field: &str, key: Option<&SecretString>, problems: &mut Vec<String>) {
    if let Some(k) = key
        && !k.expose_secret().chars().all(|c| c.is_ascii_graphic())
    {
        problems.push(format!(
            "{field} may only hold visible ASCII characters (it is sent as a Bearer token)"
        ));
    }
}

fn http_url(field: &str, url: &str, problems: &mut Vec<String>) {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        problems.push(format!("{field} must be an http(s) URL (got {url:?})"));
    }
}

/// The longest wait anywhere in a schedule.
const WEEK_SECS: u64 = 7 * 24 * 3600;

fn schedule(field: &str, secs: Vec<u64>, problems: &mut Vec<String>) -> Vec<Duration> {
    if secs.is_empty() || secs.len() > 20 || secs.iter().any(|s| !(1..=WEEK_SECS).contains(s)) {
        problems.push(format!(
            "{field} must list 1 to 20 waits of 1 second to 7 days"
        ));
    }
    secs.into_iter().map(Duration::from_secs).collect()
}

impl RawDelivery {
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<String>,
    ) -> DeliverySettings {
        let url =
            non_empty(self.frontend_url).or_else(|| non_empty(env("FRONTEND_CALLBACK_API_URL")));
        let frontend = url.map(|url| {
            http_url("delivery.frontend_url", &url, problems);
            Frontend {
                url,
                api_key: non_empty_secret(self.api_key)
                    .or_else(|| non_empty(env("FRONTEND_API_KEY")).map(SecretString::from)),
                signing_secret: non_empty_secret(self.signing_secret)
                    .or_else(|| non_empty(env("FRONTEND_SIGNING_SECRET")).map(SecretString::from)),
            }
        });
        if let Some(secret) = frontend.as_ref().and_then(|f| f.signing_secret.as_ref())
            && secret.expose_secret().len() < 16
        {
            problems.push("delivery.signing_secret must be at least 16 characters".into());
        }
        if let Some(f) = &frontend {
            check_api_key("delivery.api_key", f.api_key.as_ref(), problems);
        }
        let timeout = Duration::from_millis(self.timeout_ms.unwrap_or(10_000));
        if !(100..=120_000).contains(&timeout.as_millis()) {
            problems.push("delivery.timeout_ms must be between 100 and 120000".into());
        }
        let jitter = self.jitter_percent.unwrap_or(10);
        if jitter > 50 {
            problems.push("delivery.jitter_percent must be at most 50".into());
        }
        DeliverySettings {
            frontend,
            timeout,
            retry_schedule: schedule(
                "delivery.retry_schedule_secs",
                self.retry_schedule_secs
                    .unwrap_or_else(|| vec![300, 900, 3600]),
                problems,
            ),
            jitter: f64::from(jitter) / 100.0,
            max_retry_after: {
                let secs = self.max_retry_after_secs.unwrap_or(6 * 3600);
                if !(1..=WEEK_SECS).contains(&secs) {
                    problems.push(
                        "delivery.max_retry_after_secs must be between 1 and 604800 (7 days)"
                            .into(),
                    );
                }
                Duration::from_secs(secs)
            },
        }
    }
}

fn env_number<T: std::str::FromStr>(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    problems: &mut Vec<String>,
) -> Option<T> {
    let raw = non_empty(env(name))?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            problems.push(format!("{name} must be a whole number (got {raw:?})"));
            None
        }
    }
}

impl RawWorker {
    pub(super) fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
        problems: &mut Vec<String>,
    ) -> WorkerSettings {
        let in_process = match self.in_process {
            Some(v) => v,
            None => match non_empty(env("LIFELINE_IN_PROCESS_WORKER")).as_deref() {
                None | Some("true" | "1" | "yes") => true,
                Some("false" | "0" | "no") => false,
                Some(other) => {
                    problems.push(format!(
                        "LIFELINE_IN_PROCESS_WORKER must be true or false (got {other:?})"
                    ));
                    true
                }
            },
        };
        let batch_size = self
            .batch_size
            .or_else(|| env_number(env, "CALLBACK_BATCH_SIZE", problems))
            .unwrap_or(50);
        if !(1..=1000).contains(&batch_size) {
            problems.push("worker.batch_size must be between 1 and 1000".into());
        }
        let concurrency = self.concurrency.unwrap_or(64);
        if !(1..=1024).contains(&concurrency) {
            problems.push("worker.concurrency must be between 1 and 1024".into());
        }
        let poll_interval = Duration::from_millis(
            self.poll_interval_ms
                .or_else(|| env_number(env, "CALLBACK_POLL_INTERVAL_MS", problems))
                .unwrap_or(5_000),
        );
        if !(10..=600_000).contains(&poll_interval.as_millis()) {
            problems.push("worker.poll_interval_ms must be between 10 and 600000".into());
        }
        let lease = Duration::from_secs(self.lease_secs.unwrap_or(60));
        let rescue_interval = Duration::from_secs(self.rescue_interval_secs.unwrap_or(15));
        let shutdown_grace = Duration::from_secs(self.shutdown_grace_secs.unwrap_or(10));
        if shutdown_grace > Duration::from_secs(300) {
            problems.push("worker.shutdown_grace_secs must be at most 300".into());
        }
        if lease.is_zero() || rescue_interval.is_zero() {
            problems.push(
                "worker.lease_secs and worker.rescue_interval_secs must be at least 1".into(),
            );
        }
        WorkerSettings {
            in_process,
            batch_size,
            concurrency,
            poll_interval,
            lease,
            rescue_interval,
            shutdown_grace,
        }
    }
}

impl RawAlerts {
    pub(super) fn validate(self, problems: &mut Vec<String>) -> AlertSettings {
        let sms_from =
            non_empty(self.sms_from).and_then(|n| phone("alerts", "sms_from", &n, problems));
        let webhook_url = non_empty(self.webhook_url);
        if let Some(u) = &webhook_url {
            http_url("alerts.webhook_url", u, problems);
        }
        AlertSettings {
            sms_from,
            webhook_url,
            retry_schedule: schedule(
                "alerts.retry_schedule_secs",
                self.retry_schedule_secs
                    .unwrap_or_else(|| vec![30, 120, 600, 1800]),
                problems,
            ),
            timeout: {
                let timeout = Duration::from_millis(self.timeout_ms.unwrap_or(10_000));
                if !(100..=120_000).contains(&timeout.as_millis()) {
                    problems.push("alerts.timeout_ms must be between 100 and 120000".into());
                }
                timeout
            },
        }
    }
}

impl RawTenantFrontend {
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> Option<Frontend> {
        let Some(url) = non_empty(self.url) else {
            problems.push(format!("{label}: frontend.url is required"));
            return None;
        };
        http_url(&format!("{label}: frontend.url"), &url, problems);
        let signing_secret = non_empty_secret(self.signing_secret);
        if signing_secret
            .as_ref()
            .is_some_and(|s| s.expose_secret().len() < 16)
        {
            problems.push(format!(
                "{label}: frontend.signing_secret must be at least 16 characters"
            ));
        }
        let api_key = non_empty_secret(self.api_key);
        check_api_key(
            &format!("{label}: frontend.api_key"),
            api_key.as_ref(),
            problems,
        );
        Some(Frontend {
            url,
            api_key,
            signing_secret,
        })
    }
}

impl RawTenantAlerts {
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> TenantAlerts {
        let sms = self
            .sms
            .iter()
            .filter_map(|n| phone(label, "alerts.sms", n, problems))
            .collect();
        let webhook_url = non_empty(self.webhook_url);
        if let Some(u) = &webhook_url {
            http_url(&format!("{label}: alerts.webhook_url"), u, problems);
        }
        TenantAlerts { sms, webhook_url }
    }
}
