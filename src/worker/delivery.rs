//! One POST of a callback request to a clinic's frontend, and what its answer means.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::Frontend;
use crate::store::CallbackRequestRow;

use super::schedule::parse_retry_after;

/// The header carrying the HMAC-SHA256 signature of a POST.
pub const SIGNATURE_HEADER: &str = "X-Lifeline-Signature";
/// The header carrying the Unix time the signature covers.
pub const TIMESTAMP_HEADER: &str = "X-Lifeline-Timestamp";

/// The JSON body the frontend receives: the original worker's keys (`id`, `callbackNumber`,
/// `callerName`, `petName`, `species`, `concernDescription`, `urgencyLevel`, `callSid`,
/// `createdAt`), then lifeline's.
pub fn body(request: &CallbackRequestRow, attempt: i32) -> Value {
    json!({
        "id": request.id,
        "callbackNumber": request.callback_number,
        "callerName": request.caller_name,
        "petName": request.pet_name,
        "species": request.species,
        "concernDescription": request.concern_description,
        "urgencyLevel": request.urgency_level,
        "callSid": request.call_sid,
        "createdAt": request.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "tenantId": request.tenant_id,
        "reason": request.reason,
        "toolCallLogId": request.tool_call_log_id,
        "attempt": attempt,
        "callId": request.call_id,
        "firstName": request.first_name,
        "lastName": request.last_name,
        "breed": request.breed,
        "age": request.age,
        "urgencyReason": request.urgency_reason,
    })
}

/// `v1=` and the hex HMAC-SHA256, under `secret`, of `"{timestamp}.{body}"`: what a frontend
/// recomputes to check that a POST came from lifeline and was not replayed long after.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// What one POST came to.
#[derive(Debug, Clone)]
pub struct Answer {
    pub latency: Duration,
    pub status: Option<StatusCode>,
    pub verdict: Verdict,
    /// A network error or the status line, for the record.
    pub error: Option<String>,
    /// The start of the response body.
    pub excerpt: Option<String>,
    /// The body, when it was JSON.
    pub json: Option<Value>,
}

/// How to treat an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// 2xx, whatever the body (a 204 or plain text included).
    Delivered,
    /// 408, 429, 5xx, or no answer: try again later (`Retry-After`, when the server sent one).
    Retry { retry_after: Option<Duration> },
    /// Any other status: the frontend refuses this request, and sending it again will not help.
    Rejected,
}

const EXCERPT_BYTES: usize = 1024;
const MAX_JSON_BYTES: usize = 16 * 1024;

/// POSTs `request` to `frontend` with lifeline's headers. `http` must not follow redirects: a
/// redirected POST would arrive as a GET, so a 3xx is reported (and refused) instead.
pub async fn post(
    http: &reqwest::Client,
    frontend: &Frontend,
    request: &CallbackRequestRow,
    attempt: i32,
    timeout: Duration,
    now: DateTime<Utc>,
) -> Answer {
    let body = serde_json::to_vec(&body(request, attempt)).expect("a JSON value serialises");
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let id = HeaderValue::from_str(&request.id.to_string()).expect("a UUID is a header value");
    headers.insert("X-Request-ID", id.clone());
    // The same key on every attempt: a frontend that saw it already has the request.
    headers.insert("Idempotency-Key", id);
    if let Some(key) = &frontend.api_key
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
    {
        headers.insert(AUTHORIZATION, value);
    }
    if let Some(secret) = &frontend.signing_secret {
        let ts = now.timestamp();
        headers.insert(TIMESTAMP_HEADER, HeaderValue::from(ts));
        let sig = signature(secret.expose_secret(), ts, &body);
        headers.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_str(&sig).expect("hex is a header value"),
        );
    }

    let started = Instant::now();
    let sent = http
        .post(&frontend.url)
        .headers(headers)
        .body(body)
        .timeout(timeout)
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                latency: started.elapsed(),
                status: None,
                verdict: Verdict::Retry { retry_after: None },
                error: Some(describe(&e)),
                excerpt: None,
                json: None,
            };
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let location = response
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The body is read within the same timeout; a frontend that answered 2xx has the request
    // even if its body never finishes.
    let bytes = response.bytes().await.unwrap_or_default();
    let latency = started.elapsed();
    // Kept for operators: a small JSON answer as it is, the start of anything else as text. A
    // NUL in a JSON answer (which PostgreSQL refuses) is stored as U+FFFD by the store
    // (`store::text`), so no answer can make the attempt unrecordable; NUL bytes in a text
    // answer are binary noise and are left out of the excerpt.
    let json = (bytes.len() <= MAX_JSON_BYTES)
        .then(|| serde_json::from_slice::<Value>(&bytes).ok())
        .flatten();
    let excerpt = (!bytes.is_empty()).then(|| {
        let end = bytes.len().min(EXCERPT_BYTES);
        String::from_utf8_lossy(&bytes[..end]).replace('\0', "")
    });
    let verdict = if status.is_success() {
        Verdict::Delivered
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Verdict::Retry { retry_after }
    } else {
        Verdict::Rejected
    };
    let error = match (&verdict, location) {
        (Verdict::Delivered, _) => None,
        (_, Some(to)) if status.is_redirection() => Some(format!(
            "frontend answered {status} to {to}: configure the final URL (a redirected POST is not followed)"
        )),
        _ => Some(format!("frontend answered {status}")),
    };
    Answer {
        latency,
        status: Some(status),
        verdict,
        error,
        excerpt,
        json,
    }
}

/// A network error in one line, with its cause (reqwest's own text omits it).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() {
        format!("{kind}: {e}")
    } else {
        format!("{kind}: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac
        // 'frontend-signing-secret'
        assert_eq!(
            signature("frontend-signing-secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=a72b7cb5a4013c0e9d2ce63811289dc01f9cd903d7619c1ab642e7e0a4954343"
        );
    }
}
