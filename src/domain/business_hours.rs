//! Clinic opening hours, evaluated in the clinic's own time zone.
//!
//! The configuration is the original system's `business_hours_config` JSONB, so existing rows
//! deserialize unchanged:
//!
//! ```json
//! {"timezone": "America/Toronto",
//!  "hours": {"monday": {"open": "09:00", "close": "17:00"},
//!            "saturday": [{"open": "09:00", "close": "12:00"}, {"open": "18:00", "close": "08:00"}]},
//!  "special_closures": ["2026-12-25"]}
//! ```
//!
//! The original got this wrong in ways this module must not (`original-system.md` §5.2): it
//! checked closures against the *UTC* date, took `day_of_week` from the *server's* zone, had no
//! overnight ranges, could see midnight as hour "24" (so 00:30 was "evening"), failed *open* on
//! any error, and inverted open/closed in one path while hard-coding "closed" in the other.
//!
//! Semantics, where the original had none:
//! - Times are local wall-clock times in `timezone`. A range `[open, close)` with
//!   `close <= open` is overnight: it runs from `open` on its day to `close` on the next day
//!   (`"08:00"`–`"08:00"` is 24 hours). `"24:00"` is allowed as a close (end of the day).
//! - A weekday that is absent, `null` or `[]` is closed all day.
//! - On DST days wall-clock times are compared as they are. On a spring-forward night a range
//!   whose opening time is skipped opens when the clock jumps past it (02:50–04:00 opens at
//!   03:00), and one entirely inside the skipped hour never opens; overnight ranges are an hour
//!   shorter or longer in real time. On a fall-back night the repeated hour is inside a range
//!   both times.
//! - A special closure date closes the clinic for that whole local calendar day, **including
//!   the part of the previous day's overnight range that spills into it**, and it cancels the
//!   ranges that *start* on that day, **including their spill into the next morning**. Both
//!   err on the side of "closed": closed means the caller gets the after-hours path (triage,
//!   on-call transfer, a callback request), which loses nobody; a wrong "open" could.
//! - A configuration that cannot be evaluated (unknown time zone) is reported closed
//!   ([`OpenStatus::Misconfigured`]) for the same reason. [`BusinessHours::validate`] at load
//!   time keeps such configurations out.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Timelike, Utc, Weekday};
use chrono_tz::Tz;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// A clinic's opening hours (the original `business_hours_config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BusinessHours {
    /// IANA zone name, e.g. `America/Toronto`. Everything is evaluated in it.
    #[serde(default)]
    pub timezone: String,
    /// Opening ranges per weekday.
    #[serde(default)]
    pub hours: WeeklyHours,
    /// Local dates on which the clinic is closed all day (holidays).
    #[serde(default)]
    pub special_closures: Vec<NaiveDate>,
}

/// Opening ranges for each weekday; an absent day is closed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WeeklyHours {
    /// Monday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monday: Option<DayHours>,
    /// Tuesday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuesday: Option<DayHours>,
    /// Wednesday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wednesday: Option<DayHours>,
    /// Thursday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thursday: Option<DayHours>,
    /// Friday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friday: Option<DayHours>,
    /// Saturday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saturday: Option<DayHours>,
    /// Sunday's ranges; `None` is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunday: Option<DayHours>,
    /// Keys that are not weekday names ("Monday", "mon"…). Kept so that
    /// [`BusinessHours::validate`] reports them: ignored, a typo would silently close that day.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// One day's hours: the original's single `{open, close}` object, or a list of ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DayHours {
    /// `{"open": "09:00", "close": "17:00"}`, as the original stored it.
    One(TimeRange),
    /// Several ranges (a lunch break, an overnight shift); `[]` is closed.
    Many(Vec<TimeRange>),
}

