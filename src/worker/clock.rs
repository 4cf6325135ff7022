//! Wall-clock time for the worker: leases, retry times and attempt records are written with it,
//! so tests can move it forward instead of waiting five minutes for a retry.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::breaker::Clock;

/// A source of wall-clock time.
pub trait WallClock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests, simulations).
#[derive(Debug)]
pub struct ManualWallClock(Mutex<DateTime<Utc>>);

impl ManualWallClock {
    /// A clock showing `at`.
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `at`.
    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }
}

impl WallClock for ManualWallClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A wall clock read as monotonic instants, for the worker's circuit breakers: a breaker on a
/// [`ManualWallClock`] opens and half-opens as that clock is moved, so the times it reports
/// match the ones the worker writes. A clock moved back reads as no time passing.
pub struct InstantsOf {
    wall: Arc<dyn WallClock>,
    wall_start: DateTime<Utc>,
    start: Instant,
}

impl InstantsOf {
    /// Instants that follow `wall` from now on.
    pub fn new(wall: Arc<dyn WallClock>) -> Self {
        Self {
            wall_start: wall.now(),
            start: Instant::now(),
            wall,
        }
    }
}

impl Clock for InstantsOf {
    fn now(&self) -> Instant {
        self.start
            + (self.wall.now() - self.wall_start)
                .to_std()
                .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_follow_the_wall_clock_and_never_go_back() {
        let wall = Arc::new(ManualWallClock::new(Utc::now()));
        let instants = InstantsOf::new(wall.clone());
        let start = instants.now();
        wall.advance(chrono::Duration::seconds(30));
        assert_eq!(instants.now() - start, std::time::Duration::from_secs(30));
        wall.advance(chrono::Duration::seconds(-60));
        assert_eq!(instants.now(), start);
    }
}
