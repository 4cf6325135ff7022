//! Every counter and histogram lifeline records, with every value of its labels, registered at
//! zero when the recorder is installed. A series that first appears with its first event hides
//! that event from Prometheus' `increase()` and `rate()` (there is no earlier sample to compare
//! it with), so after a restart the first tool call, late answer or dead letter would go
//! uncounted.
//!
//! Two counters are not here: `lifeline_text_sanitized_total{kind}` (its kinds are the store's
//! write paths, named where each one escapes its text) and
//! `lifeline_twilio_webhooks_refused_total{path}` (the path is whatever was requested). Their
//! label values are open-ended; a test keeps every other metric the code records on this list.

use metrics::Label;

use crate::tools::{ErrorKind, Platform, ToolName};

/// How a family is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Counter,
    Histogram,
}

/// One metric and the values each of its labels takes.
#[derive(Debug, Clone)]
pub(crate) struct Family {
    pub name: &'static str,
    pub kind: Kind,
    /// Each label with its values; every combination is registered.
    pub labels: Vec<(&'static str, Vec<&'static str>)>,
}

impl Family {
    fn new(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            labels: Vec::new(),
        }
    }

    fn counter(name: &'static str) -> Self {
        Self::new(name, Kind::Counter)
    }

    fn histogram(name: &'static str) -> Self {
        Self::new(name, Kind::Histogram)
    }

    fn label(mut self, key: &'static str, values: &[&'static str]) -> Self {
        self.labels.push((key, values.to_vec()));
        self
    }

    /// Every combination of the label values (one empty set for a family without labels).
    pub fn label_sets(&self) -> Vec<Vec<Label>> {
        let mut sets: Vec<Vec<Label>> = vec![Vec::new()];
        for (key, values) in &self.labels {
            sets = sets
                .into_iter()
                .flat_map(|set| {
                    values.iter().map(move |value| {
                        let mut set = set.clone();
                        set.push(Label::from_static_parts(key, value));
                        set
                    })
                })
                .collect();
        }
        sets
    }
}

/// The `tool` label of tool-call series: every tool, and `unknown` for a name no tool has.
fn tools() -> Vec<&'static str> {
    ToolName::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(["unknown"])
        .collect()
}

/// Every family lifeline records (label values as the code that records them uses them).
pub(crate) fn families() -> Vec<Family> {
    let tools = tools();
    let platforms: Vec<&str> = Platform::ALL.iter().map(|p| p.as_str()).collect();
    let statuses: Vec<&str> = ["success"]
        .into_iter()
        .chain(ErrorKind::ALL.iter().map(|k| k.as_str()))
        .collect();
    let apis = ["twilio", "ultravox"];
    vec![
        // The tool pipeline (src/tools).
        Family::counter("lifeline_tool_calls_total")
            .label("tool", &tools)
            .label("platform", &platforms)
            .label("status", &statuses),
        Family::histogram("lifeline_tool_call_seconds").label("tool", &tools),
        Family::histogram("lifeline_durable_log_seconds"),
        Family::counter("lifeline_tool_call_repeats_total").label("tool", &tools),
        Family::counter("lifeline_tool_answers_late_total"),
        Family::counter("lifeline_tool_calls_refused_total")
            .label("reason", &["per_call", "transfers"]),
        // The delivery worker (src/worker).
        Family::counter("lifeline_deliveries_total").label(
            "outcome",
            &["delivered", "retry", "rejected", "dead_letter", "deferred"],
        ),
        Family::histogram("lifeline_delivery_latency_seconds"),
        Family::counter("lifeline_dead_letters_total"),
        Family::counter("lifeline_unalerted_dead_letters_total"),
        Family::counter("lifeline_alerts_total")
            .label("channel", &["sms", "webhook"])
            .label("outcome", &["sent", "failed"]),
        Family::counter("lifeline_leases_rescued_total"),
        // The APIs lifeline calls (src/telephony).
        Family::counter("lifeline_circuit_transitions_total")
            .label("api", &apis)
            .label("to", &["closed", "open", "half_open"]),
        Family::counter("lifeline_twilio_requests_total").label(
            "outcome",
            &[
                "ok",
                "circuit_open",
                "timeout",
                "network",
                "retryable",
                "call_gone",
                "rejected",
            ],
        ),
        Family::counter("lifeline_ultravox_requests_total")
            .label("op", &["create_agent_call", "create_call", "get_agent"])
            .label(
                "outcome",
                &[
                    "ok",
                    "circuit_open",
                    "timeout",
                    "network",
                    "bad_response",
                    "unavailable",
                    "refused",
                ],
            ),
        // Sockets and listeners (src/serve, src/ingress).
        Family::counter("lifeline_accept_errors_total"),
        Family::counter("lifeline_connections_refused_total"),
        Family::counter("lifeline_connections_timed_out_total"),
        Family::counter("lifeline_connections_evicted_total").label(
            "reason",
            &["address", "pending", "total", "descriptors", "shutdown"],
        ),
        Family::counter("lifeline_jambonz_frames_too_large_total"),
        Family::counter("lifeline_malformed_frames_total")
            .label("socket", &["jambonz", "ultravox"])
            .label("answered", &["true", "false"]),
        Family::counter("lifeline_ultravox_connections_refused_total"),
        Family::counter("lifeline_http_tool_refused_total").label("reason", &["unauthorized"]),
        Family::counter("lifeline_calls_total").label("platform", &["twilio"]),
        Family::counter("lifeline_twilio_incoming_repeats_total")
            .label("outcome", &["fallback", "connected"]),
        Family::counter("lifeline_call_setup_fallbacks_total").label("kind", &["dial", "record"]),
        // Recovery (src/reconciler.rs, the journal).
        Family::counter("lifeline_reconciled_total")
            .label("what", &["transfer_attempt", "invocation"]),
        Family::counter("lifeline_journal_records_total").label(
            "op",
            &[
                "upsert_call",
                "app_started",
                "call_status",
                "ultravox_link",
                "call_event",
                "begin_invocation",
                "finish_invocation",
                "start_transfer",
                "finish_transfer",
                "transfer_answered",
                "callback_request",
            ],
        ),
        Family::counter("lifeline_journal_replayed_total"),
        Family::counter("lifeline_journal_replays_total"),
        Family::counter("lifeline_journal_set_aside_total"),
        // The store (SQLite's commit batches, PostgreSQL's shared log statements) and the
        // dashboard.
        Family::histogram("lifeline_log_commit_batch_size"),
        Family::histogram("lifeline_log_batch_size"),
        Family::counter("lifeline_sqlite_checkpoints_total")
            .label("by", &["checkpointer", "log_writer"]),
        Family::counter("lifeline_sqlite_wal_syncs_total"),
        Family::counter("lifeline_admin_logins_total").label("outcome", &["ok", "failed"]),
    ]
}

