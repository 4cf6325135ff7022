//! `GET /healthz` (the process answers) and `GET /readyz` (the database answers and its schema
//! is the one this build expects).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;

/// Liveness: no dependency is checked, so a database outage does not get the process killed.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers a query, and every migration this build embeds is recorded
/// as applied (none failed, none changed since). Until then traffic must go elsewhere: a call
/// served against an old schema could lose its tool calls.
///
/// While the database is unreachable (or its journal is being replayed) the instance still
/// serves calls through its journal: it answers 200 with `"status": "degraded"` and says why,
/// so a load balancer keeps sending calls while operators see the state. Every check is
/// bounded by the journal's budgets: this answers within about a second.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let journal = state.journal.status();
    let degraded = |reason: String| {
        (
            StatusCode::OK,
            Json(json!({
                "status": "degraded",
                "reason": reason,
                "journal": {
                    "records": journal.depth,
                    "oldest": journal.oldest,
                    "dir": state.journal.settings().dir,
                },
            })),
        )
    };
    let unavailable = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason })),
        )
    };
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "degraded: database unreachable");
        return degraded(format!(
            "database unreachable, {} records journaled",
            journal.depth
        ));
    }
    if journal.journaling {
        return degraded(format!(
            "database answers again; {} journaled records still to replay",
            journal.depth
        ));
    }
    match state.store.migration_report().await {
        Ok(report) => match report.problem() {
            None => (StatusCode::OK, Json(json!({ "status": "ready" }))),
            Some(problem) => {
                tracing::warn!(%problem, "not ready: the schema is not this build's");
                unavailable(format!("{problem} (run `lifeline migrate`)"))
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "not ready: cannot read the applied migrations");
            unavailable(
                "migrations not applied: the migration table _sqlx_migrations cannot be read \
                 (run `lifeline migrate`)"
                    .into(),
            )
        }
    }
}
