//! The pages of a layer restored without its own pages at hand: the layer's own come from
//! a [`ChunkFetch`] (another node's copy in a snapshot store, say), each chunk checked
//! against the layer's own hashes before any page of it is returned and then kept; its
//! parent's come from the parent's memory (verified when it was loaded).
//!
//! ```text
//! held page i (flattened, LoadedImage::open_layer) -> src[i] < own count? -> own page:
//!     its chunk kept? else fetched (with every other missing chunk a warm hint names, in one
//!     call) and checked -> the page
//! else -> the parent's held page src[i] - own count, from memory
//! ```

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::source::ChunkCache;
use super::{PageSource, SourceError};
use crate::image::format::{CHUNK_PAGES, chunk_failed, chunk_ok};
use crate::image::pack::chunk_bytes;
use crate::image::{LayerPages, LoadedImage, Meta, PAGE};

/// Where a layer's own chunks come from.
pub trait ChunkFetch: Send + Sync {
    /// For messages: "snapshot store s3://bucket/x".
    fn describe(&self) -> String;
    /// The bytes of the layer's own chunks `chunks` (each as in its page file), in that
    /// order, unchecked (the caller checks them). Several are asked for at once so that
    /// they can be fetched concurrently.
    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String>;
}

/// A layer's own page file on local disk, as a [`ChunkFetch`] (a hibernated instance's):
/// its header checked against the layer's metadata at open, each chunk read when asked for
/// (the [`LayerSource`] checks it). The file stays open: the layer's directory may be
/// removed once this is made, and its blocks are freed when the source is dropped.
pub struct LayerFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    count: u64,
}

impl LayerFile {
    /// Opens the page file of the layer in `dir` whose stored metadata is `own`.
    pub fn open(dir: &std::path::Path, own: &Meta) -> Result<LayerFile, crate::ImageError> {
        let (file, path) = crate::image::format::open_pages(dir, own)?;
        Ok(LayerFile {
            file,
            path,
            count: own.pages.count,
        })
    }
}

impl ChunkFetch for LayerFile {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn fetch(&self, chunks: &[u64]) -> Result<Vec<Vec<u8>>, String> {
        use std::os::unix::fs::FileExt;
        chunks
            .iter()
            .map(|&c| {
                let mut buf = vec![0u8; chunk_bytes(self.count, c) as usize];
                if buf.is_empty() {
                    return Err(format!("chunk {c} is past the page file's end"));
                }
                self.file
                    .read_exact_at(&mut buf, PAGE * (1 + c * CHUNK_PAGES))
                    .map_err(|e| format!("reading chunk {c}: {e}"))?;
                Ok(buf)
            })
            .collect()
    }
}

/// A layer's pages: its own fetched on demand and checked, its parent's from memory.
pub struct LayerSource {
    own: Meta,
    src: Vec<u64>,
    parent: Arc<LoadedImage>,
    fetch: Arc<dyn ChunkFetch>,
    cache: ChunkCache,
    fetched: AtomicU64,
}

impl LayerSource {
    /// The source of a layer opened with [`LoadedImage::open_layer`] over `parent`.
    pub fn new(
        layer: LayerPages,
        parent: Arc<LoadedImage>,
        fetch: Arc<dyn ChunkFetch>,
    ) -> LayerSource {
        LayerSource {
            own: layer.own,
            src: layer.src,
            parent,
            fetch,
            cache: ChunkCache::new(),
            fetched: AtomicU64::new(0),
        }
    }

    /// Keeps own chunk `c` (its bytes as in the page file) if it passes its hash check;
    /// false when it does not (it is not kept).
    pub fn offer(&self, c: u64, data: Vec<u8>) -> bool {
        if !chunk_ok(&self.own, c, &data) {
            return false;
        }
        self.cache.put(c, data.into());
        true
    }

    /// Keeps the chunks of `pack`, read and checked against this layer's metadata (not
    /// checked again); false when the pack is another layer's (nothing is kept).
    pub fn offer_pack(&self, pack: crate::image::pack::Pack) -> bool {
        if pack.image() != self.own.id {
            return false;
        }
        for (c, data) in pack.into_chunks() {
            self.cache.put(c, data.into());
        }
        true
    }

    /// The own chunks not kept yet.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.own.pages.chunks.len() as u64)
            .filter(|&c| !self.cache.has(c))
            .collect()
    }

    /// Own chunks fetched from the [`ChunkFetch`] so far (not those offered).
    pub fn fetched_chunks(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// Fetches and checks `chunks`, keeping them.
    fn get(&self, chunks: &[u64]) -> Result<(), String> {
        if chunks.is_empty() {
            return Ok(());
        }
        let data = self.fetch.fetch(chunks)?;
        if data.len() != chunks.len() {
            return Err(format!(
                "{} chunks asked for, {} given",
                chunks.len(),
                data.len()
            ));
        }
        self.fetched
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        for (&c, d) in chunks.iter().zip(data) {
            let want = chunk_bytes(self.own.pages.count, c) as usize;
            if d.len() != want || !self.offer(c, d) {
                return Err(chunk_failed(c));
            }
        }
        Ok(())
    }

    fn err(&self, why: String) -> SourceError {
        SourceError {
            source_name: self.describe(),
            why,
        }
    }
}

impl PageSource for LayerSource {
    fn describe(&self) -> String {
        format!(
            "layer over {} (its own pages from {})",
            self.parent.dir.display(),
            self.fetch.describe()
        )
    }

    fn pages(&self, first: u64, pages: u64) -> Result<Cow<'_, [u8]>, SourceError> {
        let count = self.own.pages.count;
        let (a, b) = (first as usize, first.saturating_add(pages) as usize);
        let src = self
            .src
            .get(a..b)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| self.err(format!("pages {a}..{b} are outside the image")))?;
        // Every own chunk these pages need, fetched in one call.
        let mut need: Vec<u64> = src
            .iter()
            .filter(|&&x| x < count)
            .map(|&x| x / CHUNK_PAGES)
            .filter(|&c| !self.cache.has(c))
            .collect();
        need.sort_unstable();
        need.dedup();
        self.get(&need).map_err(|why| self.err(why))?;
        let pdata = self.parent.page_data();
        let mut out = Vec::with_capacity(src.len() * PAGE as usize);
        for &x in src {
            if x < count {
                let page = self
                    .cache
                    .pages(&self.own, x, 1, |c| Err(format!("chunk {c} went missing")))
                    .map_err(|why| self.err(why))?;
                out.extend_from_slice(&page);
            } else {
                let i = x - count;
                let page = pdata
                    .get((i * PAGE) as usize..((i + 1) * PAGE) as usize)
                    .ok_or_else(|| self.err(format!("parent page {i} is outside its image")))?;
                out.extend_from_slice(page);
            }
        }
        Ok(Cow::Owned(out))
    }

    fn warm(&self, ranges: &[(u64, u64)]) {
        let count = self.own.pages.count;
        let mut need: Vec<u64> = ranges
            .iter()
            .flat_map(|&(first, n)| {
                let (a, b) = (first as usize, first.saturating_add(n) as usize);
                self.src.get(a..b).unwrap_or_default().iter().copied()
            })
            .filter(|&x| x < count)
            .map(|x| x / CHUNK_PAGES)
            .filter(|&c| !self.cache.has(c))
            .collect();
        need.sort_unstable();
        need.dedup();
        // A failure shows at the `pages` call that needs the chunk.
        let _ = self.get(&need);
    }
}
