//! The on-call dashboard at `/admin`: server-rendered pages (maud), a little JavaScript for the
//! live feed, no build step. Staff log in (`auth`); every action is checked for its CSRF token
//! and origin and written to the audit table.

pub mod auth;
mod error;
mod pages;
mod staff;
mod timeline;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use maud::Markup;
use serde::Deserialize;
use uuid::Uuid;

use crate::AppState;
use crate::store::{CallbackFilter, CallbackRequestRow, StaffAction};

use error::AdminError;
use staff::Staff;

/// The dashboard's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin", get(needs_callback))
        .route("/admin/", get(|| async { Redirect::permanent("/admin") }))
        .route("/admin/login", get(auth::login_form).post(auth::login))
        .route("/admin/logout", post(auth::logout))
        .route("/admin/dead-letters", get(dead_letters))
        .route("/admin/alerts", get(alerts))
        .route("/admin/stats", get(stats))
        .route("/admin/system", get(system))
        .route("/admin/calls/{id}", get(timeline::call_timeline))
        .route("/admin/callbacks/{id}/{action}", post(act))
        .route("/admin/events", get(events))
        .route("/admin/static/app.js", get(script))
        .route("/admin/static/app.css", get(style))
        .layer(axum::middleware::map_response(no_store))
}

async fn needs_callback(State(state): State<AppState>, staff: Staff) -> Result<Markup, AdminError> {
    let now = Utc::now();
    let open = state
        .store
        .open_callbacks(staff.tenant.as_deref(), 500)
        .await?;
    Ok(pages::needs_callback(&staff, &open, now))
}

async fn dead_letters(State(state): State<AppState>, staff: Staff) -> Result<Markup, AdminError> {
    let rows = state
        .store
        .callback_requests(&CallbackFilter {
            tenant_id: staff.tenant.clone(),
            status: Some("dead_letter".into()),
            limit: Some(500),
            ..Default::default()
        })
        .await?;
    Ok(pages::dead_letters(&staff, &rows, Utc::now()))
}

async fn alerts(State(state): State<AppState>, staff: Staff) -> Result<Markup, AdminError> {
    let rows = state
        .store
        .recent_alerts(staff.tenant.as_deref(), 200)
        .await?;
    Ok(pages::alerts(&staff, &rows))
}

async fn system(State(state): State<AppState>, staff: Staff) -> Result<Markup, AdminError> {
    let breakers = crate::breaker::snapshot();
    // The queue's figures cover every clinic: shown to staff who see every clinic.
    if staff.tenant.is_some() {
        return Ok(pages::system(&staff, None, &breakers));
    }
    let queue = state.store.queue_stats(Utc::now()).await?;
    Ok(pages::system(&staff, Some(&queue), &breakers))
}

async fn stats(State(state): State<AppState>, staff: Staff) -> Result<Markup, AdminError> {
    // A day more than shown: the clinics' days start before UTC's (or after it).
    let since = Utc::now() - chrono::Duration::days(15);
    let tenant = staff.tenant.as_deref();
    let (days, oncall) = tokio::try_join!(
        state.store.daily_stats(tenant, since),
        state.store.oncall_rows(tenant, since)
    )?;
    let config = state.config.clone();
    let zone = move |t: &str| crate::ops::clinic_day::clinic_zone(&config, t);
    let mut clinic_days = crate::ops::clinic_day::fold(&oncall, &zone);
    clinic_days.truncate(14 * state.config.tenants.len().max(1));
    Ok(pages::stats(&staff, &days, &clinic_days))
}

#[derive(Deserialize)]
struct ActionForm {
    csrf: String,
    #[serde(default)]
    note: Option<String>,
}

/// `POST /admin/callbacks/{id}/{resolve|retry|cancel|acknowledge}` (resolve needs a note).
async fn act(
    State(state): State<AppState>,
    staff: Staff,
    headers: HeaderMap,
    Path((id, action)): Path<(Uuid, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, AdminError> {
    auth::check_action(&state, &staff, &form.csrf, &headers)?;
    let note = form
        .note
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty());
    if action == "acknowledge" {
        return acknowledge(&state, &staff, id).await;
    }
    let action = match action.as_str() {
        // Resolving says what was done: who called back, when, the outcome.
        "resolve" if note.is_none() => {
            return Err(AdminError::BadRequest(
                "Resolving needs a note: who called back, when, and the outcome.",
            ));
        }
        "resolve" => StaffAction::Resolve { note },
        "retry" => StaffAction::Retry,
        "cancel" => StaffAction::Cancel { note },
        _ => return Err(AdminError::NotFound("No such action.")),
    };
    visible_request(&state, &staff, id).await?;
    state
        .store
        .staff_action(id, &action, &staff.username, Utc::now())
        .await?;
    tracing::info!(staff = %staff.username, callback_request = %id, action = action.name(), "staff action");
    // Back to the page the action was on: only a dashboard page's path.
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| reqwest::Url::parse(r).ok())
        .map(|u| u.path().to_string())
        .filter(|p| {
            (p == "/admin" || p.starts_with("/admin/")) && !p.starts_with("/admin/callbacks")
        })
        .unwrap_or_else(|| "/admin".into());
    Ok(Redirect::to(&back))
}

