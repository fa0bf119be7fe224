//! Every syscall the sandbox makes, each in one small wrapper. Those marked *child* run
//! between fork and exec: they call only async-signal-safe functions and never allocate.

use std::ffi::CStr;
use std::io;
use std::ptr;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// SIGKILL to one process; a process already gone is fine.
pub fn kill(pid: i32) {
    if pid > 1 {
        // SAFETY: kill takes plain integers; pid > 1 never addresses a group or everyone.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// *child* Writes `data` to an existing file (joining a cgroup through `cgroup.procs`).
pub fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; the flags create nothing.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is a valid buffer of `data.len()` bytes; `fd` was just opened.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    if n < 0 { Err(err) } else { Ok(()) }
}

/// *child* A pipe whose ends close on exec: (read, write).
pub fn pipe() -> io::Result<(libc::c_int, libc::c_int)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((fds[0], fds[1]))
}

/// *child* Writes one byte (a signal between the two set-up processes).
pub fn send_byte(fd: libc::c_int, b: u8) {
    // SAFETY: writing one byte from a stack variable to a descriptor this process owns.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
}

/// *child* Reads one byte; `None` at end of file or on error.
pub fn recv_byte(fd: libc::c_int) -> Option<u8> {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into a stack variable from a descriptor this process owns.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            return Some(b);
        }
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return None;
    }
}

/// *child*
pub fn close(fd: libc::c_int) {
    // SAFETY: closing a descriptor this process owns.
    unsafe { libc::close(fd) };
}

/// Formats a pid in decimal into `buf` without allocating; returns the digits.
pub fn pid_digits(pid: libc::pid_t, buf: &mut [u8; 12]) -> &[u8] {
    let mut n = pid.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    &buf[i..]
}

/// *child*
pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes a flag set and no pointers.
    check(unsafe { libc::unshare(flags) })
}

/// *child* Joins the network namespace `fd` names.
pub fn setns_net(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a namespace type; no pointers.
    check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) })
}

/// A new network namespace whose loopback is up and, with `port`, a TCP listener on
/// 127.0.0.1:`port` in it: (the namespace, the listener). The daemon serves the listener
/// from its own namespace; an instance that joins the namespace reaches it, and nothing
/// else can.
///
/// Made on a thread of its own, since a network namespace belongs to a thread: the thread
/// enters the new namespace, makes the socket and ends, and the namespace lives on for as
/// long as the returned descriptors do.
pub fn new_netns(
    port: Option<u16>,
) -> io::Result<(std::os::fd::OwnedFd, Option<std::net::TcpListener>)> {
    std::thread::Builder::new()
        .name("ember-netns".into())
        .spawn(move || {
            use std::os::fd::FromRawFd;
            unshare(libc::CLONE_NEWNET)?;
            let listener = match port {
                Some(port) => {
                    loopback_up()?;
                    Some(std::net::TcpListener::bind(("127.0.0.1", port))?)
                }
                None => None,
            };
            // SAFETY: a NUL-terminated path; the flags create nothing.
            let fd = unsafe {
                libc::open(
                    c"/proc/thread-self/ns/net".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok((unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }, listener))
        })?
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

/// Sets `lo` up in the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket takes integers; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` was just created and is owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data, valid when zeroed.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the interface `req` names; `req` is valid.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: reading and writing the flags member of the union SIOCGIFFLAGS just filled.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, which names `lo` and holds its new flags.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })
}

/// *child* fork; returns the child's pid in the parent and 0 in the child.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: called in a single-threaded child between fork and exec, where a second fork
    // is async-signal-safe; the new process only runs further async-signal-safe code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// *child* Closes every descriptor from `first` up.
pub fn close_from(first: libc::c_uint) {
    // SAFETY: close_range takes integers; closing descriptors this process owns.
    unsafe { libc::syscall(libc::SYS_close_range, first, libc::c_uint::MAX, 0) };
}

/// *child* Waits for `pid` and ends this process the same way: its exit code, or 128 plus
/// the signal that killed it (what a shell reports).
pub fn relay_exit(pid: libc::pid_t) -> ! {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for waitpid.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            status = 127 << 8;
            break;
        }
    }
    let code = if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    };
    // SAFETY: _exit ends the process without running any user-space teardown.
    unsafe { libc::_exit(code) }
}

/// *child* mount(2); `None` passes NULL.
pub fn mount(
    src: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is NULL or a valid NUL-terminated string that outlives the call.
    check(unsafe { libc::mount(p(src), target.as_ptr(), p(fstype), flags, p(data).cast()) })
}

