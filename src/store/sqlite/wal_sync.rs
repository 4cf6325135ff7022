//! The log writer's commits made durable by a thread of their own: the writer's connection
//! commits without waiting for the disk (`synchronous=NORMAL`), and this thread syncs the WAL
//! file (`fdatasync`) before anyone whose rows the commit holds is told it is done.
//!
//! With `synchronous=FULL` every `COMMIT` of the log writer waited for its own sync of the WAL
//! (0.3–0.5 ms on the development machine), and meanwhile the writer could not begin the next
//! batch: at 2,000 tool calls/s about a quarter of its time. Here, when jobs queued while it
//! committed, the writer hands the committed batch's outcome to this thread and goes on with
//! the next batch while the disk syncs; one sync covers every commit made before it began (the
//! WAL is written in order), so a batch committed during a sync waits for the next one only.
//! When nothing queued, the writer syncs itself (there is nothing to overlap).
//!
//! The guarantee is `synchronous=FULL`'s: a tool call hears that its rows are committed only
//! after a sync of the WAL that began after its `COMMIT` returned. What `NORMAL` keeps (SQLite's
//! own words: the WAL is synced before each checkpoint, the database file after it, and the
//! WAL's header when the WAL starts again) keeps the file consistent whatever the moment of a
//! power cut; the sync here adds the durability of each commit before it is answered. Readers
//! on other connections may see a commit before its sync ends; but a commit on any other
//! connection (`synchronous=FULL`) syncs the same WAL, and with it every commit before its own,
//! so what writes before it acts (the delivery worker claims a request before posting it) acts
//! only on durable rows.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::watch;

/// Where a commit's outcome goes once the WAL holding it is synced (see `super::Outcome`).
pub(super) type Pending = watch::Sender<Option<Result<(), String>>>;

/// Syncs the WAL file to the disk (its data, and its length).
type SyncFn = dyn Fn() -> std::io::Result<()> + Send + Sync;

/// The handle of the sync thread: commits to make durable go to it.
pub(super) struct WalSync {
    tx: mpsc::Sender<Pending>,
    sync: Arc<SyncFn>,
    syncs: Arc<AtomicU64>,
}

/// The WAL file, opened at its first sync and kept: a sync then needs no new file descriptor
/// (none may be left when hostile connections hold them all) and no look-up of its path.
/// SQLite removes the WAL only when the database's last connection closes, and the log
/// writer's stays open as long as this does.
struct WalFile {
    path: PathBuf,
    file: Mutex<Option<Arc<File>>>,
}

impl WalFile {
    /// `fdatasync` of the WAL, as SQLite's own on Linux. After a failure the file is opened
    /// again for the next sync (the failed one stays failed: its commits are never reported
    /// durable by a later sync's success).
    fn sync(&self) -> std::io::Result<()> {
        let file = {
            let mut kept = self.file.lock().unwrap_or_else(|e| e.into_inner());
            match &*kept {
                Some(file) => file.clone(),
                None => {
                    let opened = Arc::new(OpenOptions::new().write(true).open(&self.path)?);
                    *kept = Some(opened.clone());
                    opened
                }
            }
        };
        let synced = file.sync_data();
        if synced.is_err() {
            *self.file.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        synced
    }
}

impl WalSync {
    /// Starts the thread that syncs the WAL of the database file at `db` (SQLite's name for it:
    /// the file's name and `-wal`). It ends when the returned value is dropped.
    pub(super) fn start(db: &Path) -> std::io::Result<Self> {
        let mut path = db.as_os_str().to_owned();
        path.push("-wal");
        let wal = WalFile {
            path: PathBuf::from(path),
            file: Mutex::new(None),
        };
        Self::start_with(Arc::new(move || wal.sync()))
    }

    /// As [`WalSync::start`], with the sync given (tests hold it to see who waits for it).
    fn start_with(sync: Arc<SyncFn>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Pending>();
        let syncs = Arc::new(AtomicU64::new(0));
        let (synced, counted) = (sync.clone(), syncs.clone());
        std::thread::Builder::new()
            .name("lifeline-sqlite-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Every commit made before this sync begins is covered by it.
                    let mut pending = vec![first];
                    pending.extend(rx.try_iter());
                    let outcome = run(&*synced, &counted);
                    for p in pending {
                        p.send_replace(Some(outcome.clone()));
                    }
                }
            })?;
        Ok(Self { tx, sync, syncs })
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
        pending.send_replace(Some(run(&*self.sync, &self.syncs)));
    }

    /// WAL syncs so far (by the thread and by [`WalSync::sync_here`]).
    pub(super) fn syncs(&self) -> Arc<AtomicU64> {
        self.syncs.clone()
    }
}

/// One sync of the WAL, counted; its failure as every waiting commit's error.
fn run(sync: &SyncFn, syncs: &AtomicU64) -> Result<(), String> {
    match sync() {
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
        WalSync::start_with(Arc::new(move || {
            g.asked.fetch_add(1, Ordering::SeqCst);
            g.open.lock().unwrap().recv().unwrap()
        }))
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
