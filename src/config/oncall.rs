//! A clinic's on-call schedule (`[tenants.oncall]`): the escalation chain a transfer walks.
//!
//! ```toml
//! [tenants.oncall]
//! timezone = "America/Toronto"     # the clinic's zone: rotations hand off in local time
//! total_ring_budget_secs = 120     # the whole chain, gates included, fits in this
//!
//! [[tenants.oncall.rotations]]
//! name = "vets"
//! period = "weekly"                # or "nightly": a new person each local day at handoff
//! handoff = "08:00"                # local time the rotation moves on
//! start = "2026-01-05"             # the local date on which members[0] starts
//! members = ["+15557650001", "+15557650002"]
//!
//! [[tenants.oncall.overrides]]     # a date range covered by someone else
//! rotation = "vets"
//! from = "2026-12-24"              # local dates, both included (each from its handoff)
//! until = "2026-12-26"
//! number = "+15557650009"
//!
//! [[tenants.oncall.steps]]         # rung in order; each its own ring timeout
//! rotation = "vets"
//! ring_timeout_secs = 20
//! [[tenants.oncall.steps]]
//! number = "+15557650003"          # a fixed person or number
//! ring_timeout_secs = 15
//!
//! [tenants.oncall.final]           # rung last (e.g. the practice manager)
//! number = "+15557650004"
//! ring_timeout_secs = 25
//! ```
//!
//! Without `[tenants.oncall]`, `[tenants.transfer]` `primary` and `secondary` are a chain of two
//! steps with the transfer's ring timeout.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

use crate::phone::E164;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOncall {
    #[serde(default)]
    timezone: String,
    total_ring_budget_secs: Option<u32>,
    #[serde(default)]
    rotations: Vec<RawRotation>,
    #[serde(default)]
    overrides: Vec<RawOverride>,
    #[serde(default)]
    steps: Vec<RawStep>,
    #[serde(rename = "final")]
    last: Option<RawStep>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    #[serde(default)]
    name: String,
    #[serde(default)]
    period: String,
    handoff: Option<String>,
    #[serde(default)]
    start: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    #[serde(default)]
    rotation: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    number: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    rotation: Option<String>,
    number: Option<String>,
    ring_timeout_secs: Option<u32>,
}

/// How often a rotation moves to its next member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Weekly,
    Nightly,
}

/// Members taking turns, handing off at a local time.
#[derive(Debug, Clone, PartialEq)]
pub struct Rotation {
    pub name: String,
    pub period: Period,
    pub handoff: NaiveTime,
    /// The local date on which `members[0]` starts (at `handoff`).
    pub start: NaiveDate,
    pub members: Vec<E164>,
}

/// Someone else covers a rotation on local dates `from..=until` (each from its handoff).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub rotation: String,
    pub from: NaiveDate,
    pub until: NaiveDate,
    pub number: E164,
}

/// Who a step rings.
#[derive(Debug, Clone, PartialEq)]
pub enum StepTarget {
    Number(E164),
    Rotation(String),
}

/// One step of the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub target: StepTarget,
    pub ring_timeout_secs: u32,
}

/// A clinic's on-call schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct OncallSchedule {
    pub timezone: Tz,
    pub total_ring_budget_secs: u32,
    pub rotations: Vec<Rotation>,
    pub overrides: Vec<Override>,
    pub steps: Vec<Step>,
    pub last: Option<Step>,
}

/// A step resolved to a number at a given time.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainStep {
    pub number: E164,
    pub ring_timeout_secs: u32,
    /// The last step of the chain (`[tenants.oncall.final]`).
    pub is_final: bool,
}

/// Ring timeouts outside this are refused (as `transfer.ring_timeout_secs`).
const RING_RANGE: std::ops::RangeInclusive<u32> = 5..=120;

