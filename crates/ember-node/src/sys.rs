//! File locking and durable writes: the node's only direct use of the kernel's file APIs.

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
