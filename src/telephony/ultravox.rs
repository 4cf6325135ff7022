//! Ultravox REST: creating calls (reference §2.4) and reading which `{{variables}}` an agent's
//! prompt expects, behind a circuit breaker.
//!
//! Creating a call is not idempotent, so it is retried (twice at most) only when a duplicate
//! call is unlikely and a retry likely to work: a connection that could not be made, or
//! 429, 502, 503, 504 (throttled, or Ultravox unreachable behind its gateway). A timeout or a
//! 500 is not retried: the call may exist.
//!
//! Metric: `lifeline_ultravox_requests_total{op, outcome}`, one per attempt; `op` is
//! `create_agent_call`, `create_call` or `get_agent`; `outcome` is `ok`, `refused` (4xx other
//! than 429), `unavailable` (429, 5xx), `timeout`, `network`, `bad_response` or
//! `circuit_open` (nothing sent).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::twilio::{error_chain, redact_phone_numbers};
use crate::breaker::{BreakerOpen, CircuitBreaker};
use crate::prompt_context::referenced_variables;

/// How long one request may take; the caller bounds the whole call setup with its own,
/// longer, timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// At most two retries, soon after: a caller is waiting in silence.
const RETRY_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_millis(400))
    .with_jitter()
    .with_max_times(2);

/// Longest piece of an Ultravox error body kept in an error.
const MAX_ERROR_CHARS: usize = 200;

/// Why an Ultravox request failed. Never carries the API key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UltravoxApiError {
    /// The breaker refused: Ultravox has been failing; nothing was sent.
    #[error("{0}")]
    CircuitOpen(#[from] BreakerOpen),
    /// No complete answer within the request timeout.
    #[error("no answer from Ultravox in time")]
    Timeout,
    /// No answer at all (connection refused, reset, TLS failure, …).
    #[error("Ultravox unreachable: {0}")]
    Network(String),
    /// Ultravox answered with an error status; `message` is its error text, shortened.
    #[error("Ultravox HTTP {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Ultravox's error text, shortened, phone numbers masked.
        message: String,
    },
    /// A success status with a body that is not what the API promises.
    #[error("unexpected answer from Ultravox: {0}")]
    BadResponse(String),
    /// The request could not be built from what we were given (e.g. an agent id that is not
    /// an id); nothing was sent.
    #[error("invalid Ultravox request: {0}")]
    InvalidRequest(&'static str),
}

/// A call Ultravox created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCall {
    /// `callId`
    pub call_id: String,
    /// `joinUrl`: the `ws://` or `wss://` URL the telephony side streams media to.
    pub join_url: String,
}

/// Cache key of an agent: the API key only as a SHA-256 digest, so the map never holds a
/// secret in clear.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AgentKey {
    api_key_sha256: [u8; 32],
    agent_id: String,
}

struct CachedAgent {
    variables: Arc<BTreeSet<String>>,
    fetched_at: Instant,
}

/// One agent's cache entry. The async lock is held across the fetch, so concurrent misses for
/// the same agent wait for one fetch instead of each making their own.
type AgentSlot = Arc<tokio::sync::Mutex<Option<CachedAgent>>>;

/// An Ultravox REST client, shared by every tenant (each request carries its tenant's key).
pub struct UltravoxApi {
    base: String,
    http: reqwest::Client,
    breaker: Arc<CircuitBreaker>,
    agent_cache_ttl: Duration,
    request_timeout: Duration,
    backoff: ExponentialBuilder,
    /// Bounded by the configured (API key, agent) pairs, so never pruned.
    agents: Mutex<HashMap<AgentKey, AgentSlot>>,
}

impl fmt::Debug for UltravoxApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UltravoxApi")
            .field("base", &self.base)
            .field("breaker", &self.breaker)
            .field("agent_cache_ttl", &self.agent_cache_ttl)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// A failed attempt, and whether another is worth making.
