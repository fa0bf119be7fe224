//! The restore side: steps appended to batch 2, in the order the module doc of
//! [`crate::state`] draws.

use crate::image::ProcState;
use crate::restorer::{ALLOW_ERROR, Batch, Step};
use crate::state::capture::{MAXNODE, SCHED_BATCH, SCHED_IDLE, SCHED_OTHER};
use crate::sys::PR_TIMER_CREATE_RESTORE_IDS;

/// Interval timers, POSIX timers (with their ids) and queued signals, queued to the process
/// itself (`tid`: its thread id as it sees it) so any `si_code` is allowed. Every signal is
/// blocked while the restorer runs: they wait for the image's mask.
pub fn timers_and_signals(b: &mut Batch<'_>, st: &ProcState, tid: i32) {
    for (which, t) in st.itimers.iter().enumerate() {
        if t.value_us == 0 {
            continue;
        }
        let mut v = Vec::new();
        for us in [t.interval_us, t.value_us] {
            v.extend_from_slice(&(us / 1_000_000).to_ne_bytes());
            v.extend_from_slice(&(us % 1_000_000).to_ne_bytes());
        }
        let at = b.data(&v);
        let step = Step::Addr("setitimer", which as u64);
        b.call(step, libc::SYS_setitimer, &[which as u64, at, 0], 0);
    }
    if !st.timers.is_empty() {
        let on = [PR_TIMER_CREATE_RESTORE_IDS as u64, 1];
        b.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            &on,
            0,
        );
        for t in &st.timers {
            // struct sigevent (64 bytes): value, signo, notify, then the thread id.
            let mut sev = Vec::with_capacity(64);
            sev.extend_from_slice(&t.value.to_ne_bytes());
            sev.extend_from_slice(&t.signo.to_ne_bytes());
            sev.extend_from_slice(&t.notify.to_ne_bytes());
            sev.extend_from_slice(&tid.to_ne_bytes());
            sev.resize(64, 0);
            let sev = b.data(&sev);
            let id = b.data(&t.id.to_ne_bytes());
            let step = Step::Addr("timer_create", t.id as u64);
            let args = [t.clock as u64, sev, id];
            b.call(step, libc::SYS_timer_create, &args, 0);
            if t.value_ns == 0 {
                continue;
            }
            let mut its = Vec::with_capacity(32);
            for ns in [t.interval_ns, t.value_ns] {
                its.extend_from_slice(&(ns / 1_000_000_000).to_ne_bytes());
                its.extend_from_slice(&(ns % 1_000_000_000).to_ne_bytes());
            }
            let its = b.data(&its);
            let step = Step::Addr("timer_settime", t.id as u64);
            b.call(step, libc::SYS_timer_settime, &[t.id as u64, 0, its, 0], 0);
        }
        let off = [PR_TIMER_CREATE_RESTORE_IDS as u64, 0];
        b.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            &off,
            0,
        );
    }
    let tid = tid as u64;
    for (queue, shared) in [(&st.pending_thread, false), (&st.pending_process, true)] {
        for info in queue.iter() {
            let sig = info
                .get(..4)
                .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or([0; 4])))
                .unwrap_or(0);
            if !(1..=64).contains(&sig) || sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let at = b.data(info);
            let step = Step::Addr("queue signal", sig as u64);
            if shared {
                b.call(step, libc::SYS_rt_sigqueueinfo, &[tid, sig as u64, at], 0);
            } else {
                let args = [tid, tid, sig as u64, at];
                b.call(step, libc::SYS_rt_tgsigqueueinfo, &args, 0);
            }
        }
    }
}

/// What the target holds, which a restore does not exceed. With a handoff: its hard limits
/// and its nice value (a sandboxed instance must not gain what its sandbox did not give).
/// Without one the image's values are set as they were, but for hard limits above the
/// target's when the target lacks CAP_SYS_RESOURCE (raising one needs it; the root of some
/// machines, this one included, does not hold it): those come back as the target's.
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    /// (soft, hard) of each resource, by number; empty: no bound.
    pub rlimits: Vec<(u64, u64)>,
    pub nice: Option<i32>,
}

/// `CAP_SYS_RESOURCE`: raising a hard limit needs it.
const CAP_SYS_RESOURCE: u32 = 24;

impl Bounds {
    /// The target's own limits (with `handoff`, or when it could not raise them), read
    /// from outside; its nice value with `handoff`.
    pub fn of(pid: i32, handoff: bool) -> Result<Bounds, super::StateError> {
        let bounded = handoff || !has_effective(pid, CAP_SYS_RESOURCE)?;
        let rlimits = match bounded {
            true => super::capture::limits(pid)?,
            false => Vec::new(),
        };
        let nice = match handoff {
            true => Some(
                crate::sys::sched_getattr(pid)
                    .map_err(|source| super::StateError::Read {
                        pid,
                        what: "scheduling attributes",
                        source,
                    })?
                    .nice,
            ),
            false => None,
        };
        Ok(Bounds { rlimits, nice })
    }
}

