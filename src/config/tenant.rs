//! A clinic (`[[tenants]]`): its numbers, how calls reach it and where they go, its prompt's
//! facts, and the sections of its own (Jambonz, transfer, Ultravox, frontend, alerts, on-call,
//! paging, caller texts), each validated by its module and gathered here.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::delivery::{self, Frontend, TenantAlerts};
use super::jambonz::{JambonzTenant, RawJambonzTenant};
use super::oncall;
use super::paging::{self, CallerSms, PagingSettings};
use super::transfer::{RawTransfer, TransferTargets};
use super::ultravox::{RawUltravox, UltravoxSettings};
use super::validate::{non_empty, non_empty_secret, phone};
use crate::domain::BusinessHours;
use crate::phone::E164;

/// A clinic.
#[derive(Debug, Clone)]
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
    pub tool_api_key: Option<SecretString>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    #[serde(default)]
    pub(super) id: String,
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
    tool_api_key: Option<SecretString>,
    frontend: Option<delivery::RawTenantFrontend>,
    alerts: Option<delivery::RawTenantAlerts>,
    oncall: Option<oncall::RawOncall>,
    paging: Option<paging::RawPaging>,
    caller_sms: Option<paging::RawCallerSms>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProfile {
    office_phone: Option<String>,
    office_website: Option<String>,
    office_hours: Option<String>,
    agent_name: Option<String>,
    #[serde(default)]
    voicemail_enabled: bool,
}

impl RawTenant {
    /// The tenant, or `None` when any of its sections has a problem (all are listed).
    pub(super) fn validate(self, label: &str, problems: &mut Vec<String>) -> Option<Tenant> {
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

        let jambonz = self.jambonz.map(|j| j.validate(label, problems));
        let transfer = match self.transfer {
            None => {
                problems.push(format!(
                    "{label}: [transfer] with a primary number is required"
                ));
                None
            }
            Some(t) => t.validate(label, problems),
        };
        let ultravox = match self.ultravox {
            None => {
                problems.push(format!("{label}: [ultravox] settings are required"));
                None
            }
            Some(u) => Some(u.validate(label, problems)),
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
        let tool_api_key = non_empty_secret(self.tool_api_key);
        if let Some(k) = &tool_api_key
            && k.expose_secret().chars().count() < 16
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
