//! Every syscall the runtime crate makes, each in one small wrapper.

use std::io;
use std::os::fd::RawFd;

/// The descriptor number a runtime finds its protocol socket on.
pub const PROTOCOL_FD: RawFd = 3;

/// Arranges, in a freshly forked child before exec, for `proto` to be inherited as
/// [`PROTOCOL_FD`], for no other descriptor of the daemon's to be, and for the child to die
/// with the daemon.
///
/// # Safety
/// Must only be called between fork and exec (from `CommandExt::pre_exec`): it calls only
/// async-signal-safe functions and touches no memory shared with other threads.
pub unsafe fn child_after_fork(proto: RawFd, parent: libc::pid_t) -> io::Result<()> {
    die_with_parent(parent)?;
    if proto == PROTOCOL_FD {
        // dup2 onto itself keeps FD_CLOEXEC: clear it explicitly.
        // SAFETY: fcntl F_SETFD on a descriptor this process owns; no pointers.
        if unsafe { libc::fcntl(proto, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    } else {
        // SAFETY: dup2 on two descriptor numbers; the new descriptor has no FD_CLOEXEC.
        if unsafe { libc::dup2(proto, PROTOCOL_FD) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    cloexec_from(PROTOCOL_FD as libc::c_uint + 1)
}

/// Marks every descriptor from `first` up close-on-exec: the child is a copy of the
/// daemon's descriptor table, and whatever the daemon opened without the flag would
/// otherwise reach the runtime. A kernel older than 5.11 lacks the flag: there only the
/// descriptors opened with it are kept out. Calls only async-signal-safe functions.
fn cloexec_from(first: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range takes integers; CLOSE_RANGE_CLOEXEC only sets the flag on
    // descriptors this process owns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(err);
        }
    }
    Ok(())
}

/// Makes the process `cmd` starts inherit stdio only, whatever the daemon holds.
pub fn inherit_stdio_only(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs between fork and exec and only calls `cloexec_from`, which
    // is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| cloexec_from(3));
    }
}

/// Arms SIGKILL for when `parent` (the daemon) dies; fails if it already has. Calls only
/// async-signal-safe functions, so it may run between fork and exec.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    arm_death_signal()?;
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // The daemon died before the death signal was armed.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// `PR_SET_PDEATHSIG(SIGKILL)`: this process dies with its parent. Async-signal-safe.
fn arm_death_signal() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and no pointers.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes processes started by `cmd` receive SIGKILL when the daemon dies, so that nothing it
/// started (a runtime, a compile) outlives it. What such a process starts in turn is not
/// covered: see [`die_with_daemon_tree`].
pub fn kill_with_daemon(cmd: &mut tokio::process::Command) {
    let parent = own_pid();
    // SAFETY: the closure runs between fork and exec and only calls `die_with_parent`,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
}

/// Makes the process `cmd` starts, and every process it starts in turn, die with the daemon
/// (pip runs itself again under the environment's interpreter, and builds in subprocesses;
/// a death signal alone reaches only the first).
///
/// ```text
/// daemon --fork--> C1: death signal (SIGKILL when the daemon dies), unshare(CLONE_NEWPID),
///                  fork, closes every descriptor, waits and exits as C2 did
///                    --fork--> C2: pid 1 of a new pid namespace, death signal (SIGKILL when
///                              C1 dies), execs the tool; when it dies the kernel kills
///                              everything else in its namespace
/// ```
///
/// Without the right to make a pid namespace (not root), the tool alone dies with the daemon.
pub fn die_with_daemon_tree(cmd: &mut tokio::process::Command) {
    let parent = own_pid();
    // SAFETY: `tree_guard` runs between fork and exec and makes only async-signal-safe calls
    // (prctl, getppid, unshare, fork, close_range, waitpid, _exit); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || tree_guard(parent));
    }
}

