//! The log writer's commits made durable by a thread of their own: the writer's connection
//! commits without waiting for the disk (`synchronous=NORMAL`), and this thread syncs the WAL
//! file (`fdatasync`) before anyone whose rows the commit holds is told it is done.
//!
//! With `synchronous=FULL` every `COMMIT` of the log writer waited for its own sync of the WAL
//! (0.3–0.5 ms on the development machine), and meanwhile the writer could not begin the next
//! batch: at 2,000 tool calls/s about a quarter of its time. Here the writer hands each
//! committed batch's outcome to this thread and goes on with the next batch while the disk
//! syncs; one sync covers every commit made before it began (the WAL is written in order), so
//! a batch committed during a sync waits for the next one only.
//!
//! The guarantee is `synchronous=FULL`'s: a tool call hears that its rows are committed only
//! after a sync of the WAL that began after its `COMMIT` returned. What `NORMAL` keeps (SQLite's
//! own words: the WAL is synced before each checkpoint, the database file after it, and the
//! WAL's header when the WAL starts again) keeps the file consistent whatever the moment of a
//! power cut; the sync here adds the durability of each commit before it is answered. Readers
//! on other connections may see a commit before its sync ends; a write on another connection
//! (`synchronous=FULL`) syncs the same WAL, so nothing acts on a row by writing that is not
//! durable by then.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tokio::sync::watch;

/// Where a commit's outcome goes once the WAL holding it is synced (see `super::Outcome`).
pub(super) type Pending = watch::Sender<Option<Result<(), String>>>;

/// Syncs the WAL file at `wal` to the disk (its data, and its length).
type SyncFn = dyn Fn(&Path) -> std::io::Result<()> + Send + Sync;

/// The handle of the sync thread: commits to make durable go to it.
pub(super) struct WalSync {
    tx: mpsc::Sender<Pending>,
    wal: PathBuf,
    sync: Arc<SyncFn>,
    syncs: Arc<AtomicU64>,
}

/// The WAL file's sync: `fdatasync`, as SQLite's own on Linux.
fn fdatasync(wal: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(wal)?
        .sync_data()
}

impl WalSync {
    /// Starts the thread that syncs the WAL of the database file at `db` (SQLite's name for it:
    /// the file's name and `-wal`). It ends when the returned value is dropped.
    pub(super) fn start(db: &Path) -> std::io::Result<Self> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Self::start_with(PathBuf::from(wal), Arc::new(fdatasync))
    }

    /// As [`WalSync::start`], with the sync given (tests hold it to see who waits for it).
    fn start_with(wal: PathBuf, sync: Arc<SyncFn>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Pending>();
        let syncs = Arc::new(AtomicU64::new(0));
        let (path, synced, counted) = (wal.clone(), sync.clone(), syncs.clone());
        std::thread::Builder::new()
            .name("lifeline-sqlite-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Every commit made before this sync begins is covered by it.
                    let mut pending = vec![first];
                    pending.extend(rx.try_iter());
                    let outcome = run(&*synced, &path, &counted);
                    for p in pending {
                        p.send_replace(Some(outcome.clone()));
                    }
                }
            })?;
        Ok(Self {
            tx,
            wal,
            sync,
            syncs,
        })
    }

    /// Hands over a committed batch's outcome: it is set once the WAL is synced (or the sync
    /// failed). If the thread is gone, syncs here, on the caller's thread.
    pub(super) fn after_commit(&self, pending: Pending) {
        if let Err(mpsc::SendError(pending)) = self.tx.send(pending) {
            self.sync_here(pending);
        }
    }

    /// Syncs the WAL on the caller's thread and sets the outcome: for a writer with nothing
    /// else to do meanwhile (a hand-over would only add a thread's wake-up to the wait).
    pub(super) fn sync_here(&self, pending: Pending) {
        pending.send_replace(Some(run(&*self.sync, &self.wal, &self.syncs)));
    }

    /// WAL syncs so far.
    pub(super) fn syncs(&self) -> Arc<AtomicU64> {
        self.syncs.clone()
    }
}

