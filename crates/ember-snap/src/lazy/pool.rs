//! An image's pages from wherever copies of it are, for a node that has none of its own
//! (WarmSwap's remote pool): several places, tried in order (other nodes' page servers
//! holding it in memory, then the snapshot store), each chunk checked against the image's
//! own metadata before any page of it is returned, then kept for every later request.
//!
//! ```text
//! pages(first, n) -> the chunks they need, kept? else fetched in one call from the first
//!     place; an error, a short answer or a chunk that fails its hash: the same chunks from
//!     the next place (each tried once per call) -> the pages
//! ```
//!
//! A place that gives a bad chunk is no better than one that is down: what it gave is
//! dropped and the next is asked. Only when every place fails is the call an error (the
//! page server then kills the process that needed the page).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::source::ChunkCache;
use super::{ChunkFetch, PageSource, SourceError};
use crate::image::Meta;
use crate::image::format::{CHUNK_PAGES, chunk_ok};
use crate::image::pack::chunk_bytes;

/// A whole image's pages from a list of places.
pub struct PoolSource {
    meta: Meta,
    places: Vec<Arc<dyn ChunkFetch>>,
    /// Chunks each place gave (checked), in `places` order.
    given: Vec<AtomicU64>,
    cache: ChunkCache,
}

impl PoolSource {
    /// The pages of the image `meta` describes (a whole image: a layer's parent pages are
    /// not its own), from `places` in order.
    pub fn new(meta: Meta, places: Vec<Arc<dyn ChunkFetch>>) -> PoolSource {
        PoolSource {
            given: places.iter().map(|_| AtomicU64::new(0)).collect(),
            meta,
            places,
            cache: ChunkCache::new(),
        }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// How many checked chunks each place gave so far, with its description.
    pub fn given(&self) -> Vec<(String, u64)> {
        self.places
            .iter()
            .zip(&self.given)
            .map(|(p, n)| (p.describe(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Chunks kept here (fetched and checked).
    pub fn kept(&self) -> u64 {
        (0..self.meta.pages.chunks.len() as u64)
            .filter(|&c| self.cache.has(c))
            .count() as u64
    }

    /// Fetches `chunks` (none kept yet) from the first place, in order, that gives them all,
    /// checked, and keeps them.
    fn get(&self, chunks: &[u64]) -> Result<(), String> {
        if chunks.is_empty() {
            return Ok(());
        }
        if self.places.is_empty() {
            return Err("the image has no source of pages".into());
        }
        let mut why = Vec::new();
        for (place, given) in self.places.iter().zip(&self.given) {
            match self.checked(place.as_ref(), chunks) {
                Ok(got) => {
                    for (&c, d) in chunks.iter().zip(got) {
                        self.cache.put(c, d.into());
                    }
                    given.fetch_add(chunks.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => why.push(format!("{}: {e}", place.describe())),
            }
        }
        Err(format!(
            "no place gave chunks {chunks:?}: {}",
            why.join("; ")
        ))
    }

    /// `chunks` from `place`, every one the right size and passing its hash.
    fn checked(&self, place: &dyn ChunkFetch, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        let got = place.fetch(chunks)?;
        if got.len() != chunks.len() {
            return Err(format!(
                "{} chunks asked for, {} given",
                chunks.len(),
                got.len()
            ));
        }
        for (&c, d) in chunks.iter().zip(&got) {
            let want = chunk_bytes(self.meta.pages.count, c) as usize;
            if d.len() != want || !chunk_ok(&self.meta, c, d) {
                return Err(format!("chunk {c} failed its check"));
            }
        }
        Ok(got)
    }

    /// The chunks `ranges` (page-file ranges) need that are not kept yet.
    fn missing(&self, ranges: &[(u64, u64)]) -> Vec<u64> {
        let chunks = self.meta.pages.chunks.len() as u64;
        let mut want: Vec<u64> = ranges
            .iter()
            .filter(|&&(_, n)| n > 0)
            .flat_map(|&(f, n)| f / CHUNK_PAGES..=(f + n - 1) / CHUNK_PAGES)
            .filter(|&c| c < chunks && !self.cache.has(c))
            .collect();
        want.sort_unstable();
        want.dedup();
        want
    }
}

/// Chunks per call to a place: a page server's batch, the store's requests in flight.
const BATCH: usize = 64;

impl PageSource for PoolSource {
    fn describe(&self) -> String {
        let places: Vec<String> = self.places.iter().map(|p| p.describe()).collect();
        format!("pool [{}]", places.join(", "))
    }

    fn warm(&self, ranges: &[(u64, u64)]) {
        for batch in self.missing(ranges).chunks(BATCH) {
            // A failure shows at the `pages` call that needs the chunk.
            if self.get(batch).is_err() {
                return;
            }
        }
    }

    fn pages(&self, first: u64, pages: u64) -> Result<Cow<'_, [u8]>, SourceError> {
        let err = |why: String| SourceError {
            source_name: self.describe(),
            why,
        };
        if pages == 0 || first.saturating_add(pages) > self.meta.pages.count {
            return Err(err(format!(
                "pages {first}..{} are outside the image",
                first.saturating_add(pages)
            )));
        }
        for batch in self.missing(&[(first, pages)]).chunks(BATCH) {
            self.get(batch).map_err(err)?;
        }
        self.cache
            .pages(&self.meta, first, pages, |c| {
                Err(format!("chunk {c} went missing"))
            })
            .map(Cow::Owned)
            .map_err(err)
    }
}
