//! Staff actions on callback requests (retry, cancel, resolve), why one is refused, and the
//! audit trail they leave.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::store::StoreError;

/// A staff action on a callback request.
#[derive(Debug, Clone)]
pub enum StaffAction {
    /// Queue it for delivery again, now, with a fresh retry schedule.
    Retry,
    /// Stop delivering it.
    Cancel { note: Option<String> },
    /// The caller was called back.
    Resolve { note: Option<String> },
}

impl StaffAction {
    /// The `audit_log.action` value.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Cancel { .. } => "cancel",
            Self::Resolve { .. } => "resolve",
        }
    }
}

/// Why a staff action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no callback request {0}")]
    NotFound(Uuid),
    #[error("callback request {id} is {status}: cannot {action} it")]
    Conflict {
        id: Uuid,
        status: String,
        action: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A row of `audit_log`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub callback_request_id: Option<Uuid>,
    pub detail: sqlx::types::Json<Value>,
}
