//! The files an image refers to (mapped, or held open by a descriptor): `stat`ed and, when
//! mapped, opened while the process is stopped; identified by content (build-id or BLAKE3)
//! once it runs again, refused if the frozen `stat` no longer holds.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use super::DumpError;
use crate::image::files::{self, Observed};
use crate::sys;

/// ((major, minor), inode) of a mapped file, as maps shows it.
pub(super) type DevIno = ((u32, u32), u64);

/// One file the image refers to.
pub(super) struct FileEntry {
    path: String,
    /// The (device, inode) the process has: the path must still name it.
    dev_ino: Option<DevIno>,
    /// Mapped (or the executable): identified by content; otherwise only reopened.
    mapped: bool,
    /// One area that maps it: opened through `/proc/PID/map_files`, no path lookup.
    area: Option<(u64, u64)>,
}

/// Files the image refers to, by path.
#[derive(Default)]
pub(super) struct FileTable {
    entries: Vec<FileEntry>,
    by_path: HashMap<String, u32>,
}

/// A file as `stat` saw it while the process was stopped; a mapped one opened then (so
/// that its content can be read once the process runs again, even if it exits).
pub(super) struct Observation {
    path: String,
    md: std::fs::Metadata,
    mapped: Option<File>,
}

impl FileTable {
    pub(super) fn index(&mut self, path: &str, dev_ino: Option<DevIno>, mapped: bool) -> u32 {
        if let Some(&i) = self.by_path.get(path) {
            if let Some(e) = self.entries.get_mut(i as usize) {
                e.mapped |= mapped;
                e.dev_ino = e.dev_ino.or(dev_ino);
            }
            return i;
        }
        let i = self.entries.len() as u32;
        self.entries.push(FileEntry {
            path: path.to_string(),
            dev_ino,
            mapped,
            area: None,
        });
        self.by_path.insert(path.to_string(), i);
        i
    }

    /// Records an area that maps file `i`.
    pub(super) fn mapped_at(&mut self, i: u32, start: u64, end: u64) {
        if let Some(e) = self.entries.get_mut(i as usize) {
            e.area = e.area.or(Some((start, end)));
        }
    }

    /// `stat`s each file as the process sees it (through `/proc/PID/root`), checking the
    /// path still names the file the process has, and opens a mapped one, which must be a
    /// regular file. Nothing is read: mapped files are hashed after the process is let go.
    pub(super) fn observe(self, pid: i32) -> Result<Vec<Observation>, DumpError> {
        self.entries
            .into_iter()
            .map(|e| {
                let real = PathBuf::from(format!("/proc/{pid}/root{}", e.path));
                let refuse = |why: String| DumpError::Path {
                    pid,
                    path: e.path.clone(),
                    why,
                };
                let md = std::fs::metadata(&real).map_err(|err| refuse(err.to_string()))?;
                if let Some((dev, ino)) = e.dev_ino
                    && (sys::dev_parts(md.dev()) != dev || md.ino() != ino)
                {
                    return Err(refuse(
                        "the path now names another file than the one the process has (it was replaced or deleted)".into(),
                    ));
                }
                let mapped = match e.mapped {
                    false => None,
                    true if !md.is_file() => {
                        return Err(refuse(
                            "it is mapped but not a regular file (a device): only regular files can be mapped again".into(),
                        ));
                    }
                    true => {
                        // The object the process maps, not whatever the path names now: a
                        // tenant's path swapped for a FIFO or a device must not block or
                        // touch anything (the process is stopped meanwhile).
                        let f = match e.area {
                            Some((start, end)) => File::open(format!(
                                "/proc/{pid}/map_files/{start:x}-{end:x}"
                            )),
                            None => std::fs::OpenOptions::new()
                                .read(true)
                                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_NOFOLLOW)
                                .open(&real),
                        }
                        .map_err(|err| refuse(err.to_string()))?;
                        let fmd = f.metadata().map_err(|err| refuse(err.to_string()))?;
                        if !fmd.is_file() || (fmd.dev(), fmd.ino()) != (md.dev(), md.ino()) {
                            return Err(refuse("it was replaced while the dump ran".into()));
                        }
                        Some(f)
                    }
                };
                Ok(Observation {
                    path: e.path,
                    md,
                    mapped,
                })
            })
            .collect()
    }
}

/// Each file's identity: mapped files by content (read now, while the process runs: each
/// must still be what its frozen `stat` saw), the others by what that `stat` said.
pub(super) fn identify(pid: i32, files: Vec<Observation>) -> Result<Vec<files::FileId>, DumpError> {
    files
        .into_iter()
        .map(|o| match o.mapped {
            None => Ok(files::unchecked(&o.path, &o.md)),
            Some(f) => files::identify_observed(&o.path, f, Observed::of_metadata(&o.md))
                .map_err(|e| DumpError::File(e, pid)),
        })
        .collect()
}
