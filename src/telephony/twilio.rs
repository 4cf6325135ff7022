//! Twilio REST: live-call updates, and the [`CallControl`] of calls bridged through Twilio.
//!
//! A transfer replaces the call's TwiML (`<Connect><Stream>` to Ultravox) with a `<Dial>`
//! (reference §3.2, §4.1, §4.2). The wire formats live in [`crate::protocol::twilio`]; this
//! module adds the I/O: retries, a deadline and a circuit breaker.
//!
//! Metric: `lifeline_twilio_requests_total{outcome}`, one per attempt; `outcome` is `ok`,
//! `retryable` (429, 5xx, early 404), `call_gone`, `rejected`, `timeout`, `network` or
//! `circuit_open` (nothing sent).

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use reqwest::header::ACCEPT;
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use super::{CallControl, TelephonyError, TransferPlan};
use crate::breaker::{BreakerOpen, CircuitBreaker};
use crate::config::TwilioSettings;
use crate::phone::mask;
use crate::protocol::twilio::{
    AbsoluteUrl, Dial, ERROR_INVALID_CALL_STATE, FailureKind, HttpMethod, Number, Response,
    RestError, Say, call_resource_path, update_call_form,
};

/// Backoff between attempts of one update: short, because the whole update must fit in a
/// deadline of a few seconds; jittered, so that calls failing together do not retry together.
const RETRY_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(Duration::from_secs(1))
    .with_jitter()
    // The deadline ends the retries, not a count.
    .without_max_times();

/// A Twilio REST client for one account.
pub struct TwilioClient {
    http: reqwest::Client,
    account_sid: String,
    auth_token: SecretString,
    api_base: String,
    update_deadline: Duration,
    breaker: Arc<CircuitBreaker>,
    backoff: ExponentialBuilder,
}

impl fmt::Debug for TwilioClient {
    // By hand, so that the auth token can never reach a log through `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwilioClient")
            .field("account_sid", &self.account_sid)
            .field("api_base", &self.api_base)
            .field("update_deadline", &self.update_deadline)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// How one attempt of an update ended, when it did not succeed.
#[derive(Debug)]
enum AttemptError {
    /// Worth another attempt.
    Transient(String),
    /// The call has ended.
    CallGone,
    /// Twilio refused the update for good.
    Rejected(RestError),
    /// The breaker refused: nothing was sent, and retrying within the deadline cannot help.
    CircuitOpen(BreakerOpen),
}

impl AttemptError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }

    fn into_telephony(self) -> TelephonyError {
        match self {
            Self::Transient(text) => TelephonyError::Transient(text),
            Self::CallGone => TelephonyError::CallGone,
            Self::Rejected(error) => {
                TelephonyError::Rejected(redact_phone_numbers(&error.to_string()))
            }
            Self::CircuitOpen(open) => TelephonyError::Transient(open.to_string()),
        }
    }
}

impl TwilioClient {
    /// A client for the account in `settings`, sending through `http` (shared, so connections
    /// to Twilio are reused) and guarded by `breaker`.
    pub fn new(
        settings: &TwilioSettings,
        http: reqwest::Client,
        breaker: Arc<CircuitBreaker>,
    ) -> Self {
        Self {
            http,
            account_sid: settings.account_sid.clone(),
            auth_token: settings.auth_token.clone(),
            api_base: settings.api_base.trim_end_matches('/').to_owned(),
            update_deadline: settings.update_deadline,
            breaker,
            backoff: RETRY_BACKOFF,
        }
    }

