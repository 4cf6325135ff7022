//! Typed configuration: environment variables for the process (12-factor), an optional TOML file
//! for tenants and limits. Everything is validated once, at start-up, and every problem is reported
//! in one message so an operator fixes them all in one go.
//!
//! Secrets do not have to live in the file: any string value may be written `${NAME}` and is taken
//! from the environment variable `NAME`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

mod admin;
mod delivery;
mod demo;
mod jambonz_frame;
mod journal;
mod lifecycle;
pub mod oncall;
mod ops;
mod paging;
mod server;
mod source;
pub use admin::{AdminSettings, ConfiguredStaff, valid_username};
pub use delivery::{AlertSettings, DeliverySettings, Frontend, TenantAlerts, WorkerSettings};
pub use demo::DemoSettings;
pub use journal::default_dir as default_journal_dir;
pub use lifecycle::LifecycleSettings;
pub use ops::OpsSettings;
pub use paging::{CallerSms, PagingSettings};
pub use server::{ConnectionSettings, RESERVED_DESCRIPTORS};
pub use source::CONFIG_TOML_VAR;

use crate::phone::E164;
use crate::tools::business_hours::BusinessHours;

/// Everything that is wrong with a configuration, one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n  - {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The validated configuration of one lifeline process.
#[derive(Debug, Clone)]
pub struct Config {
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
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
    pub journal: crate::store::resilient::JournalSettings,
    /// `[demo]`: this configuration is a demonstration with a published dashboard login (the
    /// account is in `admin.staff`). Never in production; start-up says so loudly.
    pub demo: Option<DemoSettings>,
    pub tenants: Vec<Arc<Tenant>>,
}

/// The Twilio account lifeline answers webhooks for and updates live calls on.
#[derive(Debug, Clone, PartialEq)]
pub struct TwilioSettings {
    /// `AC…`
    pub account_sid: String,
    /// Signs webhooks (`X-Twilio-Signature`) and authenticates REST calls.
    pub auth_token: String,
    /// `https://api.twilio.com` (a fake on loopback in tests).
    pub api_base: String,
    /// How long a live-call update may take, retries included. Must leave room within the tool
    /// timeout to record a failed transfer and its callback request.
    pub update_deadline: Duration,
}

/// Settings shared by every tenant's Ultravox use.
#[derive(Debug, Clone, PartialEq)]
pub struct UltravoxGlobal {
    /// `https://api.ultravox.ai` (a fake on loopback in tests).
    pub api_base: String,
    /// Secrets Ultravox signs data-connection upgrades with (`X-Ultravox-Signature`); several
    /// allow rotation. Inline-prompt calls are created with them; an agent's call template must
    /// carry one of them in its `sharedSecrets`.
    pub data_connection_secrets: Vec<String>,
    /// API keys Ultravox HTTP tools present in `X-API-Key` (any tenant's calls).
    pub tool_api_keys: Vec<String>,
    /// How long call setup may wait for Ultravox before the caller gets the fallback.
    pub setup_timeout: Duration,
    /// How long an agent's prompt variables are cached.
    pub agent_cache_ttl: Duration,
}

impl Default for UltravoxGlobal {
    fn default() -> Self {
        Self {
            api_base: "https://api.ultravox.ai".into(),
            data_connection_secrets: Vec::new(),
            tool_api_keys: Vec::new(),
            setup_timeout: Duration::from_millis(5000),
            agent_cache_ttl: Duration::from_secs(300),
        }
    }
}

/// Pipeline limits. Windows slide: a count covers the last `window` seconds, whenever asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// How long a handler may run before the model is answered with a timeout (Ultravox waits
    /// 2.5 s by default, so this must stay below).
    pub tool_timeout: Duration,
    /// Tool invocations allowed per call within `call_window`.
    pub tool_calls_per_call: u32,
    pub call_window: Duration,
    /// Transfers allowed per call within `transfer_window`: a runaway model must not be able to
    /// transfer 50 times.
    pub transfers_per_call: u32,
    pub transfer_window: Duration,
    /// Tool invocations allowed per tenant per minute (per instance).
    pub tool_calls_per_tenant_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tool_timeout: Duration::from_millis(2000),
            tool_calls_per_call: 30,
            call_window: Duration::from_secs(60),
            transfers_per_call: 3,
            transfer_window: Duration::from_secs(600),
            tool_calls_per_tenant_per_minute: 600,
        }
    }
}

