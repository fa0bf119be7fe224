//! The on-disk image: a directory with two files.
//!
//! ```text
//! DIR/meta                                   DIR/pages
//! 0   "EMBRSNAP"                             0     "EMBRPAGE"
//! 8   format version   u32 le                8     format version  u32 le
//! 12  flags (0)        u32 le                12    page size       u32 le (4096)
//! 16  metadata length  u64 le (<= 16 MiB)    16    image id        [16]  (= Meta::id)
//! 24  BLAKE3(metadata) [32]                  32    page count      u64 le
//! 56  reserved         [8]                   4096  page 0, page 1, ... (page-aligned, so
//! 64  metadata (postcard, see `Meta`)              the file can be mapped)
//! ```
//!
//! All-zero pages are not stored. Each run of [`CHUNK_PAGES`] stored pages has a BLAKE3 hash
//! in the metadata; [`LoadedImage::load`] checks every one before any page can reach a
//! process, and checks the metadata for consistency (VMAs sorted and in user space, page runs
//! inside private VMAs, indices in range), so a corrupted or hostile image is refused by name.
//!
//! A **layer** (format 4) names its parent in `Meta::parent` (id, BLAKE3 of the parent's
//! metadata, the size of the parent's page index space, a path hint) and stores only the
//! pages that differ from the parent's. Its page index space is its own stored pages, then
//! the parent's whole space (recursively), so a run points at either:
//!
//! ```text
//! layer runs:  0x1000 ×2 -> [0,1]    0x3000 ×3 -> [count+7 ..]    0x9000 ×1 -> [2]
//!              own pages             parent's space (its own pages, then its parent's)
//! ```
//!
//! Loading a layer loads its parent chain (at most [`MAX_DEPTH`] layers, every id, hash and
//! chunk checked) and **flattens** it: the [`LoadedImage`] of a layer holds the pages its
//! runs name, in run order, with runs, count and chunk hashes of a whole image, so every
//! restore policy and page source works on it unchanged.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use super::loaded::LoadedImage;
pub(crate) use super::validate::validate;
pub use super::validate::{
    MAX_AREA_POLICIES, MAX_FILTER_LEN, MAX_FILTERS, MAX_NODE_WORDS, MAX_PENDING, MAX_TIMERS,
    MPOL_KNOWN,
};
use super::{Meta, PAGE};

pub const META_MAGIC: [u8; 8] = *b"EMBRSNAP";
pub const PAGES_MAGIC: [u8; 8] = *b"EMBRPAGE";
/// 3: credentials and process-wide state (`ProcState`); 4: `ParentRef` gained the parent's
/// metadata hash and index-space size (layers); 5: VMA flags and names, shared open file
/// descriptions (`FdKind::Dup`), files held open without a content check; 6: NUMA policies
/// (the task's, each VMA's) and the I/O priority; 7: the thread's id in its pid namespace
/// (`Task::tid`).
pub const FORMAT_VERSION: u32 = 7;
/// Most layers over one whole image.
pub const MAX_DEPTH: u32 = 8;
/// Largest metadata accepted (a 1,300-VMA scikit-learn image needs ~100 KiB).
pub const MAX_META: u64 = 16 << 20;
/// Largest page count accepted (64 GiB).
pub const MAX_PAGES: u64 = 16 << 20;
/// Pages per hashed chunk (16 KiB): the unit a lazy page source fetches and checks. Small,
/// because a fault on one page fetches its whole chunk (from a remote server too); version 1
/// had 64 KiB chunks.
pub const CHUNK_PAGES: u64 = 4;
/// The highest user address on x86_64 with 4-level paging.
pub const USER_END: u64 = 0x7fff_ffff_f000;
const META_HEADER: usize = 64;

