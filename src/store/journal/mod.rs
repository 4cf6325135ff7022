//! A local, append-only, fsynced journal of the call path's writes, for when the database
//! cannot commit in time (see [`super::resilient`]).
//!
//! Records are appended by one writer thread that commits groups: every record waiting when
//! it wakes is written, one `fdatasync` covers them all, and only then is each appender told
//! its record is durable. The journal is a directory of segments; the replay seals the
//! segment being written ([`Journal::seal`]) and reads the sealed ones, oldest first.

pub mod segment;
pub mod statics;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::models::*;

/// One write of the call path, as the store would have been asked to make it. (Boxing the
/// large variants would save nothing: records live briefly, one per write.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    UpsertCall {
        call: NewCall,
    },
    AppStarted {
        call_id: Uuid,
        at: DateTime<Utc>,
    },
    CallStatus {
        call_id: Uuid,
        update: CallStatusUpdate,
    },
    UltravoxLink {
        call_id: Uuid,
        ultravox_call_id: String,
    },
    CallEvent {
        event: NewCallEvent,
    },
    BeginInvocation {
        log: NewToolCallLog,
        plan: Plan,
    },
    FinishInvocation {
        log_id: Uuid,
        outcome: Recorded,
    },
    StartTransfer {
        attempt: NewTransferAttempt,
    },
    FinishTransfer {
        finish: TransferFinish,
    },
    TransferAnswered {
        attempt_id: Uuid,
        at: DateTime<Utc>,
        /// The attempt's call, when this instance knew it (keeps the record in its call's
        /// replay lane, after the attempt's start).
        #[serde(default)]
        call_id: Option<Uuid>,
    },
    CallbackRequest {
        request: NewCallbackRequest,
    },
}

impl Record {
    /// A short name, for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Self::UpsertCall { .. } => "upsert_call",
            Self::AppStarted { .. } => "app_started",
            Self::CallStatus { .. } => "call_status",
            Self::UltravoxLink { .. } => "ultravox_link",
            Self::CallEvent { .. } => "call_event",
            Self::BeginInvocation { .. } => "begin_invocation",
            Self::FinishInvocation { .. } => "finish_invocation",
            Self::StartTransfer { .. } => "start_transfer",
            Self::FinishTransfer { .. } => "finish_transfer",
            Self::TransferAnswered { .. } => "transfer_answered",
            Self::CallbackRequest { .. } => "callback_request",
        }
    }
}

/// A journaled record and when it was journaled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Named apart from the records' own `at` fields (the record is flattened beside it).
    #[serde(rename = "journaled_at")]
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub record: Record,
}

/// What a sealed segment holds.
#[derive(Debug)]
pub struct SegmentRecords {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    /// Lines that could not be read back (checksum or JSON), set aside in `rejected.log`.
    pub set_aside: usize,
}

enum Command {
    Append(Vec<u8>, oneshot::Sender<io::Result<()>>),
    /// Close the segment being written; the next append starts a new one. Answers the
    /// sequence number below which every segment is sealed.
    Seal(oneshot::Sender<io::Result<u64>>),
}

/// The journal directory and its writer thread.
pub struct Journal {
    dir: PathBuf,
    commands: mpsc::Sender<Command>,
    /// Held (locked) while the journal is open: two processes appending to and replaying one
    /// journal would each replay the other's records out of order.
    _lock: File,
}

impl Journal {
    /// Opens (creating it if needed) the journal in `dir`. Segments left by an earlier process
    /// are sealed: they are replayed before anything written from now on.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        // Fail now, not during an outage, when the directory cannot be written.
        let probe = dir.join(".writable");
        File::create(&probe)
            .and_then(|f| f.sync_all())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "the journal directory {} is not writable: {e}",
                        dir.display()
                    ),
                )
            })?;
        let _ = std::fs::remove_file(&probe);
        let lock = File::create(dir.join("lock"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    format!(
                        "the journal directory {} is in use by another lifeline process: give \
                         each process its own (journal.dir or LIFELINE_JOURNAL_DIR)",
                        dir.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let next = segment::list(dir)?.last().map_or(1, |(seq, _)| seq + 1);
        let (commands, receiver) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            seq: next,
            file: None,
        };
        std::thread::Builder::new()
            .name("lifeline-journal".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            commands,
            _lock: lock,
        })
    }

    /// Where the journal lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `entry` for the writer (in call order) and returns what to await: durable once it
    /// resolves to `Ok`. Queueing is synchronous so that a caller holding a lock fixes the
    /// order of its record relative to a seal.
    pub fn submit(
        &self,
        entry: &Entry,
    ) -> io::Result<impl Future<Output = io::Result<()>> + Send + use<>> {
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        let (done, durable) = oneshot::channel();
        self.commands
            .send(Command::Append(segment::encode(&json), done))
            .map_err(|_| io::Error::other("the journal writer stopped"))?;
        Ok(async move {
            durable
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the journal writer stopped")))
        })
    }

    /// Seals the segment being written (queued like [`Journal::submit`]); resolves to the
    /// sequence number below which every segment is sealed.
    pub fn seal(&self) -> io::Result<impl Future<Output = io::Result<u64>> + Send + use<>> {
        let (done, sealed) = oneshot::channel();
        self.commands
            .send(Command::Seal(done))
            .map_err(|_| io::Error::other("the journal writer stopped"))?;
        Ok(async move {
            sealed
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the journal writer stopped")))
        })
    }
}

