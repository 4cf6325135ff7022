//! [`SignedTwilio`]: the one prelude of every Twilio webhook — read the form, check Twilio's
//! signature over it and the URL requested, parse it — as an axum extractor, so no handler can
//! read a webhook that was not checked.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tracing::error;

use super::{SORRY, say_and_hang_up, verify};
use crate::AppState;
use crate::protocol::twilio as wire;

/// A Twilio webhook whose `X-Twilio-Signature` checked out, parsed into `T` (unknown parameters
/// ignored: Twilio adds new ones at any time).
///
/// Refused: 404 when no Twilio account is configured, 403 (logged, and counted in
/// `lifeline_twilio_webhooks_refused_total{path}`) when the signature does not match. A signed
/// form that does not parse is answered with an apology and a hang-up in TwiML, status 200: a
/// Twilio caller who gets an error status hears "an application error has occurred".
#[derive(Debug)]
pub(crate) struct SignedTwilio<T>(pub T);

impl<T> FromRequest<AppState> for SignedTwilio<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        // Behind a nested router the URI is rewritten; Twilio signed the one it requested.
        let uri = match OriginalUri::from_request_parts(&mut parts, state).await {
            Ok(OriginalUri(uri)) => uri,
            Err(never) => match never {},
        };
        let headers = parts.headers.clone();
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        verify(state, &uri, &headers, &body).map_err(IntoResponse::into_response)?;
        wire::parse_webhook(&body).map(SignedTwilio).map_err(|e| {
            error!(path = uri.path(), error = %e, "unreadable Twilio webhook");
            say_and_hang_up(SORRY)
        })
    }
}