struct AttemptFailure {
    error: UltravoxApiError,
    retry: bool,
}

impl UltravoxApi {
    /// A client for the API at `api_base` (`https://api.ultravox.ai`), sending through `http`,
    /// guarded by `breaker`, caching agents' prompt variables for `agent_cache_ttl`.
    pub fn new(
        api_base: String,
        http: reqwest::Client,
        breaker: Arc<CircuitBreaker>,
        agent_cache_ttl: Duration,
    ) -> Self {
        Self {
            base: api_base.trim_end_matches('/').to_owned(),
            http,
            breaker,
            agent_cache_ttl,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            backoff: RETRY_BACKOFF,
            agents: Mutex::new(HashMap::new()),
        }
    }

    /// The same client with another per-request timeout (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The breaker guarding this client's requests.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Creates a call of the agent `agent_id` (`POST /api/agents/{agent_id}/calls`) with the
    /// request `body` (template context, medium, …).
    pub async fn create_agent_call(
        &self,
        api_key: &str,
        agent_id: &str,
        body: &Value,
    ) -> Result<CreatedCall, UltravoxApiError> {
        check_agent_id(agent_id)?;
        let url = format!("{}/api/agents/{agent_id}/calls", self.base);
        self.create("create_agent_call", api_key, &url, body).await
    }

    /// Creates a call from a full call definition (`POST /api/calls`).
    pub async fn create_call(
        &self,
        api_key: &str,
        body: &Value,
    ) -> Result<CreatedCall, UltravoxApiError> {
        let url = format!("{}/api/calls", self.base);
        self.create("create_call", api_key, &url, body).await
    }

    async fn create(
        &self,
        op: &'static str,
        api_key: &str,
        url: &str,
        body: &Value,
    ) -> Result<CreatedCall, UltravoxApiError> {
        let key = api_key_header(api_key)?;
        let created = self
            .request(
                op,
                || {
                    self.http
                        .post(url)
                        .header("X-API-Key", key.clone())
                        .json(body)
                },
                parse_created_call,
            )
            .await?;
        info!(op, call_id = %created.call_id, "Ultravox call created");
        Ok(created)
    }

    /// The names of the `{{variables}}` the system prompt of agent `agent_id` uses (see
    /// [`referenced_variables`]), from `GET /api/agents/{agent_id}`.
    ///
    /// Cached per API key and agent for the configured TTL: the agent changes rarely, and
    /// fetching it for every call would add a round trip to every call setup. When a refresh
    /// fails, the expired entry is served (and the next call tries again); only a first fetch
    /// can fail.
    pub async fn agent_prompt_variables(
        &self,
        api_key: &str,
        agent_id: &str,
    ) -> Result<Arc<BTreeSet<String>>, UltravoxApiError> {
        check_agent_id(agent_id)?;
        let key = AgentKey {
            api_key_sha256: Sha256::digest(api_key.as_bytes()).into(),
            agent_id: agent_id.to_owned(),
        };
        let slot = self
            .agents
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some(entry) = cached.as_ref()
            && entry.fetched_at.elapsed() < self.agent_cache_ttl
        {
            return Ok(entry.variables.clone());
        }
        match self.fetch_agent_variables(api_key, agent_id).await {
            Ok(variables) => {
                let variables = Arc::new(variables);
                *cached = Some(CachedAgent {
                    variables: variables.clone(),
                    fetched_at: Instant::now(),
                });
                Ok(variables)
            }
            Err(error) => match cached.as_ref() {
                Some(stale) => {
                    warn!(
                        agent_id,
                        %error,
                        age_ms = stale.fetched_at.elapsed().as_millis() as u64,
                        "could not refresh the Ultravox agent; using its cached prompt variables"
                    );
                    Ok(stale.variables.clone())
                }
                None => Err(error),
            },
        }
    }

