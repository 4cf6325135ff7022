//! Ultravox HTTP tools: `POST /ultravox/tools/{tool}` and the original system's routes
//! (`/twilio/transferToOnCall`, `/twilio/collectCallerInfo`, `/twilio/hangUp`), which take the
//! same JSON bodies so existing Ultravox tool definitions keep working.
//!
//! Authentication: an API key in `X-API-Key` (an Ultravox `headerApiKey` requirement), compared
//! in constant time with the global keys and each tenant's own key. The call comes from the
//! `X-Ultravox-Call-Id` header (the `KNOWN_PARAM_CALL_ID` automatic parameter) looked up in
//! `calls`; a `call_sid` in the body is never trusted. A tool that sends no call id (the
//! original `collectNameNumberConcernPetName`) is accepted only with a tenant's own key, which
//! names the tenant.
//!
//! HTTP tools carry no invocation id: a repeat (Ultravox re-invokes a tool whose answer came
//! late) is recognised by its content within the call, and answered with the recorded result.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Timelike, Utc};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tracing::{Instrument, info_span, warn};

use super::control_for;
use crate::AppState;
use crate::config::{Config, Tenant};
use crate::ingress::auth::secrets_equal;
use crate::protocol::ultravox::{self as wire, ResponseType, headers};
use crate::tools::pipeline::CallScope;
use crate::tools::{ErrorKind, Platform, ToolError, ToolInvocation, ToolResult};

/// The header an HTTP tool's API key comes in.
pub const API_KEY_HEADER: &str = "X-API-Key";

/// `POST /ultravox/tools/{tool}`.
pub async fn by_name(
    State(state): State<AppState>,
    Path(tool): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, &tool, &headers, &body).await
}

/// `POST /twilio/transferToOnCall` (the original `transferFromAiTriageWithMetadata`).
pub async fn transfer_to_on_call(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, "transferFromAiTriageWithMetadata", &headers, &body).await
}

/// `POST /twilio/collectCallerInfo` (the original `collectNameNumberConcernPetName`).
pub async fn collect_caller_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    run(state, "collectNameNumberConcernPetName", &headers, &body).await
}

/// `POST /twilio/hangUp` (the original `hangUp`, which did nothing; this one ends the call).
pub async fn hang_up(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    run(state, "hangUp", &headers, &body).await
}

/// Whose key a request carries.
enum KeyOwner {
    /// A global key: any tenant's calls.
    Any,
    /// A tenant's own key: only that tenant's calls.
    Tenant(Arc<Tenant>),
}

fn authenticate(config: &Config, headers: &HeaderMap) -> Option<KeyOwner> {
    let given = headers.get(API_KEY_HEADER)?.to_str().ok()?;
    if given.is_empty() {
        return None;
    }
    // Every key is compared, so the time taken does not tell which one (if any) matched.
    let mut owner = None;
    for key in &config.ultravox.tool_api_keys {
        if secrets_equal(given, key.expose_secret()) && owner.is_none() {
            owner = Some(KeyOwner::Any);
        }
    }
    for tenant in &config.tenants {
        if let Some(key) = &tenant.tool_api_key
            && secrets_equal(given, key.expose_secret())
            && owner.is_none()
        {
            owner = Some(KeyOwner::Tenant(tenant.clone()));
        }
    }
    owner
}

/// An error in the HTTP tool protocol's shape (the official Ultravox example's).
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({ "status": "error", "success": false, "message": message.into() })),
    )
        .into_response()
}

