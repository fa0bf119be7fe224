//! Eager restore: turn a stopped process into the image, every page in place before it runs.
//!
//! ```text
//!  target stopped ──seize──▶ inject mmap(gadget) ──▶ batch 1 ──▶ fill pages ──▶ batch 2 ──▶ finish
//!                           (1 single-step)          (blob)     (process_vm_  (blob)      (gadget removed
//!                                                               writev)                  by the image's own
//!                                                                                        syscall insn; regs)
//! batch 1: unregister the old rseq; close the target's fds but the inherited ones; open
//!          every file and park it at a number just above the image's own (fstat each for
//!          the identity check), whatever numbers the target held; unmap everything but
//!          the gadget and the vDSO; move the vDSO to the image's address; map every VMA.
//! batch 2: final protections; PR_SET_MM_MAP (mm fields, auxv, exe); reopen the image's file
//!          descriptors; signal handlers, altstack, robust list, TID address, rseq, umask,
//!          cwd, personality, name; then process-wide state around the credentials
//!          (crate::state: timers, queued signals, limits, scheduling, prctl, filters).
//! ```
//!
//! Four ptrace round trips whatever the number of VMAs. Any failure kills the target (and
//! reaps it when the engine forked it): no half-restored process is left behind. Phases are
//! `tracing` spans: `restore.attach`, `restore.map`, `restore.fill`, `restore.state`,
//! `restore.finish`.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::Instant;

use tracing::info_span;

mod fill;
mod pidns;
mod plan;

use crate::lazy::{PageServer, PageSource, Policy};
pub use fill::{FillMode, first_pages};
use plan::Plan;
pub(crate) use plan::{handoff_confine, handoff_credentials};
use std::sync::Arc;

use crate::cpu::{self, Mismatch};
use crate::image::files::{self, FileError, Observed};
use crate::image::{LoadedImage, PageRun, VdsoLayout};
use crate::proc::{self, MapEntry};
use crate::restorer;
use crate::sys::{self, Regs, Wait};
use crate::tracee::{self, TraceError, Tracee};

/// Where the search for a free gadget address starts (above the classic low areas).
const GAP_SEARCH_FROM: u64 = 0x1_0000_0000;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("cannot create the process to restore into")]
    Fork(#[source] io::Error),
    #[error("process {pid} cannot be restored into: {why}")]
    Target { pid: i32, why: String },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("image {image} cannot run on this machine")]
    Machine { image: String, source: Mismatch },
    #[error("image {image} cannot be restored")]
    File { image: String, source: FileError },
    #[error(
        "image {image}: the restored process opened another file at {path} than the one checked"
    )]
    Swapped { image: String, path: String },
    #[error(
        "image {image} needs descriptors {missing:?} from its caller; hand them in at those numbers"
    )]
    MissingFds { image: String, missing: Vec<i32> },
    #[error("image {image}: {why}")]
    Options { image: String, why: String },
    #[error(
        "image {image}: an eager restore needs its pages in memory; load it, or restore lazily from a page source"
    )]
    NotLoaded { image: String },
    #[error("image {image}: no free address range of {size} bytes for the restorer")]
    NoGap { image: String, size: u64 },
    #[error(
        "image {image} was taken from a process with thread id {want} in its pid namespace; process {pid} has {got} in its own, and a restored process keeps its thread id (glibc's mutex owners, robust futex lists): restore into a process that is {want} in its pid namespace (Target::Fork makes one), or set RestoreOptions::accept_new_tid"
    )]
    Tid {
        image: String,
        pid: i32,
        want: i32,
        got: i32,
    },
}

/// The process to restore into.
pub enum Target {
    /// The engine spawns it, at the image's thread id in a fresh pid namespace (see
    /// `pidns`; needs CAP_SYS_ADMIN). `fds` are (number in the image, descriptor of ours):
    /// one for every descriptor the image declares inherited. The calling *thread* is its
    /// parent: a death signal the image asked for (`PR_SET_PDEATHSIG`) comes when that
    /// thread ends, so the thread should live (and wait for the process) as long as it.
    Fork { fds: Vec<(RawFd, RawFd)> },
    /// A process the caller created and stopped (`kill(getpid(), SIGSTOP)` or a group stop
    /// while in a syscall), single-threaded, holding every inherited descriptor at its
    /// number, with the image's thread id in its pid namespace (a sandbox's first process
    /// is 1 there, as the node's images are) unless [`RestoreOptions::accept_new_tid`].
    /// The caller stays its parent and collects it: a failed restore kills it and waits
    /// until it has ended, but never collects it.
    Stopped { pid: i32 },
}

