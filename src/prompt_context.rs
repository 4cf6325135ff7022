//! Template variables for Ultravox prompts: the `{{variables}}` an agent's prompt may use, filled
//! per call, the way the system being replaced filled them (`original-system.md` §1.1 step 3).
//!
//! This is the one implementation both platforms use: the Twilio call setup
//! (`ingress/twilio/setup.rs`) and the Jambonz `llm` verb (`ingress::jambonz::session_verbs`)
//! both build [`template_context`] from the call's facts and turn it into what the agent is
//! given with [`agent_prompt`], so a clinic's agent hears the same about the clinic and the
//! caller whichever platform carries the call.
//!
//! Differences from the original, each deliberate:
//! - Business hours are evaluated ([`BusinessHours::template_context`]) instead of being
//!   hard-coded "closed" (§7.2 item 6). A tenant without configured hours is an after-hours line:
//!   always closed, with the date strings in UTC.
//! - Phone numbers go through [`E164::parse`] instead of "strip a leading +1" (§7.2 item 18):
//!   a North American number is written nationally (`4168189171`, `(416) 818-9171`), any other
//!   country keeps its E.164 form, and a withheld or unusable caller number gives empty strings
//!   instead of garbage such as `(ano) nym-ous` (the original sliced whatever Twilio sent).
//! - Every value is a string, as Ultravox requires (commit 5ec8937 in the original).
//!
//! Phone numbers are never logged here: the only log line names a prompt variable.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::config::Tenant;
use crate::domain::BusinessHours;
use crate::phone::{E164, mask};

/// The agent name the original used when a clinic had none configured.
const DEFAULT_AGENT_NAME: &str = "Jessica";

/// The temperature the original used when a clinic had none configured.
const DEFAULT_TEMPERATURE: f64 = 0.4;

/// What the platform says about the call: Twilio's incoming-call webhook, or Jambonz's
/// `session:new`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CallFacts<'a> {
    /// The platform's id of the call: Twilio's `CallSid`, Jambonz's `call_sid`.
    pub call_sid: &'a str,
    /// `From` as the platform sent it: E.164, a placeholder for a withheld number
    /// (`anonymous`, `+266696687`…), or a SIP URI.
    pub from: Option<&'a str>,
    /// `To` as the platform sent it: normally the clinic's E.164 number, or a SIP URI.
    pub to: Option<&'a str>,
}

// By hand so that `?call` in a log line cannot print a caller's number.
impl fmt::Debug for CallFacts<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFacts")
            .field("call_sid", &self.call_sid)
            .field("from", &self.from.map(mask))
            .field("to", &self.to.map(mask))
            .finish()
    }
}

/// What Twilio puts in `From` when the caller withheld their number. The textual ones fail
/// [`E164::parse`] anyway; the numeric ones spell ANONYMOUS, RESTRICTED, UNAVAILABLE, BLOCKED and
/// UNKNOWN on a keypad, and some of them would otherwise parse as real numbers the agent might
/// read back or call.
const WITHHELD_PLACEHOLDERS: [&str; 5] = [
    "+266696687",
    "+7378742833",
    "+86282452253",
    "+2562533",
    "+8656696",
];

/// The number inside what Twilio sent as `From`/`To`, if there is a real one.
fn number_of(raw: Option<&str>) -> Option<E164> {
    let number = E164::parse(sip_user(raw?.trim())).ok()?;
    (!WITHHELD_PLACEHOLDERS.contains(&number.as_str())).then_some(number)
}

/// The user part of a SIP (or tel) URI, e.g. `+14168189171` in
/// `sip:+14168189171@example.pstn.twilio.com;transport=udp`: SIP trunks and Jambonz present
/// numbers that way. Anything else is returned unchanged.
fn sip_user(raw: &str) -> &str {
    let raw = raw
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(raw);
    let strip = |scheme: &str| {
        let head = raw.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &raw[scheme.len()..])
    };
    let Some(rest) = strip("sip:")
        .or_else(|| strip("sips:"))
        .or_else(|| strip("tel:"))
    else {
        return raw;
    };
    let user = rest.split('@').next().unwrap_or(rest);
    user.split(';').next().unwrap_or(user)
}

/// The ten national digits of a North American (NANP, `+1`) number.
fn nanp_digits(number: &E164) -> Option<&str> {
    number
        .as_str()
        .strip_prefix("+1")
        .filter(|digits| digits.len() == 10)
}

/// `4168189171` for a North American number (the original's style, which prompts were written
/// for), the E.164 form for any other country (a national form would lose the country).
fn national(number: &E164) -> String {
    nanp_digits(number).unwrap_or(number.as_str()).to_string()
}

/// `(416) 818-9171` for a North American number, the E.164 form otherwise.
fn formatted(number: &E164) -> String {
    match nanp_digits(number) {
        Some(d) => format!("({}) {}-{}", &d[..3], &d[3..6], &d[6..]),
        None => number.as_str().to_string(),
    }
}

/// `four one six... pause... eight one eight... pause... nine one seven one` for a North
/// American number, so the agent reads it back digit by digit in the usual 3-3-4 groups; empty
/// otherwise, as in the original (other countries have no single grouping).
fn spoken_digits(number: &E164) -> String {
    const WORDS: [&str; 10] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let Some(digits) = nanp_digits(number) else {
        return String::new();
    };
    let words = |group: &str| {
        group
            .bytes()
            .map(|b| WORDS[usize::from(b - b'0')])
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "{}... pause... {}... pause... {}",
        words(&digits[..3]),
        words(&digits[3..6]),
        words(&digits[6..])
    )
}

