//! File locking, durable writes and tenant trees written beneath a directory: the node's
//! only direct use of the kernel's file APIs.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// An exclusive `flock` held until dropped.
pub struct FileLock(#[allow(dead_code, reason = "held for its Drop")] Flock<File>);

fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

/// Waits for an exclusive lock on `path` (created if missing) without blocking the runtime.
pub async fn lock_file(path: PathBuf) -> io::Result<FileLock> {
    tokio::task::spawn_blocking(move || {
        let f = open_lock(&path)?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map(FileLock)
            .map_err(|(_, e)| io::Error::from(e))
    })
    .await
    .map_err(io::Error::other)?
}

/// Takes an exclusive lock on `path` now, or returns `WouldBlock` if another process has it.
pub fn try_lock_file(path: &Path) -> io::Result<FileLock> {
    let f = open_lock(path)?;
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(FileLock(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(io::ErrorKind::WouldBlock.into()),
        Err((_, e)) => Err(e.into()),
    }
}

/// Writes `data` to `path` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

// Writing a tenant's tree: every path is resolved by the kernel beneath a directory
// descriptor, without following any symlink (`openat2` with RESOLVE_BENEATH and
// RESOLVE_NO_SYMLINKS), so a write can never land outside the tree.

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, OwnedFd};

fn beneath_no_links() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

/// Opens the directory `path` (the caller's own, e.g. a fresh staging directory).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// The parent directory of `rel` beneath `root` (no link followed), and `rel`'s last name.
fn parent_beneath<'a>(
    root: &impl AsFd,
    rel: &'a Path,
) -> io::Result<(Option<OwnedFd>, &'a std::ffi::OsStr)> {
    let name = rel
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        None => Ok((None, name)),
        Some(parent) => {
            let how = OpenHow::new()
                .flags(OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC)
                .resolve(beneath_no_links());
            Ok((Some(openat2(root, parent, how)?), name))
        }
    }
}

/// Creates the directory `rel` beneath `root` (its parent must exist).
pub fn mkdir_beneath(root: &impl AsFd, rel: &Path) -> io::Result<()> {
    let (parent, name) = parent_beneath(root, rel)?;
    let dir = parent.as_ref().map_or(root.as_fd(), |p| p.as_fd());
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o755)).map_err(io::Error::from)
}

/// Creates the new file `rel` beneath `root` for writing (never an existing one).
pub fn create_beneath(root: &impl AsFd, rel: &Path, exec: bool) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC)
        .mode(Mode::from_bits_truncate(if exec { 0o755 } else { 0o644 }))
        .resolve(beneath_no_links());
    openat2(root, rel, how).map_err(io::Error::from)
}

/// Creates the symlink `rel` -> `target` beneath `root` (its parent must exist).
pub fn symlink_beneath(root: &impl AsFd, target: &str, rel: &Path) -> io::Result<()> {
    let (parent, name) = parent_beneath(root, rel)?;
    let dir = parent.as_ref().map_or(root.as_fd(), |p| p.as_fd());
    nix::unistd::symlinkat(target, dir, name).map_err(io::Error::from)
}

/// Checks that `rel`, following symlinks, resolves to something beneath `root`: the
/// kernel's own verdict (EXDEV when a link leads out, ENOENT when it leads nowhere).
pub fn resolves_beneath(root: &impl AsFd, rel: &Path) -> io::Result<()> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, rel, how).map(drop).map_err(io::Error::from)
}

/// Process `pid`'s proportional and resident set sizes in bytes, from
/// `/proc/PID/smaps_rollup` (a kernel file: nothing a tenant controls), when it is alive.
pub fn process_memory(pid: u32) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return (None, None);
    };
    (rollup_kib(&text, "Pss:"), rollup_kib(&text, "Rss:"))
}

/// The value of field `name` (in kB) of an smaps_rollup text, in bytes.
fn rollup_kib(text: &str, name: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib << 10)
}