/// What a sandboxed instance must become at the end of a restore (the caller's first
/// process is stopped privileged, so that the restore can replace its memory).
#[derive(Debug, Clone, Default)]
pub struct Handoff {
    pub uid: u32,
    pub gid: u32,
    /// `PR_SET_PDEATHSIG(SIGKILL)`.
    pub die_with_parent: bool,
    /// A seccomp filter (classic BPF) installed last; empty for none. `no_new_privs` is set
    /// either way.
    pub seccomp: Vec<libc::sock_filter>,
}

#[derive(Clone)]
pub struct RestoreOptions {
    /// Send SIGCONT when done (otherwise the process is left in its group stop).
    pub resume: bool,
    /// Threads writing pages at once. Filling is bound by the kernel allocating and zeroing
    /// each 4 KiB page (~1.5 us here), which spreads across cores. 0 picks one per core, up
    /// to 4, for images of more than [`PARALLEL_FILL_PAGES`] pages.
    pub fill_threads: usize,
    /// Fill anonymous memory with `UFFDIO_COPY` when the target can make a userfaultfd
    /// (`false`: `process_vm_writev` for everything, to compare).
    pub uffd_fill: bool,
    /// Credentials and filter to end with (`None`: the process keeps the target's).
    pub handoff: Option<Handoff>,
    /// How pages reach the process.
    pub policy: Policy,
    /// Where a lazy or bulk restore's page server gets pages (an `Arc<LoadedImage>` is the
    /// in-memory source).
    pub source: Option<Arc<dyn PageSource>>,
    /// The working set a prefetch restore installs first ([`crate::image::read_working_set`]).
    pub working_set: Option<Arc<Vec<u64>>>,
    /// Restore a `Target::Stopped` whose thread id differs from the image's (refused
    /// otherwise). glibc's cached thread id is rewritten, so `gettid()`, threads and fork
    /// work; what holds the old id stays wrong: an error-checking or recursive mutex
    /// locked before the dump cannot be unlocked (EPERM), robust futexes name a dead owner.
    pub accept_new_tid: bool,
}

/// Below this many pages (32 MiB) one thread fills as fast as several here: measured with
/// `ember bench snap --fill-threads 1|2` (numpy's 3,100 pages: no gain; scikit-learn's
/// 25,000: 1.5x).
pub const PARALLEL_FILL_PAGES: u64 = 8192;

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            resume: true,
            fill_threads: 0,
            uffd_fill: true,
            handoff: None,
            policy: Policy::Eager,
            source: None,
            working_set: None,
            accept_new_tid: false,
        }
    }
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("resume", &self.resume)
            .field("fill_threads", &self.fill_threads)
            .field("uffd_fill", &self.uffd_fill)
            .field("handoff", &self.handoff.is_some())
            .field("policy", &self.policy)
            .field("source", &self.source.as_ref().map(|s| s.describe()))
            .field("accept_new_tid", &self.accept_new_tid)
            .finish()
    }
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("pid", &self.pid)
            .field("stats", &self.stats)
            .field("server", &self.server.as_ref().map(|s| s.stats()))
            .finish()
    }
}

impl RestoreOptions {
    fn threads_for(&self, pages: u64) -> usize {
        match self.fill_threads {
            0 if pages < PARALLEL_FILL_PAGES => 1,
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            n => n,
        }
    }
}

/// Figures of one restore, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreStats {
    pub attach_us: u64,
    pub map_us: u64,
    pub fill_us: u64,
    pub state_us: u64,
    pub finish_us: u64,
    pub total_us: u64,
    pub pages: u64,
    pub vmas: usize,
    /// Syscalls run inside the target, and the ptrace round trips they took.
    pub injected: usize,
    pub round_trips: usize,
    pub fill_mode: FillMode,
}

pub struct Restored {
    pub pid: i32,
    pub stats: RestoreStats,
    /// The page server of a lazy or bulk restore; it ends by itself.
    pub server: Option<PageServer>,
}