/// Every prompt variable the original filled, for one call, all values strings (Ultravox
/// refuses anything else).
///
/// Phone numbers are national digits for North American numbers and E.164 otherwise; a number
/// that is absent, withheld or unusable gives empty strings, never an error: the call must go
/// through whatever the caller id says. `vetwise_phone` is the dialled number when it is one of
/// the tenant's, else the tenant's first number; `to_phone_number` is the dialled number, else
/// the tenant's first number (the call reached this tenant through one of them).
///
/// A tenant without business hours is an after-hours line: it is closed at every instant, and
/// the date and time strings are in UTC because no zone is configured.
pub fn template_context(
    tenant: &Tenant,
    call: &CallFacts<'_>,
    now: DateTime<Utc>,
) -> BTreeMap<&'static str, String> {
    context_with_hours(tenant, call, now, tenant.business_hours.as_ref())
}

/// [`template_context`] with the clock evaluated against `hours` (`None`: always closed, UTC)
/// rather than the tenant's own, so [`longest_context`] can try every open/closed state.
fn context_with_hours(
    tenant: &Tenant,
    call: &CallFacts<'_>,
    now: DateTime<Utc>,
    hours: Option<&BusinessHours>,
) -> BTreeMap<&'static str, String> {
    let caller = number_of(call.from);
    let dialled = number_of(call.to);
    let clinic_line = dialled
        .as_ref()
        .filter(|n| tenant.numbers.contains(n))
        .or(tenant.numbers.first());
    let to = dialled.as_ref().or(clinic_line);
    let profile = &tenant.profile;

    let phone = |n: Option<&E164>, style: fn(&E164) -> String| n.map(style).unwrap_or_default();
    let text = |s: &Option<String>| s.clone().unwrap_or_default();

    let mut context = BTreeMap::from([
        ("call_sid", call.call_sid.to_string()),
        ("caller_phone_number", phone(caller.as_ref(), national)),
        (
            "callback_number",
            phone(caller.as_ref(), |n| n.as_str().to_string()),
        ),
        (
            "caller_phone_last4",
            phone(caller.as_ref(), |n| n.last4().to_string()),
        ),
        ("caller_phone_formatted", phone(caller.as_ref(), formatted)),
        ("caller_phone_digits", phone(caller.as_ref(), spoken_digits)),
        ("to_phone_number", phone(to, national)),
        ("to_phone_formatted", phone(to, formatted)),
        ("client_id", tenant.id.clone()),
        ("client_name", tenant.name.clone()),
        ("office_name", tenant.name.clone()),
        (
            "office_phone",
            phone(profile.office_phone.as_ref(), national),
        ),
        ("office_website", text(&profile.office_website)),
        ("office_hours", text(&profile.office_hours)),
        (
            "primary_transfer_number",
            national(&tenant.transfer.primary),
        ),
        (
            "secondary_transfer_number",
            phone(tenant.transfer.secondary.as_ref(), national),
        ),
        ("vetwise_phone", phone(clinic_line, national)),
        ("voicemail_enabled", profile.voicemail_enabled.to_string()),
        (
            "business_hours_enabled",
            tenant.business_hours.is_some().to_string(),
        ),
        (
            "agent_name",
            profile
                .agent_name
                .as_deref()
                .or(tenant.ultravox.voice.as_deref())
                .unwrap_or(DEFAULT_AGENT_NAME)
                .to_string(),
        ),
        (
            // `Display` for f64 writes 0.4 as "0.4" and 1.0 as "1", as JavaScript's String() did.
            "agent_temperature",
            tenant
                .ultravox
                .temperature
                .unwrap_or(DEFAULT_TEMPERATURE)
                .to_string(),
        ),
        // The original tied this to NODE_ENV; a production line never runs in debug mode.
        ("debug_mode", "false".to_string()),
    ]);

    // No configured hours: an empty week in UTC, which `BusinessHours` reports closed at every
    // instant, so the after-hours path and the date strings come from one implementation.
    let after_hours_only;
    let hours = match hours {
        Some(hours) => hours,
        None => {
            after_hours_only = BusinessHours {
                timezone: "UTC".into(),
                ..BusinessHours::default()
            };
            &after_hours_only
        }
    };
    let clock = hours.template_context(now);
    context.extend(clock.entries().map(|(k, v)| (k, v.to_string())));
    context
}

/// What an Ultravox call is given of the clinic and the call, whichever platform carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentPrompt {
    /// The template variables of the tenant's Ultravox agent (`templateContext`, strings only).
    Agent(Map<String, Value>),
    /// The tenant's own system prompt, filled.
    Inline(String),
}

/// What the tenant's agent is given for a call whose variables are `context`: an agent gets the
/// variables its prompt uses (`wanted`, see [`select`]; `None` sends them all), an inline
/// prompt is rendered (see [`render`]). Both platforms call this, so neither can drift.
pub fn agent_prompt(
    tenant: &Tenant,
    context: &BTreeMap<&'static str, String>,
    wanted: Option<&BTreeSet<String>>,
) -> AgentPrompt {
    let ultravox = &tenant.ultravox;
    match &ultravox.agent_id {
        Some(_) => AgentPrompt::Agent(select(context, wanted)),
        None => AgentPrompt::Inline(render(
            ultravox.system_prompt.as_deref().unwrap_or_default(),
            context,
        )),
    }
}

