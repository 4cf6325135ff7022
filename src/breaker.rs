//! Circuit breakers for outbound APIs: Twilio and Ultravox (telephony), the frontends the delivery
//! worker posts to.
//!
//! When an API is down, every call would otherwise wait for its own timeouts and retries before
//! giving up, holding the caller in silence; after a run of failures the breaker refuses at
//! once instead, so the caller gets the fallback without delay. After a pause a few trial calls
//! are let through: if they all succeed the API is back, if one fails the pause starts again.
//!
//! Time comes from a [`Clock`], so that tests can move it forward without waiting.
//!
//! Every breaker registers itself in a process-wide registry on creation, so that operators'
//! views (`/metrics`, the dashboard) can list them all with [`snapshot`] without each owner
//! having to hand its breakers over; a dropped breaker leaves the registry by itself.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

/// A source of monotonic time.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures (while closed) that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses every call before letting trials through.
    pub open_for: Duration,
    /// How many trial calls a half-open circuit admits, and how many of them must succeed to
    /// close it.
    pub half_open_trials: u32,
}

impl Default for BreakerSettings {
    /// 5 consecutive failures open the circuit for 30 s; then 3 trials.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(30),
            half_open_trials: 3,
        }
    }
}

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; consecutive failures are counted.
    Closed,
    /// Calls are refused.
    Open,
    /// A limited number of trial calls go through.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (metric labels and logs).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `lifeline_circuit_state` gauge: 0 closed, 1 open, 2 half-open.
    pub(crate) fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused because the circuit is open (or half-open with every trial slot taken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{api} circuit open: not calling {api} for another {} ms", .retry_in.as_millis())]
pub struct BreakerOpen {
    /// The API the breaker guards (`twilio`, `ultravox`).
    pub api: &'static str,
    /// How long until the circuit lets a trial through; zero when it is half-open and waiting
    /// for its trials to finish.
    pub retry_in: Duration,
}

/// A circuit breaker for one outbound API. Share it in an `Arc`; every method takes `&self`.
pub struct CircuitBreaker {
    api: &'static str,
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    /// Shared with the registry, which holds it weakly.
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition: an outcome reported for a call admitted in an earlier state
    /// says nothing about the API now (a slow success from before the outage must not close a
    /// circuit that is testing the API again), so it is ignored.
    epoch: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        /// Trials admitted and not given back: in flight or succeeded.
        admitted: u32,
        succeeded: u32,
    },
}

impl State {
    fn public(self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("api", &self.api)
            .field("settings", &self.settings)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker for `api` with the default settings.
    pub(crate) fn new(api: &'static str) -> Self {
        Self::with_settings(api, BreakerSettings::default())
    }

    /// A closed breaker for `api`. A threshold or trial count of 0 is taken as 1 (a breaker
    /// that opens without any failure, or closes without any trial, would make no sense).
    pub(crate) fn with_settings(api: &'static str, settings: BreakerSettings) -> Self {
        Self::with_clock(api, settings, Arc::new(SystemClock))
    }

    /// Like [`with_settings`](Self::with_settings), reading time from `clock`.
    pub(crate) fn with_clock(
        api: &'static str,
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let settings = BreakerSettings {
            failure_threshold: settings.failure_threshold.max(1),
            half_open_trials: settings.half_open_trials.max(1),
            ..settings
        };
        // Publish the initial state so dashboards show the series before the first transition.
        metrics::gauge!("lifeline_circuit_state", "api" => api)
            .set(BreakerState::Closed.gauge_value());
        let inner = Arc::new(Mutex::new(Inner {
            state: State::Closed {
                consecutive_failures: 0,
            },
            epoch: 0,
        }));
        register(api, clock.clone(), &inner);
        Self {
            api,
            settings,
            clock,
            inner,
        }
    }

    /// The API this breaker guards.
    pub(crate) fn api(&self) -> &'static str {
        self.api
    }

    /// The settings in force.
    pub(crate) fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// The state as of the last call to [`acquire`](Self::acquire) or the last report; an open
    /// circuit whose pause is over turns half-open at the next `acquire`.
    pub(crate) fn state(&self) -> BreakerState {
        self.lock().state.public()
    }

