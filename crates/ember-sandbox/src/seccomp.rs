//! The seccomp allowlist every instance runs under. A syscall not listed kills the instance
//! (`SECCOMP_RET_KILL_PROCESS`, seen by the node as SIGSYS and reported as reason `seccomp`).
//!
//! Namespaces cannot be created or joined by any route: `unshare` and `setns` are not listed;
//! `clone` is allowed only when its flags ask for no new namespace (any `CLONE_NEW*` flag
//! kills the instance); `clone3`, whose flags sit in a struct a filter cannot read, fails with
//! `ENOSYS`, on which glibc (and Go, Rust's std, musl) fall back to `clone`.
//!
//! Sockets are limited to the families a function uses (Unix, IPv4, IPv6, and netlink, which
//! glibc's `getifaddrs` reads): any other (`AF_ALG`, `AF_PACKET`, `AF_VSOCK`, ... kernel code a
//! function has no business with) fails with `EAFNOSUPPORT`, as on a kernel without it, so
//! that code probing for a family goes on.
//!
//! Those two answers come from a prefix written here, since seccompiler gives one action to
//! every match:
//!
//! ```text
//!  0: A = seccomp_data.arch
//!  1: A == AUDIT_ARCH_X86_64 ? next : goto 12
//!  2: A = seccomp_data.nr
//!  3: A == SYS_clone3 ? next : goto 5
//!  4: return ERRNO(ENOSYS)
//!  5: A == SYS_socket ? next : goto 12
//!  6: A = low half of seccomp_data.args[0] (the family; the kernel reads an int)
//!  7: A == AF_UNIX    ? goto 12 : next
//!  8: A == AF_INET    ? goto 12 : next
//!  9: A == AF_INET6   ? goto 12 : next
//! 10: A == AF_NETLINK ? goto 12 : next
//! 11: return ERRNO(EAFNOSUPPORT)
//! 12: the allowlist (seccompiler): arch check, then one branch per syscall
//! ```
//!
//! The list was taken from what CPython and the examples (numpy, scikit-learn, pandas,
//! chameleon, pyaes; threads, subprocesses, tempfiles, sockets) call under `strace -f`, plus
//! what a process needs to start and end. Each entry says why it is there. Deliberately
//! absent: mount/umount, pivot_root, chroot, ptrace, process_vm_*, bpf, perf_event_open,
//! unshare, setns, keyctl/add_key/request_key, kexec_*, *module, reboot, swapon/off, syslog,
//! userfaultfd, io_uring_*, open_by_handle_at, name_to_handle_at, setuid/setgid family,
//! acct, quotactl, mknod.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// Every flag of `clone` that makes a new namespace. (`CLONE_NEWTIME`, 0x80, exists only for
/// `clone3` and `unshare`: in `clone`'s flags those bits are the exit signal.)
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// (syscall, why an instance may make it)
pub const ALLOWED: &[(i64, &str)] = &[
    // Files and descriptors: reading code and packages, writing /tmp, the protocol socket.
    (libc::SYS_read, "read files, pipes and the protocol socket"),
    (libc::SYS_write, "write files, logs and the protocol socket"),
    (libc::SYS_readv, "vectored reads (buffered I/O)"),
    (libc::SYS_writev, "vectored writes (buffered I/O)"),
    (
        libc::SYS_pread64,
        "positioned reads (zip imports, numpy loaders)",
    ),
    (libc::SYS_pwrite64, "positioned writes"),
    (libc::SYS_open, "open files (legacy entry point)"),
    (libc::SYS_openat, "open files"),
    (libc::SYS_close, "close descriptors"),
    (
        libc::SYS_close_range,
        "subprocess closes inherited descriptors",
    ),
    (libc::SYS_fstat, "stat an open file"),
    (libc::SYS_stat, "stat a path (legacy)"),
    (libc::SYS_lstat, "lstat a path (legacy)"),
    (libc::SYS_newfstatat, "stat a path (import system)"),
    (libc::SYS_statx, "stat a path (newer glibc)"),
    (
        libc::SYS_statfs,
        "filesystem information (tempfile, shutil)",
    ),
    (libc::SYS_fstatfs, "filesystem information of an open file"),
    (libc::SYS_lseek, "seek in files"),
    (libc::SYS_access, "check a path (import system)"),
    (libc::SYS_faccessat, "check a path"),
    (libc::SYS_faccessat2, "check a path (newer glibc)"),
    (
        libc::SYS_getdents64,
        "list directories (import system, os.listdir)",
    ),
    (libc::SYS_getcwd, "os.getcwd"),
    (libc::SYS_chdir, "change directory"),
    (libc::SYS_fchdir, "change directory by descriptor"),
    (
        libc::SYS_readlink,
        "resolve symlinks (venv python, realpath)",
    ),
    (libc::SYS_readlinkat, "resolve symlinks"),
    (libc::SYS_fcntl, "descriptor flags (CLOEXEC, non-blocking)"),
    (
        libc::SYS_ioctl,
        "isatty checks (TCGETS) and FIONBIO/FIOCLEX",
    ),
    (libc::SYS_dup, "duplicate descriptors"),
    (libc::SYS_dup2, "duplicate descriptors (subprocess stdio)"),
    (libc::SYS_dup3, "duplicate descriptors"),
    (libc::SYS_pipe, "pipes"),
    (libc::SYS_pipe2, "pipes (subprocess)"),
    (libc::SYS_mkdir, "create directories in /tmp"),
    (libc::SYS_mkdirat, "create directories in /tmp"),
    (libc::SYS_rmdir, "remove directories in /tmp"),
    (libc::SYS_unlink, "remove files in /tmp"),
    (libc::SYS_unlinkat, "remove files in /tmp"),
    (libc::SYS_rename, "rename files in /tmp"),
    (libc::SYS_renameat, "rename files in /tmp"),
    (libc::SYS_renameat2, "rename files in /tmp"),
    (
        libc::SYS_link,
        "hard links in /tmp (tempfile, multiprocessing)",
    ),
    (libc::SYS_linkat, "hard links in /tmp"),
    (libc::SYS_symlink, "symlinks in /tmp"),
    (libc::SYS_symlinkat, "symlinks in /tmp"),
    (libc::SYS_chmod, "permissions of own files in /tmp"),
    (libc::SYS_fchmod, "permissions of own files in /tmp"),
    (libc::SYS_fchmodat, "permissions of own files in /tmp"),
    (libc::SYS_umask, "file creation mask"),
    (libc::SYS_truncate, "truncate own files"),
    (libc::SYS_ftruncate, "truncate own files"),
    (libc::SYS_fsync, "flush files"),
    (libc::SYS_fdatasync, "flush files"),
    (libc::SYS_flock, "file locks (sqlite, pip caches)"),
    (libc::SYS_utimensat, "set file times"),
    (libc::SYS_copy_file_range, "shutil.copyfile"),
    (libc::SYS_sendfile, "shutil.copyfile, socket.sendfile"),
    (libc::SYS_fadvise64, "read-ahead hints"),
    (libc::SYS_getxattr, "shutil.copystat"),
    (libc::SYS_lgetxattr, "shutil.copystat"),
    (libc::SYS_fgetxattr, "shutil.copystat"),
    (libc::SYS_listxattr, "shutil.copystat"),
    (libc::SYS_llistxattr, "shutil.copystat"),
    (libc::SYS_flistxattr, "shutil.copystat"),
    // Memory.
    (libc::SYS_brk, "heap"),
    (libc::SYS_mmap, "allocations, shared libraries"),
    (libc::SYS_munmap, "free mappings"),
    (libc::SYS_mprotect, "library loading, guard pages"),
    (libc::SYS_mremap, "growing buffers (bytearray, numpy)"),
    (libc::SYS_madvise, "allocator hints (glibc, numpy)"),
    (libc::SYS_mincore, "allocator probes"),
    (libc::SYS_msync, "mmap module"),
    (libc::SYS_mbind, "NUMA hints in OpenBLAS"),
    (libc::SYS_get_mempolicy, "NUMA queries in OpenBLAS"),
    (
        libc::SYS_memfd_create,
        "anonymous files (multiprocessing, JIT)",
    ),
    (libc::SYS_membarrier, "runtime memory barriers"),
    (
        libc::SYS_pkey_alloc,
        "memory protection keys (V8 allocates one at start: Node.js)",
    ),
    (libc::SYS_pkey_free, "memory protection keys"),
    (libc::SYS_pkey_mprotect, "memory protection keys"),
    // Processes and threads: bounded by the pids limit, confined to the pid namespace.
    (
        libc::SYS_clone,
        "threads and fork (only without CLONE_NEW* flags, see clone_rule)",
    ),
    (libc::SYS_fork, "os.fork"),
    (libc::SYS_vfork, "subprocess (CPython uses vfork)"),
    (libc::SYS_execve, "exec the runtime, subprocesses"),
    (libc::SYS_execveat, "exec by descriptor"),
    (libc::SYS_wait4, "wait for children"),
    (libc::SYS_waitid, "wait for children"),
    (libc::SYS_exit, "end a thread"),
    (libc::SYS_exit_group, "end the process"),
    (
        libc::SYS_kill,
        "signal own processes (the pid namespace holds no others)",
    ),
    (libc::SYS_tgkill, "signal own threads"),
    (libc::SYS_tkill, "signal own threads"),
    (libc::SYS_getpid, "own pid"),
    (libc::SYS_getppid, "parent pid"),
    (libc::SYS_gettid, "own thread id"),
    (libc::SYS_set_tid_address, "thread start-up (glibc)"),
    (libc::SYS_set_robust_list, "thread start-up (glibc)"),
    (libc::SYS_get_robust_list, "thread state"),
    (libc::SYS_rseq, "restartable sequences (glibc)"),
    (libc::SYS_futex, "locks, thread joins"),
    (libc::SYS_futex_waitv, "locks (newer glibc)"),
    (libc::SYS_sched_yield, "spin-waits in BLAS"),
    (
        libc::SYS_sched_getaffinity,
        "CPU count (os.cpu_count, OpenBLAS)",
    ),
    (libc::SYS_sched_setaffinity, "thread pinning in BLAS"),
    (libc::SYS_sched_getparam, "thread scheduling queries"),
    (libc::SYS_sched_getscheduler, "thread scheduling queries"),
    (libc::SYS_arch_prctl, "thread-local storage set-up"),
    (
        libc::SYS_prctl,
        "thread names and process flags (only narrowing ones need no capability)",
    ),
    (libc::SYS_getpgrp, "process group"),
    (libc::SYS_getpgid, "process group"),
    (libc::SYS_setpgid, "subprocess process groups"),
    (libc::SYS_getsid, "session id"),
    (libc::SYS_setsid, "subprocess start_new_session"),
    (libc::SYS_getuid, "identity queries"),
    (libc::SYS_geteuid, "identity queries"),
    (libc::SYS_getgid, "identity queries"),
    (libc::SYS_getegid, "identity queries"),
    (libc::SYS_getresuid, "identity queries"),
    (libc::SYS_getresgid, "identity queries"),
    (libc::SYS_getgroups, "identity queries"),
    (libc::SYS_capget, "capability queries (none are held)"),
    (libc::SYS_getrlimit, "resource limit queries"),
    (
        libc::SYS_prlimit64,
        "resource limits (only lowering needs no capability)",
    ),
    (libc::SYS_getrusage, "resource usage"),
    (libc::SYS_getpriority, "niceness queries"),
    (libc::SYS_setpriority, "lowering own priority"),
    // Signals and time.
    (
        libc::SYS_rt_sigaction,
        "signal handlers (CPython installs several)",
    ),
    (libc::SYS_rt_sigprocmask, "signal masks"),
    (libc::SYS_rt_sigreturn, "return from signal handlers"),
    (libc::SYS_rt_sigsuspend, "signal.pause"),
    (libc::SYS_rt_sigtimedwait, "signal.sigtimedwait"),
    (libc::SYS_sigaltstack, "faulthandler's stack"),
    (libc::SYS_alarm, "signal.alarm"),
    (libc::SYS_setitimer, "signal.setitimer"),
    (libc::SYS_getitimer, "signal.getitimer"),
    (libc::SYS_nanosleep, "time.sleep"),
    (libc::SYS_clock_nanosleep, "time.sleep"),
    (
        libc::SYS_clock_gettime,
        "clocks (when the vDSO is not used)",
    ),
    (libc::SYS_clock_getres, "clock resolution"),
    (libc::SYS_gettimeofday, "clocks (when the vDSO is not used)"),
    (libc::SYS_time, "clocks (legacy)"),
    (libc::SYS_times, "os.times"),
    (libc::SYS_timerfd_create, "timers in event loops"),
    (libc::SYS_timerfd_settime, "timers in event loops"),
    (libc::SYS_timerfd_gettime, "timers in event loops"),
    // Waiting on descriptors (asyncio, selectors, subprocess).
    (libc::SYS_poll, "select.poll"),
    (libc::SYS_ppoll, "select.poll"),
    (libc::SYS_select, "select.select"),
    (libc::SYS_pselect6, "select.select"),
    (libc::SYS_epoll_create, "asyncio"),
    (libc::SYS_epoll_create1, "asyncio, selectors"),
    (libc::SYS_epoll_ctl, "asyncio"),
    (libc::SYS_epoll_wait, "asyncio"),
    (libc::SYS_epoll_pwait, "asyncio"),
    (libc::SYS_epoll_pwait2, "asyncio"),
    (libc::SYS_eventfd2, "event loops"),
    // Sockets: with no network namespace access only unix sockets and loopback exist.
    (
        libc::SYS_socket,
        "sockets (no network unless the function asks for the host's)",
    ),
    (libc::SYS_socketpair, "socket.socketpair, multiprocessing"),
    (libc::SYS_connect, "client sockets"),
    (libc::SYS_accept, "server sockets"),
    (libc::SYS_accept4, "server sockets"),
    (libc::SYS_bind, "server sockets"),
    (libc::SYS_listen, "server sockets"),
    (libc::SYS_sendto, "socket I/O"),
    (libc::SYS_recvfrom, "socket I/O"),
    (libc::SYS_sendmsg, "socket I/O"),
    (libc::SYS_recvmsg, "socket I/O"),
    (libc::SYS_sendmmsg, "socket I/O (resolver)"),
    (libc::SYS_recvmmsg, "socket I/O"),
    (libc::SYS_shutdown, "socket shutdown"),
    (libc::SYS_getsockname, "socket addresses"),
    (libc::SYS_getpeername, "socket addresses"),
    (libc::SYS_setsockopt, "socket options"),
    (libc::SYS_getsockopt, "socket options"),
    // System information.
    (libc::SYS_uname, "platform module, glibc"),
    (libc::SYS_sysinfo, "memory size (numpy, OpenBLAS)"),
    (libc::SYS_getrandom, "os.urandom, hash seeds, uuid"),
    (libc::SYS_getcpu, "sched_getcpu in BLAS"),
];