/// Restores `img` into `target`. Blocking: ptrace ties the whole restore to this thread.
pub fn restore(
    img: &LoadedImage,
    target: Target,
    opts: &RestoreOptions,
) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    check_options(img, opts)?;
    let (pid, ours) = match target {
        Target::Fork { mut fds } => {
            // A mapped restore hands the image's sealed memfd to the target, above its fds.
            let memfd;
            if opts.policy == Policy::Mapped {
                use std::os::fd::AsRawFd;
                memfd = img
                    .memfd()
                    .map_err(|e| RestoreError::Fork(std::io::Error::other(e.to_string())))?;
                fds.push((mapped_fd(img), memfd.as_raw_fd()));
            }
            let missing: Vec<i32> = img
                .meta
                .inherited_fds()
                .into_iter()
                .filter(|n| !fds.iter().any(|(want, _)| want == n))
                .collect();
            if !missing.is_empty() {
                return Err(RestoreError::MissingFds {
                    image: img.dir.display().to_string(),
                    missing,
                });
            }
            let pid = pidns::spawn(&fds, img.meta.task.tid).map_err(RestoreError::Fork)?;
            match sys::wait(pid, libc::WUNTRACED) {
                Ok(Wait::Stopped { .. }) => (pid, true),
                other => {
                    sys::kill(pid, libc::SIGKILL);
                    let _ = sys::wait(pid, 0);
                    return Err(RestoreError::Target {
                        pid,
                        why: format!("the forked child did not stop ({other:?})"),
                    });
                }
            }
        }
        Target::Stopped { pid } if opts.policy == Policy::Mapped => {
            sys::kill(pid, libc::SIGKILL);
            return Err(RestoreError::Target {
                pid,
                why:
                    "a mapped restore hands the image's memfd to a target it spawns (Target::Fork)"
                        .into(),
            });
        }
        Target::Stopped { pid } => (pid, false),
    };
    let attached = {
        let _s = info_span!("restore.attach", pid).entered();
        // With the image's own seccomp filters installed at the end of batch 2, the
        // restorer's last steps must pass them: the seize suspends seccomp.
        Tracee::attach(pid, true, !img.meta.process.seccomp.is_empty())
    };
    let result = attached.map_err(RestoreError::from).and_then(|t| {
        let mut server = None;
        run(img, &t, opts, t0, &mut server, false).map(|(stats, _)| (stats, server))
    });
    match result {
        Ok((stats, server)) => Ok(Restored { pid, stats, server }),
        Err(e) => {
            sys::kill(pid, libc::SIGKILL);
            if ours {
                // As tracer and parent collect the death so nothing lingers; stop reports
                // still queued come first.
                while let Ok(Wait::Stopped { .. }) = sys::wait(pid, 0) {}
            } else {
                // The caller's child (its parent may be a thread of this process): ended,
                // but left for the caller to collect.
                sys::wait_ended_uncollected(pid);
                tracing::debug!(pid, "restore failed; target killed");
            }
            Err(e)
        }
    }
}

/// A restore that leaves its target traced by this thread, stopped, with the restorer
/// gadget still mapped (a template's: see [`crate::template`]). Its registers are not the
/// image's yet; the caller runs syscalls in it and finishes the processes it makes.
pub(crate) struct Parked {
    pub(crate) tracee: Tracee,
    pub(crate) gadget: u64,
    pub(crate) gadget_len: u64,
    pub(crate) stats: RestoreStats,
}

/// [`restore`] into `pid` (stopped, made by this thread), eagerly, ending before the
/// gadget is removed: the process stays traced and stopped. On failure it is killed and
/// collected.
pub(crate) fn restore_parked(
    img: &LoadedImage,
    pid: i32,
    opts: &RestoreOptions,
) -> Result<Parked, RestoreError> {
    let t0 = Instant::now();
    let checked = check_options(img, opts).and_then(|()| match opts.policy {
        Policy::Eager => Ok(()),
        other => Err(RestoreError::Options {
            image: img.dir.display().to_string(),
            why: format!("a template is restored eagerly, not {other}"),
        }),
    });
    let result = checked.and_then(|()| {
        let t = Tracee::attach(pid, true, !img.meta.process.seccomp.is_empty())?;
        let mut server = None;
        let (stats, (gadget, gadget_len)) = run(img, &t, opts, t0, &mut server, true)?;
        Ok(Parked {
            tracee: t,
            gadget,
            gadget_len,
            stats,
        })
    });
    if result.is_err() {
        sys::kill(pid, libc::SIGKILL);
        while let Ok(Wait::Stopped { .. }) = sys::wait(pid, 0) {}
    }
    result
}

