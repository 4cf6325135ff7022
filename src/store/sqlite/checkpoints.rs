//! WAL checkpoints for SQLite's log writer, copied back into the database by a thread of their
//! own instead of inside the log writer's `COMMIT`.
//!
//! SQLite's automatic checkpoint runs in the `COMMIT` that takes the WAL past 1,000 frames, on
//! the committing connection: the log writer's. At 3,000 tool calls/s that was every 20–40 ms,
//! each copying about a thousand frames and syncing the WAL and the database file, and meanwhile
//! the batch just committed was not yet answered and the next could not begin. Here the
//! writer's connection keeps no automatic checkpoint. When its WAL passes [`SWEEP_AT`] frames
//! the checkpointer thread copies them back (`PASSIVE`: it never blocks the writer, which goes
//! on committing); the writer then, after answering its batch, checkpoints what was committed
//! while that ran (a few commits' frames), so that the WAL is wholly in the database and its
//! next transaction starts the WAL again from its beginning. If the checkpointer is not keeping
//! up (or gone), the writer checkpoints on its own once the WAL passes [`WRITER_AT`] frames.
//! Nothing here bears on durability: a commit is durable in the WAL, checkpointed or not.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;

/// The checkpointer is asked to copy the WAL back once it holds this many frames (more than
/// after the writer's own last checkpoint, if the WAL did not start again after it): SQLite's
/// own automatic checkpoint's default.
const SWEEP_AT: c_int = 1_000;

/// The writer checkpoints on its own once the WAL holds this many frames more than after its
/// last checkpoint (16 MiB of 4 KiB pages): the checkpointer did not keep it short.
const WRITER_AT: c_int = 4_000;

thread_local! {
    /// Frames in the WAL after the last commit on this thread's connection (SQLite's WAL hook
    /// runs on the committing thread: the log writer's); 0 when nothing was committed since
    /// it was last read.
    static WAL_FRAMES: Cell<c_int> = const { Cell::new(0) };
}

/// The WAL hook of the writer's connection: notes the WAL's length. Installing it replaces
/// SQLite's automatic checkpoint on that connection (which is itself such a hook).
fn note_wal_length(_wal: &rusqlite::hooks::Wal, frames: c_int) -> rusqlite::Result<()> {
    WAL_FRAMES.with(|f| f.set(frames));
    Ok(())
}

/// Checkpoints run so far (for tests and the README's figures; all 0 where the checkpointer
/// could not start).
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// By the checkpointer thread, alongside the writer.
    pub(super) checkpointer: AtomicU64,
    /// By the log writer between its batches.
    pub(super) log_writer: AtomicU64,
}

/// The log writer's side of the checkpoints: when to ask the checkpointer, and when to
/// checkpoint itself.
pub(super) struct Checkpoints {
    ask: mpsc::SyncSender<()>,
    /// Set by the checkpointer when it has copied the WAL back as far as it could.
    swept: Arc<AtomicBool>,
    /// The checkpointer was asked and has not finished yet.
    asked: bool,
    /// The WAL's length after the writer's own last checkpoint (the WAL did not start again
    /// if a reader still used its frames).
    own_at: c_int,
    counts: Arc<Counts>,
}

impl Checkpoints {
    /// Takes over the checkpoints of `writer` (its connection to the database file at `path`)
    /// and starts the checkpointer thread, with a connection of its own. The thread ends when
    /// the returned value is dropped (with the log writer's thread).
    pub(super) fn start(
        writer: &rusqlite::Connection,
        path: &std::path::Path,
    ) -> Result<Self, rusqlite::Error> {
        let db = rusqlite::Connection::open(path)?;
        // A checkpoint syncs the WAL and the database file as `synchronous` says: as lifeline's.
        db.execute_batch("PRAGMA synchronous = FULL;")?;
        let (ask, asked) = mpsc::sync_channel::<()>(1);
        let swept = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (done, counted) = (swept.clone(), counts.clone());
        std::thread::Builder::new()
            .name("lifeline-sqlite-checkpoint".into())
            .spawn(move || {
                while asked.recv().is_ok() {
                    checkpoint(&db, "checkpointer", &counted.checkpointer);
                    done.store(true, Ordering::Release);
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        writer.wal_hook(Some(note_wal_length));
        Ok(Self {
            ask,
            swept,
            asked: false,
            own_at: 0,
            counts,
        })
    }

    /// The checkpoints run so far.
    pub(super) fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// After the writer answered a batch: asks the checkpointer to copy the WAL back, or
    /// finishes what it copied, or (if it fell behind) checkpoints on the writer's connection.
    pub(super) fn after_batch(&mut self, writer: &rusqlite::Connection) {
        let frames = WAL_FRAMES.with(|f| f.replace(0));
        if frames == 0 {
            return;
        }
        if frames < self.own_at {
            // The WAL started again from its beginning.
            self.own_at = 0;
        }
        if self.asked && self.swept.swap(false, Ordering::Acquire) {
            // What was committed while the checkpointer copied: a few commits' frames.
            self.asked = false;
            self.own_at = frames;
            checkpoint(writer, "log_writer", &self.counts.log_writer);
        } else if frames >= self.own_at.saturating_add(WRITER_AT) {
            self.own_at = frames;
            checkpoint(writer, "log_writer", &self.counts.log_writer);
        } else if !self.asked && frames >= self.own_at.saturating_add(SWEEP_AT) {
            self.asked = self.ask.try_send(()).is_ok();
        }
    }
}

/// A `PASSIVE` checkpoint on `db`: copies back what no reader still needs, blocking no one.
fn checkpoint(db: &rusqlite::Connection, by: &'static str, count: &AtomicU64) {
    match db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => {
            count.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("lifeline_sqlite_checkpoints_total", "by" => by).increment(1);
        }
        Err(e) => tracing::warn!(error = %e, by, "a WAL checkpoint failed"),
    }
}
