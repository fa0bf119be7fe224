//! Every syscall the engine makes on its own behalf, one small wrapper each. The crate's
//! other `unsafe` blocks: the symbols of the pieces of assembly (restorer, stopper, a pid
//! namespace's init), a `struct stat` copied out of a batch area, and the descriptor the
//! kernel hands the page server on a fork event (and, in tests only, a mapping with a hole
//! for `tracee::write`).
//!
//! ptrace requests act on a tracee only from the thread that attached it: callers keep a
//! whole dump or restore on one thread.

mod uffd;
pub use uffd::*;

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::RawFd;

/// `NT_X86_XSTATE`: the regset holding the XSAVE area.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// Largest XSAVE area we accept (AMX tiles make it ~11 KiB).
pub const XSTATE_MAX: usize = 16 * 1024;

pub type Regs = libc::user_regs_struct;
const _: () = assert!(size_of::<Regs>() == 27 * 8);

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn ptrace(req: libc::c_uint, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every caller below passes either plain integers or a pointer to a live local
    // of the size the request writes or reads; the kernel checks the rest.
    check(unsafe { libc::ptrace(req, pid, addr, data) })
}

/// `PTRACE_SEIZE` with options (`PTRACE_O_EXITKILL` ties the tracee's life to ours;
/// `PTRACE_O_SUSPEND_SECCOMP` lets syscalls run in it pass its own seccomp filters, which a
/// dump's queries and a restore's last steps need).
pub fn seize(pid: i32, exitkill: bool, suspend_seccomp: bool) -> io::Result<()> {
    let mut opts = if exitkill { libc::PTRACE_O_EXITKILL } else { 0 };
    if suspend_seccomp {
        opts |= libc::PTRACE_O_SUSPEND_SECCOMP;
    }
    ptrace(libc::PTRACE_SEIZE, pid, 0, opts as usize).map(drop)
}

/// `PTRACE_SETOPTIONS`: replaces the tracee's options (a template adds
/// `PTRACE_O_TRACEFORK`, so that the processes it forks start traced and stopped).
pub fn set_options(pid: i32, opts: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, opts as usize).map(drop)
}

/// `PTRACE_GETEVENTMSG`: after a fork event stop, the new process's pid (as we see it).
pub fn event_msg(pid: i32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace(libc::PTRACE_GETEVENTMSG, pid, 0, &raw mut msg as usize)?;
    Ok(msg)
}

pub fn interrupt(pid: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}

/// Resumes the tracee, delivering `sig` (0 for none).
pub fn cont(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}

pub fn singlestep(pid: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SINGLESTEP, pid, 0, 0).map(drop)
}

pub fn detach(pid: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, pid, 0, 0).map(drop)
}

pub fn get_regs(pid: i32) -> io::Result<Regs> {
    let mut regs = MaybeUninit::<Regs>::zeroed();
    ptrace(libc::PTRACE_GETREGS, pid, 0, regs.as_mut_ptr() as usize)?;
    // SAFETY: zero-initialised plain integers, then filled by the kernel.
    Ok(unsafe { regs.assume_init() })
}

pub fn set_regs(pid: i32, regs: &Regs) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, pid, 0, regs as *const Regs as usize).map(drop)
}

/// The tracee's XSAVE area, as long as the kernel says it is.
pub fn get_xstate(pid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        libc::PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut libc::iovec as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(pid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut libc::c_void,
        iov_len: xstate.len(),
    };
    ptrace(
        libc::PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut libc::iovec as usize,
    )
    .map(drop)
}