/// *child* mkdir that tolerates an existing directory.
pub fn mkdir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let rc = unsafe { libc::mkdir(path.as_ptr(), mode) };
    if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// *child* Creates an empty file (a mount point for a file bind).
pub fn touch(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; O_CREAT with a mode.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    Ok(())
}

/// *child*
pub fn symlink(target: &CStr, link: &CStr) -> io::Result<()> {
    // SAFETY: both are valid NUL-terminated strings.
    check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
}

/// *child*
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: pivot_root has no libc wrapper; both arguments are valid strings.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// *child*
pub fn umount_detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is a valid NUL-terminated string.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
}

/// *child*
pub fn rmdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::rmdir(path.as_ptr()) })
}

/// *child*
pub fn chdir(path: &CStr) -> io::Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string.
    check(unsafe { libc::chdir(path.as_ptr()) })
}

/// *child*
pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: `name` is a valid buffer of `name.len()` bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// *child*
pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `lim` is a valid rlimit on the stack.
    check(unsafe { libc::setrlimit(resource, &lim) })
}

/// *child* Empties the capability bounding set, so no exec can ever regain a capability.
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with PR_CAPBSET_DROP takes a capability number.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// *child* Becomes `uid:gid` with no supplementary groups; a non-root uid holds no
/// capabilities afterwards.
pub fn become_user(uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
    // SAFETY: setgroups with a zero count reads no pointer.
    check(unsafe { libc::setgroups(0, ptr::null()) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: plain integer arguments.
    check(unsafe { libc::setresuid(uid, uid, uid) })
}

/// *child* Sends `sig` to `pid`.
pub fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill takes plain integers; callers pass a child's pid (> 0).
    unsafe { libc::kill(pid, sig) };
}

/// *child* Waits until the child `pid` has stopped (or ended).
pub fn wait_stopped(pid: libc::pid_t) {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for waitpid.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
        if rc >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

/// *child* Closes every descriptor from `first` up, except the two in `keep`.
pub fn close_from_except(first: libc::c_uint, keep: [libc::c_int; 2]) {
    let (a, b) = (
        keep[0].min(keep[1]) as libc::c_uint,
        keep[0].max(keep[1]) as libc::c_uint,
    );
    let mut from = first;
    for k in [a, b] {
        if k >= from {
            if k > from {
                // SAFETY: close_range takes integers; closing descriptors this process owns.
                unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
            }
            from = k + 1;
        }
    }
    close_from(from);
}

/// *child* Moves the descriptors `a` and `b` to `first` and `first + 1` (closing them where
/// they were), keeping close-on-exec; returns the new numbers. Whatever else is at those
/// two numbers is closed.
pub fn move_pair_to(
    a: libc::c_int,
    b: libc::c_int,
    first: libc::c_int,
) -> io::Result<(libc::c_int, libc::c_int)> {
    let mut b = b;
    if b == first {
        // `a` goes there: `b` steps aside first, above both targets.
        // SAFETY: fcntl F_DUPFD_CLOEXEC on a descriptor this process owns; no pointers.
        let moved = unsafe { libc::fcntl(b, libc::F_DUPFD_CLOEXEC, first + 2) };
        if moved < 0 {
            return Err(io::Error::last_os_error());
        }
        close(b);
        b = moved;
    }
    Ok((move_to(a, first)?, move_to(b, first + 1)?))
}

/// *child* `fd` at number `to` (close-on-exec), no longer at its old number.
fn move_to(fd: libc::c_int, to: libc::c_int) -> io::Result<libc::c_int> {
    if fd == to {
        return Ok(fd);
    }
    // SAFETY: dup3 takes two descriptor numbers and a flag; `fd` is this process's.
    check(unsafe { libc::dup3(fd, to, libc::O_CLOEXEC) })?;
    close(fd);
    Ok(to)
}

/// *child* Dies with its parent (must follow the credential change, which clears it).
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })
}

// The new mount API (linux/mount.h); kernel ABI: open_tree and move_mount since Linux 5.2,
// mount_setattr since 5.12.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn owned(fd: libc::c_long) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`), made read-only,
/// `nosuid`, `nodev` and private (no propagation to or from the host's mounts: a host whose
/// `/` is shared, as systemd makes it, would otherwise show the instance what is mounted
/// under the directory later), to be attached elsewhere with `move_mount`, also in another
/// mount namespace.
fn read_only_tree(path: &CStr) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: open_tree takes a directory fd, a valid NUL-terminated path and flags; it
    // returns a new descriptor or -1.
    let tree =
        owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) })?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `attr` (a valid struct of the size passed) and the empty
    // path, which with AT_EMPTY_PATH names `tree` itself.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches the detached tree `tree` on the directory `dir` (an `O_PATH` descriptor).