    /// The breaker guarding this client's requests.
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    /// Replaces the TwiML of the live call `call_sid` (which started at `call_started_at`)
    /// with `twiml`.
    ///
    /// Transient failures (no response, 429, 5xx, and a 404 in the first seconds of a call,
    /// before Twilio knows it everywhere) are retried with backoff; all attempts together take
    /// at most the configured `update_deadline`, so that a failed transfer can still be
    /// recorded, with its callback request, within the tool's own deadline.
    ///
    /// An attempt that timed out may have been applied; it is retried anyway: the same TwiML
    /// again only restarts the dial, while giving up would report a failed transfer for a call
    /// that is being transferred.
    ///
    /// Errors: [`TelephonyError::CallGone`] for 21220 or a 404 after the grace period,
    /// [`TelephonyError::Rejected`] for any other refusal (including TwiML longer than Twilio
    /// accepts), [`TelephonyError::Transient`] when the deadline passed without success or the
    /// circuit is open (then nothing is sent).
    pub async fn update_call_twiml(
        &self,
        call_sid: &str,
        twiml: &str,
        call_started_at: DateTime<Utc>,
    ) -> Result<(), TelephonyError> {
        let form = update_call_form(twiml).map_err(|e| TelephonyError::Rejected(e.to_string()))?;
        let url = format!(
            "{}{}",
            self.api_base,
            call_resource_path(&self.account_sid, call_sid)
        );
        let attempts = AtomicU32::new(0);
        let last_failure: Mutex<Option<String>> = Mutex::new(None);
        let attempt = || {
            let (url, form, attempts, last_failure) = (&url, &form, &attempts, &last_failure);
            async move {
                attempts.fetch_add(1, Ordering::Relaxed);
                let result = self.attempt(url, form, call_started_at).await;
                if let Err(AttemptError::Transient(text)) = &result {
                    *last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(text.clone());
                }
                result
            }
        };
        let retried = attempt
            .retry(self.backoff)
            .when(AttemptError::is_transient)
            .notify(|error, delay| {
                debug!(
                    call_sid,
                    ?error,
                    delay_ms = delay.as_millis() as u64,
                    "retrying the Twilio call update"
                );
            });
        let outcome = match tokio::time::timeout(self.update_deadline, retried).await {
            Ok(result) => result.map_err(AttemptError::into_telephony),
            Err(_elapsed) => {
                let last = last_failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .unwrap_or_else(|| "no answer".to_owned());
                Err(TelephonyError::Transient(format!(
                    "no success within {} ms; last failure: {last}",
                    self.update_deadline.as_millis()
                )))
            }
        };
        let attempts = attempts.load(Ordering::Relaxed);
        match &outcome {
            Ok(()) => info!(call_sid, attempts, "Twilio call updated"),
            Err(error) => warn!(call_sid, attempts, %error, "Twilio call update failed"),
        }
        outcome
    }

    /// One request. Feeds the breaker: a failure is Twilio not working (no response, 429,
    /// 5xx); any other answer, even a refusal, shows Twilio is up.
    async fn attempt(
        &self,
        url: &str,
        form: &[(&'static str, String)],
        call_started_at: DateTime<Utc>,
    ) -> Result<(), AttemptError> {
        let permit = match self.breaker.acquire() {
            Ok(permit) => permit,
            Err(open) => {
                count("circuit_open");
                return Err(AttemptError::CircuitOpen(open));
            }
        };
        let sent = self
            .http
            .post(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .header(ACCEPT, "application/json")
            .form(form)
            .timeout(self.attempt_timeout())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                permit.failure();
                let timed_out = error.is_timeout();
                count(if timed_out { "timeout" } else { "network" });
                let text = if timed_out {
                    format!(
                        "no answer from Twilio within {} ms",
                        self.attempt_timeout().as_millis()
                    )
                } else {
                    format!("Twilio unreachable: {}", error_chain(&error))
                };
                return Err(AttemptError::Transient(text));
            }
        };
        let status = response.status();
        if status.is_success() {
            permit.success();
            count("ok");
            return Ok(());
        }
        let twilio_down =
            status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
        permit.record(!twilio_down);
        // A body that cannot be read still leaves the status to judge by.
        let body = response.bytes().await.unwrap_or_default();
        let error = RestError::parse(status.as_u16(), &body);
        let call_age = (Utc::now() - call_started_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        debug!(
            http_status = error.http_status,
            code = error.code,
            call_age_ms = call_age.as_millis() as u64,
            "Twilio refused a call update"
        );
        let failure = match error.update_failure(call_age) {
            FailureKind::Transient => {
                AttemptError::Transient(redact_phone_numbers(&error.to_string()))
            }
            FailureKind::Permanent
                if error.code == Some(ERROR_INVALID_CALL_STATE) || error.http_status == 404 =>
            {
                AttemptError::CallGone
            }
            FailureKind::Permanent => AttemptError::Rejected(error),
        };
        count(match &failure {
            AttemptError::Transient(_) => "retryable",
            AttemptError::CallGone => "call_gone",
            _ => "rejected",
        });
        Err(failure)
    }

    /// Half the deadline per request: a request that hangs still leaves time for another.
    fn attempt_timeout(&self) -> Duration {
        self.update_deadline / 2
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("lifeline_twilio_requests_total", "outcome" => outcome).increment(1);
}

/// A reqwest error with its causes ("connection refused" is only in the source chain), without
/// the URL.
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = current {
        let part = error.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        current = error.source();
    }
    text
}

/// `text` with every run of 7 or more digits (with an optional leading `+`) masked: error
/// messages from the platforms may quote the numbers of a request, and they end up in logs.
pub(crate) fn redact_phone_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '+' && !c.is_ascii_digit() {
            out.push(c);
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = i + 1;
            chars.next();
        }
        let run = &text[start..end];
        let digits = run.trim_start_matches('+').len();
        if digits >= 7 {
            out.push_str(&mask(run));
        } else {
            out.push_str(run);
        }
    }
    out
}