    async fn fetch_agent_variables(
        &self,
        api_key: &str,
        agent_id: &str,
    ) -> Result<BTreeSet<String>, UltravoxApiError> {
        let key = api_key_header(api_key)?;
        let url = format!("{}/api/agents/{agent_id}", self.base);
        self.request(
            "get_agent",
            || self.http.get(&url).header("X-API-Key", key.clone()),
            parse_agent_variables,
        )
        .await
    }

    /// Sends the request `build` makes, with retries, and parses a success with `parse`.
    async fn request<T>(
        &self,
        op: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, UltravoxApiError> {
        let attempt = || {
            let request = build();
            async move { self.attempt(op, request, parse).await }
        };
        attempt
            .retry(self.backoff)
            .when(|failure: &AttemptFailure| failure.retry)
            .notify(|failure, delay| {
                debug!(op, error = %failure.error, delay_ms = delay.as_millis() as u64, "retrying an Ultravox request");
            })
            .await
            .map_err(|failure| {
                warn!(op, error = %failure.error, "Ultravox request failed");
                failure.error
            })
    }

    /// One request. Feeds the breaker: a failure is Ultravox not working (no answer, 429,
    /// 5xx); any other answer, even a refusal, shows it is up.
    async fn attempt<T>(
        &self,
        op: &'static str,
        request: reqwest::RequestBuilder,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, AttemptFailure> {
        let fail = |outcome: &'static str, error: UltravoxApiError, retry: bool| {
            count(op, outcome);
            Err(AttemptFailure { error, retry })
        };
        let permit = match self.breaker.acquire() {
            Ok(permit) => permit,
            Err(open) => return fail("circuit_open", open.into(), false),
        };
        let sent = request
            .header(ACCEPT, "application/json")
            .timeout(self.request_timeout)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                permit.failure();
                if error.is_timeout() {
                    return fail("timeout", UltravoxApiError::Timeout, false);
                }
                // Only a connection that was never made is sure not to have created anything.
                let retry = error.is_connect();
                return fail(
                    "network",
                    UltravoxApiError::Network(error_chain(&error)),
                    retry,
                );
            }
        };
        let status = response.status();
        let ultravox_down = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        permit.record(!ultravox_down);
        let body = match response.bytes().await {
            Ok(body) => body,
            // The status came, the body did not: whatever the request did is done, so no retry.
            Err(error) if error.is_timeout() => {
                return fail("timeout", UltravoxApiError::Timeout, false);
            }
            Err(error) if status.is_success() => {
                return fail(
                    "network",
                    UltravoxApiError::Network(error_chain(&error)),
                    false,
                );
            }
            Err(_) => Default::default(),
        };
        if status.is_success() {
            return match parse(&body) {
                Ok(value) => {
                    count(op, "ok");
                    Ok(value)
                }
                Err(why) => fail("bad_response", UltravoxApiError::BadResponse(why), false),
            };
        }
        let error = UltravoxApiError::Status {
            status: status.as_u16(),
            message: error_message(&body),
        };
        let retry = matches!(status.as_u16(), 429 | 502 | 503 | 504);
        let outcome = if ultravox_down {
            "unavailable"
        } else {
            "refused"
        };
        fail(outcome, error, retry)
    }
}

fn count(op: &'static str, outcome: &'static str) {
    metrics::counter!("lifeline_ultravox_requests_total", "op" => op, "outcome" => outcome)
        .increment(1);
}

/// Agent ids are UUIDs; anything beyond `[A-Za-z0-9_-]` could change the request path (`..`,
/// `/`, `?`) and is refused rather than escaped.
fn check_agent_id(agent_id: &str) -> Result<(), UltravoxApiError> {
    let valid = !agent_id.is_empty()
        && agent_id.len() <= 128
        && agent_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(UltravoxApiError::InvalidRequest(
            "an agent id has only letters, digits, '-' and '_'",
        ))
    }
}

