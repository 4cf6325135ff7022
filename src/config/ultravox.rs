//! Ultravox settings: the process-wide ones (`[ultravox]`: the REST API, the secrets Ultravox
//! authenticates to lifeline with, timeouts) and a tenant's own (`[tenants.ultravox]`: the API
//! key and the agent or inline prompt of its `llm` verb).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::validate::{base_url, non_empty};

/// Settings shared by every tenant's Ultravox use.
#[derive(Debug, Clone)]
pub struct UltravoxGlobal {
    /// `https://api.ultravox.ai` (a fake on loopback in tests).
    pub api_base: String,
    /// Secrets Ultravox signs data-connection upgrades with (`X-Ultravox-Signature`); several
    /// allow rotation. Inline-prompt calls are created with them; an agent's call template must
    /// carry one of them in its `sharedSecrets`.
    pub data_connection_secrets: Vec<SecretString>,
    /// API keys Ultravox HTTP tools present in `X-API-Key` (any tenant's calls).
    pub tool_api_keys: Vec<SecretString>,
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

/// The Ultravox settings of a tenant's `llm` verb.
#[derive(Debug, Clone)]
pub struct UltravoxSettings {
    /// Authenticates the `llm` verb and call creation to Ultravox.
    pub api_key: SecretString,
    /// Use an Ultravox agent (its prompt and tools live at Ultravox)…
    pub agent_id: Option<String>,
    /// …or an inline system prompt (tools are declared by lifeline).
    pub system_prompt: Option<String>,
    pub voice: Option<String>,
    pub model: String,
    pub temperature: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUltravoxGlobal {
    api_base: Option<String>,
    #[serde(default)]
    data_connection_secrets: Vec<SecretString>,
    #[serde(default)]
    tool_api_keys: Vec<SecretString>,
    setup_timeout_ms: Option<u64>,
    agent_cache_secs: Option<u64>,
}

impl RawUltravoxGlobal {
    pub(super) fn validate(self, problems: &mut Vec<String>) -> UltravoxGlobal {
        let d = UltravoxGlobal::default();
        for s in &self.data_connection_secrets {
            if !(16..=127).contains(&s.expose_secret().chars().count()) {
                problems.push(
                    "ultravox.data_connection_secrets: each secret must be 16 to 127 characters (Ultravox's limits)".into(),
                );
            }
        }
        for k in &self.tool_api_keys {
            if k.expose_secret().chars().count() < 16 {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUltravox {
    #[serde(default)]
    api_key: SecretString,
    agent_id: Option<String>,
    system_prompt: Option<String>,
    voice: Option<String>,
    model: Option<String>,
    temperature: Option<f64>,
}

impl RawUltravox {
    /// The tenant's `llm` settings: an API key and exactly one of agent and inline prompt.
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> UltravoxSettings {
        if self.api_key.expose_secret().trim().is_empty() {
            problems.push(format!("{label}: ultravox.api_key is required"));
        }
        let agent_id = non_empty(self.agent_id);
        let system_prompt = non_empty(self.system_prompt);
        match (&agent_id, &system_prompt) {
            (None, None) => problems.push(format!(
                "{label}: set ultravox.agent_id or ultravox.system_prompt"
            )),
            (Some(_), Some(_)) => problems.push(format!(
                "{label}: set only one of ultravox.agent_id and ultravox.system_prompt"
            )),
            _ => {}
        }
        if let Some(t) = self.temperature
            && !(0.0..=1.0).contains(&t)
        {
            problems.push(format!(
                "{label}: ultravox.temperature must be between 0 and 1"
            ));
        }
        UltravoxSettings {
            api_key: self.api_key,
            agent_id,
            system_prompt,
            voice: non_empty(self.voice),
            model: non_empty(self.model).unwrap_or_else(|| "fixie-ai/ultravox".into()),
            temperature: self.temperature,
        }
    }
}
