//! `GET /metrics`: Prometheus text exposition of everything the code records with the `metrics`
//! macros (tool calls, latencies, sockets, deliveries, alerts, circuit transitions), plus gauges
//! read from the database and the circuit breaker registry at scrape time (queue depth by
//! status and urgency, the oldest waiting request, alerts by status, circuit states).
//!
//! Every surface authenticates: with `ops.metrics_token` configured a scraper must present it
//! as a bearer token; without one, only clients on the loopback interface may scrape (a
//! sidecar or an agent on the same host), and never through a proxy.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::breaker::{self, BreakerState};
use crate::config::OpsSettings;
use crate::store::{ALERT_KINDS, ALERT_STATUSES, REQUEST_STATUSES, URGENCIES};

pub(crate) mod series;

/// Histogram buckets, in seconds: tool calls and durable-log commits take milliseconds, a
/// frontend POST up to its timeout (10 s by default).
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 7.5, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody scrapes (they are
/// buffered until then).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// How long a scrape waits for the database; a slow database must not hang the scraper.
const STATS_TIMEOUT: Duration = Duration::from_secs(3);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder as the process's global `metrics` recorder, once; later
/// calls (every server a test process starts) return the same handle. If another recorder was
/// installed first, the handle still renders, but only the gauges it is given directly.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&LATENCY_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        match metrics::set_global_recorder(recorder) {
            Ok(()) => describe(),
            Err(e) => tracing::warn!(
                error = %e,
                "another metrics recorder is installed: /metrics will miss what it records"
            ),
        }
        let upkeep = handle.clone();
        // A thread, not a task: servers (and tests) come and go with their runtimes, the
        // recorder stays for the whole process.
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread: histograms fold at scrapes only");
        }
        handle
    })
}

/// Help texts, and a zero for every series that must exist before its first event (a rate over
/// a series that appears only with its first dead letter hides that first one): the gauges
/// here, every counter and histogram in [`series`].
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "lifeline_tool_calls_total",
        "Tool invocations by canonical tool, platform and outcome status"
    );
    describe_histogram!(
        "lifeline_tool_call_seconds",
        metrics::Unit::Seconds,
        "Time from receiving a tool call to its answer, by tool"
    );
    describe_histogram!(
        "lifeline_durable_log_seconds",
        metrics::Unit::Seconds,
        "Time to commit a tool call's log row before running it"
    );
    describe_gauge!(
        "lifeline_jambonz_sockets_open",
        "Open Jambonz call WebSockets"
    );
    describe_gauge!(
        "lifeline_ultravox_connections_open",
        "Open Ultravox data connections"
    );
    describe_counter!(
        "lifeline_deliveries_total",
        "Callback delivery attempts by outcome"
    );
    describe_histogram!(
        "lifeline_delivery_latency_seconds",
        metrics::Unit::Seconds,
        "Duration of callback POSTs to clinic frontends"
    );
    describe_counter!(
        "lifeline_dead_letters_total",
        "Callback requests that became dead letters"
    );
    describe_counter!(
        "lifeline_alerts_total",
        "Alert messages sent, by channel and outcome"
    );
    describe_gauge!(
        "lifeline_circuit_state",
        "Circuit breaker state by API: 0 closed, 1 open, 2 half-open"
    );
    describe_gauge!(
        "lifeline_callback_requests",
        "Callback requests by status (resolved: closed by staff) and urgency, read at scrape time"
    );
    describe_gauge!(
        "lifeline_callback_requests_in_flight",
        "Callback requests a worker is posting right now"
    );
    describe_gauge!(
        "lifeline_callback_oldest_pending_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest callback request waiting for delivery (0 when none waits)"
    );
    describe_gauge!(
        "lifeline_alert_queue",
        "Alerts by kind and status, read at scrape time"
    );
    describe_gauge!(
        "lifeline_metrics_database_up",
        "1 if the last scrape could read the queue from the database, else 0"
    );
    metrics::gauge!("lifeline_jambonz_sockets_open").increment(0.0);
    metrics::gauge!("lifeline_ultravox_connections_open").increment(0.0);
    describe_gauge!(
        "lifeline_journal_active",
        "1 while the call path writes to the local journal (the database failed or the replay is not done)"
    );
    describe_gauge!(
        "lifeline_journal_depth",
        "Records in the local journal not yet replayed into the database"
    );
    describe_gauge!(
        "lifeline_journal_oldest_timestamp_seconds",
        "When the oldest record still in the journal was written (Unix seconds; 0: none)"
    );
    describe_counter!(
        "lifeline_journal_records_total",
        "Writes of the call path made to the journal instead of the database, by operation"
    );
    describe_counter!(
        "lifeline_journal_replayed_total",
        "Journal records replayed into the database"
    );
    describe_counter!(
        "lifeline_journal_replays_total",
        "Replays that emptied the journal (writes went back to the database)"
    );
    describe_counter!(
        "lifeline_journal_set_aside_total",
        "Journal records the database refused on replay, kept in the journal directory's rejected.log"
    );
    metrics::gauge!("lifeline_journal_active").increment(0.0);
    metrics::gauge!("lifeline_journal_depth").increment(0.0);
    series::preregister();
}

