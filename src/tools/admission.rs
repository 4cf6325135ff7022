//! Per-call admission in memory, in front of the durable per-call check.
//!
//! The durable check (`Store::begin_invocation`, under the call's lock) is exact across
//! instances, but it costs a pooled database connection held while waiting for the call's lock.
//! A model (or an attacker with a call socket) firing 1,000 tool calls at once would hold the
//! pool for the 970 the limit refuses anyway, and every other call's tool calls would wait. So
//! each instance first counts what it admitted per call, and refuses at once, without touching
//! the database, what is certainly over the limit:
//!
//! - the call's invocations admitted here within `limits.call_window` (and its transfers within
//!   `limits.transfer_window`), with the same [`limit_refusal`] the durable check uses; counts
//!   here never exceed the durable ones (every invocation admitted here is logged there), so a
//!   refusal here is one the durable check would make too;
//! - at most [`MAX_IN_FLIGHT_PER_CALL`] of the call's invocations running at once, so one call
//!   never holds more than that many pooled connections (for calls lifeline has a row of).
//!
//! A repeat of an invocation admitted here (same invocation key) is never refused by the
//! window: it goes on to the durable path, which answers it with the original's result.
//!
//! Refused invocations get no `tool_call_logs` row each (that would be the database work this
//! avoids). They are counted (`lifeline_tool_calls_refused_total{reason}`) and written, once a
//! burst has settled, as one `call_events` row of kind `tool_calls_refused` on the call's
//! timeline, with the count and the first invocations' ids and tools.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, warn};
use uuid::Uuid;

use super::context::CallScope;
use super::limits::limit_refusal;
use crate::config::Limits;
use crate::domain::{ErrorKind, ToolError, ToolInvocation, ToolName};
use crate::store::{NewCallEvent, Store, WindowCounts};

/// Invocations of one call running at once, at most.
pub const MAX_IN_FLIGHT_PER_CALL: u32 = 8;
/// How long refusals are gathered before their `call_events` row is written.
const NOTE_AFTER: Duration = Duration::from_secs(1);
/// Refused invocations listed by id in that row.
const NOTE_INVOCATIONS: usize = 50;
/// Idle calls are forgotten every this many admissions.
const PRUNE_EVERY: u64 = 256;

/// The kind of `call_events` row that records refused invocations.
pub const REFUSED_EVENT: &str = "tool_calls_refused";

/// Admits tool invocations per call (see the module documentation).
pub struct Admission {
    shared: Arc<Shared>,
}

struct Shared {
    limits: Limits,
    store: Arc<dyn Store>,
    tasks: TaskTracker,
    calls: Mutex<HashMap<String, CallEntry>>,
    admissions: AtomicU64,
}

#[derive(Default)]
struct CallEntry {
    /// Invocations admitted within the longer window, oldest first (their times in order:
    /// each is taken under the lock).
    admitted: VecDeque<Admitted>,
    /// The keys of `admitted`, each once: a repeat is found without walking a long call's
    /// window (a call with thousands of tool calls in it made every admission a scan).
    keys: HashSet<String>,
    in_flight: u32,
    /// Refusals not yet written to the call's timeline.
    refused: Option<RefusalNote>,
    last_seen: Option<Instant>,
}

struct Admitted {
    at: Instant,
    transfer: bool,
    key: String,
}

struct RefusalNote {
    count: u64,
    first_at: DateTime<Utc>,
    last_at: DateTime<Utc>,
    reasons: BTreeMap<&'static str, u64>,
    invocations: Vec<Value>,
}

/// An admitted invocation: it counts as running on its call until dropped.
pub struct Ticket {
    shared: Arc<Shared>,
    call: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut calls = self.shared.lock();
        if let Some(entry) = calls.get_mut(&self.call) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

impl Admission {
    /// `tasks` carries the background writes of refusal notes (a stopping process waits for
    /// them).
    pub fn new(store: Arc<dyn Store>, limits: Limits, tasks: TaskTracker) -> Self {
        Self {
            shared: Arc::new(Shared {
                limits,
                store,
                tasks,
                calls: Mutex::new(HashMap::new()),
                admissions: AtomicU64::new(0),
            }),
        }
    }

    /// Admits `inv` on its call, or refuses it (kind `rate_limited`) without any database work.
    pub fn admit(&self, inv: &ToolInvocation, scope: &CallScope) -> Result<Ticket, ToolError> {
        let shared = &self.shared;
        if shared.admissions.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            shared.prune();
        }
        let call = format!("{}|{}", inv.platform.as_str(), inv.call_ref);
        let key = inv.invocation_key();
        let tool = ToolName::resolve(&inv.tool_name);
        let transfer = tool == Some(ToolName::Transfer);
        let limits = &shared.limits;
        let longest = limits.call_window.max(limits.transfer_window);

