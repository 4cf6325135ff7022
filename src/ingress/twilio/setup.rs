//! `POST /twilio/incoming`: a call reaches one of our numbers. Find the clinic by the number
//! dialled, record the call, create its Ultravox call and connect the caller to it; if anything
//! fails, the caller still reaches a human (or leaves a message) — never an application error.
//!
//! Twilio repeats this webhook (a connection that failed, or with the connection overrides
//! `rc`/`rp` a late answer: <https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides>),
//! and a repeat can arrive while the first request is still creating the Ultravox call, on
//! this instance or another. Twilio uses the answer to the last request it sent, so every
//! request for a call answers the same: the first claims the call's setup in the database
//! and creates the one Ultravox call; a repeat waits for that claim and answers with the same
//! `<Connect><Stream>` (or the same fallback). A claim whose request died is taken over once
//! the setup timeout has passed.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use chrono::Utc;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tracing::{Instrument, error, info, info_span, warn};
use uuid::Uuid;

use super::{SignedTwilio, public, ring, say_and_hang_up, twiml};
use crate::AppState;
use crate::config::{Config, Fallback, Tenant};
use crate::ingress::ultravox::declarations::data_connection_tools;
use crate::phone::mask;
use crate::prompt_context::{self, AgentPrompt, CallFacts};
use crate::protocol::twilio::{self as wire, IncomingCall, Record, Say, Stream, Verb};
use crate::store::{CallRow, CallSetup, NewCall, NewCallEvent};
use crate::telephony::ultravox::CreatedCall;
use crate::tools::Platform;
use crate::tools::transfer::{self, AgentFailure, MESSAGE_ALREADY_TAKEN};

/// What a caller hears when the number they dialled belongs to no clinic here.
const NOT_IN_SERVICE: &str = "We're sorry, this number is not in service. Goodbye.";

/// How long past the setup timeout a claim may stay unfinished before a repeat takes it over:
/// room for the claimant's own database writes.
const CLAIM_MARGIN: Duration = Duration::from_secs(2);

/// How often a repeat looks whether the request that holds the claim has finished.
const REPEAT_POLL: Duration = Duration::from_millis(100);

/// The handler.
pub async fn incoming(
    State(state): State<AppState>,
    SignedTwilio(call): SignedTwilio<IncomingCall>,
) -> Response {
    let Some(tenant) = call
        .to
        .as_deref()
        .and_then(|to| state.config.tenant_by_number(to))
        .cloned()
    else {
        warn!(
            call = %call.call_sid,
            to = %call.to.as_deref().map(mask).unwrap_or_default(),
            "incoming call to a number no tenant answers"
        );
        return say_and_hang_up(NOT_IN_SERVICE);
    };
    let span = info_span!("twilio_call", tenant = %tenant.id, call = %call.call_sid);
    set_up(&state, &tenant, &call).instrument(span).await
}

