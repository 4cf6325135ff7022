//! Typed configuration: environment variables for the process (12-factor), an optional TOML file
//! for tenants and limits. Everything is validated once, at start-up, and every problem is reported
//! in one message so an operator fixes them all in one go.
//!
//! Secrets do not have to live in the file: any string value may be written `${NAME}` and is taken
//! from the environment variable `NAME`.
//!
//! This module assembles the [`Config`]; each section lives in the module named for it, which
//! reads its raw TOML shape and validates it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

mod admin;
mod delivery;
mod demo;
mod jambonz;
mod journal;
mod lifecycle;
mod limits;
mod load;
pub mod oncall;
mod ops;
mod paging;
mod server;
mod source;
mod tenant;
mod transfer;
mod twilio;
mod ultravox;
mod validate;
pub use admin::{AdminSettings, ConfiguredStaff, valid_username};
pub use delivery::{AlertSettings, DeliverySettings, Frontend, TenantAlerts, WorkerSettings};
pub use demo::DemoSettings;
pub use jambonz::{JambonzSettings, JambonzTenant};
pub use journal::{JournalSettings, default_dir as default_journal_dir};
pub use lifecycle::LifecycleSettings;
pub use limits::Limits;
pub use load::{ProcessSettings, redact_url};
pub use ops::OpsSettings;
pub use paging::{CallerSms, PagingSettings};
pub use server::{ConnectionSettings, RESERVED_DESCRIPTORS};
pub use source::CONFIG_TOML_VAR;
pub use tenant::{Fallback, Tenant, TenantProfile};
pub use transfer::TransferTargets;
pub use twilio::TwilioSettings;
pub use ultravox::{UltravoxGlobal, UltravoxSettings};

use crate::phone::E164;
use validate::non_empty;

/// Everything that is wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The validated configuration of one lifeline process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://…` or `postgres://…` (a secret: a PostgreSQL URL may carry the password).
    pub database_url: SecretString,
    /// PostgreSQL pool size of this process's call path (tool calls, webhooks, dashboard).
    pub database_max_connections: u32,
    /// PostgreSQL pool size of the delivery worker (in `lifeline serve`, a pool of its own
    /// besides the call path's; in `lifeline worker`, the only one).
    pub database_worker_connections: u32,
    pub bind: IpAddr,
    pub port: u16,
    /// How the listener treats connections (`[server]`): timeouts and caps.
    pub connections: ConnectionSettings,
    pub limits: Limits,
    pub jambonz: JambonzSettings,
    /// Where Twilio and Ultravox reach this service (`https://lifeline.example.com`, no trailing
    /// slash): Twilio signs the URL it requested, and TwiML pushed to a live call needs absolute
    /// `action` URLs. Required when `[twilio]` is set.
    pub public_url: Option<String>,
    /// The Twilio account that carries calls (`None`: Jambonz only).
    pub twilio: Option<TwilioSettings>,
    /// Ultravox REST API and the ways Ultravox authenticates to lifeline.
    pub ultravox: UltravoxGlobal,
    /// Callback delivery to the clinics' frontends.
    pub delivery: DeliverySettings,
    /// The callback delivery worker.
    pub worker: WorkerSettings,
    /// On-call alerts (SMS, webhook).
    pub alerts: AlertSettings,
    /// Staff access to the dashboard.
    pub admin: AdminSettings,
    /// The operators' endpoints (`/metrics`).
    pub ops: OpsSettings,
    /// Shutdown grace and the reconciler.
    pub lifecycle: LifecycleSettings,
    /// The call path's journal, for when the database cannot commit in time (`[journal]`).
    pub journal: JournalSettings,
    /// `[demo]`: this configuration is a demonstration with a published dashboard login (the
    /// account is in `admin.staff`). Never in production; start-up says so loudly.
    pub demo: Option<DemoSettings>,
    pub tenants: Vec<Arc<Tenant>>,
}

