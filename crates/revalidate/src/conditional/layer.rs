use std::sync::Arc;

use http::HeaderName;
use tower_layer::Layer;

use super::service::{Conditional, Config};
use super::source::{ContentHash, ValidatorSource};
use crate::cache_control::CacheControl;
use crate::policy::CachePolicy;

/// The default bound on a response body buffered to compute its entity tag.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 1024 * 1024;

/// Applies [`Conditional`] to a service: entity tags, 304/412/428 and per-route
/// `Cache-Control`/`Vary`. See the [module docs](crate::conditional).
#[derive(Debug, Clone)]
pub struct ConditionalLayer<V = ContentHash> {
    config: Config,
    source: V,
}

impl Default for ConditionalLayer<ContentHash> {
    fn default() -> Self {
        Self::new()
    }
}

impl ConditionalLayer<ContentHash> {
    /// A layer that hashes response bodies into strong entity tags.
    pub fn new() -> Self {
        Self {
            config: Config {
                policy: CachePolicy::default(),
                weak_etags: false,
                max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
                require_if_match: false,
                ignore_preconditions_when_missing: false,
            },
            source: ContentHash,
        }
    }
}

impl<V: ValidatorSource> ConditionalLayer<V> {
    /// Looks validators up before the handler runs instead of hashing bodies.
    pub fn validators<W: ValidatorSource>(self, source: W) -> ConditionalLayer<W> {
        ConditionalLayer {
            config: self.config,
            source,
        }
    }

    /// Sets the route's whole caching policy.
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Sets `Cache-Control` on responses whose handler set none.
    pub fn cache_control(mut self, cache_control: CacheControl) -> Self {
        self.config.policy.set_cache_control(cache_control);
        self
    }

    /// Adds a field to `Vary`.
    pub fn vary(mut self, name: HeaderName) -> Self {
        self.config.policy = self.config.policy.vary(name);
        self
    }

    /// Scopes the route to the `Authorization` credential: tags differ per caller,
    /// responses are `private` and vary on `Authorization`.
    pub fn user_scoped(mut self) -> Self {
        self.config.policy = self.config.policy.user_scoped();
        self
    }

    /// Scopes the route to the credential in `header`.
    pub fn user_scoped_by(mut self, header: HeaderName) -> Self {
        self.config.policy = self.config.policy.user_scoped_by(header);
        self
    }

    /// Emits weak entity tags (`W/"…"`) for bodies hashed by this layer.
    pub fn weak_etags(mut self) -> Self {
        self.config.weak_etags = true;
        self
    }

    /// Bounds the body buffered for hashing; larger or unsized (streaming) bodies
    /// pass through unbuffered and untagged.
    pub fn max_buffered_bytes(mut self, limit: usize) -> Self {
        self.config.max_buffered_bytes = limit;
        self
    }

    /// Ignores preconditions of every method when the validator lookup finds no
    /// resource, leaving the handler to answer (typically 404).
    ///
    /// By default an unsafe method on a missing resource is evaluated as one that may
    /// create it (`PUT` as create): `If-Match` fails with 412 and `If-None-Match: *`
    /// passes. On routes where writes never create, RFC 9110 §13.2.1 asks instead that
    /// preconditions be ignored, because the response without them would be a 404.
    pub fn ignore_preconditions_when_missing(mut self) -> Self {
        self.config.ignore_preconditions_when_missing = true;
        self
    }

    /// Answers 428 Precondition Required (RFC 6585) to unsafe requests without
    /// `If-Match`, so that no write can lose an update.
    ///
    /// With [`validators`](Self::validators) the layer also answers a stale
    /// `If-Match` with 412 before the handler runs. On content-hashed routes it can
    /// only require the field: the handler must compare it (atomically, as the demo's
    /// `UPDATE … WHERE version = $n` does).
    pub fn require_if_match(mut self) -> Self {
        self.config.require_if_match = true;
        self
    }
}

impl<S, V: ValidatorSource> Layer<S> for ConditionalLayer<V> {
    type Service = Conditional<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        Conditional::new(inner, Arc::new(self.config.clone()), self.source.clone())
    }
}
