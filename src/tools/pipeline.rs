//! The platform-neutral path of every tool call:
//!
//! 0. admission: what is certainly over the call's limits is refused at once, in memory, before
//!    any database work ([`super::admission`]);
//! 1. validate the arguments;
//! 2. commit the `tool_call_logs` row (a repeat of a logged invocation stops here and gets the
//!    recorded result);
//! 3. rate-limit (per call from the log itself, so it holds across instances; per tenant in
//!    memory);
//! 4. run the handler, a panic becoming an internal error;
//! 5. record the outcome, and answer.
//!
//! A tool whose whole effect is a database write (`collect_info`) does 2–5 in one transaction:
//! the log row and the callback request commit together or not at all, with one fsync.
//!
//! Two clocks, kept apart on purpose:
//!
//! - the **answer deadline** ([`Invocation::answer`]) is the platform's: the model must hear
//!   something within `limits.tool_timeout` of the invocation's arrival (logging included), so
//!   a late effect is answered with a timeout error;
//! - the **effect's lifetime** is the effect's own: steps 2–5 run to completion in a task
//!   that outlives the client, whoever still waits for the answer: one of their own
//!   ([`Pipeline::start`]), or the tracked task that delivers their answer
//!   ([`Pipeline::start_here`]). A client that disconnects,
//!   a socket that drops or an answer deadline that passes never cuts a transfer between
//!   "attempt recorded" and "dial asked for". The tasks are tracked ([`Pipeline::tasks`]) so a
//!   stopping process waits for them; what a dead process leaves behind is ended by
//!   [`crate::reconciler`].
//!
//! A later bound on the effect itself (e.g. an end-to-end deadline on the durable write) belongs
//! in [`Pipeline::effect`], and must end the effect through the same failed → callback path.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use super::admission::Admission;
use super::context::CallContext;
use super::limits::{limit_refusal, limit_thresholds};
use super::{collect_info, hang_up, transfer};
use crate::config::Limits;
use crate::domain::{ErrorKind, ToolError, ToolInvocation, ToolName, ToolOutput, ToolResult};
use crate::store::{Begun, CountWindows, NewToolCallLog, Plan, Recorded, Store, WindowCounts};

// Where the adapters took it from before it had a module of its own (the lead's import sweep
// points them at `tools::context`).
pub use super::context::CallScope;

/// What a validated invocation will do.
pub enum Prepared {
    /// Everything is a database write: done inside the logging transaction.
    Store {
        output: ToolOutput,
        callback: Box<crate::store::NewCallbackRequest>,
    },
    Transfer(transfer::TransferArgs),
    HangUp(hang_up::HangUpArgs),
}

/// Fields copied into the log row's original columns, for the original dashboards.
#[derive(Default)]
pub struct LogFields {
    pub callback_number: Option<String>,
    pub caller_name: Option<String>,
    pub urgency_level: Option<String>,
}

/// Runs tool invocations.
pub struct Pipeline {
    store: Arc<dyn Store>,
    limits: Limits,
    per_tenant: DefaultKeyedRateLimiter<String>,
    /// Invocations running on this instance, so a repeat arriving meanwhile waits for the
    /// original's result instead of running again.
    inflight: Mutex<HashMap<String, watch::Receiver<Option<ToolResult>>>>,
    /// Every effect running on this instance (and whatever an adapter spawns to deliver an
    /// effect's answer and commands), so a stopping process can wait for them.
    tasks: TaskTracker,
    /// Refuses what is over a call's limits before it takes a database connection.
    admission: Admission,
}

/// A started invocation: the answer for the model, and the effect's own result.
pub struct Invocation {
    /// When the model must have its answer.
    answer_by: tokio::time::Instant,
    effect: Effect,
}

/// Where an invocation's effect runs, and then its result.
enum Effect {
    /// In a task of its own ([`Pipeline::start`]), which sends its result here.
    Spawned(watch::Receiver<Option<ToolResult>>),
    /// In the task that holds the invocation ([`Pipeline::start_here`]): polled by
    /// [`Invocation::answer`] and [`Invocation::finished`].
    Here(std::pin::Pin<Box<dyn Future<Output = ToolResult> + Send>>),
    /// Over: refused on admission, or finished.
    Done(ToolResult),
}

impl Invocation {
    /// An invocation answered before it started (refused on admission).
    fn settled(answer_by: tokio::time::Instant, result: ToolResult) -> Self {
        Self {
            answer_by,
            effect: Effect::Done(result),
        }
    }