fn move_tree(tree: &std::os::fd::OwnedFd, dir: &std::os::fd::OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: move_mount takes two (fd, path) pairs and flags; the empty paths with the
    // EMPTY_PATH flags name the descriptors themselves.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(i32::try_from(rc).unwrap_or(-1))
}

/// The directory `path` (absolute) in the calling thread's mount namespace, made where
/// missing, reached without following a symbolic link, each component owned by root: the
/// instance's own writable places (its /tmp) cannot redirect it.
fn root_owned_dir(path: &[u8]) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let o_path = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated path; O_PATH opens nothing for reading.
    let mut dir = owned(unsafe { libc::open(c"/".as_ptr(), o_path) }.into())?;
    for name in path.split(|b| *b == b'/').filter(|n| !n.is_empty()) {
        if name == b"." || name == b".." {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
        // SAFETY: a directory descriptor and a NUL-terminated name.
        let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: as above; O_NOFOLLOW refuses a symbolic link, O_DIRECTORY anything else.
        let next = owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), o_path) }.into())?;
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `next` is open and `st` is a valid out-pointer.
        check(unsafe { libc::fstat(next.as_raw_fd(), &mut st) })?;
        if st.st_uid != 0 {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        dir = next;
    }
    Ok(dir)
}

/// The calling thread's mount namespace (`/proc/thread-self/ns/mnt`), as a descriptor.
pub fn open_own_mount_ns() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: a NUL-terminated path; the flags create nothing.
    owned(
        unsafe {
            libc::open(
                c"/proc/thread-self/ns/mnt".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        }
        .into(),
    )
}

/// A pidfd of process `pid`.
pub fn pidfd_open(pid: libc::pid_t) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })
}

/// Binds the host directories `dirs` read-only (and `nosuid`, `nodev`), each (host path,
/// path inside) at its path inside, in the mount namespace of the process `pidfd` names, a sandbox's first process. The trees are cloned
/// and made read-only here, in the host's namespace; a thread of its own (a mount namespace
/// belongs to a thread's filesystem context, which it first unshares) enters the
/// instance's, makes the root writable for the time of the `mkdir`s, attaches each tree on
/// its directory (reached without following links) and makes the root read-only again.
/// The error names the step (the path) that failed.
///
/// With `remount_root` false the root stays read-only: a root shared with other instances
/// (a template's view) is never written; the directories are then made only below the
/// instance's own writable mounts, and a bind that would need one elsewhere fails (EROFS).
pub fn bind_into(
    pidfd: &std::os::fd::OwnedFd,
    dirs: &[(std::ffi::CString, std::ffi::CString)],
    remount_root: bool,
) -> Result<(), (String, io::Error)> {
    let at = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| (what, e)
    };
    let trees = dirs
        .iter()
        .map(|(d, _)| read_only_tree(d).map_err(at(&d.to_string_lossy())))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("ember-mounts".into())
            .spawn_scoped(s, || {
                use std::os::fd::AsRawFd;
                unshare(libc::CLONE_FS).map_err(at("unshare(CLONE_FS)"))?;
                // SAFETY: setns takes a descriptor and a namespace type; no pointers.
                check(unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNS) })
                    .map_err(at("setns(mnt)"))?;
                let none = None;
                let base = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                if remount_root {
                    mount(none, c"/", none, base, none).map_err(at("remounting / writable"))?;
                }
                let attached = dirs.iter().zip(&trees).try_for_each(|((_, dir), tree)| {
                    let name = dir.to_string_lossy();
                    let target = root_owned_dir(dir.to_bytes()).map_err(at(&name))?;
                    move_tree(tree, &target).map_err(at(&name))
                });
                if !remount_root {
                    return attached;
                }
                let ro = mount(none, c"/", none, base | libc::MS_RDONLY, none)
                    .map_err(at("remounting / read-only"));
                attached.and(ro)
            })
            .map_err(at("spawning the mount thread"))?
            .join()
            .map_err(|_| ("the mount thread".to_string(), io::Error::other("panicked")))?
    })
}

