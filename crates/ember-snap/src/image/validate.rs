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
        Some(p) if p.space <= MAX_PAGES * u64::from(MAX_DEPTH) => m.pages.count + p.space,
        Some(p) => return Err(format!("the parent's index space of {} pages", p.space)),
    };
    let mut next_page = 0;
    let mut prev_end = 0;
    for r in &m.pages.runs {
        let end = r.addr.saturating_add(u64::from(r.pages) * PAGE);
        let inside = m
            .vmas
            .iter()
            .any(|v| !v.shared && v.start <= r.addr && end <= v.end);
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
                let first = m.fds.iter().find(|g| g.fd == of);
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
    validate_process(&m.process)
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

fn validate_process(p: &super::ProcState) -> Result<(), String> {
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
    let policies = std::iter::once(&p.mempolicy).chain(p.area_policies.iter().map(|a| &a.policy));
    if p.area_policies.len() > MAX_AREA_POLICIES
        || p.area_policies
            .iter()
            .any(|a| a.start >= a.end || a.start % super::PAGE != 0)
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
