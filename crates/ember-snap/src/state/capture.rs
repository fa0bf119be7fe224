//! The dump side: what the dumper reads from outside, and one run of the restorer blob in
//! the stopped process for what only the process can tell (each query used to be an
//! injected syscall of its own, a ptrace round trip of 10-15 us).

use super::{StateError, status_field};
use crate::image::format::{MAX_FILTER_LEN, MAX_FILTERS, MAX_NODE_WORDS, MAX_PENDING, MAX_TIMERS};
use crate::image::{
    AltStack, AreaPolicy, ITimer, MemPolicy, PAGE, PosixTimer, Prctl, ProcState, Sched, SigAction,
};
use crate::restorer::{self, ALLOW_ERROR, Batch, Step};
use crate::sys;
use crate::tracee::{self, Tracee};

/// State only the process can tell, read by the query batch.
pub struct Queried {
    pub brk: u64,
    pub tid_address: u64,
    pub altstack: AltStack,
    /// Every signal whose `sigaction` is not the plain default.
    pub sigactions: Vec<SigAction>,
}

/// Reads everything of [`ProcState`] and the task's own queries; refuses what a restore
/// could not set. `insn` is a `syscall` instruction of the process; `areas`: (start, end)
/// of each of its memory areas (asked for a NUMA policy of their own).
pub fn capture(
    t: &Tracee,
    insn: u64,
    areas: &[(u64, u64)],
) -> Result<(Queried, ProcState), StateError> {
    let pid = t.pid;
    refuse_restart_syscall(t)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        StateError::Read {
            pid,
            what: "status",
            source,
        }
    })?;
    let mut st = outside(pid, &status)?;
    let timers = parse_timers(pid)?;
    let ids: Vec<i32> = timers.iter().map(|t| t.id).collect();
    let (q, prctl, itimers, values, numa) = query(t, insn, &ids, areas)?;
    if numa.rc < 0 && numa.rc != -i64::from(libc::ENOSYS) {
        return Err(StateError::Read {
            pid,
            what: "NUMA memory policy",
            source: std::io::Error::from_raw_os_error(-numa.rc as i32),
        });
    }
    st.mempolicy = numa.task;
    st.area_policies = numa.areas;
    st.prctl = Prctl {
        no_new_privs: status_field(&status, "NoNewPrivs") == Some(1),
        ..prctl
    };
    if st.prctl.dumpable > 1 {
        return Err(StateError::Refused {
            pid,
            what: format!("dumpable mode {} (suid_dumpable)", st.prctl.dumpable),
            todo: "prctl can only set 0 or 1; set PR_SET_DUMPABLE to 0 or 1 before the dump".into(),
        });
    }
    st.itimers = itimers;
    st.timers = timers
        .into_iter()
        .zip(values)
        .map(|(t, (interval_ns, value_ns))| PosixTimer {
            interval_ns,
            value_ns,
            ..t
        })
        .collect();
    Ok((q, st))
}

fn read_err(pid: i32, what: &'static str) -> impl FnOnce(std::io::Error) -> StateError {
    move |source| StateError::Read { pid, what, source }
}

fn refused(pid: i32, what: impl Into<String>, todo: impl Into<String>) -> StateError {
    StateError::Refused {
        pid,
        what: what.into(),
        todo: todo.into(),
    }
}