/// The `X-API-Key` value, marked sensitive so that it is left out of any `Debug` output.
fn api_key_header(api_key: &str) -> Result<HeaderValue, UltravoxApiError> {
    let mut value = HeaderValue::from_str(api_key)
        .map_err(|_| UltravoxApiError::InvalidRequest("the API key is not a valid header value"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Ultravox's error text: `detail` (its usual field), `message` or `error` when the body is
/// such a JSON object, else the body itself; shortened, phone numbers masked.
fn error_message(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) => ["detail", "message", "error"]
            .iter()
            .find_map(|name| fields.get(*name).and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| Value::Object(fields).to_string()),
        Ok(other) => other.to_string(),
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let short: String = text.trim().chars().take(MAX_ERROR_CHARS).collect();
    redact_phone_numbers(&short)
}

fn parse_created_call(body: &[u8]) -> Result<CreatedCall, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        call_id: Option<String>,
        join_url: Option<String>,
    }
    let body: Body =
        serde_json::from_slice(body).map_err(|e| format!("the created call is not JSON: {e}"))?;
    let call_id = body
        .call_id
        .filter(|id| !id.is_empty())
        .ok_or("the created call has no callId")?;
    let join_url = body
        .join_url
        .filter(|url| !url.is_empty())
        .ok_or("the created call has no joinUrl")?;
    let scheme = join_url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("ws" | "wss")) {
        return Err("the created call's joinUrl is not a ws:// or wss:// URL".to_owned());
    }
    Ok(CreatedCall { call_id, join_url })
}

