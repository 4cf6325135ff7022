//! A fault-injecting TCP relay, for the bad days: put it between a client and a server (the fake
//! feature-server and lifeline, or lifeline and PostgreSQL) and break the path on demand.
//!
//! - [`Fault::SwallowToClient`]: bytes the server writes are read and thrown away (and kept, so
//!   a test can wait until a frame was written), so the server's writes succeed while the client
//!   never reads them: "written, but lost in flight".
//! - [`Relay::reset`]: every open connection is aborted with a TCP RST on both sides.
//! - [`Fault::Cut`]: open connections are closed and new ones are closed as soon as accepted.
//! - [`Fault::BlackHole`]: connections stay open but nothing passes, either way.
//! - [`Fault::Latency`]: every chunk is delayed, both ways, order kept.
//!
//! The fault applies to every connection, open or new, from the moment it is set.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// `url` (a database URL) with its host and port replaced by `addr`'s: the way through a relay.
pub fn through(url: &str, addr: SocketAddr) -> String {
    let mut parsed = reqwest::Url::parse(url).expect("database url");
    parsed.set_host(Some(&addr.ip().to_string())).unwrap();
    parsed.set_port(Some(addr.port())).unwrap();
    parsed.to_string()
}

/// The address `url` (a database URL) names: what a relay in front of it relays to.
pub async fn target_of(url: &str) -> SocketAddr {
    let parsed = reqwest::Url::parse(url).expect("database url");
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_string();
    let port = parsed.port().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve the database")
        .next()
        .expect("an address")
}

/// What the relay does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Carry everything.
    None,
    /// Drop what the server sends to the client (the client sends as usual).
    SwallowToClient,
    /// Carry nothing either way, keeping connections open.
    BlackHole,
    /// Close every connection, open and new.
    Cut,
    /// Delay every chunk, both ways.
    Latency(Duration),
}

/// A relay on 127.0.0.1 to `target`.
pub struct Relay {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Bumped to abort every open connection with a reset.
    resets: watch::Sender<u64>,
    swallowed: Arc<Mutex<Vec<u8>>>,
    accept: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections end with the relay.
        self.resets.send_modify(|n| *n += 1);
    }
}

impl Relay {
    /// Starts relaying connections to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let (fault, fault_rx) = watch::channel(Fault::None);
        let (resets, resets_rx) = watch::channel(0u64);
        let swallowed = Arc::new(Mutex::new(Vec::new()));
        let kept = swallowed.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                if *fault_rx.borrow() == Fault::Cut {
                    drop(client);
                    continue;
                }
                tokio::spawn(connection(
                    client,
                    target,
                    fault_rx.clone(),
                    resets_rx.clone(),
                    kept.clone(),
                ));
            }
        });
        Self {
            addr,
            fault,
            resets,
            swallowed,
            accept,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` from now on.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Aborts every open connection with a TCP reset (client and server both see
    /// "connection reset"); new connections are carried as the current fault says.
    pub fn reset(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Everything swallowed so far, as text.
    pub fn swallowed_text(&self) -> String {
        String::from_utf8_lossy(&self.swallowed.lock().unwrap()).into_owned()
    }

    /// Waits until the swallowed bytes contain every one of `needles` (a generous deadline: this
    /// waits on the state, it measures nothing).
    pub async fn wait_swallowed(&self, needles: &[&str]) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.swallowed_text();
            if needles.iter().all(|n| text.contains(n)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server never wrote {needles:?}; swallowed so far: {text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Carries one connection until either side closes, a reset is asked for, or a cut.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    fault: watch::Receiver<Fault>,
    mut resets: watch::Receiver<u64>,
    swallowed: Arc<Mutex<Vec<u8>>>,
) {
    resets.mark_unchanged();
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    // Second handles on both sockets, to turn their close into a reset when asked.
    let (Ok((client, client_ctl)), Ok((server, server_ctl))) = (twin(client), twin(server)) else {
        return;
    };
    // `io::split`, not `into_split`: a dropped `OwnedWriteHalf` sends a FIN, which would turn
    // a reset into a clean end.
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    let up = pump(client_read, server_write, fault.clone(), None);
    let down = pump(server_read, client_write, fault.clone(), Some(swallowed));
    let mut cut = fault.clone();
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = resets.changed() => {
            // With a zero linger, the last close of each socket (the pumps' halves are dropped
            // with this select, the control handles below) sends a RST instead of a FIN.
            let _ = client_ctl.set_zero_linger();
            let _ = server_ctl.set_zero_linger();
        }
        _ = cut.wait_for(|f| *f == Fault::Cut) => {}
    }
}

/// The stream and a second handle on the same socket.
fn twin(stream: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let std = stream.into_std()?;
    let other = std.try_clone()?;
    Ok((TcpStream::from_std(std)?, TcpStream::from_std(other)?))
}

/// Copies `from` to `to` under the current fault, until `from` ends.
async fn pump(
    mut from: tokio::io::ReadHalf<TcpStream>,
    mut to: tokio::io::WriteHalf<TcpStream>,
    mut fault: watch::Receiver<Fault>,
    swallow_into: Option<Arc<Mutex<Vec<u8>>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let current = *fault.borrow_and_update();
        match current {
            Fault::None => {}
            Fault::SwallowToClient => {
                if let Some(kept) = &swallow_into {
                    kept.lock().unwrap().extend_from_slice(&buf[..n]);
                    continue;
                }
            }
            Fault::BlackHole => continue,
            Fault::Cut => break,
            Fault::Latency(d) => tokio::time::sleep(d).await,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    // Pass the end on (a FIN), so the other side sees what this side saw.
    let _ = to.shutdown().await;
}
