//! Function code: zip archives checked whole and unpacked in a staging directory
//! (`archive.rs`), then stored content-addressed under `code/<blake3 of the tree>`.
//!
//! An archive is refused with a 400 that names the entry (and its staging directory removed)
//! when an entry has an absolute path, a `..` component, an overlong or too deeply nested
//! name, is a device, fifo or socket, names a path twice, lies under a file or a symlink of
//! the archive, or is a symlink that does not resolve to an entry of the archive (following
//! the archive's own links); when it has more than [`Limits::max_entries`] entries, or when it
//! expands to more than [`Limits::max_ratio`] times its own size. Zip has no hardlinks.
//!
//! The tree hash covers, in path order, each entry's kind, path, executable bit and content
//! (or link target), so the same code always lands in the same directory. The node then
//! compiles the Python files in place (hash-checked `.pyc` in `__pycache__`, outside the tree
//! hash), since instances see their code read-only.

mod archive;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
            // Lambda's: no count of files (a scikit-learn + pandas environment is 9,899, the
            // bench's, measured with `find -type f | wc -l`), 250
            // MB unzipped.
            max_entries: 50_000,
            max_ratio: 100,
            max_unpacked: 250 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    #[error("the code archive is not a valid zip file: {0}")]
    NotZip(String),
    #[error("archive entry {entry:?} is refused: {rule}")]
    Entry { entry: String, rule: String },
    #[error(
        "the archive has {0} entries (with the directories its paths imply); at most {1} are \
         allowed"
    )]
    TooManyEntries(usize, usize),
    #[error(
        "the archive expands past {limit} bytes ({ratio}x its size of {size} bytes is the limit)"
    )]
    TooLarge { limit: u64, ratio: u64, size: u64 },
    #[error("the archive is empty")]
    Empty,
    #[error(
        "the function and its layers come to {total} bytes unzipped; at most {limit} are \
         allowed (Lambda's 250 MB)"
    )]
    LayersTooLarge { total: u64, limit: u64 },
    /// A server-side failure; `entry` is the archive's name (or empty), never a host path,
    /// since the message reaches the client.
    #[error("storing the code failed{}", if entry.is_empty() { String::new() } else { format!(" at entry {entry:?}") })]
    Io {
        entry: String,
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

/// A failure of the store's own directories: logged with the host path, reported without.
fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CodeError + '_ {
    move |source| {
        tracing::error!(path = %path.display(), "code store i/o failed: {source}");
        CodeError::Io {
            entry: String::new(),
            source,
        }
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

    /// The directory every function's code is stored under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.root.join(hash)
    }

    /// Checks and unpacks `zip`, stores it, and returns its tree hash. Blocking.
    pub fn add_zip(&self, zip: &[u8]) -> Result<String, CodeError> {
        let stage = Staging(self.staging.join(uuid::Uuid::new_v4().simple().to_string()));
        fs::create_dir(&stage.0).map_err(io_err(&stage.0))?;
        archive::unpack(zip, &stage.0, self.limits)?;
        let hash = tree_hash(&stage.0)?;
        self.put_in_place(&stage.0, &hash)?;
        Ok(hash)
    }

    /// Moves the staged tree `stage` in place as tree `hash`, unless it is there already. Two
    /// stores of the same code at once (two functions deployed together) race to the rename:
    /// the loser finds the winner's tree, which is the same content, and is done.
    fn put_in_place(&self, stage: &Path, hash: &str) -> Result<(), CodeError> {
        let dest = self.path(hash);
        if dest.exists() {
            return Ok(());
        }
        match fs::rename(stage, &dest) {
            Ok(()) => fsync_dir(&self.root),
            Err(_) if dest.is_dir() => Ok(()),
            Err(e) => Err(io_err(&dest)(e)),
        }
    }

    /// Merges the stored trees `hashes` into one, later ones over earlier ones (a file a
    /// later layer has replaces an earlier layer's), stores it and returns its hash, refused
    /// when it and the code of `with` (a stored tree) exceed the unpacked limit together.
    /// Files are hard links to the layers' (every stored tree is read-only). Blocking.
    pub fn merge(&self, hashes: &[String], with: &str) -> Result<String, CodeError> {
        let stage = Staging(self.staging.join(uuid::Uuid::new_v4().simple().to_string()));
        fs::create_dir(&stage.0).map_err(io_err(&stage.0))?;
        let mut bytes = tree_bytes(&self.path(with))?;
        for h in hashes {
            bytes += overlay(&self.path(h), &stage.0)?;
        }
        if bytes > self.limits.max_unpacked {
            return Err(CodeError::LayersTooLarge {
                total: bytes,
                limit: self.limits.max_unpacked,
            });
        }
        let hash = tree_hash(&stage.0)?;
        self.put_in_place(&stage.0, &hash)?;
        Ok(hash)
    }

    /// Refuses stored trees `hashes` together past the unpacked limit (a function's code and
    /// its layers' merged tree).
    pub fn check_total(&self, hashes: &[&str]) -> Result<(), CodeError> {
        let mut total = 0;
        for h in hashes {
            total += tree_bytes(&self.path(h))?;
        }
        if total > self.limits.max_unpacked {
            return Err(CodeError::LayersTooLarge {
                total,
                limit: self.limits.max_unpacked,
            });
        }
        Ok(())
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

/// Bytes of the regular files under `root`.
fn tree_bytes(root: &Path) -> Result<u64, CodeError> {
    let mut entries = Vec::new();
    walk(root, Path::new(""), &mut entries)?;
    let mut total = 0;
    for rel in entries {
        let meta = fs::symlink_metadata(root.join(&rel)).map_err(io_err(root))?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Puts the tree `from` over `to`: directories merged, a file or link replacing what `to`
/// has at its path (a directory there included). Returns the bytes of the files put.
fn overlay(from: &Path, to: &Path) -> Result<u64, CodeError> {
    let mut entries = Vec::new();
    walk(from, Path::new(""), &mut entries)?;
    // Parents before their children.
    entries.sort();
    let mut bytes = 0;
    for rel in entries {
        let (src, dst) = (from.join(&rel), to.join(&rel));
        let meta = fs::symlink_metadata(&src).map_err(io_err(&src))?;
        let there = fs::symlink_metadata(&dst).ok();
        if meta.is_dir() {
            match there {
                Some(t) if t.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&dst).map_err(io_err(&dst))?;
                    fs::create_dir(&dst).map_err(io_err(&dst))?;
                }
                None => fs::create_dir(&dst).map_err(io_err(&dst))?,
            }
            continue;
        }
        match there {
            Some(t) if t.is_dir() => fs::remove_dir_all(&dst).map_err(io_err(&dst))?,
            Some(_) => fs::remove_file(&dst).map_err(io_err(&dst))?,
            None => {}
        }
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&src).map_err(io_err(&src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io_err(&dst))?;
        } else {
            fs::hard_link(&src, &dst)
                .or_else(|_| fs::copy(&src, &dst).map(|_| ()))
                .map_err(io_err(&dst))?;
            bytes += meta.len();
        }
    }
    Ok(bytes)
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
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    const S_IFMT: u32 = 0o170000;
    const S_IFLNK: u32 = 0o120000;

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

    /// Two functions deployed at once with the same code store the same tree at once: both
    /// stores succeed, whichever renames first (it once failed with "Directory not empty").
    #[test]
    fn the_same_code_stored_at_once_is_stored_once() {
        let (_d, s) = store();
        let files: Vec<(String, u32, Vec<u8>)> = (0..200)
            .map(|i| (format!("m{i}.py"), 0o644, vec![b'x'; 512]))
            .collect();
        let entries: Vec<(&str, u32, &[u8])> = files
            .iter()
            .map(|(n, m, b)| (n.as_str(), *m, b.as_slice()))
            .collect();
        let z = zip_of(&entries);
        for _ in 0..20 {
            let hashes: Vec<String> = std::thread::scope(|t| {
                let a = t.spawn(|| s.add_zip(&z));
                let b = t.spawn(|| s.add_zip(&z));
                [a, b].map(|h| h.join().unwrap().unwrap()).to_vec()
            });
            assert_eq!(hashes[0], hashes[1]);
            fs::remove_dir_all(s.path(&hashes[0])).unwrap();
        }
        assert!(staging_is_empty(&s));
    }

    #[test]
    fn layers_merge_in_order_and_count_against_the_unpacked_limit() {
        let (_d, s) = store();
        let one = s
            .add_zip(&zip_of(&[
                ("python/a.py", 0o644, b"A = 1\n"),
                ("python/shared.py", 0o644, b"FROM = 'one'\n"),
                ("bin/x", 0o644, b"file in one"),
            ]))
            .unwrap();
        let two = s
            .add_zip(&zip_of(&[
                ("python/shared.py", 0o644, b"FROM = 'two'\n"),
                ("bin/x/", 0o755, b""),
                ("bin/x/tool", 0o755, b"#!/bin/sh\n"),
            ]))
            .unwrap();
        let code = s.add_zip(&zip_of(&[("main.py", 0o644, b"")])).unwrap();
        let merged = s.merge(&[one.clone(), two.clone()], &code).unwrap();
        let p = s.path(&merged);
        assert_eq!(
            fs::read_to_string(p.join("python/a.py")).unwrap(),
            "A = 1\n"
        );
        assert_eq!(
            fs::read_to_string(p.join("python/shared.py")).unwrap(),
            "FROM = 'two'\n",
            "a later layer's file wins"
        );
        assert!(
            p.join("bin/x/tool").is_file(),
            "a directory replaced a file"
        );
        // The same layers merge to the same tree; another order to another.
        assert_eq!(s.merge(&[one.clone(), two.clone()], &code).unwrap(), merged);
        assert_ne!(s.merge(&[two.clone(), one.clone()], &code).unwrap(), merged);
        assert!(staging_is_empty(&s));
        let small = CodeStore {
            limits: Limits {
                max_unpacked: 20,
                ..Limits::default()
            },
            root: s.root.clone(),
            staging: s.staging.clone(),
        };
        let err = small.merge(&[one, two], &code).unwrap_err();
        assert!(err.to_string().contains("layers come to"), "{err}");
        assert!(staging_is_empty(&s));
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
        let shown = err.to_string();
        assert!(
            !shown.contains(&*d.path().to_string_lossy()),
            "{shown} shows a host path"
        );
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
            "resolves outside it",
        );
        refused(&[("dev", 0o020644, b"")], "device files");
        refused(&[("fifo", 0o010644, b"")], "device files");
        refused(&[("a\\b", 0o644, b"")], "backslash");
    }

    /// The escapes found by trying the daemon as a hostile tenant: each is a 400 naming the
    /// entry, with no host path in the message, and nothing is written anywhere.
    #[test]
    fn link_chains_and_shape_tricks_are_refused() {
        let (d, _s) = store();
        let home = d.path().to_string_lossy().into_owned();
        // A link to "." repeated, then enough '..' to climb out to the daemon's settings.
        let climb = format!("{}../../../../{home}/ember.toml", "s/".repeat(30));
        refused(
            &[
                ("s", S_IFLNK | 0o777, b"."),
                ("x.py", S_IFLNK | 0o777, climb.as_bytes()),
            ],
            "x.py",
        );
        refused(
            &[("a", S_IFLNK | 0o777, b"b"), ("b", S_IFLNK | 0o777, b"a")],
            "loop",
        );
        // More links in one path than the kernel follows: its own verdict (ELOOP) stands.
        let long = format!("{}main.py", "s/".repeat(45));
        refused(
            &[
                ("main.py", 0o644, b""),
                ("s", S_IFLNK | 0o777, b"."),
                ("x.py", S_IFLNK | 0o777, long.as_bytes()),
            ],
            "does not resolve inside",
        );
        refused(
            &[("__pycache__", S_IFLNK | 0o777, b"../../../../tmp")],
            "resolves outside",
        );
        refused(
            &[("d/lnk", S_IFLNK | 0o777, b".."), ("d/lnk/x", 0o644, b"x")],
            "which is a symlink in the archive",
        );
        refused(
            &[("d/lnk/x", 0o644, b"x"), ("d/lnk", S_IFLNK | 0o777, b"..")],
            "which is a symlink in the archive",
        );
        let long_name = "a".repeat(300);
        refused(&[(&long_name, 0o644, b"x")], "longer than 255");
        let deep = format!("{}f.py", "d/".repeat(3000));
        refused(&[(&deep, 0o644, b"x")], "longer than 1024");
        let nested = format!("{}f.py", "d/".repeat(70));
        refused(&[(&nested, 0o644, b"x")], "nested more than 64");
        refused(
            &[("a", 0o644, b"x"), ("a/b.py", 0o644, b"y")],
            "which is a file in the archive",
        );
        refused(
            &[("a/b.py", 0o644, b"y"), ("a", 0o644, b"x")],
            "which is a file",
        );
        refused(
            &[("a/", 0o755, b""), ("./a", 0o644, b"x")],
            "names the same path",
        );
        refused(
            &[("dangling", S_IFLNK | 0o777, b"nowhere")],
            "does not contain",
        );
    }

    /// The directories an archive implies are written too, so they count as entries.
    #[test]
    fn implied_directories_count_as_entries() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_entries: 10,
            ..Limits::default()
        };
        let s = CodeStore::open(dir.path(), limits).unwrap();
        let z = zip_of(&[("a/b/c/d/e/f/g/h/i/j/k.py", 0o644, b"")]);
        let err = s.add_zip(&z).unwrap_err();
        assert!(err.to_string().contains("11 entries"), "{err}");
        assert!(
            s.add_zip(&zip_of(&[("a/b/c/d/e/f/g/h/i.py", 0o644, b"")]))
                .is_ok()
        );
    }

    #[test]
    fn duplicate_names_are_refused() {
        // The zip writer refuses duplicates, so the second name is patched in place.
        let mut z = zip_of(&[("aaa.py", 0o644, b"x = 1"), ("bbb.py", 0o644, b"x = 2")]);
        for i in 0..z.len() - 6 {
            if &z[i..i + 6] == b"bbb.py" {
                z[i..i + 6].copy_from_slice(b"aaa.py");
            }
        }
        let (_d, s) = store();
        let err = s.add_zip(&z).unwrap_err();
        assert!(err.is_user_error());
        assert_eq!(
            err.to_string(),
            "archive entry \"aaa.py\" is refused: the archive holds this name twice"
        );
    }

    #[test]
    fn links_inside_the_tree_are_kept() {
        let (_d, s) = store();
        let z = zip_of(&[
            ("s", S_IFLNK | 0o777, b"."),
            ("pkg/mod.py", 0o644, b"X = 1"),
            ("alias.py", S_IFLNK | 0o777, b"s/s/pkg/mod.py"),
            ("pkg/up", S_IFLNK | 0o777, b".."),
            ("__pycache__", S_IFLNK | 0o777, b"pkg"),
        ]);
        let h = s.add_zip(&z).unwrap();
        assert_eq!(
            fs::read_to_string(s.path(&h).join("alias.py")).unwrap(),
            "X = 1"
        );
    }

    #[test]
    fn bombs_and_floods_are_refused() {
        let big = vec![0u8; 2 << 20];
        refused(&[("zeros", 0o644, &big)], "expands past");
        // Lambda's limits: 250 MB unzipped, entries bounded only against inode floods.
        assert_eq!(Limits::default().max_unpacked, 250 << 20);
        assert_eq!(Limits::default().max_entries, 50_000);
        let names: Vec<String> = (0..1_001).map(|i| format!("f{i}")).collect();
        let entries: Vec<(&str, u32, &[u8])> = names
            .iter()
            .map(|n| (n.as_str(), 0o644, &b""[..]))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_entries: 1_000,
            ..Limits::default()
        };
        let small = CodeStore::open(dir.path(), limits).unwrap();
        let err = small.add_zip(&zip_of(&entries)).unwrap_err();
        assert!(err.to_string().contains("1001 entries"), "{err}");
        assert!(staging_is_empty(&small), "staging left behind");
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
