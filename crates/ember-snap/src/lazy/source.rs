//! Page sources besides the in-memory copy: an image's page file, read as it is asked for.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{PageSource, SourceError};
use crate::image::format::{CHUNK_PAGES, chunk_failed, chunk_ok, open_pages};
use crate::image::pack::chunk_bytes;
use crate::image::{ImageError, Meta, PAGE};

/// Reads verified chunks, keeps them, and cuts requests out of them.
pub(crate) struct ChunkCache {
    chunks: Mutex<HashMap<u64, Arc<[u8]>>>,
}

impl ChunkCache {
    pub(crate) fn new() -> ChunkCache {
        ChunkCache {
            chunks: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn put(&self, c: u64, data: Arc<[u8]>) {
        if let Ok(mut m) = self.chunks.lock() {
            m.insert(c, data);
        }
    }

    pub(crate) fn has(&self, c: u64) -> bool {
        self.chunks.lock().is_ok_and(|m| m.contains_key(&c))
    }

    /// `pages` pages from `first`, fetching (and checking) each missing chunk with `fetch`.
    pub(crate) fn pages(
        &self,
        meta: &Meta,
        first: u64,
        pages: u64,
        fetch: impl Fn(u64) -> Result<Arc<[u8]>, String>,
    ) -> Result<Vec<u8>, String> {
        if pages == 0 || first + pages > meta.pages.count {
            return Err(format!(
                "pages {first}..{} are outside the image",
                first + pages
            ));
        }
        let mut out = Vec::with_capacity((pages * PAGE) as usize);
        let (c0, c1) = (first / CHUNK_PAGES, (first + pages - 1) / CHUNK_PAGES);
        for c in c0..=c1 {
            let cached = self.chunks.lock().ok().and_then(|m| m.get(&c).cloned());
            let chunk = match cached {
                Some(ch) => ch,
                None => {
                    let ch = fetch(c)?;
                    if let Ok(mut m) = self.chunks.lock() {
                        m.insert(c, ch.clone());
                    }
                    ch
                }
            };
            let base = c * CHUNK_PAGES;
            let lo = first.max(base) - base;
            let hi = (first + pages).min(base + CHUNK_PAGES) - base;
            let part = chunk
                .get((lo * PAGE) as usize..(hi * PAGE) as usize)
                .ok_or_else(|| format!("chunk {c} is short"))?;
            out.extend_from_slice(part);
        }
        Ok(out)
    }
}

/// An image's page file on local disk: each 16 KiB chunk read and checked against its
/// hash when first asked for, then kept for every later request (and restore).
pub struct FileSource {
    meta: Meta,
    file: File,
    path: PathBuf,
    cache: ChunkCache,
}

impl FileSource {
    /// Opens `dir`'s page file for the image `meta` describes (header checked now).
    pub fn open(dir: &Path, meta: &Meta) -> Result<FileSource, ImageError> {
        if meta.parent.is_some() {
            return Err(ImageError::Layered {
                path: dir.to_path_buf(),
            });
        }
        let (file, path) = open_pages(dir, meta)?;
        Ok(FileSource {
            meta: meta.clone(),
            file,
            path,
            cache: ChunkCache::new(),
        })
    }
}

impl PageSource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn pages(&self, first: u64, pages: u64) -> Result<Cow<'_, [u8]>, SourceError> {
        let fetch = |c: u64| -> Result<Arc<[u8]>, String> {
            let mut buf = vec![0u8; chunk_bytes(self.meta.pages.count, c) as usize];
            self.file
                .read_exact_at(&mut buf, PAGE * (1 + c * CHUNK_PAGES))
                .map_err(|e| format!("reading chunk {c}: {e}"))?;
            if !chunk_ok(&self.meta, c, &buf) {
                return Err(chunk_failed(c));
            }
            Ok(buf.into())
        };
        self.cache
            .pages(&self.meta, first, pages, fetch)
            .map(Cow::Owned)
            .map_err(|why| SourceError {
                source_name: self.describe(),
                why,
            })
    }
}
