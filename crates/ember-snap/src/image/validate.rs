//! The consistency rules an image's metadata must meet before anything of it reaches a
//! process: order and range of areas and page runs, indices, and a size cap on every list,
//! so a corrupted or hostile image is refused by name and never panics the loader.

use super::format::{CHUNK_PAGES, MAX_DEPTH, MAX_PAGES, USER_END};
use super::{FdKind, Meta, PAGE, VmaKind, vma_flags};
use crate::sys;

/// Consistency rules a restore relies on.
pub(crate) fn validate(m: &Meta) -> Result<(), String> {
    // The kernel's pid_max is at most 2^22.
    if !(1..=1 << 22).contains(&m.task.tid) {
        return Err(format!("thread id {} is out of range", m.task.tid));
    }
    let mut prev_end = 0;
    for (i, v) in m.vmas.iter().enumerate() {
        let aligned = v.start % PAGE == 0 && v.end % PAGE == 0;
        if !aligned || v.start >= v.end || v.start < prev_end || v.end > USER_END {
            return Err(format!(
                "VMA {i} ({:#x}-{:#x}) is out of order or range",
                v.start, v.end
            ));
        }
        prev_end = v.end;
        if v.flags & !vma_flags::ALL != 0 {
            return Err(format!("VMA {i} has unknown flags {:#x}", v.flags));
        }
        let private_anon = !v.shared && !matches!(v.kind, VmaKind::File { .. });
        if v.flags & vma_flags::WIPEONFORK != 0 && !private_anon {
            return Err(format!(
                "VMA {i} wipes on fork but is not private anonymous memory"
            ));
        }
        if let Some(name) = &v.name {
            if v.kind != VmaKind::Anon || v.shared {
                return Err(format!("VMA {i} is named but not anonymous"));
            }
            if !valid_anon_name(name) {
                return Err(format!("VMA {i} has an invalid name"));
            }
        }
        if let VmaKind::File { file, offset } = v.kind
            && (file as usize >= m.files.len() || offset % PAGE != 0)
        {
            return Err(format!("VMA {i} names file {file} of {}", m.files.len()));
        }
    }
    let chunks = m.pages.count.div_ceil(CHUNK_PAGES);
    if m.pages.count > MAX_PAGES || m.pages.chunks.len() as u64 != chunks {
        return Err(format!(
            "{} pages with {} chunk hashes",
            m.pages.count,
            m.pages.chunks.len()
        ));
    }
    // A layer's runs may point into its parent's index space, in any order.
    let space = match &m.parent {
        None => m.pages.count,
        Some(p) if p.space <= MAX_PAGES * u64::from(MAX_DEPTH) => {
            parent_path(&p.path)?;
            m.pages.count + p.space
        }
        Some(p) => return Err(format!("the parent's index space of {} pages", p.space)),
    };
    let mut next_page = 0;
    let mut prev_end = 0;
    for r in &m.pages.runs {
        let end = r.addr.saturating_add(u64::from(r.pages) * PAGE);
        // The VMAs are sorted and apart (checked above): only the last one starting at or
        // below the run can hold it.
        let inside = area_at(&m.vmas, r.addr).is_some_and(|v| !v.shared && end <= v.end);
        if r.pages == 0 || r.addr % PAGE != 0 || r.addr < prev_end || !inside {
            return Err(format!(
                "page run at {:#x} is outside the image's private memory",
                r.addr
            ));
        }
        if m.parent.is_some() {
            if r.first.saturating_add(u64::from(r.pages)) > space {
                return Err(format!(
                    "page run at {:#x} names pages {}.. of an index space of {space} (own and parent's)",
                    r.addr, r.first
                ));
            }
        } else if r.first != next_page {
            return Err(format!("page run at {:#x} is out of sequence", r.addr));
        }
        next_page += u64::from(r.pages);
        prev_end = end;
    }
    if m.parent.is_none() && next_page != m.pages.count {
        return Err(format!("runs cover {next_page} of {} pages", m.pages.count));
    }
    if m.task.regs.len() != 27 || m.task.xstate.len() > sys::XSTATE_MAX {
        return Err("register state has the wrong size".into());
    }
    if m.mm.exe as usize >= m.files.len() && !m.files.is_empty() {
        return Err("executable index out of range".into());
    }
    let mut prev_fd = -1;
    for f in &m.fds {
        if f.fd <= prev_fd || f.fd > 1 << 20 {
            return Err(format!("descriptor number {} out of order or range", f.fd));
        }
        prev_fd = f.fd;
    }
    for f in &m.fds {
        match f.kind {
            FdKind::File { file, flags, .. } => {
                if file as usize >= m.files.len() {
                    return Err(format!("descriptor {} names file {file}", f.fd));
                }
                if flags & !(crate::dump::FD_FLAGS as u32) != 0 {
                    return Err(format!("descriptor {} has unknown flags {flags:#o}", f.fd));
                }
            }
            FdKind::Dup { of } => {
                // Sorted by number, no repeats (checked above).
                let first = m
                    .fds
                    .binary_search_by_key(&of, |g| g.fd)
                    .ok()
                    .and_then(|i| m.fds.get(i));
                if of >= f.fd || !first.is_some_and(|g| matches!(g.kind, FdKind::File { .. })) {
                    return Err(format!(
                        "descriptor {} shares descriptor {of}, which is not an earlier reopened file",
                        f.fd
                    ));
                }
            }
            FdKind::Inherited { .. } => {}
        }
    }
    if m.mm.auxv.len() > 128 || m.task.sigactions.len() > 64 {
        return Err("auxv or signal table too long".into());
    }
    crate::creds::validate(&m.task.creds)?;
    validate_process(&m.process, &m.vmas)
}