    /// The answer for the model: the effect's result if it is in by the answer deadline,
    /// otherwise a timeout error that tells the model not to call again. The effect is not
    /// cancelled either way; its real outcome is recorded when it comes.
    pub async fn answer(&mut self) -> ToolResult {
        match tokio::time::timeout_at(self.answer_by, self.finished()).await {
            Ok(result) => result,
            Err(_) => {
                metrics::counter!("lifeline_tool_answers_late_total").increment(1);
                warn!("answer deadline passed; the effect goes on and records its own outcome");
                let mut e = ToolError::new(
                    ErrorKind::Timeout,
                    "the tool is taking longer than expected and is still running; do not call \
                     it again. Tell the caller to stay on the line.",
                );
                e.retryable = false;
                Err(e)
            }
        }
    }

    /// The effect's own result, however long it takes (what must follow the effect, such as
    /// a transfer's redirect, waits for this rather than for the answer).
    /// Cancel-safe: an effect polled here ([`Effect::Here`]) stays in place, unfinished, if
    /// this future is dropped (as [`Self::answer`] does at the deadline).
    pub async fn finished(&mut self) -> ToolResult {
        let result = match &mut self.effect {
            Effect::Done(result) => return result.clone(),
            Effect::Spawned(rx) => match rx.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or_else(|| Err(lost_effect())),
                // The task ended without a result: it panicked outside the handler's guard.
                Err(_) => Err(lost_effect()),
            },
            Effect::Here(effect) => effect.as_mut().await,
        };
        self.effect = Effect::Done(result.clone());
        result
    }
}

fn lost_effect() -> ToolError {
    error!("a tool call's task ended without a result");
    ToolError::new(ErrorKind::Internal, "the tool failed unexpectedly")
}

