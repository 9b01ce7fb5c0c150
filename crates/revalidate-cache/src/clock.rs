//! Time, injectable so that freshness, Age and stale windows are tested without sleeping.
//!
//! ```
//! use std::time::Duration;
//! use revalidate_cache::{Clock, MockClock};
//!
//! let clock = MockClock::new();
//! let t0 = clock.now();
//! clock.advance(Duration::from_secs(5));
//! assert_eq!(clock.now().duration_since(t0).unwrap(), Duration::from_secs(5));
//! ```

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// A source of the current time.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct MockClock(Arc<Mutex<SystemTime>>);

impl Default for MockClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MockClock {
    /// A clock at a fixed, whole-second instant.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().expect("clock lock") += by;
    }
}

impl Clock for MockClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().expect("clock lock")
    }
}
