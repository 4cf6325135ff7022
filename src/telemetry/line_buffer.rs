//! Log lines gathered in memory and written to stdout by a thread of their own a few times a
//! second, in one write each time.
//!
//! Why not a channel to a writer thread (tracing-appender's `non_blocking`, used before): every
//! line woke that thread, and under load the wake-ups (a `futex` per line, the thread's spin in
//! `sched_yield`, its `write`) were 8% of the server's CPU at 1,000 tool calls/s (`perf`).
//! Here a line is appended to a buffer under a short lock; the writer thread sleeps until
//! there is something to write, then lets lines gather for [`FLUSH_EVERY`] and writes them all.
//!
//! What it promises: a line is never split or interleaved with another; lines reach stdout in
//! the order they were logged, within [`FLUSH_EVERY`] (sooner when many wait); a slow or
//! stuck stdout never blocks a caller: past [`CAPACITY`] bytes waiting or being written, lines
//! are dropped and a line saying how many follows the lines before them. Dropping the
//! [`FlushGuard`] (at exit) writes what is left, waiting at most [`CLOSE_WAIT`] for a stuck
//! stdout. A process killed outright loses the lines not yet written: normally those of its
//! last [`FLUSH_EVERY`].

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How long lines gather before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Written at once (not after [`FLUSH_EVERY`]) when this much waits.
pub const WRITE_AT: usize = 256 * 1024;

/// Lines beyond this many bytes, waiting or being written (stdout too slow, or stuck), are
/// dropped, and counted.
pub const CAPACITY: usize = 16 * 1024 * 1024;

