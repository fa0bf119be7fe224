//! Function code: zip archives checked and unpacked in a staging directory, then stored
//! content-addressed under `code/<blake3 of the tree>`.
//!
//! An archive is refused (and its staging directory removed) when an entry has an absolute
//! path or a `..` component, is a symlink whose target leaves the tree, is a device, fifo or
//! socket, when it has more than [`Limits::max_entries`] entries, or when it expands to more
//! than [`Limits::max_ratio`] times its own size. Zip has no hardlinks; symlinks are created
//! last, so no file is ever written through one.
//!
//! The tree hash covers, in path order, each entry's kind, path, executable bit and content
//! (or link target), so the same code always lands in the same directory. The node then
//! compiles the Python files in place (hash-checked `.pyc` in `__pycache__`, outside the tree
//! hash), since instances see their code read-only.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_ratio: u64,
    /// Unpacked bytes never exceed this, whatever the ratio allows.
    pub max_unpacked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 10_000,
            max_ratio: 100,
            max_unpacked: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("the code archive is not a valid zip file: {0}")]
    NotZip(String),
    #[error("archive entry {entry:?} is refused: {rule}")]
    Entry { entry: String, rule: &'static str },
    #[error("the archive has {0} entries; at most {1} are allowed")]
    TooManyEntries(usize, usize),
    #[error(
        "the archive expands past {limit} bytes ({ratio}x its size of {size} bytes is the limit)"
    )]
    TooLarge { limit: u64, ratio: u64, size: u64 },
    #[error("the archive is empty")]
    Empty,
    #[error("storing code under {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CodeError {
    /// True when the archive itself is at fault (the user's mistake), not the server.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, CodeError::Io { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CodeError + '_ {
    move |source| CodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct CodeStore {
    root: PathBuf,
    staging: PathBuf,
    limits: Limits,
}

/// Removes a staging directory however unpacking ends.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        if self.0.exists()
            && let Err(e) = fs::remove_dir_all(&self.0)
        {
            tracing::warn!(path = %self.0.display(), "removing a staging directory failed: {e}");
        }
    }
}

impl CodeStore {
    /// Opens the store under `home`, removing staging directories a crash left behind.
    pub fn open(home: &Path, limits: Limits) -> Result<CodeStore, CodeError> {
        let root = home.join("code");
        let staging = home.join("staging");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        Ok(CodeStore {
            root,
            staging,
            limits,
        })
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.root.join(hash)
    }

    /// Checks and unpacks `zip`, stores it, and returns its tree hash. Blocking.
    pub fn add_zip(&self, zip: &[u8]) -> Result<String, CodeError> {
        let stage = Staging(self.staging.join(uuid::Uuid::new_v4().simple().to_string()));
        fs::create_dir(&stage.0).map_err(io_err(&stage.0))?;
        unpack(zip, &stage.0, self.limits)?;
        let hash = tree_hash(&stage.0)?;
        let dest = self.path(&hash);
        if !dest.exists() {
            fs::rename(&stage.0, &dest).map_err(io_err(&dest))?;
            fsync_dir(&self.root)?;
        }
        Ok(hash)
    }

    /// Removes stored code that no function refers to any more.
    pub fn retain(&self, keep: &HashSet<String>) -> Result<usize, CodeError> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                fs::remove_dir_all(entry.path()).map_err(io_err(&entry.path()))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn fsync_dir(dir: &Path) -> Result<(), CodeError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Checks an entry name and turns it into a relative path inside the tree.
fn entry_path(raw: &[u8]) -> Result<PathBuf, &'static str> {
    let name = std::str::from_utf8(raw).map_err(|_| "its name is not UTF-8")?;
    if name.contains('\0') || name.contains('\\') {
        return Err("its name contains NUL or a backslash");
    }
    if name.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    let mut out = PathBuf::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("'..' components are not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed");
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("its name is empty");
    }
    Ok(out)
}

