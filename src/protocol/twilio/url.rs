//! Absolute URLs cut into their pieces without any normalisation: what the signature's port
//! quirk and TwiML's absolute-URL rule both need.

/// An absolute URL cut into the pieces the port quirk needs, without any normalisation.
pub(super) struct UrlParts<'a> {
    /// `https://`
    pub(super) scheme: &'a str,
    /// `user:pass@` or empty
    pub(super) user_info: &'a str,
    pub(super) host: &'a str,
    /// `:8443` or empty
    pub(super) port: &'a str,
    /// path, query and fragment
    pub(super) rest: &'a str,
}

pub(super) fn split_url(url: &str) -> Option<UrlParts<'_>> {
    let scheme_end = url.find("://")? + 3;
    let scheme_name = &url[..scheme_end - 3];
    let mut name_chars = scheme_name.chars();
    let valid_scheme = name_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return None;
    }
    let after_scheme = &url[scheme_end..];
    let authority_len = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_len];
    let host_start = authority.rfind('@').map_or(0, |at| at + 1);
    let host_and_port = &authority[host_start..];
    // In an IPv6 literal the port can only follow the closing bracket.
    let search_from = host_and_port.rfind(']').map_or(0, |bracket| bracket + 1);
    let port_start = host_and_port[search_from..]
        .find(':')
        .map_or(host_and_port.len(), |colon| search_from + colon);
    Some(UrlParts {
        scheme: &url[..scheme_end],
        user_info: &authority[..host_start],
        host: &host_and_port[..port_start],
        port: &host_and_port[port_start..],
        rest: &after_scheme[authority_len..],
    })
}