/// Removes a replayed segment of the journal in `dir` (durably).
pub fn remove(dir: &Path, path: &Path) -> io::Result<()> {
    std::fs::remove_file(path)?;
    segment::sync_dir(dir)
}

/// The sealed segments of the journal in `dir` below `below`, oldest first, read back. Lines
/// that cannot be read are logged, and kept in `rejected.log` when `set_aside` (the replay
/// does; a look at start-up does not, so they are kept once).
pub fn read_sealed(dir: &Path, below: u64, set_aside: bool) -> io::Result<Vec<SegmentRecords>> {
    let mut out = Vec::new();
    for (seq, path) in segment::list(dir)? {
        if seq >= below {
            break;
        }
        let read = segment::decode(&std::fs::read(&path)?);
        let mut unreadable = read.damaged;
        let mut entries = Vec::with_capacity(read.lines.len());
        for line in read.lines {
            match serde_json::from_slice::<Entry>(&line) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    tracing::error!(segment = %path.display(), error = %e, "unreadable journal record");
                    unreadable.push(line);
                }
            }
        }
        if read.torn_tail > 0 {
            tracing::warn!(
                segment = %path.display(),
                bytes = read.torn_tail,
                "journal segment ends in an unfinished record (never acknowledged): ignored"
            );
        }
        if set_aside {
            segment::set_aside(dir, &unreadable)?;
        }
        out.push(SegmentRecords {
            path,
            entries,
            set_aside: unreadable.len(),
        });
    }
    Ok(out)
}

/// Whether the journal in `dir` holds records (without opening it).
pub fn holds_records(dir: &Path) -> bool {
    segment::list(dir).is_ok_and(|segments| {
        segments
            .iter()
            .any(|(_, path)| std::fs::metadata(path).is_ok_and(|m| m.len() > 0))
    })
}

struct Writer {
    dir: PathBuf,
    seq: u64,
    file: Option<File>,
}

impl Writer {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        while let Ok(first) = commands.recv() {
            // Group commit: everything queued meanwhile shares this wake-up's fsync.
            let mut batch = vec![first];
            batch.extend(commands.try_iter());
            let mut appended: Vec<oneshot::Sender<io::Result<()>>> = Vec::new();
            let mut bytes = Vec::new();
            for command in batch {
                match command {
                    Command::Append(line, done) => {
                        bytes.extend_from_slice(&line);
                        appended.push(done);
                    }
                    Command::Seal(done) => {
                        // What came before the seal belongs to the sealed segment.
                        let flushed = self.write(&bytes);
                        bytes.clear();
                        answer(std::mem::take(&mut appended), &flushed);
                        let sealed = flushed.and_then(|()| self.seal());
                        let _ = done.send(sealed);
                    }
                }
            }
            let flushed = self.write(&bytes);
            answer(appended, &flushed);
        }
    }

    /// Writes and fsyncs `bytes` to the current segment (created on first use).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(segment::path(&self.dir, self.seq))?;
            segment::sync_dir(&self.dir)?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        let written = file.write_all(bytes).and_then(|()| file.sync_data());
        if written.is_err() {
            // The segment may now end in part of a line (or a hole): nothing more goes after
            // it, or the next acknowledged record would be read back glued to that part and
            // rejected. The next write starts a new segment.
            self.file = None;
            self.seq += 1;
        }
        written
    }

    fn seal(&mut self) -> io::Result<u64> {
        if self.file.take().is_some() {
            self.seq += 1;
        }
        Ok(self.seq)
    }
}

fn answer(waiting: Vec<oneshot::Sender<io::Result<()>>>, result: &io::Result<()>) {
    for done in waiting {
        let _ = done.send(match result {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of record reads back (a record's own fields must not collide with the
    /// entry's: `at` did).
    #[test]
    fn records_with_their_own_time_read_back() {
        let call_id = Uuid::now_v7();
        for record in [
            Record::AppStarted {
                call_id,
                at: Utc::now(),
            },
            Record::TransferAnswered {
                attempt_id: Uuid::now_v7(),
                at: Utc::now(),
                call_id: Some(call_id),
            },
        ] {
            let entry = Entry {
                at: Utc::now(),
                record,
            };
            let json = serde_json::to_vec(&entry).unwrap();
            let back: Entry = serde_json::from_slice(&json).unwrap();
            assert_eq!(back.at, entry.at);
            assert_eq!(back.record.op(), entry.record.op());
        }
    }

    #[test]
    fn appended_records_are_read_back_once_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..3 {
                let entry = Entry {
                    at: Utc::now(),
                    record: Record::AppStarted {
                        call_id: Uuid::now_v7(),
                        at: Utc::now(),
                    },
                };
                journal.submit(&entry).unwrap().await.unwrap();
            }
            let below = journal.seal().unwrap().await.unwrap();
            let sealed = read_sealed(dir.path(), below, true).unwrap();
            assert_eq!(sealed.len(), 1);
            assert_eq!(sealed[0].entries.len(), 3);
            assert_eq!(sealed[0].set_aside, 0);
            // A second process on the same directory is refused.
            let err = Journal::open(dir.path()).err().expect("locked");
            assert!(
                err.to_string()
                    .contains("in use by another lifeline process"),
                "{err}"
            );
        });
    }
}
