//! Every open connection, and which one goes when a cap is reached.
//!
//! A connection is *waiting* while it has no request in progress: a new one that has not sent a
//! complete request head yet, or a keep-alive one between requests. Waiting connections cost a
//! descriptor and serve nobody, so they are the ones given up under pressure, the one that has
//! waited longest first: a new client is never turned away because of half-open sockets, even
//! behind a proxy where every client has the proxy's address. A connection with a request in
//! progress, or upgraded to a WebSocket (a live call), is never evicted.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::warn;

/// How often a cap that keeps being reached is logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The caps a table enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Open connections (call sockets included).
    pub max_connections: usize,
    /// Waiting connections in total.
    pub max_pending: usize,
    /// Waiting connections of one peer address (0: no cap).
    pub max_pending_per_address: usize,
}

/// Why a waiting connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its address had `max_pending_per_address` waiting connections.
    Address,
    /// `max_pending` connections were waiting.
    Pending,
    /// `max_connections` were open.
    Total,
    /// The process ran out of file descriptors.
    Descriptors,
    /// The process is stopping: a connection without a request has nothing to finish.
    Shutdown,
}

impl Eviction {
    fn as_str(self) -> &'static str {
        match self {
            Eviction::Address => "address",
            Eviction::Pending => "pending",
            Eviction::Total => "total",
            Eviction::Descriptors => "descriptors",
            Eviction::Shutdown => "shutdown",
        }
    }
}

/// The open connections of one listener.
pub struct ConnTable {
    caps: Caps,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    next_seq: u64,
    /// Connections counted against `max_connections`.
    open: usize,
    conns: HashMap<u64, Entry>,
    /// Waiting connections, longest waiting first: sequence → connection id.
    waiting: BTreeMap<u64, u64>,
    /// The same, per peer address.
    waiting_by_ip: HashMap<IpAddr, BTreeMap<u64, u64>>,
    last_warned: Option<Instant>,
}

struct Entry {
    ip: IpAddr,
    /// Its place among waiting connections, while it waits.
    waiting: Option<u64>,
    /// Requests in progress.
    busy: u32,
    /// Never waits again: upgraded (a call socket), served to its end, or evicted.
    done: bool,
    /// Counted in `open`; false once evicted (its socket is about to close).
    counted: bool,
    evicted: CancellationToken,
}

impl ConnTable {
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("connection table lock")
    }

    /// Takes a new connection from `ip`, waiting for its first request. Makes room by evicting
    /// waiting connections when a cap is reached; `None` when every slot holds a connection
    /// with a request in progress or a call (the new socket is then closed at once).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<(Conn, SocketGuard)> {
        let mut victims = Vec::new();
        let admitted = {
            let mut inner = self.lock();
            if self.caps.max_pending_per_address > 0 {
                let oldest = inner
                    .waiting_by_ip
                    .get(&ip)
                    .filter(|w| w.len() >= self.caps.max_pending_per_address)
                    .and_then(|w| w.keys().next().copied());
                if let Some(seq) = oldest {
                    victims.extend(inner.evict(seq).map(|t| (t, Eviction::Address)));
                }
            }
            if inner.waiting.len() >= self.caps.max_pending
                && let Some(seq) = inner.waiting.keys().next().copied()
            {
                victims.extend(inner.evict(seq).map(|t| (t, Eviction::Pending)));
            }
            let room = if inner.open < self.caps.max_connections {
                true
            } else if let Some(seq) = inner.waiting.keys().next().copied() {
                victims.extend(inner.evict(seq).map(|t| (t, Eviction::Total)));
                true
            } else {
                false
            };
            let admitted = room.then(|| {
                let id = inner.next_id;
                inner.next_id += 1;
                let evicted = CancellationToken::new();
                inner.conns.insert(
                    id,
                    Entry {
                        ip,
                        waiting: None,
                        busy: 0,
                        done: false,
                        counted: true,
                        evicted: evicted.clone(),
                    },
                );
                inner.open += 1;
                inner.wait(id);
                (id, evicted)
            });
            inner.publish();
            if !victims.is_empty() || admitted.is_none() {
                self.warn_capped(&mut inner, admitted.is_none());
            }
            admitted
        };
        finish_evictions(victims);
        let Some((id, evicted)) = admitted else {
            metrics::counter!("lifeline_connections_refused_total").increment(1);
            return None;
        };
        let conn = Conn {
            table: self.clone(),
            id,
            evicted,
        };
        let guard = SocketGuard {
            table: self.clone(),
            id,
        };
        Some((conn, guard))
    }

    /// Evicts up to `n` waiting connections, longest waiting first; how many were.
    pub fn evict_oldest(&self, n: usize, reason: Eviction) -> usize {
        let victims: Vec<_> = {
            let mut inner = self.lock();
            let seqs: Vec<u64> = inner.waiting.keys().take(n).copied().collect();
            let victims = seqs
                .into_iter()
                .filter_map(|seq| inner.evict(seq))
                .map(|t| (t, reason))
                .collect();
            inner.publish();
            victims
        };
        let n = victims.len();
        finish_evictions(victims);
        n
    }

    /// Connections counted against `max_connections`, and those waiting for a request.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.open, inner.waiting.len())
    }

    fn warn_capped(&self, inner: &mut Inner, refused: bool) {
        let now = Instant::now();
        if inner
            .last_warned
            .is_some_and(|at| now.duration_since(at) < WARN_EVERY)
        {
            return;
        }
        inner.last_warned = Some(now);
        warn!(
            open = inner.open,
            waiting = inner.waiting.len(),
            max_connections = self.caps.max_connections,
            max_pending = self.caps.max_pending,
            max_pending_per_address = self.caps.max_pending_per_address,
            refused,
            "connection cap reached: closing connections that have waited longest without a \
             request (see lifeline_connections_evicted_total)"
        );
    }

    fn with_entry(&self, id: u64, f: impl FnOnce(&mut Inner, u64)) {
        let mut inner = self.lock();
        if inner.conns.contains_key(&id) {
            f(&mut inner, id);
            inner.publish();
        }
    }
}