#[derive(Debug, thiserror::Error)]
#[error("building the seccomp filter failed: {0}")]
pub struct SeccompError(String);

/// `clone` is allowed only when `flags & NAMESPACE_FLAGS == 0` (flags are its first argument
/// on x86_64).
fn clone_rule() -> Result<SeccompRule, SeccompError> {
    let no_namespace = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(NAMESPACE_FLAGS),
        0,
    )
    .map_err(|e| SeccompError(e.to_string()))?;
    SeccompRule::new(vec![no_namespace]).map_err(|e| SeccompError(e.to_string()))
}

/// `<linux/audit.h>`'s value, which the libc crate does not carry.
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
/// Where the filter reads what it checks in `struct seccomp_data`.
const ARCH: u32 = std::mem::offset_of!(libc::seccomp_data, arch) as u32;
const NR: u32 = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
/// The low half of the first argument (x86_64 is little-endian).
const ARG0: u32 = std::mem::offset_of!(libc::seccomp_data, args) as u32;
const fn errno(e: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | e as u32
}

/// Socket families an instance may create (see the module doc).
pub const SOCKET_FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// The prefix drawn in the module doc: `clone3` answers `ENOSYS`, a socket of another family
/// `EAFNOSUPPORT`. Jump offsets count from the next instruction.
fn prefix() -> [sock_filter; 12] {
    let op = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    let [unix, inet, inet6, netlink] = SOCKET_FAMILIES.map(|f| f as u32);
    [
        op(BPF_LD_W_ABS, 0, 0, ARCH),
        op(BPF_JEQ_K, 0, 10, AUDIT_ARCH_X86_64),
        op(BPF_LD_W_ABS, 0, 0, NR),
        op(BPF_JEQ_K, 0, 1, libc::SYS_clone3 as u32),
        op(BPF_RET_K, 0, 0, errno(libc::ENOSYS)),
        op(BPF_JEQ_K, 0, 6, libc::SYS_socket as u32),
        op(BPF_LD_W_ABS, 0, 0, ARG0),
        op(BPF_JEQ_K, 4, 0, unix),
        op(BPF_JEQ_K, 3, 0, inet),
        op(BPF_JEQ_K, 2, 0, inet6),
        op(BPF_JEQ_K, 1, 0, netlink),
        op(BPF_RET_K, 0, 0, errno(libc::EAFNOSUPPORT)),
    ]
}