fn parse_agent_variables(body: &[u8]) -> Result<BTreeSet<String>, String> {
    let agent: Value =
        serde_json::from_slice(body).map_err(|e| format!("the agent is not JSON: {e}"))?;
    match agent.pointer("/callTemplate/systemPrompt") {
        None | Some(Value::Null) => Ok(BTreeSet::new()),
        Some(Value::String(prompt)) => Ok(referenced_variables(prompt)),
        Some(_) => Err("the agent's callTemplate.systemPrompt is not a string".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use wiremock::matchers::{body_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::breaker::BreakerState;

    const KEY: &str = "uv-secret-api-key";
    const AGENT: &str = "0b3c1e2a-5d6f-4a7b-8c9d-0e1f2a3b4c5d";
    const JOIN_URL: &str = "wss://voice.ultravox.ai/calls/abc/server_web_socket";

    fn api_with(base: String, ttl: Duration) -> UltravoxApi {
        let mut api = UltravoxApi::new(
            base,
            reqwest::Client::new(),
            Arc::new(CircuitBreaker::new("ultravox")),
            ttl,
        );
        // Same policy, shorter waits.
        api.backoff = RETRY_BACKOFF
            .with_min_delay(Duration::from_millis(10))
            .with_max_delay(Duration::from_millis(20));
        api
    }

    fn api(server: &MockServer) -> UltravoxApi {
        api_with(server.uri(), Duration::from_secs(60))
    }

    fn created(status: u16) -> ResponseTemplate {
        ResponseTemplate::new(status).set_body_json(json!({
            "callId": "call-123",
            "joinUrl": JOIN_URL,
            "created": "2026-05-01T10:00:00Z"
        }))
    }

    fn agent(prompt: Option<&str>) -> ResponseTemplate {
        let call_template = match prompt {
            Some(prompt) => json!({"systemPrompt": prompt, "voice": "Mark"}),
            None => json!({"voice": "Mark"}),
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "agentId": AGENT,
            "name": "front desk",
            "callTemplate": call_template
        }))
    }

    async fn requests(server: &MockServer) -> usize {
        server.received_requests().await.unwrap_or_default().len()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[tokio::test]
    async fn creates_an_agent_call() {
        let server = MockServer::start().await;
        let body = json!({
            "templateContext": {"client_name": "Ada"},
            "medium": {"twilio": {}},
            "firstSpeakerSettings": {"agent": {}}
        });
        Mock::given(method("POST"))
            .and(path(format!("/api/agents/{AGENT}/calls")))
            .and(header("x-api-key", KEY))
            .and(header("content-type", "application/json"))
            .and(body_json(&body))
            .respond_with(created(201))
            .expect(1)
            .mount(&server)
            .await;
        let call = api(&server)
            .create_agent_call(KEY, AGENT, &body)
            .await
            .expect("created");
        assert_eq!(
            call,
            CreatedCall {
                call_id: "call-123".into(),
                join_url: JOIN_URL.into(),
            }
        );
    }

    #[tokio::test]
    async fn creates_a_call_answered_with_200() {
        let server = MockServer::start().await;
        let body = json!({"systemPrompt": "Be kind.", "medium": {"twilio": {}}});
        Mock::given(method("POST"))
            .and(path("/api/calls"))
            .and(header("x-api-key", KEY))
            .and(body_json(&body))
            .respond_with(created(200))
            .expect(1)
            .mount(&server)
            .await;
        let call = api(&server).create_call(KEY, &body).await.expect("created");
        assert_eq!(call.call_id, "call-123");
    }

    #[tokio::test]
    async fn a_client_error_is_not_retried() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "detail": format!("Unknown voice for {}: {}", "+15558675310", "x".repeat(300))
            })))
            .expect(1)
            .mount(&server)
            .await;
        let api = api(&server);
        let error = api.create_call(KEY, &json!({})).await.unwrap_err();
        let UltravoxApiError::Status { status, message } = &error else {
            panic!("status error expected: {error:?}");
        };
        assert_eq!(*status, 400);
        assert!(
            message.starts_with("Unknown voice for ****5310: xxx"),
            "{message}"
        );
        assert!(message.chars().count() <= MAX_ERROR_CHARS, "{message}");
        assert!(!error.to_string().contains(KEY));
        assert_eq!(api.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn unavailable_then_created_succeeds_after_a_retry() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(created(201))
            .expect(1)
            .mount(&server)
            .await;
        let call = api(&server)
            .create_agent_call(KEY, AGENT, &json!({}))
            .await
            .expect("created after a retry");
        assert_eq!(call.join_url, JOIN_URL);
    }

    #[tokio::test]
    async fn at_most_two_retries() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(429))
            .up_to_n_times(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(502).set_body_string("<html>bad gateway</html>"))
            .mount(&server)
            .await;
        let error = api(&server).create_call(KEY, &json!({})).await.unwrap_err();
        assert!(
            matches!(&error, UltravoxApiError::Status { status: 502, message } if message == "<html>bad gateway</html>"),
            "{error:?}"
        );
        assert_eq!(requests(&server).await, 3);
    }

    #[tokio::test]
    async fn an_internal_error_is_not_retried() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .expect(1)
            .mount(&server)
            .await;
        let error = api(&server).create_call(KEY, &json!({})).await.unwrap_err();
        assert!(
            matches!(error, UltravoxApiError::Status { status: 500, .. }),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_timeout_is_not_retried() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(created(201).set_delay(Duration::from_secs(2)))
            .expect(1)
            .mount(&server)
            .await;
        let api = api(&server).with_request_timeout(Duration::from_millis(100));
        let started = Instant::now();
        let error = api.create_call(KEY, &json!({})).await.unwrap_err();
        assert!(matches!(error, UltravoxApiError::Timeout), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn an_unreachable_api_is_a_network_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let api = api_with(format!("http://{address}"), Duration::from_secs(60));
        let error = api.create_call(KEY, &json!({})).await.unwrap_err();
        assert!(matches!(error, UltravoxApiError::Network(_)), "{error:?}");
        assert!(!error.to_string().contains(KEY));
    }

    #[tokio::test]
    async fn created_calls_need_an_id_and_a_websocket_join_url() {
        let server = MockServer::start().await;
        let bodies = [
            json!({"callId": "call-123"}),
            json!({"callId": "call-123", "joinUrl": ""}),
            json!({"joinUrl": JOIN_URL}),
            json!({"callId": "call-123", "joinUrl": "https://voice.ultravox.ai/calls/abc"}),
            json!(["not", "an", "object"]),
        ];
        for body in bodies {
            server.reset().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(201).set_body_json(&body))
                .expect(1)
                .mount(&server)
                .await;
            let error = api(&server).create_call(KEY, &json!({})).await.unwrap_err();
            assert!(
                matches!(error, UltravoxApiError::BadResponse(_)),
                "{body}: {error:?}"
            );
        }
        server.reset().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "callId": "call-123", "joinUrl": "WS://loopback/calls/abc"
            })))
            .mount(&server)
            .await;
        assert!(api(&server).create_call(KEY, &json!({})).await.is_ok());
    }

    #[tokio::test]
    async fn odd_agent_ids_and_keys_are_refused_without_a_request() {
        let server = MockServer::start().await;
        let api = api(&server);
        for agent_id in ["", "..", "a/b", "a?b=1", "agent id", "é", &"a".repeat(129)] {
            let error = api
                .create_agent_call(KEY, agent_id, &json!({}))
                .await
                .unwrap_err();
            assert!(
                matches!(error, UltravoxApiError::InvalidRequest(_)),
                "{agent_id}: {error:?}"
            );
            assert!(api.agent_prompt_variables(KEY, agent_id).await.is_err());
        }
        let error = api
            .create_call("key\nwith newline", &json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(error, UltravoxApiError::InvalidRequest(_)),
            "{error:?}"
        );
        assert!(!error.to_string().contains("newline"));
        assert_eq!(requests(&server).await, 0);
    }

    #[tokio::test]
    async fn five_unavailable_answers_open_the_breaker() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .expect(5)
            .mount(&server)
            .await;
        let api = api(&server);
        // One call and its two retries, then a call whose second attempt is refused.
        let first = api.create_call(KEY, &json!({})).await.unwrap_err();
        assert!(matches!(
            first,
            UltravoxApiError::Status { status: 503, .. }
        ));
        assert_eq!(requests(&server).await, 3);
        let second = api.create_call(KEY, &json!({})).await.unwrap_err();
        assert!(
            matches!(second, UltravoxApiError::CircuitOpen(_)),
            "{second:?}"
        );
        assert_eq!(api.breaker().state(), BreakerState::Open);
        let third = api
            .create_agent_call(KEY, AGENT, &json!({}))
            .await
            .unwrap_err();
        assert!(
            matches!(third, UltravoxApiError::CircuitOpen(_)),
            "{third:?}"
        );
        assert!(third.to_string().contains("circuit open"), "{third}");
        assert_eq!(requests(&server).await, 5, "nothing sent while open");
    }

    /// Agents' prompts are read with the scanner inline prompts are rendered with.
    #[test]
    fn template_variable_names() {
        let template_variables = referenced_variables;
        assert_eq!(
            template_variables(
                "Hi {{client_name}} at {{ current_time }}, {{x}}{{y}} {{not a var}}"
            ),
            set(&["client_name", "current_time", "x", "y"])
        );
        assert_eq!(
            template_variables("{{{a}}} {{b} {{ c\n}} {{}} {{d-e}} {{é}} {{f_1}} {{g"),
            set(&["a", "c", "f_1"])
        );
        assert_eq!(template_variables("né {{ café }} {{ok}}"), set(&["ok"]));
        assert!(template_variables("").is_empty());
        assert!(template_variables("{").is_empty());
    }

    #[tokio::test]
    async fn reads_an_agents_prompt_variables_once_per_ttl() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path(format!("/api/agents/{AGENT}")))
            .and(header("x-api-key", KEY))
            .respond_with(agent(Some(
                "Hi {{client_name}} at {{ current_time }}, {{x}}{{y}} {{not a var}}",
            )))
            .expect(1)
            .mount(&server)
            .await;
        let api = api(&server);
        let first = api.agent_prompt_variables(KEY, AGENT).await.unwrap();
        assert_eq!(*first, set(&["client_name", "current_time", "x", "y"]));
        let second = api.agent_prompt_variables(KEY, AGENT).await.unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        // The cache is keyed by the key's digest, never the key.
        let agents = api.agents.lock().unwrap();
        let key = agents.keys().next().unwrap();
        assert_eq!(
            key.api_key_sha256.as_slice(),
            Sha256::digest(KEY.as_bytes()).as_slice()
        );
        assert!(!format!("{key:?}").contains(KEY));
    }

    #[tokio::test]
    async fn an_agent_without_prompt_has_no_variables() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(agent(None))
            .mount(&server)
            .await;
        let variables = api(&server)
            .agent_prompt_variables(KEY, AGENT)
            .await
            .unwrap();
        assert!(variables.is_empty());
    }

    #[tokio::test]
    async fn each_api_key_has_its_own_entry() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(agent(Some("{{a}}")))
            .expect(2)
            .mount(&server)
            .await;
        let api = api(&server);
        api.agent_prompt_variables(KEY, AGENT).await.unwrap();
        api.agent_prompt_variables("other-key", AGENT)
            .await
            .unwrap();
        api.agent_prompt_variables("other-key", AGENT)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn refetches_after_the_ttl() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(agent(Some("{{old}}")))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(agent(Some("{{new}}")))
            .expect(1)
            .mount(&server)
            .await;
        let api = api_with(server.uri(), Duration::from_millis(50));
        assert_eq!(
            *api.agent_prompt_variables(KEY, AGENT).await.unwrap(),
            set(&["old"])
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(
            *api.agent_prompt_variables(KEY, AGENT).await.unwrap(),
            set(&["new"])
        );
    }

    #[tokio::test]
    async fn serves_the_stale_entry_when_a_refresh_fails() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(agent(Some("{{kept}}")))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(500))
            .expect(2)
            .mount(&server)
            .await;
        let api = api_with(server.uri(), Duration::from_millis(20));
        assert_eq!(
            *api.agent_prompt_variables(KEY, AGENT).await.unwrap(),
            set(&["kept"])
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            *api.agent_prompt_variables(KEY, AGENT).await.unwrap(),
            set(&["kept"])
        );
        // Still expired: the next call tries again, and again gets the stale entry.
        assert_eq!(
            *api.agent_prompt_variables(KEY, AGENT).await.unwrap(),
            set(&["kept"])
        );
    }

    #[tokio::test]
    async fn a_first_fetch_failure_is_an_error() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "Not found."})))
            .expect(1)
            .mount(&server)
            .await;
        let error = api(&server)
            .agent_prompt_variables(KEY, AGENT)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, UltravoxApiError::Status { status: 404, message } if message == "Not found."),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_prompt_that_is_not_text_is_a_bad_response() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"callTemplate": {"systemPrompt": 3}})),
            )
            .mount(&server)
            .await;
        let error = api(&server)
            .agent_prompt_variables(KEY, AGENT)
            .await
            .unwrap_err();
        assert!(
            matches!(error, UltravoxApiError::BadResponse(_)),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(agent(Some("{{a}}")).set_delay(Duration::from_millis(100)))
            .expect(1)
            .mount(&server)
            .await;
        let api = api(&server);
        let (a, b, c) = tokio::join!(
            api.agent_prompt_variables(KEY, AGENT),
            api.agent_prompt_variables(KEY, AGENT),
            api.agent_prompt_variables(KEY, AGENT),
        );
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(*c.unwrap(), set(&["a"]));
    }

    #[test]
    fn debug_output_has_no_secret() {
        let api = api_with("https://api.ultravox.ai/".into(), Duration::from_secs(1));
        let debug = format!("{api:?}");
        assert!(debug.contains("https://api.ultravox.ai\""), "{debug}");
        let header = api_key_header(KEY).unwrap();
        assert!(!format!("{header:?}").contains(KEY));
    }
}