// By hand rather than `untagged`: a derived struct also accepts a sequence, so `[]` (closed)
// would have become one range with empty times.
impl<'de> Deserialize<'de> for DayHours {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let range = |v: Value| match v {
            Value::Object(_) => TimeRange::deserialize(v).map_err(D::Error::custom),
            _ => Err(D::Error::custom("a range must be an object {open, close}")),
        };
        match Value::deserialize(deserializer)? {
            Value::Array(items) => items
                .into_iter()
                .map(range)
                .collect::<Result<_, _>>()
                .map(DayHours::Many),
            v @ Value::Object(_) => range(v).map(DayHours::One),
            _ => Err(D::Error::custom(
                "a day must be {open, close}, a list of them, or null",
            )),
        }
    }
}

impl DayHours {
    /// The day's ranges.
    pub(crate) fn ranges(&self) -> &[TimeRange] {
        match self {
            DayHours::One(range) => std::slice::from_ref(range),
            DayHours::Many(ranges) => ranges,
        }
    }
}

/// One opening range, local wall-clock `"HH:MM"`; `close <= open` means it ends the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRange {
    /// `"00:00"`–`"23:59"`. Missing is reported by [`BusinessHours::validate`], not by serde, so
    /// that every problem is listed at once.
    #[serde(default)]
    pub open: String,
    /// `"00:00"`–`"24:00"`.
    #[serde(default)]
    pub close: String,
}

/// Whether the clinic is open at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpenStatus {
    /// Inside an opening range (possibly one that started the previous local day).
    Open,
    /// Outside every opening range.
    Closed,
    /// The local date, or the day an overnight range started, is a special closure.
    SpecialClosure,
    /// The configuration cannot be evaluated (unknown time zone); treated as closed.
    Misconfigured,
}

impl OpenStatus {
    /// Only [`OpenStatus::Open`] is open: every doubt is "closed" (see the module docs).
    pub(crate) fn is_open(self) -> bool {
        self == OpenStatus::Open
    }
}

/// The date and opening strings the original put in the Ultravox agent's `templateContext`
/// (prompt variables `{{current_date}}`…). Every value is a string, as Ultravox requires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TemplateContext {
    /// `"Thursday, January 1, 2026"`
    pub current_date: String,
    /// `"9:05 AM"`
    pub current_time: String,
    /// `"Thursday, January 1, 2026 at 9:05 AM"`
    pub current_datetime: String,
    /// `"Thursday"`
    pub day_of_week: String,
    /// `"morning"` (before 12:00), `"afternoon"` (before 17:00) or `"evening"`.
    pub time_of_day: String,
    /// `"true"` / `"false"`
    pub clinic_open: String,
    /// The opposite of `clinic_open` (the original inverted them in one path).
    pub clinic_closed: String,
    /// `"yes"` / `"no"`
    pub is_the_clinic_open: String,
}

impl TemplateContext {
    /// `(prompt variable, value)` pairs, for merging into a larger template context.
    pub(crate) fn entries(&self) -> [(&'static str, &str); 8] {
        [
            ("current_date", &self.current_date),
            ("current_time", &self.current_time),
            ("current_datetime", &self.current_datetime),
            ("day_of_week", &self.day_of_week),
            ("time_of_day", &self.time_of_day),
            ("clinic_open", &self.clinic_open),
            ("clinic_closed", &self.clinic_closed),
            ("is_the_clinic_open", &self.is_the_clinic_open),
        ]
    }
}

const MINUTES_PER_DAY: u32 = 24 * 60;

/// Minutes after local midnight of `"H:MM"` / `"HH:MM"`: `00:00`–`23:59`, and `24:00` when
/// `allow_end_of_day` (a close).
fn parse_clock(text: &str, allow_end_of_day: bool) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || h.len() > 2 || !digits(m) || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    let minutes = h * 60 + m;
    let max = if allow_end_of_day {
        MINUTES_PER_DAY
    } else {
        MINUTES_PER_DAY - 1
    };
    (m < 60 && minutes <= max).then_some(minutes)
}

/// A range in minutes after local midnight.
#[derive(Debug, Clone, Copy)]
struct Span {
    open: u32,
    close: u32,
}

impl Span {
    fn overnight(self) -> bool {
        self.close <= self.open
    }
}

impl TimeRange {
    /// `None` when either end is invalid; such a range never opens the clinic.
    fn span(&self) -> Option<Span> {
        Some(Span {
            open: parse_clock(&self.open, false)?,
            close: parse_clock(&self.close, true)?,
        })
    }
}

