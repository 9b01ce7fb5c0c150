//! Where stored responses live: the [`Store`] trait, and [`MemoryStore`], the
//! default tier. A shared tier (Redis) implements the same trait.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use revalidate_cache::{MemoryStore, Purge, Store};
//!
//! let store = MemoryStore::new(64 * 1024 * 1024);
//! assert!(store.get("/users/1").await.is_none());
//! let purged = store.purge(&Purge::tags(["user:1"])).await;
//! assert_eq!(purged, 0);
//! # });
//! ```

mod contract;
mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use crate::entry::Variants;
pub use contract::{
    EntryFilter, EntryListing, EntrySummary, FetchMark, LookupNow, Purge, Store, StoreUsage,
};
pub use memory::MemoryStore;
pub(crate) use memory::REDACTED;
#[cfg(feature = "redis")]
pub use redis::{
    BusStatus, RedisConfig, RedisError, RedisStore, RedisTarget, Tiered, Versions, version_tag,
};