impl Pipeline {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        let per_minute =
            NonZeroU32::new(limits.tool_calls_per_tenant_per_minute).unwrap_or(NonZeroU32::MIN);
        let tasks = TaskTracker::new();
        Self {
            admission: Admission::new(store.clone(), limits.clone(), tasks.clone()),
            store,
            per_tenant: RateLimiter::keyed(Quota::per_minute(per_minute)),
            limits,
            inflight: Mutex::new(HashMap::new()),
            tasks,
        }
    }

    /// The tasks of running effects (and of their delivery), for a graceful stop.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// Runs one invocation and returns the answer for the model (see [`Invocation::answer`]).
    /// Dropping the returned future does not stop the effect.
    pub async fn run(self: &Arc<Self>, inv: ToolInvocation, scope: CallScope) -> ToolResult {
        self.start(inv, scope).answer().await
    }

    /// Starts an invocation: its effect runs to completion in its own tracked task, and the
    /// answer deadline starts now.
    pub fn start(self: &Arc<Self>, inv: ToolInvocation, scope: CallScope) -> Invocation {
        let answer_by = tokio::time::Instant::now() + self.limits.tool_timeout;
        let effect = match self.prepare_effect(inv, scope) {
            Ok(effect) => effect,
            Err(refusal) => return Invocation::settled(answer_by, Err(refusal)),
        };
        let (tx, rx) = watch::channel(None);
        self.tasks.spawn(async move {
            let _ = tx.send(Some(effect.await));
        });
        Invocation {
            answer_by,
            effect: Effect::Spawned(rx),
        }
    }

    /// As [`Self::start`], with the effect run by the caller's own task instead of one of its
    /// own (a task and a hand-off fewer per tool call): through [`Invocation::answer`] and
    /// then [`Invocation::finished`]. The caller must be a task that runs to the end whatever
    /// happens to its client (a tracked task of its own, see [`Self::tasks`]) and must poll
    /// [`Invocation::finished`] until the effect is over, also while it delivers a late answer.
    pub fn start_here(self: &Arc<Self>, inv: ToolInvocation, scope: CallScope) -> Invocation {
        let answer_by = tokio::time::Instant::now() + self.limits.tool_timeout;
        let effect = match self.prepare_effect(inv, scope) {
            Ok(effect) => Effect::Here(Box::pin(effect)),
            Err(refusal) => Effect::Done(Err(refusal)),
        };
        Invocation { answer_by, effect }
    }

    /// Admits an invocation and returns its effect, to be run to completion (or the refusal,
    /// answered at once with no database connection taken, when it is over the call's limits).
    fn prepare_effect(
        self: &Arc<Self>,
        inv: ToolInvocation,
        scope: CallScope,
    ) -> Result<impl Future<Output = ToolResult> + Send + 'static, ToolError> {
        let ticket = self.admission.admit(&inv, &scope)?;
        let span = info_span!(
            "tool_call",
            tenant = %scope.tenant.id,
            platform = inv.platform.as_str(),
            call = %inv.call_ref,
            tool = %inv.tool_name,
            invocation = inv.invocation_id.as_deref().unwrap_or(""),
        );
        let pipeline = self.clone();
        Ok(async move {
            let result = pipeline.effect(&inv, &scope).await;
            drop(ticket);
            result
        }
        .instrument(span))
    }

    /// Whether an invocation is running on this instance (the reconciler leaves it alone).
    pub fn is_running(&self, platform: &str, call_ref: &str, invocation_key: &str) -> bool {
        self.inflight
            .lock()
            .expect("inflight lock")
            .contains_key(&format!("{platform}|{call_ref}|{invocation_key}"))
    }

    /// The effect of one invocation, to its end. Never panics, never returns before the log row
    /// is committed (unless the database refuses it, in which case nothing ran).
    async fn effect(&self, inv: &ToolInvocation, scope: &CallScope) -> ToolResult {
        match AssertUnwindSafe(self.run_inner(inv, &scope.context()))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(_) => {
                error!("a tool call panicked outside its handler");
                Err(ToolError::new(
                    ErrorKind::Internal,
                    "the tool failed unexpectedly",
                ))
            }
        }
    }

    async fn run_inner(&self, inv: &ToolInvocation, ctx: &CallContext<'_>) -> ToolResult {
        let started = Instant::now();
        let now = Utc::now();
        let log_id = Uuid::now_v7();
        let tool = ToolName::resolve(&inv.tool_name);
        let canonical = tool.map_or("unknown", ToolName::as_str);

        let mut fields = LogFields::default();
        let prepared = match tool {
            None => Err(ToolError::new(
                ErrorKind::NotFound,
                format!(
                    "unknown tool {:?}; the tools are collect_info, transfer and hang_up",
                    inv.tool_name
                ),
            )),
            Some(tool) => prepare(tool, inv, ctx, log_id, now, &mut fields),
        };
        let plan = match &prepared {
            Err(e) => Plan::Fail(Recorded::of(&Err(e.clone()), now, 0.0)),
            Ok(Prepared::Store { output, callback }) => Plan::Complete {
                outcome: Recorded::of(&Ok(output.clone()), now, 0.0),
                callback: Some(callback.clone()),
            },
            Ok(_) => Plan::Run,
        };

        let log = NewToolCallLog {
            id: log_id,
            created_at: now,
            tenant_id: ctx.tenant.id.clone(),
            platform: inv.platform,
            call_ref: inv.call_ref.clone(),
            call_id: ctx.call.map(|c| c.id),
            invocation_key: inv.invocation_key(),
            invocation_id: inv.invocation_id.clone(),
            tool_name: inv.tool_name.clone(),
            canonical_tool: canonical.to_string(),
            tool_parameters: inv.arguments.clone(),
            callback_number: fields.callback_number,
            caller_name: fields.caller_name,
            urgency_level: fields.urgency_level,
            ultravox_call_id: ctx.call.and_then(|c| c.ultravox_call_id.clone()),
            twilio_call_sid: None,
            // The original kept request headers here; lifeline keeps nothing it has elsewhere.
            tool_data: serde_json::json!({}),
        };
        let tenant_allowed = self.per_tenant.check_key(&ctx.tenant.id).is_ok();
        let is_transfer = tool == Some(ToolName::Transfer);
        let windows = CountWindows {
            call_since: now - self.limits.call_window,
            tool_since: now - self.limits.transfer_window,
            tool: ToolName::Transfer.as_str().to_string(),
            thresholds: Some(limit_thresholds(&self.limits, tenant_allowed, is_transfer)),
        };
        let limits = &self.limits;
        let check =
            move |counts: &WindowCounts| limit_refusal(limits, tenant_allowed, is_transfer, counts);

        let begun = self
            .store
            .begin_invocation(&log, &plan, &windows, &check)
            .await;
        let log_latency = started.elapsed();
        metrics::histogram!("lifeline_durable_log_seconds").record(log_latency.as_secs_f64());
        let begun = match begun {
            Ok(b) => b,
            Err(e) => {
                // Log before execute: with no durable record, nothing runs.
                error!(error = %e, "could not log the tool call; nothing was run");
                return finish_metrics(
                    inv,
                    canonical,
                    started,
                    // A NUL the store could not escape is permanent, not an outage.
                    Err(e.tool_error()),
                );
            }
        };

        let result = match (begun, prepared) {
            (Begun::Duplicate(row), _) => {
                info!(log_id = %row.id, status = %row.status, "repeated invocation; not run again");
                metrics::counter!("lifeline_tool_call_repeats_total", "tool" => canonical)
                    .increment(1);
                match row.recorded_result() {
                    Some(result) => result,
                    None => {
                        self.await_original(&inflight_key(inv, &log.invocation_key), row.id)
                            .await
                    }
                }
            }
            (Begun::Recorded(recorded), prepared) => match prepared {
                Ok(Prepared::Store { output, .. }) if recorded.success => Ok(output),
                Err(e) => Err(e),
                _ => Err(recorded_error(&recorded)),
            },
            (Begun::Running, Ok(prepared)) => {
                self.run_handler(prepared, inv, ctx, log_id, &log.invocation_key)
                    .await
            }
            (Begun::Running, Err(e)) => Err(e),
        };
        finish_metrics(inv, canonical, started, result)
    }

    /// Runs a handler whose log row is committed `pending`, to its end, then records its
    /// outcome. No timeout here: the answer deadline is the caller's ([`Invocation::answer`]),
    /// and cutting a handler short is what used to leave transfers `dialing` forever.
    async fn run_handler(
        &self,
        prepared: Prepared,
        inv: &ToolInvocation,
        ctx: &CallContext<'_>,
        log_id: Uuid,
        key: &str,
    ) -> ToolResult {
        let (tx, rx) = watch::channel(None);
        let inflight_key = inflight_key(inv, key);
        self.inflight
            .lock()
            .expect("inflight lock")
            .insert(inflight_key.clone(), rx);

        let started = Instant::now();
        let handler = async {
            match prepared {
                Prepared::Transfer(args) => {
                    transfer::run(&args, ctx, self.store.as_ref(), log_id).await
                }
                Prepared::HangUp(args) => hang_up::run(&args, ctx).await,
                Prepared::Store { output, .. } => Ok(output),
            }
        };
        let result = match AssertUnwindSafe(handler).catch_unwind().await {
            Ok(result) => result,
            Err(_panic) => {
                error!("tool handler panicked");
                Err(ToolError::new(
                    ErrorKind::Internal,
                    "the tool failed unexpectedly",
                ))
            }
        };
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let recorded = Recorded::of(&result, Utc::now(), duration_ms);
        if let Err(e) = self.store.finish_invocation(log_id, &recorded).await {
            // The effect happened; the answer must still reach the model. The row stays
            // `pending` until the reconciler ends it, which operators see.
            error!(error = %e, %log_id, "could not record the tool result");
        }
        let _ = tx.send(Some(result.clone()));
        self.inflight
            .lock()
            .expect("inflight lock")
            .remove(&inflight_key);
        result
    }

    /// A repeat of an invocation still running: wait for the original's result, here or (on
    /// another instance) through the database, up to the tool timeout. Never runs it again.
    async fn await_original(&self, inflight_key: &str, log_id: Uuid) -> ToolResult {
        let local = self
            .inflight
            .lock()
            .expect("inflight lock")
            .get(inflight_key)
            .cloned();
        let deadline = tokio::time::Instant::now() + self.limits.tool_timeout;
        if let Some(mut rx) = local
            && let Ok(Ok(done)) =
                tokio::time::timeout_at(deadline, rx.wait_for(|r| r.is_some())).await
            && let Some(result) = done.clone()
        {
            return result;
        }
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(row)) = self.store.tool_call_log(log_id).await
                && let Some(result) = row.recorded_result()
            {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(ToolError::new(
            ErrorKind::Timeout,
            "this request is still being handled; do not repeat it",
        ))
    }
}

