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
    let f = match open_regular(&path) {
        Ok(f) => f,
        Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // At most the header and a u64 for each of the image's pages.
    let mut raw = Vec::new();
    f.take(48 + 8 * meta.pages.count + 1)
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
pub(crate) mod tests {
    use super::*;
    use crate::image::{
        AltStack, Fd, FileId, ITimer, Ident, MmFields, PageIndex, PageRun, PosixTimer, ProcState,
        Requires, Source, Task, VdsoLayout, Vma,
    };
    use crate::image::{FdKind, VmaKind, vma_flags};

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
        let e = e.to_string();
        assert!(
            e.contains("is a layer") && e.contains("--source memory"),
            "{e}"
        );
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

    /// Runs `f` on its own thread: its answer, or a failure if it takes over 30 s (a hostile
    /// image must not hang the loader).
    fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{what} did not answer in 30 s ({e})"))
    }

    /// 2^20 descriptors, the upper half sharing the last reopened file: checked by binary
    /// search, not a scan of the list per descriptor (2.7e11 comparisons, hours).
    #[test]
    fn a_million_shared_descriptors_are_checked_quickly() {
        let (mut m, _) = sample();
        m.pages.chunks = vec![[0; 32]];
        let n = 1 << 20;
        m.fds = (0..=n)
            .map(|fd| Fd {
                fd,
                cloexec: false,
                kind: if fd < n / 2 {
                    FdKind::File {
                        file: 0,
                        pos: 0,
                        flags: 0,
                    }
                } else {
                    FdKind::Dup { of: n / 2 - 1 }
                },
            })
            .collect();
        within("validate", move || validate(&m)).unwrap();
    }

    /// 2^20 one-page areas and a page run in each of the upper half: each run's area found
    /// by binary search, not a scan of the areas per run.
    #[test]
    fn a_million_page_runs_are_checked_quickly() {
        let (mut m, _) = sample();
        let n: u64 = 1 << 20;
        let base = 0x1000_0000;
        m.vmas.truncate(1);
        m.vmas.extend((0..n).map(|i| Vma {
            start: base + i * PAGE,
            end: base + (i + 1) * PAGE,
            prot: 3,
            shared: false,
            kind: VmaKind::Anon,
            flags: 0,
            name: None,
        }));
        m.pages.runs = (0..n / 2)
            .map(|i| PageRun {
                addr: base + (n / 2 + i) * PAGE,
                pages: 1,
                first: i,
            })
            .collect();
        m.pages.count = n / 2;
        m.pages.chunks = vec![[0; 32]; (n / 2).div_ceil(CHUNK_PAGES) as usize];
        within("validate", move || validate(&m)).unwrap();
    }

    /// A layer whose runs name one page (the parent's, or its own) at two addresses is
    /// refused: a few bytes of runs cannot make the loader copy gigabytes.
    #[test]
    fn a_layer_naming_a_page_twice_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (p, l, mut lm) = layered(d.path());
        let parent = LoadedImage::load(&p).unwrap();
        for first in [2, 0] {
            for r in &mut lm.pages.runs {
                r.first = first;
            }
            write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
            let e = LoadedImage::load_with_parent(&l, &parent).err().unwrap();
            let e = e.to_string();
            assert!(
                e.contains(&format!("page {first} is named by two runs")),
                "{e}"
            );
        }
    }

    /// A NUMA policy area must be page-aligned, in order and whole inside one of the image's
    /// areas: `mbind` never reaches the restorer's memory or the vDSO.
    #[test]
    fn numa_policy_areas_outside_the_image_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let area = |start: u64, end: u64| crate::image::AreaPolicy {
            start,
            end,
            policy: crate::image::MemPolicy {
                mode: 1,
                nodes: vec![1],
            },
        };
        let heap = area(0x50_0000, 0x50_2000);
        let cases = [
            vec![area(0x50_0000, 0x50_1800)],
            vec![area(0x7000_0000, 0x7000_1000)],
            vec![area(0x40_0000, 0x50_1000)],
            vec![area(0x50_1000, 0x50_2000), area(0x50_0000, 0x50_1000)],
            vec![heap.clone(), heap.clone()],
            vec![area(USER_END - PAGE, USER_END + PAGE)],
        ];
        for areas in cases {
            let (mut m, pages) = sample();
            m.process.area_policies = areas.clone();
            write_image(d.path(), &mut m, &pages).unwrap();
            let e = read_meta(d.path()).unwrap_err().to_string();
            assert!(e.contains("NUMA policy area"), "{areas:?}: {e}");
        }
        let (mut m, pages) = sample();
        m.process.area_policies = vec![area(0x40_0000, 0x40_1000), heap];
        write_image(d.path(), &mut m, &pages).unwrap();
        assert_eq!(read_meta(d.path()).unwrap(), m);
    }

    /// A layer's parent path is a plain one: no `.` or `..` anywhere.
    #[test]
    fn a_parent_path_with_dots_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (p, l, mut lm) = layered(d.path());
        for bad in ["../p", "x/../../p", "/a/../p", "./p", ""] {
            lm.parent.as_mut().unwrap().path = bad.into();
            write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
            let e = LoadedImage::load(&l).err().unwrap().to_string();
            assert!(e.contains(&format!("parent path {bad:?}")), "{e}");
        }
        // Relative to the layer's directory, below it.
        std::fs::rename(&p, l.join("p")).unwrap();
        lm.parent.as_mut().unwrap().path = "p".into();
        write_image(&l, &mut lm, &vec![0x33u8; PAGE as usize]).unwrap();
        assert_eq!(LoadedImage::load(&l).unwrap().depth(), 1);
    }

    /// A FIFO or a device in place of `meta`, `pages` or `workingset` (of an image or of a
    /// layer's parent) is refused by name; opening it does not block.
    #[test]
    fn a_fifo_or_device_in_place_of_an_image_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (p, l, _) = layered(d.path());
        let (m, _) = read_meta_hashed(&p).unwrap();
        for name in [META_FILE, PAGES_FILE, WORKING_SET_FILE] {
            for device in [true, false] {
                let at = p.join(name);
                let _ = std::fs::remove_file(&at);
                if device {
                    std::os::unix::fs::symlink("/dev/zero", &at).unwrap();
                } else {
                    let made = std::process::Command::new("mkfifo").arg(&at).status();
                    assert!(made.unwrap().success());
                }
                let (pd, ld, m2) = (p.clone(), l.clone(), m.clone());
                let errors = within("loading", move || {
                    [
                        read_working_set(&pd, &m2).err(),
                        LoadedImage::load(&pd).err(),
                        LoadedImage::load(&ld).err(),
                    ]
                    .map(|e| e.map(|e| error_chain(&e)))
                });
                let wanted = format!("{} is not an Ember image: not a regular file", at.display());
                let refused = match name {
                    WORKING_SET_FILE => &errors[..1],
                    _ => &errors[1..],
                };
                for e in refused {
                    let e = e.as_deref().unwrap_or("accepted");
                    assert!(e.contains(&wanted), "{name}: {e}");
                }
            }
            // Put the real file back.
            let (mut pm, _) = sample();
            let mut pdata = vec![0x11u8; PAGE as usize];
            pdata.extend(vec![0x22u8; PAGE as usize]);
            std::fs::remove_file(p.join(name)).unwrap();
            write_image(&p, &mut pm, &pdata).unwrap();
        }
    }

    /// An error and its sources, one line (as the CLI prints it).
    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s = format!("{s}: {c}");
            cur = c.source();
        }
        s
    }

    /// POSIX timers only on realtime, monotonic, boottime and the process's own CPU clocks:
    /// not an `_ALARM` clock (a timer is made as root, before a handoff drops it), not
    /// another process's CPU time.
    #[test]
    fn timers_on_other_clocks_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let thread_sched = -2;
        for (clock, ok) in [
            (libc::CLOCK_REALTIME, true),
            (libc::CLOCK_MONOTONIC, true),
            (libc::CLOCK_BOOTTIME, true),
            (-6, true),
            (thread_sched, true),
            (libc::CLOCK_REALTIME_ALARM, false),
            (libc::CLOCK_BOOTTIME_ALARM, false),
            (libc::CLOCK_TAI, false),
            (-5, false),
            (!1 << 3 | 2, false),
            (i32::MAX, false),
        ] {
            let (mut m, pages) = sample();
            m.process.timers[0].clock = clock;
            write_image(d.path(), &mut m, &pages).unwrap();
            match read_meta(d.path()) {
                Ok(_) => assert!(ok, "clock {clock} accepted"),
                Err(e) => {
                    let e = e.to_string();
                    assert!(!ok && e.contains(&format!("uses clock {clock}")), "{e}");
                }
            }
        }
    }

    /// A layer whose parent is gone says where to put it back.
    #[test]
    fn a_missing_parent_is_named_with_where_to_put_it() {
        let d = tempfile::tempdir().unwrap();
        let (p, l, _) = layered(d.path());
        std::fs::remove_dir_all(&p).unwrap();
        let e = LoadedImage::load(&l).err().unwrap().to_string();
        let want = format!("put the parent image back at {}", p.display());
        assert!(e.contains(&want), "{e}");
    }
}
