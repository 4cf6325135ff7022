//! Staff login: argon2 password hashes, a random session token in an HttpOnly, SameSite=Strict
//! cookie (stored hashed), a CSRF token per session checked on every action together with the
//! request's origin, and a lock-out after repeated failures.

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Redirect, Response};
use base64::Engine as _;
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::store::NewSession;

use super::pages;

/// The session cookie.
pub const SESSION_COOKIE: &str = "lifeline_session";
/// The login form's double-submit CSRF cookie.
const LOGIN_COOKIE: &str = "lifeline_login";

/// A logged-in staff member.
#[derive(Debug, Clone)]
pub struct Staff {
    pub username: String,
    /// The one clinic this staff member sees; `None`: every clinic.
    pub tenant: Option<String>,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    pub(super) token_hash: String,
}

impl Staff {
    /// Whether this staff member may see `tenant_id`'s data.
    pub fn sees(&self, tenant_id: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant_id)
    }
}

/// A value of the request's `Cookie` header.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// 32 random bytes, URL-safe base64.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether the client reached us over TLS (directly or through a proxy that says so).
fn behind_tls(state: &AppState, headers: &HeaderMap) -> bool {
    state
        .config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    value: &str,
    max_age: i64,
) -> String {
    format!(
        "{name}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if behind_tls(state, headers) {
            "; Secure"
        } else {
            ""
        }
    )
}

/// Refuses a request that a browser sent from another site: its `Origin` (or, without one, its
/// `Sec-Fetch-Site`) must be this site: the configured public URL's origin when there is one
/// (a proxy may rewrite `Host`), else the request's own host.
pub fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(origin) => match state.config.public_url.as_deref() {
            Some(public) => {
                let public_origin = reqwest::Url::parse(public)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_default();
                origin.eq_ignore_ascii_case(&public_origin)
            }
            None => {
                let bare = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                matches!((bare, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
            }
        },
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_none_or(|site| site == "same-origin" || site == "none"),
    }
}

fn tokens_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks an action's CSRF token and origin: the response to send back when they fail.
pub fn refuse_action(
    state: &AppState,
    staff: &Staff,
    token: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    if same_origin(state, headers) && tokens_equal(&staff.csrf, token) {
        return None;
    }
    tracing::warn!(staff = %staff.username, "action refused: cross-site or bad CSRF token");
    Some(pages::error_page(
        StatusCode::FORBIDDEN,
        "This action was refused: it did not come from a lifeline page. Reload the page and try again.",
    ))
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let refuse = || {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                Redirect::to("/admin/login").into_response()
            } else {
                pages::error_page(StatusCode::UNAUTHORIZED, "Log in first.")
            }
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(refuse());
        };
        let token_hash = hash_token(token);
        let session = state.store.session(&token_hash, Utc::now()).await;
        // The account must still exist, and its clinic is read from it now: removing an account
        // or moving it to another clinic takes effect at once, not at the session's end.
        let account = match &session {
            Ok(Some(s)) => current_tenant(state, &s.username).await,
            _ => Ok(None),
        };
        match (session, account) {
            (Ok(Some(s)), Ok(Some(tenant))) => Ok(Staff {
                username: s.username,
                tenant,
                csrf: s.csrf_token,
                token_hash,
            }),
            (Ok(_), Ok(_)) => Err(refuse()),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "session lookup failed");
                Err(pages::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The database is not answering; try again in a moment.",
                ))
            }
        }
    }
}

/// The clinic an account sees now (`Some(None)`: every clinic), or `None` if it is gone.
async fn current_tenant(
    state: &AppState,
    username: &str,
) -> Result<Option<Option<String>>, crate::store::StoreError> {
    if let Some(s) = state
        .config
        .admin
        .staff
        .iter()
        .find(|s| s.username == username)
    {
        return Ok(Some(s.tenant.clone()));
    }
    Ok(state
        .store
        .staff_account(username)
        .await?
        .map(|a| a.tenant_id))
}

/// Whether a session still stands (the live feed asks now and then).
pub async fn still_valid(state: &AppState, staff: &Staff) -> bool {
    matches!(
        state.store.session(&staff.token_hash, Utc::now()).await,
        Ok(Some(_))
    ) && matches!(
        current_tenant(state, &staff.username).await,
        Ok(Some(tenant)) if tenant == staff.tenant
    )
}

