//! Paging until acknowledged, and texting callers what happens next (issue 14).
//!
//! **Pages.** A critical callback request of a clinic with `[tenants.paging]` pages its on-call
//! ladder by SMS: the clinic's `[tenants.alerts] sms` numbers in order, then `paging.manager`.
//! Each page carries the caller's number as a `tel:` link, the pet, the urgency and a 4-digit
//! code; texting the code back (`POST /twilio/sms`) or acknowledging on the dashboard stops the
//! ladder. Not acknowledged within `ack_minutes`, the next rung is paged (the ladder is walked
//! `rounds` times, then the page is `exhausted`); acknowledged but not resolved within
//! `remind_minutes`, the acknowledger is reminded, again every `remind_minutes`. Resolving the
//! request closes the page.
//!
//! A step is claimed (fenced on the page's version, with a lease) before its SMS is sent and
//! written, with its timeline event and audit row, after: two workers never send the same
//! step, and a worker that dies mid-step leaves it due again when its lease ends.
//!
//! **Caller texts.** A callback request of a clinic with `[tenants.caller_sms]` gets one text to
//! the caller: a reference, the callback window and the clinic's emergency fallback. Only to a
//! number that is E.164, mobile-capable by libphonenumber's metadata (the `phonenumber` crate:
//! `Mobile` or `FixedLineOrMobile`, which is what North American numbers are, since their
//! plan does not tell the two apart) and has not replied STOP.
//!
//! Time comes from the worker's clock ([`WallClock`]), so tests walk a page on a manual clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::config::{CallerSms, Config, PagingSettings, Tenant};
use crate::phone::{E164, mask};
use crate::store::{
    CallbackRequestRow, CallerTextOutcome, CallerTextRow, PageRow, PageStep, PageUpdate, Store,
    StoreError,
};

use super::clock::WallClock;

/// New pages older than this are never sent (queued before paging was turned on, or stale).
const NEW_PAGE_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(6);
/// Requests older than this never get a caller text.
const CALLER_TEXT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);
/// Rows handled per clinic per pass.
const BATCH: i64 = 50;
/// After a page that could not be sent, the next rung is tried this soon.
const FAILED_PAGE_RETRY: chrono::TimeDelta = chrono::TimeDelta::minutes(1);

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PagingReport {
    /// Pages, re-pages and reminders sent.
    pub pages: u32,
    /// Texts to callers sent.
    pub texts: u32,
    /// Pages closed (resolved) or exhausted, and texts skipped.
    pub settled: u32,
}

/// One pass over every clinic's due pages and waiting caller texts.
pub async fn pass(
    http: &reqwest::Client,
    config: &Config,
    store: &dyn Store,
    clock: &dyn WallClock,
    lease: Duration,
) -> Result<PagingReport, StoreError> {
    let mut report = PagingReport::default();
    for tenant in &config.tenants {
        if let Some(paging) = &tenant.paging {
            let now = clock.now();
            for page in store
                .due_pages(&tenant.id, now, now - NEW_PAGE_WINDOW, BATCH)
                .await?
            {
                page_step(
                    http,
                    config,
                    store,
                    clock,
                    lease,
                    tenant,
                    paging,
                    page,
                    &mut report,
                )
                .await?;
            }
        }
        if let Some(sms) = &tenant.caller_sms {
            let now = clock.now();
            for text in store
                .waiting_caller_texts(&tenant.id, now - CALLER_TEXT_WINDOW, BATCH)
                .await?
            {
                text_caller(http, config, store, clock, tenant, sms, text, &mut report).await?;
            }
        }
    }
    Ok(report)
}