/// The TwiML that transfers the caller: an optional announcement, then a `<Dial>` of the
/// plan's target that reports its outcome to `{public_url}/twilio/dial-action?attempt=…` and
/// plays the callee a whisper from `{public_url}/twilio/whisper?attempt=…` before bridging.
/// `answerOnBridge` keeps the caller hearing ringing until the callee is connected.
///
/// Fails (as [`TelephonyError::Rejected`]) if `public_url` is not an absolute http(s) URL:
/// Twilio rejects relative URLs in TwiML given to a live call (error 15004).
/// `plan.trunk` is a Jambonz notion and is not used.
pub fn transfer_twiml(public_url: &str, plan: &TransferPlan) -> Result<String, TelephonyError> {
    let base = public_url.trim_end_matches('/');
    let attempt = plan.attempt_id;
    let action = AbsoluteUrl::parse(&format!("{base}/twilio/dial-action?attempt={attempt}"))
        .map_err(|e| TelephonyError::Rejected(format!("cannot build the transfer TwiML: {e}")))?;
    let number = Number {
        url: Some(format!("{base}/twilio/whisper?attempt={attempt}")),
        method: Some(HttpMethod::Post),
        // A machine is told apart before the gate: Twilio sends `AnsweredBy` with the whisper
        // request.
        machine_detection: plan.gate,
        ..Number::new(plan.target.clone())
    };
    let dial = Dial {
        method: Some(HttpMethod::Post),
        timeout: Some(plan.ring_timeout_secs),
        caller_id: plan.caller_id.clone(),
        answer_on_bridge: Some(true),
        ..Dial::new(action, number)
    };
    let mut response = Response::new();
    if !plan.announcement.trim().is_empty() {
        response = response.verb(Say::new(plan.announcement.clone()));
    }
    Ok(response.verb(dial).to_xml())
}

/// Acts on one live call bridged to Ultravox through Twilio.
#[derive(Debug)]
pub struct TwilioCallControl {
    client: Arc<TwilioClient>,
    call_sid: String,
    call_started_at: DateTime<Utc>,
    public_url: String,
}

impl TwilioCallControl {
    /// Control of the call `call_sid`, started at `call_started_at` (for the 404 grace
    /// period), with callbacks under `public_url`.
    pub fn new(
        client: Arc<TwilioClient>,
        call_sid: impl Into<String>,
        call_started_at: DateTime<Utc>,
        public_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            call_sid: call_sid.into(),
            call_started_at,
            public_url: public_url.into(),
        }
    }
}

#[async_trait]
impl CallControl for TwilioCallControl {
    /// Replaces the call's TwiML with [`transfer_twiml`]; this also ends the media stream to
    /// Ultravox, and so the AI's part of the call.
    async fn transfer(&self, plan: &TransferPlan) -> Result<(), TelephonyError> {
        let twiml = transfer_twiml(&self.public_url, plan)?;
        info!(
            call_sid = %self.call_sid,
            attempt_id = %plan.attempt_id,
            target = %mask(&plan.target),
            "transferring the Twilio call"
        );
        self.client
            .update_call_twiml(&self.call_sid, &twiml, self.call_started_at)
            .await
    }

