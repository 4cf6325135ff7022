//! The dashboard's HTML: a layout readable on a phone, and one function per view.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use crate::breaker::{BreakerState, BreakerStatus};
use crate::ops::clinic_day::ClinicDay;
use crate::store::{AlertRow, CallbackRequestRow, DayStats, QueueStats, URGENCIES};

use super::staff::Staff;

/// The page around every view.
pub(super) fn layout(title: &str, staff: Option<&Staff>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · lifeline" }
                link rel="stylesheet" href="/admin/static/app.css";
                script src="/admin/static/app.js" defer {}
            }
            body {
                @if let Some(staff) = staff {
                    header {
                        nav {
                            a href="/admin" { "Needs callback" }
                            a href="/admin/dead-letters" { "Dead letters" }
                            a href="/admin/alerts" { "Alerts" }
                            a href="/admin/system" { "System" }
                            a href="/admin/stats" { "Stats" }
                        }
                        form.logout method="post" action="/admin/logout" {
                            input type="hidden" name="csrf" value=(staff.csrf);
                            span.who { (staff.username) }
                            button type="submit" { "Log out" }
                        }
                    }
                }
                div #cue hidden { "New critical callback request" }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The login form, with why the last attempt failed when it did.
pub(super) fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            @if let Some(e) = error { p.error role="alert" { (e) } }
            form.login method="post" action="/admin/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "Username" input #username name="username" autocomplete="username" required; }
                label { "Password" input #password name="password" type="password" autocomplete="current-password" required; }
                button #login type="submit" { "Log in" }
            }
        },
    )
}

/// "12 min", "3 h", for how long a caller has waited.
fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let mins = (now - at).num_minutes().max(0);
    match mins {
        0 => "just now".into(),
        1..=59 => format!("{mins} min"),
        60..=2879 => format!("{} h {} min", mins / 60, mins % 60),
        _ => format!("{} days", mins / 1440),
    }
}

fn reason(r: &CallbackRequestRow) -> &'static str {
    match r.reason.as_str() {
        "failed_transfer" => "Transfer failed",
        _ => "Message",
    }
}

fn delivery_state(r: &CallbackRequestRow) -> String {
    match r.status.as_str() {
        "posted" => "delivered to the clinic system".into(),
        "pending" if r.lease_owner.is_some() => "being delivered".into(),
        "pending" => "waiting for delivery".into(),
        "failed" => match r.next_retry_at {
            Some(at) => format!(
                "delivery failed {} time(s); next try {} UTC",
                r.retry_count,
                at.format("%H:%M")
            ),
            None => "delivery failed".into(),
        },
        "dead_letter" => format!(
            "NOT delivered: {}",
            r.dead_letter_reason.as_deref().unwrap_or("gave up")
        ),
        other => other.to_string(),
    }
}

/// One callback request as a card, with its actions (also sent live to open pages).
pub(super) fn callback_card(r: &CallbackRequestRow, csrf: &str, now: DateTime<Utc>) -> Markup {
    let caller = r.caller_name.as_deref().unwrap_or("Unknown caller");
    html! {
        article.callback.(r.urgency_level) data-id=(r.id) data-urgency=(r.urgency_level) {
            div.head {
                span.badge { (r.urgency_level.to_uppercase()) }
                span.age { "waiting " (age(r.created_at, now)) }
                span.reason { (reason(r)) }
            }
            h2 { (caller) }
            p.number { a href={ "tel:" (r.callback_number) } { (r.callback_number) } }
            @if let Some(pet) = &r.pet_name {
                p.pet { "Pet: " (pet) @if let Some(s) = &r.species { " (" (s) ")" } }
            }
            @if let Some(c) = &r.concern_description { p.concern { (c) } }
            @if let Some(u) = &r.urgency_reason { p.concern { (u) } }
            p.delivery { (delivery_state(r)) }
            @if let Some(call) = r.call_id { p { a href={ "/admin/calls/" (call) } { "Call timeline" } } }
            @if r.urgency_level == "critical" {
                // Stops the on-call ladder's pages (when the clinic pages); reminders follow
                // until the request is marked done.
                form method="post" action={ "/admin/callbacks/" (r.id) "/acknowledge" } {
                    input type="hidden" name="csrf" value=(csrf);
                    button type="submit" { "Acknowledge page" }
                }
            }
            form.done method="post" action={ "/admin/callbacks/" (r.id) "/resolve" } {
                input type="hidden" name="csrf" value=(csrf);
                input name="note" placeholder="Who called back, when, the outcome" required;
                button.primary type="submit" { "Mark done" }
            }
            div.more {
                @if matches!(r.status.as_str(), "dead_letter" | "failed") {
                    form method="post" action={ "/admin/callbacks/" (r.id) "/retry" } {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Retry delivery" }
                    }
                }
                @if r.status != "posted" {
                    form method="post" action={ "/admin/callbacks/" (r.id) "/cancel" } {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="note" value="cancelled from the dashboard";
                        button type="submit" { "Cancel" }
                    }
                }
            }
        }
    }
}