fn target_err(pid: i32, why: impl Into<String>) -> RestoreError {
    RestoreError::Target {
        pid,
        why: why.into(),
    }
}

/// What a restore learns of its target before changing anything.
struct Checked {
    /// Its thread id as it sees it (its pid namespace's).
    ns_tid: i32,
    maps: Vec<MapEntry>,
    here: VdsoLayout,
    /// First of the high descriptor numbers files are parked at.
    high: i32,
    /// The `syscall` instruction it is stopped after.
    insn: u64,
}

/// The target must be single-threaded, stopped in a syscall, on a machine the image can run
/// on, and hold the inherited descriptors.
fn check_target(img: &LoadedImage, t: &Tracee) -> Result<Checked, RestoreError> {
    let (pid, meta) = (t.pid, &img.meta);
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{f}"))
            .map_err(|e| target_err(pid, format!("/proc/{pid}/{f}: {e}")))
    };
    let status =
        proc::parse_status(&read("status")?).ok_or_else(|| target_err(pid, "unreadable status"))?;
    if status.threads != 1 {
        return Err(target_err(
            pid,
            format!("it has {} threads", status.threads),
        ));
    }
    let maps = proc::parse_maps(&read("maps")?).map_err(|e| target_err(pid, e))?;
    let here = vdso_here(&maps).map_err(|e| target_err(pid, e))?;
    let xstate =
        sys::get_xstate(pid).map_err(|e| target_err(pid, format!("reading its xstate: {e}")))?;
    cpu::check(&meta.requires, &here, &xstate).map_err(|source| RestoreError::Machine {
        image: img.dir.display().to_string(),
        source,
    })?;
    let fds_now = open_fds(pid)?;
    if let Some(n) = meta.inherited_fds().iter().find(|n| !fds_now.contains(n)) {
        return Err(target_err(
            pid,
            format!("it does not hold inherited descriptor {n} the image needs"),
        ));
    }
    let high = parking_base(meta);
    let mut two = [0u8; 2];
    sys::read_mem(pid, t.regs.rip.wrapping_sub(2), &mut two)
        .map_err(|e| target_err(pid, format!("reading its code: {e}")))?;
    if two != [0x0f, 0x05] {
        return Err(target_err(pid, "it is not stopped in a syscall"));
    }
    Ok(Checked {
        ns_tid: status.ns_tid,
        maps,
        here,
        high,
        insn: t.regs.rip - 2,
    })
}