async fn set_up(state: &AppState, tenant: &Arc<Tenant>, incoming: &IncomingCall) -> Response {
    let now = Utc::now();
    let new = NewCall {
        id: Uuid::now_v7(),
        tenant_id: tenant.id.clone(),
        platform: Platform::Twilio,
        call_ref: incoming.call_sid.clone(),
        from_number: incoming.from.clone(),
        to_number: incoming.to.clone(),
        direction: "inbound".into(),
        status: incoming.call_status.as_str().to_string(),
        account_sid: Some(incoming.account_sid.clone()),
        application_sid: None,
        started_at: now,
    };
    let call = match state.store.upsert_call(&new).await {
        Ok(call) => call,
        Err(e) => {
            error!(error = %e, "could not record the incoming call; using the fallback");
            return fallback(state, tenant, None, "the database is unavailable").await;
        }
    };
    let token = Uuid::now_v7();
    let mut waiting = false;
    let mut setup = claim(state, &call, token).await;
    loop {
        setup = match setup {
            Err(e) => {
                error!(error = %e, "could not claim the call's setup; using the fallback");
                return fallback(state, tenant, Some(&call), "the database is unavailable").await;
            }
            Ok(CallSetup::Claimed) => {
                // In its own task: when Twilio gives up on this request (its read timeout closes
                // the connection, and the handler is dropped) the Ultravox call is still
                // created and recorded, and Twilio's retry answers with it.
                let work = {
                    let (state, tenant, call) = (state.clone(), tenant.clone(), call.clone());
                    let incoming = incoming.clone();
                    async move { create_and_connect(&state, &tenant, &call, &incoming, token).await }
                };
                match tokio::spawn(work.in_current_span()).await {
                    Ok(Step::Answer(response)) => return response,
                    Ok(Step::Lost(now)) => now,
                    Err(e) => {
                        error!(error = %e, "the call setup task failed; using the fallback");
                        return fallback(state, tenant, Some(&call), "the setup failed").await;
                    }
                }
            }
            Ok(CallSetup::InProgress) => {
                if !waiting {
                    waiting = true;
                    info!("Twilio repeated the webhook while the call is being set up; waiting");
                }
                tokio::time::sleep(REPEAT_POLL).await;
                claim(state, &call, token).await
            }
            Ok(CallSetup::Connected {
                ultravox_call_id,
                join_url,
            }) => return answer_repeat(state, &call, &ultravox_call_id, join_url).await,
            Ok(CallSetup::FellBack) => {
                metrics::counter!("lifeline_twilio_incoming_repeats_total", "outcome" => "fallback")
                    .increment(1);
                return fallback(
                    state,
                    tenant,
                    Some(&call),
                    "Twilio repeated the webhook of a call whose setup fell back",
                )
                .await;
            }
        };
    }
}

/// What this request does next after holding the claim.
enum Step {
    /// Its answer.
    Answer(Response),
    /// The claim was taken over meanwhile: how the setup stands now.
    Lost(Result<CallSetup, crate::store::StoreError>),
}

/// Claims the call's setup; a claim unfinished since before the setup timeout is taken over.
async fn claim(
    state: &AppState,
    call: &CallRow,
    token: Uuid,
) -> Result<CallSetup, crate::store::StoreError> {
    let now = Utc::now();
    let stale = chrono::Duration::from_std(state.config.ultravox.setup_timeout + CLAIM_MARGIN)
        .unwrap_or_else(|_| chrono::Duration::minutes(1));
    state
        .store
        .claim_call_setup(call.id, token, now, now - stale)
        .await
}

/// Holding the claim: creates the Ultravox call and records it, or gives up to the fallback.
async fn create_and_connect(
    state: &AppState,
    tenant: &Tenant,
    call: &CallRow,
    incoming: &IncomingCall,
    token: Uuid,
) -> Step {
    metrics::counter!("lifeline_calls_total", "platform" => "twilio").increment(1);
    info!(from = %incoming.from.as_deref().map(mask).unwrap_or_default(), "incoming call");
    let created = tokio::time::timeout(
        state.config.ultravox.setup_timeout,
        create_ultravox_call(state, tenant, call),
    )
    .await;
    let created = match created {
        Ok(Ok(created)) => created,
        Ok(Err(why)) => {
            error!(error = %why, "could not create the Ultravox call; using the fallback");
            return give_up(state, tenant, call, token, &why).await;
        }
        Err(_) => {
            error!("Ultravox call setup timed out; using the fallback");
            return give_up(
                state,
                tenant,
                call,
                token,
                "Ultravox did not answer in time",
            )
            .await;
        }
    };
    // The mapping must be durable before the caller is connected: tools find the call by it.
    let recorded = state
        .store
        .connect_call_setup(
            call.id,
            token,
            &created.call_id,
            &created.join_url,
            Utc::now(),
        )
        .await;
    match recorded {
        Ok(CallSetup::Connected {
            ultravox_call_id, ..
        }) if ultravox_call_id == created.call_id => {}
        Ok(other) => {
            warn!(ultravox_call = %created.call_id, "the call's setup was taken over meanwhile; this Ultravox call is not used");
            return Step::Lost(Ok(other));
        }
        Err(e) => {
            error!(error = %e, "could not record the Ultravox call id; using the fallback");
            return Step::Answer(
                fallback(state, tenant, Some(call), "the call could not be recorded").await,
            );
        }
    }
    event(
        state,
        call,
        "ultravox_call_created",
        json!({ "ultravox_call_id": created.call_id }),
    )
    .await;
    if let Err(e) = state.store.mark_app_started(call.id, Utc::now()).await {
        warn!(error = %e, "could not mark the call started");
    }
    info!(ultravox_call = %created.call_id, "connecting the caller to the AI agent");
    Step::Answer(connect(created.join_url))
}

