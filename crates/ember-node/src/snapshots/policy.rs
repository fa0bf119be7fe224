//! Which snapshot leaves the cache when it is over its disk budget: one small trait, one file
//! per policy ([`lru`], [`gdsf`]), chosen per node by `snapshot_eviction`.
//!
//! The store tells a policy what enters, what is used and what leaves for other reasons; the
//! policy only orders. The snapshot just added is never its own victim (it was just paid
//! for): [`EvictionPolicy::evict`] is told to spare it.

mod gdsf;
mod lru;

pub use gdsf::Gdsf;
pub use lru::Lru;

use crate::config::Eviction;

pub trait EvictionPolicy: Send {
    /// A snapshot entered the cache (taken now, or found on disk at open), with its size on
    /// disk and what its init cost when it was taken.
    fn insert(&mut self, id: &str, bytes: u64, init_ms: f64);
    /// A start was served from it.
    fn touch(&mut self, id: &str);
    /// It left the cache for a reason of the store's (removed, replaced, stale, failing).
    fn remove(&mut self, id: &str);
    /// Chooses the next snapshot to evict, other than `spare`, and forgets it.
    fn evict(&mut self, spare: &str) -> Option<String>;
}

/// The policy `eviction` names.
pub fn new(eviction: Eviction) -> Box<dyn EvictionPolicy> {
    match eviction {
        Eviction::Lru => Box::new(Lru::default()),
        Eviction::Gdsf => Box::new(Gdsf::default()),
    }
}