/// Whether `pid` holds capability `cap` in its effective set (`CapEff` of its status).
fn has_effective(pid: i32, cap: u32) -> Result<bool, super::StateError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|source| {
        super::StateError::Read {
            pid,
            what: "status",
            source,
        }
    })?;
    let eff = text
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    Ok(eff & (1 << cap) != 0)
}

/// Resource limits, scheduling, CPU affinity, NUMA policies, I/O priority and the prctl
/// values a credential change leaves alone (child subreaper, THP disable, timer slack).
/// Without a handoff they come before the image's credentials, while the target is still
/// root: a process that set a negative nice value, a real-time policy or I/O class, or a
/// high hard limit and then dropped its privileges could not set them again after. With a
/// handoff they come after the instance's credentials, so the kernel judges them for the
/// instance's user. `bounds`: the target's hard limits (and nice value), which win over
/// the image's where the image's are higher.
pub fn limits_and_sched(b: &mut Batch<'_>, st: &ProcState, bounds: &Bounds) {
    for &(res, cur, max) in &st.rlimits {
        let (cur, max) = match bounds.rlimits.get(res as usize) {
            Some(&(_, hard)) => (cur.min(hard), max.min(hard)),
            None => (cur, max),
        };
        let mut v = cur.to_ne_bytes().to_vec();
        v.extend_from_slice(&max.to_ne_bytes());
        let at = b.data(&v);
        let step = Step::Addr("prlimit64 of resource", u64::from(res));
        b.call(step, libc::SYS_prlimit64, &[0, u64::from(res), at, 0], 0);
    }
    let s = &st.sched;
    let nice = bounds.nice.map_or(s.nice, |floor| s.nice.max(floor));
    if !matches!(s.policy, SCHED_OTHER | SCHED_BATCH | SCHED_IDLE) {
        // sched_setattr sets no nice value with a real-time or deadline policy; the task
        // keeps one all the same (setpriority takes the value itself, -20..19).
        let args = [libc::PRIO_PROCESS as u64, 0, nice as i64 as u64];
        b.call("setpriority", libc::SYS_setpriority, &args, 0);
    }
    let mut attr = Vec::with_capacity(56);
    attr.extend_from_slice(&56u32.to_ne_bytes());
    attr.extend_from_slice(&s.policy.to_ne_bytes());
    attr.extend_from_slice(&s.flags.to_ne_bytes());
    attr.extend_from_slice(&nice.to_ne_bytes());
    attr.extend_from_slice(&s.priority.to_ne_bytes());
    for w in [s.runtime, s.deadline, s.period] {
        attr.extend_from_slice(&w.to_ne_bytes());
    }
    attr.resize(56, 0);
    let at = b.data(&attr);
    b.call("sched_setattr", libc::SYS_sched_setattr, &[0, at, 0], 0);
    if let Some(mask) = &st.affinity {
        let bytes: Vec<u8> = mask.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let len = bytes.len() as u64;
        let at = b.data(&bytes);
        b.call(
            "sched_setaffinity",
            libc::SYS_sched_setaffinity,
            &[0, len, at],
            0,
        );
    }
    // Always (the target may have inherited others): the task's NUMA policy, and the I/O
    // priority (class NONE, the default, included: setting it needs no privilege).
    let m = &st.mempolicy;
    let mut nodes: Vec<u8> = m.nodes.iter().flat_map(|w| w.to_ne_bytes()).collect();
    nodes.resize(crate::image::format::MAX_NODE_WORDS * 8, 0);
    let at = b.data(&nodes);
    let args = [u64::from(m.mode), at, MAXNODE];
    // The default policy on a kernel without NUMA (ENOSYS) is what the process had.
    let flags = if m.mode == 0 { ALLOW_ERROR } else { 0 };
    b.call("set_mempolicy", libc::SYS_set_mempolicy, &args, flags);
    // Each area's own policy, on the whole VMA (no page moves: MPOL_MF_* flags 0).
    for a in &st.area_policies {
        let mut nodes: Vec<u8> = a
            .policy
            .nodes
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        nodes.resize(crate::image::format::MAX_NODE_WORDS * 8, 0);
        let at = b.data(&nodes);
        let mode = u64::from(a.policy.mode);
        let args = [a.start, a.end - a.start, mode, at, MAXNODE, 0];
        b.call(Step::Addr("mbind", a.start), libc::SYS_mbind, &args, 0);
    }
    let who = crate::sys::IOPRIO_WHO_PROCESS as u64;
    let args = [who, 0, u64::from(st.ioprio)];
    b.call("ioprio_set", libc::SYS_ioprio_set, &args, 0);
    let p = &st.prctl;
    if p.child_subreaper {
        let args = [libc::PR_SET_CHILD_SUBREAPER as u64, 1, 0, 0, 0];
        b.call("prctl(PR_SET_CHILD_SUBREAPER)", libc::SYS_prctl, &args, 0);
    }
    if p.thp_disable {
        let args = [libc::PR_SET_THP_DISABLE as u64, 1, 0, 0, 0];
        b.call("prctl(PR_SET_THP_DISABLE)", libc::SYS_prctl, &args, 0);
    }
    if p.timerslack_ns != 0 {
        let args = [libc::PR_SET_TIMERSLACK as u64, p.timerslack_ns, 0, 0, 0];
        b.call("prctl(PR_SET_TIMERSLACK)", libc::SYS_prctl, &args, 0);
    }
}

