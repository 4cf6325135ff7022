//! Security headers on every HTTP response: routes, errors, 404s and refusals alike.
//!
//! lifeline serves no third-party content, so the policy allows only its own origin and no
//! framing at all. A handler that sets one of these headers itself keeps its own value (a page
//! that needs a narrower or wider policy says so where it is served).
//!
//! `Referrer-Policy` is `strict-origin-when-cross-origin` rather than `no-referrer`: other
//! sites never see a path (which may hold a request id), only the origin, while same-origin
//! form posts keep their `Origin` header — under `no-referrer` browsers send `Origin: null`,
//! which defeats the origin check that protects the staff dashboard's forms from CSRF.
//!
//! `Strict-Transport-Security` is sent only behind TLS: when the public URL is `https://`, or
//! when the request came through a TLS-terminating proxy (`X-Forwarded-Proto: https`). Browsers
//! ignore it over plain HTTP anyway; on a plain-HTTP deployment it would pin a name to HTTPS
//! that nothing serves.

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

/// Only lifeline's own origin; inline data images for small icons; never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// One year, subdomains included.
pub const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000; includeSubDomains";

/// The middleware: `axum::middleware::from_fn_with_state(state, security_headers)`.
pub async fn security_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let behind_tls = state
        .config
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"))
        || forwarded_https(request.headers());
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let mut set = |name: HeaderName, value: &'static str| {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    };
    set(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "strict-origin-when-cross-origin");
    if behind_tls {
        set(header::STRICT_TRANSPORT_SECURITY, STRICT_TRANSPORT_SECURITY);
    }
    response
}

/// Whether the proxy in front says the client connected over TLS (the first hop's protocol
/// when several proxies appended theirs).
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_https_forwarded_proto_counts() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-forwarded-proto", HeaderValue::from_str(v).unwrap());
            forwarded_https(&h)
        };
        assert!(with("https"));
        assert!(with("HTTPS"));
        assert!(with("https, http"));
        assert!(!with("http"));
        assert!(!with("http, https"));
        assert!(!forwarded_https(&HeaderMap::new()));
    }
}