/// For each variable, the longest value it can take on any call this tenant gets, measured as
/// the JSON text it becomes (escapes count), with `call_sid` standing for the platform's call
/// id. Rendering a prompt with these values, or sending them as an agent's variables, gives an
/// upper bound of what any call's request can grow to: start-up checks a frame limit with it.
///
/// Why the values tried cover every variable's longest value:
/// - caller and dialled numbers: none; a 15-digit number (E.164's longest, so the longest
///   national and formatted forms); a North American number whose digits are all spoken as
///   five-letter words (the longest `caller_phone_digits`); each of the tenant's numbers (the
///   only values `vetwise_phone` takes). Anything else the platform sends is normalised
///   through [`E164::parse`] or becomes empty.
/// - the clock: every hour of the week of Wednesday 30 September 2026 (the longest weekday
///   and month names, a two-digit day, two-digit hours), in the tenant's zone and in UTC,
///   with the clinic's own hours, always closed and always open (so both answers of
///   `clinic_open` and friends are tried whatever the hours and closures say). Years stay four
///   digits until 9999.
/// - everything else is fixed by the tenant's configuration.
pub fn longest_context(tenant: &Tenant, call_sid: &str) -> BTreeMap<&'static str, String> {
    const LONGEST_E164: &str = "+882345678901234";
    // 3, 7 and 8 are the digits spoken as five-letter words.
    const LONGEST_SPOKEN: &str = "+13787387837";
    let clinic_numbers: Vec<&str> = tenant.numbers.iter().map(E164::as_str).collect();
    let callers = [None, Some(LONGEST_E164), Some(LONGEST_SPOKEN)];
    let dialled: Vec<Option<&str>> = [None, Some(LONGEST_E164), Some(LONGEST_SPOKEN)]
        .into_iter()
        .chain(clinic_numbers.iter().map(|n| Some(*n)))
        .collect();
    let zone = tenant
        .business_hours
        .as_ref()
        .map(|h| h.timezone.clone())
        .unwrap_or_else(|| "UTC".into());
    let always_open = always_open(&zone);
    let hour_sets = [tenant.business_hours.as_ref(), None, always_open.as_ref()];
    // Local Thursday 24 to Wednesday 30 September 2026, whatever the zone's offset (±14 h).
    let start = DateTime::parse_from_rfc3339("2026-09-23T00:00:00Z")
        .map(|t| t.to_utc())
        .unwrap_or_default();
    let instants: Vec<DateTime<Utc>> = (0..(9 * 24))
        .map(|h| start + chrono::TimeDelta::hours(h))
        .collect();

    let mut longest: BTreeMap<&'static str, (usize, String)> = BTreeMap::new();
    let mut consider = |context: BTreeMap<&'static str, String>| {
        for (key, value) in context {
            let size = json_len(&value);
            match longest.get(key) {
                Some((best, _)) if *best >= size => {}
                _ => {
                    longest.insert(key, (size, value));
                }
            }
        }
    };
    // The clock and the numbers are independent parts of the context: vary one at a time.
    let first = instants[0];
    for from in callers {
        for to in &dialled {
            let facts = CallFacts {
                call_sid,
                from,
                to: *to,
            };
            consider(template_context(tenant, &facts, first));
        }
    }
    let facts = CallFacts {
        call_sid,
        from: None,
        to: None,
    };
    for hours in hour_sets {
        for now in &instants {
            consider(context_with_hours(tenant, &facts, *now, hours));
        }
    }
    longest.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// Open around the clock in `zone` (an unknown zone: UTC).
fn always_open(zone: &str) -> Option<BusinessHours> {
    let day = serde_json::json!({ "open": "00:00", "close": "24:00" });
    serde_json::from_value(serde_json::json!({
        "timezone": zone,
        "hours": {
            "monday": day, "tuesday": day, "wednesday": day, "thursday": day,
            "friday": day, "saturday": day, "sunday": day,
        },
    }))
    .ok()
}

/// The length of `value` as a JSON string.
fn json_len(value: &str) -> usize {
    serde_json::to_string(value).map_or(value.len(), |s| s.len())
}

/// Where `{{ name }}` placeholders are in `template`: the byte range of each whole placeholder
/// and the name inside. A name is ASCII letters, digits and `_` (the original's `\w+`), with
/// optional whitespace around it inside the braces; anything else is left alone as text.
fn placeholders(template: &str) -> impl Iterator<Item = (Range<usize>, &str)> + '_ {
    let bytes = template.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(offset) = template[from..].find("{{") {
            let start = from + offset;
            // On a miss, retry one byte later so that `{{{a}}}` still finds `{{a}}`, as the
            // original's regex did. `{` is one byte, so that is a char boundary.
            from = start + 1;
            let skip_space = |mut i: usize| {
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                i
            };
            let name_start = skip_space(start + 2);
            let mut name_end = name_start;
            while name_end < bytes.len()
                && (bytes[name_end].is_ascii_alphanumeric() || bytes[name_end] == b'_')
            {
                name_end += 1;
            }
            if name_end == name_start {
                continue;
            }
            let close = skip_space(name_end);
            if bytes[close..].starts_with(b"}}") {
                from = close + 2;
                return Some((start..close + 2, &template[name_start..name_end]));
            }
        }
        None
    })
}

/// The variables a prompt references: the names inside `{{ … }}`.
pub fn referenced_variables(template: &str) -> BTreeSet<String> {
    placeholders(template)
        .map(|(_, name)| name.to_string())
        .collect()
}