/// Holding the claim, the Ultravox call could not be created: record that (so repeats answer
/// the same) and give the caller the fallback.
async fn give_up(
    state: &AppState,
    tenant: &Tenant,
    call: &CallRow,
    token: Uuid,
    why: &str,
) -> Step {
    match state
        .store
        .fail_call_setup(call.id, token, Utc::now())
        .await
    {
        Ok(true) => {}
        // Taken over meanwhile: the taker's outcome is the call's.
        Ok(false) => return Step::Lost(claim(state, call, token).await),
        Err(e) => warn!(error = %e, "could not record that the setup fell back"),
    }
    Step::Answer(fallback(state, tenant, Some(call), why).await)
}

/// A repeat of a call already connected: the same `<Connect><Stream>` as the first answer.
async fn answer_repeat(
    state: &AppState,
    call: &CallRow,
    ultravox_call_id: &str,
    join_url: String,
) -> Response {
    metrics::counter!("lifeline_twilio_incoming_repeats_total", "outcome" => "connected")
        .increment(1);
    info!(ultravox_call = %ultravox_call_id, "Twilio repeated the webhook; answering with the same Ultravox call");
    event(
        state,
        call,
        "twilio_incoming_repeated",
        json!({ "ultravox_call_id": ultravox_call_id }),
    )
    .await;
    if let Err(e) = state.store.mark_app_started(call.id, Utc::now()).await {
        warn!(error = %e, "could not mark the call started");
    }
    connect(join_url)
}

/// The caller joins the Ultravox call.
fn connect(join_url: String) -> Response {
    twiml(wire::Response::new().verb(Verb::Connect(Stream::new(join_url))))
}

async fn event(state: &AppState, call: &CallRow, kind: &str, detail: Value) {
    let event = NewCallEvent {
        id: Uuid::now_v7(),
        call_id: call.id,
        at: Utc::now(),
        kind: kind.into(),
        detail,
    };
    if let Err(e) = state.store.append_call_event(&event).await {
        warn!(error = %e, kind, "could not record the call event");
    }
}

async fn create_ultravox_call(
    state: &AppState,
    tenant: &Tenant,
    call: &CallRow,
) -> Result<CreatedCall, String> {
    let settings = &tenant.ultravox;
    let facts = CallFacts {
        call_sid: &call.call_ref,
        from: call.from_number.as_deref(),
        to: call.to_number.as_deref(),
    };
    let context = prompt_context::template_context(tenant, &facts, Utc::now());
    // Only the variables the agent's prompt uses are sent, as the original did; the list is
    // cached, so this is not a request per call.
    let wanted = match &settings.agent_id {
        Some(agent_id) => match state
            .ultravox_api
            .agent_prompt_variables(settings.api_key.expose_secret(), agent_id)
            .await
        {
            Ok(vars) => Some(vars),
            Err(e) => {
                warn!(error = %e, "could not read the agent's prompt variables; sending all");
                None
            }
        },
        None => None,
    };
    let prompt = prompt_context::agent_prompt(tenant, &context, wanted.as_deref());
    let body = setup_body(&state.config, tenant, call.id, prompt);
    match &settings.agent_id {
        Some(agent_id) => state
            .ultravox_api
            .create_agent_call(settings.api_key.expose_secret(), agent_id, &body)
            .await
            .map_err(|e| e.to_string()),
        None => state
            .ultravox_api
            .create_call(settings.api_key.expose_secret(), &body)
            .await
            .map_err(|e| e.to_string()),
    }
}

