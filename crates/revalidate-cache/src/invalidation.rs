//! Race-safe invalidation: a response whose fetch began before a purge that names
//! it is never stored after that purge.
//!
//! Every upstream fetch takes a ticket from a sequence; every purge is recorded with
//! a later number. Storing checks the records newer than the fetch's ticket, under
//! the same lock that purges are recorded under, so the check and the store cannot
//! interleave with a purge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::store::Purge;

/// A fetch's place in the sequence of fetches and purges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket(u64);

#[derive(Debug)]
struct Record {
    seq: u64,
    at: Instant,
    purge: Purge,
}

/// Recent purges, kept for as long as a fetch may take.
#[derive(Debug)]
pub(crate) struct InvalidationLog {
    seq: AtomicU64,
    /// How long a record is kept: the longest a fetch may run.
    horizon: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    records: Vec<Record>,
    /// Records up to this sequence number were dropped; older tickets are refused.
    forgotten_before: u64,
}

/// Proof that the log is locked: hold it while checking and storing.
pub(crate) struct StoreGuard<'a> {
    state: tokio::sync::MutexGuard<'a, LogState>,
}

impl StoreGuard<'_> {
    /// Whether a purge after `ticket` names an entry with this path and these tags.
    pub(crate) fn invalidated_since(&self, ticket: Ticket, path: &str, tags: &[String]) -> bool {
        ticket.0 < self.state.forgotten_before
            || self
                .state
                .records
                .iter()
                .any(|r| r.seq > ticket.0 && r.purge.matches(path, tags))
    }
}

impl InvalidationLog {
    /// A log that keeps records for `horizon` (at least the upstream timeout).
    pub(crate) fn new(horizon: Duration) -> Self {
        Self {
            seq: AtomicU64::new(1),
            horizon,
            state: Mutex::new(LogState::default()),
        }
    }

    /// A ticket for a fetch that starts now.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.seq.fetch_add(1, Ordering::SeqCst))
    }

    /// Locks the log for a check-and-store.
    pub(crate) async fn lock(&self) -> StoreGuard<'_> {
        StoreGuard {
            state: self.state.lock().await,
        }
    }

    /// Records a purge and returns the lock: the caller applies the purge to the
    /// store while holding it, so no store can interleave with the purge itself.
    pub(crate) async fn record(&self, purge: &Purge) -> StoreGuard<'_> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        let horizon = self.horizon;
        let mut forgotten = state.forgotten_before;
        state.records.retain(|r| {
            let keep = now.duration_since(r.at) < horizon;
            if !keep {
                forgotten = forgotten.max(r.seq + 1);
            }
            keep
        });
        state.forgotten_before = forgotten;
        state.records.push(Record {
            seq,
            at: now,
            purge: purge.clone(),
        });
        StoreGuard { state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_purge_after_the_ticket_blocks_the_store() {
        let log = InvalidationLog::new(Duration::from_secs(60));
        let before = log.ticket();
        drop(log.record(&Purge::tags(["t"])).await);
        let after = log.ticket();
        let guard = log.lock().await;
        assert!(guard.invalidated_since(before, "/x", &["t".into()]));
        assert!(!guard.invalidated_since(before, "/x", &["u".into()]));
        assert!(!guard.invalidated_since(after, "/x", &["t".into()]));
    }

    #[tokio::test]
    async fn forgotten_records_refuse_old_tickets() {
        let log = InvalidationLog::new(Duration::ZERO);
        let old = log.ticket();
        drop(log.record(&Purge::urls(["/a"])).await);
        drop(log.record(&Purge::urls(["/b"])).await); // drops the first record
        let guard = log.lock().await;
        assert!(
            guard.invalidated_since(old, "/unrelated", &[]),
            "too old to be sure: not stored"
        );
    }
}
