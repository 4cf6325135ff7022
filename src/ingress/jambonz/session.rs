//! One Jambonz call's socket: every message acked that wants an ack, tool calls run through the
//! pipeline concurrently, transfers driven through the dial hooks.
//!
//! Rules from the protocol reference that shape this file: never close with 1000 mid-call (Jambonz
//! would stop talking to us but keep the call); ack within 5 s or the call fails; frames over
//! 24 KiB kill the socket; malformed frames are logged and never end the socket; answer the
//! peer's Close frame (Jambonz closes with 1000 at call end and expects its 1000 back, not
//! 1006); every `session:reconnect` is answered with the call's application, because the
//! feature-server makes that ack stand for a `session:new` ack it never read
//! (`lib/utils/ws-requestor.js`, "reconnecting before we received ack to session:new").

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tracing::{Instrument, debug, error, info, info_span, warn};
use uuid::Uuid;

use super::recovery::{self, LLM_COMPLETE_EVENT};
use super::session_verbs::session_verbs;
use super::{FRAGMENT, malformed};
use crate::AppState;
use crate::config::Tenant;
use crate::ingress::ws_accept::{Socket, send_text};
use crate::phone::{E164, mask};
use crate::protocol::jambonz::{
    self as wire, AgentEnd, CallInfo, DialResult, Envelope, SessionData, ToolCallData, hooks,
};
use crate::store::{CallRow, CallStatusUpdate, NewCall, NewCallEvent, StoreError};
use crate::telephony::jambonz::{JambonzCallControl, transfer_dial};
use crate::tools::pipeline::CallScope;
use crate::tools::transfer::{self, AgentFailure, DialNext, DialOutcome, GateVerdict};
use crate::tools::{Platform, ToolInvocation};

/// Frames queued for the socket by tool tasks.
const OUTBOUND_QUEUE: usize = 32;
/// How long we wait for the other side of a Close handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How often an invocation pending on another instance is looked at.
const PENDING_POLL: Duration = Duration::from_millis(200);

struct Session {
    state: AppState,
    /// This socket, in the registry of call sockets.
    socket_id: u64,
    /// Tenants whose credentials the socket presented.
    candidates: Vec<Arc<Tenant>>,
    tenant: Option<Arc<Tenant>>,
    call_sid: Option<String>,
    call: Option<Arc<CallRow>>,
    /// The session ack being sent: the call counts as started only once it is on the wire.
    session_ack: Option<SessionAck>,
    /// After this reconnect's ack, send again what the previous socket may have lost.
    recover: bool,
    out: flume::Sender<String>,
}

/// An ack that hands the call its application.
struct SessionAck {
    msgid: String,
    /// The call row, to mark started once the ack is sent.
    call_id: Option<Uuid>,
    /// The call runs its application already (an ordinary reconnect, whose ack data the
    /// feature-server ignores).
    started: bool,
}

/// How a socket ended.
enum Ended {
    /// Jambonz closed it, with this code.
    ByPeer(Option<CloseCode>),
    /// It dropped, or failed: Jambonz reconnects.
    Dropped,
    /// This process is stopping (1001 sent: Jambonz reconnects elsewhere).
    Shutdown,
}

/// Why a frame did not go out.
#[derive(Debug, PartialEq, Eq)]
enum SendError {
    /// Over Jambonz's frame limit: not sent (Jambonz would drop the socket and lose it).
    TooLarge,
    /// The socket is gone.
    Closed,
}

