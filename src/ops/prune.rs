//! `lifeline prune --older-than <AGE>`: deletes history older than AGE (tool-call logs, call
//! events, delivered or resolved callback requests with what hangs on them), batch by batch
//! while lifeline keeps serving, and prints what it removed. What stays, and why, is in
//! [`crate::store::retention`].

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;

use crate::store::Store;
use crate::store::retention::{self, History, Pruned};

/// The shortest age `prune` accepts. A tool-call log is what makes a repeated tool call of a
/// call in progress harmless, and a request's page or caller text is only sent within hours of
/// it: nothing younger than this is history yet.
pub const MIN_AGE: TimeDelta = TimeDelta::hours(12);

/// The longest age `prune` accepts (any longer reaches before any record).
pub const MAX_AGE: TimeDelta = TimeDelta::days(36_525);

/// The arguments of `lifeline prune`.
#[derive(Debug, Clone, Args)]
pub struct PruneArgs {
    /// Delete what is older than this: a number and a unit, `m` (minutes), `h` (hours), `d`
    /// (days) or `w` (weeks), e.g. `90d` or `12h`; at least 12h.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    pub older_than: TimeDelta,
    /// Rows deleted per transaction: each batch holds its locks (SQLite's one writer) only for
    /// the time it takes.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(i64).range(1..=10_000))]
    pub batch_size: i64,
}

/// Reads an age such as `90d`, `12h`, `30m` or `2w`.
pub fn parse_age(text: &str) -> Result<TimeDelta, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. 90d or 12h"))?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a number: write e.g. 90d or 12h"))?;
    let age = match unit {
        "m" => TimeDelta::try_minutes(n),
        "h" => TimeDelta::try_hours(n),
        "d" => TimeDelta::try_days(n),
        "w" => TimeDelta::try_weeks(n),
        _ => {
            return Err(format!(
                "`{text}`: the unit is m (minutes), h (hours), d (days) or w (weeks)"
            ));
        }
    }
    .filter(|age| *age <= MAX_AGE)
    .ok_or_else(|| format!("`{text}` is further back than any history (at most 100 years)"))?;
    if age < MIN_AGE {
        return Err(format!(
            "`{text}` is less than 12h: tool-call logs of calls in progress, and requests whose \
             page or text may still go out, are not history yet"
        ));
    }
    Ok(age)
}

/// What `prune` prints: the cutoff, then each table with the rows removed from it.
pub fn report(cutoff: DateTime<Utc>, pruned: &Pruned) -> String {
    let mut out = format!(
        "pruned history from before {}: {} rows\n",
        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        pruned.total()
    );
    for (table, n) in pruned.tables() {
        out.push_str(&format!("  {table:<18} {n}\n"));
    }
    out
}

/// Runs `prune` against `store` as of `now`, writing the report to `out`; returns the exit
/// code.
pub async fn run(
    store: &dyn Store,
    args: &PruneArgs,
    now: DateTime<Utc>,
    out: &mut dyn std::io::Write,
) -> i32 {
    let cutoff = now - args.older_than;
    let mut last_reported = 0;
    let pruned = retention::prune(store, cutoff, args.batch_size, |history, total| {
        // A long run says where it is, every ten thousand rows or so (on standard error: the
        // report on standard output stays the summary).
        if total.total() >= last_reported + 10_000 {
            last_reported = total.total();
            let doing = match history {
                History::CallbackRequests => "callback requests",
                History::ToolCallLogs => "tool-call logs",
                History::CallEvents => "call events",
            };
            eprintln!(
                "lifeline prune: {} rows removed so far ({doing})",
                total.total()
            );
        }
    })
    .await;
    match pruned {
        Ok(pruned) => match out.write_all(report(cutoff, &pruned).as_bytes()) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("lifeline prune: {e}");
                1
            }
        },
        Err(e) => {
            // Every batch before the failure is committed: a second run goes on from there.
            eprintln!("lifeline prune: {e} (what was removed before it stays removed)");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_a_number_and_a_unit_of_at_least_twelve_hours() {
        assert_eq!(parse_age("90d"), Ok(TimeDelta::days(90)));
        assert_eq!(parse_age("12h"), Ok(TimeDelta::hours(12)));
        assert_eq!(parse_age("720m"), Ok(TimeDelta::hours(12)));
        assert_eq!(parse_age(" 2w "), Ok(TimeDelta::weeks(2)));
        for bad in [
            "",
            "90",
            "d",
            "-5d",
            "5 d",
            "5y",
            "1.5d",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?}");
        }
        let short = parse_age("11h").unwrap_err();
        assert!(short.contains("less than 12h"), "{short}");
        assert_eq!(parse_age("5200w"), Ok(TimeDelta::weeks(5200)));
        let far = parse_age("1000000000w").unwrap_err();
        assert!(far.contains("further back"), "{far}");
    }

    #[test]
    fn the_report_lists_every_table() {
        let pruned = Pruned {
            callback_requests: 2,
            delivery_attempts: 3,
            tool_call_logs: 5,
            ..Default::default()
        };
        let cutoff = "2025-01-01T00:00:00Z".parse().unwrap();
        let text = report(cutoff, &pruned);
        assert!(
            text.starts_with("pruned history from before 2025-01-01T00:00:00Z: 10 rows\n"),
            "{text}"
        );
        assert!(text.contains("  callback_requests  2\n"), "{text}");
        assert!(text.contains("  call_events        0\n"), "{text}");
        assert_eq!(text.lines().count(), 10);
    }
}