/// The `/metrics` route.
pub fn routes() -> Router<AppState> {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape(State(state): State<AppState>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    if let Err(refused) = authorize(&state.config.ops, peer, request.headers()) {
        return refused.into_response();
    }
    let handle = install();
    refresh(&state).await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        handle.render(),
    )
        .into_response()
}

/// Why a scrape was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// 401: the configured token was not presented.
    Unauthorized,
    /// 403: no token is configured and the client is not local.
    Forbidden,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            Refused::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "GET /metrics needs the configured token: Authorization: Bearer <ops.metrics_token>",
            ),
            Refused::Forbidden => (
                StatusCode::FORBIDDEN,
                "forbidden",
                "without ops.metrics_token (or LIFELINE_METRICS_TOKEN) only local clients may scrape GET /metrics",
            ),
        };
        let mut response = (
            status,
            axum::Json(json!({ "error": error, "message": message })),
        )
            .into_response();
        if self == Refused::Unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lifeline metrics\""),
            );
        }
        response
    }
}

/// Lets the scrape through, or says why not.
fn authorize(
    ops: &OpsSettings,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> Result<(), Refused> {
    match &ops.metrics_token {
        Some(token) => {
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    let (scheme, value) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
                });
            match presented {
                Some(p) if bool::from(p.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
                presented => {
                    tracing::warn!(
                        peer = ?peer,
                        token_present = presented.is_some(),
                        "metrics scrape refused: wrong or missing bearer token"
                    );
                    Err(Refused::Unauthorized)
                }
            }
        }
        None => {
            // A proxy on the same host makes every client look local: a forwarded request is
            // not a local scraper.
            let forwarded = ["forwarded", "x-forwarded-for", "x-real-ip"]
                .iter()
                .any(|h| headers.contains_key(*h));
            let local = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
            if local && !forwarded {
                Ok(())
            } else {
                tracing::warn!(peer = ?peer, forwarded, "metrics scrape refused: not a local client");
                Err(Refused::Forbidden)
            }
        }
    }
}

/// Sets the gauges that are read at scrape time. Every known combination is set, zeros
/// included, so a series whose last request went away drops to 0 instead of keeping its last
/// value.
async fn refresh(state: &AppState) {
    let now = chrono::Utc::now();
    match tokio::time::timeout(STATS_TIMEOUT, state.store.queue_stats(now)).await {
        Ok(Ok(stats)) => {
            for status in REQUEST_STATUSES {
                for urgency in URGENCIES {
                    metrics::gauge!("lifeline_callback_requests", "status" => status, "urgency" => urgency)
                        .set(stats.requests(status, urgency) as f64);
                }
            }
            metrics::gauge!("lifeline_callback_requests_in_flight").set(stats.in_flight as f64);
            metrics::gauge!("lifeline_callback_oldest_pending_seconds")
                .set(stats.oldest_pending_age().as_secs_f64());
            for kind in ALERT_KINDS {
                for status in ALERT_STATUSES {
                    metrics::gauge!("lifeline_alert_queue", "kind" => kind, "status" => status)
                        .set(stats.alerts(kind, status) as f64);
                }
            }
            metrics::gauge!("lifeline_metrics_database_up").set(1.0);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: could not read the queue");
            metrics::gauge!("lifeline_metrics_database_up").set(0.0);
        }
        Err(_) => {
            tracing::warn!("metrics: reading the queue timed out");
            metrics::gauge!("lifeline_metrics_database_up").set(0.0);
        }
    }
    // Today's on-call figures per clinic (two days back covers any clinic's today).
    let since = now - chrono::Duration::days(2);
    match tokio::time::timeout(STATS_TIMEOUT, state.store.oncall_rows(None, since)).await {
        Ok(Ok(rows)) => crate::ops::clinic_day::export_today(&state.config, &rows, now),
        Ok(Err(e)) => tracing::warn!(error = %e, "metrics: could not read the on-call figures"),
        Err(_) => tracing::warn!("metrics: reading the on-call figures timed out"),
    }
    for (api, state) in circuit_states() {
        metrics::gauge!("lifeline_circuit_state", "api" => api).set(state.gauge_value());
    }
}