/// Registers every series of [`families`] in the installed recorder: counters at 0,
/// histograms without samples (rendered with zero counts).
pub(crate) fn preregister() {
    for family in families() {
        for labels in family.label_sets() {
            match family.kind {
                Kind::Counter => metrics::counter!(family.name, labels).increment(0),
                Kind::Histogram => {
                    // Registering is enough: the exporter renders every registered histogram.
                    let _ = metrics::histogram!(family.name, labels);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// Families whose label values are open-ended (see the module's documentation).
    const NOT_PREREGISTERED: [&str; 2] = [
        "lifeline_text_sanitized_total",
        "lifeline_twilio_webhooks_refused_total",
    ];

    /// The names of the counters and histograms recorded anywhere under `dir`: each `counter!`
    /// and `histogram!` with a literal name (on the macro's line or the next).
    fn recorded_names(dir: &Path, names: &mut BTreeSet<(String, Kind)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                recorded_names(&path, names);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Spelled in two parts, so that this scan does not find its own patterns.
            for (macro_name, kind) in [
                (concat!("counter", "!("), Kind::Counter),
                (concat!("histogram", "!("), Kind::Histogram),
            ] {
                for (at, _) in text.match_indices(macro_name) {
                    if text[..at].ends_with("describe_") {
                        continue;
                    }
                    let rest = text[at + macro_name.len()..].trim_start();
                    // A name that is not a literal is this module's own registration.
                    let Some(rest) = rest.strip_prefix('"') else {
                        continue;
                    };
                    let name = &rest[..rest.find('"').unwrap()];
                    names.insert((name.to_string(), kind));
                }
            }
        }
    }

    #[test]
    fn every_counter_and_histogram_the_code_records_is_registered_at_start() {
        let mut recorded = BTreeSet::new();
        recorded_names(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut recorded,
        );
        assert!(
            recorded.contains(&("lifeline_tool_calls_total".to_string(), Kind::Counter)),
            "the scan found no tool-call counter: {recorded:?}"
        );
        let registered: BTreeSet<(String, Kind)> = families()
            .into_iter()
            .map(|f| (f.name.to_string(), f.kind))
            .collect();
        let missing: Vec<_> = recorded
            .iter()
            .filter(|(name, _)| !NOT_PREREGISTERED.contains(&name.as_str()))
            .filter(|r| !registered.contains(r))
            .collect();
        assert!(
            missing.is_empty(),
            "recorded but not registered at start: {missing:?}"
        );
        let stale: Vec<_> = registered
            .iter()
            .filter(|r| !recorded.contains(r))
            .collect();
        assert!(stale.is_empty(), "registered but never recorded: {stale:?}");
    }

    #[test]
    fn every_combination_of_label_values_is_registered() {
        let calls = families()
            .into_iter()
            .find(|f| f.name == "lifeline_tool_calls_total")
            .unwrap();
        let sets = calls.label_sets();
        // (3 tools + unknown) x 3 platforms x (success + 8 error kinds)
        assert_eq!(sets.len(), 4 * 3 * 9);
        let rendered: BTreeSet<String> = sets
            .iter()
            .map(|set| {
                set.iter()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(rendered.len(), sets.len(), "no combination twice");
        assert!(rendered.contains("tool=transfer,platform=twilio,status=rate_limited"));
        assert!(rendered.contains("tool=unknown,platform=ultravox,status=validation"));
        let plain = families()
            .into_iter()
            .find(|f| f.name == "lifeline_durable_log_seconds")
            .unwrap();
        assert_eq!(plain.label_sets(), vec![Vec::<Label>::new()]);
    }
}
