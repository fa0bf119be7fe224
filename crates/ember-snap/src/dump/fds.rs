//! The descriptors of a process being dumped: each reopenable by path (regular files,
//! directories, `/dev/null`-like devices, `O_PATH` descriptors) with its status flags and
//! position, several numbers of one open file description found with `kcmp`, and refusals
//! for what a restore could not give back (locks, deleted files, other kinds).

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use super::{Ctx, DumpError, DumpOptions, FileTable};
use crate::image::{Fd, FdKind};
use crate::{proc, sys};

/// Character devices a dump may reopen by path (never read: a device has no end).
const SAFE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
/// Status flags a descriptor keeps across a restore (with the access mode): all that `open`
/// and `fcntl(F_SETFL)` can set.
pub const FD_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_ASYNC
    | libc::O_PATH
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | 0o100000; // O_LARGEFILE, which the kernel sets on every 64-bit open

/// The image's descriptors, and those with `O_ASYNC` (whose owner the caller asks).
pub(super) fn classify_fds(
    cx: &Ctx,
    opts: &DumpOptions,
    files: &mut FileTable,
) -> Result<(Vec<Fd>, Vec<i32>), DumpError> {
    let pid = cx.pid;
    let dir = std::fs::read_dir(cx.path("fd")).map_err(|e| cx.proc_err("fd", e.to_string()))?;
    let mut nums: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut out: Vec<Fd> = Vec::new();
    let mut async_fds = Vec::new();
    // (fd, device and inode) of each reopened description: only descriptors of one inode
    // can share a description, so only those are compared.
    let mut firsts: Vec<(i32, (u64, u64))> = Vec::new();
    for fd in nums {
        let what = std::fs::read_link(cx.path(&format!("fd/{fd}")))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = cx.read(&format!("fdinfo/{fd}"))?;
        let (pos, flags) = proc::parse_fdinfo(&info)
            .ok_or_else(|| cx.proc_err(&format!("fdinfo/{fd}"), "unexpected format".into()))?;
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        let refuse = |why: &str| DumpError::Fd {
            pid,
            fd,
            what: what.clone(),
            why: why.to_string(),
        };
        let locks = proc::fdinfo_locks(&info);
        if let Some(lock) = locks.first() {
            return Err(refuse(&format!(
                "it holds a file lock ({lock}), which a restore cannot take again reliably: release it (flock LOCK_UN, fcntl F_UNLCK) before the dump"
            )));
        }
        if opts.inherited.contains(&fd) {
            out.push(Fd {
                fd,
                cloexec,
                kind: FdKind::Inherited { what },
            });
            continue;
        }
        if let Some(gone) = what.strip_suffix(" (deleted)") {
            return Err(refuse(&format!(
                "the file it holds open, {gone}, was deleted: a restore could not open it again; close it or keep the file until the process is dumped"
            )));
        }
        let md =
            std::fs::metadata(cx.path(&format!("fd/{fd}"))).map_err(|e| refuse(&e.to_string()))?;
        let ft = md.file_type();
        let o_path = flags & libc::O_PATH as u32 != 0;
        let by_path = what.starts_with('/');
        if o_path && ft.is_symlink() {
            return Err(refuse(
                "an O_PATH descriptor of a symbolic link is not supported",
            ));
        }
        let reopenable = by_path
            && (o_path
                || ft.is_file()
                || ft.is_dir()
                || (ft.is_char_device() && SAFE_DEVICES.contains(&what.as_str())));
        if !reopenable {
            return Err(refuse(
                "only regular files, directories, /dev/null-like devices and O_PATH descriptors are supported; declare the caller's own descriptors as inherited",
            ));
        }
        // One open file description held at several numbers (dup, or inherited by fork):
        // restored as one, with dup3.
        let inode = (md.dev(), md.ino());
        let mut shares = None;
        for &(first, _) in firsts.iter().filter(|(_, i)| *i == inode) {
            if sys::same_file(pid, first, fd).map_err(|e| refuse(&format!("kcmp: {e}")))? {
                shares = Some(first);
                break;
            }
        }
        if let Some(of) = shares {
            out.push(Fd {
                fd,
                cloexec,
                kind: FdKind::Dup { of },
            });
            continue;
        }
        if flags & libc::O_ASYNC as u32 != 0 {
            async_fds.push(fd);
        }
        let dev_ino = (sys::dev_parts(md.dev()), md.ino());
        firsts.push((fd, inode));
        out.push(Fd {
            fd,
            cloexec,
            kind: FdKind::File {
                file: files.index(&what, Some(dev_ino), false),
                pos,
                flags: flags & FD_FLAGS as u32,
            },
        });
        cx.check_time("descriptors")?;
    }
    for &fd in &opts.inherited {
        if !out.iter().any(|f| f.fd == fd) {
            return Err(DumpError::Fd {
                pid,
                fd,
                what: "nothing".into(),
                why: "declared inherited but not open in the process".into(),
            });
        }
    }
    Ok((out, async_fds))
}

/// `O_ASYNC` sends SIGIO to the descriptor's owner (`F_SETOWN`), and a restored process has
/// another pid: only an unowned one (no signal is ever sent) is restored. Asked by an
/// injected `fcntl(F_GETOWN)` per `O_ASYNC` descriptor.
pub(super) fn refuse_owned_async(
    t: &crate::tracee::Tracee,
    insn: u64,
    async_fds: &[i32],
) -> Result<(), DumpError> {
    for &fd in async_fds {
        let args = [fd as u64, libc::F_GETOWN as u64];
        let owner = t.syscall_ok(insn, libc::SYS_fcntl, &args, "fcntl(F_GETOWN)")? as i32;
        if owner != 0 {
            let whom = if owner < 0 {
                "process group"
            } else {
                "process"
            };
            return Err(DumpError::Fd {
                pid: t.pid,
                fd,
                what: "O_ASYNC".into(),
                why: format!(
                    "its SIGIO goes to {whom} {} (F_SETOWN), which a restore cannot keep: clear O_ASYNC or the owner before the dump",
                    owner.unsigned_abs()
                ),
            });
        }
    }
    Ok(())
}
