//! `GET /ultravox`: the data connection Ultravox opens for a call created with
//! `dataConnection.websocketUrl`. The upgrade is accepted only with a valid
//! `X-Ultravox-Signature` for the `X-Ultravox-Call-ID` it names (fresh within a minute), and the
//! socket then belongs to that call: each `data_connection_tool_invocation` runs through the
//! pipeline and is answered with a `data_connection_tool_result`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
    rejection::WebSocketUpgradeRejection,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info_span, warn};

use super::control_for;
use crate::AppState;
use crate::config::Tenant;
use crate::protocol::salvage;
use crate::protocol::ultravox::{
    Incoming, MessageError, ToolChannel, ToolInvocationMessage, ToolResultMessage, hang_up_payload,
    headers, verify_data_connection,
};
use crate::store::CallRow;
use crate::tools::pipeline::CallScope;
use crate::tools::{Platform, ToolError, ToolInvocation, ToolResult};

/// How long an upgrade waits for its call to be recorded: Ultravox may connect the moment the
/// call is created, a few milliseconds before call setup has stored the Ultravox call id.
const CALL_RECORD_WAIT: Duration = Duration::from_secs(3);
const CALL_RECORD_POLL: Duration = Duration::from_millis(20);
/// Largest data message we accept (tool invocations are small; transcripts can grow).
const MAX_INBOUND_MESSAGE: usize = 256 * 1024;

/// The upgrade handler: signature, then the call, then the socket.
pub async fn upgrade(
    State(state): State<AppState>,
    request_headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let header = |name: &str| {
        request_headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let call_id = header(headers::CALL_ID);
    let secrets: Vec<String> = (state.config.ultravox.data_connection_secrets.iter())
        .map(|s| s.expose_secret().to_owned())
        .collect();
    if let Err(e) = verify_data_connection(
        &secrets,
        &call_id,
        &header(headers::SIGNATURE_TIMESTAMP),
        &header(headers::SIGNATURE),
        Utc::now(),
    ) {
        metrics::counter!("lifeline_ultravox_connections_refused_total").increment(1);
        warn!(reason = %e, "Ultravox data connection refused");
        return (StatusCode::UNAUTHORIZED, "invalid signature\n").into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let call = match find_call(&state, &call_id).await {
        Ok(Some(call)) => call,
        Ok(None) => {
            warn!(ultravox_call = %call_id, "data connection for a call lifeline does not know");
            return (StatusCode::NOT_FOUND, "unknown call\n").into_response();
        }
        Err(()) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response();
        }
    };
    let Some(tenant) = state.config.tenant(&call.tenant_id).cloned() else {
        error!(tenant = %call.tenant_id, "the call's tenant is no longer configured");
        return (StatusCode::NOT_FOUND, "unknown call\n").into_response();
    };
    ws.max_message_size(MAX_INBOUND_MESSAGE)
        .max_frame_size(MAX_INBOUND_MESSAGE)
        .on_upgrade(move |socket| {
            // Counted until the socket task ends, so a stopping process waits for it.
            let open = state.lifecycle.sockets.token();
            async move {
                serve(socket, state, tenant, Arc::new(call)).await;
                drop(open);
            }
        })
}

async fn find_call(state: &AppState, ultravox_call_id: &str) -> Result<Option<CallRow>, ()> {
    let deadline = tokio::time::Instant::now() + CALL_RECORD_WAIT;
    loop {
        match state.store.find_call_by_ultravox_id(ultravox_call_id).await {
            Ok(Some(call)) => return Ok(Some(call)),
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(CALL_RECORD_POLL).await;
            }
            Ok(None) => return Ok(None),
            Err(e) => {
                error!(error = %e, "could not look up the data connection's call");
                return Err(());
            }
        }
    }
}

/// Serves one call's data connection until Ultravox closes it or the process shuts down.
async fn serve(mut socket: WebSocket, state: AppState, tenant: Arc<Tenant>, call: Arc<CallRow>) {
    let (out_tx, mut out_rx) = mpsc::channel::<String>(32);
    let close_sockets = state.lifecycle.close_sockets.clone();
    metrics::gauge!("lifeline_ultravox_connections_open").increment(1.0);
    let span = info_span!("ultravox_data_connection", tenant = %tenant.id, call = %call.call_ref);
    async {
        loop {
            tokio::select! {
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        on_message(&state, &tenant, &call, &out_tx, text.as_str());
                    }
                    Some(Ok(Message::Binary(_))) => {
                        // Audio, if the call asked for it; lifeline does not.
                    }
                    Some(Ok(Message::Close(_))) | None => return,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => {
                        debug!(error = %e, "data connection error");
                        return;
                    }
                },
                Some(frame) = out_rx.recv() => {
                    if socket.send(Message::Text(frame.into())).await.is_err() {
                        warn!("data connection gone before a tool result was sent");
                        return;
                    }
                }
                // Only once this process's tool calls are done (see `Server::wait`): their
                // results go out first.
                _ = close_sockets.cancelled() => {
                    while let Ok(frame) = out_rx.try_recv() {
                        if socket.send(Message::Text(frame.into())).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: "lifeline restarting".into(),
                    }))).await;
                    return;
                }
            }
        }
    }
    .instrument(span)
    .await;
    metrics::gauge!("lifeline_ultravox_connections_open").decrement(1.0);
}