fn run(
    img: &LoadedImage,
    t: &Tracee,
    opts: &RestoreOptions,
    t0: Instant,
    server: &mut Option<PageServer>,
    park: bool,
) -> Result<(RestoreStats, (u64, u64)), RestoreError> {
    let pid = t.pid;
    let meta = &img.meta;
    let image = img.dir.display().to_string();
    let mut stats = RestoreStats {
        pages: meta.pages.count,
        vmas: meta.vmas.len(),
        ..RestoreStats::default()
    };
    let c = check_target(img, t)?;
    if c.ns_tid != meta.task.tid && !opts.accept_new_tid {
        return Err(RestoreError::Tid {
            image,
            pid,
            want: meta.task.tid,
            got: c.ns_tid,
        });
    }
    let mut filled = vec![false; meta.vmas.len()];
    for r in &meta.pages.runs {
        if let Some(i) = meta
            .vmas
            .iter()
            .position(|v| v.start <= r.addr && r.addr < v.end)
        {
            filled[i] = true;
        }
    }
    let mut plan = Plan {
        meta,
        image: image.clone(),
        high: c.high,
        fd_files: Vec::new(),
        parked: 0,
        gadget: 0,
        gadget_len: 0,
        filled,
        stat_offsets: Vec::new(),
        handoff: opts.handoff.as_ref(),
        tid: c.ns_tid,
        // A template is bounded as a sandbox's parked process bounds a restore: its own
        // limits (TemplateOptions::limits) win over the image's where lower.
        bounds: crate::state::apply::Bounds::of(pid, opts.handoff.is_some() || park)
            .map_err(|e| target_err(pid, format!("reading its limits: {e}")))?,
        mapped_fd: (opts.policy == Policy::Mapped).then(|| mapped_fd(img)),
        template: park,
    };
    let rseq_now = sys::get_rseq(pid).ok().filter(|c| c.abi_pointer != 0);

    let mut occupied: Vec<(u64, u64)> = c.maps.iter().map(|m| (m.start, m.end)).collect();
    occupied.extend(meta.vmas.iter().map(|v| (v.start, v.end)));
    occupied.extend(meta.requires.vdso.areas.iter().map(|(_, s, e)| (*s, *e)));
    let (b1, b2) = plan.lay_out(&c.maps, &c.here, rseq_now, &occupied)?;
    let need = plan.gadget_len;
    stats.attach_us = t0.elapsed().as_micros() as u64;

    let t1 = Instant::now();
    {
        let _s = info_span!("restore.map", vmas = meta.vmas.len()).entered();
        let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as u64;
        let args = [plan.gadget, need, prot, flags, u64::MAX, 0];
        t.syscall_ok(c.insn, libc::SYS_mmap, &args, "mmap(restorer)")?;
        tracee::write(pid, plan.gadget, restorer::code())
            .map_err(|e| target_err(pid, format!("writing the restorer: {e}")))?;
        let (_, area) = t.run_batch(plan.gadget, &b1)?;
        check_files(&plan, pid, &area)?;
    }
    stats.map_us = t1.elapsed().as_micros() as u64;

    let t2 = Instant::now();
    {
        let _s = info_span!("restore.fill", pages = meta.pages.count).entered();
        fill_pages(img, opts, &plan, pid, &mut stats, server)?;
    }
    stats.fill_us = t2.elapsed().as_micros() as u64;

    let t3 = Instant::now();
    {
        let _s = info_span!("restore.state").entered();
        t.run_batch(plan.gadget, &b2)?;
        if let Some(off) = meta.task.glibc_tid_offset
            && c.ns_tid != meta.task.tid
        {
            let fs_base = words_to_regs(&meta.task.regs).fs_base;
            tracee::write(pid, fs_base + u64::from(off), &c.ns_tid.to_ne_bytes())
                .map_err(|e| target_err(pid, format!("writing glibc's thread id: {e}")))?;
        }
        sys::set_xstate(pid, &meta.task.xstate)
            .map_err(|e| target_err(pid, format!("setting xstate: {e}")))?;
    }
    stats.state_us = t3.elapsed().as_micros() as u64;

    let t4 = Instant::now();
    {
        let _s = info_span!("restore.finish").entered();
        if !park {
            finish(t, meta, &plan, opts.resume)?;
        }
    }
    stats.finish_us = t4.elapsed().as_micros() as u64;
    stats.injected = 2 + b1.len() + b2.len();
    stats.round_trips = 4;
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok((stats, (plan.gadget, plan.gadget_len)))
}

/// The fill phase of each policy: pages written now (eager, mapped's leftovers) or a page
/// server started (lazy, bulk, prefetch).
fn fill_pages(
    img: &LoadedImage,
    opts: &RestoreOptions,
    plan: &Plan,
    pid: i32,
    stats: &mut RestoreStats,
    server: &mut Option<PageServer>,
) -> Result<(), RestoreError> {
    let meta = &img.meta;
    match (opts.policy, &opts.source) {
        (Policy::Eager | Policy::Mapped, _) => {
            let uffd = (opts.uffd_fill && opts.policy != Policy::Mapped).then(|| plan.uffd_fd());
            // Mapped: the image's memfd already holds the anonymous runs in place.
            let runs: Vec<PageRun> = meta
                .pages
                .runs
                .iter()
                .filter(|r| opts.policy != Policy::Mapped || !meta.shares_run(r.addr))
                .copied()
                .collect();
            let count = runs.iter().map(|r| u64::from(r.pages)).sum();
            stats.fill_mode = fill::fill(pid, img, &runs, opts.threads_for(count), uffd)
                .map_err(|e| target_err(pid, format!("writing pages: {e}")))?;
            if opts.policy == Policy::Mapped {
                let s = fill::mapped(pid, img, plan.uffd_fd()).map_err(|e| {
                    target_err(
                        pid,
                        format!(
                            "starting the mapped restore's page server (it needs userfaultfd): {e}"
                        ),
                    )
                })?;
                *server = Some(s);
            }
        }
        (policy, Some(source)) => {
            let ws = match policy {
                Policy::Prefetch => opts.working_set.as_deref().map(Vec::as_slice),
                _ => None,
            };
            let bulk = policy == Policy::Bulk;
            let s = fill::lazy(pid, img, plan.uffd_fd(), source.clone(), bulk, ws)
                .map_err(|e| target_err(pid, format!("starting the page server: {e}")))?;
            *server = Some(s);
        }
        // `check_options` refused this before anything started.
        (policy, None) => {
            return Err(target_err(
                pid,
                format!("a {policy} restore needs a page source"),
            ));
        }
    }
    Ok(())
}