/// Identifies a running invocation on this instance.
fn inflight_key(inv: &ToolInvocation, invocation_key: &str) -> String {
    format!(
        "{}|{}|{}",
        inv.platform.as_str(),
        inv.call_ref,
        invocation_key
    )
}

fn prepare(
    tool: ToolName,
    inv: &ToolInvocation,
    ctx: &CallContext<'_>,
    log_id: Uuid,
    now: DateTime<Utc>,
    fields: &mut LogFields,
) -> Result<Prepared, ToolError> {
    match tool {
        ToolName::CollectInfo => {
            let (output, callback) = collect_info::prepare(&inv.arguments, ctx, log_id, now)?;
            fields.callback_number = Some(callback.callback_number.clone());
            fields.caller_name = callback.caller_name.clone();
            fields.urgency_level = Some(callback.urgency.as_str().to_string());
            Ok(Prepared::Store {
                output,
                callback: Box::new(callback),
            })
        }
        ToolName::Transfer => {
            let args = transfer::TransferArgs::parse(&inv.arguments, ctx)?;
            fields.callback_number = Some(args.callback_number.clone());
            fields.caller_name = args.caller_name.clone();
            fields.urgency_level = Some(args.urgency.as_str().to_string());
            Ok(Prepared::Transfer(args))
        }
        ToolName::HangUp => Ok(Prepared::HangUp(hang_up::HangUpArgs::parse(
            &inv.arguments,
        )?)),
    }
}

