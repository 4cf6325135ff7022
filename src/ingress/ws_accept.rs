//! A WebSocket upgrade accepted on our side of axum, for sockets whose frames we write ourselves.
//!
//! axum's `WebSocket` sends every message as one frame, and tungstenite formats a frame whole
//! into the socket's write buffer, which keeps that capacity for the socket's life. A Jambonz
//! call's largest frame is its application (the `llm` verb with the clinic's prompt and tools:
//! 4 KB in the demo clinic, up to Jambonz's 24 KiB), so every idle call held a buffer that
//! size: 3.9 KB of the 13 KB an idle call cost. With tungstenite's stream itself, a large
//! message goes out in fragments (RFC 6455 §5.4) and the buffer never outgrows one
//! ([`send_text`]). The handshake is RFC 6455 §4.2 over hyper's upgrade, with tungstenite's
//! `derive_accept_key`, and answers what axum's extractor answers for a request that is not
//! an upgrade.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tracing::debug;

/// An accepted socket.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A request to upgrade to a WebSocket, checked (RFC 6455 §4.2.1) but not yet answered.
pub struct Upgrade {
    key: HeaderValue,
    /// `Sec-WebSocket-Protocol`'s values.
    protocols: Vec<HeaderValue>,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

/// Why a request is not a WebSocket upgrade; answered in HTTP, with what was wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum UpgradeRejection {
    MethodNotGet,
    NotHttp11,
    ConnectionHeader,
    UpgradeHeader,
    VersionHeader,
    KeyMissing,
    /// The connection cannot be taken over (not served by hyper's HTTP/1 server).
    NotUpgradable,
}

impl IntoResponse for UpgradeRejection {
    fn into_response(self) -> Response {
        let (status, text) = match self {
            Self::MethodNotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET\n",
            ),
            Self::NotHttp11 => (
                StatusCode::BAD_REQUEST,
                "a WebSocket upgrade needs HTTP/1.1\n",
            ),
            Self::ConnectionHeader => (
                StatusCode::BAD_REQUEST,
                "the Connection header must include 'upgrade'\n",
            ),
            Self::UpgradeHeader => (
                StatusCode::BAD_REQUEST,
                "the Upgrade header must be 'websocket'\n",
            ),
            Self::VersionHeader => (
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Version header must be 13\n",
            ),
            Self::KeyMissing => (
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Key header is missing\n",
            ),
            Self::NotUpgradable => (
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded\n",
            ),
        };
        let mut response = (status, text).into_response();
        if self == Self::VersionHeader {
            // RFC 6455 §4.4: say which version we speak.
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

/// Whether a header, as a comma-separated list of tokens, holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = UpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(UpgradeRejection::MethodNotGet);
        }
        if parts.version != Version::HTTP_11 {
            return Err(UpgradeRejection::NotHttp11);
        }
        if !has_token(&parts.headers, header::CONNECTION, "upgrade") {
            return Err(UpgradeRejection::ConnectionHeader);
        }
        if !has_token(&parts.headers, header::UPGRADE, "websocket") {
            return Err(UpgradeRejection::UpgradeHeader);
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(UpgradeRejection::VersionHeader);
        }
        let key = parts
            .headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(UpgradeRejection::KeyMissing)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or(UpgradeRejection::NotUpgradable)?;
        Ok(Self {
            key,
            protocols: parts
                .headers
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .cloned()
                .collect(),
            on_upgrade,
        })
    }
}

impl Upgrade {
    /// Whether the client offered `protocol` in `Sec-WebSocket-Protocol`.
    pub fn offers_protocol(&self, protocol: &str) -> bool {
        self.protocols
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim() == protocol)
    }

    /// Answers 101 with `protocol`, and serves the socket with `serve` once hyper hands the
    /// connection over.
    pub fn accept<F, Fut>(
        self,
        protocol: &'static str,
        config: WebSocketConfig,
        serve: F,
    ) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    debug!(error = %e, "the WebSocket upgrade did not complete");
                    return;
                }
            };
            let socket = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(config),
            )
            .await;
            serve(socket).await;
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(self.key.as_bytes()),
            )
            .header(header::SEC_WEBSOCKET_PROTOCOL, protocol)
            .body(axum::body::Body::empty())
            .expect("a 101 from valid parts")
    }
}

