//! What on-call managers look at, per clinic and day (the clinic's day, in its time zone, not
//! UTC): transfer attempts by outcome, time to a human (median, p90), critical requests
//! acknowledged within 5 and 15 minutes, pages sent, median time to resolve. Folded here from
//! raw rows ([`OncallRows`]), so both engines share one definition; shown on the dashboard's
//! Stats page and exported for today in `/metrics`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use uuid::Uuid;

use crate::config::Config;
use crate::store::OncallRows;

/// One clinic's day.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClinicDay {
    pub tenant_id: String,
    /// The clinic's local date.
    pub day: NaiveDate,
    /// Transfer attempts (one per number rung) by typed outcome; `dialing` while one rings.
    pub attempts_by_outcome: BTreeMap<String, u32>,
    /// Transfers (calls that rang the team) that reached a human who accepted.
    pub transfers: u32,
    pub transfers_accepted: u32,
    /// Seconds from the first ring of a transfer to the human's acceptance.
    pub time_to_human_median: Option<f64>,
    pub time_to_human_p90: Option<f64>,
    /// Critical requests paged, and how many of them were acknowledged within 5 and 15 minutes.
    pub paged: u32,
    pub acknowledged_within_5m: u32,
    pub acknowledged_within_15m: u32,
    /// Pages (texts) sent, escalations included.
    pub pages_sent: u32,
    /// Callback requests, and the median seconds to staff resolving them (resolved ones).
    pub callbacks: u32,
    pub resolve_median: Option<f64>,
}

/// The time zone of a clinic's day: its on-call schedule's, else its business hours', else UTC.
pub fn clinic_zone(config: &Config, tenant_id: &str) -> Tz {
    config
        .tenant(tenant_id)
        .and_then(|t| {
            t.oncall
                .as_ref()
                .map(|o| o.timezone)
                .or_else(|| t.business_hours.as_ref().and_then(|b| b.tz()))
        })
        .unwrap_or(Tz::UTC)
}

/// The nearest-rank quantile `q` (0..=1) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Folds the rows into clinic days, newest first; `zone` gives each clinic's time zone.
pub fn fold(rows: &OncallRows, zone: &dyn Fn(&str) -> Tz) -> Vec<ClinicDay> {
    #[derive(Default)]
    struct Acc {
        day: ClinicDay,
        to_human: Vec<f64>,
        to_resolve: Vec<f64>,
    }
    let mut days: BTreeMap<(NaiveDate, String), Acc> = BTreeMap::new();
    fn entry<'a>(
        days: &'a mut BTreeMap<(NaiveDate, String), Acc>,
        zone: &dyn Fn(&str) -> Tz,
        tenant: &str,
        at: DateTime<Utc>,
    ) -> &'a mut Acc {
        let day = at.with_timezone(&zone(tenant)).date_naive();
        days.entry((day, tenant.to_string()))
            .or_insert_with(|| Acc {
                day: ClinicDay {
                    tenant_id: tenant.to_string(),
                    day,
                    ..ClinicDay::default()
                },
                ..Acc::default()
            })
    }
    // A transfer is a call's attempts; it belongs to the day of its first ring.
    // Per call: its clinic, its first ring, its first acceptance.
    type Transfer = (String, DateTime<Utc>, Option<DateTime<Utc>>);
    let mut transfers: HashMap<Uuid, Transfer> = HashMap::new();
    for a in &rows.attempts {
        let t = transfers
            .entry(a.call_id)
            .or_insert((a.tenant_id.clone(), a.started_at, None));
        t.1 = t.1.min(a.started_at);
        if let Some(accepted) = a.accepted_at {
            t.2 = Some(t.2.map_or(accepted, |x: DateTime<Utc>| x.min(accepted)));
        }
    }
    for a in &rows.attempts {
        let first = transfers[&a.call_id].1;
        let outcome = a.outcome.clone().unwrap_or_else(|| a.status.clone());
        *entry(&mut days, zone, &a.tenant_id, first)
            .day
            .attempts_by_outcome
            .entry(outcome)
            .or_default() += 1;
    }
    for (tenant, first, accepted) in transfers.values() {
        let acc = entry(&mut days, zone, tenant, *first);
        acc.day.transfers += 1;
        if let Some(accepted) = accepted {
            acc.day.transfers_accepted += 1;
            acc.to_human
                .push((*accepted - *first).num_milliseconds() as f64 / 1000.0);
        }
    }
    for p in &rows.pages {
        let acc = entry(&mut days, zone, &p.tenant_id, p.created_at);
        acc.day.paged += 1;
        acc.day.pages_sent += u32::try_from(p.pages_sent).unwrap_or(0);
        if let Some(ack) = p.acknowledged_at {
            let waited = ack - p.created_at;
            if waited <= chrono::Duration::minutes(5) {
                acc.day.acknowledged_within_5m += 1;
            }
            if waited <= chrono::Duration::minutes(15) {
                acc.day.acknowledged_within_15m += 1;
            }
        }
    }
    for c in &rows.callbacks {
        let acc = entry(&mut days, zone, &c.tenant_id, c.created_at);
        acc.day.callbacks += 1;
        if let Some(done) = c.resolved_at {
            acc.to_resolve
                .push((done - c.created_at).num_milliseconds() as f64 / 1000.0);
        }
    }
    days.into_values()
        .rev()
        .map(|mut acc| {
            acc.to_human.sort_by(f64::total_cmp);
            acc.to_resolve.sort_by(f64::total_cmp);
            acc.day.time_to_human_median = quantile(&acc.to_human, 0.5);
            acc.day.time_to_human_p90 = quantile(&acc.to_human, 0.9);
            acc.day.resolve_median = quantile(&acc.to_resolve, 0.5);
            acc.day
        })
        .collect()
}

