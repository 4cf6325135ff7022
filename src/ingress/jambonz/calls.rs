//! Which socket each live Jambonz call is on.
//!
//! A call's socket can drop and come back (Jambonz reconnects with `session:reconnect`), and a
//! tool call's effect outlives the socket it came on. So a tool's answer and the commands that
//! follow it go to the call's *current* socket, looked up here when they are ready. A call with
//! no socket at that moment loses nothing: the answer and the commands are derived again from
//! what the effect recorded when Jambonz reconnects (see `recovery`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The outbound queue of each call's current socket: a `flume` channel, which allocates
/// nothing until a frame is queued (tokio's bounded channel allocates its first block of 32
/// slots and a cache-padded header up front, 1.3 KB of every idle call's socket).
#[derive(Default)]
pub struct CallSockets {
    next_id: AtomicU64,
    sockets: Mutex<HashMap<String, (u64, flume::Sender<String>)>>,
}

impl CallSockets {
    /// A new socket's id (so a socket that went away cannot detach its successor).
    pub fn new_socket_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `socket` the call's current socket.
    pub fn attach(&self, call_sid: &str, socket: u64, queue: flume::Sender<String>) {
        self.sockets
            .lock()
            .expect("call sockets lock")
            .insert(call_sid.to_string(), (socket, queue));
    }

    /// Forgets `socket` as the call's socket, unless another one took over already.
    pub fn detach(&self, call_sid: &str, socket: u64) {
        let mut sockets = self.sockets.lock().expect("call sockets lock");
        if sockets.get(call_sid).is_some_and(|(id, _)| *id == socket) {
            sockets.remove(call_sid);
        }
    }

    /// Queues a frame on the call's current socket. False when the call has no socket now (the
    /// frame is then sent again, from the records, when Jambonz reconnects).
    pub async fn send(&self, call_sid: &str, frame: String) -> bool {
        let queue = self
            .sockets
            .lock()
            .expect("call sockets lock")
            .get(call_sid)
            .map(|(_, queue)| queue.clone());
        match queue {
            Some(queue) => queue.send_async(frame).await.is_ok(),
            None => false,
        }
    }

    /// How many calls have a socket on this instance.
    pub fn len(&self) -> usize {
        self.sockets.lock().expect("call sockets lock").len()
    }

    /// Whether no call has a socket on this instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