/// The callback request `id`, if it exists and is this staff member's to see (another
/// clinic's request does not exist for them).
async fn visible_request(
    state: &AppState,
    staff: &Staff,
    id: Uuid,
) -> Result<CallbackRequestRow, AdminError> {
    state
        .store
        .callback_request(id)
        .await?
        .filter(|r| staff.sees(&r.tenant_id))
        .ok_or(AdminError::NotFound("No such callback request."))
}

/// Acknowledges a critical request's page from the dashboard (the ladder stops; reminders
/// follow until it is resolved).
async fn acknowledge(state: &AppState, staff: &Staff, id: Uuid) -> Result<Redirect, AdminError> {
    let request = visible_request(state, staff, id).await?;
    let acknowledged = crate::worker::paging::acknowledge_by_staff(
        &state.config,
        state.store.as_ref(),
        &request,
        &staff.username,
        Utc::now(),
    )
    .await?;
    if !acknowledged {
        return Err(AdminError::Conflict(
            "This request has no page waiting for an acknowledgement.".into(),
        ));
    }
    tracing::info!(staff = %staff.username, callback_request = %id, "page acknowledged");
    Ok(Redirect::to("/admin"))
}

#[derive(Deserialize)]
struct EventsQuery {
    since: Option<DateTime<Utc>>,
}

/// `GET /admin/events`: server-sent events, one `callback` event (the card's HTML) per callback
/// request queued after `since` (the time the page was rendered, so none falls in between).
///
/// Requests are looked for with an overlap (a request's time is taken before its commit, so
/// one may become visible after a later one) and sent once each. The session is checked again
/// on every round, and a stream lasts at most an hour (browsers reconnect by themselves).
async fn events(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<EventsQuery>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    const OVERLAP: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
    let opened = Utc::now();
    let since = q
        .since
        .unwrap_or(opened)
        .max(opened - chrono::Duration::hours(1));
    let feed = Feed {
        signal: state.store.queue_signal(),
        state,
        staff,
        since,
        sent: Vec::new(),
        queued: Vec::new(),
        ends: tokio::time::Instant::now() + Duration::from_secs(3600),
    };
    let stream = futures_util::stream::unfold(feed, |mut f| async move {
        loop {
            if let Some(event) = f.queued.pop() {
                return Some((Ok(event), f));
            }
            if *f.state.shutdown.borrow() || tokio::time::Instant::now() >= f.ends {
                return None;
            }
            // Woken by new requests in this process (and, on PostgreSQL, in any); the timer
            // covers requests queued by another process on SQLite.
            let mut shutdown = f.state.shutdown.clone();
            tokio::select! {
                _ = f.signal.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.changed() => return None,
            }
            let found = f
                .state
                .store
                .open_callbacks_since(f.staff.tenant.as_deref(), f.since - OVERLAP)
                .await;
            // Checked after the query: whatever was queued after a logout is only found by a
            // query that ran after it, so it is never sent.
            if !auth::still_valid(&f.state, &f.staff).await {
                // Logged out, expired, removed or moved to another clinic: nothing more.
                return None;
            }
            match found {
                Ok(rows) => {
                    let now = Utc::now();
                    let fresh: Vec<_> = rows
                        .into_iter()
                        .filter(|r| !f.sent.iter().any(|(id, _)| *id == r.id))
                        .collect();
                    for r in &fresh {
                        f.since = f.since.max(r.created_at);
                        f.sent.push((r.id, r.created_at));
                    }
                    // Only ids inside the overlap can come back.
                    let horizon = f.since - OVERLAP - OVERLAP;
                    f.sent.retain(|(_, at)| *at >= horizon);
                    // Popped from the back: oldest first.
                    f.queued = fresh
                        .iter()
                        .rev()
                        .map(|r| {
                            Event::default()
                                .event("callback")
                                .id(r.id.to_string())
                                .data(pages::callback_card(r, &f.staff.csrf, now).into_string())
                        })
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "live feed: database error"),
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The live feed's state between events.
struct Feed {
    state: AppState,
    staff: Staff,
    signal: tokio::sync::watch::Receiver<u64>,
    /// Requests queued after this (less the overlap) are looked for.
    since: DateTime<Utc>,
    /// Requests already sent, with their time, within the overlap.
    sent: Vec<(Uuid, DateTime<Utc>)>,
    queued: Vec<Event>,
    ends: tokio::time::Instant,
}

/// Dashboard pages hold callers' names, numbers and concerns: no cache keeps them (the Back
/// button after logout on a shared clinic computer shows nothing).
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(header::HeaderValue::from_static("no-store"));
    response
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("static/app.css"),
    )
}