/// Settings of the Jambonz WebSocket endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct JambonzSettings {
    /// How often we ping an idle socket so load balancers keep it open (Jambonz never pings).
    pub ping_interval: Duration,
}

/// A clinic.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// Stable identifier written to every row (`[a-z0-9_-]+`).
    pub id: String,
    pub name: String,
    /// The numbers callers dial to reach this clinic.
    pub numbers: Vec<E164>,
    pub jambonz: Option<JambonzTenant>,
    pub transfer: TransferTargets,
    pub ultravox: UltravoxSettings,
    /// Opening hours, for the prompt's `{{clinic_open}}` and friends (`None`: always closed,
    /// i.e. the after-hours path).
    pub business_hours: Option<BusinessHours>,
    /// Facts about the clinic offered to the prompt.
    pub profile: TenantProfile,
    /// What a Twilio caller gets when the AI agent cannot be reached at call setup.
    pub fallback: Fallback,
    /// An API key that authenticates this tenant's Ultravox HTTP tools, and identifies the
    /// tenant when a tool sends no call id (the original `collectNameNumberConcernPetName`).
    pub tool_api_key: Option<String>,
    /// The tenant's own frontend for callback requests (else `delivery.frontend_url`).
    pub frontend: Option<Frontend>,
    /// Who is alerted about critical requests and dead letters.
    pub alerts: TenantAlerts,
    /// The on-call schedule a transfer walks (`None`: primary, then secondary).
    pub oncall: Option<oncall::OncallSchedule>,
    /// Paging the on-call ladder until a critical request is acknowledged (`None`: the one-off
    /// alert only).
    pub paging: Option<PagingSettings>,
    /// Texting callers what happens next (`None`: no texts).
    pub caller_sms: Option<CallerSms>,
}

/// Facts about a clinic for the prompt's template variables (the original `clients` row).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantProfile {
    pub office_phone: Option<E164>,
    pub office_website: Option<String>,
    /// Opening hours as a sentence for the agent to read.
    pub office_hours: Option<String>,
    /// The agent's name (`{{agent_name}}`; the original defaulted to "Jessica").
    pub agent_name: Option<String>,
    pub voicemail_enabled: bool,
}

/// What a Twilio caller gets when the AI agent cannot be reached at call setup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Ring the on-call number (then the secondary); nobody answering leaves a critical
    /// callback request, as any failed transfer does.
    #[default]
    Dial,
    /// Record a message, which becomes a callback request.
    Record,
}

/// How Jambonz reaches a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct JambonzTenant {
    pub account_sid: Option<String>,
    pub application_sid: Option<String>,
    /// Basic-auth credentials Jambonz presents on the WebSocket upgrade.
    pub username: String,
    pub password: String,
}

/// Where a transfer goes.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferTargets {
    pub primary: E164,
    pub secondary: Option<E164>,
    /// Carrier name as configured in Jambonz; `None` lets Jambonz pick by caller id.
    pub trunk: Option<String>,
    /// Caller id presented to the on-call person; `None` passes the caller's own number.
    pub caller_id: Option<E164>,
    pub ring_timeout_secs: u32,
    /// The on-call person must press 1 to take the call (issue 14); off, an answer is taken.
    pub accept_gate: bool,
    /// Seconds the gate waits for the key after its prompt.
    pub gate_timeout_secs: u32,
}

