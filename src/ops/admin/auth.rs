//! Staff login: argon2 password hashes, a random session token in an HttpOnly, SameSite=Strict
//! cookie (stored hashed), a CSRF token per session checked on every action together with the
//! request's origin, and a lock-out after repeated failures.

use std::time::Duration;

use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
// Hashing lives below the configuration, which hashes the demo's staff password; re-exported
// here, where staff login and tests look for it.
pub use crate::password::{hash_password, verify_password};
use crate::store::NewSession;

use super::error::AdminError;
use super::pages;
use super::staff::Staff;

/// The session cookie.
const SESSION_COOKIE: &str = "lifeline_session";
/// The login form's double-submit CSRF cookie.
const LOGIN_COOKIE: &str = "lifeline_login";
/// How long a login form stays good.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(3600);

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

/// One of the dashboard's cookies: for its pages only, out of scripts' reach, never sent with
/// a request from another site, and only over TLS when the client uses TLS. A zero `max_age`
/// (with an empty value) clears the cookie.
fn cookie(
    state: &AppState,
    headers: &HeaderMap,
    name: &'static str,
    value: String,
    max_age: Duration,
) -> Cookie<'static> {
    let mut cookie = Cookie::build((name, value))
        .path("/admin")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(behind_tls(state, headers));
    // `Max-Age` is whole seconds in an i64: only an absurd session length does not fit, and
    // then the cookie lasts as long as the browser (the session still ends on the server).
    if let Ok(max_age) = max_age.try_into() {
        cookie = cookie.max_age(max_age);
    }
    cookie.build()
}

/// Refuses a request that a browser sent from another site: its `Origin` (or, without one, its
/// `Sec-Fetch-Site`) must be this site: the configured public URL's origin when there is one
/// (a proxy may rewrite `Host`), else the request's own host.
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
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

/// Checks an action's CSRF token and origin: refused unless both are this session's and site's.
pub(super) fn check_action(
    state: &AppState,
    staff: &Staff,
    token: &str,
    headers: &HeaderMap,
) -> Result<(), AdminError> {
    if same_origin(state, headers) && tokens_equal(&staff.csrf, token) {
        return Ok(());
    }
    tracing::warn!(staff = %staff.username, "action refused: cross-site or bad CSRF token");
    Err(AdminError::Refused)
}

impl FromRequestParts<AppState> for Staff {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AdminError> {
        let refuse = || {
            if parts.method == Method::GET || parts.method == Method::HEAD {
                AdminError::LoginNeeded
            } else {
                AdminError::Unauthorized
            }
        };
        let jar = CookieJar::from_headers(&parts.headers);
        let Some(token) = jar.get(SESSION_COOKIE).map(Cookie::value) else {
            return Err(refuse());
        };
        let token_hash = hash_token(token);
        let Some(session) = state.store.session(&token_hash, Utc::now()).await? else {
            return Err(refuse());
        };
        // The account must still exist, and its clinic is read from it now: removing an account
        // or moving it to another clinic takes effect at once, not at the session's end.
        let Some(tenant) = current_tenant(state, &session.username).await? else {
            return Err(refuse());
        };
        Ok(Staff {
            username: session.username,
            tenant,
            csrf: session.csrf_token,
            token_hash,
        })
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
pub(super) async fn still_valid(state: &AppState, staff: &Staff) -> bool {
    matches!(
        state.store.session(&staff.token_hash, Utc::now()).await,
        Ok(Some(_))
    ) && matches!(
        current_tenant(state, &staff.username).await,
        Ok(Some(tenant)) if tenant == staff.tenant
    )
}

/// `GET /admin/login`.
pub(super) async fn login_form(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
) -> impl IntoResponse {
    let csrf = random_token();
    let page = pages::login_page(&csrf, None);
    (
        jar.add(cookie(&state, &headers, LOGIN_COOKIE, csrf, LOGIN_FORM_TTL)),
        page,
    )
}

/// The login form's fields.
#[derive(Deserialize)]
pub(super) struct LoginForm {
    username: String,
    password: String,
    csrf: String,
}

/// `POST /admin/login`.
pub(super) async fn login(
    State(state): State<AppState>,
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // The form again, with why, and a fresh token for the next try.
    let fail = |message: &str, status: StatusCode| {
        let csrf = random_token();
        let page = pages::login_page(&csrf, Some(message));
        (
            status,
            jar.clone()
                .add(cookie(&state, &headers, LOGIN_COOKIE, csrf, LOGIN_FORM_TTL)),
            page,
        )
            .into_response()
    };
    let cookie_token = jar.get(LOGIN_COOKIE).map_or("", Cookie::value);
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
    // The jar sends each cookie in a `Set-Cookie` of its own (appended, not replaced).
    let jar = jar
        .add(cookie(
            &state,
            &headers,
            SESSION_COOKIE,
            token,
            settings.session_ttl,
        ))
        .add(cookie(
            &state,
            &headers,
            LOGIN_COOKIE,
            String::new(),
            Duration::ZERO,
        ));
    (jar, Redirect::to("/admin")).into_response()
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

/// A hash to verify against when the name is unknown, so that unknown and known names take
/// the same time (and cannot be told apart by it).
fn dummy_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| hash_password("no account has this password").unwrap_or_default())
}

/// A form that carries only the session's CSRF token.
#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: String,
}

/// `POST /admin/logout`.
pub(super) async fn logout(
    State(state): State<AppState>,
    staff: Staff,
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<impl IntoResponse, AdminError> {
    check_action(&state, &staff, &form.csrf, &headers)?;
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
    Ok((
        jar.add(cookie(
            &state,
            &headers,
            SESSION_COOKIE,
            String::new(),
            Duration::ZERO,
        )),
        Redirect::to("/admin/login"),
    ))
}
