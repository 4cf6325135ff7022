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
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let unavailable = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "reason": reason })),
        )
    };
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "not ready: database unreachable");
        return unavailable("database unreachable".into());
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