/// What the dumper reads without the process's help.
fn outside(pid: i32, status: &str) -> Result<ProcState, StateError> {
    let rlimits = limits(pid)?
        .into_iter()
        .zip(0..)
        .map(|((cur, max), r)| (r, cur, max))
        .collect();
    let a = sys::sched_getattr(pid).map_err(read_err(pid, "scheduling attributes"))?;
    // Utilisation clamps other than the defaults (none, or the whole range) are not
    // recorded: refused rather than lost.
    if a.util_min != 0 || !matches!(a.util_max, 0 | 1024) {
        return Err(StateError::Refused {
            pid,
            what: format!(
                "its utilisation clamps ({}-{} of 1024)",
                a.util_min, a.util_max
            ),
            todo: "reset them with sched_setattr(SCHED_FLAG_UTIL_CLAMP) before the dump".into(),
        });
    }
    let sched = Sched {
        policy: a.policy,
        flags: a.flags & SCHED_FLAG_RESET_ON_FORK,
        nice: match a.policy {
            // sched_getattr gives no nice value for a real-time or deadline task, which
            // keeps one (it counts again once the task goes back to a fair policy).
            SCHED_OTHER | SCHED_BATCH | SCHED_IDLE => a.nice,
            _ => stat_nice(pid)?,
        },
        priority: a.priority,
        runtime: a.runtime,
        deadline: a.deadline,
        period: a.period,
    };
    let mask = sys::sched_getaffinity(pid).map_err(read_err(pid, "CPU affinity"))?;
    let affinity = (!same_cpus(&mask, &online_cpus())).then_some(mask);
    let mut seccomp = Vec::new();
    if status_field(status, "Seccomp") == Some(2) {
        for index in 0.. {
            let f = sys::seccomp_filter(pid, index).map_err(read_err(pid, "seccomp filters"))?;
            let Some(f) = f else { break };
            if seccomp.len() == MAX_FILTERS || f.len() > MAX_FILTER_LEN || f.is_empty() {
                return Err(refused(
                    pid,
                    format!(
                        "a seccomp filter chain of more than {MAX_FILTERS} filters, or one of more than {MAX_FILTER_LEN} instructions"
                    ),
                    "install fewer, shorter filters",
                ));
            }
            refuse_unrestorable_filter(pid, index, &f)?;
            seccomp.push(f);
        }
        // Index 0 is the oldest filter (the kernel counts back from the newest by the
        // chain's length less the index): the image keeps them in that order, the order
        // they are installed again. `fidelity/seccomp_own.c` tells the two orders apart.
    }
    let pending = |shared: bool| -> Result<Vec<Vec<u8>>, StateError> {
        let q = sys::peek_siginfo(pid, shared, MAX_PENDING + 1)
            .map_err(read_err(pid, "queued signals"))?;
        if q.len() > MAX_PENDING {
            return Err(refused(
                pid,
                format!("more than {MAX_PENDING} queued signals"),
                "let the process take its signals before the dump",
            ));
        }
        Ok(q.into_iter().map(|i| i.to_vec()).collect())
    };
    Ok(ProcState {
        rlimits,
        sched,
        affinity,
        seccomp,
        pending_thread: pending(false)?,
        pending_process: pending(true)?,
        ioprio: sys::ioprio_get(pid).map_err(read_err(pid, "I/O priority"))?,
        ..ProcState::default()
    })
}

const SCHED_FLAG_RESET_ON_FORK: u64 = 1;
/// The fair policies, whose nice value `sched_getattr` gives.
pub const SCHED_OTHER: u32 = 0;
pub const SCHED_BATCH: u32 = 3;
pub const SCHED_IDLE: u32 = 5;

/// The nice value of `/proc/PID/stat` (its 19th field).
fn stat_nice(pid: i32) -> Result<i32, StateError> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(read_err(pid, "stat"))?;
    nice_from_stat(&text).ok_or_else(|| StateError::Read {
        pid,
        what: "stat",
        source: std::io::Error::other("no nice value in /proc/PID/stat"),
    })
}

/// Field 19 of a `/proc/PID/stat` line; the name (field 2) may hold spaces and ')'.
fn nice_from_stat(text: &str) -> Option<i32> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields from the state (3) on: the nice value is the 17th of them.
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// `SECCOMP_RET_ACTION_FULL` and `SECCOMP_RET_USER_NOTIF`.
const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_USER_NOTIF: u32 = 0x7fc0_0000;
/// `BPF_RET | BPF_K`: a return of a constant (the other return seccomp allows is `BPF_A`).
const BPF_RET_K: u16 = 0x06;