fn finish_evictions(victims: Vec<(CancellationToken, Eviction)>) {
    for (token, reason) in victims {
        metrics::counter!("lifeline_connections_evicted_total", "reason" => reason.as_str())
            .increment(1);
        token.cancel();
    }
}

impl Inner {
    /// Puts a connection among the waiting ones, as the newest.
    fn wait(&mut self, id: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        if entry.done || entry.waiting.is_some() {
            return;
        }
        entry.waiting = Some(seq);
        let ip = entry.ip;
        self.waiting.insert(seq, id);
        self.waiting_by_ip.entry(ip).or_default().insert(seq, id);
    }

    /// Takes a connection out of the waiting ones.
    fn unwait(&mut self, id: u64) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(seq) = entry.waiting.take() else {
            return;
        };
        let ip = entry.ip;
        self.waiting.remove(&seq);
        if let Some(of_ip) = self.waiting_by_ip.get_mut(&ip) {
            of_ip.remove(&seq);
            if of_ip.is_empty() {
                self.waiting_by_ip.remove(&ip);
            }
        }
    }

    /// Evicts the waiting connection `seq`: it no longer counts, and its task is told to drop
    /// it (the token returned is cancelled once the lock is released).
    fn evict(&mut self, seq: u64) -> Option<CancellationToken> {
        let id = *self.waiting.get(&seq)?;
        self.unwait(id);
        let entry = self.conns.get_mut(&id)?;
        entry.done = true;
        if entry.counted {
            entry.counted = false;
            self.open -= 1;
        }
        Some(entry.evicted.clone())
    }

    fn publish(&self) {
        metrics::gauge!("lifeline_connections_open").set(self.open as f64);
        metrics::gauge!("lifeline_connections_waiting").set(self.waiting.len() as f64);
    }
}

/// A connection's handle for its task and its service.
#[derive(Clone)]
pub struct Conn {
    table: Arc<ConnTable>,
    id: u64,
    evicted: CancellationToken,
}

impl Conn {
    /// Resolves when the connection was evicted: its task must drop it.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evicted.cancelled()
    }

    /// A request arrived: the connection stops waiting until the returned guard (kept with the
    /// response body) is dropped.
    pub fn start_request(&self) -> Busy {
        self.table.with_entry(self.id, |inner, id| {
            inner.unwait(id);
            if let Some(e) = inner.conns.get_mut(&id) {
                e.busy += 1;
            }
        });
        Busy {
            table: self.table.clone(),
            id: self.id,
        }
    }

    /// The connection was upgraded (a WebSocket: a call): it never waits again.
    pub fn upgraded(&self) {
        self.finished();
    }

    /// The HTTP side of the connection is over (closed, or handed to an upgrade).
    pub fn finished(&self) {
        self.table.with_entry(self.id, |inner, id| {
            inner.unwait(id);
            if let Some(e) = inner.conns.get_mut(&id) {
                e.done = true;
            }
        });
    }
}