fn on_message(
    state: &AppState,
    tenant: &Arc<Tenant>,
    call: &Arc<CallRow>,
    out: &mpsc::Sender<String>,
    text: &str,
) {
    match Incoming::parse(text) {
        Ok(Incoming::ToolInvocation(message)) => {
            let task = run_tool(
                state.clone(),
                tenant.clone(),
                call.clone(),
                out.clone(),
                message,
            );
            // In the connection's span, which names the call: what the task logs outside the
            // pipeline's own span (a lost answer) still says which call it was. Tracked, so a
            // stopping process sends the result before closing the connection.
            state.pipeline.tasks().spawn(task.in_current_span());
        }
        Ok(Incoming::CallStarted { .. }) => debug!("Ultravox call started"),
        Ok(Incoming::Error(_)) => warn!("Ultravox reported an error on the data connection"),
        Ok(Incoming::Other { kind }) => debug!(kind, "data message ignored"),
        // A tool invocation whose id can be read gets an error the model can act on; without
        // one there is nothing to answer.
        Err(e) => {
            let answer = unreadable_invocation(text, &e);
            metrics::counter!("lifeline_malformed_frames_total", "socket" => "ultravox", "answered" => if answer.is_some() { "true" } else { "false" }).increment(1);
            warn!(error = %e, answered = answer.is_some(), "unreadable data message");
            if let Some(frame) = answer {
                let out = out.clone();
                state.pipeline.tasks().spawn(async move {
                    let _ = out.send(frame).await;
                });
            }
        }
    }
}

/// The `data_connection_tool_result` (or `client_tool_result`) for a tool invocation that could
/// not be read, when its `invocationId` can be recovered.
fn unreadable_invocation(text: &str, e: &MessageError) -> Option<String> {
    const ID: [&str; 2] = ["invocationId", "invocation_id"];
    let (channel, id) = match serde_json::from_str::<Value>(text) {
        Ok(value) => {
            let channel = match value.get("type").and_then(Value::as_str) {
                Some("data_connection_tool_invocation") => ToolChannel::DataConnection,
                Some("client_tool_invocation") => ToolChannel::Client,
                _ => return None,
            };
            let id = ID.iter().find_map(|key| salvage::id_member(&value, key))?;
            (channel, id)
        }
        // Not JSON: the raw text is searched. On a data connection an invocation id means a
        // tool invocation.
        Err(_) => {
            let channel = if text.contains("\"client_tool_invocation\"") {
                ToolChannel::Client
            } else {
                ToolChannel::DataConnection
            };
            (channel, salvage::id_in_text(text, &ID)?)
        }
    };
    let why = match e {
        MessageError::NotJson(_) => "the message is not valid JSON".to_string(),
        MessageError::MissingField { field, .. } => format!("it has no {field}"),
        MessageError::InvalidField {
            field, expected, ..
        } => format!("{field} must be {expected}"),
        MessageError::NotAnObject | MessageError::MissingType => {
            "the message is not a tool invocation".to_string()
        }
    };
    let mut error = ToolError::validation(format!(
        "the tool call could not be read ({why}); call the tool again with valid JSON arguments"
    ));
    // The same call, sent again intact, will work.
    error.retryable = true;
    Some(result_message(channel, id, &Err(error)).to_json())
}

async fn run_tool(
    state: AppState,
    tenant: Arc<Tenant>,
    call: Arc<CallRow>,
    out: mpsc::Sender<String>,
    message: ToolInvocationMessage,
) {
    // Keyed by the carrying platform's call, like the call's HTTP tools, so repeats and
    // limits hold across both ways in.
    let platform = Platform::from_name(&call.platform).unwrap_or(Platform::Ultravox);
    let invocation = tool_invocation(&message, platform, &call.call_ref);
    let control = control_for(&state, Some(&call));
    let scope = CallScope {
        tenant,
        call: Some(call),
        control,
    };
    let result = state.pipeline.run(invocation, scope).await;
    if out.send(reply(&message, &result).to_json()).await.is_err() {
        // A transfer ends the Ultravox call: its socket may be gone, and that is fine.
        debug!("data connection closed before the tool result");
    }
}