/// Why filter `index` (0 the oldest) cannot be installed again as it is, refused at dump:
/// one that can hand a syscall to a user-space supervisor (`SECCOMP_RET_USER_NOTIF`: its
/// listener, a descriptor the supervisor holds, is not restored, and without one those
/// syscalls fail with ENOSYS); one returning its accumulator (`BPF_RET | BPF_A`, whose
/// action the dump cannot know without running the program); one installed with
/// `SECCOMP_FILTER_FLAG_LOG` (the image keeps no filter flags yet: reinstalled without
/// it, its actions would go unlogged).
fn refuse_unrestorable_filter(pid: i32, index: usize, prog: &[u64]) -> Result<(), StateError> {
    let nth = index + 1;
    match filter_returns(prog) {
        Returns::Plain => {}
        Returns::UserNotif => {
            return Err(refused(
                pid,
                format!(
                    "seccomp user notification (SECCOMP_RET_USER_NOTIF) in its filter {nth} (oldest first)"
                ),
                "a restore cannot give the filter its listener back (the supervisor's descriptor); dump the process before it installs a filter with SECCOMP_FILTER_FLAG_NEW_LISTENER, or install one that does not return SECCOMP_RET_USER_NOTIF",
            ));
        }
        Returns::Accumulator => {
            return Err(refused(
                pid,
                format!(
                    "a seccomp filter ({nth}, oldest first) that returns a computed action (BPF_RET | BPF_A)"
                ),
                "the dump cannot tell whether it hands syscalls to a user-space supervisor (SECCOMP_RET_USER_NOTIF, whose listener is not restored); return constant actions (BPF_RET | BPF_K) instead",
            ));
        }
    }
    let flags =
        sys::seccomp_filter_flags(pid, index).map_err(read_err(pid, "seccomp filter flags"))?;
    if flags & libc::SECCOMP_FILTER_FLAG_LOG != 0 {
        return Err(refused(
            pid,
            format!(
                "a seccomp filter ({nth}, oldest first) installed with SECCOMP_FILTER_FLAG_LOG"
            ),
            "the image keeps no filter flags: install the filter without SECCOMP_FILTER_FLAG_LOG",
        ));
    }
    Ok(())
}

/// What a filter's return instructions can answer.
#[derive(Debug, PartialEq, Eq)]
enum Returns {
    /// Only constant actions, none of them `SECCOMP_RET_USER_NOTIF`.
    Plain,
    UserNotif,
    /// A return of the accumulator: any action.
    Accumulator,
}

/// Scans every return instruction of a filter (raw 8-byte `sock_filter`s: code, jt, jf, k).
fn filter_returns(prog: &[u64]) -> Returns {
    let mut out = Returns::Plain;
    for w in prog {
        let b = w.to_ne_bytes();
        let code = u16::from_ne_bytes([b[0], b[1]]);
        let k = u32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
        if code & 0x07 != BPF_RET_K {
            continue;
        }
        if code != BPF_RET_K {
            out = Returns::Accumulator;
        } else if k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF {
            return Returns::UserNotif;
        }
    }
    out
}

/// Every resource limit of `pid` (soft, hard), in resource order.
pub fn limits(pid: i32) -> Result<Vec<(u64, u64)>, StateError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .map_err(read_err(pid, "resource limits"))?;
    crate::proc::parse_limits(&text).ok_or_else(|| StateError::Read {
        pid,
        what: "resource limits",
        source: std::io::Error::other("unexpected format of /proc/PID/limits"),
    })
}

/// The online CPUs as mask words (`/sys/devices/system/cpu/online`: "0-3,5").
fn online_cpus() -> Vec<u64> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut mask = vec![0u64; 16];
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) else {
            continue;
        };
        for cpu in a..=b.min(1023) {
            mask[cpu / 64] |= 1 << (cpu % 64);
        }
    }
    mask
}

/// Whether two masks hold the same CPUs (trailing zero words aside).
fn same_cpus(a: &[u64], b: &[u64]) -> bool {
    let n = a.len().max(b.len());
    (0..n).all(|i| a.get(i).copied().unwrap_or(0) == b.get(i).copied().unwrap_or(0))
}