/// Sets the size of the /tmp tmpfs in the mount namespace of the process `pidfd` names (a
/// sandbox's first process), from a thread of its own that enters it, as [`bind_into`]
/// does. Fails (EINVAL) when /tmp already holds more.
pub fn resize_tmp_in(pidfd: &std::os::fd::OwnedFd, bytes: u64) -> io::Result<()> {
    let data = std::ffi::CString::new(format!("size={bytes}")).map_err(io::Error::other)?;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("ember-mounts".into())
            .spawn_scoped(s, || {
                use std::os::fd::AsRawFd;
                unshare(libc::CLONE_FS)?;
                // SAFETY: setns takes a descriptor and a namespace type; no pointers.
                check(unsafe { libc::setns(pidfd.as_raw_fd(), libc::CLONE_NEWNS) })?;
                let flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                mount(None, c"/tmp", None, flags, Some(data.as_c_str()))
            })?
            .join()
            .map_err(|_| io::Error::other("the mount thread panicked"))?
    })
}

/// A stack for a process made by [`clone_vm`], below a guard page; unmapped on drop.
pub struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    /// `size` bytes of stack (rounded up to pages) above one inaccessible page.
    pub fn new(size: usize) -> io::Result<Stack> {
        let page = 4096;
        let len = size.div_ceil(page) * page + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is named.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping made above becomes the guard.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: unmapping the mapping made above, which nothing else uses.
            unsafe { libc::munmap(base, len) };
            return Err(e);
        }
        Ok(Stack { base, len })
    }

    /// The top (stacks grow down), 16-byte aligned.
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping made in `new`, which is page-aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; the process that ran on it has exec'd or ended
        // (clone_vm returns only then).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Makes a process that shares this one's memory, on `stack`, running `child(arg)`, the
/// way posix_spawn does (`CLONE_VM | CLONE_VFORK`): no page table is copied, and the
/// calling thread is suspended until the child execs or ends. `flags` adds namespaces
/// (`CLONE_NEWPID`). The child's host pid is also stored at `tid` before it runs. Every
/// signal is blocked across the call, so no handler of ours runs on the child's stack.
///
/// # Safety
/// `child` must only make async-signal-safe calls and never return into, unwind through or
/// free anything of the caller's (it ends with exec or `_exit`); it must not touch memory
/// the caller's other threads may change. `arg` and `tid` must stay valid until this
/// returns.
pub unsafe fn clone_vm(
    child: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    stack: &Stack,
    flags: libc::c_int,
    arg: *mut libc::c_void,
    tid: *mut libc::pid_t,
) -> io::Result<libc::pid_t> {
    // SAFETY: an all-zero sigset_t is valid; sigfillset fills the live local.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a live local.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: both pointers are live locals; this thread's mask only.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    let flags = flags | libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PARENT_SETTID;
    // SAFETY: `stack` is a live mapping the child runs on until exec; the caller vouches
    // for `child`, `arg` and `tid` (see the function's contract).
    let pid = unsafe { libc::clone(child, stack.top(), flags | libc::SIGCHLD, arg, tid) };
    let r = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    // SAFETY: restores the mask saved above, in this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut()) };
    r
}

/// *child* Leads a new session (and process group).
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    check(unsafe { libc::setsid() })
}

/// *child* Writes all of `data` (a few bytes, to a pipe).
pub fn write_all(fd: libc::c_int, data: &[u8]) -> io::Result<()> {
    // SAFETY: `data` is a valid buffer of `data.len()` bytes; `fd` is this process's.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n == data.len() as isize {
        Ok(())
    } else if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::from_raw_os_error(libc::EPIPE))
    }
}

/// Reads exactly `buf.len()` bytes; `false` at end of file or on an error.
pub fn read_exact(fd: libc::c_int, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: reading into the unfilled rest of `buf`; `fd` is this process's.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        } else {
            return false;
        }
    }
    true
}

/// *child* Puts `fds` (`(wanted number, our descriptor)`, at most 8) at their numbers and
/// `exe` above them (close-on-exec), and closes every other descriptor; returns where `exe`
/// is now. The copies made on the way take the lowest free numbers above the wanted ones
/// (never past the limit on descriptors while the daemon's own are below it).
pub fn arrange_fds(
    exe: libc::c_int,
    fds: &[(libc::c_int, libc::c_int)],
) -> io::Result<libc::c_int> {
    let above = fds.iter().map(|&(want, _)| want).max().unwrap_or(2) + 1;
    let dup_above = |fd: libc::c_int, cmd: libc::c_int| {
        // SAFETY: fcntl F_DUPFD(_CLOEXEC) takes a descriptor and a lowest number.
        let new = unsafe { libc::fcntl(fd, cmd, above) };
        if new < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(new)
        }
    };
    // Closed by the exec itself (an ELF program; a script would need it open).
    let exe_at = dup_above(exe, libc::F_DUPFD_CLOEXEC)?;
    let mut temp: [libc::c_int; 8] = [-1; 8];
    for (slot, &(_, ours)) in temp.iter_mut().zip(fds) {
        *slot = dup_above(ours, libc::F_DUPFD)?;
    }
    for (&t, &(want, _)) in temp.iter().zip(fds) {
        // SAFETY: dup2 takes two descriptor numbers; the new one has no FD_CLOEXEC.
        if unsafe { libc::dup2(t, want) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // Everything but the wanted numbers and the program, closed range by range.
    let mut keep: [libc::c_int; 9] = [libc::c_int::MAX; 9];
    for (slot, &(want, _)) in keep.iter_mut().zip(fds) {
        *slot = want;
    }
    keep[8] = exe_at;
    keep.sort_unstable();
    let mut from: libc::c_uint = 0;
    for &k in &keep {
        if k == libc::c_int::MAX {
            break;
        }
        let k = k as libc::c_uint;
        if k > from {
            // SAFETY: close_range takes integers; closing descriptors this process owns.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0) };
        }
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0) };
    Ok(exe_at)
}

