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

use super::{FdKind, Meta, PAGE, VmaKind, vma_flags};
use crate::sys::{self, Mapping};

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
        "image {path} is a layer: its pages are served from memory (LoadedImage::load), not from its page file"
    )]
    Layered { path: PathBuf },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, why: impl Into<String>) -> ImageError {
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

/// Reads a file's header into `head` and checks its magic and format version.
fn read_header(path: &Path, f: &File, head: &mut [u8], magic: &[u8; 8]) -> Result<(), ImageError> {
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
    let mut f = File::open(&path).map_err(io_at(&path))?;
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

/// Consistency rules a restore relies on.
fn validate(m: &Meta) -> Result<(), String> {
    // The kernel's pid_max is at most 2^22.
    if !(1..=1 << 22).contains(&m.task.tid) {
        return Err(format!("thread id {} is out of range", m.task.tid));
    }
    let mut prev_end = 0;
    for (i, v) in m.vmas.iter().enumerate() {
        let aligned = v.start % PAGE == 0 && v.end % PAGE == 0;
        if !aligned || v.start >= v.end || v.start < prev_end || v.end > USER_END {
            return Err(format!(
                "VMA {i} ({:#x}-{:#x}) is out of order or range",
                v.start, v.end
            ));
        }
        prev_end = v.end;
        if v.flags & !vma_flags::ALL != 0 {
            return Err(format!("VMA {i} has unknown flags {:#x}", v.flags));
        }
        let private_anon = !v.shared && !matches!(v.kind, VmaKind::File { .. });
        if v.flags & vma_flags::WIPEONFORK != 0 && !private_anon {
            return Err(format!(
                "VMA {i} wipes on fork but is not private anonymous memory"
            ));
        }
        if let Some(name) = &v.name {
            if v.kind != VmaKind::Anon || v.shared {
                return Err(format!("VMA {i} is named but not anonymous"));
            }
            if !valid_anon_name(name) {
                return Err(format!("VMA {i} has an invalid name"));
            }
        }
        if let VmaKind::File { file, offset } = v.kind
            && (file as usize >= m.files.len() || offset % PAGE != 0)
        {
            return Err(format!("VMA {i} names file {file} of {}", m.files.len()));
        }
    }
    let chunks = m.pages.count.div_ceil(CHUNK_PAGES);
    if m.pages.count > MAX_PAGES || m.pages.chunks.len() as u64 != chunks {
        return Err(format!(
            "{} pages with {} chunk hashes",
            m.pages.count,
            m.pages.chunks.len()
        ));
    }
    // A layer's runs may point into its parent's index space, in any order.
    let space = match &m.parent {
        None => m.pages.count,
        Some(p) if p.space <= MAX_PAGES * u64::from(MAX_DEPTH) => m.pages.count + p.space,
        Some(p) => return Err(format!("the parent's index space of {} pages", p.space)),
    };
    let mut next_page = 0;
    let mut prev_end = 0;
    for r in &m.pages.runs {
        let end = r.addr.saturating_add(u64::from(r.pages) * PAGE);
        let inside = m
            .vmas
            .iter()
            .any(|v| !v.shared && v.start <= r.addr && end <= v.end);
        if r.pages == 0 || r.addr % PAGE != 0 || r.addr < prev_end || !inside {
            return Err(format!(
                "page run at {:#x} is outside the image's private memory",
                r.addr
            ));
        }
        if m.parent.is_some() {
            if r.first.saturating_add(u64::from(r.pages)) > space {
                return Err(format!(
                    "page run at {:#x} names pages {}.. of an index space of {space} (own and parent's)",
                    r.addr, r.first
                ));
            }
        } else if r.first != next_page {
            return Err(format!("page run at {:#x} is out of sequence", r.addr));
        }
        next_page += u64::from(r.pages);
        prev_end = end;
    }
    if m.parent.is_none() && next_page != m.pages.count {
        return Err(format!("runs cover {next_page} of {} pages", m.pages.count));
    }
    if m.task.regs.len() != 27 || m.task.xstate.len() > sys::XSTATE_MAX {
        return Err("register state has the wrong size".into());
    }
    if m.mm.exe as usize >= m.files.len() && !m.files.is_empty() {
        return Err("executable index out of range".into());
    }
    let mut prev_fd = -1;
    for f in &m.fds {
        if f.fd <= prev_fd || f.fd > 1 << 20 {
            return Err(format!("descriptor number {} out of order or range", f.fd));
        }
        prev_fd = f.fd;
        match f.kind {
            FdKind::File { file, flags, .. } => {
                if file as usize >= m.files.len() {
                    return Err(format!("descriptor {} names file {file}", f.fd));
                }
                if flags & !(crate::dump::FD_FLAGS as u32) != 0 {
                    return Err(format!("descriptor {} has unknown flags {flags:#o}", f.fd));
                }
            }
            FdKind::Dup { of } => {
                let first = m.fds.iter().find(|g| g.fd == of);
                if of >= f.fd || !first.is_some_and(|g| matches!(g.kind, FdKind::File { .. })) {
                    return Err(format!(
                        "descriptor {} shares descriptor {of}, which is not an earlier reopened file",
                        f.fd
                    ));
                }
            }
            FdKind::Inherited { .. } => {}
        }
    }
    if m.mm.auxv.len() > 128 || m.task.sigactions.len() > 64 {
        return Err("auxv or signal table too long".into());
    }
    crate::creds::validate(&m.task.creds)?;
    validate_process(&m.process)
}

/// Most seccomp filters, instructions per filter, queued signals per queue and POSIX timers
/// an image may hold (a dump refuses a process with more).
pub const MAX_FILTERS: usize = 32;
pub const MAX_FILTER_LEN: usize = 4096;
pub const MAX_PENDING: usize = 64;
pub const MAX_TIMERS: usize = 256;
/// Areas with a NUMA policy of their own (at most one per VMA: the kernel's default
/// `vm.max_map_count`).
pub const MAX_AREA_POLICIES: usize = 65_530;
/// A NUMA node mask of 1,024 nodes, in 64-bit words.
pub const MAX_NODE_WORDS: usize = 16;
/// Modes 0-7 (`MPOL_DEFAULT`..`MPOL_WEIGHTED_INTERLEAVE`) and the mode flags.
pub const MPOL_KNOWN: u32 = 0x7 | (1 << 15) | (1 << 14) | (1 << 13);

fn validate_process(p: &super::ProcState) -> Result<(), String> {
    if p.rlimits.len() > 16 || p.rlimits.iter().any(|r| r.0 >= 16) {
        return Err("resource limits out of range".into());
    }
    if p.affinity.as_ref().is_some_and(|a| a.len() > 16) {
        return Err("CPU affinity mask too long".into());
    }
    if p.seccomp.len() > MAX_FILTERS
        || p.seccomp
            .iter()
            .any(|f| f.is_empty() || f.len() > MAX_FILTER_LEN)
    {
        return Err("seccomp filters too many or too long".into());
    }
    for q in [&p.pending_thread, &p.pending_process] {
        if q.len() > MAX_PENDING || q.iter().any(|i| i.len() != 128) {
            return Err("queued signals too many or malformed".into());
        }
    }
    if p.itimers.len() > 3 || p.timers.len() > MAX_TIMERS || p.prctl.dumpable > 1 {
        return Err("timers or prctl values out of range".into());
    }
    let policies = std::iter::once(&p.mempolicy).chain(p.area_policies.iter().map(|a| &a.policy));
    if p.area_policies.len() > MAX_AREA_POLICIES
        || p.area_policies
            .iter()
            .any(|a| a.start >= a.end || a.start % super::PAGE != 0)
        || policies
            .into_iter()
            .any(|m| m.nodes.len() > MAX_NODE_WORDS || m.mode & !MPOL_KNOWN != 0)
    {
        return Err("NUMA memory policies out of range".into());
    }
    Ok(())
}

/// What `PR_SET_VMA_ANON_NAME` accepts: under 80 bytes of printable ASCII but `\`, `` ` ``,
/// `$`, `[` and `]`.
fn valid_anon_name(name: &str) -> bool {
    name.len() < 80
        && name
            .bytes()
            .all(|c| (0x20..0x7f).contains(&c) && !b"\\`$[]".contains(&c))
}

pub const WORKING_SET_FILE: &str = "workingset";
pub const WORKING_SET_MAGIC: [u8; 8] = *b"EMBRWSET";

/// Records `pages` (page-file indices, in touch order; repeats dropped) as the image's
/// working set: `DIR/workingset` = magic, version u32, count u32, BLAKE3 of the body, then
/// the indices as u64 le. A prefetch restore installs these before the process resumes.
pub fn write_working_set(dir: &Path, meta: &Meta, pages: &[u64]) -> Result<(), ImageError> {
    let path = dir.join(WORKING_SET_FILE);
    let mut seen = std::collections::HashSet::new();
    let mut body = Vec::new();
    for &p in pages.iter().filter(|&&p| p < meta.pages.count) {
        if seen.insert(p) {
            body.extend_from_slice(&p.to_le_bytes());
        }
    }
    let mut out = WORKING_SET_MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&((body.len() / 8) as u32).to_le_bytes());
    out.extend_from_slice(blake3::hash(&body).as_bytes());
    out.extend_from_slice(&body);
    let tmp = dir.join(".workingset.tmp");
    let werr = |p: &Path| {
        let path = p.to_path_buf();
        move |source| ImageError::Write { path, source }
    };
    std::fs::write(&tmp, &out).map_err(werr(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(werr(&path))
}

/// The image's recorded working set, if it has one (checked: magic, version, hash, every
/// index inside the image).
pub fn read_working_set(dir: &Path, meta: &Meta) -> Result<Option<Vec<u64>>, ImageError> {
    let path = dir.join(WORKING_SET_FILE);
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(&path)(e)),
    };
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
    if body.len() as u64 != count * 8 || count > meta.pages.count {
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
    if pages.iter().any(|&p| p >= meta.pages.count) {
        return Err(corrupt(&path, "a page outside the image"));
    }
    Ok(Some(pages))
}

/// An image whose pages are in memory and verified: restore many instances from it.
///
/// A layer is held flattened: `meta` has the runs, count and chunk hashes of a whole image
/// over the pages its runs name (in run order), `meta.parent` still names the parent.
pub struct LoadedImage {
    pub dir: PathBuf,
    pub meta: Meta,
    pages: Mapping,
    loaded: bool,
    /// The pages in a sealed memfd, made on first use by a mapped restore.
    memfd: std::sync::OnceLock<Result<std::os::fd::OwnedFd, String>>,
    /// BLAKE3 of the image's metadata file body (what a layer over it records).
    meta_hash: [u8; 32],
    /// For a flattened layer: the index, in the image's own index space (own pages, then the
    /// parent's), of each page held. `None`: a whole image, page `i` is index `i`.
    space: Option<Vec<u64>>,
    /// Size of the image's index space (own stored pages plus its parent's space).
    space_len: u64,
    /// Layers below this one (0: a whole image).
    depth: u32,
}

/// Opens `dir`'s page file and checks its header against `meta` (magic, version, image id,
/// size).
pub fn open_pages(dir: &Path, meta: &Meta) -> Result<(File, PathBuf), ImageError> {
    let path = dir.join(PAGES_FILE);
    let f = File::open(&path).map_err(io_at(&path))?;
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

impl LoadedImage {
    /// The metadata alone (checked), for a restore whose pages come from a page source.
    /// A layer is loaded whole (its parent chain with it): its pages are served from memory.
    pub fn open(dir: &Path) -> Result<LoadedImage, ImageError> {
        let (meta, meta_hash) = read_meta_hashed(dir)?;
        if meta.parent.is_some() {
            return LoadedImage::load(dir);
        }
        Ok(LoadedImage {
            dir: dir.to_path_buf(),
            space_len: meta.pages.count,
            meta,
            pages: Mapping::anonymous(0).map_err(io_at(dir))?,
            loaded: false,
            memfd: std::sync::OnceLock::new(),
            meta_hash,
            space: None,
            depth: 0,
        })
    }

    /// Whether the pages are in memory (`load`), or only the metadata (`open`).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Reads `dir`, checks every chunk hash, and keeps the pages read-only in memory. A
    /// layer's parent is found by the path it recorded (relative to `dir` if relative) and
    /// loaded the same way, recursively.
    pub fn load(dir: &Path) -> Result<LoadedImage, ImageError> {
        Self::load_at(dir, None, 0)
    }

    /// [`LoadedImage::load`] of a layer whose parent the caller already holds (it is checked
    /// to be the layer's parent: id, metadata hash, size). For a whole image, `parent` is
    /// ignored.
    pub fn load_with_parent(dir: &Path, parent: &LoadedImage) -> Result<LoadedImage, ImageError> {
        Self::load_at(dir, Some(parent), 0)
    }

    fn load_at(
        dir: &Path,
        given: Option<&LoadedImage>,
        depth: u32,
    ) -> Result<LoadedImage, ImageError> {
        let (meta, meta_hash) = read_meta_hashed(dir)?;
        let own = Self::read_pages(dir, &meta)?;
        let Some(pref) = meta.parent.clone() else {
            return Ok(LoadedImage {
                dir: dir.to_path_buf(),
                space_len: meta.pages.count,
                meta,
                pages: own,
                loaded: true,
                memfd: std::sync::OnceLock::new(),
                meta_hash,
                space: None,
                depth: 0,
            });
        };
        let perr = |why: String| ImageError::Parent {
            path: dir.to_path_buf(),
            parent: pref.path.clone(),
            why,
        };
        if depth >= MAX_DEPTH {
            return Err(perr(format!(
                "more than {MAX_DEPTH} layers over one image; dump the process whole"
            )));
        }
        let loaded;
        let parent = match given {
            Some(p) => p,
            None => {
                let at = dir.join(&pref.path);
                loaded = Self::load_at(&at, None, depth + 1).map_err(|e| {
                    perr(format!(
                        "the parent cannot be loaded ({}); put it back there or load the layer with LoadedImage::load_with_parent",
                        error_chain(&e)
                    ))
                })?;
                &loaded
            }
        };
        if parent.meta.id != pref.id {
            return Err(perr(format!(
                "{} is another image (id {}, the layer's parent is {})",
                parent.dir.display(),
                super::files::hexs(&parent.meta.id),
                super::files::hexs(&pref.id)
            )));
        }
        if parent.meta_hash != pref.meta_hash || parent.space_len != pref.space {
            return Err(perr(format!(
                "{} has changed since the layer was taken (its metadata differs); the layer cannot be used",
                parent.dir.display()
            )));
        }
        if parent.depth + 1 > MAX_DEPTH {
            return Err(perr(format!(
                "more than {MAX_DEPTH} layers over one image; dump the process whole"
            )));
        }
        let path = dir.join(PAGES_FILE);
        let flat = flatten(&meta, own.as_slice(), parent).map_err(|why| corrupt(&path, why))?;
        let Flat {
            meta: flat_meta,
            mut pages,
            space,
        } = flat;
        pages.seal_read_only().map_err(io_at(&path))?;
        Ok(LoadedImage {
            dir: dir.to_path_buf(),
            space_len: meta.pages.count + pref.space,
            meta: flat_meta,
            pages,
            loaded: true,
            memfd: std::sync::OnceLock::new(),
            meta_hash,
            space: Some(space),
            depth: parent.depth + 1,
        })
    }

    /// The page file's stored pages, every chunk checked, sealed read-only.
    fn read_pages(dir: &Path, meta: &Meta) -> Result<Mapping, ImageError> {
        let (f, path) = open_pages(dir, meta)?;
        let len = (meta.pages.count * PAGE) as usize;
        let mut pages = Mapping::anonymous(len).map_err(io_at(&path))?;
        f.read_exact_at(pages.as_mut_slice(), PAGE)
            .map_err(io_at(&path))?;
        for (i, chunk) in pages
            .as_slice()
            .chunks((CHUNK_PAGES * PAGE) as usize)
            .enumerate()
        {
            if !chunk_ok(meta, i as u64, chunk) {
                return Err(corrupt(&path, chunk_failed(i as u64)));
            }
        }
        pages.seal_read_only().map_err(io_at(&path))?;
        Ok(pages)
    }

    /// BLAKE3 of the image's metadata, as a layer over it records it.
    pub fn meta_hash(&self) -> [u8; 32] {
        self.meta_hash
    }

    /// Size of the image's page index space: its stored pages and its parent's space.
    pub fn space_len(&self) -> u64 {
        self.space_len
    }

    /// Layers below this image (0 for a whole image).
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The index in the image's own index space of held page `i` (`page_data` order).
    pub fn space_index(&self, i: u64) -> u64 {
        match &self.space {
            None => i,
            Some(s) => s.get(i as usize).copied().unwrap_or(u64::MAX),
        }
    }

    /// The held page at address `addr` (page-aligned), if the image has one there: its index
    /// in `page_data` order.
    pub fn page_at(&self, addr: u64) -> Option<u64> {
        let runs = &self.meta.pages.runs;
        let k = runs.partition_point(|r| r.addr + u64::from(r.pages) * PAGE <= addr);
        let r = runs.get(k)?;
        (r.addr <= addr).then(|| r.first + (addr - r.addr) / PAGE)
    }

    /// The stored pages, in page-file order.
    pub fn page_data(&self) -> &[u8] {
        self.pages.as_slice()
    }

    /// The verified pages of the VMAs a mapped restore shares ([`super::Vma::shares_pages`]) in a
    /// memfd sealed against any change, made once: what a mapped restore maps copy-on-write
    /// into every instance. Each page sits at the offset equal to its address, in a sparse
    /// file as large as user space: a mapping grown in place by `mremap` then reaches a
    /// hole of the memfd (a missing-page fault the page server answers with zeros), never
    /// the end of the file (SIGBUS) or another area's pages.
    pub fn memfd(&self) -> Result<std::os::fd::BorrowedFd<'_>, ImageError> {
        use std::os::fd::AsFd;
        let made = self.memfd.get_or_init(|| {
            let name = format!("ember-image-{}", super::files::hexs(&self.meta.id));
            let fd = sys::memfd_exec(&name).map_err(|e| e.to_string())?;
            let f = File::from(fd.try_clone().map_err(|e| e.to_string())?);
            f.set_len(USER_END).map_err(|e| e.to_string())?;
            let data = self.page_data();
            for r in self.meta.pages.runs.iter().filter(|r| {
                self.meta
                    .vmas
                    .iter()
                    .any(|v| v.start <= r.addr && r.addr < v.end && v.shares_pages())
            }) {
                let a = (r.first * PAGE) as usize;
                let b = a + r.pages as usize * PAGE as usize;
                let pages = data.get(a..b).ok_or("a page run outside the page file")?;
                f.write_all_at(pages, r.addr).map_err(|e| e.to_string())?;
            }
            sys::seal(&fd).map_err(|e| e.to_string())?;
            Ok(fd)
        });
        match made {
            Ok(fd) => Ok(fd.as_fd()),
            Err(e) => Err(ImageError::Io {
                path: self.dir.join(PAGES_FILE),
                source: io::Error::other(format!("making the memfd: {e}")),
            }),
        }
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

struct Flat {
    meta: Meta,
    pages: Mapping,
    space: Vec<u64>,
}

/// A layer (`meta`, its own checked pages `own`) over its loaded `parent`, as a whole image:
/// the pages its runs name, in run order. An index into the parent's space must be one of
/// the pages the parent holds (a dump only ever refers to those).
fn flatten(meta: &Meta, own: &[u8], parent: &LoadedImage) -> Result<Flat, String> {
    let count = meta.pages.count;
    let total: u64 = meta.pages.runs.iter().map(|r| u64::from(r.pages)).sum();
    if total > MAX_PAGES {
        return Err(format!("{total} pages named, over the {MAX_PAGES} limit"));
    }
    // Parent space index -> held page.
    let by_space: Option<std::collections::HashMap<u64, u64>> = parent
        .space
        .as_ref()
        .map(|s| s.iter().enumerate().map(|(i, &x)| (x, i as u64)).collect());
    let held = |y: u64| -> Option<u64> {
        match &by_space {
            None => (y < parent.meta.pages.count).then_some(y),
            Some(m) => m.get(&y).copied(),
        }
    };
    let mut pages =
        Mapping::anonymous((total * PAGE) as usize).map_err(|e| format!("allocating: {e}"))?;
    let mut space = Vec::with_capacity(total as usize);
    let mut runs = Vec::with_capacity(meta.pages.runs.len());
    let out = pages.as_mut_slice();
    let pdata = parent.page_data();
    for r in &meta.pages.runs {
        runs.push(super::PageRun {
            first: space.len() as u64,
            ..*r
        });
        for k in 0..u64::from(r.pages) {
            let x = r.first + k;
            let src = if x < count {
                own.get((x * PAGE) as usize..((x + 1) * PAGE) as usize)
            } else {
                let i = held(x - count).ok_or_else(|| {
                    format!(
                        "page {x} (the parent's {}) is not one of the parent's pages",
                        x - count
                    )
                })?;
                pdata.get((i * PAGE) as usize..((i + 1) * PAGE) as usize)
            };
            let src = src.ok_or_else(|| format!("page {x} is outside the page data"))?;
            let at = (space.len() as u64 * PAGE) as usize;
            out[at..at + PAGE as usize].copy_from_slice(src);
            space.push(x);
        }
    }
    let mut flat = meta.clone();
    flat.pages.runs = runs;
    flat.pages.count = total;
    flat.pages.chunks = out
        .chunks((CHUNK_PAGES * PAGE) as usize)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect();
    Ok(Flat {
        meta: flat,
        pages,
        space,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::{
        AltStack, Fd, FileId, ITimer, Ident, MmFields, PageIndex, PageRun, PosixTimer, ProcState,
        Requires, Source, Task, VdsoLayout, Vma,
    };

    /// A small consistent image (one file mapping, a heap of two stored pages).
    pub(crate) fn sample() -> (Meta, Vec<u8>) {
        let meta = Meta {
            id: [7; 16],
            created: 1,
            parent: None,
            source: Source {
                pid: 1,
                comm: "t".into(),
                exe: "/bin/t".into(),
                kernel: "k".into(),
            },
            requires: Requires {
                vdso: VdsoLayout {
                    areas: vec![("[vdso]".into(), 0x7000_0000, 0x7000_2000)],
                    vdso_hash: [1; 32],
                },
                xfeatures: 7,
                xstate_size: 2432,
                cpu_features: vec!["avx".into()],
            },
            files: vec![FileId {
                path: "/bin/t".into(),
                size: 10,
                mtime_ns: 5,
                ident: Ident::BuildId(vec![1, 2, 3]),
            }],
            vmas: vec![
                Vma {
                    start: 0x40_0000,
                    end: 0x40_1000,
                    prot: 5,
                    shared: false,
                    kind: VmaKind::File { file: 0, offset: 0 },
                    flags: 0,
                    name: None,
                },
                Vma {
                    start: 0x50_0000,
                    end: 0x50_2000,
                    prot: 3,
                    shared: false,
                    kind: VmaKind::Heap,
                    flags: 0,
                    name: None,
                },
            ],
            pages: PageIndex {
                runs: vec![PageRun {
                    addr: 0x50_0000,
                    pages: 2,
                    first: 0,
                }],
                count: 2,
                chunks: Vec::new(),
            },
            task: Task {
                regs: vec![0; 27],
                xstate: vec![0; 64],
                sigmask: 0,
                sigactions: Vec::new(),
                sigaltstack: AltStack::default(),
                tid_address: 0,
                robust_list: (0, 0),
                rseq: None,
                glibc_tid_offset: None,
                syscall_insn: 0x40_0010,
                personality: 0,
                umask: 0o22,
                cwd: "/".into(),
                comm: "t".into(),
                creds: crate::creds::Creds::default(),
                tid: 1,
            },
            mm: MmFields::default(),
            fds: vec![Fd {
                fd: 0,
                cloexec: false,
                kind: FdKind::Inherited {
                    what: "pipe".into(),
                },
            }],
            process: ProcState {
                rlimits: vec![(7, 1024, 4096)],
                seccomp: vec![vec![6, 0x7fff_0000_0000_0006]],
                pending_thread: vec![vec![1; 128]],
                itimers: vec![ITimer::default(); 3],
                timers: vec![PosixTimer::default()],
                ..ProcState::default()
            },
        };
        (meta, vec![0xab; 2 * PAGE as usize])
    }

    #[test]
    fn an_image_round_trips() {
        let d = tempfile::tempdir().unwrap();
        let (mut m, pages) = sample();
        write_image(d.path(), &mut m, &pages).unwrap();
        let img = LoadedImage::load(d.path()).unwrap();
        assert_eq!(img.meta, m);
        assert_eq!(img.page_data(), &pages[..]);
    }

    /// Every byte of the metadata flipped, with the hash made to match again (a hostile
    /// writer, not a disk error): loading refuses or accepts a consistent image, never panics.
    #[test]
    fn hostile_metadata_never_panics_the_loader() {
        let d = tempfile::tempdir().unwrap();
        let (mut m, pages) = sample();
        write_image(d.path(), &mut m, &pages).unwrap();
        let good = std::fs::read(d.path().join(META_FILE)).unwrap();
        let body_len = good.len() - META_HEADER;
        let mut refused = 0;
        for i in 0..body_len {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[META_HEADER + i] ^= flip;
                let hash = *blake3::hash(&bad[META_HEADER..]).as_bytes();
                bad[24..56].copy_from_slice(&hash);
                std::fs::write(d.path().join(META_FILE), &bad).unwrap();
                if LoadedImage::load(d.path()).is_err() {
                    refused += 1;
                }
            }
        }
        // Register values, sizes and names may take any value; ids, indices, addresses and
        // the encoding itself may not.
        assert!(
            refused > body_len / 2,
            "only {refused} of {} refused",
            3 * body_len
        );
    }

    #[test]
    fn a_working_set_round_trips_and_a_bad_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut m, pages) = sample();
        write_image(d.path(), &mut m, &pages).unwrap();
        assert_eq!(read_working_set(d.path(), &m).unwrap(), None);
        write_working_set(d.path(), &m, &[1, 0, 1, 99]).unwrap();
        assert_eq!(read_working_set(d.path(), &m).unwrap(), Some(vec![1, 0]));
        let f = d.path().join(WORKING_SET_FILE);
        let mut raw = std::fs::read(&f).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&f, &raw).unwrap();
        let e = read_working_set(d.path(), &m).unwrap_err().to_string();
        assert!(
            e.contains("workingset") && e.contains("hash mismatch"),
            "{e}"
        );
    }

    /// New fields are checked: area flags, names, shared descriptors, descriptor flags.
    #[test]
    fn bad_flags_names_and_descriptors_are_refused() {
        let d = tempfile::tempdir().unwrap();
        type Break = fn(&mut Meta);
        let cases: [(&str, Break); 6] = [
            ("unknown flags", |m| m.vmas[1].flags = 1 << 30),
            ("wipes on fork", |m| m.vmas[0].flags = vma_flags::WIPEONFORK),
            ("named but not anonymous", |m| {
                m.vmas[1].name = Some("x".into())
            }),
            ("descriptor 0 has unknown flags", |m| {
                m.fds[0].kind = FdKind::File {
                    file: 0,
                    pos: 0,
                    flags: libc::O_CREAT as u32,
                }
            }),
            ("shares descriptor 0", |m| {
                m.fds.push(crate::image::Fd {
                    fd: 3,
                    cloexec: false,
                    kind: FdKind::Dup { of: 0 },
                })
            }),
            ("out of order", |m| {
                let first = m.fds[0].clone();
                m.fds.push(first)
            }),
        ];
        for (want, break_it) in cases {
            let (mut m, pages) = sample();
            break_it(&mut m);
            write_image(d.path(), &mut m, &pages).unwrap();
            let e = read_meta(d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        let (mut m, pages) = sample();
        m.vmas.insert(
            1,
            crate::image::Vma {
                start: 0x48_0000,
                end: 0x48_1000,
                prot: 3,
                shared: false,
                kind: VmaKind::Anon,
                flags: vma_flags::GROWSDOWN | vma_flags::LOCKED | vma_flags::WIPEONFORK,
                name: Some("a name".into()),
            },
        );
        write_image(d.path(), &mut m, &pages).unwrap();
        assert_eq!(read_meta(d.path()).unwrap(), m);
        m.vmas[1].name = Some("[bad]".into());
        write_image(d.path(), &mut m, &pages).unwrap();
        let e = read_meta(d.path()).unwrap_err().to_string();
        assert!(e.contains("invalid name"), "{e}");
    }

    /// Writes `sample()` with distinct pages as the parent at `dir/p`, and a layer over it
    /// at `dir/l` whose first page is the parent's second and second page its own.
    fn layered(dir: &Path) -> (PathBuf, PathBuf, Meta) {
        let (mut pm, _) = sample();
        let mut pdata = vec![0x11u8; PAGE as usize];
        pdata.extend(vec![0x22u8; PAGE as usize]);
        let p = dir.join("p");
        write_image(&p, &mut pm, &pdata).unwrap();
        let (_, hash) = read_meta_hashed(&p).unwrap();
        let (mut lm, _) = sample();
        lm.id = [9; 16];
        lm.parent = Some(crate::image::ParentRef {
            id: pm.id,
            meta_hash: hash,
            space: 2,
            path: p.display().to_string(),
        });
        lm.pages.runs = vec![
            PageRun {
                addr: 0x50_0000,
                pages: 1,
                first: 1 + 1,
            },
            PageRun {
                addr: 0x50_1000,
                pages: 1,
                first: 0,
            },
        ];
        let l = dir.join("l");
        write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
        (p, l, lm)
    }

    #[test]
    fn a_layer_loads_flattened_over_its_parent() {
        let d = tempfile::tempdir().unwrap();
        let (p, l, _) = layered(d.path());
        let img = LoadedImage::load(&l).unwrap();
        assert_eq!(img.depth(), 1);
        assert_eq!(img.meta.pages.count, 2);
        assert_eq!(img.page_at(0x50_0000), Some(0));
        assert_eq!(img.page_data()[0], 0x22);
        assert_eq!(img.page_data()[PAGE as usize], 0x33);
        assert_eq!((img.space_index(0), img.space_index(1)), (2, 0));
        assert!(chunk_ok(&img.meta, 0, img.page_data()));
        let parent = LoadedImage::load(&p).unwrap();
        let again = LoadedImage::load_with_parent(&l, &parent).unwrap();
        assert_eq!(again.page_data(), img.page_data());
        // Not from its page file: it holds only the layer's own page.
        let e = crate::lazy::FileSource::open(&l, &img.meta).err().unwrap();
        assert!(e.to_string().contains("is a layer"), "{e}");
    }

    #[test]
    fn a_layer_pointing_past_its_index_space_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (_, l, mut lm) = layered(d.path());
        lm.pages.runs[0].first = 3;
        write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
        let e = read_meta(&l).unwrap_err().to_string();
        assert!(e.contains("index space of 3"), "{e}");
        lm.pages.runs[0].first = 1;
        lm.parent.as_mut().unwrap().space = u64::MAX;
        write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
        let e = read_meta(&l).unwrap_err().to_string();
        assert!(e.contains("parent's index space"), "{e}");
    }

    #[test]
    fn more_than_eight_layers_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (_, mut below, _) = layered(d.path());
        // Each new layer: every page its parent's.
        for depth in 2..=MAX_DEPTH + 1 {
            let (meta, hash) = read_meta_hashed(&below).unwrap();
            let img = LoadedImage::load(&below);
            let (mut m, _) = sample();
            m.id = [depth as u8 + 20; 16];
            m.parent = Some(crate::image::ParentRef {
                id: meta.id,
                meta_hash: hash,
                space: meta.pages.count + meta.parent.as_ref().unwrap().space,
                path: below.display().to_string(),
            });
            // The pages the parent holds: its space indices 2 and 0 (as in `layered`).
            m.pages.runs = vec![
                PageRun {
                    addr: 0x50_0000,
                    pages: 1,
                    first: 2,
                },
                PageRun {
                    addr: 0x50_1000,
                    pages: 1,
                    first: 0,
                },
            ];
            let at = d.path().join(format!("l{depth}"));
            write_image(&at, &mut m, &[]).unwrap();
            let loaded = LoadedImage::load(&at);
            if depth <= MAX_DEPTH {
                assert!(img.is_ok());
                assert_eq!(loaded.unwrap().depth(), depth);
            } else {
                let e = loaded.err().unwrap().to_string();
                assert!(e.contains("more than 8 layers"), "{e}");
            }
            below = at;
        }
    }

    /// Every byte of a layer's metadata flipped (hash made to match): loading it over its
    /// parent refuses or accepts, never panics.
    #[test]
    fn hostile_layer_metadata_never_panics_the_loader() {
        let d = tempfile::tempdir().unwrap();
        let (p, l, _) = layered(d.path());
        let parent = LoadedImage::load(&p).unwrap();
        let good = std::fs::read(l.join(META_FILE)).unwrap();
        for i in META_HEADER..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let hash = *blake3::hash(&bad[META_HEADER..]).as_bytes();
                bad[24..56].copy_from_slice(&hash);
                std::fs::write(l.join(META_FILE), &bad).unwrap();
                let _ = LoadedImage::load_with_parent(&l, &parent);
                let _ = LoadedImage::load(&l);
            }
        }
    }

    #[test]
    fn runs_outside_private_memory_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut m, pages) = sample();
        m.pages.runs[0].addr = 0x40_0000 - PAGE;
        write_image(d.path(), &mut m, &pages).unwrap();
        let e = read_meta(d.path()).unwrap_err().to_string();
        assert!(e.contains("outside the image's private memory"), "{e}");
    }

    /// Process-wide state past its caps (an image the dump would have refused, or a
    /// hostile one) is refused by name when the image is read.
    #[test]
    fn process_state_past_its_caps_is_refused() {
        let d = tempfile::tempdir().unwrap();
        type Spoil = fn(&mut ProcState);
        let cases: [(Spoil, &str); 5] = [
            (
                |p| p.pending_process = vec![vec![0; 128]; MAX_PENDING + 1],
                "queued signals",
            ),
            (|p| p.pending_thread = vec![vec![0; 64]], "queued signals"),
            (|p| p.seccomp = vec![vec![6]; MAX_FILTERS + 1], "seccomp"),
            (|p| p.seccomp = vec![vec![6; MAX_FILTER_LEN + 1]], "seccomp"),
            (|p| p.rlimits = vec![(16, 0, 0)], "resource limits"),
        ];
        for (spoil, what) in cases {
            let (mut m, pages) = sample();
            spoil(&mut m.process);
            write_image(d.path(), &mut m, &pages).unwrap();
            let e = read_meta(d.path()).unwrap_err().to_string();
            assert!(e.contains("is corrupted") && e.contains(what), "{e}");
        }
    }
}