impl WeeklyHours {
    /// The ranges configured for a weekday (empty when closed all day).
    pub(crate) fn day(&self, weekday: Weekday) -> &[TimeRange] {
        let day = match weekday {
            Weekday::Mon => &self.monday,
            Weekday::Tue => &self.tuesday,
            Weekday::Wed => &self.wednesday,
            Weekday::Thu => &self.thursday,
            Weekday::Fri => &self.friday,
            Weekday::Sat => &self.saturday,
            Weekday::Sun => &self.sunday,
        };
        day.as_ref().map_or(&[], DayHours::ranges)
    }

    fn spans(&self, weekday: Weekday) -> impl Iterator<Item = Span> + '_ {
        self.day(weekday).iter().filter_map(TimeRange::span)
    }
}

const WEEKDAYS: [(Weekday, &str); 7] = [
    (Weekday::Mon, "monday"),
    (Weekday::Tue, "tuesday"),
    (Weekday::Wed, "wednesday"),
    (Weekday::Thu, "thursday"),
    (Weekday::Fri, "friday"),
    (Weekday::Sat, "saturday"),
    (Weekday::Sun, "sunday"),
];

impl BusinessHours {
    /// Every problem in the configuration, each as one line for the start-up error.
    pub(crate) fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.timezone.is_empty() {
            problems.push("timezone is required (an IANA name such as America/Toronto)".into());
        } else if self.tz().is_none() {
            problems.push(format!(
                "timezone {:?} is not an IANA time zone name (such as America/Toronto)",
                self.timezone
            ));
        }
        for (weekday, name) in WEEKDAYS {
            for (i, range) in self.hours.day(weekday).iter().enumerate() {
                if parse_clock(&range.open, false).is_none() {
                    problems.push(format!(
                        "hours.{name}[{i}].open {:?} is not a time HH:MM from 00:00 to 23:59",
                        range.open
                    ));
                }
                if parse_clock(&range.close, true).is_none() {
                    problems.push(format!(
                        "hours.{name}[{i}].close {:?} is not a time HH:MM from 00:00 to 24:00",
                        range.close
                    ));
                }
            }
        }
        for key in self.hours.unknown.keys() {
            problems.push(format!(
                "hours.{key} is not a day; use lowercase monday … sunday"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The clinic's time zone, if `timezone` names one.
    pub(crate) fn tz(&self) -> Option<Tz> {
        self.timezone.parse().ok()
    }

    /// Whether the clinic is open at `now`, judged on the clinic's local date and wall clock.
    pub(crate) fn status_at(&self, now: DateTime<Utc>) -> OpenStatus {
        let Some(tz) = self.tz() else {
            return OpenStatus::Misconfigured;
        };
        let local = now.with_timezone(&tz);
        let today = local.date_naive();
        // Seconds, not minutes, so that 16:59:59 is before a 17:00 close.
        let t = local.num_seconds_from_midnight();
        let secs = |minutes: u32| minutes * 60;
        let closed_on = |date: NaiveDate| self.special_closures.contains(&date);

        if closed_on(today) {
            return OpenStatus::SpecialClosure;
        }
        // Ranges that start today; an overnight one runs to midnight today.
        let open_today = self
            .hours
            .spans(today.weekday())
            .any(|s| t >= secs(s.open) && (s.overnight() || t < secs(s.close)));
        if open_today {
            return OpenStatus::Open;
        }
        // The tail of yesterday's overnight ranges (yesterday by the local calendar).
        let yesterday = today - TimeDelta::days(1);
        let in_yesterdays_tail = self
            .hours
            .spans(yesterday.weekday())
            .any(|s| s.overnight() && t < secs(s.close));
        match (in_yesterdays_tail, closed_on(yesterday)) {
            (true, false) => OpenStatus::Open,
            (true, true) => OpenStatus::SpecialClosure,
            (false, _) => OpenStatus::Closed,
        }
    }

    /// The prompt variables the original computed, in the clinic's time zone (UTC if the zone
    /// is unknown, so a misconfigured clinic still gets a working prompt rather than a failed
    /// call — and it is then reported closed).
    pub(crate) fn template_context(&self, now: DateTime<Utc>) -> TemplateContext {
        let status = self.status_at(now);
        let local = now.with_timezone(&self.tz().unwrap_or(Tz::UTC));
        let date = local.format("%A, %B %-d, %Y").to_string();
        // Always a plain space before AM/PM: some ICU versions (CLDR 42) write U+202F there,
        // which trips up text-to-speech and prompt matching.
        let time = local.format("%-I:%M %p").to_string();
        let time_of_day = match local.hour() {
            0..=11 => "morning",
            12..=16 => "afternoon",
            _ => "evening",
        };
        let open = status.is_open();
        TemplateContext {
            current_datetime: format!("{date} at {time}"),
            current_date: date,
            current_time: time,
            day_of_week: local.format("%A").to_string(),
            time_of_day: time_of_day.into(),
            clinic_open: open.to_string(),
            clinic_closed: (!open).to_string(),
            is_the_clinic_open: if open { "yes" } else { "no" }.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    fn config(value: Value) -> BusinessHours {
        let hours: BusinessHours = serde_json::from_value(value).unwrap();
        assert_eq!(hours.validate(), Ok(()), "{hours:?}");
        hours
    }

    /// Toronto, weekdays 09:00–17:00, Saturday 09:00–12:00 and an overnight 18:00–08:00,
    /// Friday night 22:00–02:00, Sunday closed, Christmas Day and 2026-02-14 (a Saturday)
    /// closed.
    fn toronto() -> BusinessHours {
        config(json!({
            "timezone": "America/Toronto",
            "hours": {
                "monday": {"open": "09:00", "close": "17:00"},
                "tuesday": {"open": "09:00", "close": "17:00"},
                "wednesday": {"open": "09:00", "close": "17:00"},
                "thursday": {"open": "09:00", "close": "17:00"},
                "friday": [{"open": "09:00", "close": "17:00"}, {"open": "22:00", "close": "02:00"}],
                "saturday": [{"open": "09:00", "close": "12:00"}, {"open": "18:00", "close": "08:00"}],
            },
            "special_closures": ["2026-12-25", "2026-02-14"],
        }))
    }

    use OpenStatus::{Closed, Misconfigured, Open, SpecialClosure};

    #[test]
    fn status_in_the_clinics_zone() {
        let hours = toronto();
        // January: Toronto is UTC−5.
        #[rustfmt::skip]
        let cases = [
            ("2026-01-05T14:00:00Z", Open, "Mon 09:00 local: opening minute (14:00 UTC is not 09:00 UTC)"),
            ("2026-01-05T13:59:59Z", Closed, "Mon 08:59:59 local"),
            ("2026-01-05T21:59:59Z", Open, "Mon 16:59:59 local"),
            ("2026-01-05T22:00:00Z", Closed, "Mon 17:00 local: close is exclusive"),
            // Monday evening local is already Tuesday in UTC: the local weekday decides.
            ("2026-01-06T03:00:00Z", Closed, "Mon 22:00 local, Tue in UTC"),
            ("2026-01-09T14:00:00Z", Open, "Fri 09:00 local"),
            ("2026-01-10T03:30:00Z", Open, "Fri 22:30 local, overnight range"),
            ("2026-01-10T05:00:00Z", Open, "Sat 00:00 local, Friday's range spills over"),
            ("2026-01-10T06:59:00Z", Open, "Sat 01:59 local"),
            ("2026-01-10T07:00:00Z", Closed, "Sat 02:00 local, Friday's range closed"),
            ("2026-01-10T16:00:00Z", Open, "Sat 11:00 local"),
            ("2026-01-10T18:00:00Z", Closed, "Sat 13:00 local"),
            ("2026-01-11T04:59:00Z", Open, "Sat 23:59 local"),
            ("2026-01-11T12:59:00Z", Open, "Sun 07:59 local, Saturday night's tail"),
            ("2026-01-11T13:00:00Z", Closed, "Sun 08:00 local"),
            ("2026-01-11T20:00:00Z", Closed, "Sun 15:00 local, no hours on Sunday"),
        ];
        for (instant, want, why) in cases {
            assert_eq!(hours.status_at(at(instant)), want, "{instant}: {why}");
        }
    }

    #[test]
    fn special_closures_follow_the_local_date() {
        let hours = toronto();
        #[rustfmt::skip]
        let cases = [
            // 2026-12-25 is a Friday. 14:00 UTC on Dec 25 is 09:00 local.
            ("2026-12-25T14:00:00Z", SpecialClosure, "Christmas 09:00 local"),
            // 02:00 UTC on Dec 25 is still Dec 24 (Thursday) 21:00 local: not a closure.
            ("2026-12-24T21:00:00Z", Open, "Dec 24 16:00 local"),
            ("2026-12-25T02:00:00Z", Closed, "Dec 24 21:00 local: after hours, not the closure"),
            // 03:00 UTC on Dec 26 is Dec 25 22:00 local: the closure day, Friday-night range cancelled.
            ("2026-12-26T03:30:00Z", SpecialClosure, "Dec 25 22:30 local"),
            // Dec 26 00:30 local: the tail of a range that started on the closure day is cancelled too.
            ("2026-12-26T05:30:00Z", SpecialClosure, "Dec 26 00:30 local, spill of Dec 25's range"),
            ("2026-12-26T07:00:00Z", Closed, "Dec 26 02:00 local"),
            ("2026-12-26T14:00:00Z", Open, "Dec 26 (Saturday) 09:00 local"),
            // 2026-02-14 is a Saturday: Friday 22:00–02:00 spills into it, and is cut at midnight.
            ("2026-02-14T04:30:00Z", Open, "Fri Feb 13 23:30 local"),
            ("2026-02-14T05:30:00Z", SpecialClosure, "Sat Feb 14 00:30 local, Friday's spill"),
            ("2026-02-14T16:00:00Z", SpecialClosure, "Sat Feb 14 11:00 local"),
            ("2026-02-15T06:00:00Z", SpecialClosure, "Sun Feb 15 01:00 local, Saturday night cancelled"),
            ("2026-02-21T16:00:00Z", Open, "the next Saturday 11:00 local"),
        ];
        for (instant, want, why) in cases {
            assert_eq!(hours.status_at(at(instant)), want, "{instant}: {why}");
        }
    }

    #[test]
    fn dst_days_in_toronto() {
        // A Saturday-night range across both transitions, and Sunday day hours whose UTC
        // instants move by an hour.
        let night = config(json!({
            "timezone": "America/Toronto",
            "hours": {
                "saturday": {"open": "22:00", "close": "06:00"},
                "sunday": {"open": "09:00", "close": "17:00"},
            },
        }));
        #[rustfmt::skip]
        let cases = [
            // Spring forward, Sunday 2026-03-08: 02:00 EST → 03:00 EDT (UTC−5 → UTC−4).
            ("2026-03-08T06:59:59Z", Open, "01:59:59 EST, Saturday night's tail"),
            ("2026-03-08T07:00:00Z", Open, "03:00 EDT, still before the 06:00 close"),
            ("2026-03-08T09:59:59Z", Open, "05:59:59 EDT"),
            ("2026-03-08T10:00:00Z", Closed, "06:00 EDT: the night lasted 7 real hours"),
            ("2026-03-08T12:59:59Z", Closed, "08:59:59 EDT"),
            ("2026-03-08T13:00:00Z", Open, "09:00 EDT"),
            ("2026-03-08T20:59:59Z", Open, "16:59:59 EDT"),
            ("2026-03-08T21:00:00Z", Closed, "17:00 EDT (16:00 if read as EST)"),
            // Fall back, Sunday 2026-11-01: 02:00 EDT → 01:00 EST (UTC−4 → UTC−5).
            ("2026-11-01T05:59:00Z", Open, "01:59 EDT"),
            ("2026-11-01T06:30:00Z", Open, "01:30 EST, the repeated hour"),
            ("2026-11-01T10:59:59Z", Open, "05:59:59 EST"),
            ("2026-11-01T11:00:00Z", Closed, "06:00 EST: the night lasted 9 real hours"),
            ("2026-11-01T13:30:00Z", Closed, "08:30 EST (09:30 if read as EDT)"),
            ("2026-11-01T14:00:00Z", Open, "09:00 EST"),
            ("2026-11-01T21:59:59Z", Open, "16:59:59 EST"),
            ("2026-11-01T22:00:00Z", Closed, "17:00 EST (18:00 if read as EDT)"),
        ];
        for (instant, want, why) in cases {
            assert_eq!(night.status_at(at(instant)), want, "{instant}: {why}");
        }

        // Sunday ranges inside the skipped and the repeated hour.
        let odd = config(json!({
            "timezone": "America/Toronto",
            "hours": {"sunday": [
                {"open": "01:15", "close": "01:45"},
                {"open": "02:30", "close": "02:45"},
                {"open": "02:50", "close": "04:00"},
            ]},
        }));
        #[rustfmt::skip]
        let cases = [
            // 2026-03-08: 02:30–02:45 never happens; 02:50–04:00 opens when the clock jumps.
            ("2026-03-08T06:20:00Z", Open, "01:20 EST"),
            ("2026-03-08T06:50:00Z", Closed, "01:50 EST"),
            ("2026-03-08T07:00:00Z", Open, "03:00 EDT, inside 02:50–04:00 from the jump"),
            ("2026-03-08T07:59:59Z", Open, "03:59:59 EDT"),
            ("2026-03-08T08:00:00Z", Closed, "04:00 EDT"),
            // On an ordinary Sunday the short range does open.
            ("2026-03-15T06:35:00Z", Open, "02:35 EDT"),
            ("2026-03-15T06:47:00Z", Closed, "02:47 EDT"),
            // 2026-11-01: 01:00–02:00 happens twice, and 01:15–01:45 is open both times.
            ("2026-11-01T05:20:00Z", Open, "01:20 EDT, first pass"),
            ("2026-11-01T05:50:00Z", Closed, "01:50 EDT"),
            ("2026-11-01T06:20:00Z", Open, "01:20 EST, second pass"),
            ("2026-11-01T06:50:00Z", Closed, "01:50 EST"),
        ];
        for (instant, want, why) in cases {
            assert_eq!(odd.status_at(at(instant)), want, "{instant}: {why}");
        }
    }

    #[test]
    fn ranges_at_the_edges_of_the_day() {
        let hours = config(json!({
            "timezone": "UTC",
            "hours": {
                "monday": {"open": "00:00", "close": "24:00"},
                "tuesday": {"open": "08:00", "close": "08:00"},
                "wednesday": {"open": "23:00", "close": "00:00"},
                "thursday": [],
                "friday": null,
                "saturday": {"open": "0:00", "close": "0:30"},
            },
        }));
        // 2026-01-05 is a Monday.
        #[rustfmt::skip]
        let cases = [
            ("2026-01-05T00:00:00Z", Open, "Mon 00:00, 00:00–24:00"),
            ("2026-01-05T23:59:59Z", Open, "Mon 23:59:59"),
            ("2026-01-06T07:59:59Z", Closed, "Tue 07:59:59: Monday's range does not spill"),
            ("2026-01-06T08:00:00Z", Open, "Tue 08:00, 24-hour overnight range"),
            ("2026-01-07T07:59:59Z", Open, "Wed 07:59:59, Tuesday's range spills"),
            ("2026-01-07T08:00:00Z", Closed, "Wed 08:00"),
            ("2026-01-07T23:30:00Z", Open, "Wed 23:30, 23:00–00:00 ends at midnight"),
            ("2026-01-08T00:00:00Z", Closed, "Thu 00:00"),
            ("2026-01-08T12:00:00Z", Closed, "Thu, empty list"),
            ("2026-01-09T12:00:00Z", Closed, "Fri, null"),
            ("2026-01-10T00:29:59Z", Open, "Sat 00:29:59, H:MM accepted"),
            ("2026-01-10T00:30:00Z", Closed, "Sat 00:30"),
            ("2026-01-11T12:00:00Z", Closed, "Sun, absent"),
        ];
        for (instant, want, why) in cases {
            assert_eq!(hours.status_at(at(instant)), want, "{instant}: {why}");
        }
    }

    #[test]
    fn original_configs_deserialize() {
        // The original's shape: one object per day, closures as strings.
        let original = r#"{"timezone":"America/Toronto",
            "hours":{"monday":{"open":"09:00","close":"17:00"},"sunday":null},
            "special_closures":["2026-12-25"]}"#;
        let hours: BusinessHours = serde_json::from_str(original).unwrap();
        assert_eq!(hours.validate(), Ok(()));
        assert_eq!(
            hours.hours.monday,
            Some(DayHours::One(TimeRange {
                open: "09:00".into(),
                close: "17:00".into()
            }))
        );
        assert_eq!(hours.hours.day(Weekday::Sun), &[]);
        assert_eq!(
            hours.special_closures,
            vec![NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()]
        );
        // The same from TOML (the configuration file).
        let toml_hours: BusinessHours = toml::from_str(
            r#"
            timezone = "America/Toronto"
            special_closures = ["2026-12-25"]
            [hours]
            monday = { open = "09:00", close = "17:00" }
            "#,
        )
        .unwrap();
        assert_eq!(toml_hours, hours);
        // Shapes that are neither a range nor a list of ranges are deserialization errors.
        for bad in [
            json!({"timezone": "UTC", "hours": {"monday": "09:00-17:00"}}),
            json!({"timezone": "UTC", "hours": {"monday": [["09:00", "17:00"]]}}),
            json!({"timezone": "UTC", "hours": {"monday": {"open": 9, "close": 17}}}),
        ] {
            assert!(
                serde_json::from_value::<BusinessHours>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        // A bad date is a deserialization error.
        assert!(
            serde_json::from_str::<BusinessHours>(
                r#"{"timezone":"UTC","special_closures":["2026-13-01"]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn validate_lists_every_problem() {
        let hours: BusinessHours = serde_json::from_value(json!({
            "timezone": "America/Torronto",
            "hours": {
                "monday": {"open": "9am", "close": "17:00"},
                "tuesday": [{"open": "09:00", "close": "24:01"}, {"open": "24:00", "close": "25:00"}],
                "wednesday": {"close": "17:00"},
                "thursday": {"open": "09:60", "close": "17:5"},
                "Friday": {"open": "09:00", "close": "17:00"},
            },
        }))
        .unwrap();
        assert_eq!(
            hours.validate(),
            Err(vec![
                r#"timezone "America/Torronto" is not an IANA time zone name (such as America/Toronto)"#.to_owned(),
                r#"hours.monday[0].open "9am" is not a time HH:MM from 00:00 to 23:59"#.into(),
                r#"hours.tuesday[0].close "24:01" is not a time HH:MM from 00:00 to 24:00"#.into(),
                r#"hours.tuesday[1].open "24:00" is not a time HH:MM from 00:00 to 23:59"#.into(),
                r#"hours.tuesday[1].close "25:00" is not a time HH:MM from 00:00 to 24:00"#.into(),
                r#"hours.wednesday[0].open "" is not a time HH:MM from 00:00 to 23:59"#.into(),
                r#"hours.thursday[0].open "09:60" is not a time HH:MM from 00:00 to 23:59"#.into(),
                r#"hours.thursday[0].close "17:5" is not a time HH:MM from 00:00 to 24:00"#.into(),
                "hours.Friday is not a day; use lowercase monday … sunday".into(),
            ])
        );
        let missing: BusinessHours = serde_json::from_value(json!({})).unwrap();
        assert_eq!(
            missing.validate(),
            Err(vec![
                "timezone is required (an IANA name such as America/Toronto)".to_owned()
            ])
        );
        // Invalid ranges never open the clinic; valid ones on the same day still count.
        let partly = BusinessHours {
            timezone: "UTC".into(),
            ..hours
        };
        assert_eq!(
            partly.status_at(at("2026-01-05T10:00:00Z")),
            Closed,
            "Mon, 9am is invalid"
        );
        assert_eq!(
            partly.status_at(at("2026-01-06T10:00:00Z")),
            Closed,
            "Tue, close 24:01 invalid"
        );
        assert_eq!(
            partly.status_at(at("2026-01-09T10:00:00Z")),
            Closed,
            "Friday key ignored"
        );
    }

    #[test]
    fn an_unknown_zone_is_closed_not_open() {
        let hours: BusinessHours = serde_json::from_value(json!({
            "timezone": "Mars/Olympus_Mons",
            "hours": {"monday": {"open": "00:00", "close": "24:00"}},
        }))
        .unwrap();
        assert!(hours.validate().is_err());
        let monday = at("2026-01-05T12:00:00Z");
        assert_eq!(hours.status_at(monday), Misconfigured);
        assert!(!Misconfigured.is_open() && !SpecialClosure.is_open() && !Closed.is_open());
        let ctx = hours.template_context(monday);
        assert_eq!(ctx.clinic_open, "false");
        assert_eq!(ctx.is_the_clinic_open, "no");
        assert_eq!(ctx.current_time, "12:00 PM", "falls back to UTC");
    }

    #[test]
    fn template_context_in_the_clinics_zone() {
        let hours = toronto();
        #[rustfmt::skip]
        let cases = [
            // instant, date, time, day, time_of_day, open
            ("2026-01-01T14:05:00Z", "Thursday, January 1, 2026", "9:05 AM", "Thursday", "morning", true),
            // Still Thursday in Toronto although Friday in UTC (the original used the server's zone).
            ("2026-01-02T03:30:00Z", "Thursday, January 1, 2026", "10:30 PM", "Thursday", "evening", false),
            // Midnight is morning (the original's Intl could say hour "24", i.e. evening).
            ("2026-01-06T05:00:00Z", "Tuesday, January 6, 2026", "12:00 AM", "Tuesday", "morning", false),
            ("2026-01-06T16:59:00Z", "Tuesday, January 6, 2026", "11:59 AM", "Tuesday", "morning", true),
            ("2026-01-06T17:00:00Z", "Tuesday, January 6, 2026", "12:00 PM", "Tuesday", "afternoon", true),
            ("2026-01-06T21:59:00Z", "Tuesday, January 6, 2026", "4:59 PM", "Tuesday", "afternoon", true),
            ("2026-01-06T22:00:00Z", "Tuesday, January 6, 2026", "5:00 PM", "Tuesday", "evening", false),
            // Summer time: UTC−4.
            ("2026-07-15T13:00:00Z", "Wednesday, July 15, 2026", "9:00 AM", "Wednesday", "morning", true),
            ("2026-12-25T15:00:00Z", "Friday, December 25, 2026", "10:00 AM", "Friday", "morning", false),
        ];
        for (instant, date, time, day, part, open) in cases {
            let ctx = hours.template_context(at(instant));
            let want = TemplateContext {
                current_date: date.into(),
                current_time: time.into(),
                current_datetime: format!("{date} at {time}"),
                day_of_week: day.into(),
                time_of_day: part.into(),
                clinic_open: open.to_string(),
                clinic_closed: (!open).to_string(),
                is_the_clinic_open: if open { "yes" } else { "no" }.into(),
            };
            assert_eq!(ctx, want, "{instant}");
        }
    }

    #[test]
    fn template_context_serializes_as_strings() {
        let ctx = toronto().template_context(at("2026-01-05T14:00:00Z"));
        let value = serde_json::to_value(&ctx).unwrap();
        let object = value.as_object().unwrap();
        assert_eq!(object.len(), 8);
        assert!(object.values().all(Value::is_string));
        assert_eq!(value["clinic_open"], "true");
        assert_eq!(value["clinic_closed"], "false");
        assert_eq!(value["is_the_clinic_open"], "yes");
        assert_eq!(
            value["current_datetime"],
            "Monday, January 5, 2026 at 9:00 AM"
        );
        for (key, v) in ctx.entries() {
            assert_eq!(value[key], v, "{key}");
        }
    }
}