/// The last steps: the gadget goes, removed by a syscall instruction of the image's own
/// code; then registers, mask, detach, and (with `resume`) SIGCONT.
fn finish(
    t: &Tracee,
    meta: &crate::image::Meta,
    plan: &Plan,
    resume: bool,
) -> Result<(), RestoreError> {
    let pid = t.pid;
    let mut regs = words_to_regs(&meta.task.regs);
    let args = [plan.gadget, plan.gadget_len];
    let rc = t.syscall_with(&regs, meta.task.syscall_insn, libc::SYS_munmap, &args)?;
    if rc != 0 {
        return Err(target_err(
            pid,
            format!("removing the restorer failed: {rc}"),
        ));
    }
    restart_interrupted(&mut regs);
    sys::set_regs(pid, &regs).map_err(|e| target_err(pid, format!("PTRACE_SETREGS: {e}")))?;
    sys::set_sigmask(pid, meta.task.sigmask)
        .map_err(|e| target_err(pid, format!("PTRACE_SETSIGMASK: {e}")))?;
    sys::detach(pid).map_err(|e| target_err(pid, format!("PTRACE_DETACH: {e}")))?;
    if resume {
        sys::kill(pid, libc::SIGCONT);
    }
    Ok(())
}

/// Option combinations that cannot work, refused before a target is touched.
fn check_options(img: &LoadedImage, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let image = img.dir.display().to_string();
    let needs_pages = matches!(opts.policy, Policy::Eager | Policy::Mapped);
    if needs_pages && !img.is_loaded() {
        return Err(RestoreError::NotLoaded { image });
    }
    let why = match opts.policy {
        Policy::Lazy | Policy::Bulk | Policy::Prefetch if opts.source.is_none() => {
            format!("a {} restore needs a page source", opts.policy)
        }
        Policy::Prefetch if opts.working_set.is_none() => {
            "a prefetch restore needs the image's working set: record one from a lazy restore first"
                .into()
        }
        _ => return Ok(()),
    };
    Err(RestoreError::Options { image, why })
}

/// First of the numbers batch 1 parks descriptors at. Batch 1 first closes every
/// descriptor of the target but the inherited ones and a mapped restore's memfd, so the
/// numbers follow from the image alone, never from what the target held: a sandbox's
/// first process, forked from a daemon holding a thousand descriptors, may hold some at
/// numbers near its limit, and parking above those went past the limit (`dup3` fails with
/// EBADF). Above every number the image uses and the memfd's (one above those), with a
/// free number in between for the opens that precede each park (an open returns the
/// lowest free number: at most the highest kept one plus one).
fn parking_base(meta: &crate::image::Meta) -> i32 {
    meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 3
}

/// Where a mapped restore puts the image's memfd in the target: above every descriptor
/// the image has.
fn mapped_fd(img: &LoadedImage) -> i32 {
    img.meta.fds.iter().map(|f| f.fd).max().unwrap_or(2) + 1
}