/// `/admin`: the open callback requests, newest arriving live.
pub(super) fn needs_callback(
    staff: &Staff,
    open: &[CallbackRequestRow],
    now: DateTime<Utc>,
) -> Markup {
    layout(
        "Needs callback",
        Some(staff),
        html! {
            p.hint { "Critical first, then urgent, then oldest. New requests appear here by themselves." }
            section #callbacks data-since=(now.to_rfc3339()) {
                @if open.is_empty() { p #empty { "Nobody is waiting for a callback." } }
                @for r in open { (callback_card(r, &staff.csrf, now)) }
            }
        },
    )
}

/// `/admin/dead-letters`: requests the clinic system never received.
pub(super) fn dead_letters(
    staff: &Staff,
    rows: &[CallbackRequestRow],
    now: DateTime<Utc>,
) -> Markup {
    layout(
        "Dead letters",
        Some(staff),
        html! {
            p.hint { "Callback requests that could not be delivered to the clinic system. Call these people back from here." }
            @if rows.is_empty() { p { "None." } }
            @for r in rows { (callback_card(r, &staff.csrf, now)) }
        },
    )
}

/// `/admin/alerts`: the alerts sent (or not) about requests.
pub(super) fn alerts(staff: &Staff, rows: &[AlertRow]) -> Markup {
    layout(
        "Alerts",
        Some(staff),
        html! {
            @if rows.is_empty() { p { "No alerts." } }
            table {
                thead { tr { th { "When" } th { "Clinic" } th { "Why" } th { "State" } th { "Request" } } }
                tbody {
                    @for a in rows {
                        tr.(a.status) {
                            td { (a.created_at.format("%Y-%m-%d %H:%M")) }
                            td { (a.tenant_id) }
                            td { @if a.kind == "dead_letter" { "not delivered" } @else { "critical request" } }
                            td { (a.status) @if let Some(e) = &a.last_error { " — " (e) } }
                            td { (a.callback_request_id.to_string()[..8]) }
                        }
                    }
                }
            }
        },
    )
}