impl RawOncall {
    /// Validates; every problem is pushed with its precise path.
    pub(super) fn validate(
        self,
        label: &str,
        default_ring: u32,
        problems: &mut Vec<String>,
    ) -> Option<OncallSchedule> {
        let before = problems.len();
        let p = |problems: &mut Vec<String>, msg: String| problems.push(format!("{label}: {msg}"));
        let timezone = match self.timezone.trim().parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                p(
                    problems,
                    format!(
                        "oncall.timezone {:?} is not an IANA time zone (e.g. \"America/Toronto\")",
                        self.timezone
                    ),
                );
                None
            }
        };
        let phone = |problems: &mut Vec<String>, field: String, raw: &str| match E164::parse(raw) {
            Ok(n) => Some(n),
            Err(e) => {
                problems.push(format!("{label}: {field} {raw:?} {e}"));
                None
            }
        };
        let date =
            |problems: &mut Vec<String>, field: String, raw: &str| match NaiveDate::parse_from_str(
                raw.trim(),
                "%Y-%m-%d",
            ) {
                Ok(d) => Some(d),
                Err(_) => {
                    problems.push(format!(
                        "{label}: {field} {raw:?} is not a date (YYYY-MM-DD)"
                    ));
                    None
                }
            };
        let mut rotations = Vec::new();
        for (i, r) in self.rotations.into_iter().enumerate() {
            let at = format!("oncall.rotations[{i}]");
            if r.name.trim().is_empty() {
                p(problems, format!("{at}.name is required"));
            } else if rotations.iter().any(|o: &Rotation| o.name == r.name) {
                p(problems, format!("{at}.name {:?} is used twice", r.name));
            }
            let period = match r.period.as_str() {
                "weekly" => Some(Period::Weekly),
                "nightly" => Some(Period::Nightly),
                other => {
                    p(
                        problems,
                        format!("{at}.period {other:?} must be \"weekly\" or \"nightly\""),
                    );
                    None
                }
            };
            let handoff_raw = r.handoff.as_deref().unwrap_or("08:00");
            let handoff = match NaiveTime::parse_from_str(handoff_raw.trim(), "%H:%M") {
                Ok(t) => Some(t),
                Err(_) => {
                    p(
                        problems,
                        format!("{at}.handoff {handoff_raw:?} is not a local time (HH:MM)"),
                    );
                    None
                }
            };
            let start = date(problems, format!("{at}.start"), &r.start);
            if r.members.is_empty() {
                p(problems, format!("{at}.members needs at least one number"));
            }
            let members: Vec<E164> = r
                .members
                .iter()
                .enumerate()
                .filter_map(|(j, m)| phone(problems, format!("{at}.members[{j}]"), m))
                .collect();
            if let (Some(period), Some(handoff), Some(start)) = (period, handoff, start) {
                rotations.push(Rotation {
                    name: r.name,
                    period,
                    handoff,
                    start,
                    members,
                });
            }
        }
        let known = |name: &str| rotations.iter().any(|r| r.name == name);
        let mut overrides = Vec::new();
        for (i, o) in self.overrides.into_iter().enumerate() {
            let at = format!("oncall.overrides[{i}]");
            if !known(&o.rotation) {
                p(
                    problems,
                    format!("{at}.rotation {:?} names no rotation", o.rotation),
                );
            }
            let from = date(problems, format!("{at}.from"), &o.from);
            let until = date(problems, format!("{at}.until"), &o.until);
            if let (Some(f), Some(u)) = (from, until)
                && u < f
            {
                p(problems, format!("{at}.until is before {at}.from"));
            }
            let number = phone(problems, format!("{at}.number"), &o.number);
            if let (Some(from), Some(until), Some(number)) = (from, until, number) {
                overrides.push(Override {
                    rotation: o.rotation,
                    from,
                    until,
                    number,
                });
            }
        }
        let step = |problems: &mut Vec<String>, at: String, s: RawStep| -> Option<Step> {
            let ring = s.ring_timeout_secs.unwrap_or(default_ring);
            if !RING_RANGE.contains(&ring) {
                problems.push(format!(
                    "{label}: {at}.ring_timeout_secs must be between 5 and 120"
                ));
            }
            let target = match (s.rotation, s.number) {
                (Some(r), None) => {
                    if !known(&r) {
                        problems.push(format!("{label}: {at}.rotation {r:?} names no rotation"));
                    }
                    Some(StepTarget::Rotation(r))
                }
                (None, Some(n)) => {
                    phone(problems, format!("{at}.number"), &n).map(StepTarget::Number)
                }
                _ => {
                    problems.push(format!(
                        "{label}: {at} needs exactly one of `rotation` and `number`"
                    ));
                    None
                }
            };
            target.map(|target| Step {
                target,
                ring_timeout_secs: ring,
            })
        };
        if self.steps.is_empty() {
            p(problems, "oncall.steps needs at least one step".to_string());
        }
        let steps: Vec<Step> = self
            .steps
            .into_iter()
            .enumerate()
            .filter_map(|(i, s)| step(problems, format!("oncall.steps[{i}]"), s))
            .collect();
        let last = self
            .last
            .and_then(|s| step(problems, "oncall.final".to_string(), s));
        let sum: u32 = steps
            .iter()
            .chain(last.iter())
            .map(|s| s.ring_timeout_secs)
            .sum();
        let budget = self.total_ring_budget_secs.unwrap_or(sum.min(300));
        if !(10..=600).contains(&budget) {
            p(
                problems,
                "oncall.total_ring_budget_secs must be between 10 and 600".to_string(),
            );
        }
        if problems.len() > before {
            return None;
        }
        Some(OncallSchedule {
            timezone: timezone?,
            total_ring_budget_secs: budget,
            rotations,
            overrides,
            steps,
            last,
        })
    }
}

impl OncallSchedule {
    /// The chain at `now`: each step resolved to who is on call then, in order, the final step
    /// last. A step whose number repeats the one before is kept (a person may cover two
    /// steps); validation guarantees every rotation exists.
    pub fn chain_at(&self, now: DateTime<Utc>) -> Vec<ChainStep> {
        let steps = self.steps.iter().map(|s| (s, false));
        let last = self.last.iter().map(|s| (s, true));
        steps
            .chain(last)
            .filter_map(|(s, is_final)| {
                let number = match &s.target {
                    StepTarget::Number(n) => Some(n.clone()),
                    StepTarget::Rotation(name) => self.on_call(name, now),
                }?;
                Some(ChainStep {
                    number,
                    ring_timeout_secs: s.ring_timeout_secs,
                    is_final,
                })
            })
            .collect()
    }