/// A request in progress; dropped when its response has been written (or abandoned).
pub struct Busy {
    table: Arc<ConnTable>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.table.with_entry(self.id, |inner, id| {
            let idle = match inner.conns.get_mut(&id) {
                Some(e) => {
                    e.busy = e.busy.saturating_sub(1);
                    e.busy == 0
                }
                None => false,
            };
            if idle {
                // Keep-alive: waiting for its next request, as the newest.
                inner.wait(id);
            }
        });
    }
}

/// Held by the socket itself (and so by an upgraded WebSocket): the connection counts until
/// its descriptor is closed.
pub struct SocketGuard {
    table: Arc<ConnTable>,
    id: u64,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        inner.unwait(self.id);
        if let Some(entry) = inner.conns.remove(&self.id)
            && entry.counted
        {
            inner.open -= 1;
        }
        inner.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn table(max_connections: usize, max_pending: usize, per_address: usize) -> Arc<ConnTable> {
        ConnTable::new(Caps {
            max_connections,
            max_pending,
            max_pending_per_address: per_address,
        })
    }

    #[test]
    fn per_address_cap_evicts_that_address_oldest_first() {
        let t = table(100, 100, 2);
        let (a1, _g1) = t.admit(ip(1)).unwrap();
        let (b1, _g2) = t.admit(ip(2)).unwrap();
        let (a2, _g3) = t.admit(ip(1)).unwrap();
        let (a3, _g4) = t.admit(ip(1)).unwrap();
        assert!(a1.evicted.is_cancelled(), "the oldest of 127.0.0.1 goes");
        assert!(!a2.evicted.is_cancelled() && !a3.evicted.is_cancelled());
        assert!(!b1.evicted.is_cancelled(), "another address is left alone");
        assert_eq!(t.counts(), (3, 3));
    }

    #[test]
    fn total_cap_evicts_a_waiting_connection_never_a_busy_or_upgraded_one() {
        let t = table(3, 100, 0);
        let (busy, _g1) = t.admit(ip(1)).unwrap();
        let _request = busy.start_request();
        let (call, _g2) = t.admit(ip(1)).unwrap();
        let _upgrade = call.start_request();
        call.upgraded();
        let (idle, _g3) = t.admit(ip(1)).unwrap();
        let (_new, _g4) = t.admit(ip(2)).unwrap();
        assert!(idle.evicted.is_cancelled());
        assert!(!busy.evicted.is_cancelled() && !call.evicted.is_cancelled());
        assert_eq!(t.counts(), (3, 1));
        // Only the newest waits: it goes for the next one.
        let (_newer, _g5) = t.admit(ip(3)).unwrap();
        assert!(_new.evicted.is_cancelled());
        drop(_request);
        assert_eq!(
            t.counts().1,
            2,
            "a served keep-alive connection waits again"
        );
    }

    #[test]
    fn full_of_busy_connections_refuses() {
        let t = table(2, 100, 0);
        let (a, _ga) = t.admit(ip(1)).unwrap();
        let _ra = a.start_request();
        let (b, _gb) = t.admit(ip(1)).unwrap();
        let _rb = b.start_request();
        assert!(t.admit(ip(2)).is_none());
        drop(_gb);
        assert!(t.admit(ip(2)).is_some(), "a closed socket frees its slot");
    }

    #[test]
    fn pending_cap_and_descriptor_eviction_take_the_longest_waiting() {
        let t = table(100, 2, 0);
        let (a, _ga) = t.admit(ip(1)).unwrap();
        let (b, _gb) = t.admit(ip(2)).unwrap();
        let (c, _gc) = t.admit(ip(3)).unwrap();
        assert!(a.evicted.is_cancelled());
        assert_eq!(t.evict_oldest(16, Eviction::Descriptors), 2);
        assert!(b.evicted.is_cancelled() && c.evicted.is_cancelled());
        assert_eq!(t.counts(), (0, 0));
    }

    #[test]
    fn an_evicted_socket_is_counted_once() {
        let t = table(1, 100, 0);
        let (a, ga) = t.admit(ip(1)).unwrap();
        let (_b, _gb) = t.admit(ip(1)).unwrap();
        assert!(a.evicted.is_cancelled());
        drop(ga);
        assert_eq!(t.counts(), (1, 1));
    }
}
