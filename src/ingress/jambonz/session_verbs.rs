//! The verbs a new Jambonz call is answered with (the `session:new` ack): answer, run the
//! tenant's Ultravox agent with the call's context and lifeline's tools, hang up when the
//! conversation ends.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

use crate::config::Tenant;
use crate::ingress::ultravox::declarations::client_tools;
use crate::prompt_context::{self, AgentPrompt, CallFacts};
use crate::protocol::jambonz as wire;

/// The verbs for a new call: answer, run the tenant's Ultravox agent with lifeline's tools as
/// client tools, and hang up when the conversation ends. The agent gets the call's context from
/// [`prompt_context`], as on Twilio: an inline prompt is sent rendered, an agent gets every
/// template variable (Ultravox uses those its prompt names; reading the agent's prompt here
/// would add a request to Ultravox inside jambonz's 5 s ack deadline).
pub(crate) fn session_verbs(
    tenant: &Tenant,
    call: &CallFacts<'_>,
    now: DateTime<Utc>,
) -> Vec<Value> {
    let context = prompt_context::template_context(tenant, call, now);
    verbs_with_context(tenant, call.call_sid, &context)
}

/// An upper bound of the size of any `session:new` ack lifeline can send for this tenant: the
/// ack of [`session_verbs`] with every template variable at its longest
/// ([`prompt_context::longest_context`]) and the call sid and msgid longer than jambonz's own
/// (a 36-character UUID and a 22-character short-uuid).
pub fn largest_session_ack(tenant: &Tenant) -> usize {
    let call_sid = "x".repeat(64);
    let msgid = "x".repeat(64);
    let context = prompt_context::longest_context(tenant, &call_sid);
    wire::ack(
        &msgid,
        Some(verbs_with_context(tenant, &call_sid, &context)),
    )
    .len()
}

fn verbs_with_context(
    tenant: &Tenant,
    call_sid: &str,
    context: &BTreeMap<&'static str, String>,
) -> Vec<Value> {
    let uv = &tenant.ultravox;
    let metadata = json!({
        "lifeline_tenant": tenant.id,
        "jambonz_call_sid": call_sid,
    });
    let mut agent_id = None;
    let mut options = Map::new();
    match prompt_context::agent_prompt(tenant, context, None) {
        AgentPrompt::Agent(variables) => {
            // Agent calls take template values (strings only); the agent's own tools apply,
            // and `selectedTools` would be refused.
            agent_id = uv.agent_id.as_deref();
            options.insert("templateContext".into(), Value::Object(variables));
        }
        AgentPrompt::Inline(prompt) => {
            options.insert("systemPrompt".into(), json!(prompt));
            options.insert("firstSpeaker".into(), json!("FIRST_SPEAKER_AGENT"));
            options.insert("selectedTools".into(), Value::Array(client_tools()));
            if let Some(voice) = &uv.voice {
                options.insert("voice".into(), json!(voice));
            }
            if let Some(t) = uv.temperature {
                options.insert("temperature".into(), json!(t));
            }
        }
    }
    options.insert("metadata".into(), metadata);
    // An agent has its own model.
    let model = uv.agent_id.is_none().then_some(uv.model.as_str());
    vec![
        wire::answer(),
        wire::ultravox_llm(uv.api_key.expose_secret(), agent_id, model, options),
        wire::hangup(),
    ]
}
