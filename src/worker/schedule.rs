//! When a failed delivery or alert is tried again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

/// The wait after the `failures`-th failure (1-based), or `None` when the schedule is used up
/// (the request becomes a dead letter).
///
/// A `Retry-After` from the server replaces the scheduled wait (capped at `max_retry_after`):
/// it knows when it will be ready. Otherwise the scheduled wait is moved by up to `jitter`
/// (a fraction) either way, so requests that failed together do not all come back together.
pub fn next_wait(
    schedule: &[Duration],
    failures: u32,
    jitter: f64,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Option<Duration> {
    let base = *schedule.get(usize::try_from(failures.checked_sub(1)?).ok()?)?;
    if let Some(after) = retry_after {
        return Some(after.min(max_retry_after));
    }
    if jitter <= 0.0 {
        return Some(base);
    }
    let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
    Some(base.mul_f64(factor.max(0.0)))
}

/// Reads a `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the
/// past means now.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEDULE: [Duration; 3] = [
        Duration::from_secs(300),
        Duration::from_secs(900),
        Duration::from_secs(3600),
    ];
    const CAP: Duration = Duration::from_secs(6 * 3600);

    #[test]
    fn follows_the_schedule_then_gives_up() {
        assert_eq!(next_wait(&SCHEDULE, 1, 0.0, None, CAP), Some(SCHEDULE[0]));
        assert_eq!(next_wait(&SCHEDULE, 2, 0.0, None, CAP), Some(SCHEDULE[1]));
        assert_eq!(next_wait(&SCHEDULE, 3, 0.0, None, CAP), Some(SCHEDULE[2]));
        assert_eq!(next_wait(&SCHEDULE, 4, 0.0, None, CAP), None);
        assert_eq!(next_wait(&SCHEDULE, 0, 0.0, None, CAP), None);
    }

    #[test]
    fn jitter_stays_within_its_fraction_and_varies() {
        let waits: Vec<Duration> = (0..200)
            .map(|_| next_wait(&SCHEDULE, 1, 0.1, None, CAP).unwrap())
            .collect();
        assert!(
            waits
                .iter()
                .all(|w| (270.0..=330.0).contains(&w.as_secs_f64()))
        );
        let distinct: std::collections::HashSet<_> = waits.iter().map(|w| w.as_millis()).collect();
        assert!(distinct.len() > 10, "jitter should vary: {distinct:?}");
    }

    #[test]
    fn retry_after_replaces_the_wait_and_is_capped() {
        let after = Some(Duration::from_secs(42));
        assert_eq!(next_wait(&SCHEDULE, 1, 0.1, after, CAP), after);
        let huge = Some(Duration::from_secs(10 * 24 * 3600));
        assert_eq!(next_wait(&SCHEDULE, 2, 0.1, huge, CAP), Some(CAP));
        // The schedule still decides when to stop.
        assert_eq!(next_wait(&SCHEDULE, 4, 0.1, after, CAP), None);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