/// An interrupted syscall (`-ERESTART*` in rax) is restarted by hand: the kernel that
/// interrupted it is not the one that resumes it. A call with a restart block (nanosleep,
/// clock_nanosleep, poll, a futex wait with a timeout: `-ERESTART_RESTARTBLOCK`) cannot
/// bring the block along: the original call is re-issued with its original arguments (still
/// in the registers), so a relative sleep starts over and sleeps at least as long as asked,
/// an absolute one ends when it would have. A task in `restart_syscall` itself (its original
/// call unknown) is refused at dump; an image holding one anyway gets `restart_syscall`,
/// which returns EINTR.
pub fn restart_interrupted(r: &mut Regs) {
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            -514..=-512 => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            crate::state::capture::ERESTART_RESTARTBLOCK => {
                r.rax = match r.orig_rax as i64 {
                    libc::SYS_restart_syscall => libc::SYS_restart_syscall as u64,
                    _ => r.orig_rax,
                };
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
}

pub fn words_to_regs(w: &[u64]) -> Regs {
    let g = |i: usize| w.get(i).copied().unwrap_or(0);
    Regs {
        r15: g(0),
        r14: g(1),
        r13: g(2),
        r12: g(3),
        rbp: g(4),
        rbx: g(5),
        r11: g(6),
        r10: g(7),
        r9: g(8),
        r8: g(9),
        rax: g(10),
        rcx: g(11),
        rdx: g(12),
        rsi: g(13),
        rdi: g(14),
        orig_rax: g(15),
        rip: g(16),
        cs: g(17),
        eflags: g(18),
        rsp: g(19),
        ss: g(20),
        fs_base: g(21),
        gs_base: g(22),
        ds: g(23),
        es: g(24),
        fs: g(25),
        gs: g(26),
    }
}

fn open_fds(pid: i32) -> Result<Vec<i32>, RestoreError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| target_err(pid, format!("listing its fds: {e}")))?;
    Ok(dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

/// The vDSO areas of a process of this kernel, with the vDSO code's hash (the same for
/// every process of one kernel: read once, from ourselves).
fn vdso_here(maps: &[MapEntry]) -> Result<VdsoLayout, String> {
    static HASH: OnceLock<Result<[u8; 32], String>> = OnceLock::new();
    let hash = HASH
        .get_or_init(|| {
            let own = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
            let own = proc::parse_maps(&own)?;
            let v = own
                .iter()
                .find(|m| m.name.as_deref() == Some("[vdso]"))
                .ok_or("this process has no [vdso]")?;
            let mut buf = vec![0u8; (v.end - v.start) as usize];
            File::open("/proc/self/mem")
                .and_then(|f| f.read_exact_at(&mut buf, v.start))
                .map_err(|e| format!("reading our vDSO: {e}"))?;
            Ok(*blake3::hash(&buf).as_bytes())
        })
        .clone()?;
    Ok(VdsoLayout {
        areas: maps
            .iter()
            .filter_map(|m| {
                let n = m.name.as_deref()?;
                ["[vvar]", "[vvar_vclock]", "[vdso]"]
                    .contains(&n)
                    .then(|| (n.to_string(), m.start, m.end))
            })
            .collect(),
        vdso_hash: hash,
    })
}

/// Each file the target opened and mapped must be the one the image was taken with
/// (checked on what the target's own `fstat` saw, before any of its code runs).
fn check_files(plan: &Plan, pid: i32, area: &[u8]) -> Result<(), RestoreError> {
    for (k, off) in plan.stat_offsets.iter().enumerate() {
        let (Some(off), Some(want)) = (off, plan.meta.files.get(k)) else {
            continue;
        };
        let Some(raw) = area.get(*off..*off + size_of::<libc::stat>()) else {
            continue;
        };
        // SAFETY: `raw` holds exactly one `struct stat` as the kernel wrote it; an unaligned
        // read copies it out.
        let st: libc::stat = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let real = format!("/proc/{pid}/root{}", want.path);
        files::verify_observed(want, Observed::of_stat(&st), || File::open(&real)).map_err(
            |source| RestoreError::File {
                image: plan.image.clone(),
                source,
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_syscalls_restart_once() {
        let mut r = words_to_regs(&[0; 27]);
        r.orig_rax = 0;
        r.rax = (-512i64) as u64;
        r.rip = 0x1002;
        restart_interrupted(&mut r);
        assert_eq!((r.rax, r.rip, r.orig_rax), (0, 0x1000, u64::MAX));
        let mut r = words_to_regs(&[0; 27]);
        r.orig_rax = u64::MAX;
        r.rax = 7;
        r.rip = 0x1002;
        restart_interrupted(&mut r);
        assert_eq!((r.rax, r.rip), (7, 0x1002));
        let words = crate::dump::regs_to_words(&r);
        assert_eq!(words_to_regs(&words).rip, 0x1002);
        // A sleep with a restart block: the original call again, with its arguments.
        let mut r = words_to_regs(&[0; 27]);
        r.orig_rax = libc::SYS_clock_nanosleep as u64;
        r.rax = (-516i64) as u64;
        r.rdi = 1;
        r.rip = 0x1002;
        restart_interrupted(&mut r);
        let want = (libc::SYS_clock_nanosleep as u64, 0x1000, u64::MAX, 1);
        assert_eq!((r.rax, r.rip, r.orig_rax, r.rdi), want);
    }
}
