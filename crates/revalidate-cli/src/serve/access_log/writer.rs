//! Where lines go: each worker thread formats its lines into a batch of its own,
//! and a thread of the logger's moves the batches to the sink every
//! [`FLUSH_EVERY`].
//!
//! Written here rather than with `tracing_appender::non_blocking`, whose channel
//! hands each line to the writer thread and wakes it: measured, a fifth of a
//! hit's cost at 150,000 lines a second, where a batch appended under a lock that
//! only the writer also takes (every 10 ms) costs a few percent.
//!
//! ```no_run
//! # use revalidate_cli::serve::{AccessLogger, LogFormat};
//! let (logger, guard) = AccessLogger::new(std::io::stderr(), LogFormat::Text);
//! // … serve, with `AccessLogLayer::new(Some(logger))` …
//! drop(guard); // writes the last lines
//! ```

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::LogFormat;
use super::line::{Line, LineWriter};

/// Where access lines go, and how they are written. Copied freely: it is a
/// reference to state that lives as long as the process.
#[derive(Clone, Copy)]
pub struct AccessLogger {
    /// Leaked once per logger (one per process, a few in tests), so that a
    /// request holds it without touching a reference count that every core shares.
    shared: &'static Batches,
}

impl std::fmt::Debug for AccessLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogger")
            .field("format", &self.shared.format)
            .finish_non_exhaustive()
    }
}

/// How often the writer thread moves the batches to the sink. Often, so that a
/// line reaches the sink soon and each turn is short.
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// The most a thread's batch holds before new lines are dropped (and counted):
/// a sink slower than the traffic loses lines, it never stalls a worker.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One thread's lines, waiting for the writer thread.
type Batch = Arc<Mutex<Vec<u8>>>;

/// The batches of every thread that wrote a line, and what was dropped.
#[derive(Debug)]
struct Batches {
    all: Mutex<Vec<Batch>>,
    dropped: AtomicU64,
    stop: AtomicBool,
    format: LogFormat,
    clock: Anchor,
    /// How far the wall clock has drifted from `clock`, in microseconds, as the
    /// writer thread last measured it.
    drift: AtomicI64,
}

/// The wall clock as the TSC (quanta) tells it: a worker turns the instant it
/// already took into a time with a subtraction, where asking the system for the
/// time costs a call on every request. The writer thread measures what the two
/// clocks drift apart (NTP, a clock set by hand) on each turn, and the lines
/// written after add it.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    wall: u64,
    instant: quanta::Instant,
}

impl Anchor {
    fn now() -> Self {
        Self {
            wall: micros_since_epoch(std::time::SystemTime::now()),
            instant: quanta::Instant::now(),
        }
    }

    /// `at`, in microseconds since the Unix epoch, as this anchor tells it.
    fn micros(&self, at: quanta::Instant) -> u64 {
        let since = at.saturating_duration_since(self.instant);
        self.wall
            .saturating_add(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }

    /// How far the wall clock is now ahead of what this anchor tells.
    fn drift(&self) -> i64 {
        let told = self.micros(quanta::Instant::now());
        let wall = micros_since_epoch(std::time::SystemTime::now());
        i64::try_from(i128::from(wall) - i128::from(told)).unwrap_or(0)
    }
}

fn micros_since_epoch(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Batches {
    /// Moves every batch's lines to `sink`, and measures the clocks' drift for
    /// the lines to come.
    fn drain(&self, sink: &mut impl std::io::Write, spare: &mut Vec<u8>) {
        self.drift.store(self.clock.drift(), Ordering::Relaxed);
        let all: Vec<Batch> = lock(&self.all).clone();
        for batch in all {
            // The worker carries on with the spare's capacity: no batch is
            // allocated again once traffic is steady.
            std::mem::swap(&mut *lock(&batch), spare);
            let _ = sink.write_all(spare);
            spare.clear();
        }
        let _ = sink.flush();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes what is left when dropped, and stops the writer thread.
#[derive(Debug)]
pub struct FlushOnDrop {
    shared: Option<&'static Batches>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Told by the writer thread when its last lines are written.
    flushed: std::sync::mpsc::Receiver<()>,
    /// The longest the drop waits for that.
    wait: Duration,
}

/// The longest the process's exit waits for the sink to take the last lines: a
/// sink that takes nothing (a pipe nobody reads) must not keep it from ending.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(5);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.stop.store(true, Ordering::Release);
        }
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            match self.flushed.recv_timeout(self.wait) {
                // Written, or the thread ended without a word (it panicked).
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = thread.join();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                    wait = ?self.wait,
                    "the access log's sink did not take the last lines in time; they are lost"
                ),
            }
        }
    }
}

/// A thread's batch, with what its lines' formatting remembers from line to
/// line.
struct Mine {
    /// The logger the batch belongs to: several may live in one process (tests).
    owner: usize,
    batch: Batch,
    writer: LineWriter,
}

