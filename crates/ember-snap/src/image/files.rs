//! File identity: what a restore checks before mapping a file the image was built against.
//!
//! An ELF file is identified by its GNU build-id; anything else by a BLAKE3 hash of its
//! content; its size is checked too. Its modification time is recorded but not compared: the
//! same package installed on two nodes has the same content and other times, and an image
//! taken on one is restored on the other (the snapshot store). Checking the content costs (a
//! build-id is a few reads, a hash reads the file), so a verified file is remembered by
//! (device, inode, size, mtime, ctime): any write changes ctime, which nobody can set back.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use object::{Object, read::ReadCache};
use serde::{Deserialize, Serialize};

/// How a file was identified at dump time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum Ident {
    BuildId(Vec<u8>),
    Blake3([u8; 32]),
    /// A file the image only holds open (a log, a directory, `/dev/null`): reopened by path
    /// without a content check, never read at dump (a device has no end to read to).
    Unchecked,
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ident::BuildId(b) => write!(f, "build-id {}", hexs(b)),
            Ident::Blake3(h) => write!(f, "blake3 {}", hexs(&h[..8])),
            Ident::Unchecked => write!(f, "no content check"),
        }
    }
}

pub fn hexs(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileId {
    pub path: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub ident: Ident,
}

/// Why a file does not match an image.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}")]
    Io { path: String, source: io::Error },
    #[error("{path} changed since the image was taken ({what}); rebuild the image")]
    Changed { path: String, what: String },
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_string(),
        source,
    }
}

fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    md.mtime() * 1_000_000_000 + md.mtime_nsec()
}

/// Identifies `real` (the file as this process reaches it) under the name `path`.
pub fn identify(path: &str, real: &Path) -> Result<FileId, FileError> {
    let file = File::open(real).map_err(io_err(path))?;
    let md = file.metadata().map_err(io_err(path))?;
    identify_observed(path, file, Observed::of_metadata(&md))
}

/// Identifies `file` (opened earlier under the name `path`), refusing it when it is no
/// longer what `seen` (its `stat` taken while the process was stopped) describes, before or
/// after its content is read: the content read must be the content the process had.
pub fn identify_observed(path: &str, file: File, seen: Observed) -> Result<FileId, FileError> {
    let changed = || FileError::Changed {
        path: path.to_string(),
        what: "it was replaced or written while the dump ran; dump again".into(),
    };
    let md = file.metadata().map_err(io_err(path))?;
    if Observed::of_metadata(&md) != seen {
        return Err(changed());
    }
    let copy = file.try_clone().map_err(io_err(path))?;
    let ident = ident_of(file).map_err(io_err(path))?;
    let after = copy.metadata().map_err(io_err(path))?;
    if Observed::of_metadata(&after) != seen {
        return Err(changed());
    }
    Ok(FileId {
        path: path.to_string(),
        size: md.len(),
        mtime_ns: mtime_ns(&md),
        ident,
    })
}

/// The identity of a file the image only holds open: what a `stat` said, no content.
pub fn unchecked(path: &str, md: &std::fs::Metadata) -> FileId {
    FileId {
        path: path.to_string(),
        size: md.len(),
        mtime_ns: mtime_ns(md),
        ident: Ident::Unchecked,
    }
}

fn ident_of(mut file: File) -> io::Result<Ident> {
    // Only a regular file has an end: a device (`/dev/zero`) would be read forever.
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file: only regular files are identified by their content",
        ));
    }
    {
        let cache = ReadCache::new(&mut file);
        if let Ok(obj) = object::File::parse(&cache)
            && let Ok(Some(id)) = obj.build_id()
            && !id.is_empty()
        {
            return Ok(Ident::BuildId(id.to_vec()));
        }
    }
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Ident::Blake3(*h.finalize().as_bytes()))
}

type Key = (u64, u64, u64, i64, i64);

fn verified() -> &'static Mutex<HashMap<Key, Ident>> {
    static V: OnceLock<Mutex<HashMap<Key, Ident>>> = OnceLock::new();
    V.get_or_init(|| Mutex::new(HashMap::new()))
}