/// True when `target`, a symlink at `link` (both relative to the tree), stays in the tree.
fn link_stays_inside(link: &Path, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in Path::new(target).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

fn unpack(zip: &[u8], dest: &Path, limits: Limits) -> Result<(), CodeError> {
    let mut archive =
        zip::ZipArchive::new(io::Cursor::new(zip)).map_err(|e| CodeError::NotZip(e.to_string()))?;
    if archive.len() > limits.max_entries {
        return Err(CodeError::TooManyEntries(archive.len(), limits.max_entries));
    }
    if archive.is_empty() {
        return Err(CodeError::Empty);
    }
    let size = zip.len() as u64;
    let budget = size
        .saturating_mul(limits.max_ratio)
        .min(limits.max_unpacked);
    let too_large = || CodeError::TooLarge {
        limit: budget,
        ratio: limits.max_ratio,
        size,
    };
    let mut written: u64 = 0;
    let mut links = Vec::new();
    for i in 0..archive.len() {
        let mut f = archive
            .by_index(i)
            .map_err(|e| CodeError::NotZip(e.to_string()))?;
        let shown = String::from_utf8_lossy(f.name_raw()).into_owned();
        let refuse = |rule| CodeError::Entry {
            entry: shown.clone(),
            rule,
        };
        let rel = entry_path(f.name_raw()).map_err(refuse)?;
        if f.encrypted() {
            return Err(refuse("encrypted entries are not supported"));
        }
        let mode = f.unix_mode().unwrap_or(0);
        let kind = mode & S_IFMT;
        if kind != 0 && kind != S_IFREG && kind != S_IFDIR && kind != S_IFLNK {
            return Err(refuse("device files, fifos and sockets are not allowed"));
        }
        written = written.saturating_add(f.size());
        if written > budget {
            return Err(too_large());
        }
        let path = dest.join(&rel);
        if f.is_dir() {
            fs::create_dir_all(&path).map_err(io_err(&path))?;
            continue;
        }
        let mut content = Vec::new();
        let declared = f.size();
        let n = (&mut f)
            .take(budget - (written - declared) + 1)
            .read_to_end(&mut content)
            .map_err(|e| CodeError::NotZip(format!("entry {shown:?}: {e}")))?
            as u64;
        if n > declared {
            // The header lied about the size: count what really came out.
            written = written - declared + n;
            if written > budget {
                return Err(too_large());
            }
        }
        if kind == S_IFLNK || f.is_symlink() {
            let target =
                String::from_utf8(content).map_err(|_| refuse("symlink target is not UTF-8"))?;
            if !link_stays_inside(&rel, &target) {
                return Err(refuse("symlinks must point inside the archive"));
            }
            links.push((path, target));
            continue;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let exec = mode & 0o111 != 0;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc_o_nofollow())
            .mode(if exec { 0o755 } else { 0o644 })
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => refuse("the archive holds this path twice"),
                _ => CodeError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        out.write_all(&content).map_err(io_err(&path))?;
        out.sync_all().map_err(io_err(&path))?;
    }
    for (path, target) in links {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        std::os::unix::fs::symlink(&target, &path).map_err(io_err(&path))?;
    }
    Ok(())
}

fn libc_o_nofollow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// BLAKE3 over the tree's entries in path order.
fn tree_hash(root: &Path) -> Result<String, CodeError> {
    let mut entries = Vec::new();
    walk(root, Path::new(""), &mut entries)?;
    entries.sort();
    let mut h = blake3::Hasher::new();
    for rel in entries {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
        let rel_bytes = rel.to_string_lossy();
        h.update(&(rel_bytes.len() as u64).to_le_bytes());
        h.update(rel_bytes.as_bytes());
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).map_err(io_err(&path))?;
            h.update(b"L");
            h.update(target.to_string_lossy().as_bytes());
        } else if meta.is_dir() {
            h.update(b"D");
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            h.update(if exec { b"X" } else { b"F" });
            let mut f = fs::File::open(&path).map_err(io_err(&path))?;
            let mut fh = blake3::Hasher::new();
            io::copy(&mut f, &mut fh).map_err(io_err(&path))?;
            h.update(fh.finalize().as_bytes());
        }
    }
    Ok(h.finalize().to_hex().to_string())
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), CodeError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let r = rel.join(entry.file_name());
        let is_dir = entry.file_type().map_err(io_err(&dir))?.is_dir();
        out.push(r.clone());
        if is_dir {
            walk(root, &r, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn zip_of(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for (name, mode, data) in entries {
            let mut opts = SimpleFileOptions::default().unix_permissions(*mode);
            if mode & S_IFMT != 0 && mode & S_IFMT != S_IFLNK {
                // unix_permissions() drops the file-type bits; set them raw.
                opts = opts.external_attributes(mode << 16);
            }
            if mode & S_IFMT == S_IFLNK {
                w.add_symlink(*name, std::str::from_utf8(data).unwrap(), opts)
                    .unwrap();
            } else if name.ends_with('/') {
                w.add_directory(*name, opts).unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    fn store() -> (tempfile::TempDir, CodeStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = CodeStore::open(dir.path(), Limits::default()).unwrap();
        (dir, s)
    }

    fn staging_is_empty(s: &CodeStore) -> bool {
        fs::read_dir(&s.staging).unwrap().next().is_none()
    }

    #[test]
    fn good_archives_are_stored_by_content() {
        let (_d, s) = store();
        let z = zip_of(&[
            ("main.py", 0o644, b"def handler(e, c):\n    return e\n"),
            ("lib/", 0o755, b""),
            ("lib/util.py", 0o644, b"X = 1\n"),
            ("run.sh", 0o755, b"#!/bin/sh\n"),
            ("alias.py", S_IFLNK | 0o777, b"lib/util.py"),
        ]);
        let h1 = s.add_zip(&z).unwrap();
        let h2 = s.add_zip(&z).unwrap();
        assert_eq!(h1, h2);
        let p = s.path(&h1);
        assert_eq!(
            fs::read_to_string(p.join("lib/util.py")).unwrap(),
            "X = 1\n"
        );
        assert_eq!(
            fs::read_link(p.join("alias.py")).unwrap(),
            Path::new("lib/util.py")
        );
        assert!(fs::metadata(p.join("run.sh")).unwrap().permissions().mode() & 0o100 != 0);
        assert!(staging_is_empty(&s));
        let other = zip_of(&[("main.py", 0o644, b"changed")]);
        assert_ne!(s.add_zip(&other).unwrap(), h1);
    }

    fn refused(entries: &[(&str, u32, &[u8])], needle: &str) {
        let (d, s) = store();
        let err = s.add_zip(&zip_of(entries)).unwrap_err();
        assert!(err.is_user_error());
        assert!(
            err.to_string().contains(needle),
            "{err} should mention {needle}"
        );
        assert!(staging_is_empty(&s), "staging left behind");
        assert_eq!(fs::read_dir(d.path().join("code")).unwrap().count(), 0);
        assert!(!d.path().join("evil").exists());
        assert!(!d.path().parent().unwrap().join("evil").exists());
    }

    #[test]
    fn hostile_archives_are_refused_and_leave_nothing() {
        refused(&[("/etc/evil", 0o644, b"x")], "absolute");
        refused(&[("a/../../evil", 0o644, b"x")], "'..'");
        refused(&[("ok.py", 0o644, b""), ("../evil", 0o644, b"x")], "'..'");
        refused(
            &[("l", S_IFLNK | 0o777, b"/etc/passwd")],
            "symlinks must point inside",
        );
        refused(
            &[("d/l", S_IFLNK | 0o777, b"../../evil")],
            "symlinks must point inside",
        );
        refused(&[("dev", 0o020644, b"")], "device files");
        refused(&[("fifo", 0o010644, b"")], "device files");
        refused(&[("a\\b", 0o644, b"")], "backslash");
    }

    #[test]
    fn bombs_and_floods_are_refused() {
        let big = vec![0u8; 2 << 20];
        refused(&[("zeros", 0o644, &big)], "expands past");
        let names: Vec<String> = (0..10_001).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, u32, &[u8])> = names
            .iter()
            .map(|n| (n.as_str(), 0o644, &b""[..]))
            .collect();
        refused(&entries, "10001 entries");
        let (_d, s) = store();
        assert!(matches!(s.add_zip(b"not a zip"), Err(CodeError::NotZip(_))));
    }

    #[test]
    fn retain_removes_unreferenced_code() {
        let (_d, s) = store();
        let a = s.add_zip(&zip_of(&[("a.py", 0o644, b"a")])).unwrap();
        let b = s.add_zip(&zip_of(&[("b.py", 0o644, b"b")])).unwrap();
        assert_eq!(s.retain(&HashSet::from([a.clone()])).unwrap(), 1);
        assert!(s.path(&a).exists());
        assert!(!s.path(&b).exists());
    }
}