    /// Who covers rotation `name` at `now` (an override first).
    pub fn on_call(&self, name: &str, now: DateTime<Utc>) -> Option<E164> {
        let rotation = self.rotations.iter().find(|r| r.name == name)?;
        let local = now.with_timezone(&self.timezone);
        // The shift that started at the last handoff: before today's handoff, yesterday's.
        let mut shift_day = local.date_naive();
        if local.time() < rotation.handoff {
            shift_day = shift_day.checked_sub_days(Days::new(1))?;
        }
        if let Some(o) = self
            .overrides
            .iter()
            .find(|o| o.rotation == name && (o.from..=o.until).contains(&shift_day))
        {
            return Some(o.number.clone());
        }
        let days = (shift_day - rotation.start).num_days();
        let len = match rotation.period {
            Period::Weekly => 7,
            Period::Nightly => 1,
        };
        let turns = i64::try_from(rotation.members.len()).ok()?;
        let index = days.div_euclid(len).rem_euclid(turns);
        rotation.members.get(usize::try_from(index).ok()?).cloned()
    }

    /// `now` as a local time in the clinic's zone (for logs and tests).
    pub fn local(&self, now: DateTime<Utc>) -> DateTime<Tz> {
        self.timezone.from_utc_datetime(&now.naive_utc())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(toml_text: &str) -> Result<OncallSchedule, Vec<String>> {
        let raw: RawOncall = toml::from_str(toml_text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        raw.validate("tenant x", 20, &mut problems).ok_or(problems)
    }

    const BASE: &str = r#"
timezone = "America/Toronto"
[[rotations]]
name = "vets"
period = "weekly"
handoff = "08:00"
start = "2026-01-05"
members = ["+15557650001", "+15557650002"]
[[overrides]]
rotation = "vets"
from = "2026-12-24"
until = "2026-12-26"
number = "+15557650009"
[[steps]]
rotation = "vets"
[[steps]]
number = "+15557650003"
ring_timeout_secs = 15
[final]
number = "+15557650004"
"#;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekly_rotation_hands_off_in_local_time() {
        let s = schedule(BASE).unwrap();
        // Monday 2026-01-05 09:00 Toronto (14:00 UTC): members[0].
        assert_eq!(
            s.on_call("vets", at("2026-01-05T14:00:00Z"))
                .unwrap()
                .as_str(),
            "+15557650001"
        );
        // Monday 2026-01-12 07:59 Toronto: still the first week's member.
        assert_eq!(
            s.on_call("vets", at("2026-01-12T12:59:00Z"))
                .unwrap()
                .as_str(),
            "+15557650001"
        );
        // 08:00 Toronto: the next member.
        assert_eq!(
            s.on_call("vets", at("2026-01-12T13:00:00Z"))
                .unwrap()
                .as_str(),
            "+15557650002"
        );
        // The override covers 24–26 December.
        assert_eq!(
            s.on_call("vets", at("2026-12-25T03:00:00Z"))
                .unwrap()
                .as_str(),
            "+15557650009"
        );
        let chain = s.chain_at(at("2026-01-05T14:00:00Z"));
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[0].ring_timeout_secs, 20);
        assert_eq!(chain[1].ring_timeout_secs, 15);
        assert!(chain[2].is_final);
        assert_eq!(s.total_ring_budget_secs, 55);
    }

    #[test]
    fn nightly_rotation_moves_each_day() {
        let s = schedule(&BASE.replace("weekly", "nightly")).unwrap();
        assert_eq!(
            s.on_call("vets", at("2026-01-06T14:00:00Z"))
                .unwrap()
                .as_str(),
            "+15557650002"
        );
        assert_eq!(
            s.on_call("vets", at("2026-01-07T14:00:00Z"))
                .unwrap()
                .as_str(),
            "+15557650001"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = BASE
            .replace("America/Toronto", "Mars/Olympus")
            .replace("\"weekly\"", "\"monthly\"")
            .replace("until = \"2026-12-26\"", "until = \"2026-12-20\"")
            .replace("number = \"+15557650003\"", "number = \"12\"");
        let problems = schedule(&bad).unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("oncall.timezone \"Mars/Olympus\""), "{all}");
        assert!(
            all.contains("oncall.rotations[0].period \"monthly\""),
            "{all}"
        );
        assert!(all.contains("oncall.overrides[0].until is before"), "{all}");
        assert!(all.contains("oncall.steps[1].number \"12\""), "{all}");
        let both = BASE.replace(
            "rotation = \"vets\"\n[[steps]]",
            "rotation = \"vets\"\nnumber = \"+15557650001\"\n[[steps]]",
        );
        let all = schedule(&both).unwrap_err().join("\n");
        assert!(all.contains("oncall.steps[0] needs exactly one"), "{all}");
    }
}
