//! The dashboard's one error type: every refusal and failure a dashboard handler returns, and
//! the page (or redirect) each one answers with.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use crate::store::{ActionError, StoreError};

use super::pages;

/// Why a dashboard request did not get its page. Handlers return it with `?`; it answers with
/// the dashboard's error page (or, for a page asked for without a session, the login form).
#[derive(Debug, thiserror::Error)]
pub(super) enum AdminError {
    /// The database failed: shown as "not answering" whatever the cause, logged with it.
    #[error("database error: {0}")]
    Store(#[from] StoreError),
    /// No session, for a page: to the login form.
    #[error("not logged in")]
    LoginNeeded,
    /// No session, for an action (a browser cannot be sent to a form in the middle of a POST).
    #[error("Log in first.")]
    Unauthorized,
    /// An action without this session's CSRF token, or from another site.
    #[error(
        "This action was refused: it did not come from a lifeline page. Reload the page and try again."
    )]
    Refused,
    /// Something that does not exist, or not for this staff member (another clinic's).
    #[error("{0}")]
    NotFound(&'static str),
    /// A request that cannot be carried out as it is.
    #[error("{0}")]
    BadRequest(&'static str),
    /// An action the record's current state does not allow.
    #[error("{0}")]
    Conflict(String),
}

impl From<ActionError> for AdminError {
    fn from(e: ActionError) -> Self {
        match e {
            ActionError::NotFound(_) => Self::NotFound("No such callback request."),
            e @ ActionError::Conflict { .. } => Self::Conflict(e.to_string()),
            ActionError::Store(e) => Self::Store(e),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Store(e) => {
                tracing::error!(error = %e, "dashboard: database error");
                return error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The database is not answering; try again in a moment.",
                );
            }
            Self::LoginNeeded => return Redirect::to("/admin/login").into_response(),
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Refused => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
        };
        error_page(status, &self.to_string())
    }
}

/// An error in the dashboard's layout, with a way back.
fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        pages::layout(
            "Error",
            None,
            html! { p.error { (message) } a href="/admin" { "Back" } },
        ),
    )
        .into_response()
}