/// Sends `text` as one message: in fragments of at most `fragment` bytes when it is longer, so
/// that the socket's write buffer (whose capacity tungstenite keeps) stays that small. The
/// receiver reassembles them into the one message (RFC 6455 §5.4; the feature-server's `ws`
/// library, `lib/receiver.js` in ws 8: continuation frames are joined until the one with FIN,
/// and its `maxPayload`, 24 KiB for Jambonz, counts the whole message). Fragments may split a
/// UTF-8 character: only the whole message must be valid.
pub async fn send_text<S: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WebSocketStream<S>,
    text: String,
    fragment: usize,
) -> Result<(), tungstenite::Error> {
    if text.len() <= fragment {
        return socket.send(Message::text(text)).await;
    }
    let bytes = tungstenite::Bytes::from(text);
    let count = bytes.len().div_ceil(fragment);
    for i in 0..count {
        let piece = bytes.slice(i * fragment..((i + 1) * fragment).min(bytes.len()));
        let opcode = OpCode::Data(if i == 0 { Data::Text } else { Data::Continue });
        let frame = Frame::message(piece, opcode, i + 1 == count);
        // Each frame is written as it is fed (the write buffer threshold is 0); the last
        // flushes.
        if i + 1 == count {
            socket.send(Message::Frame(frame)).await?;
        } else {
            socket.feed(Message::Frame(frame)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Reads the frames one side wrote, unmasked (a server's), as (FIN, opcode, payload).
    fn frames(mut raw: &[u8]) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !raw.is_empty() {
            let fin = raw[0] & 0x80 != 0;
            let opcode = raw[0] & 0x0f;
            assert_eq!(raw[1] & 0x80, 0, "a server's frames are not masked");
            let (len, header) = match raw[1] & 0x7f {
                126 => (usize::from(u16::from_be_bytes([raw[2], raw[3]])), 4),
                127 => panic!("no frame here is that long"),
                n => (usize::from(n), 2),
            };
            out.push((fin, opcode, raw[header..header + len].to_vec()));
            raw = &raw[header + len..];
        }
        out
    }

    async fn sent_frames(text: &str, fragment: usize) -> Vec<(bool, u8, Vec<u8>)> {
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let config = WebSocketConfig::default().write_buffer_size(0);
        let mut socket = WebSocketStream::from_raw_socket(ours, Role::Server, Some(config)).await;
        send_text(&mut socket, text.to_string(), fragment)
            .await
            .unwrap();
        drop(socket);
        let mut raw = Vec::new();
        theirs.read_to_end(&mut raw).await.unwrap();
        frames(&raw)
    }

    #[tokio::test]
    async fn a_long_message_goes_in_fragments_no_longer_than_the_limit() {
        // 1,500 two-byte characters: fragment edges fall inside characters.
        let text = "é".repeat(1500);
        let sent = sent_frames(&text, 1024).await;
        let shape: Vec<(bool, u8, usize)> =
            sent.iter().map(|(f, o, p)| (*f, *o, p.len())).collect();
        // Text (0x1) without FIN, then continuations (0x0), the last with FIN.
        assert_eq!(
            shape,
            vec![(false, 1, 1024), (false, 0, 1024), (true, 0, 952)]
        );
        let joined: Vec<u8> = sent.into_iter().flat_map(|(_, _, p)| p).collect();
        assert_eq!(joined, text.as_bytes());
    }

    #[tokio::test]
    async fn a_short_message_is_one_frame() {
        let sent = sent_frames("{\"type\":\"ack\"}", 1024).await;
        assert_eq!(sent, vec![(true, 1, b"{\"type\":\"ack\"}".to_vec())]);
        let exact = "x".repeat(1024);
        assert_eq!(sent_frames(&exact, 1024).await.len(), 1);
    }

    #[tokio::test]
    async fn a_client_reads_the_fragments_as_the_one_message() {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let mut server = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
        let mut client = WebSocketStream::from_raw_socket(theirs, Role::Client, None).await;
        let text = format!("{{\"prompt\":\"{}\"}}", "ü".repeat(3000));
        send_text(&mut server, text.clone(), 1024).await.unwrap();
        match client.next().await {
            Some(Ok(Message::Text(got))) => assert_eq!(got.as_str(), text),
            other => panic!("expected the text message, got {other:?}"),
        }
    }
}
