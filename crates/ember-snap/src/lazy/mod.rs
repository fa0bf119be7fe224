//! Lazy restore: pages reach the restored process on demand, from a page server thread
//! holding the process's userfaultfd.
//!
//! ```text
//!  restore ── registers the anonymous VMAs (missing mode, with fork/remap/remove/unmap
//!             events), installs the pages the kernel itself reads (arguments, environment,
//!             glibc's thread descriptor), starts the server, finishes the restore
//!  server  ── poll(uffd, pidfd):
//!               page fault  -> the image page now at that address (one request to the
//!                              source), or zeros if the image has none there
//!               remap       -> pending pages move with the memory
//!               unmap/remove-> pending pages there are dropped (they must read as zeros)
//!               fork        -> a server for the child, with a copy of what is pending
//!             bulk: after the first fault, the rest in 1 MiB batches between faults
//!             ends when nothing is pending (ranges unregistered) or the process is gone
//! ```
//!
//! A page that fails its check at the source is never installed: the faulting process is
//! killed and the server ends with an error naming the image and the source.

pub mod layer;
pub mod pending;
pub mod pool;
pub mod remote;
mod server;
pub mod source;

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

pub use layer::{ChunkFetch, LayerFile, LayerSource};
pub use pool::PoolSource;
pub use remote::{ImageLookup, RemoteSource};
pub use server::{PageServer, PendingPages, ServeError};
pub(crate) use server::{ServerConfig, Victim, spawn};
pub use source::FileSource;

use crate::image::{LoadedImage, PAGE};

/// How pages reach a restored process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Every page before the process resumes.
    #[default]
    Eager,
    /// Each page when the process first touches it.
    Lazy,
    /// The first fault at once, then everything else in large batches in the background,
    /// faults first; the server ends when all is in.
    Bulk,
    /// The image's recorded working set (the pages the first request after a restore
    /// touched: REAP) in one batch before the process resumes, the rest on fault.
    Prefetch,
    /// The image's pages mapped copy-on-write from a sealed memfd: instances share every
    /// page they have not written. See docs/snap.md for what it changes.
    Mapped,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Policy, String> {
        match s {
            "eager" => Ok(Policy::Eager),
            "lazy" => Ok(Policy::Lazy),
            "bulk" => Ok(Policy::Bulk),
            "prefetch" => Ok(Policy::Prefetch),
            "mapped" => Ok(Policy::Mapped),
            _ => Err(format!(
                "unknown restore policy {s:?}: use eager, lazy, bulk, prefetch or mapped"
            )),
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Policy::Eager => "eager",
            Policy::Lazy => "lazy",
            Policy::Bulk => "bulk",
            Policy::Prefetch => "prefetch",
            Policy::Mapped => "mapped",
        })
    }
}

/// Why a page could not be had.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {why}")]
pub struct SourceError {
    pub source_name: String,
    pub why: String,
}

/// Where a page server gets pages: `pages` stored pages from page-file index `first`, each
/// checked against the image's hashes before it is returned.
pub trait PageSource: Send + Sync {
    /// For messages: "memory", "file /x/pages", "tcp 10.0.0.2:7070".
    fn describe(&self) -> String;
    fn pages(&self, first: u64, pages: u64) -> Result<Cow<'_, [u8]>, SourceError>;
    /// A hint: these page-file ranges `(first, pages)` are about to be asked for, one by one.
    /// A remote source fetches what it lacks in a few batched requests instead of one round
    /// trip each. Errors show up at the `pages` call that needs the data.
    fn warm(&self, _ranges: &[(u64, u64)]) {}
}

/// The node's in-memory copy: verified once at load, read-only since.
impl PageSource for LoadedImage {
    fn describe(&self) -> String {
        format!("memory copy of {}", self.dir.display())
    }

    fn pages(&self, first: u64, pages: u64) -> Result<Cow<'_, [u8]>, SourceError> {
        if !self.is_loaded() {
            return Err(SourceError {
                source_name: self.describe(),
                why: "the image was opened without its pages".into(),
            });
        }
        let (a, b) = ((first * PAGE) as usize, ((first + pages) * PAGE) as usize);
        self.page_data()
            .get(a..b)
            .map(Cow::Borrowed)
            .ok_or_else(|| SourceError {
                source_name: self.describe(),
                why: format!("pages {first}..{} are outside the image", first + pages),
            })
    }
}

/// Counters of one restored process (and the children it forked), shared with its server.
#[derive(Debug, Default)]
pub struct Counters {
    pub faults: AtomicU64,
    pub zero_faults: AtomicU64,
    pub pages_installed: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Nanoseconds between reading a fault and resolving it: what the process waited.
    pub blocked_ns: AtomicU64,
    pub events: AtomicU64,
    /// Page-file indices installed on a fault, in the order they were touched (the working
    /// set a prefetch restore replays).
    pub touched: std::sync::Mutex<Vec<u64>>,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LazyStats {
    pub faults: u64,
    pub zero_faults: u64,
    pub pages_installed: u64,
    pub bytes_fetched: u64,
    pub blocked_us: u64,
    pub events: u64,
}

impl Counters {
    pub fn snapshot(&self) -> LazyStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LazyStats {
            faults: g(&self.faults),
            zero_faults: g(&self.zero_faults),
            pages_installed: g(&self.pages_installed),
            bytes_fetched: g(&self.bytes_fetched),
            blocked_us: g(&self.blocked_ns) / 1000,
            events: g(&self.events),
        }
    }
}