    /// Asks to make one call. The permit must be given an outcome with
    /// [`Permit::success`] or [`Permit::failure`] once the API has answered (or failed to).
    ///
    /// A permit dropped without an outcome (the caller was cancelled, e.g. by its own
    /// deadline) counts as neither: nothing is known about the API from a call nobody waited
    /// for. It gives its half-open trial slot back, so a cancelled trial cannot wedge the
    /// circuit half-open.
    pub(crate) fn acquire(&self) -> Result<Permit<'_>, BreakerOpen> {
        let mut inner = self.lock();
        let now = self.clock.now();
        let trial = match inner.state {
            State::Closed { .. } => false,
            State::Open { until } if now < until => {
                return Err(BreakerOpen {
                    api: self.api,
                    retry_in: until - now,
                });
            }
            State::Open { .. } => {
                self.transition(
                    &mut inner,
                    State::HalfOpen {
                        admitted: 1,
                        succeeded: 0,
                    },
                );
                true
            }
            State::HalfOpen {
                admitted,
                succeeded,
            } => {
                if admitted >= self.settings.half_open_trials {
                    return Err(BreakerOpen {
                        api: self.api,
                        retry_in: Duration::ZERO,
                    });
                }
                inner.state = State::HalfOpen {
                    admitted: admitted + 1,
                    succeeded,
                };
                true
            }
        };
        Ok(Permit {
            breaker: self,
            epoch: inner.epoch,
            trial,
            reported: false,
        })
    }

    /// The state with the number of transitions so far, read at once: two readings with the
    /// same `epoch` are of the same closed, open or half-open period.
    pub(crate) fn phase(&self) -> BreakerPhase {
        let inner = self.lock();
        BreakerPhase {
            state: inner.state.public(),
            epoch: inner.epoch,
            retry_in: match inner.state {
                State::Open { until } => Some(until.saturating_duration_since(self.clock.now())),
                State::Closed { .. } | State::HalfOpen { .. } => None,
            },
        }
    }

    /// The breaker as operators see it.
    pub fn status(&self) -> BreakerStatus {
        status_of(self.api, self.clock.as_ref(), &self.inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn report(&self, epoch: u64, trial: bool, outcome: Outcome) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        match (inner.state, outcome) {
            (State::Closed { .. }, Outcome::Success) => {
                inner.state = State::Closed {
                    consecutive_failures: 0,
                };
            }
            (
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                let failures = consecutive_failures + 1;
                if failures >= self.settings.failure_threshold {
                    self.open(&mut inner, failures);
                } else {
                    inner.state = State::Closed {
                        consecutive_failures: failures,
                    };
                }
            }
            (
                State::HalfOpen {
                    admitted,
                    succeeded,
                },
                Outcome::Success,
            ) if trial => {
                let succeeded = succeeded + 1;
                if succeeded >= self.settings.half_open_trials {
                    self.transition(
                        &mut inner,
                        State::Closed {
                            consecutive_failures: 0,
                        },
                    );
                    tracing::info!(api = self.api, "circuit closed: the API answers again");
                } else {
                    inner.state = State::HalfOpen {
                        admitted,
                        succeeded,
                    };
                }
            }
            (State::HalfOpen { .. }, Outcome::Failure) if trial => self.open(&mut inner, 1),
            (
                State::HalfOpen {
                    admitted,
                    succeeded,
                },
                Outcome::Abandoned,
            ) if trial => {
                inner.state = State::HalfOpen {
                    admitted: admitted.saturating_sub(1),
                    succeeded,
                };
            }
            // An abandoned call in the closed state tells nothing; permits are only handed out
            // while closed or half-open, and the epoch check keeps out every other pairing.
            _ => {}
        }
    }

    fn open(&self, inner: &mut Inner, failures: u32) {
        let until = self.clock.now() + self.settings.open_for;
        self.transition(inner, State::Open { until });
        tracing::warn!(
            api = self.api,
            failures,
            open_for_ms = self.settings.open_for.as_millis() as u64,
            "circuit opened: calls to the API are refused until it recovers"
        );
    }

    fn transition(&self, inner: &mut Inner, to: State) {
        let from = inner.state.public();
        inner.state = to;
        inner.epoch += 1;
        let to = to.public();
        metrics::gauge!("lifeline_circuit_state", "api" => self.api).set(to.gauge_value());
        metrics::counter!("lifeline_circuit_transitions_total", "api" => self.api, "to" => to.as_str())
            .increment(1);
        tracing::debug!(api = self.api, %from, %to, "circuit state changed");
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // The state is a few integers updated in single assignments; a panic elsewhere while
    // holding the lock cannot leave it half-written, so a poisoned lock is still usable.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a breaker stands, from [`CircuitBreaker::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPhase {
    pub state: BreakerState,
    /// Bumped on every transition: identifies the period the state belongs to.
    pub epoch: u64,
    /// Open: how long until a trial call is let through. `None` when not open.
    pub retry_in: Option<Duration>,
}

/// One breaker as operators see it (from [`snapshot`] or [`CircuitBreaker::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerStatus {
    /// The API the breaker guards (`twilio`, `ultravox`, `frontend`, `frontend:<tenant>`).
    pub api: &'static str,
    pub state: BreakerState,
    /// Failures in a row while closed (0 otherwise).
    pub consecutive_failures: u32,
    /// Open: how long until a trial call is let through (zero once the pause is over; the
    /// next call is then a trial). `None` when not open.
    pub retry_in: Option<Duration>,
}