/// The `templateContext` to send to Ultravox.
///
/// With `Some(wanted)` (the names the agent's prompt references), only those: the original sent
/// only those, and a prompt cannot use more. A referenced name lifeline does not know is left
/// out and logged at warn, by name only, so that the prompt or lifeline can be fixed. With `None` (the
/// agent's prompt could not be read), every variable, so that the call still gets a filled
/// prompt.
pub fn select(
    context: &BTreeMap<&'static str, String>,
    wanted: Option<&BTreeSet<String>>,
) -> Map<String, Value> {
    let Some(wanted) = wanted else {
        return context
            .iter()
            .map(|(k, v)| ((*k).to_string(), Value::String(v.clone())))
            .collect();
    };
    let mut selected = Map::new();
    for name in wanted {
        match context.get(name.as_str()) {
            Some(value) => {
                selected.insert(name.clone(), Value::String(value.clone()));
            }
            None => tracing::warn!(
                variable = %name,
                "the agent's prompt uses a variable lifeline does not fill"
            ),
        }
    }
    selected
}

/// Fills the `{{ variables }}` of an inline prompt. Unknown variables are left exactly as
/// written so that a typo stays visible in the prompt rather than silently becoming empty text. One pass: a value
/// that itself contains `{{…}}` is not expanded again.
pub fn render(template: &str, context: &BTreeMap<&'static str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut copied = 0;
    for (range, name) in placeholders(template) {
        if let Some(value) = context.get(name) {
            out.push_str(&template[copied..range.start]);
            out.push_str(value);
            copied = range.end;
        }
    }
    out.push_str(&template[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Fallback, TenantProfile, TransferTargets, UltravoxSettings};
    use serde_json::json;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    fn n(raw: &str) -> E164 {
        E164::parse(raw).unwrap()
    }

    /// Toronto, weekdays 09:00–17:00, closed at weekends and on Christmas Day.
    fn toronto_hours() -> BusinessHours {
        let hours: BusinessHours = serde_json::from_value(json!({
            "timezone": "America/Toronto",
            "hours": {
                "monday": {"open": "09:00", "close": "17:00"},
                "tuesday": {"open": "09:00", "close": "17:00"},
                "wednesday": {"open": "09:00", "close": "17:00"},
                "thursday": {"open": "09:00", "close": "17:00"},
                "friday": {"open": "09:00", "close": "17:00"},
            },
            "special_closures": ["2026-12-25"],
        }))
        .unwrap();
        assert_eq!(hours.validate(), Ok(()));
        hours
    }

    /// A fully configured Toronto clinic.
    fn tenant() -> Tenant {
        Tenant {
            id: "humber".into(),
            name: "Humber Veterinary Clinic".into(),
            numbers: vec![n("+16479526096"), n("+12894730151")],
            jambonz: None,
            transfer: TransferTargets {
                primary: n("+13652972501"),
                secondary: Some(n("+13654001512")),
                trunk: None,
                caller_id: None,
                ring_timeout_secs: 25,
                accept_gate: true,
                gate_timeout_secs: 8,
            },
            ultravox: UltravoxSettings {
                api_key: "uv-key".into(),
                agent_id: Some("2d7f1c3e-agent".into()),
                system_prompt: None,
                voice: Some("Mark".into()),
                model: "fixie-ai/ultravox".into(),
                temperature: Some(0.2),
            },
            business_hours: Some(toronto_hours()),
            frontend: None,
            alerts: Default::default(),
            oncall: None,
            paging: None,
            caller_sms: None,
            profile: TenantProfile {
                office_phone: Some(n("+14167431331")),
                office_website: Some("https://humbervet.example".into()),
                office_hours: Some("Monday to Friday, 9 AM to 5 PM".into()),
                agent_name: Some("Nora".into()),
                voicemail_enabled: true,
            },
            fallback: Fallback::Dial,
            tool_api_key: None,
        }
    }

    /// A clinic with only what configuration requires.
    fn bare_tenant() -> Tenant {
        Tenant {
            transfer: TransferTargets {
                secondary: None,
                ..tenant().transfer
            },
            ultravox: UltravoxSettings {
                voice: None,
                temperature: None,
                ..tenant().ultravox
            },
            business_hours: None,
            profile: TenantProfile::default(),
            ..tenant()
        }
    }

    fn call<'a>(from: Option<&'a str>, to: Option<&'a str>) -> CallFacts<'a> {
        CallFacts {
            call_sid: "CA5f3c0b7d9e2a4c6b8d0f1e3a5c7b9d1f",
            from,
            to,
        }
    }

    const ALL_KEYS: [&str; 30] = [
        "call_sid",
        "caller_phone_number",
        "callback_number",
        "caller_phone_last4",
        "caller_phone_formatted",
        "caller_phone_digits",
        "to_phone_number",
        "to_phone_formatted",
        "client_id",
        "client_name",
        "office_name",
        "office_phone",
        "office_website",
        "office_hours",
        "primary_transfer_number",
        "secondary_transfer_number",
        "vetwise_phone",
        "voicemail_enabled",
        "business_hours_enabled",
        "current_date",
        "current_time",
        "current_datetime",
        "day_of_week",
        "time_of_day",
        "clinic_open",
        "clinic_closed",
        "is_the_clinic_open",
        "agent_name",
        "agent_temperature",
        "debug_mode",
    ];

    const CALLER_KEYS: [&str; 5] = [
        "caller_phone_number",
        "callback_number",
        "caller_phone_last4",
        "caller_phone_formatted",
        "caller_phone_digits",
    ];

    fn assert_keys(ctx: &BTreeMap<&'static str, String>) {
        let keys: BTreeSet<&str> = ctx.keys().copied().collect();
        assert_eq!(keys, BTreeSet::from(ALL_KEYS));
    }

    #[test]
    fn nanp_caller_during_opening_hours_fills_every_variable() {
        // Monday 2026-01-05 10:30 in Toronto (UTC−5).
        let ctx = template_context(
            &tenant(),
            &call(Some("+14168189171"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        let want: BTreeMap<&str, String> = [
            ("call_sid", "CA5f3c0b7d9e2a4c6b8d0f1e3a5c7b9d1f"),
            ("caller_phone_number", "4168189171"),
            ("callback_number", "+14168189171"),
            ("caller_phone_last4", "9171"),
            ("caller_phone_formatted", "(416) 818-9171"),
            (
                "caller_phone_digits",
                "four one six... pause... eight one eight... pause... nine one seven one",
            ),
            ("to_phone_number", "6479526096"),
            ("to_phone_formatted", "(647) 952-6096"),
            ("client_id", "humber"),
            ("client_name", "Humber Veterinary Clinic"),
            ("office_name", "Humber Veterinary Clinic"),
            ("office_phone", "4167431331"),
            ("office_website", "https://humbervet.example"),
            ("office_hours", "Monday to Friday, 9 AM to 5 PM"),
            ("primary_transfer_number", "3652972501"),
            ("secondary_transfer_number", "3654001512"),
            ("vetwise_phone", "6479526096"),
            ("voicemail_enabled", "true"),
            ("business_hours_enabled", "true"),
            ("current_date", "Monday, January 5, 2026"),
            ("current_time", "10:30 AM"),
            ("current_datetime", "Monday, January 5, 2026 at 10:30 AM"),
            ("day_of_week", "Monday"),
            ("time_of_day", "morning"),
            ("clinic_open", "true"),
            ("clinic_closed", "false"),
            ("is_the_clinic_open", "yes"),
            ("agent_name", "Nora"),
            ("agent_temperature", "0.2"),
            ("debug_mode", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        assert_eq!(ctx, want);
        assert_keys(&ctx);
    }

    #[test]
    fn spoken_digits_cover_every_digit() {
        let ctx = template_context(
            &tenant(),
            &call(Some("+12034567890"), None),
            at("2026-01-05T15:30:00Z"),
        );
        assert_eq!(
            ctx["caller_phone_digits"],
            "two zero three... pause... four five six... pause... seven eight nine zero"
        );
        assert_eq!(ctx["caller_phone_formatted"], "(203) 456-7890");
    }

    #[test]
    fn uk_caller_keeps_the_country_code() {
        let ctx = template_context(
            &tenant(),
            &call(Some("+447911123456"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        assert_eq!(ctx["caller_phone_number"], "+447911123456");
        assert_eq!(ctx["callback_number"], "+447911123456");
        assert_eq!(ctx["caller_phone_last4"], "3456");
        assert_eq!(ctx["caller_phone_formatted"], "+447911123456");
        assert_eq!(ctx["caller_phone_digits"], "", "no grouping outside NANP");
        assert_keys(&ctx);
    }

    #[test]
    fn non_nanp_clinic_numbers_stay_e164() {
        let mut uk = tenant();
        uk.numbers = vec![n("+442079460958")];
        uk.transfer.primary = n("+447700900123");
        uk.transfer.secondary = Some(n("+447700900456"));
        uk.profile.office_phone = Some(n("+442079460000"));
        let ctx = template_context(
            &uk,
            &call(Some("+447911123456"), Some("+442079460958")),
            at("2026-01-05T15:30:00Z"),
        );
        assert_eq!(ctx["to_phone_number"], "+442079460958");
        assert_eq!(ctx["to_phone_formatted"], "+442079460958");
        assert_eq!(ctx["vetwise_phone"], "+442079460958");
        assert_eq!(ctx["primary_transfer_number"], "+447700900123");
        assert_eq!(ctx["secondary_transfer_number"], "+447700900456");
        assert_eq!(ctx["office_phone"], "+442079460000");
    }

    #[test]
    fn withheld_or_unusable_callers_give_empty_caller_fields() {
        let now = at("2026-01-06T03:00:00Z");
        let cases: [Option<&str>; 14] = [
            None,
            Some(""),
            Some("   "),
            Some("anonymous"),
            Some("Anonymous"),
            Some("Restricted"),
            Some("+266696687"),
            Some("+7378742833"),
            Some("+86282452253"),
            Some("+2562533"),
            Some("+8656696"),
            Some("sip:alice@humber.sip.twilio.com"),
            Some("client:front-desk"),
            Some("12345"),
        ];
        for from in cases {
            let ctx = template_context(&tenant(), &call(from, Some("+16479526096")), now);
            assert_keys(&ctx);
            for key in CALLER_KEYS {
                assert_eq!(ctx[key], "", "{key} for From={from:?}");
            }
            // The rest of the context is unaffected.
            assert_eq!(ctx["call_sid"], "CA5f3c0b7d9e2a4c6b8d0f1e3a5c7b9d1f");
            assert_eq!(ctx["to_phone_number"], "6479526096", "From={from:?}");
            assert_eq!(ctx["clinic_closed"], "true");
        }
    }

    #[test]
    fn numbers_inside_sip_uris_are_used() {
        let ctx = template_context(
            &tenant(),
            &call(
                Some("sip:+14168189171@humber.pstn.twilio.com;transport=udp"),
                Some("<sips:+16479526096@humber.sip.twilio.com>"),
            ),
            at("2026-01-05T15:30:00Z"),
        );
        assert_eq!(ctx["caller_phone_number"], "4168189171");
        assert_eq!(ctx["callback_number"], "+14168189171");
        assert_eq!(ctx["to_phone_number"], "6479526096");
        assert_eq!(ctx["vetwise_phone"], "6479526096");
        let tel = template_context(
            &tenant(),
            &call(Some("tel:+447911123456"), None),
            at("2026-01-05T15:30:00Z"),
        );
        assert_eq!(tel["callback_number"], "+447911123456");
    }

    #[test]
    fn dialled_number_picks_the_clinic_line() {
        let now = at("2026-01-05T15:30:00Z");
        // The tenant's second number was dialled.
        let second = template_context(&tenant(), &call(None, Some("+12894730151")), now);
        assert_eq!(second["to_phone_number"], "2894730151");
        assert_eq!(second["vetwise_phone"], "2894730151");
        // No usable To: the tenant's first number stands in for both.
        for to in [None, Some(""), Some("sip:lifeline@humber.sip.twilio.com")] {
            let ctx = template_context(&tenant(), &call(None, to), now);
            assert_eq!(ctx["to_phone_number"], "6479526096", "To={to:?}");
            assert_eq!(ctx["to_phone_formatted"], "(647) 952-6096", "To={to:?}");
            assert_eq!(ctx["vetwise_phone"], "6479526096", "To={to:?}");
        }
        // A To that is not the tenant's (a forwarded number): reported, but not as the clinic's.
        let other = template_context(&tenant(), &call(None, Some("+14165550100")), now);
        assert_eq!(other["to_phone_number"], "4165550100");
        assert_eq!(other["vetwise_phone"], "6479526096");
        // A tenant without numbers (Jambonz-only) and no To: empty, not a panic.
        let mut no_numbers = tenant();
        no_numbers.numbers.clear();
        let ctx = template_context(&no_numbers, &call(None, None), now);
        assert_eq!(ctx["to_phone_number"], "");
        assert_eq!(ctx["vetwise_phone"], "");
    }

    #[test]
    fn tenant_without_optional_settings_gets_empty_strings_and_defaults() {
        let ctx = template_context(
            &bare_tenant(),
            &call(Some("+14168189171"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        assert_keys(&ctx);
        assert_eq!(ctx["secondary_transfer_number"], "");
        assert_eq!(ctx["office_phone"], "");
        assert_eq!(ctx["office_website"], "");
        assert_eq!(ctx["office_hours"], "");
        assert_eq!(ctx["primary_transfer_number"], "3652972501");
        assert_eq!(ctx["voicemail_enabled"], "false");
        assert_eq!(ctx["business_hours_enabled"], "false");
        assert_eq!(ctx["agent_name"], "Jessica");
        assert_eq!(ctx["agent_temperature"], "0.4");
    }

    #[test]
    fn agent_name_falls_back_to_the_voice() {
        let mut t = tenant();
        t.profile.agent_name = None;
        let ctx = template_context(&t, &call(None, None), at("2026-01-05T15:30:00Z"));
        assert_eq!(ctx["agent_name"], "Mark");
    }

    #[test]
    fn temperature_is_written_like_javascript_numbers() {
        for (temperature, want) in [(1.0, "1"), (0.0, "0"), (0.75, "0.75"), (0.4, "0.4")] {
            let mut t = tenant();
            t.ultravox.temperature = Some(temperature);
            let ctx = template_context(&t, &call(None, None), at("2026-01-05T15:30:00Z"));
            assert_eq!(ctx["agent_temperature"], want);
        }
    }

    #[test]
    fn business_hours_are_evaluated_in_the_clinics_zone() {
        let t = tenant();
        #[rustfmt::skip]
        let cases = [
            // instant, date, time, day, time of day, open
            ("2026-01-05T14:00:00Z", "Monday, January 5, 2026", "9:00 AM", "Monday", "morning", true),
            ("2026-01-05T13:59:00Z", "Monday, January 5, 2026", "8:59 AM", "Monday", "morning", false),
            ("2026-01-05T21:59:00Z", "Monday, January 5, 2026", "4:59 PM", "Monday", "afternoon", true),
            ("2026-01-05T22:00:00Z", "Monday, January 5, 2026", "5:00 PM", "Monday", "evening", false),
            // Tuesday in UTC, still Monday evening in Toronto.
            ("2026-01-06T03:00:00Z", "Monday, January 5, 2026", "10:00 PM", "Monday", "evening", false),
            // Saturday, no hours.
            ("2026-01-10T16:00:00Z", "Saturday, January 10, 2026", "11:00 AM", "Saturday", "morning", false),
            // Summer time (UTC−4).
            ("2026-07-15T13:00:00Z", "Wednesday, July 15, 2026", "9:00 AM", "Wednesday", "morning", true),
            // Christmas, a Friday.
            ("2026-12-25T15:00:00Z", "Friday, December 25, 2026", "10:00 AM", "Friday", "morning", false),
        ];
        for (instant, date, time, day, part, open) in cases {
            let ctx = template_context(&t, &call(Some("+14168189171"), None), at(instant));
            assert_eq!(ctx["current_date"], date, "{instant}");
            assert_eq!(ctx["current_time"], time, "{instant}");
            assert_eq!(ctx["current_datetime"], format!("{date} at {time}"));
            assert_eq!(ctx["day_of_week"], day, "{instant}");
            assert_eq!(ctx["time_of_day"], part, "{instant}");
            assert_eq!(ctx["clinic_open"], open.to_string(), "{instant}");
            assert_eq!(ctx["clinic_closed"], (!open).to_string(), "{instant}");
            let yes_no = if open { "yes" } else { "no" };
            assert_eq!(ctx["is_the_clinic_open"], yes_no, "{instant}");
            assert_eq!(ctx["business_hours_enabled"], "true");
        }
    }

    #[test]
    fn no_business_hours_is_always_closed_with_utc_dates() {
        let t = bare_tenant();
        #[rustfmt::skip]
        let cases = [
            // A Monday at noon Toronto time would be open for a clinic with hours.
            ("2026-01-05T17:00:00Z", "Monday, January 5, 2026", "5:00 PM", "Monday", "evening"),
            ("2026-01-05T15:00:00Z", "Monday, January 5, 2026", "3:00 PM", "Monday", "afternoon"),
            ("2026-01-06T03:00:00Z", "Tuesday, January 6, 2026", "3:00 AM", "Tuesday", "morning"),
        ];
        for (instant, date, time, day, part) in cases {
            let ctx = template_context(&t, &call(None, None), at(instant));
            assert_eq!(ctx["current_date"], date, "{instant}");
            assert_eq!(ctx["current_time"], time, "{instant}");
            assert_eq!(ctx["current_datetime"], format!("{date} at {time}"));
            assert_eq!(ctx["day_of_week"], day, "{instant}");
            assert_eq!(ctx["time_of_day"], part, "{instant}");
            assert_eq!(ctx["clinic_open"], "false", "{instant}");
            assert_eq!(ctx["clinic_closed"], "true", "{instant}");
            assert_eq!(ctx["is_the_clinic_open"], "no", "{instant}");
            assert_eq!(ctx["business_hours_enabled"], "false");
        }
    }

    #[test]
    fn referenced_variables_edge_cases() {
        let set = |names: &[&str]| -> BTreeSet<String> {
            names.iter().map(|s| (*s).to_string()).collect()
        };
        #[rustfmt::skip]
        let cases: [(&str, &[&str]); 20] = [
            ("{{a}}{{b}}", &["a", "b"]),
            ("{{ a }}", &["a"]),
            ("{{\tcaller_phone_number\n}}", &["caller_phone_number"]),
            ("{{not valid}}", &[]),
            ("{{}}", &[]),
            ("{{ }}", &[]),
            ("{{a", &[]),
            ("{{a}", &[]),
            ("{{a-b}}", &[]),
            ("{{a.b}}", &[]),
            ("{{ä}}", &[]),
            ("{a}", &[]),
            ("{{{a}}}", &["a"]),
            ("{{{{b}}}}", &["b"]),
            ("{{a}} {{a}} {{ a }}", &["a"]),
            ("{{x {{y}}", &["y"]),
            ("Hi {{agent_name}}, it is {{current_time}} on {{day_of_week}}.", &["agent_name", "current_time", "day_of_week"]),
            ("{{ 9to5 }} {{_private}}", &["9to5", "_private"]),
            ("", &[]),
            ("Prix: 5 € {{ prix_€ }} {{ok}} — fin", &["ok"]),
        ];
        for (template, want) in cases {
            assert_eq!(referenced_variables(template), set(want), "{template:?}");
        }
    }

    #[test]
    fn select_sends_only_what_the_prompt_uses() {
        let ctx = template_context(
            &tenant(),
            &call(Some("+14168189171"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        let wanted = referenced_variables(
            "You are {{agent_name}} at {{office_name}}. The caller is {{ caller_phone_formatted }}. \
             Emergency fund: {{emergency_fund_amount}}.",
        );
        let selected = select(&ctx, Some(&wanted));
        assert_eq!(
            Value::Object(selected),
            json!({
                "agent_name": "Nora",
                "office_name": "Humber Veterinary Clinic",
                "caller_phone_formatted": "(416) 818-9171",
            })
        );
        assert!(select(&ctx, Some(&BTreeSet::new())).is_empty());
    }

    #[test]
    fn an_unknown_variable_is_logged_by_name_only() {
        use std::sync::{Arc, Mutex};

        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        let ctx = template_context(
            &tenant(),
            &call(Some("+14168189171"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        let wanted = referenced_variables("{{caller_phone_number}} {{emergency_fund_amount}}");
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .finish();
        let selected =
            tracing::subscriber::with_default(subscriber, || select(&ctx, Some(&wanted)));
        assert_eq!(selected.len(), 1);
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(logged.contains("WARN"), "{logged}");
        assert!(logged.contains("emergency_fund_amount"), "{logged}");
        assert!(
            !logged.contains("9171") && !logged.contains("6096"),
            "{logged}"
        );
        assert_eq!(logged.lines().count(), 1, "{logged}");
    }

    #[test]
    fn select_without_a_prompt_sends_every_variable_as_a_string() {
        let ctx = template_context(
            &tenant(),
            &call(Some("anonymous"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        let all = select(&ctx, None);
        assert_eq!(all.len(), ALL_KEYS.len());
        assert!(all.values().all(Value::is_string));
        for key in ALL_KEYS {
            assert_eq!(all[key], ctx[key].as_str(), "{key}");
        }
        assert_eq!(all["clinic_open"], "true");
        assert_eq!(all["callback_number"], "");
    }

    #[test]
    fn render_fills_known_variables_and_keeps_the_rest() {
        let ctx = template_context(
            &tenant(),
            &call(Some("+14168189171"), Some("+16479526096")),
            at("2026-01-06T03:00:00Z"),
        );
        let prompt = "Je suis {{agent_name}} — {{ office_name }}.\n\
                      Caller: {{caller_phone_formatted}}; open? {{is_the_clinic_open}}.\n\
                      Unknown: {{ pet_breed }}, broken: {{office_name, {{}} and {{agent_name";
        assert_eq!(
            render(prompt, &ctx),
            "Je suis Nora — Humber Veterinary Clinic.\n\
             Caller: (416) 818-9171; open? no.\n\
             Unknown: {{ pet_breed }}, broken: {{office_name, {{}} and {{agent_name"
        );
        assert_eq!(render("", &ctx), "");
        assert_eq!(render("no variables", &ctx), "no variables");
        assert_eq!(render("{{{agent_name}}}", &ctx), "{Nora}");
    }

    #[test]
    fn render_does_not_expand_values_again() {
        let mut ctx = BTreeMap::new();
        ctx.insert("office_name", "{{secret}}".to_string());
        ctx.insert("secret", "leaked".to_string());
        assert_eq!(
            render("{{office_name}} / {{secret}}", &ctx),
            "{{secret}} / leaked"
        );
    }

    #[test]
    fn agent_prompt_renders_inline_prompts_and_selects_agent_variables() {
        let ctx = template_context(
            &tenant(),
            &call(Some("+14168189171"), Some("+16479526096")),
            at("2026-01-05T15:30:00Z"),
        );
        let wanted = referenced_variables("{{agent_name}} {{clinic_open}}");
        assert_eq!(
            agent_prompt(&tenant(), &ctx, Some(&wanted)),
            AgentPrompt::Agent(select(&ctx, Some(&wanted)))
        );
        assert_eq!(
            agent_prompt(&tenant(), &ctx, None),
            AgentPrompt::Agent(select(&ctx, None))
        );
        let mut inline = tenant();
        inline.ultravox.agent_id = None;
        inline.ultravox.system_prompt = Some("{{agent_name}} at {{office_name}}, {{x}}".into());
        // An inline prompt names its own variables: `wanted` does not apply.
        assert_eq!(
            agent_prompt(&inline, &ctx, Some(&wanted)),
            AgentPrompt::Inline("Nora at Humber Veterinary Clinic, {{x}}".into())
        );
    }

    /// Every value a call can get is at most as long (as JSON) as `longest_context`'s, over a
    /// year of instants, callers and dialled numbers of every kind, and tenants with and
    /// without hours or numbers.
    #[test]
    fn longest_context_bounds_every_value_a_call_can_get() {
        let mut uk = tenant();
        uk.numbers = vec![n("+442079460958")];
        uk.business_hours = Some(
            serde_json::from_value(json!({
                "timezone": "Pacific/Kiritimati",
                "hours": {"saturday": {"open": "22:00", "close": "02:00"}},
                // The whole scanned week closed: the bound must still allow "open".
                "special_closures": ["2026-09-24", "2026-09-25", "2026-09-26", "2026-09-27",
                                     "2026-09-28", "2026-09-29", "2026-09-30"],
            }))
            .unwrap(),
        );
        let mut no_numbers = bare_tenant();
        no_numbers.numbers.clear();
        let sid = "CA5f3c0b7d9e2a4c6b8d0f1e3a5c7b9d1f";
        let parties: [Option<&str>; 12] = [
            None,
            Some("anonymous"),
            Some("+14168189171"),
            Some("+17777777777"),
            Some("+13333333333"),
            Some("+447911123456"),
            Some("+999999999999999"),
            Some("sip:+14168189171@humber.pstn.twilio.com;transport=udp"),
            Some("+16479526096"),
            Some("+12894730151"),
            Some("+442079460958"),
            Some("12345"),
        ];
        for t in [tenant(), bare_tenant(), uk, no_numbers] {
            let longest = longest_context(&t, sid);
            let check = |ctx: BTreeMap<&'static str, String>, what: &str| {
                assert_eq!(
                    ctx.keys().collect::<Vec<_>>(),
                    longest.keys().collect::<Vec<_>>()
                );
                for (key, value) in &ctx {
                    assert!(
                        json_len(value) <= json_len(&longest[key]),
                        "{}: {key} = {value:?} is longer than {:?} ({what})",
                        t.id,
                        longest[key]
                    );
                }
            };
            for from in parties {
                for to in parties {
                    let ctx = template_context(
                        &t,
                        &CallFacts {
                            call_sid: sid,
                            from,
                            to,
                        },
                        at("2026-03-08T07:30:00Z"),
                    );
                    check(ctx, &format!("{from:?} to {to:?}"));
                }
            }
            let start = at("2026-01-01T00:00:00Z");
            for step in 0..(365 * 24 / 7) {
                let now = start + chrono::TimeDelta::hours(step * 7);
                let ctx = template_context(&t, &call(Some("+14168189171"), None), now);
                check(ctx, &now.to_string());
            }
        }
        // The bound is reached, not only safe.
        let longest = longest_context(&tenant(), sid);
        assert_eq!(
            longest["current_date"].len(),
            "Wednesday, September 30, 2026".len()
        );
        assert_eq!(longest["is_the_clinic_open"], "yes");
        assert_eq!(longest["clinic_open"], "false");
        assert_eq!(longest["callback_number"].len(), 16);
        assert_eq!(
            longest["caller_phone_digits"],
            "three seven eight... pause... seven three eight... pause... seven eight three seven"
        );
    }

    #[test]
    fn debug_output_masks_phone_numbers() {
        let facts = call(Some("+14168189171"), Some("+16479526096"));
        let text = format!("{facts:?}");
        assert!(!text.contains("4168189171"), "{text}");
        assert!(!text.contains("6479526096"), "{text}");
        assert!(
            text.contains("****9171") && text.contains("****6096"),
            "{text}"
        );
        assert!(
            text.contains("CA5f3c0b7d9e2a4c6b8d0f1e3a5c7b9d1f"),
            "{text}"
        );
    }
}