/// `GET /admin/login`.
pub async fn login_form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let csrf = random_token();
    let page = pages::login_page(&csrf, None);
    (
        [(
            header::SET_COOKIE,
            set_cookie(&state, &headers, LOGIN_COOKIE, &csrf, 3600),
        )],
        page,
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

/// `POST /admin/login`.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let fail = |message: &str, status: StatusCode| {
        let csrf = random_token();
        (
            status,
            [(
                header::SET_COOKIE,
                set_cookie(&state, &headers, LOGIN_COOKIE, &csrf, 3600),
            )],
            pages::login_page(&csrf, Some(message)),
        )
            .into_response()
    };
    let cookie_token = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !same_origin(&state, &headers)
        || cookie_token.is_empty()
        || !tokens_equal(cookie_token, &form.csrf)
    {
        return fail(
            "The login form expired or came from another site; please try again.",
            StatusCode::FORBIDDEN,
        );
    }
    let settings = &state.config.admin;
    let now = Utc::now();
    let username = form.username.trim().to_string();
    let db_down = || {
        fail(
            "The database is not answering; try again.",
            StatusCode::SERVICE_UNAVAILABLE,
        )
    };
    let locked_message = |until: chrono::DateTime<Utc>| {
        format!(
            "Too many failed attempts: this account is locked until {} UTC.",
            until.format("%H:%M")
        )
    };
    // A name no account can have is not looked up nor counted (it would only fill the table),
    // but it is still checked against a hash, so that it takes as long as a real one.
    let plausible = crate::config::valid_username(&username);
    if plausible {
        match state.store.locked_until(&username, now).await {
            Ok(Some(until)) => return fail(&locked_message(until), StatusCode::TOO_MANY_REQUESTS),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "login: database error");
                return db_down();
            }
        }
    }
    // Counted before the password is checked, as failed until it succeeds: guesses sent in
    // parallel all count, and the one past the limit is refused unchecked.
    if plausible {
        match state
            .store
            .record_login_failure(
                &username,
                now,
                chrono::Duration::from_std(settings.failure_window).unwrap_or_default(),
                settings.max_failures + 1,
                chrono::Duration::from_std(settings.lockout).unwrap_or_default(),
            )
            .await
        {
            Ok((_, Some(until))) => {
                audit_failure(&state, now, &username, "locked_out").await;
                return fail(&locked_message(until), StatusCode::TOO_MANY_REQUESTS);
            }
            Ok((_, None)) => {}
            Err(e) => {
                // No count, no check: a login that cannot be counted is refused.
                tracing::error!(error = %e, "login: could not count the attempt");
                return db_down();
            }
        }
    }
    // Accounts from the configuration first, then those made with the CLI.
    let account = match settings.staff.iter().find(|s| s.username == username) {
        Some(s) => Some((s.password_hash.clone(), s.tenant.clone())),
        None if !plausible => None,
        None => match state.store.staff_account(&username).await {
            Ok(a) => a.map(|a| (a.password_hash, a.tenant_id)),
            Err(e) => {
                tracing::error!(error = %e, "login: database error");
                return db_down();
            }
        },
    };
    let known = account.is_some();
    let hash = account
        .as_ref()
        .map_or_else(|| dummy_hash().to_string(), |(h, _)| h.clone());
    let password = form.password;
    // argon2 takes tens of milliseconds and ~19 MiB per check: off the async threads, and a
    // few at a time, so a flood of logins cannot exhaust memory or the blocking pool.
    let verified = {
        let _permit = ARGON2_SLOTS.acquire().await;
        tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .unwrap_or(false)
    };
    if !(known && verified) {
        metrics::counter!("lifeline_admin_logins_total", "outcome" => "failed").increment(1);
        tracing::warn!("dashboard login failed");
        // A name that is no account may be a password typed in the wrong field: not kept.
        let actor = if known {
            username.as_str()
        } else {
            "(unknown name)"
        };
        audit_failure(&state, now, actor, "login_failed").await;
        return fail("Wrong username or password.", StatusCode::UNAUTHORIZED);
    }
    let tenant = account.and_then(|(_, t)| t);
    let token = random_token();
    let session = NewSession {
        token_hash: hash_token(&token),
        username: username.clone(),
        tenant_id: tenant,
        csrf_token: random_token(),
        created_at: now,
        expires_at: now + chrono::Duration::from_std(settings.session_ttl).unwrap_or_default(),
    };
    let saved = async {
        state.store.clear_login_failures(&username).await?;
        state.store.create_session(&session).await?;
        state
            .store
            .audit(now, &username, "login", serde_json::json!({}))
            .await
    }
    .await;
    if let Err(e) = saved {
        tracing::error!(error = %e, "login: could not store the session");
        return fail(
            "The database is not answering; try again.",
            StatusCode::SERVICE_UNAVAILABLE,
        );
    }
    metrics::counter!("lifeline_admin_logins_total", "outcome" => "ok").increment(1);
    tracing::info!(staff = %username, "dashboard login");
    let ttl = i64::try_from(settings.session_ttl.as_secs()).unwrap_or(43_200);
    (
        // Appended: a second `Set-Cookie` must not replace the first.
        AppendHeaders([
            (
                header::SET_COOKIE,
                set_cookie(&state, &headers, SESSION_COOKIE, &token, ttl),
            ),
            (
                header::SET_COOKIE,
                set_cookie(&state, &headers, LOGIN_COOKIE, "", 0),
            ),
        ]),
        Redirect::to("/admin"),
    )
        .into_response()
}

/// How many password checks may run at once.
static ARGON2_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

async fn audit_failure(state: &AppState, at: chrono::DateTime<Utc>, actor: &str, action: &str) {
    if let Err(e) = state
        .store
        .audit(at, actor, action, serde_json::json!({}))
        .await
    {
        tracing::error!(error = %e, "could not audit a failed login");
    }
}

/// Whether `password` matches the PHC `hash`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordVerifier, phc::PasswordHash};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// An argon2id PHC hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A hash to verify against when the name is unknown, so that unknown and known names take
/// the same time (and cannot be told apart by it).
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("no account has this password").unwrap_or_default())
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /admin/logout`.
pub async fn logout(
    State(state): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(r) = refuse_action(&state, &staff, &form.csrf, &headers) {
        return r;
    }
    if let Err(e) = state.store.delete_session(&staff.token_hash).await {
        tracing::error!(error = %e, "logout: could not delete the session");
    }
    if let Err(e) = state
        .store
        .audit(Utc::now(), &staff.username, "logout", serde_json::json!({}))
        .await
    {
        tracing::error!(error = %e, "could not audit a logout");
    }
    (
        [(
            header::SET_COOKIE,
            set_cookie(&state, &headers, SESSION_COOKIE, "", 0),
        )],
        Redirect::to("/admin/login"),
    )
        .into_response()
}
