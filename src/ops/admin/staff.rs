//! Who is logged in: the staff member a request acts for. Its own module because the pages
//! show it and `auth` makes it, and neither should have to import the other for it.

/// A logged-in staff member (the `auth` module extracts one from the session cookie).
#[derive(Debug, Clone)]
pub(super) struct Staff {
    pub(super) username: String,
    /// The one clinic this staff member sees; `None`: every clinic.
    pub(super) tenant: Option<String>,
    /// The session's CSRF token, put in every form.
    pub(super) csrf: String,
    /// The session token's hash: how the live feed checks that the session still stands.
    pub(super) token_hash: String,
}

impl Staff {
    /// Whether this staff member may see `tenant_id`'s data.
    pub(super) fn sees(&self, tenant_id: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant_id)
    }
}
