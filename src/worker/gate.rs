//! Critical first after a frontend outage.
//!
//! While a frontend is down, the worker meets it in two ways: attempts that fail (and open its
//! circuit), and requests claimed while the circuit is open (handed back without an attempt).
//! Left to itself, each request would then come back on its own clock: a failure waits out the
//! retry schedule (5 minutes, then 15, then an hour), a deferral only waits for the circuit.
//! Critical requests, which are tried first, collect the failures, so after the outage they would
//! come back minutes *after* every normal request that had only been deferred.
//!
//! So while a frontend's circuit is not closed, every waiting request of that frontend shares one
//! due time, its *gate*: the moment the circuit lets trials through (or, while every trial slot
//! is taken, a few seconds later). When the worker first meets a new circuit period it aligns
//! the waiting requests to the gate (in the database, [`DeliveryQueue::align_retries`]); a
//! failure or a deferral recorded during that period is due at the gate too. At the gate, claim
//! order alone (urgency, then age) decides what goes first: the most urgent requests are the
//! trials, and the first deliveries once the frontend answers again.
//!
//! The gate is held (an async lock) while a request's outcome is decided and saved, so an outcome
//! computed before the circuit opened cannot be saved after the alignment and escape it.
//!
//! [`DeliveryQueue::align_retries`]: crate::store::DeliveryQueue::align_retries

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, MutexGuard};

use crate::breaker::{BreakerState, CircuitBreaker};
use crate::config::Config;
use crate::store::{Store, TenantScope};

/// The shortest time a request waits for a frontend whose circuit is not closed (a half-open
/// circuit with every trial slot taken is not spun on).
pub const MIN_DEFERRAL: Duration = Duration::from_secs(5);

/// One frontend as the worker sees it.
pub struct FrontendLine {
    pub breaker: Arc<CircuitBreaker>,
    /// The tenants whose requests go to this frontend.
    pub scope: TenantScope,
    gate: Mutex<Option<Gate>>,
}

/// The due time of a frontend's waiting requests during one circuit period.
#[derive(Debug, Clone, Copy)]
struct Gate {
    /// The breaker period ([`BreakerPhase::epoch`](crate::breaker::BreakerPhase))
    /// the gate was set in.
    epoch: u64,
    at: DateTime<Utc>,
}

impl FrontendLine {
    pub fn new(breaker: Arc<CircuitBreaker>, scope: TenantScope) -> Self {
        Self {
            breaker,
            scope,
            gate: Mutex::new(None),
        }
    }

    /// Holds the gate until the returned guard is dropped: decide and save an outcome with it.
    pub async fn hold(&self) -> HeldGate<'_> {
        HeldGate {
            line: self,
            gate: self.gate.lock().await,
        }
    }
}

/// A frontend's gate, held while one request's outcome is decided and saved.
pub struct HeldGate<'a> {
    line: &'a FrontendLine,
    gate: MutexGuard<'a, Option<Gate>>,
}

