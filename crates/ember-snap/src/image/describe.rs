//! A human summary of an image (`ember snap inspect`).

use std::fmt::Write;
use std::path::Path;

use super::files::hexs;
use super::format::{META_FILE, PAGES_FILE};
use super::{FdKind, Meta, PAGE, VmaKind};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn prot(p: i32) -> String {
    format!(
        "{}{}{}",
        if p & libc::PROT_READ != 0 { 'r' } else { '-' },
        if p & libc::PROT_WRITE != 0 { 'w' } else { '-' },
        if p & libc::PROT_EXEC != 0 { 'x' } else { '-' }
    )
}

/// Everything a person wants to know about the image at `dir`, VMA by VMA.
pub fn describe(dir: &Path, m: &Meta) -> String {
    let size = |f: &str| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0);
    let mut o = String::new();
    let _ = writeln!(o, "image {} (id {})", dir.display(), hexs(&m.id));
    let _ = writeln!(
        o,
        "  taken from pid {} ({}, {}) at unix time {}",
        m.source.pid, m.source.comm, m.source.exe, m.created
    );
    match &m.parent {
        None => {
            let _ = writeln!(o, "  parent: none (a whole image)");
        }
        Some(p) => {
            let named: u64 = m.pages.runs.iter().map(|r| u64::from(r.pages)).sum();
            let theirs: u64 = m
                .pages
                .runs
                .iter()
                .map(|r| {
                    let end = r.first + u64::from(r.pages);
                    end.saturating_sub(r.first.max(m.pages.count))
                })
                .sum();
            let _ = writeln!(
                o,
                "  parent: {} (id {}, metadata #{}); a layer: {} of its {} pages are its own, {} the parent's",
                p.path,
                hexs(&p.id),
                hexs(&p.meta_hash[..4]),
                named - theirs,
                named,
                theirs
            );
        }
    }
    let _ = writeln!(
        o,
        "  memory: {} VMAs mapping {}; {} pages stored ({}) in {} runs; files: {} meta, {} pages",
        m.vmas.len(),
        mib(m.mapped_bytes()),
        m.pages.count,
        mib(m.pages.count * PAGE),
        m.pages.runs.len(),
        mib(size(META_FILE)),
        mib(size(PAGES_FILE)),
    );
    let vdso: Vec<String> = m
        .requires
        .vdso
        .areas
        .iter()
        .map(|(n, s, e)| format!("{n} {}K at {s:#x}", (e - s) / 1024))
        .collect();
    let _ = writeln!(
        o,
        "  requires: kernel {} layout ({}; vDSO #{}), xstate features {:#x} ({} bytes), CPU {}",
        m.source.kernel,
        vdso.join(", "),
        hexs(&m.requires.vdso.vdso_hash[..4]),
        m.requires.xfeatures,
        m.requires.xstate_size,
        m.requires.cpu_features.join(" ")
    );
    let t = &m.task;
    let _ = writeln!(
        o,
        "  task: {} signal handlers, mask {:#x}, rseq {}, robust list {:#x}, cwd {}",
        t.sigactions.len(),
        t.sigmask,
        t.rseq
            .map(|r| format!("{:#x}", r.addr))
            .unwrap_or_else(|| "none".into()),
        t.robust_list.0,
        t.cwd
    );
    let p = &m.process;
    let armed = p.itimers.iter().filter(|t| t.value_us != 0).count();
    let _ = writeln!(
        o,
        "  process: sched policy {} nice {}, affinity {}, {} seccomp filters, {} + {} queued signals, {armed} interval and {} POSIX timers, dumpable {}, no_new_privs {}, NUMA policy {:#x} nodes {:x?} ({} areas with their own), I/O priority {:#x}",
        p.sched.policy,
        p.sched.nice,
        if p.affinity.is_some() {
            "set"
        } else {
            "all CPUs"
        },
        p.seccomp.len(),
        p.pending_thread.len(),
        p.pending_process.len(),
        p.timers.len(),
        p.prctl.dumpable,
        p.prctl.no_new_privs,
        p.mempolicy.mode,
        p.mempolicy.nodes,
        p.area_policies.len(),
        p.ioprio
    );
    let _ = writeln!(o, "  descriptors:");
    for f in &m.fds {
        let what = match &f.kind {
            FdKind::Inherited { what } => format!("inherited from the caller (was {what})"),
            FdKind::File { file, pos, flags } => format!(
                "{} at {pos} (flags {flags:#o})",
                m.files
                    .get(*file as usize)
                    .map(|f| f.path.as_str())
                    .unwrap_or("?")
            ),
            FdKind::Dup { of } => format!("shares fd {of}'s open file"),
        };
        let _ = writeln!(o, "    {:>3} {what}", f.fd);
    }
    let _ = writeln!(o, "  files:");
    for f in &m.files {
        let _ = writeln!(o, "    {} ({} bytes, {})", f.path, f.size, f.ident);
    }
    let _ = writeln!(
        o,
        "  VMAs:                                    perm  pages  what"
    );
    for v in &m.vmas {
        let stored: u64 = m
            .pages
            .runs
            .iter()
            .filter(|r| v.start <= r.addr && r.addr < v.end)
            .map(|r| u64::from(r.pages))
            .sum();
        let mut what = match v.kind {
            VmaKind::Anon => v
                .name
                .as_ref()
                .map(|n| format!("[anon:{n}]"))
                .unwrap_or_default(),
            VmaKind::Heap => "[heap]".into(),
            VmaKind::Stack => "[stack]".into(),
            VmaKind::File { file, offset } => format!(
                "{} @{offset:#x}",
                m.files
                    .get(file as usize)
                    .map(|f| f.path.as_str())
                    .unwrap_or("?")
            ),
        };
        for (code, flag) in super::vma_flags::CODES {
            if v.flags & flag != 0 {
                what.push(' ');
                what.push_str(code);
            }
        }
        let _ = writeln!(
            o,
            "    {:012x}-{:012x} {:>9} {}{} {stored:>6}  {what}",
            v.start,
            v.end,
            format!("{}K", v.len() / 1024),
            prot(v.prot),
            if v.shared { 's' } else { 'p' },
        );
    }
    o
}