/// Serves one socket until Jambonz closes it, it drops, or the process shuts down.
pub async fn serve(mut socket: Socket, state: AppState, candidates: Vec<Arc<Tenant>>) {
    let (out_tx, out_rx) = flume::bounded::<String>(OUTBOUND_QUEUE);
    let mut ping = tokio::time::interval(state.config.jambonz.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let close_sockets = state.lifecycle.close_sockets.clone();
    let socket_id = state.jambonz_calls.new_socket_id();
    let mut session = Session {
        state,
        socket_id,
        candidates,
        tenant: None,
        call_sid: None,
        call: None,
        session_ack: None,
        recover: false,
        out: out_tx,
    };
    metrics::gauge!("lifeline_jambonz_sockets_open").increment(1.0);
    let span = info_span!("jambonz_socket", call = tracing::field::Empty);
    async {
        let ended = loop {
            tokio::select! {
                incoming = socket.next() => match incoming {
                    // Boxed: the handling future is large and lives only while a message is
                    // handled, instead of inside every idle socket's task.
                    Some(Ok(Message::Text(text))) => {
                        if !Box::pin(session.answer(&mut socket, text.as_str())).await {
                            break Ended::Dropped;
                        }
                    }
                    // The feature-server marks text as binary by mistake; read it as text.
                    Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                        Ok(text) => {
                            if !Box::pin(session.answer(&mut socket, text)).await {
                                break Ended::Dropped;
                            }
                        }
                        Err(_) => warn!("ignored a binary frame that is not UTF-8"),
                    },
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.as_ref().map(|f| f.code);
                        debug!(code = code.map(u16::from), "jambonz closed the socket");
                        // Our reply (the peer's own code) is queued; polling on writes it.
                        finish_close(&mut socket).await;
                        break Ended::ByPeer(code);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "jambonz socket error");
                        break Ended::Dropped;
                    }
                    None => break Ended::Dropped,
                },
                Ok(frame) = out_rx.recv_async() => {
                    if send(&mut socket, frame).await == Err(SendError::Closed) {
                        break Ended::Dropped;
                    }
                }
                _ = ping.tick() => {
                    if socket.send(Message::Ping(Default::default())).await.is_err() {
                        break Ended::Dropped;
                    }
                }
                // Only once this process's tool calls are done (see `Server::wait`).
                _ = close_sockets.cancelled() => {
                    session.detach();
                    // What the finished tool calls queued goes out before the Close.
                    while let Ok(frame) = out_rx.try_recv() {
                        if send(&mut socket, frame).await == Err(SendError::Closed) {
                            break;
                        }
                    }
                    // 1001, not 1000: Jambonz then reconnects (to another instance) and the
                    // call goes on; 1000 would make it stop talking to us for good.
                    let _ = socket.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Away,
                        reason: "lifeline restarting".into(),
                    }))).await;
                    finish_close(&mut socket).await;
                    break Ended::Shutdown;
                }
            }
        };
        session.detach();
        // Jambonz closes with 1000 when the call is over (and only then).
        if let Ended::ByPeer(Some(CloseCode::Normal)) = ended {
            // Boxed: the call's closing writes are a large future that every idle socket's
            // task would otherwise carry (the task went from 4.5 to 2.1 KB).
            Box::pin(session.on_call_end()).await;
        }
    }
    .instrument(span)
    .await;
    metrics::gauge!("lifeline_jambonz_sockets_open").decrement(1.0);
}