/// The POSIX timers `/proc/PID/timers` lists (id, signal, value, notify kind, clock);
/// times are asked of the process.
fn parse_timers(pid: i32) -> Result<Vec<PosixTimer>, StateError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .map_err(read_err(pid, "POSIX timers"))?;
    let timers = timers_from(&text).map_err(|why| {
        refused(
            pid,
            format!("a POSIX timer ({why})"),
            "delete the timer before the dump",
        )
    })?;
    if timers.len() > MAX_TIMERS {
        return Err(refused(
            pid,
            format!("more than {MAX_TIMERS} POSIX timers"),
            "delete timers before the dump",
        ));
    }
    if !timers.is_empty() && !sys::timer_restore_ids_supported() {
        return Err(refused(
            pid,
            format!("{} POSIX timers", timers.len()),
            "this kernel cannot recreate a timer with its id (PR_TIMER_CREATE_RESTORE_IDS needs Linux 6.15); delete the timers before the dump",
        ));
    }
    Ok(timers)
}

/// Parses `/proc/PID/timers`; an error names what cannot be restored.
pub fn timers_from(text: &str) -> Result<Vec<PosixTimer>, String> {
    let mut out: Vec<PosixTimer> = Vec::new();
    for line in text.lines() {
        let Some((key, val)) = line.split_once(':') else {
            continue;
        };
        let val = val.trim();
        if key == "ID" {
            let id = val.parse().map_err(|_| format!("unreadable id {val:?}"))?;
            out.push(PosixTimer {
                id,
                ..PosixTimer::default()
            });
            continue;
        }
        let Some(t) = out.last_mut() else { continue };
        match key {
            "signal" => {
                let (sig, value) = val.split_once('/').ok_or("unreadable signal")?;
                t.signo = sig.parse().map_err(|_| "unreadable signal")?;
                t.value = u64::from_str_radix(value, 16).map_err(|_| "unreadable value")?;
            }
            "notify" => {
                let (kind, target) = val.split_once('/').ok_or("unreadable notify")?;
                let base = match kind {
                    "signal" => libc::SIGEV_SIGNAL,
                    "none" => libc::SIGEV_NONE,
                    other => return Err(format!("{other} notification")),
                };
                t.notify = if target.starts_with("tid.") {
                    base | libc::SIGEV_THREAD_ID
                } else {
                    base
                };
            }
            "ClockID" => {
                t.clock = val.parse().map_err(|_| "unreadable clock")?;
                // A CPU-time clock encodes its pid as `!(clock >> 3)`: 0 is the process
                // itself (or its thread), which a restore can name again; another pid not.
                if t.clock < 0 && t.clock >> 3 != -1 {
                    return Err(format!(
                        "id {} counts another process's or thread's CPU time",
                        t.id
                    ));
                }
                // What an image may hold (checked again at load): not the `_ALARM`
                // clocks or TAI.
                if !crate::image::validate::timer_clock_ok(t.clock) {
                    return Err(format!(
                        "id {} runs on clock {}: only realtime, monotonic, boottime and the process's own CPU time are restored",
                        t.id, t.clock
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// `-ERESTART_RESTARTBLOCK`: the call goes on through `restart_syscall` and the task's
/// restart block.
pub const ERESTART_RESTARTBLOCK: i64 = -516;

/// Refuses a task stopped in `restart_syscall`: a sleep (nanosleep, poll, a futex wait with a
/// timeout) that something interrupted before the dump (a job-control stop, the cgroup
/// freezer, a debugger) resumed through its restart block, which holds the original call's
/// number and the time left: the block stays in this kernel task, and its registers hold the
/// original arguments but no longer the call's number. A restore could only make the call
/// return EINTR, which the process could not see without a signal handler. (A dump that
/// interrupts a sleep itself leaves the process re-issuing the original call instead, see
/// [`reissue_sleep`], so a process dumped twice is not refused.)
fn refuse_restart_syscall(t: &Tracee) -> Result<(), StateError> {
    let r = &t.regs;
    if r.orig_rax == libc::SYS_restart_syscall as u64 {
        return Err(refused(
            t.pid,
            "a sleep resumed through restart_syscall (nanosleep, poll or a futex wait with a timeout, interrupted before the dump by a stop, the freezer or a debugger: its original call is no longer known)",
            "dump it again once the call has returned (a sleep interrupted by the dump itself is restored exactly)",
        ));
    }
    Ok(())
}

/// What a dump leaves a task it interrupted in a sleep with a restart block
/// (`-ERESTART_RESTARTBLOCK`, `orig_rax` the original call): the original call, re-issued
/// with its original arguments (still in the registers) instead of `restart_syscall`, as a
/// restore does. A relative sleep starts over (it sleeps at least as long as asked); the
/// process never ends up in `restart_syscall`, whose original call a later dump could not
/// know.
pub fn reissue_sleep(r: &mut crate::sys::Regs) {
    let nr = r.orig_rax as i64;
    if r.rax as i64 == ERESTART_RESTARTBLOCK && nr >= 0 && nr != libc::SYS_restart_syscall {
        r.rax = r.orig_rax;
        r.rip -= 2;
        r.orig_rax = u64::MAX;
    }
}

/// NUMA policies: the task's, and every area with one of its own (start, mode).
#[derive(Default)]
struct Numa {
    /// What the task's `get_mempolicy` returned (0, or -errno).
    rc: i64,
    task: MemPolicy,
    areas: Vec<AreaPolicy>,
}

type Answers = (Queried, Prctl, Vec<ITimer>, Vec<(u64, u64)>, Numa);

/// Where the query batch leaves each answer.
struct Layout {
    batch: Batch<'static>,
    brk: usize,
    tid: usize,
    alt: usize,
    sigs: Vec<usize>,
    dumpable: usize,
    pdeathsig: usize,
    slack: usize,
    subreaper: usize,
    thp: usize,
    itimers: Vec<usize>,
    timers: Vec<usize>,
    mode: usize,
    nodes: usize,
    /// The batch entry of the task's `get_mempolicy`.
    mode_call: usize,
    /// Per area: its start and end, and where its mode and nodes land.
    area_modes: Vec<(u64, u64, usize)>,
}

/// Node mask bits asked for and given (the kernel reads `maxnode - 1` bits).
pub const MAXNODE: u64 = (MAX_NODE_WORDS * 64 + 1) as u64;

fn lay_out(base: u64, ids: &[i32], areas: &[(u64, u64)]) -> Layout {
    let mut b = Batch::new(base);
    let prctl = |b: &mut Batch<'static>, what: &'static str, op: i32, arg: u64| {
        let i = b.len();
        b.call(what, libc::SYS_prctl, &[op as u64, arg], 0);
        i
    };
    let brk = b.len();
    b.call("brk(0)", libc::SYS_brk, &[0], 0);
    let (at, tid) = b.out(8);
    prctl(
        &mut b,
        "prctl(PR_GET_TID_ADDRESS)",
        libc::PR_GET_TID_ADDRESS,
        at,
    );
    let (at, alt) = b.out(24);
    b.call("sigaltstack", libc::SYS_sigaltstack, &[0, at], 0);
    let mut sigs = Vec::new();
    for sig in 1..=64u64 {
        let (at, off) = b.out(32);
        sigs.push(off);
        let args = [sig, 0, at, 8];
        let step = Step::Addr("rt_sigaction", sig);
        b.call(step, libc::SYS_rt_sigaction, &args, ALLOW_ERROR);
    }
    let dumpable = prctl(&mut b, "prctl(PR_GET_DUMPABLE)", libc::PR_GET_DUMPABLE, 0);
    let (at, pdeathsig) = b.out(4);
    prctl(
        &mut b,
        "prctl(PR_GET_PDEATHSIG)",
        libc::PR_GET_PDEATHSIG,
        at,
    );
    let slack = prctl(
        &mut b,
        "prctl(PR_GET_TIMERSLACK)",
        libc::PR_GET_TIMERSLACK,
        0,
    );
    let (at, subreaper) = b.out(4);
    let op = libc::PR_GET_CHILD_SUBREAPER;
    prctl(&mut b, "prctl(PR_GET_CHILD_SUBREAPER)", op, at);
    let thp = prctl(
        &mut b,
        "prctl(PR_GET_THP_DISABLE)",
        libc::PR_GET_THP_DISABLE,
        0,
    );
    let mut itimers = Vec::new();
    for which in 0..3u64 {
        let (at, off) = b.out(32);
        itimers.push(off);
        b.call("getitimer", libc::SYS_getitimer, &[which, at], 0);
    }
    let mut timers = Vec::new();
    for &id in ids {
        let (at, off) = b.out(32);
        timers.push(off);
        let step = Step::Addr("timer_gettime", id as u64);
        b.call(step, libc::SYS_timer_gettime, &[id as u64, at], 0);
    }
    let (mode_at, mode) = b.out(4);
    let (nodes_at, nodes) = b.out(MAX_NODE_WORDS * 8);
    let args = [mode_at, nodes_at, MAXNODE, 0, 0];
    // A kernel without NUMA answers ENOSYS: the default policy, the only one there is.
    let mode_call = b.len();
    b.call("get_mempolicy", libc::SYS_get_mempolicy, &args, ALLOW_ERROR);
    let mut area_modes = Vec::with_capacity(areas.len());
    // One query per area: 1,200 of them cost ~0.55 ms in the process, where reading
    // /proc/PID/numa_maps (which walks every page table to count pages per node) took
    // 3.8-4 ms on a 1,250-VMA CPython process, growing with its resident memory.
    for &(start, end) in areas {
        // The mode, then the nodes (as `get_mempolicy` above).
        let (at, off) = b.out(8 + MAX_NODE_WORDS * 8);
        area_modes.push((start, end, off));
        let args = [at, at + 8, MAXNODE, start, MPOL_F_ADDR];
        let step = Step::Addr("get_mempolicy(MPOL_F_ADDR)", start);
        b.call(step, libc::SYS_get_mempolicy, &args, ALLOW_ERROR);
    }
    Layout {
        batch: b,
        brk,
        tid,
        alt,
        sigs,
        dumpable,
        pdeathsig,
        slack,
        subreaper,
        thp,
        itimers,
        timers,
        mode,
        nodes,
        mode_call,
        area_modes,
    }
}

const MPOL_F_ADDR: u64 = 1 << 1;

/// `VmLck` of `/proc/PID/status`: memory the process has locked, in KiB (0 if unreadable).
fn vm_locked_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            let v = t.lines().find_map(|l| l.strip_prefix("VmLck:"))?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Runs the query batch in a scratch area mapped for the purpose (blob code, then the
/// batch), and unmaps it.
fn query(t: &Tracee, insn: u64, ids: &[i32], areas: &[(u64, u64)]) -> Result<Answers, StateError> {
    let pid = t.pid;
    let need = (PAGE + lay_out(0, ids, areas).batch.size() as u64).next_multiple_of(PAGE);
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let args = [0, need, prot, flags, u64::MAX, 0];
    let locked_before = vm_locked_kib(pid);
    let scratch = match t.syscall_ok(insn, libc::SYS_mmap, &args, "mmap(query area)") {
        Err(crate::tracee::TraceError::Injected { errno, .. }) if errno == libc::EACCES => {
            return Err(refused(
                pid,
                "memory-deny-write-execute (PR_SET_MDWE)",
                "the dump runs its queries from a writable, executable area the process refuses, and a restorer cannot set it again; dump the process before it sets PR_SET_MDWE",
            ));
        }
        other => other?,
    };
    let result = (|| -> Result<Answers, StateError> {
        tracee::write(pid, scratch, restorer::code()).map_err(read_err(pid, "query area"))?;
        // mlockall(MCL_FUTURE) shows nowhere in /proc but in what it does: the area just
        // mapped and written is locked. Areas mapped after a restore would not be.
        if vm_locked_kib(pid) > locked_before {
            return Err(refused(
                pid,
                "mlockall(MCL_FUTURE) (every later mapping locked)",
                "a restorer cannot see it to set it again; dump the process before it calls mlockall(MCL_FUTURE), or have it lock its areas with mlock",
            ));
        }
        let l = lay_out(scratch + PAGE, ids, areas);
        let (res, area) = t.run_batch(scratch, &l.batch)?;
        Ok(answers(&l, &res, &area))
    })();
    let unmapped = t.syscall_ok(
        insn,
        libc::SYS_munmap,
        &[scratch, need],
        "munmap(query area)",
    );
    let a = result?;
    unmapped?;
    Ok(a)
}

fn answers(l: &Layout, res: &[i64], area: &[u8]) -> Answers {
    let word = |off: usize| -> u64 {
        area.get(off..off + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(0)
    };
    let int = |off: usize| word(off) as u32;
    let r = |i: usize| res.get(i).copied().unwrap_or(0);
    let mut sigactions = Vec::new();
    for (k, &off) in l.sigs.iter().enumerate() {
        let words = [word(off), word(off + 8), word(off + 16), word(off + 24)];
        let failed = r(l.sigs_entry(k)) < 0;
        if failed || words == [0; 4] {
            continue;
        }
        sigactions.push(SigAction {
            sig: k as u8 + 1,
            handler: words[0],
            flags: words[1],
            restorer: words[2],
            mask: words[3],
        });
    }
    let ns = |sec: u64, nsec: u64| sec.saturating_mul(1_000_000_000).saturating_add(nsec);
    let us = |sec: u64, usec: u64| sec.saturating_mul(1_000_000).saturating_add(usec);
    let q = Queried {
        brk: r(l.brk) as u64,
        tid_address: word(l.tid),
        altstack: AltStack {
            sp: word(l.alt),
            flags: word(l.alt + 8) as i32,
            size: word(l.alt + 16),
        },
        sigactions,
    };
    let prctl = Prctl {
        no_new_privs: false,
        dumpable: r(l.dumpable) as u32,
        pdeathsig: int(l.pdeathsig),
        timerslack_ns: r(l.slack) as u64,
        child_subreaper: int(l.subreaper) != 0,
        thp_disable: r(l.thp) != 0,
    };
    let itimers = l
        .itimers
        .iter()
        .map(|&o| ITimer {
            interval_us: us(word(o), word(o + 8)),
            value_us: us(word(o + 16), word(o + 24)),
        })
        .collect();
    let timers = l
        .timers
        .iter()
        .map(|&o| (ns(word(o), word(o + 8)), ns(word(o + 16), word(o + 24))))
        .collect();
    let policy = |mode: usize, nodes: usize| {
        let mut n: Vec<u64> = (0..MAX_NODE_WORDS).map(|i| word(nodes + 8 * i)).collect();
        while n.last() == Some(&0) {
            n.pop();
        }
        MemPolicy {
            mode: int(mode),
            nodes: n,
        }
    };
    let numa = Numa {
        rc: r(l.mode_call),
        task: policy(l.mode, l.nodes),
        // An area gone since the maps were read fails its query (EFAULT): nothing to keep.
        areas: l
            .area_modes
            .iter()
            .map(|&(start, end, off)| AreaPolicy {
                start,
                end,
                policy: policy(off, off + 8),
            })
            .filter(|a| a.policy.mode != 0)
            .collect(),
    };
    (q, prctl, itimers, timers, numa)
}

impl Layout {
    /// The batch entry of the `k`th `rt_sigaction` query (they follow brk, the TID address
    /// and sigaltstack).
    fn sigs_entry(&self, k: usize) -> usize {
        self.alt_entry() + 1 + k
    }

    fn alt_entry(&self) -> usize {
        self.brk + 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_parse_as_the_kernel_lists_them() {
        let text = "ID: 2\nsignal: 36/0000000000001234\nnotify: signal/tid.2945\nClockID: 7\n\
                    ID: 1\nsignal: 10/0000000000000000\nnotify: none/pid.2945\nClockID: 0\n";
        let t = timers_from(text).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].id, t[0].signo, t[0].value), (2, 36, 0x1234));
        assert_eq!((t[0].notify, t[0].clock), (libc::SIGEV_THREAD_ID, 7));
        assert_eq!((t[1].notify, t[1].clock), (libc::SIGEV_NONE, 0));
        let own = timers_from("ID: 0\nsignal: 14/0\nnotify: signal/pid.1\nClockID: -6\n");
        assert_eq!(own.unwrap()[0].clock, -6);
        let other = timers_from("ID: 0\nsignal: 14/0\nnotify: signal/pid.1\nClockID: -8190\n");
        assert!(other.unwrap_err().contains("CPU time"));
        for clock in [
            libc::CLOCK_REALTIME_ALARM,
            libc::CLOCK_BOOTTIME_ALARM,
            libc::CLOCK_TAI,
        ] {
            let t = format!("ID: 0\nsignal: 14/0\nnotify: signal/pid.1\nClockID: {clock}\n");
            assert!(
                timers_from(&t).unwrap_err().contains("runs on clock"),
                "{clock}"
            );
        }
    }

    #[test]
    fn a_dump_leaves_a_sleep_in_its_own_call_not_in_restart_syscall() {
        let mut r = crate::restore::words_to_regs(&[0; 27]);
        r.orig_rax = libc::SYS_nanosleep as u64;
        r.rax = ERESTART_RESTARTBLOCK as u64;
        r.rip = 0x1002;
        reissue_sleep(&mut r);
        assert_eq!(
            (r.rax, r.rip, r.orig_rax),
            (libc::SYS_nanosleep as u64, 0x1000, u64::MAX)
        );
        // Anything else is left for the kernel: other restarts, plain returns.
        for (orig, rax) in [
            (0u64, -512i64),
            (libc::SYS_restart_syscall as u64, -516),
            (u64::MAX, -516),
        ] {
            let mut r = crate::restore::words_to_regs(&[0; 27]);
            (r.orig_rax, r.rax, r.rip) = (orig, rax as u64, 0x1002);
            reissue_sleep(&mut r);
            assert_eq!((r.orig_rax, r.rax, r.rip), (orig, rax as u64, 0x1002));
        }
    }

    #[test]
    fn a_filter_that_can_notify_user_space_or_returns_its_accumulator_is_found() {
        let word = |code: u16, k: u32| {
            crate::state::apply::filter_word(&libc::sock_filter {
                code,
                jt: 0,
                jf: 0,
                k,
            })
        };
        let load = word(0x20, 0);
        let allow = word(BPF_RET_K, 0x7fff_0000);
        let errno = word(BPF_RET_K, 0x0005_0001);
        assert_eq!(filter_returns(&[load, errno, allow]), Returns::Plain);
        // The action's data (low 16 bits) does not hide it.
        let notify = word(BPF_RET_K, SECCOMP_RET_USER_NOTIF | 7);
        assert_eq!(filter_returns(&[load, notify, allow]), Returns::UserNotif);
        let ret_a = word(0x16, 0);
        assert_eq!(filter_returns(&[load, ret_a]), Returns::Accumulator);
        // A load with the same class bits as a return (BPF_LD | BPF_W | BPF_ABS, 0x20) is
        // not a return; a jump whose k is the notify action is not either.
        assert_eq!(
            filter_returns(&[word(0x15, SECCOMP_RET_USER_NOTIF), allow]),
            Returns::Plain
        );
    }

    #[test]
    fn the_nice_value_is_the_19th_field_of_stat() {
        let stat = "12 (a) b) S 1 12 12 0 -1 4194560 100 0 0 0 1 2 0 0 -2 -5 1 0 5 0 0";
        assert_eq!(nice_from_stat(stat), Some(-5));
        assert_eq!(nice_from_stat("12 (a) S 1"), None);
    }

    #[test]
    fn a_full_mask_is_the_online_set() {
        assert!(same_cpus(&[3], &[3, 0, 0]));
        assert!(!same_cpus(&[1], &[3]));
    }

    #[test]
    fn the_query_layout_finds_its_entries() {
        let l = lay_out(0x1000, &[0, 5], &[(0x4000, 0x5000)]);
        assert_eq!(l.batch.step(l.alt_entry()), "sigaltstack");
        assert_eq!(l.batch.step(l.sigs_entry(0)), "rt_sigaction at 0x1");
        assert_eq!(l.batch.step(l.sigs_entry(63)), "rt_sigaction at 0x40");
        assert_eq!(l.batch.step(l.dumpable), "prctl(PR_GET_DUMPABLE)");
        assert_eq!(l.timers.len(), 2);
        assert_eq!(l.batch.step(l.mode_call), "get_mempolicy");
        assert_eq!(
            l.batch.step(l.mode_call + 1),
            "get_mempolicy(MPOL_F_ADDR) at 0x4000"
        );
        assert_eq!(l.area_modes.len(), 1);
    }
}
