//! One Jambonz call's socket: every message acked that wants an ack, tool calls run through the
//! pipeline concurrently, transfers driven through the dial hooks.
//!
//! Rules from the protocol reference that shape this file: never close with 1000 mid-call (Jambonz
//! would stop talking to us but keep the call); ack within 5 s or the call fails; frames over
//! 24 KiB kill the socket; malformed frames are logged and never end the socket.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use chrono::Utc;
use futures_util::FutureExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use crate::AppState;
use crate::config::Tenant;
use crate::phone::{E164, mask};
use crate::protocol::jambonz::{
    self as wire, CallInfo, DialResult, Envelope, SessionData, ToolCallData, hooks,
};
use crate::store::{CallRow, CallStatusUpdate, NewCall, NewCallEvent, StoreError};
use crate::telephony::jambonz::JambonzCallControl;
use crate::tools::pipeline::CallContext;
use crate::tools::transfer::{self, AgentFailure, DialNext};
use crate::tools::{Platform, ToolInvocation};

/// Frames queued for the socket by tool tasks.
const OUTBOUND_QUEUE: usize = 32;

struct Session {
    state: AppState,
    /// Tenants whose credentials the socket presented.
    candidates: Vec<Arc<Tenant>>,
    tenant: Option<Arc<Tenant>>,
    call_sid: Option<String>,
    call: Option<Arc<CallRow>>,
    /// A call whose session ack is being sent: marked started once it is on the wire.
    ack_in_flight: Option<Uuid>,
    out: mpsc::Sender<String>,
}