/// Drives the rest of a Close handshake: tungstenite writes the queued Close (a reply, or ours)
/// and reads until the peer's, within `CLOSE_WAIT`.
async fn finish_close(socket: &mut Socket) {
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// Writes one message (in fragments when it is long, see [`send_text`]). A message over
/// Jambonz's limit is not sent, and says so: nothing may count it as delivered.
async fn send(socket: &mut Socket, frame: String) -> Result<(), SendError> {
    if frame.len() > wire::MAX_FRAME_BYTES {
        error!(
            bytes = frame.len(),
            limit = wire::MAX_FRAME_BYTES,
            "frame over Jambonz's limit not sent"
        );
        metrics::counter!("lifeline_jambonz_frames_too_large_total").increment(1);
        return Err(SendError::TooLarge);
    }
    send_text(socket, frame, FRAGMENT)
        .await
        .map_err(|_| SendError::Closed)
}

impl Session {
    /// Handles one frame and sends its replies; false when the socket is gone.
    async fn answer(&mut self, socket: &mut Socket, text: &str) -> bool {
        for frame in self.handle_guarded(text).await {
            match send(socket, frame).await {
                Ok(()) => {}
                Err(SendError::Closed) => return false,
                Err(SendError::TooLarge) => {
                    // Only the application ack can grow (inline prompts, template values).
                    if let Some(ack) = self.session_ack.take() {
                        let fallback = self.oversized_application(&ack).await;
                        match send(socket, fallback).await {
                            Ok(()) => self.session_ack = Some(ack),
                            Err(SendError::Closed) => return false,
                            Err(SendError::TooLarge) => {}
                        }
                    }
                }
            }
        }
        if let Some(SessionAck {
            call_id: Some(call_id),
            started: false,
            ..
        }) = self.session_ack.take()
        {
            // Only now: if the socket dropped before the ack left, Jambonz's reconnect must
            // get the verbs again (its ack then stands for the lost session:new ack).
            if let Err(e) = self.state.store.mark_app_started(call_id, Utc::now()).await {
                error!(error = %e, "could not mark the call started");
            }
        }
        if std::mem::take(&mut self.recover) {
            for frame in self.lost_frames().await {
                if send(socket, frame).await == Err(SendError::Closed) {
                    return false;
                }
            }
        }
        true
    }

    /// What the previous socket may have lost (see `recovery`); invocations still pending
    /// elsewhere are watched, their answers sent when recorded.
    async fn lost_frames(&self) -> Vec<String> {
        let (Some(tenant), Some(call), Some(call_sid)) = (&self.tenant, &self.call, &self.call_sid)
        else {
            return Vec::new();
        };
        match recovery::lost(self.state.store.as_ref(), tenant, call, None).await {
            Ok(lost) => {
                if !lost.frames.is_empty() {
                    info!(
                        frames = lost.frames.len(),
                        "sent again what the previous socket may have lost"
                    );
                }
                for log in lost.pending {
                    self.watch_pending(tenant.clone(), call.clone(), call_sid.clone(), log);
                }
                lost.frames
            }
            Err(e) => {
                error!(error = %e, "could not read what the previous socket may have lost");
                Vec::new()
            }
        }
    }

    /// Sends the answer (and commands) of an invocation still pending when the call came to
    /// this socket, once its outcome is recorded: by another instance that still runs it, or by
    /// a reconciler if that instance died. One running here delivers its own.
    fn watch_pending(
        &self,
        tenant: Arc<Tenant>,
        call: Arc<CallRow>,
        call_sid: String,
        log: crate::store::ToolCallLogRow,
    ) {
        if self
            .state
            .pipeline
            .is_running(&log.platform, &log.call_ref, &log.invocation_key)
        {
            return;
        }
        let store = self.state.store.clone();
        let calls = self.state.jambonz_calls.clone();
        let stop = self.state.lifecycle.close_sockets.clone();
        let lifecycle = &self.state.config.lifecycle;
        // Long enough for a reconciler to have ended it.
        let deadline = tokio::time::Instant::now()
            + lifecycle.reconcile_margin
            + lifecycle.reconcile_interval * 2;
        let task = async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(PENDING_POLL) => {}
                    _ = stop.cancelled() => return,
                }
                match store.tool_call_log(log.id).await {
                    Ok(Some(row)) if row.status != "pending" => break,
                    _ if tokio::time::Instant::now() >= deadline => return,
                    _ => {}
                }
            }
            match recovery::lost(store.as_ref(), &tenant, &call, Some(log.id)).await {
                Ok(lost) => {
                    for frame in lost.frames {
                        if !calls.send(&call_sid, frame).await {
                            return;
                        }
                    }
                }
                Err(e) => error!(error = %e, "could not read a finished invocation's answer"),
            }
        };
        tokio::spawn(task.in_current_span());
    }

    /// The application did not fit in one frame. A call that runs already keeps running (the
    /// feature-server ignores an ordinary reconnect's ack data); a new one gets the on-call team
    /// instead of the agent, rather than Jambonz dropping the socket and rejecting the call.
    async fn oversized_application(&self, ack: &SessionAck) -> String {
        if ack.started {
            return wire::ack(&ack.msgid, None);
        }
        let verbs = match self
            .on_agent_failure("the agent's settings do not fit in one Jambonz frame")
            .await
        {
            Some(verbs) => verbs,
            None => match &self.tenant {
                Some(tenant) => vec![
                    wire::say(transfer::ANNOUNCE_AGENT_FAILED),
                    transfer_dial(&transfer::plan_without_record(tenant)),
                ],
                None => vec![wire::hangup()],
            },
        };
        wire::ack(&ack.msgid, Some(verbs))
    }

    /// This socket no longer carries its call's frames.
    fn detach(&self) {
        if let Some(call_sid) = &self.call_sid {
            self.state.jambonz_calls.detach(call_sid, self.socket_id);
        }
    }

    /// Jambonz closed the socket with 1000: the call is over (its `call:status` may not have
    /// come: it is sent only when the application has a status hook). Nothing more will report
    /// on a transfer still ringing for it, so that attempt ends here, failed with its critical
    /// callback request (or succeeded, if the on-call person had picked up).
    async fn on_call_end(&self) {
        let Some(call) = &self.call else { return };
        let store = self.state.store.as_ref();
        let current = store
            .find_call(Platform::Jambonz, &call.call_ref)
            .await
            .ok()
            .flatten();
        if current.as_ref().is_some_and(|c| c.ended_at.is_none()) {
            let update = CallStatusUpdate {
                event_id: Uuid::now_v7(),
                status: "completed".into(),
                at: Utc::now(),
                ended: true,
                duration_seconds: None,
                sequence: None,
                detail: json!({ "call_status": "completed", "source": "socket closed by jambonz" }),
            };
            if let Err(e) = store.record_call_status(call.id, &update).await {
                error!(error = %e, "could not record the end of the call");
            }
        }
        match store.dialing_transfer(call.id).await {
            Ok(Some(attempt)) => {
                let why = "the call ended before the dial reported its outcome";
                if let Err(e) = transfer::abandon_attempt(store, call, &attempt, why).await {
                    error!(error = %e, "could not end the transfer of a call that ended");
                }
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "could not look up the transfer of a call that ended"),
        }
    }

    /// Handles one frame; a bug in one message's handling is logged and the socket goes on.
    async fn handle_guarded(&mut self, text: &str) -> Vec<String> {
        let envelope: Envelope = match serde_json::from_str(text) {
            Ok(e) => e,
            // Answered if it is a tool call whose id can be read.
            Err(e) => return malformed::unreadable_frame(text, &e).into_iter().collect(),
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
            "llm:tool-call" => self.on_tool_call(&env),
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
        // From now on this socket carries the call's frames (answers of tool calls still
        // running included).
        self.state
            .jambonz_calls
            .attach(&call_sid, self.socket_id, self.out.clone());

        if reconnect
            && existing
                .as_ref()
                .is_some_and(|c| c.app_started_at.is_some())
        {
            info!("call resumed on a new socket");
            let call = existing.map(Arc::new);
            self.session_ack = Some(SessionAck {
                msgid: msgid.to_string(),
                call_id: call.as_ref().map(|c| c.id),
                started: true,
            });
            self.call = call;
            self.recover = true;
            self.event("reconnected", json!({})).await;
            // The application again: on an ordinary reconnect the feature-server ignores the
            // ack's data (`ws-requestor.js`, the reconnect's promise), but if our session:new
            // ack was lost in flight, this ack is the one its session:new waits for, and
            // `lib/middleware.js` rejects the call unless it is a verb array.
            let facts = crate::prompt_context::CallFacts {
                call_sid: &call_sid,
                from: data.from.as_deref(),
                to: data.to.as_deref(),
            };
            return wire::ack(msgid, Some(session_verbs(&tenant, &facts, Utc::now())));
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
        let call_id = match call {
            Ok(call) => {
                let id = call.id;
                self.call = Some(Arc::new(call));
                Some(id)
            }
            // The caller must still get the agent; tools will work without the call row
            // except transfers, which need it.
            Err(e) => {
                error!(error = %e, "could not record the call");
                None
            }
        };
        self.session_ack = Some(SessionAck {
            msgid: msgid.to_string(),
            call_id,
            started: false,
        });
        // A reconnect standing for a lost session:new ack: nothing ran yet, nothing to resend.
        self.recover = false;
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
        let verbs = session_verbs(&tenant, &facts, Utc::now());
        wire::ack(msgid, Some(verbs))
    }

    /// Starts a tool call; what it returns is sent at once (the answer to one that cannot be
    /// read).
    fn on_tool_call(&self, env: &Envelope) -> Vec<String> {
        // Read in place: cloning the whole frame's data first was a copy per tool call.
        let data = match ToolCallData::deserialize(&env.data) {
            Ok(d) => d,
            Err(e) => {
                return malformed::unreadable_tool_call(&env.data, &e)
                    .into_iter()
                    .collect();
            }
        };
        let (Some(tenant), Some(call_sid)) = (self.tenant.clone(), self.call_sid.clone()) else {
            warn!("tool call before session:new");
            let _ = self.out.try_send(wire::tool_output(
                &data.tool_call_id,
                r#"{"error":"not_found","message":"the call has not started","retryable":true}"#,
            ));
            return Vec::new();
        };
        let control = Arc::new(JambonzCallControl::new());
        let scope = CallScope {
            tenant,
            call: self.call.clone(),
            control: control.clone(),
        };
        let invocation = ToolInvocation {
            platform: Platform::Jambonz,
            call_ref: call_sid.clone(),
            invocation_id: Some(data.tool_call_id.clone()),
            tool_name: data.name,
            arguments: data.args,
        };
        let pipeline = self.state.pipeline.clone();
        let calls = self.state.jambonz_calls.clone();
        let tool_call_id = data.tool_call_id;
        let task = async move {
            // The effect runs in this task, which outlives the socket (it is tracked, not
            // the socket's), and delivers what it produces to whichever socket the call is
            // on by then.
            let mut running = pipeline.start_here(invocation, scope);
            let answer = running.answer().await;
            let text = match &answer {
                Ok(output) => output.message.clone(),
                Err(e) => e.model_text(),
            };
            // The answer first, while the llm verb still runs; then the commands it asked for.
            // An effect that outlived its answer goes on meanwhile (a full socket queue must
            // not hold up a transfer between its record and its dial).
            let (sent, _) = tokio::join!(
                calls.send(&call_sid, wire::tool_output(&tool_call_id, &text)),
                running.finished()
            );
            if !sent {
                warn!("no socket for the call; the answer goes again when Jambonz reconnects");
            }
            // Commands follow the effect, even one that outlived its answer: a transfer that
            // was recorded must reach its dial.
            for command in control.take_commands() {
                if !calls.send(&call_sid, command).await {
                    warn!("no socket for the call; its command goes again when Jambonz reconnects");
                }
            }
        };
        // Tracked, so a stopping process delivers it before closing the socket; in the
        // socket's span, which names the call.
        self.state.pipeline.tasks().spawn(task.in_current_span());
        Vec::new()
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
                // Also the sign that Jambonz ran our last redirect (see `recovery`).
                self.event(LLM_COMPLETE_EVENT, json!({ "completion_reason": reason }))
                    .await;
                if let AgentEnd::Failed(kind) = AgentEnd::classify(&reason) {
                    warn!(?kind, "the agent failed; ringing the on-call team");
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
                if result.caller_gone() {
                    // The caller hung up: Jambonz drops this ack's verbs, send none.
                    return wire::ack(msgid, None);
                }
                wire::ack(msgid, Some(verbs))
            }
            Some(hooks::DIAL_GATE) => {
                // Unreadable means no key: declined, the chain moves on.
                let result: wire::GateResult =
                    serde_json::from_value(env.data.clone()).unwrap_or_default();
                let verdict = if result.accepted() {
                    GateVerdict::Accepted
                } else {
                    GateVerdict::Declined
                };
                let detail = json!({
                    "platform": "jambonz",
                    "reason": result.reason,
                    "digits": result.digits,
                });
                self.gate(verdict, detail).await;
                // The confirm application ends still connected (accepted) or hung up
                // (declined): `lib/utils/place-outdial.js` `_executeApp`.
                let verbs = match verdict {
                    GateVerdict::Accepted => vec![wire::say(transfer::GATE_CONNECTING)],
                    _ => vec![wire::hangup()],
                };
                wire::ack(msgid, Some(verbs))
            }
            Some(hooks::DIAL_AMD) => {
                let event: wire::AmdEvent =
                    serde_json::from_value(env.data.clone()).unwrap_or_default();
                if !event.machine() {
                    // A human (or no decision): the gate goes on.
                    return wire::ack(msgid, None);
                }
                let detail = json!({
                    "platform": "jambonz",
                    "amd": event.kind,
                    "reason": event.reason,
                });
                self.gate(GateVerdict::Machine, detail).await;
                // Replaces the confirm application: the leg is hung up, declined as a machine.
                wire::ack(msgid, Some(vec![wire::hangup()]))
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
        let outcome = DialOutcome {
            answered: result.answered(),
            dial_status: result.dial_call_status.as_deref(),
            sip_status: result.dial_sip_status.and_then(|s| i32::try_from(s).ok()),
            caller_gone: result.caller_gone(),
        };
        if outcome.caller_gone && !outcome.answered {
            warn!(
                dial_status = outcome.dial_status.unwrap_or(""),
                "the caller hung up while the on-call phone rang"
            );
        }
        let next =
            transfer::on_dial_outcome(self.state.store.as_ref(), &tenant, &call, &outcome).await;
        match next {
            Ok(DialNext::Connected) => vec![wire::hangup()],
            Ok(DialNext::Ring(plan)) => vec![wire::say(&plan.announcement), transfer_dial(&plan)],
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
                Some(vec![wire::say(&plan.announcement), transfer_dial(&plan)])
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
                    transfer_dial(&transfer::plan_without_record(tenant)),
                ])
            }
        }
    }

    /// Records the acceptance gate's verdict on the attempt ringing for this call.
    async fn gate(&self, verdict: GateVerdict, detail: Value) {
        let Some(call) = &self.call else { return };
        if let Err(e) =
            transfer::on_gate(self.state.store.as_ref(), call.id, None, verdict, detail).await
        {
            error!(error = %e, "could not record the transfer gate's verdict");
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
            Ok(Some(attempt)) => {
                // The on-call person picked up: the attempt is talking, not stuck.
                if let Err(e) = self
                    .state
                    .store
                    .mark_transfer_answered(attempt.id, Utc::now())
                    .await
                {
                    error!(error = %e, "could not record that the transfer was picked up");
                }
                let whisper = transfer::whisper(tenant, &attempt);
                let verbs = if tenant.transfer.accept_gate {
                    wire::gate_verbs(
                        &whisper,
                        transfer::GATE_PROMPT,
                        tenant.transfer.gate_timeout_secs,
                    )
                } else {
                    vec![wire::say(&whisper)]
                };
                wire::ack(msgid, Some(verbs))
            }
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
            .is_none_or(|sid| crate::store::text::storable(sid) == call.call_ref);
        if !own_leg {
            // The on-call person's leg, reported on the caller's socket.
            if status == "in-progress" {
                self.transfer_picked_up(call.id).await;
            }
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

    /// Records that the attempt ringing for the call was picked up.
    async fn transfer_picked_up(&self, call_id: Uuid) {
        let store = self.state.store.as_ref();
        match store.dialing_transfer(call_id).await {
            Ok(Some(attempt)) => {
                if let Err(e) = store.mark_transfer_answered(attempt.id, Utc::now()).await {
                    error!(error = %e, "could not record that the transfer was picked up");
                }
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "could not look up the transfer that was picked up"),
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