/// *child* Execs the program at descriptor `exe` (`execveat` with `AT_EMPTY_PATH`: no path,
/// no /proc needed; an ELF program, not a script). Returns only on an error.
pub fn exec_fd(
    exe: libc::c_int,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> io::Error {
    // SAFETY: `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings the
    // caller keeps alive; the empty path with AT_EMPTY_PATH names `exe` itself.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// Whether `pid` sleeps in system call `nr` (`/proc/<pid>/syscall`: "running", or the
/// number of the call it waits in and its arguments).
pub fn in_syscall(pid: libc::pid_t, nr: libc::c_long) -> io::Result<bool> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall"))?;
    Ok(text.split_whitespace().next() == Some(nr.to_string().as_str()))
}

/// How [`stop_child`] found the child.
pub enum Stop {
    Stopped,
    /// It ended instead, and was collected (its pid may be reused: never signal it again).
    Ended,
}

/// Stops the child `pid` (SIGSTOP) and waits until it is.
pub fn stop_child(pid: libc::pid_t) -> io::Result<Stop> {
    // SAFETY: kill takes plain integers; `pid` is our child (> 0), not collected yet.
    check(unsafe { libc::kill(pid, libc::SIGSTOP) })?;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for waitpid.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(if libc::WIFSTOPPED(status) {
            Stop::Stopped
        } else {
            Stop::Ended
        });
    }
}

/// Continues the stopped child `pid` (SIGCONT).
pub fn continue_child(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: kill takes plain integers; `pid` is our stopped child (> 0).
    check(unsafe { libc::kill(pid, libc::SIGCONT) })
}

/// Collects the ended child `pid` (blocking).
pub fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer for waitpid.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

#[cfg(test)]
mod tests {
    #[test]
    fn pids_format_without_allocating() {
        let mut b = [0u8; 12];
        assert_eq!(super::pid_digits(0, &mut b), b"0");
        assert_eq!(super::pid_digits(7, &mut b), b"7");
        assert_eq!(super::pid_digits(4194304, &mut b), b"4194304");
    }

    /// A pipe's two ends placed at `r` and `w` (numbers far above what a test process holds).
    fn pipe_at(r: libc::c_int, w: libc::c_int) -> (libc::c_int, libc::c_int) {
        let (a, b) = super::pipe().unwrap();
        let (tmp_a, tmp_b) = (
            super::move_to(a, 700).unwrap(),
            super::move_to(b, 701).unwrap(),
        );
        (
            super::move_to(tmp_a, r).unwrap(),
            super::move_to(tmp_b, w).unwrap(),
        )
    }

    fn is_open(fd: libc::c_int) -> bool {
        // SAFETY: F_GETFD takes a descriptor number and no pointers.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn a_pair_moves_to_its_numbers_from_any_arrangement() {
        // (write end, read end) before the move; the write end goes to 600, the read end to 601.
        for (w, r) in [(610, 611), (601, 600), (600, 620), (620, 601), (601, 630)] {
            let (r, w) = pipe_at(r, w);
            let (w2, r2) = super::move_pair_to(w, r, 600).unwrap();
            assert_eq!((w2, r2), (600, 601));
            super::send_byte(600, b'x');
            assert_eq!(super::recv_byte(601), Some(b'x'), "moved from {w}, {r}");
            for old in [w, r] {
                assert!(old == 600 || old == 601 || !is_open(old), "{old} left open");
            }
            // SAFETY: F_GETFD takes a descriptor number and no pointers.
            assert_eq!(unsafe { libc::fcntl(600, libc::F_GETFD) }, libc::FD_CLOEXEC);
            super::close(600);
            super::close(601);
        }
        assert!(!is_open(602) && !is_open(603));
    }
}