pub const META_FILE: &str = "meta";
pub const PAGES_FILE: &str = "pages";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read image file {path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot write image file {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} is not an Ember image: {why}")]
    Foreign { path: PathBuf, why: String },
    #[error(
        "{path} has image format version {found}; this Ember reads version {FORMAT_VERSION}: take the image again"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is corrupted: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("image {path} is a layer over {parent}: {why}")]
    Parent {
        path: PathBuf,
        parent: String,
        why: String,
    },
    #[error(
        "image {path} is a layer: its pages are served from memory, not from its page file; restore it with `--source memory` (LoadedImage::load)"
    )]
    Layered { path: PathBuf },
}

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn corrupt(path: &Path, why: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Writes `meta` and the stored pages (`meta.pages.count` pages, in order) to `dir`,
/// filling in the chunk hashes. Each file is written under a temporary name and renamed.
pub fn write_image(dir: &Path, meta: &mut Meta, pages: &[u8]) -> Result<(), ImageError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    meta.pages.count = pages.len() as u64 / PAGE;
    meta.pages.chunks = pages
        .chunks((CHUNK_PAGES * PAGE) as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect();

    let pages_path = dir.join(PAGES_FILE);
    let tmp = dir.join(".pages.tmp");
    let mut header = vec![0u8; PAGE as usize];
    header[..8].copy_from_slice(&PAGES_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[12..16].copy_from_slice(&(PAGE as u32).to_le_bytes());
    header[16..32].copy_from_slice(&meta.id);
    header[32..40].copy_from_slice(&meta.pages.count.to_le_bytes());
    let mut f = File::create(&tmp).map_err(werr(&tmp))?;
    f.write_all(&header).map_err(werr(&tmp))?;
    f.write_all(pages).map_err(werr(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &pages_path).map_err(werr(&pages_path))?;

    let body = postcard::to_stdvec(meta).map_err(|e| ImageError::Write {
        path: dir.join(META_FILE),
        source: io::Error::other(e),
    })?;
    let meta_path = dir.join(META_FILE);
    let tmp = dir.join(".meta.tmp");
    let mut out = Vec::with_capacity(META_HEADER + body.len());
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&body);
    std::fs::write(&tmp, &out).map_err(werr(&tmp))?;
    std::fs::rename(&tmp, &meta_path).map_err(werr(&meta_path))?;
    Ok(())
}

/// Opens an image file for reading without blocking on a FIFO or device put in its place
/// (`O_NONBLOCK`), and refuses anything but a regular file.
pub(super) fn open_regular(path: &Path) -> Result<File, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_at(path))?;
    if !f.metadata().map_err(io_at(path))?.is_file() {
        return Err(ImageError::Foreign {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    Ok(f)
}

/// Reads a file's header into `head` and checks its magic and format version.
pub(super) fn read_header(
    path: &Path,
    f: &File,
    head: &mut [u8],
    magic: &[u8; 8],
) -> Result<(), ImageError> {
    f.read_exact_at(head, 0).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(path, "truncated header")
        } else {
            io_at(path)(e)
        }
    })?;
    if head[..8] != magic[..] {
        return Err(ImageError::Foreign {
            path: path.to_path_buf(),
            why: "bad magic".into(),
        });
    }
    let version = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(ImageError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(())
}

/// Reads and checks `dir/meta` (magic, version, size cap, hash, consistency).
pub fn read_meta(dir: &Path) -> Result<Meta, ImageError> {
    read_meta_hashed(dir).map(|(m, _)| m)
}

/// [`read_meta`], with the BLAKE3 of the metadata (what a layer names its parent by).
pub fn read_meta_hashed(dir: &Path) -> Result<(Meta, [u8; 32]), ImageError> {
    let path = dir.join(META_FILE);
    let mut f = open_regular(&path)?;
    let mut head = [0u8; META_HEADER];
    read_header(&path, &f, &mut head, &META_MAGIC)?;
    f.seek(io::SeekFrom::Start(META_HEADER as u64))
        .map_err(io_at(&path))?;
    let len = u64::from_le_bytes(head[16..24].try_into().unwrap_or_default());
    if len > MAX_META {
        return Err(corrupt(
            &path,
            format!("metadata of {len} bytes is over the {MAX_META}-byte limit"),
        ));
    }
    let mut body = Vec::with_capacity(len as usize);
    Read::by_ref(&mut f)
        .take(len)
        .read_to_end(&mut body)
        .map_err(io_at(&path))?;
    if body.len() as u64 != len {
        return Err(corrupt(
            &path,
            format!("truncated: {} of {len} metadata bytes", body.len()),
        ));
    }
    if blake3::hash(&body).as_bytes()[..] != head[24..56] {
        return Err(corrupt(&path, "metadata hash mismatch"));
    }
    let meta: Meta =
        postcard::from_bytes(&body).map_err(|e| corrupt(&path, format!("undecodable: {e}")))?;
    validate(&meta).map_err(|why| corrupt(&path, why))?;
    Ok((meta, *blake3::hash(&body).as_bytes()))
}

pub const WORKING_SET_FILE: &str = "workingset";
pub const WORKING_SET_MAGIC: [u8; 8] = *b"EMBRWSET";

/// A temporary file name beginning with `stem`, unique to this process and call: two
/// writers of one file never write into one temporary.
pub(super) fn temp_name(stem: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{stem}.{}-{n}.tmp", std::process::id())
}

/// Size of an image's page index space: its stored pages, and a layer's parent's space
/// after them.
pub fn index_space(meta: &Meta) -> u64 {
    meta.pages.count + meta.parent.as_ref().map_or(0, |p| p.space)
}

/// Records `pages` (indices in the image's page index space, [`index_space`], in touch
/// order; repeats dropped) as the image's working set: `DIR/workingset` = magic, version
/// u32, count u32, BLAKE3 of the body, then the indices as u64 le. A prefetch restore
/// installs these before the process resumes. For a whole image the indices are its page
/// file's; a layer's name its own pages and its parent's alike (a flattened layer maps them
/// with [`LoadedImage::flat_indices`]).
pub fn write_working_set(dir: &Path, meta: &Meta, pages: &[u64]) -> Result<(), ImageError> {
    let path = dir.join(WORKING_SET_FILE);
    let space = index_space(meta);
    let mut seen = std::collections::HashSet::new();
    let mut body = Vec::new();
    for &p in pages.iter().filter(|&&p| p < space) {
        if seen.insert(p) {
            body.extend_from_slice(&p.to_le_bytes());
        }
    }
    let mut out = WORKING_SET_MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&((body.len() / 8) as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    let tmp = dir.join(temp_name(".workingset"));
    let werr = |p: &Path| {
        let path = p.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    std::fs::write(&tmp, &out).map_err(werr(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(werr(&path))
}

/// The image's recorded working set, if it has one (checked: magic, version, hash, every
/// index inside the image's index space).
pub fn read_working_set(dir: &Path, meta: &Meta) -> Result<Option<Vec<u64>>, ImageError> {
    let path = dir.join(WORKING_SET_FILE);
    let space = index_space(meta);
    let f = match open_regular(&path) {
        Ok(f) => f,
        Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // At most the header and a u64 for each of the image's pages.
    let mut raw = Vec::new();
    f.take(48 + 8 * space.min(MAX_PAGES) + 1)
        .read_to_end(&mut raw)
        .map_err(io_at(&path))?;
    if raw.len() < 48 || raw[..8] != WORKING_SET_MAGIC {
        return Err(ImageError::Foreign {
            path,
            why: "bad magic".into(),
        });
    }
    let version = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(ImageError::Version {
            path,
            found: version,
        });
    }
    let count = u32::from_le_bytes(raw[12..16].try_into().unwrap_or_default()) as u64;
    let body = &raw[48..];
    if body.len() as u64 != count * 8 || count > space {
        return Err(corrupt(
            &path,
            format!("{} bytes for {count} pages", body.len()),
        ));
    }
    if blake3::hash(body).as_bytes()[..] != raw[16..48] {
        return Err(corrupt(&path, "hash mismatch"));
    }
    let pages: Vec<u64> = body
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
        .collect();
    if pages.iter().any(|&p| p >= space) {
        return Err(corrupt(&path, "a page outside the image"));
    }
    Ok(Some(pages))
}

/// Opens `dir`'s page file and checks its header against `meta` (magic, version, image id,
/// size).
pub fn open_pages(dir: &Path, meta: &Meta) -> Result<(File, PathBuf), ImageError> {
    let path = dir.join(PAGES_FILE);
    let f = open_regular(&path)?;
    let mut head = [0u8; 40];
    read_header(&path, &f, &mut head, &PAGES_MAGIC)?;
    if head[16..32] != meta.id {
        return Err(ImageError::Foreign {
            path,
            why: "it belongs to another image (id differs from the metadata's)".into(),
        });
    }
    let count = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default());
    let size = f.metadata().map_err(io_at(&path))?.len();
    if count != meta.pages.count || size != PAGE * (1 + count) {
        return Err(corrupt(
            &path,
            format!(
                "{size} bytes for {count} pages; the metadata says {} pages",
                meta.pages.count
            ),
        ));
    }
    Ok((f, path))
}

/// Whether chunk `i` of a page file matches its hash.
pub fn chunk_ok(meta: &Meta, i: u64, data: &[u8]) -> bool {
    meta.pages
        .chunks
        .get(i as usize)
        .is_some_and(|want| blake3::hash(data).as_bytes() == want)
}

/// What a failed chunk check says.
pub fn chunk_failed(i: u64) -> String {
    format!(
        "chunk {i} (pages {}..) fails its hash check",
        i * CHUNK_PAGES
    )
}

#[cfg(test)]
pub(crate) mod tests;
