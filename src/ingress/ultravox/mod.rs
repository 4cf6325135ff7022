//! Ultravox calling lifeline's tools: over its data connection (`GET /ultravox`, a WebSocket
//! Ultravox opens to us, signed with a shared secret) and as HTTP tools (`POST
//! /ultravox/tools/{tool}` and the original system's `/twilio/...` routes, with an API key).
//!
//! Either way the call comes from our own records (the signed `X-Ultravox-Call-ID`, or the
//! `X-Ultravox-Call-Id` header looked up in `calls`), never from the arguments, and the
//! invocation runs through the same pipeline as every other platform's.

mod data_connection;
pub mod declarations;
mod http_tools;

use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::routing::{get, post};

use crate::AppState;
use crate::store::CallRow;
use crate::telephony::twilio::TwilioCallControl;
use crate::telephony::{CallControl, TelephonyError, TransferPlan};

/// The Ultravox routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ultravox", get(data_connection::upgrade))
        .route("/ultravox/tools/{tool}", post(http_tools::by_name))
        .route(
            "/twilio/transferToOnCall",
            post(http_tools::transfer_to_on_call),
        )
        .route(
            "/twilio/collectCallerInfo",
            post(http_tools::collect_caller_info),
        )
        .route("/twilio/hangUp", post(http_tools::hang_up))
}

/// How tools act on a call Ultravox talks on: the carrying platform's control.
pub(crate) fn control_for(state: &AppState, call: Option<&CallRow>) -> Arc<dyn CallControl> {
    match (call, &state.twilio, &state.config.public_url) {
        (Some(call), Some(client), Some(public_url)) if call.platform == "twilio" => {
            Arc::new(TwilioCallControl::new(
                client.clone(),
                call.call_ref.clone(),
                call.started_at,
                public_url.clone(),
            ))
        }
        _ => Arc::new(NoControl),
    }
}

/// For calls lifeline cannot act on from here (unknown call, or one carried by Jambonz, whose
/// control lives on its own socket).
struct NoControl;

#[async_trait]
impl CallControl for NoControl {
    async fn transfer(&self, _plan: &TransferPlan) -> Result<(), TelephonyError> {
        Err(TelephonyError::Rejected(
            "this call cannot be transferred from here".into(),
        ))
    }

    async fn hang_up(&self) -> Result<(), TelephonyError> {
        // Ultravox ends the call itself on a hang-up result.
        Ok(())
    }
}