/// The prctl values a credential change resets, set after the last one (the handoff's or
/// the image's): death signal, `no_new_privs`, dumpable. `handoff_pdeathsig`: the handoff
/// sets the death signal, which wins over the image's.
pub fn after_credentials(b: &mut Batch<'_>, st: &ProcState, handoff_pdeathsig: bool) {
    let p = &st.prctl;
    let mut prctl = |what: &'static str, op: i32, arg: u64| {
        b.call(what, libc::SYS_prctl, &[op as u64, arg, 0, 0, 0], 0);
    };
    if p.pdeathsig != 0 && !handoff_pdeathsig {
        let sig = u64::from(p.pdeathsig);
        prctl("prctl(PR_SET_PDEATHSIG)", libc::PR_SET_PDEATHSIG, sig);
    }
    if p.no_new_privs {
        prctl("prctl(PR_SET_NO_NEW_PRIVS)", libc::PR_SET_NO_NEW_PRIVS, 1);
    }
    // Always: a credential change resets it.
    let dumpable = u64::from(p.dumpable);
    prctl("prctl(PR_SET_DUMPABLE)", libc::PR_SET_DUMPABLE, dumpable);
}

/// The image's own filters, oldest first, installed last. The oldest ones equal to the
/// handoff's filter (an image dumped inside a sandbox carries the sandbox's) are the
/// handoff's to install: skipped, so the chain is the one the process had.
pub fn filters(b: &mut Batch<'_>, st: &ProcState, handoff: &[libc::sock_filter]) {
    for f in own_filters(&st.seccomp, handoff) {
        let code: Vec<u8> = f.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let at = b.data(&code);
        // struct sock_fprog: unsigned short len; (padding); struct sock_filter *filter.
        let mut prog = (f.len() as u64).to_ne_bytes().to_vec();
        prog.extend_from_slice(&at.to_ne_bytes());
        let prog = b.data(&prog);
        let args = [libc::SECCOMP_SET_MODE_FILTER as u64, 0, prog];
        b.call("seccomp(the image's filter)", libc::SYS_seccomp, &args, 0);
    }
}

/// A `sock_filter` as the 8 bytes `PTRACE_SECCOMP_GET_FILTER` gives.
pub fn filter_word(f: &libc::sock_filter) -> u64 {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&f.code.to_ne_bytes());
    b[2] = f.jt;
    b[3] = f.jf;
    b[4..].copy_from_slice(&f.k.to_ne_bytes());
    u64::from_ne_bytes(b)
}

/// The image's filters without the leading ones the handoff installs itself.
pub fn own_filters<'a>(image: &'a [Vec<u64>], handoff: &[libc::sock_filter]) -> &'a [Vec<u64>] {
    if handoff.is_empty() {
        return image;
    }
    let h: Vec<u64> = handoff.iter().map(filter_word).collect();
    let skip = image.iter().take_while(|f| **f == h).count();
    &image[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, k: u32) -> libc::sock_filter {
        libc::sock_filter {
            code,
            jt: 1,
            jf: 2,
            k,
        }
    }

    #[test]
    fn the_handoffs_filter_is_not_installed_twice() {
        let sandbox = [insn(0x20, 4), insn(0x06, 0x7fff_0000)];
        let words: Vec<u64> = sandbox.iter().map(filter_word).collect();
        let own = vec![filter_word(&insn(0x06, 0))];
        let image = vec![words.clone(), words.clone(), own.clone()];
        assert_eq!(own_filters(&image, &sandbox), std::slice::from_ref(&own));
        assert_eq!(own_filters(&image, &[]).len(), 3);
        // Only the oldest: the same filter installed later by the process stays.
        let image = vec![own.clone(), words.clone()];
        assert_eq!(own_filters(&image, &sandbox).len(), 2);
    }

    #[test]
    fn a_filter_word_is_the_kernels_layout() {
        let w = filter_word(&insn(0x0015, 0x1234_5678));
        let b = w.to_ne_bytes();
        assert_eq!(&b[..4], &[0x15, 0, 1, 2]);
        assert_eq!(u32::from_ne_bytes(b[4..].try_into().unwrap()), 0x1234_5678);
    }
}
