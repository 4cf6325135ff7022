//! The parts of the store the call path does not write through the journal (the delivery
//! queue, the dashboard, Twilio call set-up): passed to the database as they are, within a
//! bound (a black-holed database must not hold a request for minutes).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use super::ResilientStore;
use crate::store::*;

#[async_trait]
impl DeliveryQueue for ResilientStore {
    fn queue_signal(&self) -> watch::Receiver<u64> {
        self.inner.queue_signal()
    }
    async fn claim_callbacks(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<CallbackRequestRow>, StoreError> {
        self.inner
            .claim_callbacks(worker, now, lease_until, limit)
            .await
    }
    async fn record_delivery(&self, record: &DeliveryRecord) -> Result<bool, StoreError> {
        self.bounded(self.inner.record_delivery(record)).await
    }
    async fn align_retries(
        &self,
        scope: &TenantScope,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        hold_sooner: bool,
    ) -> Result<u64, StoreError> {
        self.bounded(self.inner.align_retries(scope, at, now, hold_sooner))
            .await
    }
    async fn release_callback(
        &self,
        id: Uuid,
        attempt: i32,
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.bounded(self.inner.release_callback(id, attempt, worker, now))
            .await
    }
    async fn rescue_expired(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.bounded(self.inner.rescue_expired(now)).await
    }
    async fn claim_alerts(
        &self,
        worker: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<ClaimedAlert>, StoreError> {
        self.inner
            .claim_alerts(worker, now, lease_until, limit)
            .await
    }
    async fn record_alert_send(
        &self,
        alert: &AlertRow,
        send: &AlertSend,
    ) -> Result<(), StoreError> {
        self.bounded(self.inner.record_alert_send(alert, send))
            .await
    }
    async fn record_alert(&self, record: &AlertRecord) -> Result<bool, StoreError> {
        self.bounded(self.inner.record_alert(record)).await
    }
    async fn release_alert(
        &self,
        callback_request_id: Uuid,
        kind: &str,
        attempt: i32,
        worker: &str,
    ) -> Result<bool, StoreError> {
        self.inner
            .release_alert(callback_request_id, kind, attempt, worker)
            .await
    }
    async fn callback_request(&self, id: Uuid) -> Result<Option<CallbackRequestRow>, StoreError> {
        self.bounded(self.inner.callback_request(id)).await
    }
    async fn delivery_attempts(
        &self,
        callback_request_id: Uuid,
    ) -> Result<Vec<DeliveryAttemptRow>, StoreError> {
        self.bounded(self.inner.delivery_attempts(callback_request_id))
            .await
    }
    async fn alerts_for(
        &self,
        callback_request_id: Uuid,
    ) -> Result<(Vec<AlertRow>, Vec<AlertSendRow>), StoreError> {
        self.bounded(self.inner.alerts_for(callback_request_id))
            .await
    }
    async fn staff_action(
        &self,
        id: Uuid,
        action: &StaffAction,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<CallbackRequestRow, ActionError> {
        match self
            .bounded(async { Ok(self.inner.staff_action(id, action, actor, now).await) })
            .await
        {
            Ok(done) => done,
            Err(e) => Err(ActionError::Store(e)),
        }
    }
    async fn audit_trail(&self, callback_request_id: Uuid) -> Result<Vec<AuditRow>, StoreError> {
        self.bounded(self.inner.audit_trail(callback_request_id))
            .await
    }
    async fn queue_stats(&self, now: DateTime<Utc>) -> Result<QueueStats, StoreError> {
        self.bounded(self.inner.queue_stats(now)).await
    }
}

#[async_trait]
impl AdminStore for ResilientStore {
    async fn oncall_rows(
        &self,
        tenant: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<OncallRows, StoreError> {
        self.bounded(self.inner.oncall_rows(tenant, since)).await
    }
    async fn upsert_staff_account(
        &self,
        account: &StaffAccountRow,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.bounded(self.inner.upsert_staff_account(account, now))
            .await
    }
    async fn staff_account(&self, username: &str) -> Result<Option<StaffAccountRow>, StoreError> {
        self.bounded(self.inner.staff_account(username)).await
    }
    async fn locked_until(
        &self,
        username: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.bounded(self.inner.locked_until(username, now)).await
    }
    async fn record_login_failure(
        &self,
        username: &str,
        now: DateTime<Utc>,
        window: chrono::Duration,
        max: i32,
        lock: chrono::Duration,
    ) -> Result<(i32, Option<DateTime<Utc>>), StoreError> {
        self.inner
            .record_login_failure(username, now, window, max, lock)
            .await
    }
    async fn clear_login_failures(&self, username: &str) -> Result<(), StoreError> {
        self.bounded(self.inner.clear_login_failures(username))
            .await
    }
    async fn create_session(&self, session: &NewSession) -> Result<(), StoreError> {
        self.bounded(self.inner.create_session(session)).await
    }
    async fn session(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.bounded(self.inner.session(token_hash, now)).await
    }
    async fn delete_session(&self, token_hash: &str) -> Result<(), StoreError> {
        self.bounded(self.inner.delete_session(token_hash)).await
    }
    async fn delete_sessions_of(&self, username: &str) -> Result<u64, StoreError> {
        self.bounded(self.inner.delete_sessions_of(username)).await
    }
    async fn delete_staff_account(&self, username: &str) -> Result<bool, StoreError> {
        self.bounded(self.inner.delete_staff_account(username))
            .await
    }
    async fn audit(
        &self,
        at: DateTime<Utc>,
        actor: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.bounded(self.inner.audit(at, actor, action, detail))
            .await
    }
    async fn open_callbacks(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<CallbackRequestRow>, StoreError> {
        self.bounded(self.inner.open_callbacks(tenant, limit)).await
    }
    async fn open_callbacks_since(
        &self,
        tenant: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<Vec<CallbackRequestRow>, StoreError> {
        self.bounded(self.inner.open_callbacks_since(tenant, since))
            .await
    }
    async fn call_by_id(&self, id: Uuid) -> Result<Option<CallRow>, StoreError> {
        self.bounded(self.inner.call_by_id(id)).await
    }
    async fn recent_alerts(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AlertRow>, StoreError> {
        self.bounded(self.inner.recent_alerts(tenant, limit)).await
    }
    async fn daily_stats(
        &self,
        tenant: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<Vec<DayStats>, StoreError> {
        self.bounded(self.inner.daily_stats(tenant, since)).await
    }
}

#[async_trait]
impl crate::store::TransferGateStore for ResilientStore {
    // Not journaled: a lost acceptance time is filled from the pick-up time when the attempt
    // finishes `accepted` (see `finish_transfer`), and the caller is connected either way.
    async fn mark_transfer_accepted(
        &self,
        attempt_id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let marked = self.inner.mark_transfer_accepted(attempt_id, at).await?;
        if marked {
            self.lock().rows.answered(attempt_id, at);
        }
        Ok(marked)
    }
}

#[async_trait]
impl TwilioCallStore for ResilientStore {
    async fn claim_call_setup(
        &self,
        call_id: Uuid,
        token: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<CallSetup, StoreError> {
        self.inner
            .claim_call_setup(call_id, token, now, stale_before)
            .await
    }
    async fn connect_call_setup(
        &self,
        call_id: Uuid,
        token: Uuid,
        ultravox_call_id: &str,
        join_url: &str,
        at: DateTime<Utc>,
    ) -> Result<CallSetup, StoreError> {
        self.inner
            .connect_call_setup(call_id, token, ultravox_call_id, join_url, at)
            .await
    }
    async fn fail_call_setup(
        &self,
        call_id: Uuid,
        token: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.bounded(self.inner.fail_call_setup(call_id, token, at))
            .await
    }
    async fn insert_voice_message(
        &self,
        request: &NewCallbackRequest,
        recording_sid: &str,
    ) -> Result<bool, StoreError> {
        self.inner
            .insert_voice_message(request, recording_sid)
            .await
    }
}

// Paging and caller texts are the worker's and the SMS webhooks', never the call path's: they
// go to the database as they are (their rows are queued by triggers when a journaled callback
// request is replayed).
#[async_trait]
impl PagingStore for ResilientStore {
    async fn due_pages(
        &self,
        tenant_id: &str,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PageRow>, StoreError> {
        self.inner.due_pages(tenant_id, now, since, limit).await
    }
    async fn page(&self, id: Uuid) -> Result<Option<PageRow>, StoreError> {
        self.inner.page(id).await
    }
    async fn open_pages_with_code(
        &self,
        tenant_id: &str,
        code: &str,
    ) -> Result<Vec<PageRow>, StoreError> {
        self.inner.open_pages_with_code(tenant_id, code).await
    }
    async fn claim_page(
        &self,
        id: Uuid,
        version: i32,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner.claim_page(id, version, lease_until).await
    }
    async fn advance_page(&self, update: &PageUpdate) -> Result<bool, StoreError> {
        self.inner.advance_page(update).await
    }
    async fn acknowledge_page(
        &self,
        id: Uuid,
        by: &str,
        via: &str,
        now: DateTime<Utc>,
        remind_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner
            .acknowledge_page(id, by, via, now, remind_at)
            .await
    }
    async fn waiting_caller_texts(
        &self,
        tenant_id: &str,
        since: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<CallerTextRow>, StoreError> {
        self.inner
            .waiting_caller_texts(tenant_id, since, limit)
            .await
    }
    async fn claim_caller_text(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        self.inner.claim_caller_text(id, now).await
    }
    async fn record_caller_text(&self, outcome: &CallerTextOutcome) -> Result<(), StoreError> {
        self.inner.record_caller_text(outcome).await
    }
    async fn caller_text_status(
        &self,
        sid: &str,
        status: &str,
        error_code: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.inner
            .caller_text_status(sid, status, error_code, now)
            .await
    }
    async fn caller_text(&self, id: Uuid) -> Result<Option<CallerTextRow>, StoreError> {
        self.inner.caller_text(id).await
    }
    async fn set_sms_opt_out(
        &self,
        number: &str,
        opted_out: bool,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.inner.set_sms_opt_out(number, opted_out, now).await
    }
    async fn sms_opted_out(&self, number: &str) -> Result<bool, StoreError> {
        self.inner.sms_opted_out(number).await
    }
}

// Pruning is an operator's command, never the call path's: no bound (a run takes as long as
// the history it deletes; each of its batches is short).
#[async_trait]
impl crate::store::RetentionStore for ResilientStore {
    async fn prune_batch(
        &self,
        history: crate::store::retention::History,
        cutoff: DateTime<Utc>,
        after: crate::store::retention::PruneCursor,
        limit: i64,
    ) -> Result<crate::store::retention::PruneBatch, StoreError> {
        self.inner.prune_batch(history, cutoff, after, limit).await
    }
}