        let mut calls = shared.lock();
        // Under the lock: the admitted times stay in order, which the counts below rely on.
        let now = Instant::now();
        let entry = calls.entry(call.clone()).or_default();
        entry.last_seen = Some(now);
        while entry
            .admitted
            .front()
            .is_some_and(|a| now.duration_since(a.at) >= longest)
        {
            if let Some(old) = entry.admitted.pop_front() {
                entry.keys.remove(&old.key);
            }
        }
        // Tool calls with no call row (a tenant's HTTP tool that names no call) share one
        // key per clinic and ten minutes: they are not "one call" to cap at once.
        let refusal = if scope.call.is_some() && entry.in_flight >= MAX_IN_FLIGHT_PER_CALL {
            Some((
                "in_flight",
                ToolError::new(
                    ErrorKind::RateLimited,
                    format!(
                        "too many tool calls at once on this call ({MAX_IN_FLIGHT_PER_CALL} are \
                         still running); wait for their answers before calling again"
                    ),
                ),
            ))
        } else if entry.keys.contains(&key) {
            // A repeat: the durable path answers it with the original's result.
            None
        } else {
            let in_call_window = entry.admitted.len()
                - entry
                    .admitted
                    .partition_point(|a| now.duration_since(a.at) >= limits.call_window);
            let counts = WindowCounts {
                call: in_call_window as i64,
                // Only a transfer's limit reads it (`limit_refusal`); transfers are few.
                tool: if transfer {
                    entry
                        .admitted
                        .iter()
                        .filter(|a| a.transfer && now.duration_since(a.at) < limits.transfer_window)
                        .count() as i64
                } else {
                    0
                },
            };
            let reason = if counts.call >= i64::from(limits.tool_calls_per_call) {
                "per_call"
            } else {
                "transfers"
            };
            // The tenant's own limit is the pipeline's (it needs no database either).
            limit_refusal(limits, true, transfer, &counts).map(|e| (reason, e))
        };
        match refusal {
            None => {
                if entry.keys.insert(key.clone()) {
                    entry.admitted.push_back(Admitted {
                        at: now,
                        transfer,
                        key,
                    });
                }
                entry.in_flight += 1;
                Ok(Ticket {
                    shared: shared.clone(),
                    call,
                })
            }
            Some((reason, error)) => {
                let schedule = note_refusal(entry, reason, inv);
                drop(calls);
                let canonical = tool.map_or("unknown", ToolName::as_str);
                metrics::counter!("lifeline_tool_calls_refused_total", "reason" => reason)
                    .increment(1);
                metrics::counter!("lifeline_tool_calls_total", "tool" => canonical, "platform" => inv.platform.as_str(), "status" => "rate_limited").increment(1);
                debug!(reason, "tool call refused in memory");
                if schedule {
                    warn!(
                        reason,
                        "refusing this call's tool calls over its limits, without the database; \
                         they are recorded together on the call's timeline"
                    );
                    if let Some(call_id) = scope.call.as_ref().map(|c| c.id) {
                        shared.write_note_later(call, call_id);
                    }
                }
                Err(error)
            }
        }
    }
}

/// Adds a refusal to the call's pending note; true when the note is new (its write must be
/// scheduled).
fn note_refusal(entry: &mut CallEntry, reason: &'static str, inv: &ToolInvocation) -> bool {
    let now = Utc::now();
    let new = entry.refused.is_none();
    let note = entry.refused.get_or_insert_with(|| RefusalNote {
        count: 0,
        first_at: now,
        last_at: now,
        reasons: BTreeMap::new(),
        invocations: Vec::new(),
    });
    note.count += 1;
    note.last_at = now;
    *note.reasons.entry(reason).or_default() += 1;
    if note.invocations.len() < NOTE_INVOCATIONS {
        note.invocations.push(json!({
            "invocation_id": inv.invocation_id,
            "tool": inv.tool_name,
            "reason": reason,
        }));
    }
    new
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, CallEntry>> {
        self.calls.lock().expect("admission lock")
    }

    /// Forgets calls with nothing running, nothing to write and nothing admitted within the
    /// longer window.
    fn prune(&self) {
        let longest = self.limits.call_window.max(self.limits.transfer_window);
        self.lock().retain(|_, e| {
            e.in_flight > 0
                || e.refused.is_some()
                || e.last_seen.is_some_and(|at| at.elapsed() < longest)
        });
    }

    /// Writes the call's refusal note once the burst has had [`NOTE_AFTER`] to gather.
    fn write_note_later(self: &Arc<Self>, call: String, call_id: Uuid) {
        let shared = self.clone();
        self.tasks.spawn(
            async move {
                tokio::time::sleep(NOTE_AFTER).await;
                let Some(note) = shared.lock().get_mut(&call).and_then(|e| e.refused.take()) else {
                    return;
                };
                let event = NewCallEvent {
                    id: Uuid::now_v7(),
                    call_id,
                    at: note.last_at,
                    kind: REFUSED_EVENT.into(),
                    detail: json!({
                        "count": note.count,
                        "reasons": note.reasons,
                        "first_at": note.first_at,
                        "last_at": note.last_at,
                        "invocations": note.invocations,
                        "not_listed": note.count.saturating_sub(NOTE_INVOCATIONS as u64),
                    }),
                };
                if let Err(e) = shared.store.append_call_event(&event).await {
                    error!(error = %e, refused = note.count, "could not record refused tool calls");
                }
            }
            .in_current_span(),
        );
    }
}
