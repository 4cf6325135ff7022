//! lifeline's HTTP/1 accept loop, in place of `axum::serve`, which sets no header-read timeout
//! (it builds hyper-util's `auto` connection with no timer, and that first waits for an HTTP/2
//! preface with no timeout at all): a connection that never sends a request would stay open
//! for ever, and 1,100 of them exhausted the process's file descriptors.
//!
//! Here every connection is served by hyper's HTTP/1 connection with a timer, so:
//!
//! - a request head must be complete within `server.request_header_timeout_secs` (the same
//!   bound closes keep-alive connections idle that long), and a body must arrive within
//!   `server.request_body_timeout_secs`;
//! - connections are counted ([`table`]): past a cap the connection that has waited longest
//!   without a request is closed, never one with a request in progress or a call's WebSocket;
//! - running out of descriptors closes waiting connections instead of sleeping a second.
//!
//! What `axum::serve` did is kept: `TCP_NODELAY`, the peer address for `ConnectInfo` (the
//! `/metrics` loopback check), WebSocket upgrades, and a graceful stop (no new connections;
//! requests in progress answered; upgraded sockets are the [`crate::Lifecycle`]'s). HTTP/2 is
//! not offered: no peer of lifeline speaks h2c.

mod table;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use http_body::Body as _;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tower_http::timeout::DeadlineBody;
use tracing::{debug, info, warn};

use crate::config::{ConnectionSettings, RESERVED_DESCRIPTORS};
use table::{Caps, Conn, ConnTable, Eviction, SocketGuard};

/// The fewest connections a derived `max_connections` allows.
const MIN_CONNECTIONS: usize = 64;
/// Waiting connections closed when `accept` finds no descriptor left, before trying again.
const EVICT_ON_EMFILE: usize = 16;
/// The pause after an `accept` error that is not the peer's.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);
/// How often `accept` errors are logged while they last.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Raises the soft open-files limit (RLIMIT_NOFILE) to the hard limit and logs both, so a
/// container started with the usual soft limit of 1024 can hold thousands of calls. Unix only.
pub fn raise_open_files_limit() {
    let before = match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            warn!(error = %e, "could not read the open files limit");
            return;
        }
    };
    let (soft_before, hard) = before;
    // An unlimited hard limit cannot be the soft one on Linux (fs.nr_open caps it): the
    // kernel's default ceiling is the next best.
    let raised =
        rlimit::increase_nofile_limit(u64::MAX).or_else(|_| rlimit::increase_nofile_limit(1 << 20));
    match raised {
        Ok(soft_after) if soft_after > soft_before => {
            info!(soft_before, soft_after, hard, "open files limit raised");
        }
        Ok(soft_after) => info!(
            soft = soft_after,
            hard, "open files limit already at its hard limit"
        ),
        Err(e) => warn!(
            error = %e,
            soft = soft_before,
            hard,
            "could not raise the open files limit; fewer connections can be held"
        ),
    }
}

/// `max_connections` as configured, or derived from the open-files limit now.
fn max_connections(settings: &ConnectionSettings) -> usize {
    settings.max_connections.unwrap_or_else(|| {
        let soft = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS))
            .unwrap_or(usize::MAX)
            .max(MIN_CONNECTIONS)
    })
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting (the listener is
/// closed), closes connections waiting for a request, lets requests in progress finish, and
/// returns once every HTTP connection is done. Upgraded connections (call sockets) are not
/// waited for here.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    settings: &ConnectionSettings,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let caps = Caps {
        max_connections: max_connections(settings),
        max_pending: settings.max_pending_connections,
        max_pending_per_address: settings.max_pending_per_address,
    };
    info!(
        max_connections = caps.max_connections,
        max_pending_connections = caps.max_pending,
        max_pending_per_address = caps.max_pending_per_address,
        request_header_timeout_secs = settings.request_header_timeout.as_secs(),
        "connection limits"
    );
    let table = ConnTable::new(caps);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.request_header_timeout)
        .keep_alive(true);
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut last_warned: Option<Instant> = None;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            // The peer gave up before we took its connection: nothing to do.
            Err(e) if is_peer_error(&e) => continue,
            Err(e) => {
                let out_of_descriptors =
                    matches!(e.raw_os_error(), Some(24 /* EMFILE */ | 23 /* ENFILE */));
                let evicted = if out_of_descriptors {
                    table.evict_oldest(EVICT_ON_EMFILE, Eviction::Descriptors)
                } else {
                    0
                };
                metrics::counter!("lifeline_accept_errors_total").increment(1);
                if last_warned.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
                    last_warned = Some(Instant::now());
                    let (open, waiting) = table.counts();
                    warn!(error = %e, evicted, open, waiting, "accept failed; retrying");
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Some((conn, guard)) = table.admit(peer.ip()) else {
            // Every slot holds a request in progress or a call: this one cannot be served.
            drop(tcp);
            continue;
        };
        // Tool answers are single small frames: without TCP_NODELAY, Nagle's algorithm and
        // delayed ACKs hold some of them back for tens of milliseconds.
        if let Err(e) = tcp.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        let served = serve_connection(
            CountedStream { tcp, _guard: guard },
            peer,
            conn,
            app.clone(),
            http.clone(),
            settings.request_body_timeout,
            stop.clone(),
        );
        connections.spawn(served);
    }
    drop(listener);
    // Connections without a request have nothing to finish; the others get to answer.
    let (_, waiting) = table.counts();
    table.evict_oldest(waiting, Eviction::Shutdown);
    stop.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// `accept` errors that are about one connection, not the listener.
fn is_peer_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: CountedStream,
    peer: SocketAddr,
    conn: Conn,
    app: Router,
    http: http1::Builder,
    body_timeout: Duration,
    stop: CancellationToken,
) {
    let handle = conn.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let busy = handle.start_request();
        let handle = handle.clone();
        let app = app.clone();
        async move {
            let mut request = request.map(|body| {
                if body.is_end_stream() {
                    Body::new(body)
                } else {
                    // A body that trickles in must not hold the connection for ever.
                    Body::new(DeadlineBody::new(body_timeout, body))
                }
            });
            // What axum's `ConnectInfo` extractor reads.
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = app.oneshot(request).await.unwrap_or_else(|e| match e {});
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                handle.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let connection = http
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        metrics::counter!("lifeline_connections_timed_out_total").increment(1);
                    }
                    debug!(error = %e, %peer, "connection ended with an error");
                }
                break;
            }
            // Dropping the connection closes its socket.
            () = conn.evicted() => break,
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    conn.finished();
}

/// The accepted socket, holding its place in the connection table until it is closed (also
/// after an upgrade, when hyper hands it to the WebSocket).
struct CountedStream {
    tcp: TcpStream,
    _guard: SocketGuard,
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A response body that keeps its connection marked busy until hyper has written it (or
/// dropped it): only then does a keep-alive connection wait again, and become evictable.
struct Tracked {
    body: Body,
    _busy: table::Busy,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
