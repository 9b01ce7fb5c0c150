//! Request coalescing: one upstream fetch per key, however many clients miss at once.
//!
//! Every state a waiter can observe has a name; a leader that is dropped without
//! finishing (cancelled, panicked) leaves [`Flight::Abandoned`], so no waiter hangs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::entry::StoredResponse;

/// What waiters learn about the fetch they joined.
#[derive(Debug, Clone)]
pub(crate) enum Flight {
    /// The leader's fetch is under way.
    Waiting,
    /// The leader stored (or could share) this response.
    Done(Arc<StoredResponse>),
    /// The leader asked for a range and got this part (a 206): it answers the
    /// waiters whose range it holds; the others fetch again together, once.
    Part(Arc<StoredResponse>),
    /// The response cannot be shared (private, Set-Cookie, Vary: *, an error, too
    /// large): every waiter goes upstream on its own, at once.
    NotShareable,
    /// The leader was dropped before it finished.
    Abandoned,
}

/// Coalesces fetches by key.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    flights: Mutex<HashMap<String, watch::Receiver<Flight>>>,
}

/// A caller's part in a flight.
pub(crate) enum Role<'a> {
    /// Fetch, then [`Leader::finish`].
    Leader(Leader<'a>),
    /// Wait on the receiver.
    Follower(watch::Receiver<Flight>),
}

/// The one caller that fetches for a key.
pub(crate) struct Leader<'a> {
    coalescer: &'a Coalescer,
    key: String,
    sender: watch::Sender<Flight>,
    finished: bool,
}

impl Coalescer {
    /// Joins the flight for `key`, leading it if there is none.
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut flights = self
            .flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(receiver) = flights.get(key) {
            return Role::Follower(receiver.clone());
        }
        let (sender, receiver) = watch::channel(Flight::Waiting);
        flights.insert(key.to_string(), receiver);
        Role::Leader(Leader {
            coalescer: self,
            key: key.to_string(),
            sender,
            finished: false,
        })
    }

    /// Whether a flight for `key` is under way (a background refresh skips then).
    pub(crate) fn in_flight(&self, key: &str) -> bool {
        self.flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(key)
    }

    fn remove(&self, key: &str) {
        self.flights
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(key);
    }
}

impl Leader<'_> {
    /// Ends the flight with its outcome.
    pub(crate) fn finish(mut self, outcome: Flight) {
        self.finished = true;
        self.coalescer.remove(&self.key);
        let _ = self.sender.send(outcome);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.coalescer.remove(&self.key);
            let _ = self.sender.send(Flight::Abandoned);
        }
    }
}

/// Waits for a flight to end, at most `timeout`; a timeout reads as abandoned.
pub(crate) async fn wait(
    mut receiver: watch::Receiver<Flight>,
    timeout: std::time::Duration,
) -> Flight {
    let ended = async {
        loop {
            let state = receiver.borrow_and_update().clone();
            if !matches!(state, Flight::Waiting) {
                return state;
            }
            if receiver.changed().await.is_err() {
                // The sender is gone without a final word.
                return match receiver.borrow().clone() {
                    Flight::Waiting => Flight::Abandoned,
                    other => other,
                };
            }
        }
    };
    tokio::time::timeout(timeout, ended)
        .await
        .unwrap_or(Flight::Abandoned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let coalescer = Coalescer::default();
        let Role::Leader(leader) = coalescer.join("k") else {
            panic!("first caller leads")
        };
        let Role::Follower(rx) = coalescer.join("k") else {
            panic!("second caller follows")
        };
        let waiter = tokio::spawn(wait(rx, Duration::from_secs(5)));
        drop(leader);
        assert!(matches!(waiter.await.unwrap(), Flight::Abandoned));
        assert!(
            matches!(coalescer.join("k"), Role::Leader(_)),
            "a new flight can start"
        );
    }

    #[tokio::test]
    async fn followers_see_not_shareable_at_once() {
        let coalescer = Coalescer::default();
        let Role::Leader(leader) = coalescer.join("k") else {
            panic!()
        };
        let followers: Vec<_> = (0..10)
            .map(|_| match coalescer.join("k") {
                Role::Follower(rx) => tokio::spawn(wait(rx, Duration::from_secs(5))),
                Role::Leader(_) => panic!("only one leader"),
            })
            .collect();
        leader.finish(Flight::NotShareable);
        for f in followers {
            assert!(matches!(f.await.unwrap(), Flight::NotShareable));
        }
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let coalescer = Coalescer::default();
        let Role::Leader(_leader) = coalescer.join("k") else {
            panic!()
        };
        let Role::Follower(rx) = coalescer.join("k") else {
            panic!()
        };
        let started = std::time::Instant::now();
        assert!(matches!(
            wait(rx, Duration::from_millis(50)).await,
            Flight::Abandoned
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
