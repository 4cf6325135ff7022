//! How the listener treats connections (`[server]`, next to `public_url`): how long a client may
//! take to send its request, and how many connections may be open, so that connections that
//! never finish a request (slowloris, a port scanner, a flood) are closed and never starve a
//! call of file descriptors.
//!
//! ```toml
//! [server]
//! request_header_timeout_secs = 15   # a request's head must be complete within this
//! request_body_timeout_secs = 10     # …and its body within this after the head
//! # max_connections = 20000          # default: the open-files limit minus 512
//! max_pending_connections = 2048     # connections waiting for a request, in total…
//! max_pending_per_address = 256      # …and from one address (0: no per-address cap)
//! ```

use std::time::Duration;

use serde::Deserialize;

/// Descriptors kept free for everything that is not an inbound connection: the database pool,
/// outbound HTTP (Twilio, Ultravox, the frontends), log files.
pub const RESERVED_DESCRIPTORS: u64 = 512;

/// The listener's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// How long a connection may take to send a complete request head; also how long a
    /// keep-alive connection may sit idle between requests. Then it is closed.
    pub request_header_timeout: Duration,
    /// How long a request's body may take to arrive, from its head.
    pub request_body_timeout: Duration,
    /// Open connections at most (call sockets included). `None`: the process's open-files
    /// limit at start minus [`RESERVED_DESCRIPTORS`].
    pub max_connections: Option<usize>,
    /// Connections waiting for a request (new ones that have not sent a complete request head,
    /// keep-alive ones between requests) at most; past it the one waiting longest is closed.
    pub max_pending_connections: usize,
    /// The same, per peer address (0: no such cap). Behind a proxy every client shares the
    /// proxy's address: the oldest waiting connection is closed, not the new one refused.
    pub max_pending_per_address: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            request_header_timeout: Duration::from_secs(15),
            request_body_timeout: Duration::from_secs(10),
            max_connections: None,
            max_pending_connections: 2048,
            max_pending_per_address: 256,
        }
    }
}

/// `[server]` as written: the public URL (read by the assembly) and the connection keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) public_url: Option<String>,
    request_header_timeout_secs: Option<u64>,
    request_body_timeout_secs: Option<u64>,
    max_connections: Option<u64>,
    max_pending_connections: Option<u64>,
    max_pending_per_address: Option<u64>,
}

/// Validates the connection keys of `[server]`.
pub(super) fn validate(raw: &RawServer, problems: &mut Vec<String>) -> ConnectionSettings {
    let d = ConnectionSettings::default();
    let settings = ConnectionSettings {
        request_header_timeout: raw
            .request_header_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.request_header_timeout),
        request_body_timeout: raw
            .request_body_timeout_secs
            .map(Duration::from_secs)
            .unwrap_or(d.request_body_timeout),
        max_connections: raw.max_connections.map(|n| n as usize),
        max_pending_connections: raw
            .max_pending_connections
            .map_or(d.max_pending_connections, |n| n as usize),
        max_pending_per_address: raw
            .max_pending_per_address
            .map_or(d.max_pending_per_address, |n| n as usize),
    };
    if !(1..=300).contains(&settings.request_header_timeout.as_secs()) {
        problems.push("server.request_header_timeout_secs must be between 1 and 300".into());
    }
    if !(1..=300).contains(&settings.request_body_timeout.as_secs()) {
        problems.push("server.request_body_timeout_secs must be between 1 and 300".into());
    }
    if let Some(n) = settings.max_connections
        && !(16..=10_000_000).contains(&n)
    {
        problems.push(
            "server.max_connections must be between 16 and 10000000 (leave it out to derive it from the open-files limit)"
                .into(),
        );
    }
    if settings.max_pending_connections == 0 {
        problems.push("server.max_pending_connections must be at least 1".into());
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ConnectionSettings, Vec<String>) {
        let raw: RawServer = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        (validate(&raw, &mut problems), problems)
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(""), (ConnectionSettings::default(), vec![]));
        let (s, problems) = parse(
            "request_header_timeout_secs = 3\nrequest_body_timeout_secs = 4\n\
             max_connections = 600\nmax_pending_connections = 100\nmax_pending_per_address = 0",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.request_header_timeout, Duration::from_secs(3));
        assert_eq!(s.request_body_timeout, Duration::from_secs(4));
        assert_eq!(s.max_connections, Some(600));
        assert_eq!(s.max_pending_connections, 100);
        assert_eq!(s.max_pending_per_address, 0);
    }

    #[test]
    fn out_of_range_values_are_each_reported() {
        let (_, problems) = parse(
            "request_header_timeout_secs = 0\nrequest_body_timeout_secs = 301\n\
             max_connections = 3\nmax_pending_connections = 0",
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("request_header_timeout_secs"));
        assert!(problems[1].contains("request_body_timeout_secs"));
        assert!(problems[2].contains("max_connections"));
        assert!(problems[3].contains("max_pending_connections"));
    }
}