pub fn get_sigmask(pid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    ptrace(
        libc::PTRACE_GETSIGMASK,
        pid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

pub fn set_sigmask(pid: i32, mask: u64) -> io::Result<()> {
    ptrace(
        libc::PTRACE_SETSIGMASK,
        pid,
        8,
        &mask as *const u64 as usize,
    )
    .map(drop)
}

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfig {
    pub abi_pointer: u64,
    pub abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<RseqConfig>() == 24);

pub fn get_rseq(pid: i32) -> io::Result<RseqConfig> {
    let mut cfg = RseqConfig::default();
    ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        size_of::<RseqConfig>(),
        &mut cfg as *mut RseqConfig as usize,
    )?;
    Ok(cfg)
}

/// The robust futex list head registered by `pid`: (head, len).
pub fn get_robust_list(pid: i32) -> io::Result<(u64, u64)> {
    let mut head: usize = 0;
    let mut len: libc::size_t = 0;
    // SAFETY: both out-pointers are live locals of the sizes the syscall writes.
    check(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            pid,
            &mut head as *mut usize,
            &mut len as *mut libc::size_t,
        )
    })?;
    Ok((head as u64, len as u64))
}

/// Whether descriptors `a` and `b` of `pid` share one open file description
/// (`kcmp(KCMP_FILE)`: 0 when they do).
pub fn same_file(pid: i32, a: i32, b: i32) -> io::Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes only integers.
    let rc = unsafe { libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b) };
    check(rc).map(|r| r == 0)
}

/// Result of one `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Exited(i32),
    Signaled(i32),
    /// A ptrace stop: the signal and the `PTRACE_EVENT_*` (0 for a signal-delivery stop).
    Stopped {
        sig: i32,
        event: i32,
    },
}

/// Collects child `pid` if it has ended (`waitpid` with `WNOHANG`); false while it runs.
pub fn reap_if_ended(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: `status` is a live local int.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | libc::WNOHANG) };
    rc != 0
}

/// `waitpid(pid, __WALL | flags)`, retried on EINTR.
pub fn wait(pid: i32, flags: i32) -> io::Result<Wait> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a live local int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL | flags) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(if libc::WIFEXITED(status) {
            Wait::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            Wait::Signaled(libc::WTERMSIG(status))
        } else {
            Wait::Stopped {
                sig: libc::WSTOPSIG(status),
                event: status >> 16,
            }
        });
    }
}

/// Waits until the (killed) process `pid`, traced by this thread, has ended, consuming the
/// stop reports still queued but leaving its exit to be collected by its parent (the
/// caller's, through a pidfd): `waitid` with `WNOWAIT` peeks, a stop is consumed with
/// `WSTOPPED` alone, which never collects.
pub fn wait_ended_uncollected(pid: i32) {
    let waitid = |flags: i32| -> Option<i32> {
        loop {
            // SAFETY: an all-zero siginfo_t is valid; waitid fills it.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes into the live local `info`; plain integer arguments.
            let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
            if rc == 0 {
                return Some(info.si_code);
            }
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return None;
            }
        }
    };
    loop {
        let peek = waitid(libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | libc::__WALL);
        match peek {
            Some(libc::CLD_STOPPED | libc::CLD_TRAPPED) => {
                let _ = waitid(libc::WSTOPPED | libc::__WALL);
            }
            _ => return,
        }
    }
}

/// Reads `buf.len()` bytes at `addr` of `pid` (the pages must be readable by the process).
pub fn read_mem(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, which we own mutably; `remote` is only read by the kernel.
    let n =
        check(unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) } as libc::c_long)?;
    if n as usize != buf.len() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"));
    }
    Ok(())
}

/// Writes scattered local buffers to scattered ranges of `pid` (at most `IOV_MAX` each),
/// returning the bytes written. The target ranges must be writable by the process.
pub fn write_mem(pid: i32, local: &[libc::iovec], remote: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: the caller's iovecs point at memory it owns for reading; the remote side is
    // interpreted in the other process by the kernel.
    let n = unsafe {
        libc::process_vm_writev(
            pid,
            local.as_ptr(),
            local.len() as libc::c_ulong,
            remote.as_ptr(),
            remote.len() as libc::c_ulong,
            0,
        )
    };
    check(n as libc::c_long).map(|n| n as usize)
}

/// `kill(pid, sig)`; a process already gone is fine.
pub fn kill(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: plain integers; pid > 1 never addresses a group or everyone.
        unsafe { libc::kill(pid, sig) };
    }
}

