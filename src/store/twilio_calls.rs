//! What makes Twilio's repeated webhooks harmless, on both engines: one setup per call (a repeat
//! of `/twilio/incoming` gets the same Ultravox call), one callback request per recorded voice
//! message (a repeat of `/twilio/recording` writes nothing).
//!
//! Twilio repeats a voice webhook when its connection fails or, with the connection overrides
//! `rc`/`rp`, when our answer is late; the repeat may arrive while the first request is still
//! being served, possibly by another instance. So both keys live in the database.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{NewCallbackRequest, StoreError};

/// Where the setup of a call stands, as seen by one request for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallSetup {
    /// This request holds the claim: it creates the Ultravox call.
    Claimed,
    /// Another request holds the claim and is creating the Ultravox call.
    InProgress,
    /// The call is connected to this Ultravox call.
    Connected {
        /// Ultravox's `callId`.
        ultravox_call_id: String,
        /// Ultravox's `joinUrl`, which the caller's `<Connect><Stream>` names.
        join_url: String,
    },
    /// The Ultravox call could not be created: the caller got the fallback.
    FellBack,
}

/// The database side of Twilio's call setup and voice messages.
#[async_trait]
pub trait TwilioCallStore {
    /// Claims the setup of `call_id` for the request holding `token`: the first claim wins, and
    /// a claim still `creating` since before `stale_before` (its request died) is taken over.
    /// Otherwise says how the setup stands.
    async fn claim_call_setup(
        &self,
        call_id: Uuid,
        token: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<CallSetup, StoreError>;

    /// Records, in one transaction, that the claim `token` connected the call to this Ultravox
    /// call: the setup and the call's `ultravox_call_id` (how tools find the call). Returns
    /// [`CallSetup::Connected`] with these values; when the claim was lost (taken over), writes
    /// nothing and returns how the setup stands now. A call already linked to another Ultravox
    /// call is [`StoreError::Conflict`].
    async fn connect_call_setup(
        &self,
        call_id: Uuid,
        token: Uuid,
        ultravox_call_id: &str,
        join_url: &str,
        at: DateTime<Utc>,
    ) -> Result<CallSetup, StoreError>;

    /// Records that the claim `token` gave up (the caller gets the fallback); false when the
    /// claim was lost.
    async fn fail_call_setup(
        &self,
        call_id: Uuid,
        token: Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Records a voice message's callback request unless one exists for `recording_sid`
    /// (Twilio's `RecordingSid`, unique per recording); true when this call inserted it.
    async fn insert_voice_message(
        &self,
        request: &NewCallbackRequest,
        recording_sid: &str,
    ) -> Result<bool, StoreError>;
}

/// Implements [`TwilioCallStore`] for an engine (the module must also expand `impl_store!`,
/// whose `bind_callback` it uses).
macro_rules! impl_twilio_call_store {
    ($store:ty) => {
        mod twilio_call_store_impl {
            use async_trait::async_trait;
            use chrono::{DateTime, Utc};
            use uuid::Uuid;

            use super::*;
            use crate::store::twilio_calls::{CallSetup, TwilioCallStore};
            use crate::store::{NewCallbackRequest, StoreError};

            /// The setup as stored: state, Ultravox call id, join URL.
            type SetupRow = (String, Option<String>, Option<String>);

            fn setup_of(row: Option<SetupRow>) -> Result<CallSetup, StoreError> {
                match row {
                    Some((state, Some(ultravox_call_id), Some(join_url)))
                        if state == "connected" =>
                    {
                        Ok(CallSetup::Connected {
                            ultravox_call_id,
                            join_url,
                        })
                    }
                    Some((state, _, _)) if state == "creating" => Ok(CallSetup::InProgress),
                    Some((state, _, _)) if state == "fallback" => Ok(CallSetup::FellBack),
                    Some((state, _, _)) => Err(StoreError::NotFound(format!(
                        "a call setup in an unreadable state {state:?}"
                    ))),
                    None => Err(StoreError::NotFound("the call setup".into())),
                }
            }

            impl $store {
                async fn current_setup(&self, call_id: Uuid) -> Result<CallSetup, StoreError> {
                    // From the writer: a reader may not see the commit that just lost a race.
                    let row: Option<SetupRow> = sqlx::query_as(
                        "SELECT state, ultravox_call_id, join_url FROM call_setups \
                         WHERE call_id = $1",
                    )
                    .bind(call_id)
                    .fetch_optional(self.writer())
                    .await?;
                    setup_of(row)
                }
            }

            #[async_trait]
            impl TwilioCallStore for $store {
                async fn claim_call_setup(
                    &self,
                    call_id: Uuid,
                    token: Uuid,
                    now: DateTime<Utc>,
                    stale_before: DateTime<Utc>,
                ) -> Result<CallSetup, StoreError> {
                    let first = sqlx::query(
                        "INSERT INTO call_setups (call_id, claim_token, claimed_at, state) \
                         VALUES ($1, $2, $3, 'creating') ON CONFLICT (call_id) DO NOTHING",
                    )
                    .bind(call_id)
                    .bind(token)
                    .bind(now)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    if first == 1 {
                        return Ok(CallSetup::Claimed);
                    }
                    let taken_over = sqlx::query(
                        "UPDATE call_setups SET claim_token = $2, claimed_at = $3 \
                         WHERE call_id = $1 AND state = 'creating' \
                         AND (claim_token = $2 OR claimed_at < $4)",
                    )
                    .bind(call_id)
                    .bind(token)
                    .bind(now)
                    .bind(stale_before)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    if taken_over == 1 {
                        return Ok(CallSetup::Claimed);
                    }
                    self.current_setup(call_id).await
                }

                async fn connect_call_setup(
                    &self,
                    call_id: Uuid,
                    token: Uuid,
                    ultravox_call_id: &str,
                    join_url: &str,
                    at: DateTime<Utc>,
                ) -> Result<CallSetup, StoreError> {
                    let mut tx = self.writer().begin().await?;
                    let ours = sqlx::query(
                        "UPDATE call_setups SET state = 'connected', ultravox_call_id = $3, \
                         join_url = $4, finished_at = $5 \
                         WHERE call_id = $1 AND claim_token = $2 AND state = 'creating'",
                    )
                    .bind(call_id)
                    .bind(token)
                    .bind(ultravox_call_id)
                    .bind(join_url)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if ours == 0 {
                        tx.rollback().await?;
                        return self.current_setup(call_id).await;
                    }
                    let linked = sqlx::query(
                        "UPDATE calls SET ultravox_call_id = $2, updated_at = $3 \
                         WHERE id = $1 AND (ultravox_call_id IS NULL OR ultravox_call_id = $2)",
                    )
                    .bind(call_id)
                    .bind(ultravox_call_id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if linked == 0 {
                        tx.rollback().await?;
                        return Err(StoreError::Conflict(format!(
                            "call {call_id} is already linked to another Ultravox call"
                        )));
                    }
                    tx.commit().await?;
                    Ok(CallSetup::Connected {
                        ultravox_call_id: ultravox_call_id.to_owned(),
                        join_url: join_url.to_owned(),
                    })
                }

                async fn fail_call_setup(
                    &self,
                    call_id: Uuid,
                    token: Uuid,
                    at: DateTime<Utc>,
                ) -> Result<bool, StoreError> {
                    let done = sqlx::query(
                        "UPDATE call_setups SET state = 'fallback', finished_at = $3 \
                         WHERE call_id = $1 AND claim_token = $2 AND state = 'creating'",
                    )
                    .bind(call_id)
                    .bind(token)
                    .bind(at)
                    .execute(self.writer())
                    .await?
                    .rows_affected();
                    Ok(done == 1)
                }

                async fn insert_voice_message(
                    &self,
                    request: &NewCallbackRequest,
                    recording_sid: &str,
                ) -> Result<bool, StoreError> {
                    let inserted = bind_callback(
                        sqlx::query(crate::store::common::INSERT_VOICE_MESSAGE),
                        request,
                    )
                    .bind(request.tool_call_log_id)
                    .bind(recording_sid)
                    .bind(request.text_caller)
                    .execute(self.writer())
                    .await?
                    .rows_affected()
                        == 1;
                    if inserted {
                        self.bump_queue();
                    }
                    Ok(inserted)
                }
            }
        }
    };
}
pub(crate) use impl_twilio_call_store;