impl HeldGate<'_> {
    /// When a request the circuit refused is due again, as of `now`: with the other waiting
    /// requests of this frontend. If the circuit closed meanwhile (its trials succeeded), the
    /// requests refused while it was half-open are due when the gate set then opens, so this one
    /// keeps its place among them; otherwise now.
    pub async fn deferred_until(&mut self, store: &dyn Store, now: DateTime<Utc>) -> DateTime<Utc> {
        match self.due_at(store, now).await {
            Some(at) => at,
            None => self
                .gate
                .map(|g| g.at)
                .filter(|at| *at > now)
                .unwrap_or(now),
        }
    }

    /// When this frontend's waiting requests are due, as of `now`: `None` while its circuit is
    /// closed. The first call in a new circuit period sets the gate and aligns every waiting
    /// request of the frontend to it.
    pub async fn due_at(&mut self, store: &dyn Store, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let phase = self.line.breaker.phase();
        if phase.state == BreakerState::Closed {
            return None;
        }
        if let Some(gate) = *self.gate
            && gate.epoch == phase.epoch
            && gate.at > now
        {
            return Some(gate.at);
        }
        let wait = phase.retry_in.unwrap_or_default().max(MIN_DEFERRAL);
        let at = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(30));
        // Open: requests due later come back when the trials are let through; those due sooner
        // are handed back at the gate when claimed. Half-open with every slot taken: nothing of
        // this frontend is tried until the trials are done, so that the requests refused now
        // (the most urgent) do not wait behind less urgent ones still due.
        let hold_sooner = phase.state == BreakerState::HalfOpen;
        match store
            .align_retries(&self.line.scope, at, now, hold_sooner)
            .await
        {
            Ok(moved) => {
                tracing::info!(
                    api = self.line.breaker.api(),
                    state = %phase.state,
                    %at,
                    moved,
                    "frontend unavailable: its waiting callback requests are due when it is tried again"
                );
                *self.gate = Some(Gate {
                    epoch: phase.epoch,
                    at,
                });
            }
            // The outcome being saved still uses the gate; the alignment is tried again by the
            // next outcome of this period.
            Err(e) => tracing::error!(error = %e, "could not align the waiting callback requests"),
        }
        Some(at)
    }
}

/// Whether a failed POST says the frontend as a whole is unavailable (no answer, or an answer a
/// server gives when it cannot serve anyone: 408, 429, 502, 503, 504) rather than that it
/// failed on this request (another 5xx).
///
/// A failed half-open trial of the first kind is not counted against the request: the
/// frontend failed, not the request. One of the second kind is, with the scheduled backoff:
/// otherwise a request the frontend always fails on would be the first trial of every period
/// and keep the circuit from ever closing.
pub fn frontend_unavailable(status: Option<reqwest::StatusCode>) -> bool {
    status.is_none_or(|s| matches!(s.as_u16(), 408 | 429 | 502 | 503 | 504))
}

/// One line per frontend URL: a breaker reading time from `clock`, and the tenants it serves.
pub fn lines(
    config: &Config,
    clock: &Arc<dyn crate::breaker::Clock>,
) -> HashMap<String, Arc<FrontendLine>> {
    let settings = crate::breaker::BreakerSettings::default();
    let default_url = config.delivery.frontend.as_ref().map(|f| f.url.as_str());
    let mut lines = HashMap::new();
    if let Some(url) = default_url {
        let elsewhere: Vec<String> = config
            .tenants
            .iter()
            .filter(|t| t.frontend.as_ref().is_some_and(|f| f.url != url))
            .map(|t| t.id.clone())
            .collect();
        lines.insert(
            url.to_string(),
            Arc::new(FrontendLine::new(
                Arc::new(CircuitBreaker::with_clock(
                    "frontend",
                    settings,
                    clock.clone(),
                )),
                TenantScope::AllExcept(elsewhere),
            )),
        );
    }
    for t in &config.tenants {
        let Some(f) = &t.frontend else { continue };
        if Some(f.url.as_str()) == default_url || lines.contains_key(&f.url) {
            continue;
        }
        let served: Vec<String> = config
            .tenants
            .iter()
            .filter(|o| o.frontend.as_ref().is_some_and(|of| of.url == f.url))
            .map(|o| o.id.clone())
            .collect();
        // Metric labels are &'static; tenants are few and fixed at start-up.
        let name: &'static str = Box::leak(format!("frontend:{}", t.id).into());
        lines.insert(
            f.url.clone(),
            Arc::new(FrontendLine::new(
                Arc::new(CircuitBreaker::with_clock(name, settings, clock.clone())),
                TenantScope::Only(served),
            )),
        );
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_frontend_wide_failures_are_unavailability() {
        use reqwest::StatusCode;
        assert!(frontend_unavailable(None));
        for code in [408, 429, 502, 503, 504] {
            assert!(frontend_unavailable(Some(
                StatusCode::from_u16(code).unwrap()
            )));
        }
        for code in [500, 501, 507] {
            assert!(!frontend_unavailable(Some(
                StatusCode::from_u16(code).unwrap()
            )));
        }
    }
}
