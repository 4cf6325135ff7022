//! What must hold in the database at the end of every black-box test, whatever the test did (as
//! crates.io's test harness checks at teardown that no background job was left behind):
//!
//! - no `tool_call_logs` row is left `pending` (an effect that never recorded its outcome);
//! - no `transfer_attempts` row is left `dialing` (a caller nobody is watching over);
//! - every failed transfer has its critical callback request (on the attempt itself, or on the
//!   next step of the on-call chain that followed it);
//! - every call that ended with a transfer has its `transfer_outcome`;
//! - the counts of settled callback requests and alerts the triggers keep (what `/metrics`
//!   reads) are the rows' own counts;
//! - no call's invocation totals (what spares the limit check its count) are under the
//!   call's logged invocations (too low a total would let a call past its limit).
//!
//! The check waits (a generous deadline) for the state to settle, since the server's tasks may
//! still be writing the last outcome when the test body returns.
#![allow(dead_code)]

use std::time::Duration;

/// Each check: what it means, and a query listing the rows that break it (one text per row).
const CHECKS: [(&str, &str); 7] = [
    (
        "tool_call_logs left pending",
        "SELECT tool_name || ' on ' || call_ref FROM tool_call_logs WHERE status = 'pending'",
    ),
    (
        "transfer_attempts left dialing",
        "SELECT a.target_role || ' attempt to ' || a.target_number || ' on ' || c.call_ref \
         FROM transfer_attempts a JOIN calls c ON c.id = a.call_id WHERE a.status = 'dialing'",
    ),
    (
        "failed transfers without their critical callback request",
        "SELECT a.target_role || ' attempt on ' || c.call_ref \
         FROM transfer_attempts a JOIN calls c ON c.id = a.call_id \
         WHERE a.status = 'failed' \
         AND NOT EXISTS (SELECT 1 FROM callback_requests r WHERE r.transfer_attempt_id = a.id \
                         AND r.urgency_level = 'critical' AND r.reason = 'failed_transfer') \
         AND NOT EXISTS (SELECT 1 FROM transfer_attempts b WHERE b.call_id = a.call_id \
                         AND b.chain_step = a.chain_step + 1 \
                         AND b.id <> a.id AND b.started_at >= a.started_at \
                         AND (b.tool_call_log_id = a.tool_call_log_id \
                              OR (b.tool_call_log_id IS NULL AND a.tool_call_log_id IS NULL)))",
    ),
    (
        "calls that ended with a transfer but have no transfer_outcome",
        "SELECT c.call_ref FROM calls c WHERE c.ended_at IS NOT NULL \
         AND c.transfer_outcome IS NULL \
         AND EXISTS (SELECT 1 FROM transfer_attempts a WHERE a.call_id = c.id)",
    ),
    (
        "settled callback requests counted otherwise than stored (status urgency: counted, stored)",
        "SELECT b.status || ' ' || b.urgency_level || ': ' || COALESCE(c.count, 0) || ', ' || b.n \
         FROM (SELECT CASE WHEN resolved_at IS NOT NULL THEN 'resolved' ELSE 'posted' END AS status, \
                      urgency_level, COUNT(*) AS n \
               FROM callback_requests WHERE resolved_at IS NOT NULL OR status = 'posted' \
               GROUP BY 1, 2) b \
         LEFT JOIN settled_request_counts c \
           ON c.status = b.status AND c.urgency_level = b.urgency_level \
         WHERE COALESCE(c.count, 0) <> b.n \
         UNION ALL \
         SELECT c.status || ' ' || c.urgency_level || ': ' || c.count || ', 0' \
         FROM settled_request_counts c WHERE c.count <> 0 AND NOT EXISTS ( \
           SELECT 1 FROM callback_requests r WHERE r.urgency_level = c.urgency_level \
           AND CASE WHEN r.resolved_at IS NOT NULL THEN 'resolved' \
                    WHEN r.status = 'posted' THEN 'posted' END = c.status)",
    ),
    (
        "settled alerts counted otherwise than stored (kind status: counted, stored)",
        "SELECT b.kind || ' ' || b.status || ': ' || COALESCE(c.count, 0) || ', ' || b.n \
         FROM (SELECT kind, status, COUNT(*) AS n FROM alerts WHERE status <> 'pending' \
               GROUP BY kind, status) b \
         LEFT JOIN settled_alert_counts c ON c.kind = b.kind AND c.status = b.status \
         WHERE COALESCE(c.count, 0) <> b.n \
         UNION ALL \
         SELECT c.kind || ' ' || c.status || ': ' || c.count || ', 0' \
         FROM settled_alert_counts c WHERE c.count <> 0 AND NOT EXISTS ( \
           SELECT 1 FROM alerts a WHERE a.kind = c.kind AND a.status = c.status)",
    ),
    (
        "calls whose invocation totals are under their logged invocations (total, logged)",
        "SELECT l.platform || ' ' || l.call_ref || ': ' || COALESCE(t.total, 0) || ', ' || l.n \
         FROM (SELECT platform, call_ref, COUNT(*) AS n FROM tool_call_logs \
               GROUP BY platform, call_ref) l \
         LEFT JOIN call_invocation_totals t ON t.platform = l.platform AND t.call_ref = l.call_ref \
         WHERE COALESCE(t.total, 0) < l.n",
    ),
];

/// The broken invariants of the database at `url`, one line each (empty: all hold).
pub async fn violations(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (what, sql) in CHECKS {
        let rows: Vec<String> = if url.starts_with("sqlite:") {
            let Ok(pool) = sqlx::SqlitePool::connect(url).await else {
                return vec![format!("cannot open {url}")];
            };
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await;
            pool.close().await;
            rows.unwrap_or_else(|e| vec![format!("query failed: {e}")])
        } else {
            let pool = match sqlx::PgPool::connect(url).await {
                Ok(pool) => pool,
                // A test that dropped its own database (to see lifeline without one) leaves
                // nothing to check.
                Err(e) if e.to_string().contains("does not exist") => {
                    eprintln!("invariants not checked: the test's database is gone ({e})");
                    return Vec::new();
                }
                Err(e) => return vec![format!("cannot open the test database: {e}")],
            };
            let rows = sqlx::query_scalar(sql).fetch_all(&pool).await;
            pool.close().await;
            rows.unwrap_or_else(|e| vec![format!("query failed: {e}")])
        };
        if !rows.is_empty() {
            found.push(format!("{what}: {rows:?}"));
        }
    }
    found
}

/// Waits until every invariant holds; panics with what is still broken after the deadline.
pub async fn assert_hold(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let broken = violations(url).await;
        if broken.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "invariants broken at the end of the test:\n  - {}",
                broken.join("\n  - ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
