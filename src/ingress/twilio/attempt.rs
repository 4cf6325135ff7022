//! The `attempt` query parameter of a dial's webhooks (`/twilio/dial-action`,
//! `/twilio/whisper`), read so that it can never reject a request: every answer to Twilio must be
//! TwiML, and a caller whose dial outcome got a 400 would hear "an application error has
//! occurred". The signature check (which covers the query) still decides what is accepted.

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use tracing::warn;
use uuid::Uuid;

/// The attempt a dial's webhooks belong to (lifeline puts it in the URLs it gives Twilio).
/// `None` when absent or unreadable (not a UUID, given twice with different values, not
/// UTF-8): then the webhook is about the attempt ringing for its call, if any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AttemptQuery {
    pub attempt: Option<Uuid>,
}

impl AttemptQuery {
    /// Reads `attempt` from a raw query string.
    pub fn parse(query: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or("")).unwrap_or_default();
        let mut values = pairs
            .into_iter()
            .filter(|(k, _)| k == "attempt")
            .map(|(_, v)| v);
        let Some(first) = values.next() else {
            return Self::default();
        };
        let repeated = values.any(|v| v != first);
        let attempt = Uuid::parse_str(&first).ok().filter(|_| !repeated);
        if attempt.is_none() {
            // Our own URLs always carry one UUID: something rewrote this one.
            warn!(
                repeated,
                "unreadable attempt in a dial webhook's URL; taken as the attempt ringing now"
            );
        }
        Self { attempt }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AttemptQuery {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(Self::parse(parts.uri.query()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_readable_uuid_is_an_attempt() {
        let id = "0190a0b1-0000-7000-8000-000000000001";
        let parsed = |q: &str| AttemptQuery::parse(Some(q)).attempt;
        assert_eq!(parsed(&format!("attempt={id}")), Uuid::parse_str(id).ok());
        assert_eq!(
            parsed(&format!("attempt={id}&attempt={id}")),
            Uuid::parse_str(id).ok()
        );
        assert_eq!(parsed("attempt=not-a-uuid"), None);
        assert_eq!(parsed(&format!("attempt={id}&attempt=other")), None);
        assert_eq!(parsed("attempt=%FF%FE&x=%"), None);
        assert_eq!(parsed(""), None);
        assert_eq!(AttemptQuery::parse(None).attempt, None);
    }
}