async fn run(state: AppState, tool: &str, request_headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(owner) = authenticate(&state.config, request_headers) else {
        metrics::counter!("lifeline_http_tool_refused_total", "reason" => "unauthorized")
            .increment(1);
        warn!(tool, "HTTP tool refused: missing or wrong API key");
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: Invalid or missing API key",
        );
    };
    let arguments: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not valid JSON: {e}"),
                );
            }
        }
    };

    let call_header = request_headers
        .get(headers::CALL_ID)
        .map(|v| v.to_str().unwrap_or("").trim().to_string());
    let (tenant, call) = match call_header {
        Some(id) => {
            if id.is_empty()
                || id.len() > 100
                || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "X-Ultravox-Call-Id must be an Ultravox call id",
                );
            }
            let call = match state.store.find_call_by_ultravox_id(&id).await {
                Ok(Some(call)) => call,
                Ok(None) => {
                    return error(StatusCode::NOT_FOUND, format!("Call not found: {id}"));
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not look up the tool's call");
                    return tool_error(&ToolError::new(
                        ErrorKind::Database,
                        "the call could not be looked up; try the same tool again",
                    ));
                }
            };
            let tenant = match (&owner, state.config.tenant(&call.tenant_id)) {
                (_, None) => None,
                (KeyOwner::Any, Some(t)) => Some(t.clone()),
                (KeyOwner::Tenant(own), Some(t)) => (own.id == t.id).then(|| t.clone()),
            };
            // Another tenant's call looks exactly like an unknown one.
            let Some(tenant) = tenant else {
                return error(StatusCode::NOT_FOUND, format!("Call not found: {id}"));
            };
            (tenant, Some(call))
        }
        None => match owner {
            KeyOwner::Tenant(tenant) => (tenant, None),
            KeyOwner::Any => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the X-Ultravox-Call-Id header is required: give the tool the automatic \
                     parameter KNOWN_PARAM_CALL_ID in a header of that name",
                );
            }
        },
    };

    let (platform, call_ref) = match &call {
        Some(call) => (
            Platform::from_name(&call.platform).unwrap_or(Platform::Ultravox),
            call.call_ref.clone(),
        ),
        // No call to key repeats by: a ten-minute window of the tenant's own stands in, so a
        // re-invoked message is still recognised, without joining unrelated calls for long.
        None => {
            let now = Utc::now();
            (
                Platform::Ultravox,
                format!(
                    "{}:no-call:{}",
                    tenant.id,
                    now.format("%Y-%m-%dT%H:").to_string()
                        + &format!("{:02}", now.minute() / 10 * 10)
                ),
            )
        }
    };
    let invocation = ToolInvocation {
        platform,
        call_ref,
        invocation_id: None,
        tool_name: tool.to_string(),
        arguments,
    };
    let control = control_for(&state, call.as_ref());
    let span = info_span!(
        "ultravox_http_tool",
        tenant = %tenant.id,
        call = %invocation.call_ref,
        tool
    );
    let scope = CallScope {
        tenant,
        call: call.map(Arc::new),
        control,
    };
    // The effect runs in its own task: if Ultravox hangs up on this request (its tool timeout,
    // a dropped connection), axum drops this handler, but a transfer that was started still
    // reaches its dial and its outcome is still recorded.
    let result = state.pipeline.run(invocation, scope).instrument(span).await;
    reply(&result)
}

fn reply(result: &ToolResult) -> Response {
    match result {
        Ok(output) if output.ends_call => {
            let mut response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                wire::hang_up_payload(true, None),
            )
                .into_response();
            for (name, value) in wire::http_tool_response_headers(Some(ResponseType::HangUp), None)
            {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_static(value));
            }
            response
        }
        Ok(output) => (
            StatusCode::OK,
            axum::Json(json!({ "success": true, "message": output.message })),
        )
            .into_response(),
        Err(e) => tool_error(e),
    }
}

/// A failed tool: an HTTP status that says what kind of failure, and the text the model needs
/// to tell the caller something true.
fn tool_error(e: &ToolError) -> Response {
    let status = match e.kind {
        ErrorKind::Validation => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::External => StatusCode::BAD_GATEWAY,
        ErrorKind::Database => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (
        status,
        axum::Json(json!({
            "status": "error",
            "success": false,
            "error": e.kind.as_str(),
            "message": e.message,
            "retryable": e.retryable,
        })),
    )
        .into_response()
}
