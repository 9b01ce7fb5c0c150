//! How a busy worker shares its CPU: every [`REQUESTS_BEFORE_YIELD`] requests, it
//! yields the CPU to whatever else is runnable on it.
//!
//! A worker with work always ready (a few dozen busy keep-alive connections) never
//! blocks, so when another process wants the same core (the app behind the proxy,
//! a load generator, a build) the kernel switches between them only at scheduler
//! ticks: 4 ms at `HZ=250`. Every connection of the worker then waits a whole
//! tick, and the latency tail is a multiple of the tick. Yielding after a short
//! run hands the core over at sub-millisecond intervals instead. When nothing
//! else is runnable, the yield returns at once: one `sched_yield` per 32 requests.
//!
//! The yield moves no CPU time between processes (the kernel's fairness is by
//! CPU time used, which a yield does not change); it changes when each one runs.
//!
//! On the proxy benchmark (2 cores shared with wrk), this keeps the p99 of cache
//! hits near a millisecond rather than two kernel ticks, for the same requests per
//! second; 32 requests is where a longer run starts to lengthen the tail and a
//! shorter one stops shortening it. The count does not restart when a worker waits
//! for work: tokio's park hook runs whenever the worker polls for I/O, which, under
//! load, returns at once without giving up the CPU, and a count restarted there
//! would never reach its end.
//!
//! ```
//! use revalidate_cli::serve::cpu_share;
//!
//! // Each worker thread calls this as a request starts.
//! let yielded = (0..cpu_share::REQUESTS_BEFORE_YIELD).filter(|_| cpu_share::before_request());
//! assert_eq!(yielded.count(), 1);
//! ```

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests a worker serves between two yields of its CPU.
pub const REQUESTS_BEFORE_YIELD: u32 = 32;

/// Yields by every thread so far, for tests (an uncontended add per 32 requests).
static YIELDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Requests this thread started since it last yielded.
    static SINCE_YIELD: Cell<u32> = const { Cell::new(0) };
}

/// Counts a request starting on this thread; every [`REQUESTS_BEFORE_YIELD`]th
/// yields the CPU (returns whether it did).
pub fn before_request() -> bool {
    SINCE_YIELD.with(|since| {
        let started = since.get() + 1;
        if started < REQUESTS_BEFORE_YIELD {
            since.set(started);
            return false;
        }
        since.set(0);
        std::thread::yield_now();
        YIELDS.fetch_add(1, Ordering::Relaxed);
        true
    })
}

/// How many times workers have yielded since the process started.
pub fn yields() -> u64 {
    YIELDS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yields_once_per_run_of_requests() {
        std::thread::spawn(|| {
            let yielded: Vec<bool> = (0..3 * REQUESTS_BEFORE_YIELD)
                .map(|_| before_request())
                .collect();
            let at: Vec<usize> = (0..yielded.len()).filter(|&i| yielded[i]).collect();
            let every = REQUESTS_BEFORE_YIELD as usize;
            assert_eq!(at, vec![every - 1, 2 * every - 1, 3 * every - 1]);
        })
        .join()
        .unwrap();
    }
}