/// The Ultravox settings of a tenant's `llm` verb.
#[derive(Debug, Clone, PartialEq)]
pub struct UltravoxSettings {
    pub api_key: String,
    /// Use an Ultravox agent (its prompt and tools live at Ultravox)…
    pub agent_id: Option<String>,
    /// …or an inline system prompt (tools are declared by lifeline).
    pub system_prompt: Option<String>,
    pub voice: Option<String>,
    pub model: String,
    pub temperature: Option<f64>,
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
                let value = interpolate(value, "", env, &mut problems);
                match RawFile::deserialize(value) {
                    Ok(raw) => raw,
                    Err(e) => {
                        problems.push(format!("{}: {e}", path.display()));
                        return Err(ConfigError(problems));
                    }
                }
            }
        };

        if !(process.database_url.starts_with("sqlite:")
            || process.database_url.starts_with("postgres://")
            || process.database_url.starts_with("postgresql://"))
        {
            problems.push(format!(
                "DATABASE_URL must start with sqlite: or postgres:// (got {:?})",
                redact_url(&process.database_url)
            ));
        }

        let limits = raw.limits.validate(&mut problems);
        let jambonz = JambonzSettings {
            ping_interval: Duration::from_secs(raw.jambonz.ping_interval_secs.unwrap_or(25)),
        };
        if jambonz.ping_interval.is_zero() {
            problems.push("jambonz.ping_interval_secs must be at least 1".into());
        }

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
        let journal = raw.journal.validate(
            env,
            &process.database_url,
            limits.tool_timeout,
            &mut problems,
        );
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
                jambonz_frame::check_session_ack(&tenant, &mut problems);
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

    /// Reads the file named by `LIFELINE_CONFIG`, or the text of `LIFELINE_CONFIG_TOML` (one of
    /// them, or neither: no tenants), and builds the configuration.
    pub fn load(process: &ProcessSettings) -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        match source::read(process.config_path.as_deref(), &env)? {
            None => Self::build(process, None, &env),
            Some((text, label)) => Self::build(process, Some((&text, &label)), &env),
        }
    }

    /// Where the configuration came from, for start-up logs (`None`: no file, no tenants).
    pub fn source_label(process: &ProcessSettings) -> Option<String> {
        match &process.config_path {
            Some(path) => Some(path.display().to_string()),
            None => std::env::var(CONFIG_TOML_VAR)
                .ok()
                .filter(|t| !t.trim().is_empty())
                .map(|_| CONFIG_TOML_VAR.to_string()),
        }
    }
}

/// What the process itself is told through the environment or flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessSettings {
    /// Database: `sqlite://path?mode=rwc` (embedded default) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://lifeline.db?mode=rwc",
        global = true
    )]
    pub database_url: String,
    /// Address to listen on.
    #[arg(long, env = "LIFELINE_BIND", default_value = "0.0.0.0", global = true)]
    pub bind: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080, global = true)]
    pub port: u16,
    /// TOML file with tenants and limits (or its whole text in `LIFELINE_CONFIG_TOML`).
    #[arg(long = "config", env = "LIFELINE_CONFIG", global = true)]
    pub config_path: Option<PathBuf>,
    /// Largest PostgreSQL connection pool of this process (mind the server's
    /// `max_connections` across instances).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16, global = true,
          value_parser = clap::value_parser!(u32).range(2..=512))]
    pub database_max_connections: u32,
    /// PostgreSQL connections of the delivery worker, a pool of their own: the call path never
    /// waits for the worker, and the worker is not starved by call load. `lifeline serve`
    /// opens both pools (up to `DATABASE_MAX_CONNECTIONS` + this); `lifeline worker` only this.
    #[arg(long, env = "DATABASE_WORKER_CONNECTIONS", default_value_t = 4, global = true,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub database_worker_connections: u32,
}