/// What a `stat` of a file says, as far as identity goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Observed {
    pub fn of_metadata(md: &std::fs::Metadata) -> Observed {
        Observed {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime_ns: mtime_ns(md),
            ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        }
    }

    pub fn of_stat(st: &libc::stat) -> Observed {
        Observed {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
        }
    }
}

/// Checks that `real` is still the file `want` describes.
pub fn verify(want: &FileId, real: &Path) -> Result<(), FileError> {
    let md = std::fs::metadata(real).map_err(io_err(&want.path))?;
    verify_observed(want, Observed::of_metadata(&md), || File::open(real))
}

/// Checks that the file a process opened (`seen`, from its `fstat`) is the one `want`
/// describes. Its content is read (through `open`, which must reach the same inode) only
/// the first time this (device, inode, size, mtime, ctime) is seen.
pub fn verify_observed(
    want: &FileId,
    seen: Observed,
    open: impl FnOnce() -> io::Result<File>,
) -> Result<(), FileError> {
    let path = want.path.as_str();
    let changed = |what: String| FileError::Changed {
        path: path.to_string(),
        what,
    };
    if seen.size != want.size {
        return Err(changed(format!(
            "size {} bytes, image has {}",
            seen.size, want.size
        )));
    }
    let key = (seen.dev, seen.ino, seen.size, seen.mtime_ns, seen.ctime_ns);
    let cached = verified().lock().ok().and_then(|m| m.get(&key).cloned());
    let ident = match cached {
        Some(i) => i,
        None => {
            let file = open().map_err(io_err(path))?;
            let md = file.metadata().map_err(io_err(path))?;
            if Observed::of_metadata(&md) != seen {
                return Err(changed(
                    "it was replaced or written while being checked".into(),
                ));
            }
            let i = ident_of(file).map_err(io_err(path))?;
            if let Ok(mut m) = verified().lock() {
                m.insert(key, i.clone());
            }
            i
        }
    };
    if ident != want.ident {
        return Err(changed(format!("{ident}, image has {}", want.ident)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_files_use_build_id_and_others_a_hash() {
        let libc_path = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        let id = identify(libc_path, Path::new(libc_path)).unwrap();
        assert!(
            matches!(id.ident, Ident::BuildId(ref b) if b.len() >= 16),
            "{id:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data");
        std::fs::write(&p, b"hello").unwrap();
        let id = identify("data", &p).unwrap();
        assert_eq!(id.ident, Ident::Blake3(*blake3::hash(b"hello").as_bytes()));
        verify(&id, &p).unwrap();
    }

    #[test]
    fn a_changed_file_is_refused_even_with_the_same_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data");
        std::fs::write(&p, b"hello").unwrap();
        let id = identify("data", &p).unwrap();
        verify(&id, &p).unwrap();
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::fs::write(&p, b"jello").unwrap();
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let err = verify(&id, &p).unwrap_err().to_string();
        assert!(err.contains("data changed"), "{err}");
        std::fs::write(&p, b"hello!").unwrap();
        let err = verify(&id, &p).unwrap_err().to_string();
        assert!(err.contains("size 6 bytes"), "{err}");
    }

    /// A device is never read: /dev/zero has no end.
    #[test]
    fn a_device_is_refused_not_read() {
        let err = identify("/dev/zero", Path::new("/dev/zero")).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("not a regular file"), "{chain}");
        let want = FileId {
            path: "/dev/zero".into(),
            size: 0,
            mtime_ns: mtime_ns(&std::fs::metadata("/dev/zero").unwrap()),
            ident: Ident::Unchecked,
        };
        assert!(verify(&want, Path::new("/dev/zero")).is_err());
    }

    /// A file written between the frozen `stat` and the hash is refused.
    #[test]
    fn a_file_changed_since_it_was_observed_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data");
        std::fs::write(&p, b"hello").unwrap();
        let seen = Observed::of_metadata(&std::fs::metadata(&p).unwrap());
        identify_observed("data", File::open(&p).unwrap(), seen).unwrap();
        let held = File::open(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&p, b"hellO").unwrap();
        let err = identify_observed("data", held, seen)
            .unwrap_err()
            .to_string();
        assert!(err.contains("while the dump ran"), "{err}");
    }
}