/// What the registry keeps of a breaker: enough to read its state, not to keep it alive.
struct Registered {
    api: &'static str,
    clock: Arc<dyn Clock>,
    inner: Weak<Mutex<Inner>>,
}

/// Every breaker of the process, in creation order.
static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Registered>> {
    // Entries are pushed and removed whole; a poisoned lock holds a consistent list.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register(api: &'static str, clock: Arc<dyn Clock>, inner: &Arc<Mutex<Inner>>) {
    let mut registry = registry();
    // Pruned here as well as in `snapshot`, so a process that never looks cannot grow the list
    // without bound by creating and dropping breakers.
    registry.retain(|r| r.inner.strong_count() > 0);
    registry.push(Registered {
        api,
        clock,
        inner: Arc::downgrade(inner),
    });
}

fn status_of(api: &'static str, clock: &dyn Clock, inner: &Mutex<Inner>) -> BreakerStatus {
    let state = lock(inner).state;
    let (consecutive_failures, retry_in) = match state {
        State::Closed {
            consecutive_failures,
        } => (consecutive_failures, None),
        State::Open { until } => (0, Some(until.saturating_duration_since(clock.now()))),
        State::HalfOpen { .. } => (0, None),
    };
    BreakerStatus {
        api,
        state: state.public(),
        consecutive_failures,
        retry_in,
    }
}

/// Every live circuit breaker of the process and its state, in creation order. Several breakers
/// may guard the same API (one per server started in a test process); dropped ones are gone.
pub(crate) fn snapshot() -> Vec<BreakerStatus> {
    // Read the states after releasing the registry: a breaker's own lock is never taken while
    // the registry's is held, so creating a breaker never waits on a busy one.
    type Live = (&'static str, Arc<dyn Clock>, Arc<Mutex<Inner>>);
    let live: Vec<Live> = {
        let mut registry = registry();
        registry.retain(|r| r.inner.strong_count() > 0);
        registry
            .iter()
            .filter_map(|r| Some((r.api, r.clock.clone(), r.inner.upgrade()?)))
            .collect()
    };
    live.iter()
        .map(|(api, clock, inner)| status_of(api, clock.as_ref(), inner))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Failure,
    Abandoned,
}

/// Leave to make one call, from [`CircuitBreaker::acquire`].
#[must_use = "report the call's outcome with success() or failure()"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    epoch: u64,
    trial: bool,
    reported: bool,
}

impl fmt::Debug for Permit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("api", &self.breaker.api)
            .field("trial", &self.trial)
            .finish()
    }
}

