//! Process-wide state beyond memory, registers and descriptors: resource limits, scheduling
//! (policy, nice value, CPU affinity), prctl values, the process's own seccomp filters,
//! signal dispositions with their flags, queued signals, interval timers and POSIX timers,
//! NUMA memory policies (the task's, each VMA's own) and the I/O priority. A task in
//! `restart_syscall` is refused (see `capture::reissue_sleep` for why a dump's own
//! interruption never leaves one there).
//!
//! ```text
//! dump (capture.rs)                                 restore (apply.rs, end of batch 2)
//!  before the seize: Seccomp mode 1 refused          ...name
//!  from outside: /proc/PID/limits, sched_getattr,    setitimer; timers created with their
//!    sched_getaffinity, ioprio_get,                    ids (PR_TIMER_CREATE_RESTORE_IDS),
//!    PTRACE_SECCOMP_GET_FILTER (+ _METADATA;           timer_settime; queued signals
//!      USER_NOTIF, RET A and LOG refused),             re-queued to itself
//!    PTRACE_PEEKSIGINFO (thread, shared),
//!    /proc/PID/timers                                with a handoff:        without:
//!  inside, one blob run: brk, TID address,           its credentials        own filters
//!    altstack, 64 x rt_sigaction, prctl gets,        limits, sched (1)      limits, sched (1)
//!    getitimer x3, timer_gettime per timer,            (bounded)            creds.rs
//!    get_mempolicy (task, then each area's)          after_credentials (2)  after_credentials (2)
//!                                                    its pdeathsig, nnp,
//!                                                      its filter
//!                                                    own filters
//!  (1) limits, sched_setattr, affinity, set_mempolicy, mbind, ioprio_set, child subreaper,
//!      THP disable, timer slack        (2) death signal, no_new_privs, dumpable
//! ```
//!
//! Everything is set from inside the process, by the restorer blob. Without a handoff, what
//! needs privilege to set (a negative nice value, a real-time policy or I/O class, a hard
//! limit raised) comes before the image's credentials, while the target is still root: a
//! process that set it and then dropped its privileges keeps it, as it did. With a handoff
//! it comes after the instance's credentials and within the target's bounds
//! (`apply::Bounds`): the kernel judges it for the instance's user, which must not gain
//! what its sandbox did not give. Either way the credential change, which clears the death
//! signal and resets dumpable, comes before those two and `no_new_privs`. Limits come after
//! the restorer's last descriptor juggling (a low `RLIMIT_NOFILE` cannot break it), and
//! queued signals before the limits (a low `RLIMIT_SIGPENDING` cannot refuse them). The
//! image's filters come after the sandbox's with a handoff, and before the image's
//! credentials without one (installing a filter needs CAP_SYS_ADMIN or no_new_privs, which
//! a process that got its filter before dropping privileges may lack). The restore's seize
//! suspends seccomp (`PTRACE_O_SUSPEND_SECCOMP`) when the image has filters, so the steps
//! after them (the rest of batch 2, the gadget's `munmap`) run whatever they allow; the
//! dump's seize does the same for a process with filters, so its queries cannot be refused
//! or kill it.

pub mod apply;
pub mod capture;

use std::io;

use crate::tracee::TraceError;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("process {pid}: cannot read its {what}")]
    Read {
        pid: i32,
        what: &'static str,
        source: io::Error,
    },
    #[error("process {pid}: {what} cannot be restored; {todo}")]
    Refused {
        pid: i32,
        what: String,
        todo: String,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// The process's seccomp mode (0 none, 1 strict, 2 filter) from `/proc/PID/status`.
pub fn seccomp_mode(pid: i32) -> Result<u32, StateError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        StateError::Read {
            pid,
            what: "status",
            source,
        }
    })?;
    Ok(status_field(&text, "Seccomp").unwrap_or(0) as u32)
}

/// A numeric field of `/proc/PID/status`.
fn status_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// Refuses a process in seccomp strict mode, before anything is done to it.
pub fn refuse_strict(pid: i32, mode: u32) -> Result<(), StateError> {
    if mode == 1 {
        return Err(StateError::Refused {
            pid,
            what: "seccomp strict mode (SECCOMP_SET_MODE_STRICT)".into(),
            todo: "a restorer cannot enter it for the process; dump it before it enters strict mode, or use a filter (SECCOMP_SET_MODE_FILTER) instead".into(),
        });
    }
    Ok(())
}
