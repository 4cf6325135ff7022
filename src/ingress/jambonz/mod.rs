//! `GET /jambonz`: the Jambonz WebSocket API. Jambonz's feature-server connects once per call,
//! authenticating with HTTP Basic on the upgrade; one task then serves the call's socket.

mod calls;
pub mod frame_check;
mod malformed;
mod recovery;
mod session;
pub mod session_verbs;

pub use calls::CallSockets;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::ExposeSecret;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::warn;

use crate::AppState;
use crate::config::Tenant;
use crate::ingress::auth::{basic_credentials, secrets_equal};
use crate::ingress::ws_accept::{Upgrade, UpgradeRejection};
use crate::protocol::jambonz::SUBPROTOCOL;

/// Per-socket read buffer. tungstenite's default is 128 KiB per socket; Jambonz frames are a
/// few KiB, and 10,000 idle calls must fit in well under 200 MB.
const READ_BUFFER: usize = 1024;
/// Largest frame we accept from Jambonz (a session:new with a full SIP INVITE is a few KiB).
const MAX_INBOUND_MESSAGE: usize = 256 * 1024;
/// Largest frame we write: longer messages go in fragments, so a socket's write buffer (kept
/// at its largest frame's size for the socket's life) stays this small.
const FRAGMENT: usize = 1024;

/// The upgrade handler: credentials first, then the subprotocol, then the socket.
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: Result<Upgrade, UpgradeRejection>,
) -> Response {
    let tenants = authenticate(&state.config.tenants, &headers);
    if tenants.is_empty() {
        warn!("jambonz upgrade refused: missing or wrong credentials");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"lifeline\"")],
            "unauthorized\n",
        )
            .into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if !ws.offers_protocol(SUBPROTOCOL) {
        return (
            StatusCode::BAD_REQUEST,
            format!("the {SUBPROTOCOL} subprotocol is required\n"),
        )
            .into_response();
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each frame at once: frames are small and latency matters more than batching.
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(MAX_INBOUND_MESSAGE))
        .max_frame_size(Some(MAX_INBOUND_MESSAGE));
    ws.accept(SUBPROTOCOL, config, move |socket| {
        // Counted until the socket task ends: a stopping process waits for it (axum's
        // graceful shutdown does not wait for upgraded connections).
        let open = state.lifecycle.sockets.token();
        async move {
            session::serve(socket, state, tenants).await;
            drop(open);
        }
    })
}

/// The tenants whose Jambonz credentials match the request's Basic credentials (several
/// tenants may share one Jambonz application; the call's data then picks one).
fn authenticate(tenants: &[Arc<Tenant>], headers: &HeaderMap) -> Vec<Arc<Tenant>> {
    let Some((user, pass)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(basic_credentials)
    else {
        return Vec::new();
    };
    tenants
        .iter()
        .filter(|t| {
            t.jambonz.as_ref().is_some_and(|j| {
                // Both compared, always, so timing does not tell which one was wrong.
                let user_ok = secrets_equal(&j.username, &user);
                let pass_ok = secrets_equal(j.password.expose_secret(), &pass);
                user_ok & pass_ok
            })
        })
        .cloned()
        .collect()
}