/// Hides the password of a connection URL.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Replaces every `${NAME}` in the strings of `value` by environment variable `NAME`. `key` is
/// where `value` sits (`tenants[0].jambonz.password`): a variable that is not set is a problem
/// that names the key referencing it.
fn interpolate(
    value: toml::Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> toml::Value {
    match value {
        toml::Value::String(s) => toml::Value::String(interpolate_str(&s, key, env, problems)),
        toml::Value::Array(items) => toml::Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| interpolate(v, &format!("{key}[{i}]"), env, problems))
                .collect(),
        ),
        toml::Value::Table(table) => toml::Value::Table(
            table
                .into_iter()
                .map(|(k, v)| {
                    let path = if key.is_empty() {
                        k.clone()
                    } else {
                        format!("{key}.{k}")
                    };
                    let v = interpolate(v, &path, env, problems);
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

fn interpolate_str(
    s: &str,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match env(name) {
                    Some(v) => out.push_str(&v),
                    None => problems.push(format!(
                        "environment variable {name} is not set (referenced by {key})"
                    )),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    jambonz: RawJambonz,
    #[serde(default)]
    server: RawServer,
    twilio: Option<RawTwilio>,
    #[serde(default)]
    ultravox: RawUltravoxGlobal,
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
    tenants: Vec<RawTenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    public_url: Option<String>,
    request_header_timeout_secs: Option<u64>,
    request_body_timeout_secs: Option<u64>,
    max_connections: Option<u64>,
    max_pending_connections: Option<u64>,
    max_pending_per_address: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    #[serde(default)]
    account_sid: String,
    #[serde(default)]
    auth_token: String,
    api_base: Option<String>,
    update_deadline_ms: Option<u64>,
}

impl RawTwilio {
    fn validate(self, problems: &mut Vec<String>) -> TwilioSettings {
        if !(self.account_sid.starts_with("AC") && self.account_sid.len() == 34) {
            problems.push(
                "twilio.account_sid must be an account SID (AC followed by 32 characters)".into(),
            );
        }
        if self.auth_token.trim().is_empty() {
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUltravoxGlobal {
    api_base: Option<String>,
    #[serde(default)]
    data_connection_secrets: Vec<String>,
    #[serde(default)]
    tool_api_keys: Vec<String>,
    setup_timeout_ms: Option<u64>,
    agent_cache_secs: Option<u64>,
}

impl RawUltravoxGlobal {
    fn validate(self, problems: &mut Vec<String>) -> UltravoxGlobal {
        let d = UltravoxGlobal::default();
        for s in &self.data_connection_secrets {
            if !(16..=127).contains(&s.chars().count()) {
                problems.push(
                    "ultravox.data_connection_secrets: each secret must be 16 to 127 characters (Ultravox's limits)".into(),
                );
            }
        }
        for k in &self.tool_api_keys {
            if k.chars().count() < 16 {
                problems
                    .push("ultravox.tool_api_keys: each key must be at least 16 characters".into());
            }
        }
        let setup = self
            .setup_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(d.setup_timeout);
        if !(500..=12_000).contains(&setup.as_millis()) {
            problems.push(
                "ultravox.setup_timeout_ms must be between 500 and 12000 (Twilio gives up on a webhook after 15 s)".into(),
            );
        }
        UltravoxGlobal {
            api_base: base_url("ultravox.api_base", self.api_base, &d.api_base, problems),
            data_connection_secrets: self.data_connection_secrets,
            tool_api_keys: self.tool_api_keys,
            setup_timeout: setup,
            agent_cache_ttl: self
                .agent_cache_secs
                .map(Duration::from_secs)
                .unwrap_or(d.agent_cache_ttl),
        }
    }
}

fn base_url(
    field: &str,
    given: Option<String>,
    default: &str,
    problems: &mut Vec<String>,
) -> String {
    let url = non_empty(given).unwrap_or_else(|| default.to_string());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        problems.push(format!("{field} must be an http(s) URL (got {url:?})"));
    }
    url.trim_end_matches('/').to_string()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJambonz {
    ping_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    tool_timeout_ms: Option<u64>,
    tool_calls_per_call: Option<u32>,
    call_window_secs: Option<u64>,
    transfers_per_call: Option<u32>,
    transfer_window_secs: Option<u64>,
    tool_calls_per_tenant_per_minute: Option<u32>,
}

impl RawLimits {
    fn validate(&self, problems: &mut Vec<String>) -> Limits {
        let d = Limits::default();
        let limits = Limits {
            tool_timeout: self
                .tool_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.tool_timeout),
            tool_calls_per_call: self.tool_calls_per_call.unwrap_or(d.tool_calls_per_call),
            call_window: self
                .call_window_secs
                .map(Duration::from_secs)
                .unwrap_or(d.call_window),
            transfers_per_call: self.transfers_per_call.unwrap_or(d.transfers_per_call),
            transfer_window: self
                .transfer_window_secs
                .map(Duration::from_secs)
                .unwrap_or(d.transfer_window),
            tool_calls_per_tenant_per_minute: self
                .tool_calls_per_tenant_per_minute
                .unwrap_or(d.tool_calls_per_tenant_per_minute),
        };
        if !(100..=39_000).contains(&limits.tool_timeout.as_millis()) {
            problems.push(
                "limits.tool_timeout_ms must be between 100 and 39000 (Ultravox waits at most 40 s)"
                    .into(),
            );
        }
        for (name, v) in [
            ("tool_calls_per_call", limits.tool_calls_per_call),
            ("transfers_per_call", limits.transfers_per_call),
            (
                "tool_calls_per_tenant_per_minute",
                limits.tool_calls_per_tenant_per_minute,
            ),
        ] {
            if v == 0 {
                problems.push(format!("limits.{name} must be at least 1"));
            }
        }
        for (name, v) in [
            ("call_window_secs", limits.call_window),
            ("transfer_window_secs", limits.transfer_window),
        ] {
            if v.is_zero() {
                problems.push(format!("limits.{name} must be at least 1"));
            }
        }
        limits
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    numbers: Vec<String>,
    jambonz: Option<RawJambonzTenant>,
    transfer: Option<RawTransfer>,
    ultravox: Option<RawUltravox>,
    business_hours: Option<BusinessHours>,
    profile: Option<RawProfile>,
    #[serde(default)]
    fallback: Fallback,
    tool_api_key: Option<String>,
    frontend: Option<delivery::RawTenantFrontend>,
    alerts: Option<delivery::RawTenantAlerts>,
    oncall: Option<oncall::RawOncall>,
    paging: Option<paging::RawPaging>,
    caller_sms: Option<paging::RawCallerSms>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    office_phone: Option<String>,
    office_website: Option<String>,
    office_hours: Option<String>,
    agent_name: Option<String>,
    #[serde(default)]
    voicemail_enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJambonzTenant {
    account_sid: Option<String>,
    application_sid: Option<String>,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfer {
    #[serde(default)]
    primary: String,
    secondary: Option<String>,
    trunk: Option<String>,
    caller_id: Option<String>,
    ring_timeout_secs: Option<u32>,
    accept_gate: Option<bool>,
    gate_timeout_secs: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUltravox {
    #[serde(default)]
    api_key: String,
    agent_id: Option<String>,
    system_prompt: Option<String>,
    voice: Option<String>,
    model: Option<String>,
    temperature: Option<f64>,
}

fn phone(label: &str, field: &str, raw: &str, problems: &mut Vec<String>) -> Option<E164> {
    match E164::parse(raw) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.push(format!("{label}: {field} {raw:?} {e}"));
            None
        }
    }
}

fn non_empty(opt: Option<String>) -> Option<String> {
    opt.filter(|s| !s.trim().is_empty())
}

impl RawTenant {
    fn validate(self, label: &str, problems: &mut Vec<String>) -> Option<Tenant> {
        let before = problems.len();
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            problems.push(format!(
                "{label}: id must be non-empty and use only a-z, 0-9, '-' and '_'"
            ));
        }
        if self.name.trim().is_empty() {
            problems.push(format!("{label}: name is required"));
        }
        let numbers: Vec<E164> = self
            .numbers
            .iter()
            .filter_map(|n| phone(label, "number", n, problems))
            .collect();

        let jambonz = self.jambonz.map(|j| {
            if j.username.trim().is_empty() {
                problems.push(format!("{label}: jambonz.username is required"));
            }
            if j.password.chars().count() < 12 {
                problems.push(format!(
                    "{label}: jambonz.password must be at least 12 characters"
                ));
            }
            if j.username.contains(':') {
                problems.push(format!("{label}: jambonz.username cannot contain ':'"));
            }
            JambonzTenant {
                account_sid: non_empty(j.account_sid),
                application_sid: non_empty(j.application_sid),
                username: j.username,
                password: j.password,
            }
        });

        let transfer = match self.transfer {
            None => {
                problems.push(format!(
                    "{label}: [transfer] with a primary number is required"
                ));
                None
            }
            Some(t) => {
                let primary = phone(label, "transfer.primary", &t.primary, problems);
                let secondary = t
                    .secondary
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .and_then(|s| phone(label, "transfer.secondary", s, problems));
                let caller_id = t
                    .caller_id
                    .as_deref()
                    .filter(|s| !s.trim().is_empty())
                    .and_then(|s| phone(label, "transfer.caller_id", s, problems));
                let ring = t.ring_timeout_secs.unwrap_or(25);
                if !(5..=120).contains(&ring) {
                    problems.push(format!(
                        "{label}: transfer.ring_timeout_secs must be between 5 and 120"
                    ));
                }
                let gate_timeout = t.gate_timeout_secs.unwrap_or(8);
                if !(3..=30).contains(&gate_timeout) {
                    problems.push(format!(
                        "{label}: transfer.gate_timeout_secs must be between 3 and 30"
                    ));
                }
                if primary.is_some() && primary == secondary {
                    problems.push(format!(
                        "{label}: transfer.secondary must differ from transfer.primary"
                    ));
                }
                primary.map(|primary| TransferTargets {
                    primary,
                    secondary,
                    trunk: non_empty(t.trunk),
                    caller_id,
                    ring_timeout_secs: ring,
                    accept_gate: t.accept_gate.unwrap_or(true),
                    gate_timeout_secs: gate_timeout,
                })
            }
        };

        let ultravox = match self.ultravox {
            None => {
                problems.push(format!("{label}: [ultravox] settings are required"));
                None
            }
            Some(u) => {
                if u.api_key.trim().is_empty() {
                    problems.push(format!("{label}: ultravox.api_key is required"));
                }
                let agent_id = non_empty(u.agent_id);
                let system_prompt = non_empty(u.system_prompt);
                match (&agent_id, &system_prompt) {
                    (None, None) => problems.push(format!(
                        "{label}: set ultravox.agent_id or ultravox.system_prompt"
                    )),
                    (Some(_), Some(_)) => problems.push(format!(
                        "{label}: set only one of ultravox.agent_id and ultravox.system_prompt"
                    )),
                    _ => {}
                }
                if let Some(t) = u.temperature
                    && !(0.0..=1.0).contains(&t)
                {
                    problems.push(format!(
                        "{label}: ultravox.temperature must be between 0 and 1"
                    ));
                }
                Some(UltravoxSettings {
                    api_key: u.api_key,
                    agent_id,
                    system_prompt,
                    voice: non_empty(u.voice),
                    model: non_empty(u.model).unwrap_or_else(|| "fixie-ai/ultravox".into()),
                    temperature: u.temperature,
                })
            }
        };

        if let Some(hours) = &self.business_hours
            && let Err(errors) = hours.validate()
        {
            for e in errors {
                problems.push(format!("{label}: business_hours: {e}"));
            }
        }
        let raw_profile = self.profile.unwrap_or_default();
        let profile = TenantProfile {
            office_phone: raw_profile
                .office_phone
                .as_deref()
                .filter(|s| !s.trim().is_empty())
                .and_then(|s| phone(label, "profile.office_phone", s, problems)),
            office_website: non_empty(raw_profile.office_website),
            office_hours: non_empty(raw_profile.office_hours),
            agent_name: non_empty(raw_profile.agent_name),
            voicemail_enabled: raw_profile.voicemail_enabled,
        };
        let tool_api_key = non_empty(self.tool_api_key);
        if let Some(k) = &tool_api_key
            && k.chars().count() < 16
        {
            problems.push(format!(
                "{label}: tool_api_key must be at least 16 characters"
            ));
        }

        let default_ring = transfer.as_ref().map_or(25, |t| t.ring_timeout_secs);
        let oncall = self
            .oncall
            .and_then(|o| o.validate(label, default_ring, problems));
        let frontend = self.frontend.and_then(|f| f.validate(label, problems));
        let alerts = self
            .alerts
            .map(|a| a.validate(label, problems))
            .unwrap_or_default();
        let paging = self.paging.map(|p| p.validate(label, problems));
        let caller_sms = self.caller_sms.map(|c| c.validate(label, problems));
        if problems.len() > before {
            return None;
        }
        Some(Tenant {
            frontend,
            alerts,
            oncall,
            paging,
            caller_sms,
            business_hours: self.business_hours,
            profile,
            fallback: self.fallback,
            tool_api_key,
            id: self.id,
            name: self.name,
            numbers,
            jambonz,
            transfer: transfer?,
            ultravox: ultravox?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> ProcessSettings {
        ProcessSettings {
            database_url: "sqlite://x.db".into(),
            bind: "127.0.0.1".parse().unwrap(),
            port: 0,
            config_path: None,
            database_max_connections: 16,
            database_worker_connections: 4,
        }
    }

    const GOOD: &str = r#"
        [[tenants]]
        id = "riverside"
        name = "Riverside Emergency Vet"
        numbers = ["+15083728299"]
        [tenants.jambonz]
        username = "riverside"
        password = "${PASS}"
        [tenants.transfer]
        primary = "+15557654321"
        secondary = "5557654322"
        [tenants.ultravox]
        api_key = "k"
        system_prompt = "You are a triage nurse."
    "#;

    #[test]
    fn accepts_a_good_file_and_resolves_secrets_from_the_environment() {
        let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
        let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
        let t = &cfg.tenants[0];
        assert_eq!(t.jambonz.as_ref().unwrap().password, "a-long-password");
        assert_eq!(
            t.transfer.secondary.as_ref().unwrap().as_str(),
            "+15557654322"
        );
        assert_eq!(t.transfer.ring_timeout_secs, 25);
        assert_eq!(cfg.limits, Limits::default());
    }

    #[test]
    fn delivery_defaults_and_the_original_workers_environment_variables() {
        let env = |n: &str| match n {
            "PASS" => Some("a-long-password".to_string()),
            "FRONTEND_CALLBACK_API_URL" => Some("https://clinic.example.org/api/callbacks".into()),
            "FRONTEND_API_KEY" => Some("frontend-key".into()),
            "CALLBACK_POLL_INTERVAL_MS" => Some("30000".into()),
            "CALLBACK_BATCH_SIZE" => Some("10".into()),
            "LIFELINE_IN_PROCESS_WORKER" => Some("false".into()),
            _ => None,
        };
        let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
        let frontend = cfg.delivery.frontend.as_ref().unwrap();
        assert_eq!(frontend.url, "https://clinic.example.org/api/callbacks");
        assert_eq!(frontend.api_key.as_deref(), Some("frontend-key"));
        assert_eq!(frontend.signing_secret, None);
        assert_eq!(cfg.worker.poll_interval, Duration::from_secs(30));
        assert_eq!(cfg.worker.batch_size, 10);
        assert!(!cfg.worker.in_process);
        // 5, 15 and 60 minutes, then a dead letter.
        assert_eq!(
            cfg.delivery.retry_schedule,
            [300, 900, 3600].map(Duration::from_secs)
        );
        assert_eq!(cfg.delivery.jitter, 0.1);
        assert_eq!(cfg.worker.lease, Duration::from_secs(60));
        assert!(cfg.tenants[0].alerts.sms.is_empty());

        // Without anything: no frontend (requests wait for staff), the worker runs in-process.
        let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
        let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
        assert!(cfg.delivery.frontend.is_none());
        assert!(cfg.worker.in_process);
        assert_eq!(cfg.worker.batch_size, 50);
    }

    const HILLSIDE: &str = r#"
        [[tenants]]
        id = "hillside"
        name = "Hillside"
        [tenants.transfer]
        primary = "+15557650000"
        [tenants.ultravox]
        api_key = "k"
        agent_id = "a"
    "#;

    #[test]
    fn delivery_and_alert_problems_are_listed() {
        let text = format!(
            r#"{GOOD}{HILLSIDE}
        [tenants.frontend]
        url = "ftp://hillside"
        signing_secret = "short"
        [tenants.alerts]
        sms = ["12", "+15557770001"]
        [delivery]
        retry_schedule_secs = []
        jitter_percent = 80
        [worker]
        lease_secs = 8
        batch_size = 0
        "#
        );
        let env = |n: &str| match n {
            "PASS" => Some("a-long-password".to_string()),
            "CALLBACK_POLL_INTERVAL_MS" => Some("soon".into()),
            _ => None,
        };
        let err = Config::build(&process(), Some((&text, Path::new("t.toml"))), &env).unwrap_err();
        let text = err.to_string();
        for needle in [
            r#"tenant "hillside": frontend.url must be an http(s) URL"#,
            "frontend.signing_secret must be at least 16",
            r#"alerts.sms "12""#,
            "delivery.retry_schedule_secs must list 1 to 20 waits",
            "delivery.jitter_percent must be at most 50",
            "worker.batch_size must be between 1 and 1000",
            "CALLBACK_POLL_INTERVAL_MS must be a whole number",
            "worker.lease_secs (8) must exceed delivery.timeout_ms",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
    }

    #[test]
    fn every_tenant_needs_a_frontend_once_one_has_one_and_sms_needs_twilio() {
        let text = format!(
            r#"{GOOD}{HILLSIDE}
        [tenants.frontend]
        url = "https://hillside.example.org/cb"
        [tenants.alerts]
        sms = ["+15557770001"]
        "#
        );
        let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
        let err = Config::build(&process(), Some((&text, Path::new("t.toml"))), &env).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(r#"tenant "riverside": no frontend for its callback requests"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tenant "hillside": SMS alerts need [twilio] and alerts.sms_from"#),
            "{text}"
        );
        assert_eq!(err.0.len(), 2, "{text}");
    }

    #[test]
    fn lists_every_problem_at_once() {
        let bad = r#"
            [limits]
            tool_timeout_ms = 50
            [[tenants]]
            id = "Bad Id"
            numbers = ["12"]
            [tenants.jambonz]
            username = "u"
            password = "${MISSING}"
            [tenants.transfer]
            primary = "not a number"
            ring_timeout_secs = 500
            [tenants.ultravox]
            api_key = ""
        "#;
        let err = Config::build(
            &ProcessSettings {
                database_url: "mysql://x".into(),
                ..process()
            },
            Some((bad, Path::new("bad.toml"))),
            &|_| None,
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "environment variable MISSING is not set",
            "DATABASE_URL must start with",
            "tool_timeout_ms",
            "id must be non-empty",
            "name is required",
            "number \"12\"",
            "password must be at least 12",
            "transfer.primary",
            "ring_timeout_secs",
            "api_key is required",
            "agent_id or ultravox.system_prompt",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(err.0.len() >= 11, "{text}");
    }

    #[test]
    fn twilio_needs_a_public_url_valid_secrets_and_a_deadline_inside_the_tool_timeout() {
        let text = format!(
            "{GOOD}\n[twilio]\naccount_sid = \"ACx\"\nauth_token = \"\"\nupdate_deadline_ms = 1900\n\
             [ultravox]\ndata_connection_secrets = [\"short\"]\ntool_api_keys = [\"k\"]\n"
        );
        let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
        let err = Config::build(&process(), Some((&text, Path::new("t.toml"))), &env).unwrap_err();
        let text = err.to_string();
        for needle in [
            "server.public_url is required",
            "twilio.account_sid",
            "twilio.auth_token",
            "update_deadline_ms (1900)",
            "data_connection_secrets: each secret must be 16 to 127",
            "tool_api_keys: each key must be at least 16",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }

        let good = format!(
            "[server]\npublic_url = \"https://lifeline.example.com/\"\n\
             [twilio]\naccount_sid = \"AC00000000000000000000000000000000\"\nauth_token = \"t\"\n\
             [ultravox]\ndata_connection_secrets = [\"0123456789abcdef\"]\n{GOOD}"
        );
        let cfg = Config::build(&process(), Some((&good, Path::new("t.toml"))), &env).unwrap();
        assert_eq!(
            cfg.public_url.as_deref(),
            Some("https://lifeline.example.com")
        );
        assert_eq!(
            cfg.twilio.as_ref().unwrap().update_deadline,
            Duration::from_millis(1500)
        );
        assert_eq!(
            cfg.tenant_by_number("(508) 372-8299").unwrap().id,
            "riverside"
        );
        assert!(cfg.tenant_by_number("+15550000000").is_none());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::build(
            &process(),
            Some(("[limits]\ntool_timeout = 5\n", Path::new("x.toml"))),
            &|_| None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_demo_section_makes_a_staff_account_only_outside_production_settings() {
        let env = |n: &str| (n == "PASS").then(|| "a-long-password".to_string());
        let demo = "[demo]\nstaff_username = \"demo\"\nstaff_password = \"demo-password-123\"\n";
        let cfg = Config::build(
            &process(),
            Some((&format!("{demo}{GOOD}"), Path::new("t.toml"))),
            &env,
        )
        .unwrap();
        assert_eq!(cfg.demo.as_ref().unwrap().staff_username, "demo");
        let account = cfg
            .admin
            .staff
            .iter()
            .find(|s| s.username == "demo")
            .unwrap();
        assert_eq!(account.tenant, None, "every clinic");
        assert!(crate::ops::admin::auth::verify_password(
            "demo-password-123",
            &account.password_hash
        ));

        // No [demo], no account and no demo.
        let cfg = Config::build(&process(), Some((GOOD, Path::new("t.toml"))), &env).unwrap();
        assert!(cfg.demo.is_none() && cfg.admin.staff.is_empty());

        let public =
            format!("[server]\npublic_url = \"https://lifeline.example.com\"\n{demo}{GOOD}");
        let err = Config::build(&process(), Some((&public, Path::new("t.toml"))), &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[demo] cannot be used with an https server.public_url"),
            "{err}"
        );
        let weak = format!("[demo]\nstaff_username = \"demo\"\nstaff_password = \"short\"\n{GOOD}");
        let err = Config::build(&process(), Some((&weak, Path::new("t.toml"))), &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("demo.staff_password must be at least 12"),
            "{err}"
        );
    }

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