/// Serves one socket until Jambonz closes it, it drops, or the process shuts down.
pub async fn serve(mut socket: WebSocket, state: AppState, candidates: Vec<Arc<Tenant>>) {
    let (out_tx, mut out_rx) = mpsc::channel::<String>(OUTBOUND_QUEUE);
    let mut ping = tokio::time::interval(state.config.jambonz.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut shutdown = state.shutdown.clone();
    let mut session = Session {
        state,
        candidates,
        tenant: None,
        call_sid: None,
        call: None,
        ack_in_flight: None,
        out: out_tx,
    };
    metrics::gauge!("lifeline_jambonz_sockets_open").increment(1.0);
    let span = info_span!("jambonz_socket", call = tracing::field::Empty);
    async {
        loop {
            tokio::select! {
                incoming = socket.recv() => match incoming {
                    // Boxed: the handling future is large and lives only while a message is
                    // handled, instead of inside every idle socket's task.
                    Some(Ok(Message::Text(text))) => {
                        if !Box::pin(session.answer(&mut socket, text.as_str())).await { return; }
                    }
                    // The feature-server marks text as binary by mistake; read it as text.
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => {
                            if !Box::pin(session.answer(&mut socket, text)).await { return; }
                        }
                        Err(_) => warn!("ignored a binary frame that is not UTF-8"),
                    },
                    Some(Ok(Message::Close(frame))) => {
                        debug!(code = frame.as_ref().map(|f| f.code), "jambonz closed the socket");
                        return;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "jambonz socket error");
                        return;
                    }
                    None => return,
                },
                Some(frame) = out_rx.recv() => {
                    if !send(&mut socket, frame).await { return; }
                }
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() { return; }
                }
                _ = shutdown.changed() => {
                    // 1001, not 1000: Jambonz then reconnects (to another instance) and the
                    // call goes on; 1000 would make it stop talking to us for good.
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
    metrics::gauge!("lifeline_jambonz_sockets_open").decrement(1.0);
}

async fn send(socket: &mut WebSocket, frame: String) -> bool {
    if frame.len() > wire::MAX_FRAME_BYTES {
        // Jambonz would drop the socket and lose the message; refuse to send it instead.
        error!(bytes = frame.len(), "frame over 24 KiB not sent");
        return true;
    }
    socket.send(Message::Text(frame.into())).await.is_ok()
}

impl Session {
    /// Handles one frame and sends its replies; false when the socket is gone.
    async fn answer(&mut self, socket: &mut WebSocket, text: &str) -> bool {
        for frame in self.handle_guarded(text).await {
            if !send(socket, frame).await {
                return false;
            }
        }
        if let Some(call_id) = self.ack_in_flight.take() {
            // Only now: if the socket dropped before the ack left, Jambonz's reconnect must
            // get the verbs again (its ack then stands for the lost session:new ack).
            if let Err(e) = self.state.store.mark_app_started(call_id, Utc::now()).await {
                error!(error = %e, "could not mark the call started");
            }
        }
        true
    }

    /// Handles one frame; a bug in one message's handling is logged and the socket goes on.
    async fn handle_guarded(&mut self, text: &str) -> Vec<String> {
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, bytes = text.len(), "ignored a malformed jambonz frame");
                return Vec::new();
            }
        };
        let msgid = envelope.msgid.clone();
        let wants_ack = envelope.wants_ack();
        match AssertUnwindSafe(self.handle(envelope)).catch_unwind().await {
            Ok(frames) => frames,
            Err(_) => {
                error!("handling a jambonz message panicked");
                // Still ack, or Jambonz fails the call after 5 s.
                match (wants_ack, msgid) {
                    (true, Some(id)) => vec![wire::ack(&id, None)],
                    _ => Vec::new(),
                }
            }
        }
    }

    async fn handle(&mut self, env: Envelope) -> Vec<String> {
        let msgid = env.msgid.clone().unwrap_or_default();
        match env.kind.as_str() {
            "session:new" | "session:reconnect" => {
                let reconnect = env.kind == "session:reconnect";
                vec![self.on_session(&msgid, &env, reconnect).await]
            }
            "llm:tool-call" => {
                self.on_tool_call(&env);
                Vec::new()
            }
            "verb:hook" => vec![self.on_verb_hook(&msgid, &env).await],
            "dial:confirm" => vec![self.on_dial_confirm(&msgid).await],
            "call:status" => {
                self.on_call_status(&env).await;
                Vec::new()
            }
            "llm:event" => {
                self.on_llm_event(&env).await;
                Vec::new()
            }
            "jambonz:error" => {
                // Not `content`: it echoes our own frame, which may hold a caller's name.
                let error = env
                    .data
                    .get("error")
                    .or_else(|| env.data.get("msg"))
                    .cloned();
                let details = env.data.get("details").cloned();
                let verb = env.data.get("verb").cloned();
                warn!(error = ?error, details = ?details, verb = ?verb, "jambonz reported an error");
                self.event(
                    "jambonz_error",
                    json!({ "error": error, "details": details, "verb": verb }),
                )
                .await;
                Vec::new()
            }
            "verb:status" | "tts:streaming-event" | "tts:tokens-result" => Vec::new(),
            other if env.wants_ack() => {
                debug!(kind = other, "acknowledged without action");
                vec![wire::ack(&msgid, None)]
            }
            other => {
                warn!(kind = other, "ignored an unknown jambonz message type");
                Vec::new()
            }
        }
    }

    async fn on_session(&mut self, msgid: &str, env: &Envelope, reconnect: bool) -> String {
        let data: SessionData = serde_json::from_value(env.data.clone())
            .inspect_err(|e| warn!(category = ?e.classify(), "unreadable session data"))
            .unwrap_or_default();
        let Some(call_sid) = data.call_sid.clone().or_else(|| env.call_sid.clone()) else {
            warn!("session without a call_sid");
            return wire::ack(msgid, Some(vec![wire::hangup()]));
        };
        tracing::Span::current().record("call", call_sid.as_str());
        self.call_sid = Some(call_sid.clone());
        let store = self.state.store.clone();
        let existing = store
            .find_call(Platform::Jambonz, &call_sid)
            .await
            .unwrap_or_else(|e| {
                error!(error = %e, "could not look up the call");
                None
            });
        // A known call stays with its tenant: credentials of another tenant get nothing of it.
        let tenant = match &existing {
            Some(c) => self
                .candidates
                .iter()
                .find(|t| t.id == c.tenant_id)
                .cloned(),
            None => resolve_tenant(&self.candidates, &data),
        };
        let Some(tenant) = tenant else {
            error!(
                to = %mask(data.to.as_deref().unwrap_or("")),
                "no tenant for this call among those the credentials allow"
            );
            return wire::ack(
                msgid,
                Some(vec![
                    wire::say("Sorry, this line is not available. Goodbye."),
                    wire::hangup(),
                ]),
            );
        };
        self.tenant = Some(tenant.clone());

        if reconnect
            && existing
                .as_ref()
                .is_some_and(|c| c.app_started_at.is_some())
        {
            info!("call resumed on a new socket");
            self.call = existing.map(Arc::new);
            self.event("reconnected", json!({})).await;
            return wire::ack(msgid, None);
        }

        let call = match existing {
            Some(c) => Ok(c),
            None => {
                store
                    .upsert_call(&NewCall {
                        id: Uuid::now_v7(),
                        tenant_id: tenant.id.clone(),
                        platform: Platform::Jambonz,
                        call_ref: call_sid.clone(),
                        from_number: data.from.clone(),
                        to_number: data.to.clone(),
                        direction: data.direction.clone().unwrap_or_else(|| "inbound".into()),
                        status: data.call_status.clone().unwrap_or_else(|| "trying".into()),
                        account_sid: data.account_sid.clone(),
                        application_sid: data.application_sid.clone(),
                        started_at: Utc::now(),
                    })
                    .await
            }
        };
        match call {
            Ok(call) => {
                self.ack_in_flight = Some(call.id);
                self.call = Some(Arc::new(call));
            }
            // The caller must still get the agent; tools will work without the call row
            // except transfers, which need it.
            Err(e) => error!(error = %e, "could not record the call"),
        }
        info!(
            tenant = %tenant.id,
            from = %mask(data.from.as_deref().unwrap_or("")),
            reconnect,
            "call started"
        );
        let facts = crate::prompt_context::CallFacts {
            call_sid: &call_sid,
            from: data.from.as_deref(),
            to: data.to.as_deref(),
        };
        let verbs = wire::session_verbs(&tenant, &facts, Utc::now());
        wire::ack(msgid, Some(verbs))
    }

    fn on_tool_call(&self, env: &Envelope) {
        let data: ToolCallData = match serde_json::from_value(env.data.clone()) {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "malformed llm:tool-call");
                return;
            }
        };
        let (Some(tenant), Some(call_sid)) = (self.tenant.clone(), self.call_sid.clone()) else {
            warn!("tool call before session:new");
            let _ = self.out.try_send(wire::tool_output(
                &data.tool_call_id,
                r#"{"error":"not_found","message":"the call has not started","retryable":true}"#,
            ));
            return;
        };
        let call = self.call.clone();
        let pipeline = self.state.pipeline.clone();
        let out = self.out.clone();
        let task = async move {
            let control = JambonzCallControl::new();
            let invocation = ToolInvocation {
                platform: Platform::Jambonz,
                call_ref: call_sid,
                invocation_id: Some(data.tool_call_id.clone()),
                tool_name: data.name,
                arguments: data.args,
            };
            let ctx = CallContext {
                tenant: &tenant,
                call: call.as_deref(),
                control: &control,
            };
            let result = pipeline.run(&invocation, &ctx).await;
            let text = match &result {
                Ok(output) => output.message.clone(),
                Err(e) => e.model_text(),
            };
            // The answer first, while the llm verb still runs; then the commands it asked for.
            if out
                .send(wire::tool_output(&data.tool_call_id, &text))
                .await
                .is_err()
            {
                warn!("socket gone before the tool output was sent");
                return;
            }
            for command in control.take_commands() {
                if out.send(command).await.is_err() {
                    warn!("socket gone before a call command was sent");
                    return;
                }
            }
        };
        // In the socket's span, which names the call: a lost answer is logged with its call.
        tokio::spawn(task.in_current_span());
    }

    async fn on_verb_hook(&mut self, msgid: &str, env: &Envelope) -> String {
        match env.hook.as_deref() {
            Some(hooks::LLM_COMPLETE) => {
                let reason = env
                    .data
                    .get("completion_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                info!(completion_reason = %reason, "agent session ended");
                self.event("llm_complete", json!({ "completion_reason": reason }))
                    .await;
                if wire::is_agent_failure(&reason) {
                    return wire::ack(msgid, self.on_agent_failure(&reason).await);
                }
                // Empty: verbs here would replace a transfer we just started.
                wire::ack(msgid, None)
            }
            Some(hooks::DIAL_ACTION) => {
                // Unreadable means unanswered: the caller then gets the next target or a
                // callback, never silence.
                let result: DialResult = serde_json::from_value(env.data.clone())
                    .inspect_err(|e| warn!(category = ?e.classify(), "unreadable dial result"))
                    .unwrap_or_default();
                let verbs = self.on_dial_action(&result).await;
                wire::ack(msgid, Some(verbs))
            }
            other => {
                debug!(hook = other.unwrap_or(""), "verb hook acknowledged");
                wire::ack(msgid, None)
            }
        }
    }

    async fn on_dial_action(&mut self, result: &DialResult) -> Vec<Value> {
        let (Some(tenant), Some(call)) = (self.tenant.clone(), self.call.clone()) else {
            warn!("dial result for a call we do not know");
            return vec![wire::hangup()];
        };
        let sip = result.dial_sip_status.and_then(|s| i32::try_from(s).ok());
        let next = transfer::on_dial_result(
            self.state.store.as_ref(),
            &tenant,
            &call,
            result.answered(),
            result.dial_call_status.as_deref(),
            sip,
        )
        .await;
        match next {
            Ok(DialNext::Connected) => vec![wire::hangup()],
            Ok(DialNext::Ring(plan)) => vec![wire::say(&plan.announcement), wire::dial(&plan)],
            Ok(DialNext::CallbackPromised { last4 }) => {
                vec![
                    wire::say(&transfer::callback_promise(&last4)),
                    wire::hangup(),
                ]
            }
            Ok(DialNext::NoTransfer) => {
                warn!("dial result with no transfer ringing");
                vec![wire::hangup()]
            }
            Err(e) => self.dial_result_unrecorded(e),
        }
    }

    /// The agent died mid-call: verbs that keep the caller from being dropped.
    async fn on_agent_failure(&self, reason: &str) -> Option<Vec<Value>> {
        let (Some(tenant), Some(call)) = (&self.tenant, &self.call) else {
            return None;
        };
        match transfer::on_agent_failure(self.state.store.as_ref(), tenant, call, reason).await {
            Ok(AgentFailure::Ring(plan)) => {
                Some(vec![wire::say(&plan.announcement), wire::dial(&plan)])
            }
            Ok(AgentFailure::MessageTaken) => Some(vec![
                wire::say(transfer::MESSAGE_ALREADY_TAKEN),
                wire::hangup(),
            ]),
            Ok(AgentFailure::AlreadyTransferring) => None,
            Err(e) => {
                // Nothing recorded, but the team can still be rung.
                error!(error = %e, "could not record the fallback transfer");
                Some(vec![
                    wire::say(transfer::ANNOUNCE_AGENT_FAILED),
                    wire::dial(&transfer::plan_without_record(tenant)),
                ])
            }
        }
    }

    /// The outcome could not be written: promise nothing we did not record.
    fn dial_result_unrecorded(&self, e: StoreError) -> Vec<Value> {
        error!(error = %e, "could not record the dial result");
        vec![
            wire::say(
                "I'm sorry, we could not reach our on-call team. Please call again, or contact \
                 your nearest emergency clinic.",
            ),
            wire::hangup(),
        ]
    }

    async fn on_dial_confirm(&self, msgid: &str) -> String {
        let (Some(tenant), Some(call)) = (&self.tenant, &self.call) else {
            return wire::ack(msgid, None);
        };
        match self.state.store.dialing_transfer(call.id).await {
            Ok(Some(attempt)) => wire::ack(
                msgid,
                Some(vec![wire::say(&transfer::whisper(tenant, &attempt))]),
            ),
            Ok(None) => wire::ack(msgid, None),
            Err(e) => {
                error!(error = %e, "could not load the transfer for the whisper");
                wire::ack(msgid, None)
            }
        }
    }

    async fn on_call_status(&mut self, env: &Envelope) {
        let info: CallInfo = serde_json::from_value(env.data.clone())
            .inspect_err(|e| warn!(category = ?e.classify(), "unreadable call:status"))
            .unwrap_or_default();
        let Some(call) = self.call.clone() else {
            return;
        };
        let Some(status) = info.call_status.clone() else {
            return;
        };
        let own_leg = info
            .call_sid
            .as_deref()
            .is_none_or(|sid| sid == call.call_ref);
        if !own_leg {
            // The on-call person's leg, reported on the caller's socket.
            self.event(
                "transfer_leg_status",
                json!({ "call_status": status, "sip_status": info.sip_status }),
            )
            .await;
            return;
        }
        let ended = wire::is_final_status(&status);
        let update = CallStatusUpdate {
            event_id: Uuid::now_v7(),
            status: status.clone(),
            at: Utc::now(),
            ended,
            duration_seconds: info.duration.and_then(|d| i32::try_from(d).ok()),
            sequence: None,
            detail: json!({ "call_status": status, "sip_status": info.sip_status }),
        };
        if let Err(e) = self.state.store.record_call_status(call.id, &update).await {
            error!(error = %e, "could not record the call status");
        }
        if ended {
            info!(status = %status, "call ended");
        }
    }

    async fn on_llm_event(&self, env: &Envelope) {
        let Some(call) = &self.call else { return };
        // The createCall event carries the Ultravox call (keys snake-cased by Jambonz).
        if let Some(id) = env
            .data
            .get("call_id")
            .or_else(|| env.data.get("callId"))
            .and_then(Value::as_str)
            && let Err(e) = self.state.store.set_ultravox_call_id(call.id, id).await
        {
            error!(error = %e, "could not link the Ultravox call");
        }
    }

    async fn event(&self, kind: &str, detail: Value) {
        let Some(call) = &self.call else { return };
        let event = NewCallEvent {
            id: Uuid::now_v7(),
            call_id: call.id,
            at: Utc::now(),
            kind: kind.to_string(),
            detail,
        };
        if let Err(e) = self.state.store.append_call_event(&event).await {
            error!(error = %e, kind, "could not record a call event");
        }
    }
}