/// The ladder of a clinic at `now`: the steps of its on-call chain (its schedule's, who is on
/// call now, in order) or, without a schedule, its on-call alert numbers in order; then its
/// manager. Each number once.
pub fn ladder(tenant: &Tenant, now: DateTime<Utc>) -> Vec<String> {
    let chain: Vec<String> = match &tenant.oncall {
        Some(schedule) => schedule
            .chain_at(now)
            .into_iter()
            .map(|step| step.number.to_string())
            .collect(),
        None => tenant.alerts.sms.iter().map(|n| n.to_string()).collect(),
    };
    let manager = tenant
        .paging
        .as_ref()
        .and_then(|p| p.manager.as_ref())
        .map(|m| m.to_string());
    ladder_of(chain, manager)
}

fn ladder_of(chain: Vec<String>, manager: Option<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in chain.into_iter().chain(manager) {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Whether `from` may acknowledge a clinic's pages: a number of its ladder now, or one of its
/// on-call alert numbers (a rotation may have moved on since the page went out).
fn may_acknowledge(tenant: &Tenant, from: &str, now: DateTime<Utc>) -> bool {
    ladder(tenant, now).iter().any(|n| n == from)
        || tenant.alerts.sms.iter().any(|n| n.to_string() == from)
}

#[allow(clippy::too_many_arguments)]
async fn page_step(
    http: &reqwest::Client,
    config: &Config,
    store: &dyn Store,
    clock: &dyn WallClock,
    lease: Duration,
    tenant: &Tenant,
    paging: &PagingSettings,
    page: PageRow,
    report: &mut PagingReport,
) -> Result<(), StoreError> {
    let id = page.callback_request_id;
    let Some(request) = store.callback_request(id).await? else {
        return Ok(());
    };
    let now = clock.now();
    let lease_until =
        now + chrono::Duration::from_std(lease).unwrap_or(chrono::TimeDelta::minutes(1));
    if !store.claim_page(id, page.version, lease_until).await? {
        // Another worker has it, or it was acknowledged just now.
        return Ok(());
    }
    let ladder = ladder(tenant, now);
    let minutes = |d: Duration| i64::try_from(d.as_secs() / 60).unwrap_or(i64::MAX);
    let after =
        |d: Duration| now + chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::minutes(1));
    let mut update = PageUpdate {
        callback_request_id: id,
        version: page.version,
        state: page.state.clone(),
        code: page.code.clone(),
        pages_sent: page.pages_sent,
        paged_to: page.paged_to.clone(),
        next_at: None,
        reminders: page.reminders,
        step: PageStep {
            action: String::new(),
            actor: "lifeline".into(),
            detail: json!({}),
            at: now,
        },
    };
    if request.resolved_at.is_some() || ladder.is_empty() {
        update.state = "closed".into();
        update.step.action = "page_closed".into();
        update.step.detail = json!({
            "why": if request.resolved_at.is_some() { "resolved" } else { "no one to page" },
        });
        report.settled += 1;
    } else if page.state == "acknowledged" {
        let to = page
            .acknowledged_by
            .clone()
            .filter(|by| by.starts_with('+'))
            .or_else(|| page.paged_to.clone())
            .unwrap_or_else(|| ladder[0].clone());
        let since = page.acknowledged_at.map_or(0, |a| (now - a).num_minutes());
        let body = reminder_text(&tenant.name, &request, since);
        update.reminders += 1;
        update.next_at = Some(after(paging.remind_after));
        update.step.action = "page_reminder".into();
        update.step.detail = json!({ "to": to, "reminder": update.reminders });
        send_into(http, config, &to, &body, &mut update).await;
        report.pages += 1;
    } else {
        let total = i32::try_from(ladder.len() * paging.rounds as usize).unwrap_or(i32::MAX);
        if page.pages_sent >= total {
            update.state = "exhausted".into();
            update.step.action = "page_exhausted".into();
            update.step.detail = json!({ "pages_sent": page.pages_sent });
            report.settled += 1;
        } else {
            let rung = usize::try_from(page.pages_sent).unwrap_or(0) % ladder.len();
            let to = ladder[rung].clone();
            let code = match page.code.clone() {
                Some(c) => c,
                None => new_code(store, &tenant.id).await?,
            };
            let is_manager = paging
                .manager
                .as_ref()
                .is_some_and(|m| m.as_str() == to && rung + 1 == ladder.len());
            let body = page_text(
                &tenant.name,
                &request,
                &code,
                (page.pages_sent > 0).then(|| minutes(paging.ack_after)),
                is_manager,
            );
            update.state = "paging".into();
            update.code = Some(code);
            update.pages_sent += 1;
            update.paged_to = Some(to.clone());
            update.next_at = Some(after(paging.ack_after));
            update.step.action = if page.pages_sent == 0 {
                "page_sent"
            } else {
                "page_escalated"
            }
            .into();
            update.step.detail = json!({
                "to": to,
                "page": update.pages_sent,
                "rung": rung + 1,
                "manager": is_manager,
            });
            if !send_into(http, config, &to, &body, &mut update).await {
                update.next_at = Some(now + FAILED_PAGE_RETRY);
            }
            report.pages += 1;
        }
    }
    if !store.advance_page(&update).await? {
        tracing::info!(callback_request = %id, "page changed while it was being sent (acknowledged?)");
    } else {
        tracing::info!(
            callback_request = %id,
            tenant = %tenant.id,
            action = %update.step.action,
            to = %update.paged_to.as_deref().map(mask).unwrap_or_default(),
            "page step"
        );
    }
    Ok(())
}

/// Sends `body` to `to`, noting the result in the step's detail (a failure turns the step into
/// `page_failed`); says whether it went.
async fn send_into(
    http: &reqwest::Client,
    config: &Config,
    to: &str,
    body: &str,
    update: &mut PageUpdate,
) -> bool {
    match send_message(http, config, to, body, None).await {
        Ok((sid, _)) => {
            update.step.detail["message_sid"] = json!(sid);
            true
        }
        Err(e) => {
            let e = e.replace(to, &mask(to));
            tracing::warn!(to = %mask(to), error = %e, "page not sent");
            update.step.detail["error"] = json!(e);
            update.step.detail["meant"] = json!(update.step.action);
            update.step.action = "page_failed".into();
            false
        }
    }
}

/// A 4-digit code no other open page of the clinic has.
async fn new_code(store: &dyn Store, tenant_id: &str) -> Result<String, StoreError> {
    let mut code = String::new();
    for _ in 0..50 {
        code = format!("{}", rand::random_range(1000..10_000));
        if store
            .open_pages_with_code(tenant_id, &code)
            .await?
            .is_empty()
        {
            break;
        }
    }
    Ok(code)
}

/// The short reference of a request, as pages, texts and the dashboard show it.
pub fn reference(request: &CallbackRequestRow) -> String {
    request.id.simple().to_string()[..8].to_uppercase()
}

/// A page: who to call at which number (a `tel:` link), the pet, the urgency and the code.
pub fn page_text(
    clinic: &str,
    request: &CallbackRequestRow,
    code: &str,
    escalated_after_minutes: Option<i64>,
    manager: bool,
) -> String {
    let who = request.caller_name.as_deref().unwrap_or("the caller");
    let pet = match (&request.pet_name, &request.species) {
        (Some(p), Some(s)) => format!(" about {p} ({s})"),
        (Some(p), None) => format!(" about {p}"),
        (None, Some(s)) => format!(" about their {s}"),
        (None, None) => String::new(),
    };
    let why = match escalated_after_minutes {
        Some(m) if manager => {
            format!(" Escalated to you as manager: not acknowledged by on-call within {m} min.")
        }
        Some(m) => format!(" Escalated: not acknowledged within {m} min."),
        None => String::new(),
    };
    format!(
        "lifeline PAGE {clinic}: {} callback. Call {who} at tel:{}{pet}.{why} Reply {code} to \
         acknowledge. Ref {}",
        request.urgency_level.to_uppercase(),
        request.callback_number,
        reference(request),
    )
}

/// A reminder to whoever acknowledged a page and has not resolved it.
pub fn reminder_text(clinic: &str, request: &CallbackRequestRow, minutes: i64) -> String {
    let who = request.caller_name.as_deref().unwrap_or("the caller");
    format!(
        "lifeline REMINDER {clinic}: ref {} was acknowledged {minutes} min ago and is not \
         resolved. Call {who} at tel:{}, then resolve it with a note on the dashboard.",
        reference(request),
        request.callback_number,
    )
}

/// The text to a caller: a reference, the callback window, the emergency fallback.
pub fn caller_text(clinic: &str, settings: &CallerSms, request: &CallbackRequestRow) -> String {
    let what = if request.reason == "failed_transfer" {
        "we could not reach our on-call team just now, but we have your request"
    } else {
        "we have your message"
    };
    let fallback = settings
        .emergency_fallback
        .as_deref()
        .map(|f| format!(" If your pet gets worse before then, contact {f}."))
        .unwrap_or_default();
    format!(
        "{clinic}: {what} (ref {}). A team member will call you back {}.{fallback} Reply STOP \
         to opt out.",
        reference(request),
        settings.callback_window,
    )
}

/// Why a number may not be texted, if it may not.
pub fn untextable(number: &str) -> Option<String> {
    let Ok(e164) = E164::parse(number) else {
        return Some("not a phone number".into());
    };
    if e164.as_str() != number {
        return Some("not in E.164 form".into());
    }
    let Ok(parsed) = phonenumber::parse(None, e164.as_str()) else {
        return Some("not a valid number".into());
    };
    if !parsed.is_valid() {
        return Some("not a valid number".into());
    }
    match parsed.number_type(&phonenumber::metadata::DATABASE) {
        phonenumber::Type::Mobile | phonenumber::Type::FixedLineOrMobile => None,
        other => Some(format!("not a mobile-capable number ({other:?})")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn text_caller(
    http: &reqwest::Client,
    config: &Config,
    store: &dyn Store,
    clock: &dyn WallClock,
    tenant: &Tenant,
    settings: &CallerSms,
    text: CallerTextRow,
    report: &mut PagingReport,
) -> Result<(), StoreError> {
    let id = text.callback_request_id;
    if !store.claim_caller_text(id, clock.now()).await? {
        return Ok(());
    }
    let Some(request) = store.callback_request(id).await? else {
        return Ok(());
    };
    let to = request.callback_number.clone();
    let skip = match untextable(&to) {
        Some(why) => Some(why),
        None if store.sms_opted_out(&to).await? => Some("the number replied STOP".into()),
        None => None,
    };
    let mut outcome = CallerTextOutcome {
        callback_request_id: id,
        status: "skipped".into(),
        to_number: Some(to.clone()),
        message_sid: None,
        detail: skip.clone(),
        at: clock.now(),
    };
    if skip.is_none() {
        let body = caller_text(&tenant.name, settings, &request);
        let callback = config
            .public_url
            .as_deref()
            .map(|u| format!("{u}/twilio/sms-status"));
        match send_message(http, config, &to, &body, callback.as_deref()).await {
            Ok((sid, status)) => {
                outcome.status = status;
                outcome.message_sid = Some(sid);
                report.texts += 1;
            }
            Err(e) => {
                outcome.status = "error".into();
                outcome.detail = Some(e.replace(&to, &mask(&to)));
            }
        }
    } else {
        report.settled += 1;
    }
    tracing::info!(
        callback_request = %id,
        to = %mask(&to),
        status = %outcome.status,
        detail = outcome.detail.as_deref().unwrap_or(""),
        "caller text"
    );
    outcome.at = clock.now();
    store.record_caller_text(&outcome).await
}

/// Sends an SMS through Twilio's Messages API (from `alerts.sms_from`); returns the message's
/// SID and status.
pub async fn send_message(
    http: &reqwest::Client,
    config: &Config,
    to: &str,
    body: &str,
    status_callback: Option<&str>,
) -> Result<(String, String), String> {
    let (Some(twilio), Some(from)) = (&config.twilio, &config.alerts.sms_from) else {
        return Err("texts need [twilio] and alerts.sms_from".into());
    };
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        twilio.api_base, twilio.account_sid
    );
    let from = from.to_string();
    let mut form = vec![("To", to), ("From", from.as_str()), ("Body", body)];
    if let Some(cb) = status_callback {
        form.push(("StatusCallback", cb));
    }
    let response = http
        .post(url)
        .basic_auth(&twilio.account_sid, Some(twilio.auth_token.expose_secret()))
        .form(&form)
        .timeout(config.alerts.timeout)
        .send()
        .await
        .map_err(|e| format!("Twilio Messages API: {}", e.without_url()))?;
    let status = response.status();
    let value = response
        .json::<serde_json::Value>()
        .await
        .unwrap_or_default();
    if !status.is_success() {
        return Err(format!(
            "Twilio Messages API answered {status} (code {}: {})",
            value["code"], value["message"]
        ));
    }
    let sid = value["sid"].as_str().unwrap_or_default().to_string();
    let state = value["status"].as_str().unwrap_or("queued").to_string();
    Ok((sid, state))
}

/// Acknowledges a clinic's open page by the code texted back from `from`: only from a number on
/// the clinic's ladder. Returns the acknowledged request's id.
pub async fn acknowledge_by_code(
    config: &Config,
    store: &dyn Store,
    from: &str,
    code: &str,
    now: DateTime<Utc>,
) -> Result<Option<uuid::Uuid>, StoreError> {
    for tenant in &config.tenants {
        let Some(paging) = &tenant.paging else {
            continue;
        };
        if !may_acknowledge(tenant, from, now) {
            continue;
        }
        for page in store.open_pages_with_code(&tenant.id, code).await? {
            let remind_at = now
                + chrono::Duration::from_std(paging.remind_after)
                    .unwrap_or(chrono::TimeDelta::minutes(30));
            if store
                .acknowledge_page(page.callback_request_id, from, "sms", now, remind_at)
                .await?
            {
                return Ok(Some(page.callback_request_id));
            }
        }
    }
    Ok(None)
}

/// Acknowledges a request's page from the dashboard; false when it does not wait for one.
pub async fn acknowledge_by_staff(
    config: &Config,
    store: &dyn Store,
    request: &CallbackRequestRow,
    staff: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let remind_after = config
        .tenant(&request.tenant_id)
        .and_then(|t| t.paging.as_ref())
        .map_or(Duration::from_secs(30 * 60), |p| p.remind_after);
    let remind_at =
        now + chrono::Duration::from_std(remind_after).unwrap_or(chrono::TimeDelta::minutes(30));
    store
        .acknowledge_page(request.id, staff, "dashboard", now, remind_at)
        .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ladder_is_the_chain_then_the_manager_each_number_once() {
        let l = super::ladder_of(
            vec!["+1555001".into(), "+1555002".into(), "+1555001".into()],
            Some("+1555002".into()),
        );
        assert_eq!(l, ["+1555001", "+1555002"]);
        let l = super::ladder_of(vec!["+1555001".into()], Some("+1555009".into()));
        assert_eq!(l, ["+1555001", "+1555009"]);
    }

    use super::*;

    #[test]
    fn only_mobile_capable_e164_numbers_are_texted() {
        // North American numbers are FixedLineOrMobile: textable.
        assert_eq!(untextable("+12015550123"), None);
        // A UK mobile is; a London landline and a UK freephone number are not.
        assert_eq!(untextable("+447400123456"), None);
        assert!(untextable("+442079460000").unwrap().contains("FixedLine"));
        assert!(untextable("+448001111111").is_some());
        // What is not E.164 as written is not texted.
        assert!(untextable("2015550123").is_some());
        assert!(untextable("anonymous").is_some());
    }
}