/// `(major, minor)` of a `dev_t`, to compare with `/proc/PID/maps`.
pub fn dev_parts(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

/// An anonymous private mapping of ours (the loaded page data of an image).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; shared access is read-only
// after `seal_read_only`, and mutable access needs `&mut self`.
unsafe impl Send for Mapping {}
// SAFETY: see above.
unsafe impl Sync for Mapping {}

impl Mapping {
    pub fn anonymous(len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
            });
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let m = Mapping {
            ptr: ptr.cast(),
            len,
        };
        // Never inherited by a fork: no process forked from a holder reads these pages (a
        // sandbox's first process execs or is restored over; a restore's forked target gets
        // its memory from the restore), while copying their page tables and page references
        // costs every fork of a holder ~15 ms per 250 MiB (measured here: 0.2 ms with this),
        // and a daemon holding an image pool forks for every instance it starts.
        // SAFETY: advising our own fresh mapping, `ptr..ptr+len`.
        check(unsafe { libc::madvise(ptr, len, libc::MADV_DONTFORK) } as libc::c_long)?;
        Ok(m)
    }

    /// Makes the mapping read-only: nothing in this process can change a verified page.
    pub fn seal_read_only(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        // SAFETY: changing the protection of our own mapping; `&mut self` means no borrow
        // of its contents is alive.
        check(unsafe { libc::mprotect(self.ptr.cast(), self.len, libc::PROT_READ) } as libc::c_long)
            .map(drop)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` is a live mapping owned by `self` (or empty and dangling).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` gives exclusive access; writing to a sealed
        // mapping faults, which is why sealing comes after the last write.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping the mapping this value owns; no borrow outlives `self`.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// This kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    let mut u = MaybeUninit::<libc::utsname>::zeroed();
    // SAFETY: `u` is a live, zeroed utsname for the kernel to fill.
    if unsafe { libc::uname(u.as_mut_ptr()) } != 0 {
        return String::new();
    }
    // SAFETY: filled by uname above (or still zeroed).
    let u = unsafe { u.assume_init() };
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A memfd for an executable: close-on-exec, sealable.
pub fn memfd_exec(name: &str) -> io::Result<std::os::fd::OwnedFd> {
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string; the flags create a new descriptor.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Seals a memfd against any change.
pub fn seal(fd: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } as libc::c_long)
        .map(drop)
}

