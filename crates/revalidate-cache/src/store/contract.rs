//! What a store is: the [`Store`] trait and the types its methods take and give.

use std::future::Future;
use std::time::SystemTime;

use crate::entry::Variants;

/// Occupancy of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Primary keys held.
    pub entries: u64,
    /// Bytes charged (body + headers + per-entry overhead).
    pub bytes: u64,
    /// Entries evicted to stay within the budget.
    pub evictions: u64,
}

/// What a store tells of a key without waiting (see [`Store::get_now`]).
#[derive(Debug, Clone)]
pub enum LookupNow {
    /// It cannot tell without waiting: ask [`Store::get`].
    Unknown,
    /// Nothing is stored under the key.
    Missing,
    /// What is stored under the key.
    Found(Variants),
}

impl From<Option<Variants>> for LookupNow {
    fn from(variants: Option<Variants>) -> Self {
        variants.map_or(Self::Missing, Self::Found)
    }
}

/// When an upstream fetch began, as a store tells it (see [`Store::fetch_mark`]).
///
/// A store shared by several instances gives a mark from the sequence of its
/// purges, and stores a response only if no purge happened after its mark: a
/// response fetched before a purge is then never stored after it, on any
/// instance. A store of one process has the cache's own guard and needs none
/// ([`FetchMark::NONE`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchMark {
    position: Option<u64>,
    /// A local tier's own count of the purges it applied, beside a shared one.
    local: Option<u64>,
}

impl FetchMark {
    /// No mark: the store keeps no sequence of purges, or could not read it.
    pub const NONE: Self = Self {
        position: None,
        local: None,
    };

    /// The mark at position `purges` of the store's sequence of purges.
    pub const fn at(purges: u64) -> Self {
        Self {
            position: Some(purges),
            local: None,
        }
    }

    /// Its position, if any.
    pub const fn position(self) -> Option<u64> {
        self.position
    }

    /// The same mark, with a local tier's count of applied purges.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) const fn with_local(self, applied: u64) -> Self {
        Self {
            local: Some(applied),
            ..self
        }
    }

    /// The local tier's count, if taken.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) const fn local(self) -> Option<u64> {
        self.local
    }
}

/// A place to keep responses by primary key.
///
/// Purges are part of the trait so that a shared tier can carry them to every
/// instance (an invalidation bus) and index tags where the entries live.
pub trait Store: Clone + Send + Sync + 'static {
    /// The variants stored under `primary`.
    fn get(&self, primary: &str) -> impl Future<Output = Option<Variants>> + Send;
    /// The variants stored under `primary`, when the store can tell without
    /// waiting (an in-process tier); by default it cannot ([`LookupNow::Unknown`]:
    /// the cache then asks [`Store::get`]). The cache answers fresh hits found
    /// this way before it makes a future for the request.
    fn get_now(&self, primary: &str) -> LookupNow {
        let _ = primary;
        LookupNow::Unknown
    }
    /// A mark taken before an upstream fetch for `primary` starts, given back to
    /// [`Store::put`] with what it fetched. By default [`FetchMark::NONE`].
    fn fetch_mark(&self, primary: &str) -> impl Future<Output = FetchMark> + Send {
        let _ = primary;
        std::future::ready(FetchMark::NONE)
    }
    /// Stores (or replaces) the variants of `primary`, fetched after `since`;
    /// returns whether they are kept (a store may refuse what it cannot hold, or
    /// what a purge after `since` may have named).
    fn put(
        &self,
        primary: String,
        variants: Variants,
        since: FetchMark,
    ) -> impl Future<Output = bool> + Send;
    /// Removes or (soft) marks stale every entry the purge names; returns how many
    /// primary keys it touched. Costs time in the number of entries named.
    fn purge(&self, purge: &Purge) -> impl Future<Output = usize> + Send;
    /// Carries a purge that [`Store::purge`] applied here to wherever else it
    /// must reach (other instances), once the cache no longer holds the lock it
    /// purges under; returns how many entries it touched there. By default, 0.
    fn spread(&self, purge: &Purge) -> impl Future<Output = usize> + Send {
        let _ = purge;
        std::future::ready(0)
    }
    /// Current occupancy.
    fn usage(&self) -> StoreUsage;
    /// Up to `limit` of the stored responses `filter` selects, as they are at
    /// `now`, copied out in one short snapshot; `None` when the store cannot
    /// list what it holds (by default).
    fn entries(&self, filter: &EntryFilter, limit: usize, now: SystemTime) -> Option<EntryListing> {
        let _ = (filter, limit, now);
        None
    }
}

/// Which stored responses [`Store::entries`] lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Those whose normalized target (path and query) starts with it.
    pub prefix: Option<String>,
    /// Those with this tag.
    pub tag: Option<String>,
}

/// One stored response, as [`Store::entries`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct EntrySummary {
    /// The primary key (see [`Decision::Keyed`](crate::Decision::Keyed)).
    pub key: String,
    /// The normalized target: what URL and prefix purges name.
    pub path: String,
    /// The stored status code.
    pub status: u16,
    /// Body bytes.
    pub size: u64,
    /// Current age, in seconds (RFC 9111 §4.2.3).
    pub age: u64,
    /// Seconds of freshness left; zero or negative (how long past it) when it
    /// must be revalidated (stale, soft-purged or `no-cache`).
    pub ttl: i64,
    /// Invalidation tags.
    pub tags: Vec<String>,
    /// Its `ETag`.
    pub etag: Option<String>,
    /// Its `Last-Modified`.
    pub last_modified: Option<String>,
    /// Whether a soft purge marked it stale.
    pub soft_purged: bool,
    /// For a variant of a response with `Vary`: the request's value of each
    /// field it varies on (`null`: absent; `(redacted)` for a credential).
    pub vary: std::collections::BTreeMap<String, Option<String>>,
}

/// What [`Store::entries`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EntryListing {
    /// The responses, ordered by target then key (with a tag alone, when
    /// truncated, some of those that carry it).
    pub entries: Vec<EntrySummary>,
    /// Whether more responses matched than were listed.
    pub truncated: bool,
}

/// What to invalidate: the body of the admin API's `POST /purge` too.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Purge {
    /// Exact normalized paths (with query), every variant and scope of each.
    pub urls: Vec<String>,
    /// Path prefixes.
    pub prefixes: Vec<String>,
    /// Tags (from `Surrogate-Key`, `Cache-Tag` or route config).
    pub tags: Vec<String>,
    /// Mark stale (revalidate on next use) instead of removing.
    pub soft: bool,
}

impl Purge {
    /// A hard purge of exact URLs.
    pub fn urls<I: IntoIterator<Item = S>, S: Into<String>>(urls: I) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A hard purge of prefixes.
    pub fn prefixes<I: IntoIterator<Item = S>, S: Into<String>>(prefixes: I) -> Self {
        Self {
            prefixes: prefixes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A hard purge of tags.
    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(tags: I) -> Self {
        Self {
            tags: tags.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// The same purge, soft.
    pub fn soft(mut self) -> Self {
        self.soft = true;
        self
    }

    /// Whether it names nothing.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty() && self.prefixes.is_empty() && self.tags.is_empty()
    }

    /// Whether it names an entry with this path and these tags.
    pub fn matches(&self, path: &str, tags: &[String]) -> bool {
        self.urls.iter().any(|u| u == path)
            || self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
            || self.tags.iter().any(|t| tags.contains(t))
    }
}