/// The VMA `addr` may lie in: the last one starting at or below it (`vmas` sorted and apart).
fn area_at(vmas: &[super::Vma], addr: u64) -> Option<&super::Vma> {
    let k = vmas.partition_point(|v| v.start <= addr);
    k.checked_sub(1).and_then(|k| vmas.get(k))
}

/// A layer's parent path: a relative one (from the layer's directory) without `..`, or an
/// absolute one in normal form (what a dump records: the parent's canonical directory).
fn parent_path(path: &str) -> Result<(), String> {
    use std::path::Component;
    let normal = std::path::Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::RootDir));
    let dotted = path.split('/').any(|c| c == "." || c == "..");
    if path.is_empty() || path.contains('\0') || !normal || dotted {
        return Err(format!(
            "the parent path {path:?} has `.` or `..` in it or is empty: a layer names its parent by a plain path"
        ));
    }
    Ok(())
}

/// Most seccomp filters, instructions per filter, queued signals per queue and POSIX timers
/// an image may hold (a dump refuses a process with more).
pub const MAX_FILTERS: usize = 32;
pub const MAX_FILTER_LEN: usize = 4096;
pub const MAX_PENDING: usize = 64;
pub const MAX_TIMERS: usize = 256;
/// Areas with a NUMA policy of their own (at most one per VMA: the kernel's default
/// `vm.max_map_count`).
pub const MAX_AREA_POLICIES: usize = 65_530;
/// A NUMA node mask of 1,024 nodes, in 64-bit words.
pub const MAX_NODE_WORDS: usize = 16;
/// Modes 0-7 (`MPOL_DEFAULT`..`MPOL_WEIGHTED_INTERLEAVE`) and the mode flags.
pub const MPOL_KNOWN: u32 = 0x7 | (1 << 15) | (1 << 14) | (1 << 13);

/// The clocks a POSIX timer of an image may use: `CLOCK_REALTIME`, `CLOCK_MONOTONIC`,
/// `CLOCK_BOOTTIME` and the process's own CPU-time clocks (not the `_ALARM` clocks, which
/// need `CAP_WAKE_ALARM`: the timers are made before a handoff drops root).
pub(crate) fn timer_clock_ok(clock: i32) -> bool {
    match clock {
        libc::CLOCK_REALTIME
        | libc::CLOCK_MONOTONIC
        | libc::CLOCK_BOOTTIME
        | libc::CLOCK_PROCESS_CPUTIME_ID
        | libc::CLOCK_THREAD_CPUTIME_ID => true,
        // As the dump records one (`/proc/PID/timers`): `!pid << 3 | kind`, pid 0 (the
        // process itself or its thread), kind 0-2 (prof, virt, sched) with bit 2 for a
        // thread's clock.
        -8..=-1 => clock & 3 != 3,
        _ => false,
    }
}

fn validate_process(p: &super::ProcState, vmas: &[super::Vma]) -> Result<(), String> {
    if p.rlimits.len() > 16 || p.rlimits.iter().any(|r| r.0 >= 16) {
        return Err("resource limits out of range".into());
    }
    if p.affinity.as_ref().is_some_and(|a| a.len() > 16) {
        return Err("CPU affinity mask too long".into());
    }
    if p.seccomp.len() > MAX_FILTERS
        || p.seccomp
            .iter()
            .any(|f| f.is_empty() || f.len() > MAX_FILTER_LEN)
    {
        return Err("seccomp filters too many or too long".into());
    }
    for q in [&p.pending_thread, &p.pending_process] {
        if q.len() > MAX_PENDING || q.iter().any(|i| i.len() != 128) {
            return Err("queued signals too many or malformed".into());
        }
    }
    if p.itimers.len() > 3 || p.timers.len() > MAX_TIMERS || p.prctl.dumpable > 1 {
        return Err("timers or prctl values out of range".into());
    }
    if let Some(t) = p.timers.iter().find(|t| !timer_clock_ok(t.clock)) {
        return Err(format!(
            "POSIX timer {} uses clock {}, not realtime, monotonic, boottime or the process's own CPU time",
            t.id, t.clock
        ));
    }
    // Each area whole inside one of the image's VMAs, in order: `mbind` never reaches the
    // restorer's own memory or the vDSO.
    let mut prev_end = 0;
    for (i, a) in p.area_policies.iter().enumerate() {
        let aligned = a.start % PAGE == 0 && a.end % PAGE == 0;
        let inside = area_at(vmas, a.start).is_some_and(|v| a.end <= v.end);
        if !aligned || a.start >= a.end || a.start < prev_end || a.end > USER_END || !inside {
            return Err(format!(
                "NUMA policy area {i} ({:#x}-{:#x}) is unaligned, out of order or outside the image's memory",
                a.start, a.end
            ));
        }
        prev_end = a.end;
    }
    let policies = std::iter::once(&p.mempolicy).chain(p.area_policies.iter().map(|a| &a.policy));
    if p.area_policies.len() > MAX_AREA_POLICIES
        || policies
            .into_iter()
            .any(|m| m.nodes.len() > MAX_NODE_WORDS || m.mode & !MPOL_KNOWN != 0)
    {
        return Err("NUMA memory policies out of range".into());
    }
    Ok(())
}

/// What `PR_SET_VMA_ANON_NAME` accepts: under 80 bytes of printable ASCII but `\`, `` ` ``,
/// `$`, `[` and `]`.
fn valid_anon_name(name: &str) -> bool {
    name.len() < 80
        && name
            .bytes()
            .all(|c| (0x20..0x7f).contains(&c) && !b"\\`$[]".contains(&c))
}
