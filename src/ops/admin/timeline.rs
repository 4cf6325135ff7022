//! One call's timeline: everything lifeline knows about it, in time order.

use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use uuid::Uuid;

use crate::AppState;
use crate::store::{CallbackFilter, StoreError};
use crate::tools::Platform;

use super::error::AdminError;
use super::pages;
use super::staff::Staff;

/// One line of the timeline.
struct Entry {
    at: DateTime<Utc>,
    what: &'static str,
    detail: Markup,
}

fn json(v: &serde_json::Value) -> Markup {
    html! { pre { (serde_json::to_string_pretty(v).unwrap_or_default()) } }
}

/// `GET /admin/calls/{id}`.
pub(super) async fn call_timeline(
    State(state): State<AppState>,
    staff: Staff,
    Path(id): Path<Uuid>,
) -> Result<Markup, AdminError> {
    let (title, entries) = entries(&state, &staff, id)
        .await?
        .ok_or(AdminError::NotFound("No such call."))?;
    Ok(pages::layout(
        &title,
        Some(&staff),
        html! {
            table.timeline {
                thead { tr { th { "Time (UTC)" } th { "What" } th { "Detail" } } }
                tbody {
                    @for e in &entries {
                        tr { td { (e.at.format("%H:%M:%S%.3f")) } td { (e.what) } td { (e.detail) } }
                    }
                }
            }
        },
    ))
}

async fn entries(
    state: &AppState,
    staff: &Staff,
    id: Uuid,
) -> Result<Option<(String, Vec<Entry>)>, StoreError> {
    let store = &state.store;
    let Some(call) = store.call_by_id(id).await? else {
        return Ok(None);
    };
    if !staff.sees(&call.tenant_id) {
        return Ok(None);
    }
    let mut out = vec![Entry {
        at: call.started_at,
        what: "call started",
        detail: html! { (call.platform) " · " (call.from_number.as_deref().unwrap_or("withheld")) " → " (call.to_number.as_deref().unwrap_or("?")) },
    }];
    if let Some(at) = call.ended_at {
        out.push(Entry {
            at,
            what: "call ended",
            detail: html! { (call.status) @if let Some(d) = call.duration_seconds { " · " (d) " s" } },
        });
    }
    for e in store.call_events(id).await? {
        out.push(Entry {
            at: e.at,
            what: "event",
            detail: html! { b { (e.kind) } (json(&e.detail.0)) },
        });
    }
    if let Some(platform) = Platform::from_name(&call.platform) {
        for t in store
            .tool_call_logs_for_call(platform, &call.call_ref)
            .await?
        {
            out.push(Entry {
                at: t.created_at,
                what: "tool call",
                detail: html! {
                    b { (t.tool_name) } " · " (t.status)
                    @if let Some(ms) = t.duration_ms { " · " (format!("{ms:.1}")) " ms" }
                    @if let Some(e) = &t.error_message { " · " (e) }
                    details { summary { "arguments and result" } (json(&t.tool_parameters.0)) @if let Some(r) = &t.result { (json(&r.0)) } }
                },
            });
        }
    }
    for a in store.transfer_attempts(id).await? {
        out.push(Entry {
            at: a.started_at,
            what: "transfer dialled",
            detail: html! { (a.target_role) " " (a.target_number) },
        });
        if let Some(at) = a.ended_at {
            out.push(Entry {
                at,
                what: "transfer ended",
                detail: html! {
                    (a.status)
                    @if let Some(s) = &a.dial_call_status { " · " (s) }
                    @if let Some(r) = &a.failure_reason { " · " (r) }
                },
            });
        }
    }
    let callbacks = store
        .callback_requests(&CallbackFilter {
            call_id: Some(id),
            ..Default::default()
        })
        .await?;
    for r in &callbacks {
        out.push(Entry {
            at: r.created_at,
            what: "callback request",
            detail: html! { (r.urgency_level) " · " (r.reason) " · " (r.status) " · " a href={ "tel:" (r.callback_number) } { (r.callback_number) } },
        });
        for d in store.delivery_attempts(r.id).await? {
            out.push(Entry {
                at: d.started_at,
                what: "delivery attempt",
                detail: html! {
                    "#" (d.attempt) " · " (d.outcome)
                    @if let Some(c) = d.status_code { " · HTTP " (c) }
                    " · " (format!("{:.0}", d.latency_ms)) " ms"
                    @if let Some(e) = &d.error { " · " (e) }
                },
            });
        }
        let (_, sends) = store.alerts_for(r.id).await?;
        for s in sends {
            out.push(Entry {
                at: s.at,
                what: "alert sent",
                detail: html! { (s.kind) " · " (s.channel) " " (s.target) " · " @if s.ok { "ok" } @else { "failed" } },
            });
        }
        if let Some(at) = r.resolved_at {
            out.push(Entry {
                at,
                what: "called back",
                detail: html! { (r.resolved_by.as_deref().unwrap_or("")) ": " (r.resolution_note.as_deref().unwrap_or("")) },
            });
        }
    }
    out.sort_by_key(|e| e.at);
    let title = format!(
        "Call {} · {}",
        call.started_at.format("%Y-%m-%d %H:%M"),
        call.tenant_id
    );
    Ok(Some((title, out)))
}