impl AccessLogger {
    /// A logger writing to `sink` from a thread of its own; keep the guard for as
    /// long as lines may be written (dropping it writes the last ones).
    pub fn new<W: std::io::Write + Send + 'static>(
        sink: W,
        format: LogFormat,
    ) -> (Self, FlushOnDrop) {
        let shared: &'static Batches = Box::leak(Box::new(Batches {
            all: Mutex::default(),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            format,
            clock: Anchor::now(),
            drift: AtomicI64::new(0),
        }));
        let (done, flushed) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("revalidate-access-log".into())
            .spawn(move || {
                let mut sink = std::io::BufWriter::with_capacity(64 * 1024, sink);
                let mut spare = Vec::with_capacity(64 * 1024);
                while !shared.stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    shared.drain(&mut sink, &mut spare);
                }
                shared.drain(&mut sink, &mut spare);
                let _ = done.send(());
            })
            .ok();
        let guard = FlushOnDrop {
            shared: Some(shared),
            thread,
            flushed,
            wait: FLUSH_ON_EXIT,
        };
        (Self { shared }, guard)
    }

    /// Lines dropped because the sink could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// `at`, in microseconds since the Unix epoch (before the drift correction).
    pub(super) fn micros(self, at: quanta::Instant) -> u64 {
        self.shared.clock.micros(at)
    }

    /// Formats `line` into this thread's batch. The worker formats it and the
    /// writer thread only moves bytes, so that the formatting spreads over the
    /// workers' cores rather than queueing on one thread.
    pub(super) fn append(self, line: &Line<'_>) {
        thread_local! {
            static MINE: RefCell<Option<Mine>> = const { RefCell::new(None) };
        }
        let owner = std::ptr::from_ref(self.shared) as usize;
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            let mine = match &mut *mine {
                Some(mine) if mine.owner == owner => mine,
                slot => {
                    let batch = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
                    lock(&self.shared.all).push(batch.clone());
                    slot.insert(Mine {
                        owner,
                        batch,
                        writer: LineWriter::default(),
                    })
                }
            };
            mine.writer
                .set_drift(self.shared.drift.load(Ordering::Relaxed));
            let mut batch = lock(&mine.batch);
            let start = batch.len();
            mine.writer.write(line, self.shared.format, &mut batch);
            batch.push(b'\n');
            if batch.len() > MAX_BATCH_BYTES {
                batch.truncate(start);
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::access_log::line::{Id, RequestLine};
    use std::sync::Condvar;

    /// A sink that takes nothing until it is opened, as a stalled disk.
    #[derive(Clone, Default)]
    struct Stalled {
        open: Arc<(Mutex<bool>, Condvar)>,
        taken: Arc<Mutex<Vec<u8>>>,
    }

    impl std::io::Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.open;
            let mut open = lock(open);
            while !*open {
                open = opened.wait(open).unwrap();
            }
            lock(&self.taken).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A 200 for `target`, with id 1 and the other fields empty.
    fn line(target: &[u8]) -> Line<'_> {
        Line {
            time: 0,
            status: 200,
            request: Some(RequestLine {
                method: b"GET",
                target,
                version: http::Version::HTTP_11,
            }),
            bytes: Some(1),
            upstream: None,
            total: Some(Duration::ZERO),
            client: None,
            cache_status: None,
            id: Id::Made(1),
            user_agent: None,
        }
    }

    #[test]
    fn a_stalled_sink_drops_whole_lines_and_counts_them() {
        let sink = Stalled::default();
        let (logger, guard) = AccessLogger::new(sink.clone(), LogFormat::Text);
        // Each line holds 64 KiB: a batch holds 15, the writer thread takes at
        // most one batch before the sink stalls it, so of 40 at least 10 drop.
        let target = vec![b'a'; 64 * 1024];
        let line = line(&target);
        for _ in 0..40 {
            logger.append(&line);
        }
        let dropped = logger.dropped();
        assert!((10..40).contains(&dropped), "{dropped} dropped");
        *lock(&sink.open.0) = true;
        sink.open.1.notify_all();
        drop(guard);
        let taken = lock(&sink.taken);
        let lines: Vec<&[u8]> = taken.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(
            lines.len() as u64 + dropped,
            40,
            "every line written or counted"
        );
        for written in lines {
            // Whole lines only: each one from its start to its end.
            assert!(written.starts_with(b"- [1970-01-01T"), "{written:?}");
            assert_eq!(written.len(), 64 * 1024 + 108);
            assert!(written.ends_with(b" id=0000000000000001 ua=\"-\"\n"));
        }
    }

    /// A sink that never takes a byte does not keep the process from ending.
    #[test]
    fn the_last_flush_waits_for_a_stalled_sink_only_so_long() {
        let (logger, mut guard) = AccessLogger::new(Stalled::default(), LogFormat::Text);
        guard.wait = Duration::from_millis(200);
        logger.append(&line(b"/"));
        let started = std::time::Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_line_is_timed_by_the_wall_clock_the_writer_reads() {
        let anchor = Anchor::now();
        let wall = micros_since_epoch(std::time::SystemTime::now());
        let told = anchor.micros(quanta::Instant::now());
        assert!(told.abs_diff(wall) < 1_000_000, "{told} vs {wall}");
        // An anchor an hour behind the wall clock (as after the clock was set
        // forward) measures a drift of an hour, which the lines add.
        let behind = Anchor {
            wall: anchor.wall - 3_600_000_000,
            ..anchor
        };
        let drift = behind.drift();
        assert!(drift.abs_diff(3_600_000_000) < 1_000_000, "{drift}");
    }
}