impl Config {
    /// Builds and validates the configuration from the process inputs. `file` is the TOML text
    /// (already read) and where it came from; `env` resolves `${NAME}` references.
    pub fn build(
        process: &ProcessSettings,
        file: Option<(&str, &Path)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let raw: RawFile = match file {
            None => RawFile::default(),
            Some((text, path)) => {
                // The structure is checked on the text itself, so that an unknown key or a value
                // of the wrong type is reported with its line; `${NAME}` only ever stands for a
                // string, so resolving it afterwards cannot change the structure.
                if let Err(e) = toml::from_str::<RawFile>(text) {
                    return Err(ConfigError(vec![source::located(path, text, &e)]));
                }
                let value = toml::from_str::<toml::Value>(text)
                    .map_err(|e| ConfigError(vec![source::located(path, text, &e)]))?;
                let value = load::interpolate(value, "", env, &mut problems);
                match RawFile::deserialize(value) {
                    Ok(raw) => raw,
                    Err(e) => {
                        problems.push(format!("{}: {e}", path.display()));
                        return Err(ConfigError(problems));
                    }
                }
            }
        };

        let database_url = process.database_url.expose_secret();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "DATABASE_URL must start with sqlite: or postgres:// (got {:?})",
                redact_url(database_url)
            ));
        }

        let limits = raw.limits.validate(&mut problems);
        let jambonz = raw.jambonz.validate(&mut problems);

        let connections = server::validate(&raw.server, &mut problems);
        let public_url =
            non_empty(raw.server.public_url).map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            problems.push(format!(
                "server.public_url must start with https:// (got {u:?})"
            ));
        }
        let twilio = raw.twilio.map(|t| t.validate(&mut problems));
        if twilio.is_some() && public_url.is_none() {
            problems.push(
                "server.public_url is required with [twilio]: Twilio signs the URL it requested, \
                 and transfers need absolute callback URLs"
                    .into(),
            );
        }
        let ultravox = raw.ultravox.validate(&mut problems);
        let delivery = raw.delivery.validate(env, &mut problems);
        let worker = raw.worker.validate(env, &mut problems);
        let alerts = raw.alerts.validate(&mut problems);
        let ops = raw.ops.validate(env, &mut problems);
        let lifecycle = lifecycle::validate(&raw.shutdown, &raw.reconciler, &mut problems);
        let journal = raw
            .journal
            .validate(env, database_url, limits.tool_timeout, &mut problems);
        if worker.lease < delivery.timeout.max(alerts.timeout) + Duration::from_secs(5) {
            problems.push(format!(
                "worker.lease_secs ({}) must exceed delivery.timeout_ms and alerts.timeout_ms by at least 5 s: a lease that expires mid-POST lets a second worker post the same request",
                worker.lease.as_secs()
            ));
        }

        let mut tenants = Vec::new();
        let mut ids = HashSet::new();
        let mut numbers: HashMap<String, String> = HashMap::new();
        for (i, t) in raw.tenants.into_iter().enumerate() {
            let label = if t.id.is_empty() {
                format!("tenants[{i}]")
            } else {
                format!("tenant {:?}", t.id)
            };
            if let Some(tenant) = t.validate(&label, &mut problems) {
                if !ids.insert(tenant.id.clone()) {
                    problems.push(format!("{label}: id is used by another tenant"));
                }
                for n in &tenant.numbers {
                    if let Some(other) = numbers.insert(n.to_string(), tenant.id.clone()) {
                        problems.push(format!(
                            "{label}: number {n} is also answered by tenant {other:?}"
                        ));
                    }
                }
                tenants.push(Arc::new(tenant));
            }
        }

        if let Some(t) = &twilio
            && t.update_deadline + Duration::from_millis(300) > limits.tool_timeout
        {
            problems.push(format!(
                "twilio.update_deadline_ms ({}) must be at least 300 below limits.tool_timeout_ms ({}): a failed transfer must still be recorded, with its callback request, before the AI's tool deadline",
                t.update_deadline.as_millis(),
                limits.tool_timeout.as_millis()
            ));
        }
        if twilio.is_some() && ultravox.data_connection_secrets.is_empty() {
            for t in tenants.iter().filter(|t| t.ultravox.agent_id.is_none()) {
                problems.push(format!(
                    "tenant {:?}: an inline system_prompt on Twilio needs ultravox.data_connection_secrets (its tools reach lifeline over the signed data connection)",
                    t.id
                ));
            }
        }

        let with_frontend = tenants
            .iter()
            .filter(|t| t.frontend.is_some() || delivery.frontend.is_some())
            .count();
        if with_frontend > 0 && with_frontend < tenants.len() {
            for t in tenants.iter().filter(|t| t.frontend.is_none()) {
                problems.push(format!(
                    "tenant {:?}: no frontend for its callback requests (set [tenants.frontend] or delivery.frontend_url); they would never be delivered",
                    t.id
                ));
            }
        }
        for t in tenants.iter().filter(|t| !t.alerts.sms.is_empty()) {
            if twilio.is_none() || alerts.sms_from.is_none() {
                problems.push(format!(
                    "tenant {:?}: SMS alerts need [twilio] and alerts.sms_from",
                    t.id
                ));
            }
        }
        for t in &tenants {
            if (t.paging.is_some() || t.caller_sms.is_some())
                && (twilio.is_none() || alerts.sms_from.is_none())
            {
                problems.push(format!(
                    "tenant {:?}: [tenants.paging] and [tenants.caller_sms] need [twilio] and alerts.sms_from",
                    t.id
                ));
            }
            if let Some(p) = &t.paging
                && t.alerts.sms.is_empty()
                && p.manager.is_none()
            {
                problems.push(format!(
                    "tenant {:?}: [tenants.paging] needs on-call numbers ([tenants.alerts] sms) or paging.manager",
                    t.id
                ));
            }
        }
        let tenant_ids: Vec<&str> = tenants.iter().map(|t| t.id.as_str()).collect();
        let mut admin = raw.admin.validate(raw.staff, &tenant_ids, &mut problems);
        let demo = raw.demo.map(|d| {
            d.validate(
                &mut admin,
                twilio.is_some(),
                public_url.as_deref(),
                &mut problems,
            )
        });
        if problems.is_empty() {
            Ok(Self {
                demo,
                admin,
                delivery,
                worker,
                alerts,
                ops,
                lifecycle,
                journal,
                database_url: process.database_url.clone(),
                database_max_connections: process.database_max_connections,
                database_worker_connections: process.database_worker_connections,
                bind: process.bind,
                port: process.port,
                connections,
                limits,
                jambonz,
                public_url,
                twilio,
                ultravox,
                tenants,
            })
        } else {
            Err(ConfigError(problems))
        }
    }

    /// The tenant that answers `number` (any spelling `E164::parse` accepts).
    pub fn tenant_by_number(&self, number: &str) -> Option<&Arc<Tenant>> {
        let number = E164::parse(number).ok()?;
        self.tenants.iter().find(|t| t.numbers.contains(&number))
    }

    /// The tenant with this id.
    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.iter().find(|t| t.id == id)
    }
}

/// The TOML file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    jambonz: jambonz::RawJambonz,
    #[serde(default)]
    server: server::RawServer,
    twilio: Option<twilio::RawTwilio>,
    #[serde(default)]
    ultravox: ultravox::RawUltravoxGlobal,
    #[serde(default)]
    delivery: delivery::RawDelivery,
    #[serde(default)]
    worker: delivery::RawWorker,
    #[serde(default)]
    alerts: delivery::RawAlerts,
    #[serde(default)]
    admin: admin::RawAdmin,
    #[serde(default)]
    staff: Vec<admin::RawStaff>,
    #[serde(default)]
    ops: ops::RawOps,
    demo: Option<demo::RawDemo>,
    #[serde(default)]
    shutdown: lifecycle::RawShutdown,
    #[serde(default)]
    reconciler: lifecycle::RawReconciler,
    #[serde(default)]
    journal: journal::RawJournal,
    #[serde(default)]
    tenants: Vec<tenant::RawTenant>,
}

#[cfg(test)]
mod tests;