/// `/admin/stats`: on-call and call figures per clinic and day.
pub(super) fn stats(staff: &Staff, days: &[DayStats], oncall: &[ClinicDay]) -> Markup {
    let secs = |v: Option<f64>| match v {
        Some(s) if s >= 120.0 => format!("{:.0} min", s / 60.0),
        Some(s) => format!("{s:.0} s"),
        None => "–".to_string(),
    };
    layout(
        "Stats",
        Some(staff),
        html! {
            h2 { "On call" }
            p.hint { "Per clinic and day (the clinic's own day, in its time zone). Time to human: from the first ring of a transfer to the on-call person pressing 1." }
            table #oncall {
                thead { tr {
                    th { "Day" } th { "Clinic" } th { "Transfers" } th { "Accepted" } th { "Attempts by outcome" }
                    th { "Time to human (median)" } th { "(p90)" } th { "Paged" } th { "Ack ≤ 5 min" } th { "Ack ≤ 15 min" }
                    th { "Pages sent" } th { "Callbacks" } th { "Median to resolve" }
                } }
                tbody {
                    @for d in oncall {
                        tr {
                            td { (d.day) } td { (d.tenant_id) } td { (d.transfers) } td { (d.transfers_accepted) }
                            td { (d.attempts_by_outcome.iter().map(|(o, n)| format!("{o} {n}")).collect::<Vec<_>>().join(", ")) }
                            td { (secs(d.time_to_human_median)) } td { (secs(d.time_to_human_p90)) }
                            td { (d.paged) } td { (d.acknowledged_within_5m) } td { (d.acknowledged_within_15m) }
                            td { (d.pages_sent) } td { (d.callbacks) } td { (secs(d.resolve_median)) }
                        }
                    }
                }
            }
            h2 { "Calls" }
            p.hint { "Per clinic and day (UTC), last 14 days." }
            table {
                thead { tr {
                    th { "Day" } th { "Clinic" } th { "Calls" } th { "Tool calls" }
                    th { "Transfers ok" } th { "Transfers failed" } th { "Callbacks" } th { "Median to callback" }
                } }
                tbody {
                    @for d in days {
                        tr {
                            td { (d.day) } td { (d.tenant_id) } td { (d.calls) } td { (d.tool_calls) }
                            td { (d.transfers_succeeded) } td { (d.transfers_failed) } td { (d.callbacks) }
                            td { @match d.median_minutes_to_callback { Some(m) => { (format!("{m:.0} min")) }, None => { "–" } } }
                        }
                    }
                }
            }
        },
    )
}

/// `/admin/system`: circuit breakers and, for staff who see every clinic, the queue.
pub(super) fn system(
    staff: &Staff,
    queue: Option<&QueueStats>,
    breakers: &[BreakerStatus],
) -> Markup {
    layout(
        "System",
        Some(staff),
        html! {
            h2 { "Circuit breakers" }
            @if breakers.is_empty() { p { "No outbound API has been used yet." } }
            table #breakers {
                thead { tr { th { "API" } th { "State" } th { "Failures in a row" } th { "Trial in" } } }
                tbody {
                    @for b in breakers {
                        tr.(if b.state == BreakerState::Closed { "ok" } else { "open" }) {
                            td { (b.api) } td { (b.state.as_str()) } td { (b.consecutive_failures) }
                            td { @match b.retry_in { Some(d) => { (d.as_secs()) " s" }, None => { "–" } } }
                        }
                    }
                }
            }
            @if let Some(queue) = queue { (queue_tables(queue)) }
            @else { p { "The delivery queue's figures cover every clinic; staff who see every clinic find them here." } }
        },
    )
}

fn queue_tables(queue: &QueueStats) -> Markup {
    let waiting = queue.oldest_pending_age();
    html! {
            h2 { "Delivery queue (all clinics)" }
            p #oldest {
                @if waiting.is_zero() { "Nothing is waiting for delivery." }
                @else { "Oldest request waiting for delivery: " (age(queue.at - chrono::Duration::from_std(waiting).unwrap_or_default(), queue.at)) }
                " · in flight: " (queue.in_flight)
            }
            table #queue {
                thead { tr { th { "Status" } @for u in URGENCIES { th { (u) } } } }
                tbody {
                    @for status in ["pending", "failed", "dead_letter", "posted", "cancelled", "resolved"] {
                        tr { td { (status) } @for u in URGENCIES { td { (queue.requests(status, u)) } } }
                    }
                }
            }
            h2 { "Alerts" }
            table {
                thead { tr { th { "Kind" } th { "Pending" } th { "Sent" } th { "Failed" } th { "Skipped" } } }
                tbody {
                    @for kind in ["critical_request", "dead_letter"] {
                        tr { td { (kind) } @for st in ["pending", "sent", "failed", "skipped"] { td { (queue.alerts(kind, st)) } } }
                    }
                }
            }
    }
}