/// One sync of the WAL, counted; its failure as every waiting commit's error.
fn run(sync: &SyncFn, wal: &Path, syncs: &AtomicU64) -> Result<(), String> {
    match sync(wal) {
        Ok(()) => {
            syncs.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("lifeline_sqlite_wal_syncs_total").increment(1);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "syncing SQLite's WAL failed; the commits waiting for it are reported as not done");
            Err(format!("syncing the WAL failed: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A sync that waits until the test lets it through, and counts what it was asked.
    struct Gate {
        open: Mutex<mpsc::Receiver<std::io::Result<()>>>,
        asked: AtomicU64,
    }

    fn gated() -> (Arc<Gate>, mpsc::Sender<std::io::Result<()>>) {
        let (tx, rx) = mpsc::channel();
        (
            Arc::new(Gate {
                open: Mutex::new(rx),
                asked: AtomicU64::new(0),
            }),
            tx,
        )
    }

    fn start(gate: &Arc<Gate>) -> WalSync {
        let g = gate.clone();
        WalSync::start_with(
            PathBuf::from("unused-wal"),
            Arc::new(move |_: &Path| {
                g.asked.fetch_add(1, Ordering::SeqCst);
                g.open.lock().unwrap().recv().unwrap()
            }),
        )
        .unwrap()
    }

    fn wait_until(what: impl Fn() -> bool) {
        for _ in 0..500 {
            if what() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("timed out");
    }

    #[test]
    fn a_commit_is_answered_only_after_the_sync_that_follows_it() {
        let (gate, release) = gated();
        let sync = start(&gate);
        let (first, first_rx) = watch::channel(None);
        sync.after_commit(first);
        wait_until(|| gate.asked.load(Ordering::SeqCst) == 1);
        // Committed while the first sync runs: it waits for the next sync, not this one.
        let (second, second_rx) = watch::channel(None);
        let (third, third_rx) = watch::channel(None);
        sync.after_commit(second);
        sync.after_commit(third);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*first_rx.borrow(), None, "answered before its sync ended");
        release.send(Ok(())).unwrap();
        wait_until(|| first_rx.borrow().is_some());
        assert_eq!(*first_rx.borrow(), Some(Ok(())));
        // The two commits made during the first sync share the second.
        wait_until(|| gate.asked.load(Ordering::SeqCst) == 2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*second_rx.borrow(), None);
        assert_eq!(*third_rx.borrow(), None);
        release.send(Ok(())).unwrap();
        wait_until(|| third_rx.borrow().is_some());
        assert_eq!(*second_rx.borrow(), Some(Ok(())));
        assert_eq!(*third_rx.borrow(), Some(Ok(())));
        assert_eq!(gate.asked.load(Ordering::SeqCst), 2);
        assert_eq!(sync.syncs().load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_sync_is_every_waiting_commits_error() {
        let (gate, release) = gated();
        let sync = start(&gate);
        let (pending, rx) = watch::channel(None);
        sync.after_commit(pending);
        release
            .send(Err(std::io::Error::other("disk gone")))
            .unwrap();
        wait_until(|| rx.borrow().is_some());
        let outcome = rx.borrow().clone().unwrap();
        assert!(outcome.unwrap_err().contains("disk gone"));
        assert_eq!(sync.syncs().load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_real_sync_syncs_the_file_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("lifeline.db");
        let sync = WalSync::start(&db).unwrap();
        let (pending, rx) = watch::channel(None);
        sync.after_commit(pending);
        wait_until(|| rx.borrow().is_some());
        assert!(rx.borrow().clone().unwrap().is_err(), "no WAL file yet");
        std::fs::write(dir.path().join("lifeline.db-wal"), b"frames").unwrap();
        let (pending, rx) = watch::channel(None);
        sync.after_commit(pending);
        wait_until(|| rx.borrow().is_some());
        assert_eq!(*rx.borrow(), Some(Ok(())));
    }
}