fn recorded_error(recorded: &Recorded) -> ToolError {
    recorded
        .result
        .get("error")
        .and_then(|e| serde_json::from_value(e.clone()).ok())
        .unwrap_or_else(|| {
            ToolError::new(
                ErrorKind::Internal,
                recorded.error_message.clone().unwrap_or_default(),
            )
        })
}

fn finish_metrics(
    inv: &ToolInvocation,
    canonical: &'static str,
    started: Instant,
    result: ToolResult,
) -> ToolResult {
    let status = match &result {
        Ok(_) => "success",
        Err(e) => e.kind.as_str(),
    };
    metrics::counter!("lifeline_tool_calls_total", "tool" => canonical, "platform" => inv.platform.as_str(), "status" => status).increment(1);
    metrics::histogram!("lifeline_tool_call_seconds", "tool" => canonical)
        .record(started.elapsed().as_secs_f64());
    let elapsed_us = started.elapsed().as_micros() as u64;
    match &result {
        Ok(_) => info!(status, elapsed_us, "tool call done"),
        Err(e) => {
            // The message may quote what the caller said (a number, a concern): debug only.
            warn!(
                status,
                retryable = e.retryable,
                elapsed_us,
                "tool call failed"
            );
            debug!(error = %e.message, "tool call failure detail");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    fn output(message: &str) -> ToolResult {
        Ok(ToolOutput {
            message: message.into(),
            data: serde_json::Value::Null,
            ends_call: false,
        })
    }

    /// An effect run by its delivering task (`Pipeline::start_here`), still running at the
    /// answer deadline: the model is answered with the timeout, and the same effect (not a
    /// new one, not a dropped one) then runs to its end and gives its own result.
    #[tokio::test]
    async fn an_effect_run_here_outlives_its_late_answer_and_runs_once() {
        let (release, released) = oneshot::channel::<()>();
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let mut invocation = Invocation {
            answer_by: tokio::time::Instant::now() + Duration::from_millis(50),
            effect: Effect::Here(Box::pin(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = released.await;
                output("recorded")
            })),
        };
        let answer = invocation.answer().await;
        assert_eq!(answer.unwrap_err().kind, ErrorKind::Timeout);
        assert_eq!(starts.load(Ordering::SeqCst), 1, "the effect had started");
        release.send(()).unwrap();
        assert_eq!(invocation.finished().await.unwrap().message, "recorded");
        assert_eq!(
            invocation.finished().await.unwrap().message,
            "recorded",
            "asked again, the same result"
        );
        assert_eq!(starts.load(Ordering::SeqCst), 1, "it ran once");
    }

    /// An effect run here that ends before the deadline is the answer, and is not run again
    /// for `finished`.
    #[tokio::test]
    async fn an_effect_run_here_in_time_is_the_answer() {
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let mut invocation = Invocation {
            answer_by: tokio::time::Instant::now() + Duration::from_secs(30),
            effect: Effect::Here(Box::pin(async move {
                counted.fetch_add(1, Ordering::SeqCst);
                output("stored")
            })),
        };
        assert_eq!(invocation.answer().await.unwrap().message, "stored");
        assert_eq!(invocation.finished().await.unwrap().message, "stored");
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }
}