    /// Nothing to send: on the Twilio path the hang-up tool answers Ultravox with the
    /// hang-up response type, Ultravox ends its media stream after the goodbye, and since
    /// nothing follows `<Connect>` in our TwiML, Twilio then ends the call. A REST hang-up here
    /// would cut the goodbye short.
    async fn hang_up(&self) -> Result<(), TelephonyError> {
        debug!(call_sid = %self.call_sid, "Twilio call ends when Ultravox ends its stream");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use serde_json::json;
    use uuid::Uuid;
    use wiremock::matchers::{basic_auth, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::breaker::BreakerState;

    const ACCOUNT: &str = "AC00000000000000000000000000000000";
    const CALL: &str = "CA11111111111111111111111111111111";
    const TOKEN: &str = "auth-token-secret";
    const CALL_PATH: &str = "/2010-04-01/Accounts/AC00000000000000000000000000000000/Calls/CA11111111111111111111111111111111.json";
    const TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Dial \
                         action=\"https://svc.example/twilio/dial-action?attempt=1\">\
                         <Number>+15558675310</Number></Dial></Response>";

    fn client_with(
        api_base: String,
        deadline: Duration,
        breaker: Arc<CircuitBreaker>,
    ) -> TwilioClient {
        let settings = TwilioSettings {
            account_sid: ACCOUNT.into(),
            auth_token: TOKEN.into(),
            api_base,
            update_deadline: deadline,
        };
        let mut client = TwilioClient::new(&settings, reqwest::Client::new(), breaker);
        // Same policy, shorter waits: the tests count attempts within short deadlines.
        client.backoff = RETRY_BACKOFF
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_millis(100));
        client
    }

    fn client(server: &MockServer, deadline: Duration) -> TwilioClient {
        client_with(
            server.uri(),
            deadline,
            Arc::new(CircuitBreaker::new("twilio")),
        )
    }

    async fn requests(server: &MockServer) -> usize {
        server.received_requests().await.unwrap_or_default().len()
    }

    fn error_21220() -> ResponseTemplate {
        ResponseTemplate::new(400).set_body_json(json!({
            "code": 21220,
            "message": "Call is not in-progress. Cannot redirect.",
            "more_info": "https://www.twilio.com/docs/errors/21220",
            "status": 400
        }))
    }

    #[tokio::test]
    async fn sends_the_update_twilio_expects() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(CALL_PATH))
            .and(basic_auth(ACCOUNT, TOKEN))
            .and(header("accept", "application/json"))
            .and(header("content-type", "application/x-www-form-urlencoded"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "sid": CALL, "account_sid": ACCOUNT, "status": "in-progress"
            })))
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, Duration::from_secs(2));
        client
            .update_call_twiml(CALL, TWIML, Utc::now())
            .await
            .expect("updated");
        let received = server.received_requests().await.unwrap();
        let authorization = received[0].headers["authorization"].to_str().unwrap();
        assert_eq!(
            authorization,
            "Basic QUMwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDphdXRoLXRva2VuLXNlY3JldA=="
        );
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&received[0].body).unwrap();
        assert_eq!(form, [("Twiml".to_owned(), TWIML.to_owned())]);
        assert_eq!(client.breaker().state(), BreakerState::Closed);
    }

    #[tokio::test]
    async fn a_404_early_in_the_call_is_retried() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(CALL_PATH))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({
                "code": 20404, "message": "The requested resource was not found", "status": 404
            })))
            .up_to_n_times(1)
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(CALL_PATH))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        client(&server, Duration::from_secs(2))
            .update_call_twiml(CALL, TWIML, Utc::now() - chrono::Duration::seconds(2))
            .await
            .expect("updated after a retry");
    }

    #[tokio::test]
    async fn a_404_after_the_grace_period_means_the_call_is_gone() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(404).set_body_json(json!({
                "code": 20404, "message": "The requested resource was not found", "status": 404
            })))
            .expect(1)
            .mount(&server)
            .await;
        let result = client(&server, Duration::from_secs(2))
            .update_call_twiml(CALL, TWIML, Utc::now() - chrono::Duration::seconds(60))
            .await;
        assert!(
            matches!(result, Err(TelephonyError::CallGone)),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_the_deadline() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503).set_body_string("upstream unavailable"))
            .mount(&server)
            .await;
        let deadline = Duration::from_millis(400);
        let client = client_with(
            server.uri(),
            deadline,
            Arc::new(CircuitBreaker::with_settings(
                "twilio",
                crate::breaker::BreakerSettings {
                    failure_threshold: 1000,
                    ..Default::default()
                },
            )),
        );
        let started = Instant::now();
        let result = client.update_call_twiml(CALL, TWIML, Utc::now()).await;
        let elapsed = started.elapsed();
        let Err(TelephonyError::Transient(text)) = result else {
            panic!("transient expected: {result:?}");
        };
        assert!(text.contains("no success within 400 ms"), "{text}");
        assert!(text.contains("Twilio HTTP 503"), "{text}");
        assert!(elapsed >= deadline, "{elapsed:?}");
        assert!(
            elapsed < deadline + Duration::from_millis(1000),
            "{elapsed:?}"
        );
        assert!(requests(&server).await > 1, "more than one attempt");
    }

    #[tokio::test]
    async fn a_hung_request_is_cut_by_the_deadline() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
            .mount(&server)
            .await;
        let deadline = Duration::from_millis(400);
        let started = Instant::now();
        let result = client(&server, deadline)
            .update_call_twiml(CALL, TWIML, Utc::now())
            .await;
        let elapsed = started.elapsed();
        assert!(
            matches!(&result, Err(TelephonyError::Transient(text)) if text.contains("no answer from Twilio within 200 ms")),
            "{result:?}"
        );
        assert!(
            elapsed < deadline + Duration::from_millis(1000),
            "{elapsed:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_twilio_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let breaker = Arc::new(CircuitBreaker::with_settings(
            "twilio",
            crate::breaker::BreakerSettings {
                failure_threshold: 1000,
                ..Default::default()
            },
        ));
        let client = client_with(
            format!("http://{address}"),
            Duration::from_millis(300),
            breaker,
        );
        let result = client.update_call_twiml(CALL, TWIML, Utc::now()).await;
        assert!(
            matches!(&result, Err(TelephonyError::Transient(text)) if text.contains("Twilio unreachable")),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn invalid_call_state_is_call_gone_at_once() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(error_21220())
            .expect(1)
            .mount(&server)
            .await;
        let client = client(&server, Duration::from_secs(2));
        let result = client.update_call_twiml(CALL, TWIML, Utc::now()).await;
        assert!(
            matches!(result, Err(TelephonyError::CallGone)),
            "{result:?}"
        );
        assert_eq!(requests(&server).await, 1);
    }

    #[tokio::test]
    async fn other_client_errors_are_rejected_at_once() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "code": 13223,
                "message": "Dial: Invalid phone number format +15558675310",
                "more_info": "https://www.twilio.com/docs/errors/13223",
                "status": 400
            })))
            .expect(1)
            .mount(&server)
            .await;
        let result = client(&server, Duration::from_secs(2))
            .update_call_twiml(CALL, TWIML, Utc::now())
            .await;
        let Err(TelephonyError::Rejected(text)) = result else {
            panic!("rejected expected: {result:?}");
        };
        assert_eq!(
            text,
            "Twilio HTTP 400 error 13223: Dial: Invalid phone number format ****5310"
        );
        assert_eq!(requests(&server).await, 1);
    }

    #[tokio::test]
    async fn too_long_twiml_is_rejected_without_a_request() {
        let server = MockServer::start().await;
        let long = format!("<Response><Say>{}</Say></Response>", "a".repeat(4000));
        let result = client(&server, Duration::from_secs(2))
            .update_call_twiml(CALL, &long, Utc::now())
            .await;
        assert!(
            matches!(result, Err(TelephonyError::Rejected(_))),
            "{result:?}"
        );
        assert_eq!(requests(&server).await, 0);
    }

    #[tokio::test]
    async fn five_transient_failures_open_the_breaker() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .expect(5)
            .mount(&server)
            .await;
        let breaker = Arc::new(CircuitBreaker::new("twilio"));
        let client = client_with(server.uri(), Duration::from_secs(3), breaker.clone());
        // The retries of one update make the five failures; the sixth attempt is refused.
        let first = client.update_call_twiml(CALL, TWIML, Utc::now()).await;
        assert!(
            matches!(&first, Err(TelephonyError::Transient(text)) if text.contains("circuit open")),
            "{first:?}"
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(requests(&server).await, 5);
        let started = Instant::now();
        let second = client.update_call_twiml(CALL, TWIML, Utc::now()).await;
        assert!(
            matches!(&second, Err(TelephonyError::Transient(text)) if text.contains("circuit open")),
            "{second:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(requests(&server).await, 5, "nothing sent while open");
    }

    #[tokio::test]
    async fn refusals_show_twilio_is_up() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(error_21220())
            .mount(&server)
            .await;
        let breaker = Arc::new(CircuitBreaker::new("twilio"));
        let client = client_with(server.uri(), Duration::from_secs(2), breaker.clone());
        for _ in 0..6 {
            let result = client.update_call_twiml(CALL, TWIML, Utc::now()).await;
            assert!(matches!(result, Err(TelephonyError::CallGone)));
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    fn plan(announcement: &str, caller_id: Option<&str>) -> TransferPlan {
        TransferPlan {
            attempt_id: Uuid::parse_str("0190a5e8-7c1e-7d3a-9c4b-2f6e8d1a3b5c").unwrap(),
            target: "+15558675310".into(),
            trunk: Some("ignored-trunk".into()),
            caller_id: caller_id.map(str::to_owned),
            ring_timeout_secs: 25,
            announcement: announcement.into(),
            gate: false,
        }
    }

    #[test]
    fn transfer_twiml_has_every_attribute_and_escapes_the_announcement() {
        let twiml = transfer_twiml(
            "https://svc.example/",
            &plan("Connecting you <b>&\"' now", Some("+15550001111")),
        )
        .unwrap();
        assert_eq!(
            twiml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>\
             <Say>Connecting you &lt;b&gt;&amp;&quot;&apos; now</Say>\
             <Dial action=\"https://svc.example/twilio/dial-action?attempt=0190a5e8-7c1e-7d3a-9c4b-2f6e8d1a3b5c\" \
             method=\"POST\" timeout=\"25\" callerId=\"+15550001111\" answerOnBridge=\"true\">\
             <Number url=\"https://svc.example/twilio/whisper?attempt=0190a5e8-7c1e-7d3a-9c4b-2f6e8d1a3b5c\" \
             method=\"POST\">+15558675310</Number></Dial></Response>"
        );
        assert!(!twiml.contains("ignored-trunk"));
        let say = twiml
            .split("<Say>")
            .nth(1)
            .unwrap()
            .split("</Say>")
            .next()
            .unwrap();
        assert_eq!(
            quick_xml::escape::unescape(say).unwrap(),
            "Connecting you <b>&\"' now"
        );
    }

    #[test]
    fn transfer_twiml_without_announcement_or_caller_id() {
        let twiml = transfer_twiml("https://svc.example", &plan("  ", None)).unwrap();
        assert!(!twiml.contains("<Say"), "{twiml}");
        assert!(!twiml.contains("callerId"), "{twiml}");
        assert!(twiml.contains("<Response><Dial action="), "{twiml}");
    }

    #[test]
    fn transfer_twiml_needs_an_absolute_public_url() {
        let result = transfer_twiml("/relative", &plan("hi", None));
        assert!(
            matches!(result, Err(TelephonyError::Rejected(_))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn call_control_transfers_with_rest_and_hangs_up_without() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(CALL_PATH))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let control = TwilioCallControl::new(
            Arc::new(client(&server, Duration::from_secs(2))),
            CALL,
            Utc::now(),
            "https://svc.example",
        );
        let plan = plan("One moment.", Some("+15550001111"));
        control.transfer(&plan).await.expect("transferred");
        let received = server.received_requests().await.unwrap();
        let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&received[0].body).unwrap();
        assert_eq!(
            form,
            [(
                "Twiml".to_owned(),
                transfer_twiml("https://svc.example", &plan).unwrap()
            )]
        );
        control.hang_up().await.expect("hang-up");
        assert_eq!(requests(&server).await, 1, "hang-up sends nothing");
    }

    #[test]
    fn debug_output_hides_the_auth_token() {
        let client = client_with(
            "https://api.twilio.com".into(),
            Duration::from_secs(1),
            Arc::new(CircuitBreaker::new("twilio")),
        );
        let debug = format!("{client:?}");
        assert!(debug.contains(ACCOUNT));
        assert!(!debug.contains(TOKEN), "{debug}");
    }

    #[test]
    fn phone_numbers_in_error_text_are_masked() {
        assert_eq!(
            redact_phone_numbers("To +15558675310 or 5558675310, not 20404 or 3 +12"),
            "To ****5310 or ****5310, not 20404 or 3 +12"
        );
        assert_eq!(redact_phone_numbers("é+1234567ü"), "é****4567ü");
        assert_eq!(redact_phone_numbers(""), "");
    }
}