/// The body of the Ultravox call-creation request for a Twilio call: the Twilio medium, the
/// agent speaks first, and — when data-connection secrets are configured — a data connection to
/// lifeline's `/ultravox` socket so tool calls arrive there, signed.
pub fn setup_body(config: &Config, tenant: &Tenant, call_id: Uuid, prompt: AgentPrompt) -> Value {
    let mut body = json!({
        "medium": { "twilio": {} },
        "firstSpeakerSettings": { "agent": {} },
        // Values must be strings; keys must not start with "ultravox.".
        "metadata": {
            "lifeline_call_id": call_id.to_string(),
            "lifeline_tenant": tenant.id,
        },
    });
    let data_connection = !config.ultravox.data_connection_secrets.is_empty();
    if data_connection && let Some(url) = data_connection_url(config) {
        body["dataConnection"] = json!({ "websocketUrl": url });
    }
    match prompt {
        AgentPrompt::Agent(variables) => {
            // An agent call accepts no tools and no secrets: they live on the agent's template.
            body["templateContext"] = Value::Object(variables);
        }
        AgentPrompt::Inline(prompt) => {
            let u = &tenant.ultravox;
            body["systemPrompt"] = Value::from(prompt);
            body["model"] = Value::from(u.model.clone());
            if let Some(voice) = &u.voice {
                body["voice"] = Value::from(voice.clone());
            }
            if let Some(t) = u.temperature {
                body["temperature"] = Value::from(t);
            }
            if data_connection {
                body["selectedTools"] = Value::from(data_connection_tools());
                body["sharedSecrets"] = Value::from(
                    config
                        .ultravox
                        .data_connection_secrets
                        .iter()
                        .map(|s| s.expose_secret())
                        .collect::<Vec<_>>(),
                );
            }
        }
    }
    body
}

/// `wss://…/ultravox` (or `ws://` behind a plain-HTTP public URL).
fn data_connection_url(config: &Config) -> Option<String> {
    let public = config.public_url.as_deref()?;
    let ws = if let Some(rest) = public.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = public.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        return None;
    };
    Some(format!("{ws}/ultravox"))
}

/// What the caller gets when the AI agent cannot be reached: the on-call team rings (a failed
/// dial then leaves a critical callback request like any failed transfer), or a recorded
/// message becomes a callback request.
async fn fallback(
    state: &AppState,
    tenant: &Tenant,
    call: Option<&CallRow>,
    why: &str,
) -> Response {
    metrics::counter!("lifeline_call_setup_fallbacks_total", "kind" => match tenant.fallback {
        Fallback::Dial => "dial",
        Fallback::Record => "record",
    })
    .increment(1);
    match tenant.fallback {
        Fallback::Record => twiml(
            wire::Response::new()
                .verb(Say::new(format!(
                    "Thank you for calling {}. We can't take your call right now. After the \
                     tone, please leave your name, your phone number, your pet's name and what \
                     is happening, and a team member will call you back.",
                    tenant.name
                )))
                .verb(Record {
                    action: public(state, "/twilio/recording"),
                    max_length: 180,
                    play_beep: true,
                    transcribe: None,
                    recording_status_callback: None,
                })
                .verb(Say::new("We did not receive a message. Goodbye."))
                .verb(Verb::Hangup),
        ),
        Fallback::Dial => {
            let Some(call) = call else {
                // Nothing can be recorded: still put the caller through to a human.
                return ring(state, &transfer::plan_without_record(tenant));
            };
            match transfer::on_agent_failure(state.store.as_ref(), tenant, call, why).await {
                Ok(AgentFailure::Ring(plan)) => ring(state, &plan),
                Ok(AgentFailure::MessageTaken) => say_and_hang_up(MESSAGE_ALREADY_TAKEN),
                Ok(AgentFailure::AlreadyTransferring) => {
                    // Twilio repeated the webhook: ring the attempt that is already recorded.
                    match state.store.dialing_transfer(call.id).await {
                        Ok(Some(row)) => ring(
                            state,
                            &transfer::plan_for(
                                tenant,
                                row.id,
                                &row.target_number,
                                tenant.transfer.ring_timeout_secs,
                                transfer::ANNOUNCE_AGENT_FAILED,
                            ),
                        ),
                        _ => ring(state, &transfer::plan_without_record(tenant)),
                    }
                }
                Err(e) => {
                    error!(error = %e, "could not record the fallback transfer; dialling anyway");
                    ring(state, &transfer::plan_without_record(tenant))
                }
            }
        }
    }
}