/// One state per API: the worst among its breakers (several servers in one process each have
/// their own), open before half-open before closed.
fn circuit_states() -> Vec<(&'static str, BreakerState)> {
    let severity = |s: BreakerState| match s {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    };
    let mut states: Vec<(&'static str, BreakerState)> = Vec::new();
    for status in breaker::snapshot() {
        match states.iter_mut().find(|(api, _)| *api == status.api) {
            Some((_, state)) if severity(status.state) > severity(*state) => *state = status.state,
            Some(_) => {}
            None => states.push((status.api, status.state)),
        }
    }
    states
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(token: Option<&str>) -> OpsSettings {
        OpsSettings {
            metrics_token: token.map(str::to_string),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TOKEN: &str = "scrape-token-0123456789";

    #[test]
    fn a_configured_token_is_required_from_everywhere() {
        let local: Option<SocketAddr> = Some("127.0.0.1:5000".parse().unwrap());
        let remote: Option<SocketAddr> = Some("203.0.113.9:5000".parse().unwrap());
        let ok = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        assert!(authorize(&ops(Some(TOKEN)), remote, &ok).is_ok());
        let lower = headers(&[("authorization", &format!("bearer {TOKEN}"))]);
        assert!(authorize(&ops(Some(TOKEN)), remote, &lower).is_ok());
        for bad in [
            headers(&[]),
            headers(&[("authorization", "Bearer wrong-token-0123456789")]),
            headers(&[("authorization", &format!("Basic {TOKEN}"))]),
            headers(&[("authorization", &format!("Bearer {TOKEN}x"))]),
        ] {
            let refused = authorize(&ops(Some(TOKEN)), local, &bad).unwrap_err();
            assert_eq!(refused, Refused::Unauthorized);
            let response = refused.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert!(response.headers().contains_key(header::WWW_AUTHENTICATE));
        }
    }

    #[test]
    fn without_a_token_only_direct_local_clients_may_scrape() {
        let none = ops(None);
        for local in ["127.0.0.1:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            assert!(
                authorize(&none, Some(local.parse().unwrap()), &headers(&[])).is_ok(),
                "{local}"
            );
        }
        for remote in ["10.0.0.5:1", "[2001:db8::1]:1"] {
            let refused =
                authorize(&none, Some(remote.parse().unwrap()), &headers(&[])).unwrap_err();
            assert_eq!(refused, Refused::Forbidden, "{remote}");
            assert_eq!(refused.into_response().status(), StatusCode::FORBIDDEN);
        }
        assert!(authorize(&none, None, &headers(&[])).is_err());
        let proxied = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            authorize(&none, Some("127.0.0.1:1".parse().unwrap()), &proxied),
            Err(Refused::Forbidden)
        );
    }

    #[test]
    fn the_worst_state_of_an_apis_breakers_is_published() {
        let open = breaker::CircuitBreaker::with_settings(
            "metrics-test",
            breaker::BreakerSettings {
                failure_threshold: 1,
                ..Default::default()
            },
        );
        let _closed = breaker::CircuitBreaker::new("metrics-test");
        open.acquire().unwrap().failure();
        let states = circuit_states();
        let mine: Vec<_> = states
            .iter()
            .filter(|(a, _)| *a == "metrics-test")
            .collect();
        assert_eq!(mine, [&("metrics-test", BreakerState::Open)]);
    }
}