/// How long dropping the guard waits for the last lines to be written.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Where lines wait, shared by the loggers and the writer thread.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Tells the writer thread: lines arrived in an empty buffer, [`WRITE_AT`] was reached, or
    /// it is closing. Tells the guard: the writer thread is done.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    /// Bytes the writer thread took and is writing (they count towards [`CAPACITY`]).
    writing: usize,
    /// Lines dropped since the last write (the buffer was full).
    dropped: u64,
    closing: bool,
    done: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only bytes behind; keep logging.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` for the fmt layer: each line is appended to the shared buffer.
#[derive(Clone)]
pub struct LineBuffer {
    shared: Arc<Shared>,
}

/// Keep it until exit: dropping it writes the lines still waiting and stops the writer thread.
pub struct FlushGuard {
    shared: Arc<Shared>,
}

/// Starts the writer thread for `sink` (stdout in the service).
pub fn spawn<W: Write + Send + 'static>(sink: W) -> (LineBuffer, FlushGuard) {
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(&writer, sink));
    if let Err(e) = spawned {
        eprintln!("could not start the log writer thread ({e}); logging to stdout directly");
        // Nothing will drain the buffer: closing it makes every line go straight out.
        shared.lock().done = true;
    }
    (
        LineBuffer {
            shared: shared.clone(),
        },
        FlushGuard { shared },
    )
}

/// The writer thread: waits for lines, lets more gather, writes them in one go.
fn write_lines<W: Write>(shared: &Shared, mut sink: W) {
    let mut spare = Vec::new();
    let mut state = shared.lock();
    loop {
        state = shared
            .changed
            .wait_while(state, |s| {
                s.lines.is_empty() && s.dropped == 0 && !s.closing
            })
            .unwrap_or_else(|e| e.into_inner());
        if !state.closing {
            state = shared
                .changed
                .wait_timeout_while(state, FLUSH_EVERY, |s| {
                    s.lines.len() < WRITE_AT && !s.closing
                })
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut lines = std::mem::replace(&mut state.lines, std::mem::take(&mut spare));
        let dropped = std::mem::take(&mut state.dropped);
        let closing = state.closing;
        state.writing = lines.len();
        drop(state);
        // A failing stdout loses these lines; there is nowhere else to say so.
        let _ = sink.write_all(&lines);
        // After the lines logged before the drops (the notice is JSON whatever the format).
        if dropped > 0 {
            // One write: the line is whole even on a sink that takes each write apart.
            let notice = format!(
                r#"{{"timestamp":"{}","level":"WARN","fields":{{"message":"log lines dropped: stdout was too slow","dropped":{dropped}}},"target":"lifeline::telemetry"}}{}"#,
                chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                '\n'
            );
            let _ = sink.write_all(notice.as_bytes());
        }
        let _ = sink.flush();
        lines.clear();
        // Keep the buffer's capacity for the next round, unless a burst made it large.
        if lines.capacity() <= WRITE_AT * 2 {
            spare = lines;
        }
        state = shared.lock();
        state.writing = 0;
        if closing && state.lines.is_empty() && state.dropped == 0 {
            state.done = true;
            shared.changed.notify_all();
            return;
        }
    }
}

impl Shared {
    /// Appends one line (or drops it, counted, when the buffer is full).
    fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.done {
            // No writer thread (it could not start, or it finished): straight out.
            drop(state);
            return std::io::stdout().lock().write_all(line);
        }
        if state.lines.len() + state.writing + line.len() > CAPACITY {
            state.dropped += 1;
            // The first drop wakes the writer thread if it waits for a first line (a line
            // larger than the buffer), so that the notice goes out.
            if state.dropped == 1 && state.lines.is_empty() {
                self.changed.notify_one();
            }
            return Ok(());
        }
        let was = state.lines.len();
        state.lines.extend_from_slice(line);
        // Wake the writer thread only when it waits for a first line, or for a full buffer:
        // not once per line.
        if was == 0 || (was < WRITE_AT && state.lines.len() >= WRITE_AT) {
            self.changed.notify_one();
        }
        Ok(())
    }
}

/// One line (the fmt layer writes each event with one `write_all`).
pub struct Line<'a>(&'a Shared);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.append(line).map(|()| line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineBuffer {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.shared)
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.changed.notify_all();
        let _ = self
            .shared
            .changed
            .wait_timeout_while(state, CLOSE_WAIT, |s| !s.done)
            .unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that hands each write to the test, and can be held shut.
    #[derive(Clone)]
    struct Sink {
        writes: mpsc::Sender<Vec<u8>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            let _ = self.writes.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn sink() -> (Sink, mpsc::Receiver<Vec<u8>>, Arc<Mutex<()>>) {
        let (writes, received) = mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        (
            Sink {
                writes,
                gate: gate.clone(),
            },
            received,
            gate,
        )
    }

    fn log(buffer: &LineBuffer, line: &str) {
        use tracing_subscriber::fmt::MakeWriter;
        buffer.make_writer().write_all(line.as_bytes()).unwrap();
    }

    /// Everything written, once the writer thread has finished (it holds the only sender).
    fn everything(received: &mpsc::Receiver<Vec<u8>>) -> String {
        String::from_utf8(received.iter().flatten().collect()).unwrap()
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_each_threads_order() {
        let (sink, received, _gate) = sink();
        let (buffer, guard) = spawn(sink);
        std::thread::scope(|s| {
            for t in 0..4 {
                let buffer = buffer.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        log(
                            &buffer,
                            &format!("thread {t} line {i:05} {}\n", "x".repeat(i % 97)),
                        );
                    }
                });
            }
        });
        drop(guard);
        let text = everything(&received);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8_000);
        for t in 0..4 {
            let mine: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|rest| {
                    let (i, pad) = rest.split_once(' ').unwrap_or((rest, ""));
                    let i: usize = i.parse().unwrap();
                    assert_eq!(pad, "x".repeat(i % 97), "line {i} of thread {t} was cut");
                    i
                })
                .collect();
            assert_eq!(mine, (0..2_000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn lines_are_written_without_waiting_for_exit_and_gathered_into_few_writes() {
        let (sink, received, _gate) = sink();
        let (buffer, _guard) = spawn(sink);
        for i in 0..100 {
            log(&buffer, &format!("line {i}\n"));
        }
        let first = received
            .recv_timeout(Duration::from_secs(10))
            .expect("written while the process runs");
        let mut text = String::from_utf8(first).unwrap();
        let mut writes = 1;
        while text.lines().count() < 100 {
            let more = received.recv_timeout(Duration::from_secs(10)).unwrap();
            text.push_str(std::str::from_utf8(&more).unwrap());
            writes += 1;
        }
        assert!(text.starts_with("line 0\nline 1\n"), "{text}");
        // Logged in a burst, they go out in a few writes, not one each.
        assert!(writes < 10, "{writes} writes for 100 lines");
    }

    #[test]
    fn a_stuck_stdout_never_blocks_a_logger_and_what_it_drops_is_counted() {
        let (sink, received, gate) = sink();
        let held = gate.lock().unwrap();
        let (buffer, guard) = spawn(sink);
        // The writer thread takes the first line and blocks on the stuck sink; the rest fill
        // the buffer and then overflow it.
        log(&buffer, "first\n");
        std::thread::sleep(FLUSH_EVERY * 5);
        let line = "y".repeat(1023) + "\n";
        let fits = CAPACITY / line.len();
        for _ in 0..fits + 500 {
            log(&buffer, &line);
        }
        drop(held);
        drop(guard);
        let text = everything(&received);
        let kept = text.lines().filter(|l| l.starts_with('y')).count();
        let notice = text
            .lines()
            .find(|l| l.contains("log lines dropped"))
            .expect("a line says lines were dropped");
        let notice: serde_json::Value = serde_json::from_str(notice).unwrap();
        let dropped = notice["fields"]["dropped"].as_u64().unwrap() as usize;
        // Every line is either written or counted; at most what fits was kept.
        assert_eq!(kept + dropped, fits + 500);
        assert!(dropped >= 500, "{dropped} dropped");
        assert!(text.contains("first\n"));
        // The notice follows the lines logged before the drops.
        assert!(text.rfind("yyyy") < text.find("log lines dropped"));
    }

    #[test]
    fn a_line_larger_than_the_buffer_is_dropped_and_said_so_at_once() {
        let (sink, received, _gate) = sink();
        let (buffer, _guard) = spawn(sink);
        log(&buffer, &("z".repeat(CAPACITY) + "\n"));
        // No other line follows: the drop alone gets the notice out.
        let write = received
            .recv_timeout(Duration::from_secs(10))
            .expect("the notice is written while the process runs");
        let text = String::from_utf8(write).unwrap();
        assert!(text.contains(r#""dropped":1"#), "{text}");
        assert!(!text.contains('z'));
    }
}