/// Today's figures of each clinic into `/metrics` (gauges, reset at the clinic's midnight).
pub fn export_today(config: &Config, rows: &OncallRows, now: DateTime<Utc>) {
    let zone = |t: &str| clinic_zone(config, t);
    let days = fold(rows, &zone);
    for tenant in &config.tenants {
        let today = now.with_timezone(&zone(&tenant.id)).date_naive();
        let d = days
            .iter()
            .find(|d| d.tenant_id == tenant.id && d.day == today)
            .cloned()
            .unwrap_or_default();
        let t = tenant.id.clone();
        for outcome in OUTCOMES {
            let n = d.attempts_by_outcome.get(*outcome).copied().unwrap_or(0);
            metrics::gauge!("lifeline_clinic_day_transfer_attempts", "tenant" => t.clone(), "outcome" => *outcome)
                .set(f64::from(n));
        }
        metrics::gauge!("lifeline_clinic_day_transfers", "tenant" => t.clone())
            .set(f64::from(d.transfers));
        metrics::gauge!("lifeline_clinic_day_transfers_accepted", "tenant" => t.clone())
            .set(f64::from(d.transfers_accepted));
        for (q, v) in [
            ("0.5", d.time_to_human_median),
            ("0.9", d.time_to_human_p90),
        ] {
            metrics::gauge!("lifeline_clinic_day_time_to_human_seconds", "tenant" => t.clone(), "quantile" => q)
                .set(v.unwrap_or(f64::NAN));
        }
        metrics::gauge!("lifeline_clinic_day_paged", "tenant" => t.clone()).set(f64::from(d.paged));
        for (within, n) in [
            ("5m", d.acknowledged_within_5m),
            ("15m", d.acknowledged_within_15m),
        ] {
            metrics::gauge!("lifeline_clinic_day_acknowledged", "tenant" => t.clone(), "within" => within)
                .set(f64::from(n));
        }
        metrics::gauge!("lifeline_clinic_day_pages_sent", "tenant" => t.clone())
            .set(f64::from(d.pages_sent));
        metrics::gauge!("lifeline_clinic_day_resolve_median_seconds", "tenant" => t)
            .set(d.resolve_median.unwrap_or(f64::NAN));
    }
}

/// The typed outcomes of a transfer attempt (migration 0008), and `dialing`.
pub const OUTCOMES: &[&str] = &[
    "accepted",
    "declined",
    "machine",
    "no_answer",
    "busy",
    "failed",
    "caller_hung_up",
    "cancelled",
    "dialing",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{OncallAttempt, OncallCallback, OncallPage};

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_clinics_day_and_the_quantiles() {
        let call = Uuid::now_v7();
        // 03:30 UTC on the 2nd is still the 1st in Toronto (UTC-5).
        let rows = OncallRows {
            attempts: vec![
                OncallAttempt {
                    tenant_id: "r".into(),
                    call_id: call,
                    started_at: at("2026-12-02T03:30:00Z"),
                    status: "failed".into(),
                    outcome: Some("no_answer".into()),
                    accepted_at: None,
                },
                OncallAttempt {
                    tenant_id: "r".into(),
                    call_id: call,
                    started_at: at("2026-12-02T03:30:25Z"),
                    status: "succeeded".into(),
                    outcome: Some("accepted".into()),
                    accepted_at: Some(at("2026-12-02T03:30:40Z")),
                },
            ],
            pages: vec![OncallPage {
                tenant_id: "r".into(),
                created_at: at("2026-12-02T03:31:00Z"),
                acknowledged_at: Some(at("2026-12-02T03:41:00Z")),
                pages_sent: 2,
            }],
            callbacks: vec![OncallCallback {
                tenant_id: "r".into(),
                created_at: at("2026-12-02T03:31:00Z"),
                resolved_at: Some(at("2026-12-02T04:01:00Z")),
            }],
        };
        let toronto: Tz = "America/Toronto".parse().unwrap();
        let days = fold(&rows, &|_| toronto);
        assert_eq!(days.len(), 1);
        let d = &days[0];
        assert_eq!(d.day, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
        assert_eq!(d.attempts_by_outcome["no_answer"], 1);
        assert_eq!(d.attempts_by_outcome["accepted"], 1);
        assert_eq!((d.transfers, d.transfers_accepted), (1, 1));
        assert_eq!(d.time_to_human_median, Some(40.0));
        assert_eq!(d.time_to_human_p90, Some(40.0));
        assert_eq!((d.paged, d.pages_sent), (1, 2));
        assert_eq!(
            (d.acknowledged_within_5m, d.acknowledged_within_15m),
            (0, 1)
        );
        assert_eq!(d.resolve_median, Some(1800.0));
        assert_eq!(
            quantile(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.9),
            Some(9.0)
        );
    }
}
