//! The reconciler: ends what lost its owner, so no caller waits on a transfer nobody watches.
//!
//! A transfer attempt stays `dialing` until its dial reports; an invocation stays `pending`
//! until its effect records an outcome. Both reports can be lost: the process that ran the effect
//! died, the command that would have dialled never reached the platform, the call ended while a
//! socket was down. Left alone, such an attempt also blocks every later transfer of its call (one
//! dialing attempt per call). Periodically, in every `serve` process:
//!
//! - an attempt still `dialing` past its ring timeout plus a margin (and not picked up), or past
//!   its call's end plus the margin, is ended through the same path as a dial nobody answered:
//!   failed, with the critical callback request for the caller's number
//!   ([`transfer::abandon_attempt`]);
//! - an invocation still `pending` after the margin, and not running in this process, is ended
//!   as failed; a transfer that never reached an attempt gets its critical callback request in the
//!   same transaction.
//!
//! Every write is conditional on the row still being `dialing`/`pending`, so several instances
//! (or a late report racing the reconciler) never produce two callback requests.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{Instrument, error, info_span, warn};

use crate::config::Config;
use crate::domain::{ErrorKind, Platform, ToolError};
use crate::store::{CallRow, DialingAttempt, Recorded, Store, StoreError};
use crate::tools::pipeline::Pipeline;
use crate::tools::transfer;

/// How many stale invocations one pass looks at.
const PENDING_BATCH: i64 = 200;
/// The ring timeout assumed for an attempt whose tenant is no longer configured.
const UNKNOWN_RING_TIMEOUT: Duration = Duration::from_secs(120);

/// What one pass ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub attempts: usize,
    pub invocations: usize,
}

/// Ends stale transfer attempts and invocations.
pub struct Reconciler {
    store: Arc<dyn Store>,
    config: Arc<Config>,
    pipeline: Arc<Pipeline>,
}

impl Reconciler {
    pub fn new(store: Arc<dyn Store>, config: Arc<Config>, pipeline: Arc<Pipeline>) -> Self {
        Self {
            store,
            config,
            pipeline,
        }
    }

    /// Runs a pass every `reconciler.interval_ms` until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.lifecycle.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let span = info_span!("reconcile");
            match self.pass(Utc::now()).instrument(span).await {
                Ok(done) if done != Reconciled::default() => {
                    warn!(
                        attempts = done.attempts,
                        invocations = done.invocations,
                        "reconciler ended stale work"
                    );
                }
                Ok(_) => {}
                Err(e) => error!(error = %e, "reconciler pass failed"),
            }
        }
    }

    /// One pass, as of `now`.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<Reconciled, StoreError> {
        let mut done = Reconciled::default();
        let margin = chrono::Duration::from_std(self.config.lifecycle.reconcile_margin)
            .unwrap_or_else(|_| chrono::Duration::seconds(60));
        for dialing in self.store.dialing_attempts().await? {
            let Some(why) = self.stale_because(&dialing, now, margin) else {
                continue;
            };
            let Some(call) = self.call_of(&dialing).await? else {
                continue;
            };
            if transfer::abandon_attempt(self.store.as_ref(), &call, &dialing.attempt, why).await? {
                metrics::counter!("lifeline_reconciled_total", "what" => "transfer_attempt")
                    .increment(1);
                done.attempts += 1;
            }
        }
        for log in self
            .store
            .pending_invocations(now - margin, PENDING_BATCH)
            .await?
        {
            if self
                .pipeline
                .is_running(&log.platform, &log.call_ref, &log.invocation_key)
            {
                continue;
            }
            let call = match (log.call_id, Platform::from_name(&log.platform)) {
                (Some(_), Some(platform)) => self.store.find_call(platform, &log.call_ref).await?,
                _ => None,
            };
            // A transfer that reached an attempt is the attempt's to settle (above, or by its
            // dial's outcome); one that did not gets its callback request here.
            let reached_attempt = match &call {
                Some(call) => self
                    .store
                    .transfer_attempts(call.id)
                    .await?
                    .iter()
                    .any(|a| a.tool_call_log_id == Some(log.id)),
                None => false,
            };
            let callback = (log.canonical_tool == "transfer" && !reached_attempt)
                .then(|| transfer::interrupted_transfer_callback(&log, call.as_ref(), now));
            let mut error = ToolError::new(
                ErrorKind::Internal,
                "interrupted: the process running this tool call stopped before recording its \
                 outcome",
            );
            error.retryable = false;
            let outcome = Recorded::of(&Err(error), now, 0.0);
            if self
                .store
                .abandon_invocation(log.id, &outcome, callback.as_ref())
                .await?
            {
                warn!(
                    log_id = %log.id,
                    tool = %log.canonical_tool,
                    callback = callback.is_some(),
                    "stale pending invocation ended"
                );
                metrics::counter!("lifeline_reconciled_total", "what" => "invocation").increment(1);
                done.invocations += 1;
            }
        }
        Ok(done)
    }

    /// Why an attempt is stale, if it is.
    fn stale_because(
        &self,
        d: &DialingAttempt,
        now: DateTime<Utc>,
        margin: chrono::Duration,
    ) -> Option<&'static str> {
        if d.call_ended_at.is_some_and(|ended| ended + margin < now) {
            return Some("the call ended and the dial never reported its outcome");
        }
        let ring = self
            .config
            .tenant(&d.attempt.tenant_id)
            .map(|t| Duration::from_secs(u64::from(t.transfer.ring_timeout_secs)))
            .unwrap_or(UNKNOWN_RING_TIMEOUT);
        let ring = chrono::Duration::from_std(ring).unwrap_or_else(|_| chrono::Duration::zero());
        if d.attempt.answered_at.is_none() && d.attempt.started_at + ring + margin < now {
            return Some("nobody picked up within the ring timeout and the dial never reported");
        }
        None
    }

    async fn call_of(&self, d: &DialingAttempt) -> Result<Option<CallRow>, StoreError> {
        let Some(platform) = Platform::from_name(&d.call_platform) else {
            error!(platform = %d.call_platform, "attempt of a call on an unknown platform");
            return Ok(None);
        };
        self.store.find_call(platform, &d.call_ref).await
    }
}