fn tree_guard(daemon: libc::pid_t) -> io::Result<()> {
    die_with_parent(daemon)?;
    // SAFETY: unshare takes a flag word and no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Ok(());
    }
    // SAFETY: fork in the single-threaded child of a fork; both sides only make
    // async-signal-safe calls afterwards.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // C2, pid 1 of the namespace: dies with C1 (whose pid it cannot see from in there).
        return arm_death_signal();
    }
    // C1: holds nothing of the tool's (its pipes reach EOF when C2 is done), then mirrors
    // how C2 ended.
    // SAFETY: close_range takes plain integers; every descriptor of this process goes, which
    // nothing below uses.
    unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    let mut status: libc::c_int = 0;
    let code = loop {
        // SAFETY: waitpid writes the status to a valid local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid && libc::WIFEXITED(status) {
            break libc::WEXITSTATUS(status);
        }
        if r == pid {
            break 128 + libc::WTERMSIG(status);
        }
        if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // The tool's end is unknown: never report it as a success.
            break 127;
        }
    };
    // SAFETY: _exit ends this process at once, without running the parent's atexit handlers
    // or destructors (which belong to the daemon).
    unsafe { libc::_exit(code) }
}

/// The calling process's pid.
pub fn own_pid() -> libc::pid_t {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Sends SIGKILL to every process in the process group `pgid`; a group already gone is fine.
pub fn kill_group(pgid: u32) -> io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    if pgid <= 1 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill takes plain integers; a negative pid addresses the process group, and the
    // check above rules out the "every process" (-1) and own-group (0) meanings.
    if unsafe { libc::kill(-pgid, libc::SIGKILL) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// A pidfd of process `pid`, registered with the runtime's reactor (readable once the
/// process has ended).
pub fn pidfd_async(pid: libc::pid_t) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    let fd = pidfd_open(pid)?;
    // SAFETY: an `OwnedFd` names one open descriptor for as long as it lives, and the
    // `AsyncFd` owns it (nothing swaps it through `get_mut`).
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// A pidfd of process `pid`.
fn pidfd_open(pid: libc::pid_t) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL through a pidfd; a process already ended is fine.
pub fn pidfd_kill(pidfd: RawFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a NULL siginfo and flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Collects the child behind `pidfd` if it has ended (`waitid(P_PIDFD)` with `WNOHANG`):
/// through the descriptor, never a pid number, so a process that reused the number of one
/// collected elsewhere is never waited for.
pub fn collect(pidfd: RawFd) -> io::Result<Option<std::process::ExitStatus>> {
    wait_pidfd(pidfd, libc::WNOHANG)
}

/// Waits for the child behind `pidfd` to end and collects it.
pub fn collect_blocking(pidfd: RawFd) {
    let _ = wait_pidfd(pidfd, 0);
}

/// `waitid(P_PIDFD, pidfd, WEXITED | flags)`; `None` when `WNOHANG` found it running.
fn wait_pidfd(pidfd: RawFd, flags: libc::c_int) -> io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    // P_PIDFD (linux/wait.h), not in every libc.
    const P_PIDFD: libc::idtype_t = 3;
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes into the live local `info`; the id is a descriptor number.
        let r = unsafe {
            libc::waitid(
                P_PIDFD,
                pidfd as libc::id_t,
                &mut info,
                libc::WEXITED | flags,
            )
        };
        if r == 0 {
            // SAFETY: filled by a successful waitid; si_pid is 0 when WNOHANG found none.
            let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
            if pid == 0 {
                return Ok(None);
            }
            // Encoded as wait(2)'s status word: an exit code, or the signal (+ core flag).
            let raw = match code {
                libc::CLD_EXITED => (status & 0xff) << 8,
                libc::CLD_DUMPED => (status & 0x7f) | 0x80,
                _ => status & 0x7f,
            };
            return Ok(Some(std::process::ExitStatus::from_raw(raw)));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Kills the child `pid` and collects it (a child not yet collected, whose only collector
/// is the caller).
pub fn kill_and_collect(pid: libc::pid_t) {
    // SAFETY: kill takes plain integers; `pid` is a positive child pid not yet collected.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}
