//! `lifeline callbacks …`: what an operator at a terminal needs to see and fix the delivery
//! queue. Output is for people (or `--json` for scripts); errors go to stderr with a non-zero
//! exit code.

use std::io::Write;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::store::{ActionError, CallbackFilter, CallbackRequestRow, StaffAction, Store};

/// The `callbacks` subcommands.
#[derive(Debug, Subcommand)]
pub enum CallbacksCommand {
    /// List callback requests, most urgent first, then oldest.
    List {
        /// pending, posted, failed, cancelled, dead_letter, or resolved (marked done by staff,
        /// whatever its delivery status).
        #[arg(long, value_parser = crate::store::REQUEST_STATUSES)]
        status: Option<String>,
        /// critical, urgent or normal.
        #[arg(long, value_parser = ["critical", "urgent", "normal"])]
        urgency: Option<String>,
        /// A tenant id.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one request with its delivery attempts, alerts and audit trail.
    Show {
        id: Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Queue a request for delivery again, now, with a fresh retry schedule (dead letters,
    /// failed or cancelled requests).
    Retry {
        id: Uuid,
        /// Who is acting (for the audit trail).
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Stop delivering a request.
    Cancel {
        id: Uuid,
        #[arg(long)]
        note: Option<String>,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
    /// Record that the caller was called back.
    Resolve {
        id: Uuid,
        #[arg(long)]
        note: String,
        #[arg(long, env = "USER", default_value = "cli")]
        by: String,
    },
}

/// Runs one subcommand; returns the process exit code.
pub async fn run(store: &dyn Store, command: CallbacksCommand, out: &mut dyn Write) -> i32 {
    match execute(store, command, out).await {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("lifeline callbacks: {message}");
            1
        }
    }
}

async fn execute(
    store: &dyn Store,
    command: CallbacksCommand,
    out: &mut dyn Write,
) -> Result<(), String> {
    let now = Utc::now();
    match command {
        CallbacksCommand::List {
            status,
            urgency,
            tenant,
            limit,
            json,
        } => {
            let rows = store
                .callback_requests(&CallbackFilter {
                    tenant_id: tenant,
                    status,
                    urgency,
                    call_id: None,
                    limit: Some(limit.clamp(1, 10_000)),
                })
                .await
                .map_err(|e| e.to_string())?;
            if json {
                for r in &rows {
                    writeln!(out, "{}", summary_json(r)).map_err(|e| e.to_string())?;
                }
            } else {
                writeln!(
                    out,
                    "{:<36}  {:>6}  {:<8}  {:<11}  {:<12}  {:<15}  {:<16}  CALLER",
                    "ID", "AGE", "URGENCY", "STATUS", "TENANT", "REASON", "NUMBER"
                )
                .map_err(|e| e.to_string())?;
                for r in &rows {
                    writeln!(
                        out,
                        "{:<36}  {:>6}  {:<8}  {:<11}  {:<12}  {:<15}  {:<16}  {}{}",
                        r.id,
                        age(r.created_at, now),
                        r.urgency_level,
                        r.status,
                        r.tenant_id,
                        r.reason,
                        r.callback_number,
                        r.caller_name.as_deref().unwrap_or("-"),
                        if r.resolved_at.is_some() {
                            "  (resolved)"
                        } else {
                            ""
                        },
                    )
                    .map_err(|e| e.to_string())?;
                }
                writeln!(out, "{} request(s)", rows.len()).map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        CallbacksCommand::Show { id, json } => {
            let Some(r) = store
                .callback_request(id)
                .await
                .map_err(|e| e.to_string())?
            else {
                return Err(format!("no callback request {id}"));
            };
            let attempts = store
                .delivery_attempts(id)
                .await
                .map_err(|e| e.to_string())?;
            let (alerts, sends) = store.alerts_for(id).await.map_err(|e| e.to_string())?;
            let audit = store.audit_trail(id).await.map_err(|e| e.to_string())?;
            let page = store.page(id).await.map_err(|e| e.to_string())?;
            let caller_text = store.caller_text(id).await.map_err(|e| e.to_string())?;
            if json {
                let doc = json!({
                    "request": detail_json(&r),
                    "attempts": attempts.iter().map(|a| json!({
                        "attempt": a.attempt, "worker": a.worker_id, "startedAt": a.started_at,
                        "latencyMs": a.latency_ms, "statusCode": a.status_code,
                        "outcome": a.outcome, "error": a.error,
                    })).collect::<Vec<_>>(),
                    "alerts": alerts.iter().map(|a| json!({
                        "kind": a.kind, "status": a.status, "attempt": a.attempt,
                        "sentAt": a.sent_at, "lastError": a.last_error,
                    })).collect::<Vec<_>>(),
                    "alertSends": sends.iter().map(|s| json!({
                        "kind": s.kind, "channel": s.channel, "target": s.target,
                        "at": s.at, "ok": s.ok, "statusCode": s.status_code, "error": s.error,
                    })).collect::<Vec<_>>(),
                    "page": page.as_ref().map(|p| json!({
                        "state": p.state, "code": p.code, "pagesSent": p.pages_sent,
                        "pagedTo": p.paged_to, "nextAt": p.next_at,
                        "acknowledgedAt": p.acknowledged_at, "acknowledgedBy": p.acknowledged_by,
                        "reminders": p.reminders,
                    })),
                    "callerText": caller_text.as_ref().map(|t| json!({
                        "status": t.status, "to": t.to_number, "messageSid": t.message_sid,
                        "detail": t.detail, "updatedAt": t.updated_at,
                    })),
                    "audit": audit.iter().map(|a| json!({
                        "at": a.at, "actor": a.actor, "action": a.action, "detail": a.detail.0,
                    })).collect::<Vec<_>>(),
                });
                writeln!(out, "{doc:#}").map_err(|e| e.to_string())?;
                return Ok(());
            }
            let mut text = String::new();
            for (k, v) in detail_json(&r).as_object().into_iter().flatten() {
                if !v.is_null() {
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    text.push_str(&format!("{k:>20}: {v}\n"));
                }
            }
            text.push_str(&format!("\nDelivery attempts ({}):\n", attempts.len()));
            for a in &attempts {
                text.push_str(&format!(
                    "  #{:<3} {}  {:<11} {:>5}  {:>8.1} ms  {}  {}\n",
                    a.attempt,
                    a.started_at.format("%Y-%m-%d %H:%M:%S"),
                    a.outcome,
                    a.status_code.map_or("-".into(), |c| c.to_string()),
                    a.latency_ms,
                    a.worker_id,
                    a.error.as_deref().unwrap_or(""),
                ));
            }
            text.push_str(&format!("\nAlerts ({}):\n", alerts.len()));
            for a in &alerts {
                text.push_str(&format!(
                    "  {:<16} {:<8} rounds {}  {}\n",
                    a.kind,
                    a.status,
                    a.attempt,
                    a.last_error.as_deref().unwrap_or("")
                ));
            }
            for s in &sends {
                text.push_str(&format!(
                    "    {} {:<7} {:<28} {}  {}\n",
                    s.at.format("%Y-%m-%d %H:%M:%S"),
                    s.channel,
                    s.target,
                    if s.ok { "sent" } else { "failed" },
                    s.error.as_deref().unwrap_or("")
                ));
            }
            if let Some(p) = &page {
                text.push_str(&format!(
                    "\nPage: {} (code {}), {} sent, last to {}{}, {} reminders\n",
                    p.state,
                    p.code.as_deref().unwrap_or("-"),
                    p.pages_sent,
                    p.paged_to.as_deref().unwrap_or("-"),
                    p.acknowledged_by
                        .as_deref()
                        .map(|b| format!(", acknowledged by {b}"))
                        .unwrap_or_default(),
                    p.reminders,
                ));
            }
            if let Some(t) = &caller_text {
                text.push_str(&format!(
                    "\nText to the caller: {} {}\n",
                    t.status,
                    t.detail.as_deref().unwrap_or("")
                ));
            }
            text.push_str(&format!("\nAudit ({}):\n", audit.len()));
            for a in &audit {
                text.push_str(&format!(
                    "  {}  {:<8} by {}  {}\n",
                    a.at.format("%Y-%m-%d %H:%M:%S"),
                    a.action,
                    a.actor,
                    a.detail.0
                ));
            }
            out.write_all(text.as_bytes()).map_err(|e| e.to_string())
        }
        CallbacksCommand::Retry { id, by } => {
            act(store, id, StaffAction::Retry, &by, now, out).await
        }
        CallbacksCommand::Cancel { id, note, by } => {
            act(store, id, StaffAction::Cancel { note }, &by, now, out).await
        }
        CallbacksCommand::Resolve { id, note, by } => {
            if note.trim().is_empty() {
                return Err("--note must say what was done".into());
            }
            act(
                store,
                id,
                StaffAction::Resolve { note: Some(note) },
                &by,
                now,
                out,
            )
            .await
        }
    }
}

async fn act(
    store: &dyn Store,
    id: Uuid,
    action: StaffAction,
    by: &str,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), String> {
    let name = action.name();
    match store.staff_action(id, &action, by, now).await {
        Ok(row) => writeln!(
            out,
            "{name}: {id} is now {}{}",
            row.status,
            if row.resolved_at.is_some() {
                " (resolved)"
            } else {
                ""
            }
        )
        .map_err(|e| e.to_string()),
        Err(e @ (ActionError::NotFound(_) | ActionError::Conflict { .. })) => Err(e.to_string()),
        Err(ActionError::Store(e)) => Err(format!("database error: {e}")),
    }
}

fn age(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - at).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn summary_json(r: &CallbackRequestRow) -> Value {
    json!({
        "id": r.id, "createdAt": r.created_at, "tenantId": r.tenant_id,
        "urgencyLevel": r.urgency_level, "status": r.status, "reason": r.reason,
        "callbackNumber": r.callback_number, "callerName": r.caller_name,
        "petName": r.pet_name, "retryCount": r.retry_count, "resolvedAt": r.resolved_at,
    })
}

fn detail_json(r: &CallbackRequestRow) -> Value {
    json!({
        "id": r.id,
        "tenant": r.tenant_id,
        "created": r.created_at,
        "status": r.status,
        "urgency": r.urgency_level,
        "reason": r.reason,
        "callbackNumber": r.callback_number,
        "callerName": r.caller_name,
        "petName": r.pet_name,
        "species": r.species,
        "concern": r.concern_description,
        "urgencyReason": r.urgency_reason,
        "callSid": r.call_sid,
        "callId": r.call_id,
        "toolCallLogId": r.tool_call_log_id,
        "claims": r.delivery_attempt,
        "failedAttempts": r.retry_count,
        "nextRetryAt": r.next_retry_at,
        "postedAt": r.posted_to_frontend_at,
        "lastStatusCode": r.last_status_code,
        "lastError": r.error_message,
        "lastResponse": r.frontend_response.as_ref().map(|j| &j.0),
        "leaseOwner": r.lease_owner,
        "deadLetterReason": r.dead_letter_reason,
        "deadLetteredAt": r.dead_lettered_at,
        "cancelledAt": r.cancelled_at,
        "resolvedAt": r.resolved_at,
        "resolvedBy": r.resolved_by,
        "resolutionNote": r.resolution_note,
    })
}
