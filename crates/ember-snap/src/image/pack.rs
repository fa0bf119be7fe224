//! A layer's working-set pack: the hashed chunks of its own pages that its working set
//! names, in one file, so that a node without the layer gets what a restore installs first
//! in one request (REAP's working-set file) instead of one per chunk.
//!
//! ```text
//! DIR/wspages
//! 0    "EMBRWSPK"
//! 8    format version     u32 le
//! 12   chunk count n      u32 le
//! 16   BLAKE3(indices)    [32]
//! 48   chunk indices      n x u64 le, ascending
//! ...  the chunks' bytes, in that order, each as long as it is in the page file
//!      (CHUNK_PAGES pages; the file's last chunk may be shorter)
//! ```
//!
//! Reading checks the header, that the indices ascend inside the layer, the file's exact
//! size, and every chunk against the layer's own chunk hashes: a pack from another node is
//! trusted no more than its page file.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{
    CHUNK_PAGES, FORMAT_VERSION, ImageError, chunk_failed, chunk_ok, corrupt, io_at, open_pages,
    open_regular,
};
use super::{Meta, PAGE};

pub const PACK_FILE: &str = "wspages";
pub const PACK_MAGIC: [u8; 8] = *b"EMBRWSPK";
const HEADER: u64 = 48;

/// A chunk's index among the layer's own chunks, and its checked bytes.
pub type Chunk = (u64, Vec<u8>);

/// A pack read and checked against a layer's metadata ([`read_pack`]): only this module
/// makes one, so a holder knows every chunk passed its hash check for that layer.
#[derive(Debug)]
pub struct Pack {
    image: [u8; 16],
    chunks: Vec<Chunk>,
}

impl Pack {
    /// The id of the layer whose hashes the chunks were checked against.
    pub fn image(&self) -> [u8; 16] {
        self.image
    }

    /// The checked chunks, ascending.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    pub fn into_chunks(self) -> Vec<Chunk> {
        self.chunks
    }
}

/// Bytes of stored chunk `c` of an image with `count` stored pages.
pub fn chunk_bytes(count: u64, c: u64) -> u64 {
    count.saturating_sub(c * CHUNK_PAGES).min(CHUNK_PAGES) * PAGE
}

/// The chunks of the layer's own pages that the working set `ws` (indices of the layer's
/// index space, as recorded) names, ascending: the parent's pages are the parent's.
pub fn pack_chunks(meta: &Meta, ws: &[u64]) -> Vec<u64> {
    let mut c: Vec<u64> = ws
        .iter()
        .filter(|&&x| x < meta.pages.count)
        .map(|&x| x / CHUNK_PAGES)
        .collect();
    c.sort_unstable();
    c.dedup();
    c
}

/// Writes `dir`'s pack of the chunks `pack_chunks(meta, ws)` names, read from `dir`'s page
/// file and checked. Returns the number of chunks (0: no file is written, and an old one
/// is removed).
pub fn write_pack(dir: &Path, meta: &Meta, ws: &[u64]) -> Result<u64, ImageError> {
    let chunks = pack_chunks(meta, ws);
    let path = dir.join(PACK_FILE);
    if chunks.is_empty() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ImageError::Write { path, source: e });
            }
            _ => return Ok(0),
        }
    }
    let (f, pages_path) = open_pages(dir, meta)?;
    let mut index = Vec::with_capacity(chunks.len() * 8);
    for c in &chunks {
        index.extend_from_slice(&c.to_le_bytes());
    }
    let mut out = PACK_MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(&index).as_bytes());
    out.extend_from_slice(&index);
    for &c in &chunks {
        let mut buf = vec![0u8; chunk_bytes(meta.pages.count, c) as usize];
        f.read_exact_at(&mut buf, PAGE * (1 + c * CHUNK_PAGES))
            .map_err(io_at(&pages_path))?;
        if !chunk_ok(meta, c, &buf) {
            return Err(corrupt(&pages_path, chunk_failed(c)));
        }
        out.extend_from_slice(&buf);
    }
    let tmp = dir.join(super::format::temp_name(".wspages"));
    let werr = |p: &Path| {
        let path = p.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    let mut w = std::fs::File::create(&tmp).map_err(werr(&tmp))?;
    w.write_all(&out).map_err(werr(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(werr(&path))?;
    Ok(chunks.len() as u64)
}

/// Reads into `buf` from `offset` until it is full or the file ends; the bytes read.
fn read_up_to(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(k) => done += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `dir`'s pack, every chunk checked against `meta` (the layer's own metadata): chunk
/// index and bytes. `None` when there is no pack. Reads the header and the index first, and
/// then exactly what they say the chunks need: a hostile header makes it read no more.
pub fn read_pack(dir: &Path, meta: &Meta) -> Result<Option<Pack>, ImageError> {
    let path = dir.join(PACK_FILE);
    let f = match open_regular(&path) {
        Ok(f) => f,
        Err(ImageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let total = meta.pages.chunks.len() as u64;
    let mut head = [0u8; HEADER as usize];
    let got = read_up_to(&f, &mut head, 0).map_err(io_at(&path))?;
    if got < head.len() || head[..8] != PACK_MAGIC {
        return Err(ImageError::Foreign {
            path,
            why: "bad magic".into(),
        });
    }
    let word = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap_or_default());
    if word(8) != FORMAT_VERSION {
        return Err(ImageError::Version {
            path,
            found: word(8),
        });
    }
    let n = u64::from(word(12));
    if n > total {
        return Err(corrupt(&path, format!("{n} chunks for a layer of {total}")));
    }
    let mut index = vec![0u8; (n * 8) as usize];
    if read_up_to(&f, &mut index, HEADER).map_err(io_at(&path))? < index.len() {
        return Err(corrupt(&path, "short index"));
    }
    if blake3::hash(&index).as_bytes()[..] != head[16..48] {
        return Err(corrupt(&path, "index hash mismatch"));
    }
    let chunks: Vec<u64> = index
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .collect();
    if chunks.windows(2).any(|w| w[0] >= w[1]) || chunks.last().is_some_and(|&c| c >= total) {
        return Err(corrupt(
            &path,
            "chunk indices out of order or outside the layer",
        ));
    }
    let want: u64 = chunks
        .iter()
        .map(|&c| chunk_bytes(meta.pages.count, c))
        .sum();
    let index_end = HEADER + n * 8;
    let size = f.metadata().map_err(io_at(&path))?.len();
    if size != index_end + want {
        return Err(corrupt(
            &path,
            format!("{size} bytes; its chunks need {}", index_end + want),
        ));
    }
    let mut data = vec![0u8; want as usize];
    f.read_exact_at(&mut data, index_end)
        .map_err(io_at(&path))?;
    let mut at = 0;
    let mut out = Vec::with_capacity(chunks.len());
    for c in chunks {
        let len = chunk_bytes(meta.pages.count, c) as usize;
        let bytes = &data[at..at + len];
        if !chunk_ok(meta, c, bytes) {
            return Err(corrupt(&path, chunk_failed(c)));
        }
        out.push((c, bytes.to_vec()));
        at += len;
    }
    Ok(Some(Pack {
        image: meta.id,
        chunks: out,
    }))
}