impl Permit<'_> {
    /// Whether this call is a half-open trial.
    pub(crate) fn is_trial(&self) -> bool {
        self.trial
    }

    /// The API answered as a working API does (including a refusal of our request: that
    /// shows the API is up).
    pub(crate) fn success(mut self) {
        self.finish(Outcome::Success);
    }

    /// The API failed: no answer, a timeout, a server error or a throttling answer.
    pub(crate) fn failure(mut self) {
        self.finish(Outcome::Failure);
    }

    /// [`success`](Self::success) if `ok`, else [`failure`](Self::failure).
    pub(crate) fn record(self, ok: bool) {
        if ok { self.success() } else { self.failure() }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.report(self.epoch, self.trial, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.finish(Outcome::Abandoned);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder,
        SharedString, Unit,
    };

    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(30);

    /// A clock that moves only when told to.
    struct ManualClock {
        start: Instant,
        elapsed: Mutex<Duration>,
    }

    impl ManualClock {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                start: Instant::now(),
                elapsed: Mutex::new(Duration::ZERO),
            })
        }

        fn advance(&self, by: Duration) {
            *self.elapsed.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + *self.elapsed.lock().unwrap()
        }
    }

    fn breaker() -> (CircuitBreaker, Arc<ManualClock>) {
        let clock = ManualClock::new();
        let breaker = CircuitBreaker::with_clock("test", BreakerSettings::default(), clock.clone());
        (breaker, clock)
    }

    fn fail(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker.acquire().expect("admitted").failure();
        }
    }

    fn open_breaker() -> (CircuitBreaker, Arc<ManualClock>) {
        let (breaker, clock) = breaker();
        fail(&breaker, 5);
        assert_eq!(breaker.state(), BreakerState::Open);
        (breaker, clock)
    }

    #[test]
    fn defaults() {
        assert_eq!(
            BreakerSettings::default(),
            BreakerSettings {
                failure_threshold: 5,
                open_for: OPEN_FOR,
                half_open_trials: 3,
            }
        );
        assert_eq!(
            [
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::HalfOpen
            ]
            .map(|s| (s.as_str(), s.gauge_value())),
            [("closed", 0.0), ("open", 1.0), ("half_open", 2.0)]
        );
    }

    #[test]
    fn four_failures_do_not_open_the_fifth_does() {
        let (breaker, _clock) = breaker();
        fail(&breaker, 4);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.acquire().is_ok());
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let (breaker, _clock) = breaker();
        fail(&breaker, 4);
        breaker.acquire().unwrap().success();
        fail(&breaker, 4);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn abandoned_calls_while_closed_count_as_nothing() {
        let (breaker, _clock) = breaker();
        fail(&breaker, 4);
        drop(breaker.acquire().unwrap());
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn open_refuses_until_the_pause_is_over() {
        let (breaker, clock) = open_breaker();
        let refused = breaker.acquire().unwrap_err();
        assert_eq!(refused.api, "test");
        assert_eq!(refused.retry_in, OPEN_FOR);
        assert_eq!(
            refused.to_string(),
            "test circuit open: not calling test for another 30000 ms"
        );
        clock.advance(Duration::from_secs(29));
        assert_eq!(
            breaker.acquire().unwrap_err().retry_in,
            Duration::from_secs(1)
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        clock.advance(Duration::from_secs(1));
        let trial = breaker.acquire().expect("a trial after 30 s");
        assert!(trial.is_trial());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_three_trials_at_a_time() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_FOR);
        let trials: Vec<_> = (0..3).map(|_| breaker.acquire().expect("trial")).collect();
        let refused = breaker.acquire().unwrap_err();
        assert_eq!(refused.retry_in, Duration::ZERO);
        // A finished success keeps its slot: only three trials per half-open period.
        let mut trials = trials.into_iter();
        trials.next().unwrap().success();
        assert!(breaker.acquire().is_err());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        drop(trials);
    }

    #[test]
    fn a_cancelled_trial_gives_its_slot_back() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_FOR);
        let first = breaker.acquire().unwrap();
        let second = breaker.acquire().unwrap();
        let third = breaker.acquire().unwrap();
        drop(second);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let replacement = breaker.acquire().expect("the dropped trial's slot");
        assert!(breaker.acquire().is_err());
        first.success();
        third.success();
        replacement.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_trial_failure_reopens_for_a_full_pause() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_FOR);
        let first = breaker.acquire().unwrap();
        let second = breaker.acquire().unwrap();
        first.success();
        clock.advance(Duration::from_secs(5));
        second.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.acquire().unwrap_err().retry_in, OPEN_FOR);
        clock.advance(OPEN_FOR);
        assert!(breaker.acquire().is_ok());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn the_phase_names_each_period() {
        let (breaker, clock) = breaker();
        let closed = breaker.phase();
        assert_eq!(
            (closed.state, closed.retry_in),
            (BreakerState::Closed, None)
        );
        fail(&breaker, 5);
        clock.advance(Duration::from_secs(10));
        let open = breaker.phase();
        assert_eq!(open.state, BreakerState::Open);
        assert_eq!(open.retry_in, Some(Duration::from_secs(20)));
        assert_ne!(open.epoch, closed.epoch);
        // The same period reads the same epoch, however late.
        clock.advance(Duration::from_secs(5));
        assert_eq!(breaker.phase().epoch, open.epoch);
        clock.advance(Duration::from_secs(15));
        let trial = breaker.acquire().unwrap();
        let half_open = breaker.phase();
        assert_eq!(
            (half_open.state, half_open.retry_in),
            (BreakerState::HalfOpen, None)
        );
        trial.failure();
        let reopened = breaker.phase();
        assert_eq!(reopened.state, BreakerState::Open);
        assert!(reopened.epoch > half_open.epoch && half_open.epoch > open.epoch);
    }

    #[test]
    fn three_trial_successes_close() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_FOR);
        breaker.acquire().unwrap().success();
        breaker.acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        // Closed again with a fresh count: it takes five new failures to reopen.
        fail(&breaker, 4);
        assert_eq!(breaker.state(), BreakerState::Closed);
        fail(&breaker, 1);
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn outcomes_from_before_a_transition_are_ignored() {
        let (breaker, clock) = breaker();
        let slow_success = breaker.acquire().unwrap();
        let slow_failure = breaker.acquire().unwrap();
        let slow_third = breaker.acquire().unwrap();
        fail(&breaker, 5);
        // A success from a call sent before the circuit opened does not close it.
        slow_success.success();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.acquire().unwrap_err().retry_in, OPEN_FOR);

        clock.advance(OPEN_FOR);
        let trial = breaker.acquire().unwrap();
        // Nor does a late failure reopen a half-open circuit, or a late drop free a slot.
        slow_failure.failure();
        drop(slow_third);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let (second, third) = (breaker.acquire().unwrap(), breaker.acquire().unwrap());
        assert!(breaker.acquire().is_err());
        for permit in [trial, second, third] {
            permit.success();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn trials_finishing_after_a_reopen_are_ignored() {
        let (breaker, clock) = open_breaker();
        clock.advance(OPEN_FOR);
        let (a, b, c) = (
            breaker.acquire().unwrap(),
            breaker.acquire().unwrap(),
            breaker.acquire().unwrap(),
        );
        a.failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        b.success();
        c.success();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.acquire().unwrap_err().retry_in, OPEN_FOR);
    }

    #[test]
    fn zero_settings_are_raised_to_one() {
        let breaker = CircuitBreaker::with_settings(
            "test",
            BreakerSettings {
                failure_threshold: 0,
                open_for: Duration::ZERO,
                half_open_trials: 0,
            },
        );
        assert_eq!(breaker.settings().failure_threshold, 1);
        assert_eq!(breaker.settings().half_open_trials, 1);
        breaker.acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.acquire().unwrap().failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        // Open for zero time: the next call is a trial; its success closes.
        breaker.acquire().unwrap().success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn shared_across_threads() {
        let breaker = Arc::new(CircuitBreaker::with_settings(
            "test",
            BreakerSettings {
                failure_threshold: 1000,
                ..BreakerSettings::default()
            },
        ));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let breaker = breaker.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        breaker.acquire().unwrap().record(i % 2 == 0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    // ---- registry ------------------------------------------------------------------------

    /// The registry's entries for `api` (other tests create breakers concurrently).
    fn listed(api: &str) -> Vec<BreakerStatus> {
        snapshot().into_iter().filter(|s| s.api == api).collect()
    }

    #[test]
    fn the_registry_lists_live_breakers_with_their_state_and_forgets_dropped_ones() {
        let clock = ManualClock::new();
        let breaker =
            CircuitBreaker::with_clock("registry-test", BreakerSettings::default(), clock.clone());
        fail(&breaker, 2);
        assert_eq!(
            listed("registry-test"),
            [BreakerStatus {
                api: "registry-test",
                state: BreakerState::Closed,
                consecutive_failures: 2,
                retry_in: None,
            }]
        );
        fail(&breaker, 3);
        clock.advance(Duration::from_secs(10));
        let open = breaker.status();
        assert_eq!(open.state, BreakerState::Open);
        assert_eq!(open.retry_in, Some(Duration::from_secs(20)));
        assert_eq!(listed("registry-test"), [open]);
        clock.advance(Duration::from_secs(60));
        assert_eq!(breaker.status().retry_in, Some(Duration::ZERO));

        let second = CircuitBreaker::new("registry-test");
        assert_eq!(listed("registry-test").len(), 2);
        drop(breaker);
        assert_eq!(
            listed("registry-test")
                .iter()
                .map(|s| s.state)
                .collect::<Vec<_>>(),
            [BreakerState::Closed]
        );
        drop(second);
        assert!(listed("registry-test").is_empty());
    }

    // ---- metrics -------------------------------------------------------------------------

    /// Records the last value of every gauge and the total of every counter, by key.
    #[derive(Default)]
    struct Captured {
        values: Mutex<HashMap<String, f64>>,
    }

    struct Handle {
        key: String,
        captured: Arc<Captured>,
    }

    impl CounterFn for Handle {
        fn increment(&self, value: u64) {
            *self
                .captured
                .values
                .lock()
                .unwrap()
                .entry(self.key.clone())
                .or_default() += value as f64;
        }
        fn absolute(&self, value: u64) {
            self.captured
                .values
                .lock()
                .unwrap()
                .insert(self.key.clone(), value as f64);
        }
    }

    impl GaugeFn for Handle {
        fn increment(&self, _: f64) {}
        fn decrement(&self, _: f64) {}
        fn set(&self, value: f64) {
            self.captured
                .values
                .lock()
                .unwrap()
                .insert(self.key.clone(), value);
        }
    }

    struct TestRecorder(Arc<Captured>);

    impl TestRecorder {
        fn handle(&self, key: &Key) -> Arc<Handle> {
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            Arc::new(Handle {
                key: format!("{}{{{}}}", key.name(), labels.join(",")),
                captured: self.0.clone(),
            })
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.handle(key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.handle(key))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn every_transition_sets_the_gauge_and_counts() {
        let captured = Arc::new(Captured::default());
        let recorder = TestRecorder(captured.clone());
        let value = |key: &str| captured.values.lock().unwrap().get(key).copied();
        let gauge = "lifeline_circuit_state{api=twilio}";
        metrics::with_local_recorder(&recorder, || {
            let breaker = CircuitBreaker::with_settings(
                "twilio",
                BreakerSettings {
                    failure_threshold: 2,
                    open_for: Duration::ZERO,
                    half_open_trials: 1,
                },
            );
            assert_eq!(value(gauge), Some(0.0));
            fail(&breaker, 2);
            assert_eq!(value(gauge), Some(1.0));
            let trial = breaker.acquire().unwrap();
            assert_eq!(value(gauge), Some(2.0));
            trial.failure();
            assert_eq!(value(gauge), Some(1.0));
            breaker.acquire().unwrap().success();
            assert_eq!(value(gauge), Some(0.0));
        });
        let count = |to: &str| {
            value(&format!(
                "lifeline_circuit_transitions_total{{api=twilio,to={to}}}"
            ))
        };
        assert_eq!(count("open"), Some(2.0));
        assert_eq!(count("half_open"), Some(2.0));
        assert_eq!(count("closed"), Some(1.0));
    }
}
