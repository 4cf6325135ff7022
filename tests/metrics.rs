//! `/metrics` of a server that has just started, black box: every counter and histogram is
//! there at zero before its first event, so Prometheus' `increase()` counts that first event
//! after a restart; the first event then moves that very series.
//!
//! One test in this file, on purpose: the recorder is process-wide, and a fresh process is what
//! a restart gives (another test's tool call in the same process would not be "before any").

mod common;

use common::{Engine, TestApp};
use lifeline::tools::{ErrorKind, Platform, ToolName};

/// Every sample of `name` whose labels include `labels`.
fn samples(body: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, value)| value.parse().expect("a number"))
        .collect()
}

/// The value of the one sample of `name` with exactly these labels (panics if there is none,
/// or more than one: a registered series and the one the code records must be the same).
fn single(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(body, name, labels);
    assert_eq!(
        found.len(),
        1,
        "one sample of {name}{labels:?} expected, found {found:?}"
    );
    found[0]
}

async fn scrape(app: &TestApp) -> String {
    let response = reqwest::get(app.http_url("/metrics"))
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_shows_every_counter_and_histogram_at_zero() {
    let app = TestApp::start(Engine::Sqlite).await;
    let body = scrape(&app).await;

    let tools: Vec<&str> = ToolName::ALL
        .iter()
        .map(|t| t.as_str())
        .chain(["unknown"])
        .collect();
    let statuses: Vec<&str> = ["success"]
        .into_iter()
        .chain(ErrorKind::ALL.iter().map(|k| k.as_str()))
        .collect();
    for tool in &tools {
        for platform in Platform::ALL {
            for status in &statuses {
                let labels = [
                    ("tool", *tool),
                    ("platform", platform.as_str()),
                    ("status", *status),
                ];
                assert_eq!(
                    single(&body, "lifeline_tool_calls_total", &labels),
                    0.0,
                    "{labels:?}"
                );
            }
        }
        assert_eq!(
            single(&body, "lifeline_tool_call_seconds_count", &[("tool", tool)]),
            0.0
        );
        assert_eq!(
            single(
                &body,
                "lifeline_tool_call_seconds_bucket",
                &[("tool", tool), ("le", "+Inf")]
            ),
            0.0
        );
        assert_eq!(
            single(&body, "lifeline_tool_call_repeats_total", &[("tool", tool)]),
            0.0
        );
    }
    assert!(body.contains("# TYPE lifeline_durable_log_seconds histogram"));
    assert_eq!(
        single(&body, "lifeline_durable_log_seconds_count", &[]),
        0.0
    );
    assert_eq!(single(&body, "lifeline_tool_answers_late_total", &[]), 0.0);
    for reason in ["per_call", "transfers"] {
        assert_eq!(
            single(
                &body,
                "lifeline_tool_calls_refused_total",
                &[("reason", reason)]
            ),
            0.0
        );
    }
    for outcome in ["delivered", "retry", "rejected", "dead_letter", "deferred"] {
        assert_eq!(
            single(&body, "lifeline_deliveries_total", &[("outcome", outcome)]),
            0.0
        );
    }
    assert_eq!(
        single(&body, "lifeline_delivery_latency_seconds_count", &[]),
        0.0
    );
    assert_eq!(single(&body, "lifeline_dead_letters_total", &[]), 0.0);
    for (channel, outcome) in [("sms", "sent"), ("webhook", "failed")] {
        assert_eq!(
            single(
                &body,
                "lifeline_alerts_total",
                &[("channel", channel), ("outcome", outcome)]
            ),
            0.0
        );
    }
    assert_eq!(
        single(
            &body,
            "lifeline_circuit_transitions_total",
            &[("api", "ultravox"), ("to", "open")]
        ),
        0.0
    );
    assert_eq!(
        single(
            &body,
            "lifeline_malformed_frames_total",
            &[("socket", "jambonz"), ("answered", "true")]
        ),
        0.0
    );

    // The first tool call moves the registered series (the same one, not a second series with
    // the same labels), from 0 to 1.
    let mut fs = app.feature_server().await;
    fs.collect_info_call("inv-fresh-1", "needs a refill of her thyroid medication")
        .await;
    let body = scrape(&app).await;
    let success = [
        ("tool", "collect_info"),
        ("platform", "jambonz"),
        ("status", "success"),
    ];
    assert_eq!(single(&body, "lifeline_tool_calls_total", &success), 1.0);
    assert_eq!(
        single(
            &body,
            "lifeline_tool_call_seconds_count",
            &[("tool", "collect_info")]
        ),
        1.0
    );
    assert_eq!(
        single(&body, "lifeline_durable_log_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        single(
            &body,
            "lifeline_tool_calls_total",
            &[
                ("tool", "transfer"),
                ("platform", "jambonz"),
                ("status", "success")
            ]
        ),
        0.0
    );
    fs.close().await;
}