/// `posix_spawn` (vfork + exec: no copy of our page tables) of `path` with no arguments,
/// `fds` (`(wanted number, our descriptor)`) arranged and every other descriptor from the
/// first temporary up closed (`exe_fd`, the descriptor `path` goes through, stays below).
/// Returns the pid.
pub fn spawn(path: &std::ffi::CStr, exe_fd: RawFd, fds: &[(RawFd, RawFd)]) -> io::Result<i32> {
    let base = fds
        .iter()
        .map(|&(a, b)| a.max(b))
        .max()
        .unwrap_or(2)
        .max(exe_fd)
        + 1;
    let mut actions = MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
    // SAFETY: initialising the file-actions object we own.
    let rc = unsafe { libc::posix_spawn_file_actions_init(actions.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let mut rc = 0;
    // SAFETY (each call below): `actions` was initialised above; arguments are integers.
    for (i, &(_, ours)) in fds.iter().enumerate() {
        if rc == 0 {
            // SAFETY: see above.
            rc = unsafe {
                libc::posix_spawn_file_actions_adddup2(
                    actions.as_mut_ptr(),
                    ours,
                    base + i as RawFd,
                )
            };
        }
    }
    for (i, &(want, _)) in fds.iter().enumerate() {
        if rc == 0 {
            // SAFETY: see above.
            rc = unsafe {
                libc::posix_spawn_file_actions_adddup2(
                    actions.as_mut_ptr(),
                    base + i as RawFd,
                    want,
                )
            };
        }
    }
    if rc == 0 {
        // SAFETY: see above.
        rc = unsafe { libc::posix_spawn_file_actions_addclosefrom_np(actions.as_mut_ptr(), base) };
    }
    let mut pid: libc::pid_t = 0;
    let argv: [*mut libc::c_char; 2] = [path.as_ptr() as *mut libc::c_char, std::ptr::null_mut()];
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    if rc == 0 {
        // SAFETY: `path`, `argv` and `envp` are valid NUL-terminated for the call; `pid` is
        // a live local; `actions` is initialised.
        rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                actions.as_ptr(),
                std::ptr::null(),
                argv.as_ptr(),
                envp.as_ptr(),
            )
        };
    }
    // SAFETY: destroying the object initialised above, once.
    unsafe { libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(pid)
}

/// As [`spawn`], but the program is `exe` itself (`execveat` with `AT_EMPTY_PATH`), so the
/// calling thread's mount namespace needs no /proc (a template's view has none). Forks this
/// process (only the calling thread is copied; the image pool is `MADV_DONTFORK`); the
/// child makes only raw system calls until its exec.
pub fn spawn_by_fd(exe: RawFd, fds: &[(RawFd, RawFd)]) -> io::Result<i32> {
    let base = fds
        .iter()
        .map(|&(a, b)| a.max(b))
        .max()
        .unwrap_or(2)
        .max(exe)
        + 1;
    // Above every number the child arranges: where the program is kept until its exec.
    let exe_at = base + fds.len() as RawFd;
    let name = c"ember-stopper";
    let argv: [*const libc::c_char; 2] = [name.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // Every signal blocked across the fork (as posix_spawn does): none of the daemon's
    // handlers may run in the child before its exec, which then starts with them blocked
    // (the stopper stops itself with SIGSTOP, which cannot be; the restore sets the
    // image's mask).
    // SAFETY: an all-zero sigset_t is valid; sigfillset fills the live local.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a live local.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: both pointers are live locals; this thread's mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    // SAFETY: fork has no preconditions; the child below only makes system calls on
    // integers and on `argv`/`envp`, which were built before the fork, then execs or exits.
    let pid = unsafe { libc::fork() };
    if pid != 0 {
        let forked = match pid {
            p if p > 0 => Ok(p),
            _ => Err(io::Error::last_os_error()),
        };
        // SAFETY: restores the mask saved above, in this thread.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return forked;
    }
    // The child: integer arguments, or pointers to the arrays and strings above, alive
    // until exec.
    // SAFETY: see the line above, for each call.
    unsafe {
        if libc::dup2(exe, exe_at) < 0 {
            libc::_exit(127);
        }
        for (i, &(_, ours)) in fds.iter().enumerate() {
            if libc::dup2(ours, base + i as RawFd) < 0 {
                libc::_exit(127);
            }
        }
        for (i, &(want, _)) in fds.iter().enumerate() {
            if libc::dup2(base + i as RawFd, want) < 0 {
                libc::_exit(127);
            }
        }
        libc::syscall(libc::SYS_close_range, base, exe_at - 1, 0);
        libc::syscall(libc::SYS_close_range, exe_at + 1, u32::MAX, 0);
        libc::syscall(
            libc::SYS_execveat,
            exe_at,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        libc::_exit(127)
    }
}

/// The calling thread's mount namespace and working directory (an `O_PATH` descriptor),
/// to come back to with [`enter_mount_ns`] and [`fchdir`].
pub fn own_mount_ns() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    let open = |path: &std::ffi::CStr, flags: libc::c_int| {
        // SAFETY: a NUL-terminated path; the flags create nothing.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    Ok((
        open(c"/proc/thread-self/ns/mnt", libc::O_RDONLY)?,
        open(c".", libc::O_PATH | libc::O_DIRECTORY)?,
    ))
}

/// `fchdir` to the directory `dir` names.
pub fn fchdir(dir: &std::os::fd::OwnedFd) -> io::Result<()> {
    // SAFETY: a descriptor we hold for the call's length.
    check(unsafe { libc::fchdir(std::os::fd::AsRawFd::as_raw_fd(dir)) } as libc::c_long).map(drop)
}

/// Moves the calling thread into mount namespace `ns` (after leaving the filesystem
/// attributes it shares with the process's other threads, which `setns` requires).
pub fn enter_mount_ns(ns: &std::os::fd::OwnedFd) -> io::Result<()> {
    // SAFETY: unshare takes flags only and affects this thread.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ns` is a descriptor we hold for the call's length.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(ns), libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resource `res` of `pid`: (soft, hard).
pub fn limit_of(pid: i32, res: u32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: no new limit; `old` is a live local the kernel fills.
    let rc = unsafe { libc::prlimit64(pid, res as _, std::ptr::null(), &mut old) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets resource `res` of `pid` to `value` (soft and hard), never above its hard limit.
pub fn lower_limit(pid: i32, res: u32, value: u64) -> io::Result<()> {
    let (_, hard) = limit_of(pid, res)?;
    let v = value.min(hard);
    let new = libc::rlimit64 {
        rlim_cur: v,
        rlim_max: v,
    };
    // SAFETY: `new` is a live local the kernel reads; no old value asked.
    let rc = unsafe { libc::prlimit64(pid, res as _, &new, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `unshare(CLONE_NEWPID)`: this thread's next children go into a fresh pid namespace
/// (the first one becomes its init); the thread itself stays where it is.
pub fn unshare_pidns() -> io::Result<()> {
    // SAFETY: an integer argument; it changes only this thread's namespace for children.
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) } as libc::c_long).map(drop)
}

/// `setns(fd, CLONE_NEWPID)`: this thread's next children go into `fd`'s pid namespace.
pub fn setns_pid(fd: &impl std::os::fd::AsRawFd) -> io::Result<()> {
    // SAFETY: a descriptor we hold and an integer; only this thread's namespace for
    // children changes.
    check(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWPID) } as libc::c_long).map(drop)
}

/// Whether `pid` is blocked in syscall `nr` now (`/proc/PID/syscall`).
pub fn in_syscall(pid: i32, nr: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .is_ok_and(|s| s.split_whitespace().next() == Some(nr.to_string().as_str()))
}

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments; the result is a new descriptor we own.
    let fd = check(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal`: a signal to exactly the process behind `pidfd` (no pid reuse race).
pub fn pidfd_kill(pidfd: &std::os::fd::OwnedFd, sig: i32) {
    use std::os::fd::AsRawFd;
    // SAFETY: integer arguments and a null siginfo, which the syscall allows.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// `pidfd_send_signal` that reports its result (signal 0: whether the process is alive).
pub fn pidfd_signal(pidfd: &std::os::fd::OwnedFd, sig: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: integer arguments and a null siginfo, which the syscall allows.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// `pidfd_getfd`: a copy of descriptor `target_fd` of the process behind `pidfd`.
pub fn pidfd_getfd(
    pidfd: &std::os::fd::OwnedFd,
    target_fd: i32,
) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: integer arguments; the result is a new descriptor we own.
    let fd =
        check(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target_fd, 0) })?;
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// `poll` on descriptors for input; returns which are ready (or hung up).
pub fn poll_in(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd structs.
    let rc = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// `struct sched_attr` (`SCHED_ATTR_SIZE_VER1`, with the utilisation clamps).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
    pub util_min: u32,
    pub util_max: u32,
}
const _: () = assert!(size_of::<SchedAttr>() == 56);

/// `sched_getattr(pid)`: another process's scheduling policy, nice value and parameters.
pub fn sched_getattr(pid: i32) -> io::Result<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: `a` is a live local of the size passed; the kernel writes at most that much.
    check(unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            pid,
            &mut a as *mut SchedAttr,
            size_of::<SchedAttr>() as u32,
            0u32,
        )
    })?;
    Ok(a)
}

/// `ioprio_get(IOPRIO_WHO_PROCESS, pid)`: another process's I/O priority (class and level).
pub fn ioprio_get(pid: i32) -> io::Result<u32> {
    // SAFETY: plain integer arguments; nothing is written to our memory.
    let v = check(unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, pid) })?;
    Ok(v as u32)
}

pub const IOPRIO_WHO_PROCESS: i32 = 1;

/// `sched_getaffinity(pid)`: the CPU mask, as 64-bit words (1,024 CPUs at most).
pub fn sched_getaffinity(pid: i32) -> io::Result<Vec<u64>> {
    let mut mask = [0u64; 16];
    // SAFETY: `mask` is a live local of the size passed; the kernel writes at most that.
    let n = check(unsafe {
        libc::syscall(
            libc::SYS_sched_getaffinity,
            pid,
            size_of::<[u64; 16]>(),
            mask.as_mut_ptr(),
        )
    })?;
    let words = (n as usize / 8).min(mask.len());
    Ok(mask[..words].to_vec())
}

/// `PTRACE_PEEKSIGINFO`: the signals queued for a stopped tracee, without taking them;
/// `shared`: the process's queue instead of the thread's. Each entry is a raw 128-byte
/// `siginfo_t`. At most `max` are read.
pub fn peek_siginfo(pid: i32, shared: bool, max: usize) -> io::Result<Vec<[u8; 128]>> {
    /// `struct ptrace_peeksiginfo_args`.
    #[repr(C)]
    struct Args {
        off: u64,
        flags: u32,
        nr: i32,
    }
    const _: () = assert!(size_of::<Args>() == 16);
    const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
    let mut out = Vec::new();
    let mut buf = vec![[0u8; 128]; 16];
    while out.len() < max {
        let args = Args {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: buf.len() as i32,
        };
        let n = ptrace(
            libc::PTRACE_PEEKSIGINFO,
            pid,
            &args as *const Args as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n.min(buf.len())]);
    }
    Ok(out)
}

/// `PTRACE_SECCOMP_GET_FILTER`: the classic BPF program of the tracee's filter `index`
/// (0 is the first installed, the oldest), as raw 8-byte `sock_filter`s; `None` past the
/// last.
pub fn seccomp_filter(pid: i32, index: usize) -> io::Result<Option<Vec<u64>>> {
    const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
    let n = match ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, 0) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut prog = vec![0u64; n];
    let got = ptrace(
        PTRACE_SECCOMP_GET_FILTER,
        pid,
        index,
        prog.as_mut_ptr() as usize,
    )? as usize;
    prog.truncate(got);
    Ok(Some(prog))
}

/// `PTRACE_SECCOMP_GET_METADATA`: the flags the tracee's filter `index` (counted as for
/// [`seccomp_filter`]) was installed with; this kernel reports `SECCOMP_FILTER_FLAG_LOG`.
pub fn seccomp_filter_flags(pid: i32, index: usize) -> io::Result<u64> {
    /// `struct seccomp_metadata`.
    #[repr(C)]
    struct Metadata {
        filter_off: u64,
        flags: u64,
    }
    const _: () = assert!(size_of::<Metadata>() == 16);
    const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
    let mut m = Metadata {
        filter_off: index as u64,
        flags: 0,
    };
    let at = &mut m as *mut Metadata as usize;
    ptrace(PTRACE_SECCOMP_GET_METADATA, pid, size_of::<Metadata>(), at)?;
    Ok(m.flags)
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET)` on ourselves: whether
/// this kernel lets a restorer create POSIX timers with chosen ids (Linux 6.15).
pub fn timer_restore_ids_supported() -> bool {
    // SAFETY: integer arguments; the GET form only reads a flag of ours.
    unsafe { libc::prctl(PR_TIMER_CREATE_RESTORE_IDS, 2, 0, 0, 0) >= 0 }
}

/// `PR_TIMER_CREATE_RESTORE_IDS`: while on, `timer_create` takes the id its third argument
/// points at.
pub const PR_TIMER_CREATE_RESTORE_IDS: i32 = 77;