/// Picks the tenant of a new call among those the credentials allow: by application sid, then
/// by the dialled number, then the only one; an account sid that contradicts the tenant's is
/// refused.
fn resolve_tenant(candidates: &[Arc<Tenant>], data: &SessionData) -> Option<Arc<Tenant>> {
    let by_app = data.application_sid.as_deref().and_then(|sid| {
        let mut m = candidates.iter().filter(|t| {
            t.jambonz
                .as_ref()
                .and_then(|j| j.application_sid.as_deref())
                == Some(sid)
        });
        match (m.next(), m.next()) {
            (Some(t), None) => Some(t),
            _ => None,
        }
    });
    let dialled = data.to.as_deref().and_then(|to| E164::parse(to).ok());
    let by_number = || {
        dialled
            .as_ref()
            .and_then(|n| candidates.iter().find(|t| t.numbers.contains(n)))
    };
    let only = || (candidates.len() == 1).then(|| &candidates[0]);
    let tenant = by_app.or_else(by_number).or_else(only)?;
    let account_ok = match (
        tenant
            .jambonz
            .as_ref()
            .and_then(|j| j.account_sid.as_deref()),
        data.account_sid.as_deref(),
    ) {
        (Some(want), Some(got)) => want == got,
        _ => true,
    };
    account_ok.then(|| tenant.clone())
}