/// Compiles the allowlist into a BPF program for x86_64.
pub fn program() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
    rules.insert(libc::SYS_clone, vec![clone_rule()?]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError(e.to_string()))?;
    let allowlist: BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError(e.to_string()))?;
    let mut program = prefix().to_vec();
    program.extend(allowlist);
    Ok(program)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_reads_what_the_kernel_lays_out() {
        assert_eq!((ARCH, NR, ARG0), (4, 0, 16));
        assert_eq!((BPF_LD_W_ABS, BPF_JEQ_K, BPF_RET_K), (0x20, 0x15, 0x06));
    }

    #[test]
    fn the_allowlist_compiles_and_keeps_dangerous_calls_out() {
        assert!(!program().unwrap().is_empty());
        let allowed: Vec<i64> = ALLOWED.iter().map(|(n, _)| *n).collect();
        for denied in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_ptrace,
            libc::SYS_bpf,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_perf_event_open,
            libc::SYS_userfaultfd,
            libc::SYS_setuid,
            libc::SYS_init_module,
            libc::SYS_process_vm_readv,
            libc::SYS_io_uring_setup,
            libc::SYS_clone3,
        ] {
            assert!(
                !allowed.contains(&denied),
                "syscall {denied} must not be allowed"
            );
        }
        let mut sorted = allowed.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), allowed.len(), "an entry is listed twice");
        assert!(ALLOWED.iter().all(|(_, why)| !why.is_empty()));
    }
}