/// The platform-neutral invocation of a tool call read from the data connection of the call
/// `call_ref` (from our own records, never from the message), keyed by `platform`.
fn tool_invocation(
    message: &ToolInvocationMessage,
    platform: Platform,
    call_ref: &str,
) -> ToolInvocation {
    ToolInvocation {
        platform,
        call_ref: call_ref.to_owned(),
        invocation_id: Some(message.invocation_id.clone()),
        tool_name: message.tool_name.clone(),
        arguments: message.parameters.clone(),
    }
}

/// The result message answering `message` on the channel it came on.
fn reply(message: &ToolInvocationMessage, result: &ToolResult) -> ToolResultMessage {
    result_message(message.channel, message.invocation_id.clone(), result)
}

/// Translates lifeline's result of a tool call.
///
/// A failed tool is sent as a *result* holding [`ToolError::model_text`], not as
/// `errorType`: Ultravox hides `errorMessage` from the model, and the model needs the kind
/// and the retry hint to tell the caller something true (or take a message instead). A
/// tool that ends the call answers `hang-up` with `{"strict":true}`, since the agent has
/// already said goodbye and the caller must not keep the line open by talking.
fn result_message(
    channel: ToolChannel,
    invocation_id: impl Into<String>,
    result: &ToolResult,
) -> ToolResultMessage {
    match result {
        Ok(output) if output.ends_call => {
            ToolResultMessage::hang_up(channel, invocation_id, hang_up_payload(true, None))
        }
        Ok(output) => ToolResultMessage::result(channel, invocation_id, output.message.clone()),
        Err(error) => ToolResultMessage::result(channel, invocation_id, error.model_text()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::tools::{ErrorKind, ToolOutput};

    const CALL_ID: &str = "550e8400-e29b-41d4-a716-446655440000";
    const FROM_ULTRAVOX: &str = include_str!("../../../fixtures/ultravox/ultravox.jsonl");

    #[test]
    fn lifeline_results_translate_for_the_model() {
        let reply = |result: ToolResult| {
            let inv = ToolInvocationMessage {
                channel: ToolChannel::DataConnection,
                tool_name: "transfer".into(),
                invocation_id: "inv-7".into(),
                parameters: json!({}),
            };
            serde_json::from_str::<Value>(&reply(&inv, &result).to_json()).unwrap()
        };
        let output = |ends_call| ToolOutput {
            message: "Transferring the caller now.".into(),
            data: json!({"secret": "not for the model"}),
            ends_call,
        };
        assert_eq!(
            reply(Ok(output(false))),
            json!({
                "type": "data_connection_tool_result",
                "invocationId": "inv-7",
                "result": "Transferring the caller now.",
            })
        );
        assert_eq!(
            reply(Ok(output(true))),
            json!({
                "type": "data_connection_tool_result",
                "invocationId": "inv-7",
                "result": r#"{"strict":true}"#,
                "responseType": "hang-up",
            })
        );
        // A failure reaches the model as a result (errorMessage would be hidden from it).
        let error = ToolError::new(ErrorKind::Timeout, "the transfer took too long");
        let v = reply(Err(error.clone()));
        assert_eq!(v["result"], Value::from(error.model_text()));
        assert!(v.get("errorType").is_none() && v.get("errorMessage").is_none());
        let model: Value = serde_json::from_str(v["result"].as_str().unwrap()).unwrap();
        assert_eq!(model["error"], "timeout");
        assert_eq!(model["retryable"], true);
    }

    #[test]
    fn an_invocation_becomes_a_tool_invocation_of_the_authenticated_call() {
        let Incoming::ToolInvocation(msg) =
            Incoming::parse(FROM_ULTRAVOX.lines().nth(2).unwrap()).unwrap()
        else {
            panic!("fixture 3 is a tool invocation");
        };
        let inv = tool_invocation(&msg, Platform::Ultravox, CALL_ID);
        assert_eq!(inv.platform, Platform::Ultravox);
        assert_eq!(inv.call_ref, CALL_ID);
        assert_eq!(inv.tool_name, "transferCall");
        assert_eq!(inv.invocation_key(), "id:inv-42");
        assert_eq!(inv.arguments["transferReason"], "billing");
        assert_eq!(
            ToolChannel::DataConnection.result_type(),
            "data_connection_tool_result"
        );
        assert_eq!(
            ToolChannel::Client.invocation_type(),
            "client_tool_invocation"
        );
    }
}
