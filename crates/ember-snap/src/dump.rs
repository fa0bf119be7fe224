//! Dump: freeze a single-threaded process, read everything a restore needs, write an image,
//! and let the process go on as before.
//!
//! ```text
//! caller ──spawn──▶ dump thread: seize ─▶ stopped: inspect, descriptors, pages ─▶ release
//!   │                              (each step checks the freeze limit; any error,
//!   │                               panic or timeout lets the process go unchanged)
//!   └─ waits at most freeze_limit + ATTACH_WAIT ─▶ identify mapped files (hash, after the
//!                                                  release) ─▶ write the image
//! ```
//!
//! Phases (tracing spans): `dump.freeze` (seize, interrupt, registers), `dump.inspect`
//! (/proc files; process-wide state and the queries only the process can answer, in
//! [`crate::state::capture`]), `dump.pages` (pagemap + page contents), `dump.files`
//! (file identities: after the process is let go; each file's `stat` taken while it was
//! stopped must still hold after its content is read), `dump.write`.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tracing::info_span;

use crate::cpu;
use crate::image::files::FileError;
use crate::image::{
    self, ImageError, LoadedImage, Meta, MmFields, PAGE, PageIndex, PageRun, ParentRef, Requires,
    Rseq, Source, Task, VdsoArea, VdsoLayout, Vma, VmaKind, vma_flags,
};
use crate::lazy::{PageServer, PendingPages};
use crate::proc::{self, MapEntry};
use crate::state::{self, StateError};
use crate::sys::{self, Regs};
use crate::tracee::{TraceError, Tracee};

mod fds;
mod files_table;
mod pages;
mod vmas;
pub use fds::FD_FLAGS;
use fds::classify_fds;
use files_table::{FileTable, Observation, identify};
use pages::{ReadPages, read_pages};
use vmas::classify_vmas;

/// Offset of `pd->tid` from the thread pointer in glibc 2.36 (checked against the real
/// thread id at every dump, recorded only when it equals it).
const GLIBC_TID_OFFSET: u32 = 0x2d0;
/// How long a process may be kept stopped by default (numpy's dump stops it ~20 ms,
/// scikit-learn + pandas' ~100-300 ms on a busy 2-core machine; a dump of a lazily restored
/// process without its page server faults every page in: 2-3.5 s in a debug build).
pub const DEFAULT_FREEZE_LIMIT: Duration = Duration::from_secs(10);
/// How long the caller waits for the process to stop, beyond the freeze limit.
const ATTACH_WAIT: Duration = Duration::from_secs(2);
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {pid} does not exist or cannot be read")]
    NoProcess { pid: i32, source: io::Error },
    #[error(
        "process {pid} has {threads} threads; only single-threaded processes can be dumped (start it with OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1)"
    )]
    MultiThreaded { pid: i32, threads: usize },
    #[error(
        "process {pid} has child processes ({children}; live, or exited and not yet waited for): an image holds one process; wait for or kill its children first"
    )]
    Children { pid: i32, children: String },
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error("process {pid}: cannot dump VMA {vma}: {why}")]
    Vma { pid: i32, vma: String, why: String },
    #[error("process {pid}: cannot dump fd {fd} ({what}): {why}")]
    Fd {
        pid: i32,
        fd: i32,
        what: String,
        why: String,
    },
    #[error("process {pid}: cannot dump {path}: {why}")]
    Path { pid: i32, path: String, why: String },
    #[error("process {pid}: cannot dump its working directory {cwd}: {why}")]
    Cwd { pid: i32, cwd: String, why: String },
    #[error("process {pid}: cannot read {file}: {why}")]
    Proc { pid: i32, file: String, why: String },
    #[error("process {pid}: no syscall instruction found to run queries with")]
    NoSyscall { pid: i32 },
    #[error(
        "process {pid}: the dump's {phase} step ran past the {limit:?} a process may be kept stopped; the process was let go unchanged: dump it again when it is less busy, or raise the limit (`ember snap dump --freeze-limit-ms`, DumpOptions::freeze_limit)"
    )]
    FreezeLimit {
        pid: i32,
        phase: &'static str,
        limit: Duration,
    },
    #[error(
        "process {pid}: the dump did not finish within {waited:?} (a stop or a /proc read that does not return); nothing was written, and the process is let go as soon as the stuck step returns"
    )]
    Stuck { pid: i32, waited: Duration },
    #[error(
        "process {pid}: the dump's thread ended without an answer (a bug: please report it); the process was let go"
    )]
    Crashed { pid: i32 },
    #[error("cannot start the dump's thread")]
    Thread(#[source] io::Error),
    #[error("process {1}: a file it maps cannot be identified")]
    File(#[source] FileError, i32),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot dump a layer over {dir}: {why}")]
    Parent { dir: PathBuf, why: String },
}

/// What the caller tells a dump.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Descriptors the caller owns (a protocol pipe, stdio): recorded as inherited, and a
    /// restore must hand in a descriptor at each of these numbers.
    pub inherited: Vec<i32>,
    /// Longest the process may be kept stopped: past it, the dump stops at its next step,
    /// lets the process go unchanged and fails naming the step.
    pub freeze_limit: Duration,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            inherited: Vec::new(),
            freeze_limit: DEFAULT_FREEZE_LIMIT,
        }
    }
}

/// Figures of one dump.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub vmas: usize,
    /// Pages stored in the image's page file.
    pub pages: u64,
    /// A layer's pages that are its parent's (referred to, not stored).
    pub parent_pages: u64,
    /// Pages a lazy restore had not given the process yet, read through its page server.
    pub faulted_in: u64,
    pub zero_pages: u64,
    pub files: usize,
    /// Time the process was stopped.
    pub frozen_us: u64,
    pub total_us: u64,
}

struct Ctx {
    pid: i32,
    /// When the process must be let go, and whether the caller gave up waiting.
    deadline: Instant,
    limit: Duration,
    abandoned: Arc<AtomicBool>,
}

impl Ctx {
    fn path(&self, f: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/{f}", self.pid))
    }

    fn read(&self, f: &str) -> Result<String, DumpError> {
        std::fs::read_to_string(self.path(f)).map_err(|e| self.proc_err(f, e.to_string()))
    }

    fn proc_err(&self, file: &str, why: String) -> DumpError {
        DumpError::Proc {
            pid: self.pid,
            file: file.to_string(),
            why,
        }
    }

    /// Fails when the process has been stopped for longer than allowed, naming `phase`.
    fn check_time(&self, phase: &'static str) -> Result<(), DumpError> {
        if Instant::now() > self.deadline || self.abandoned.load(Ordering::Relaxed) {
            return Err(DumpError::FreezeLimit {
                pid: self.pid,
                phase,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// The process's threads, counted again for up to 100 ms while there are more than one: a
/// thread its process just joined (`pthread_join` returns when the kernel clears the
/// thread's id, before the thread is released) is listed in `/proc/PID/task` a moment
/// longer, and is no reason to refuse the dump. A live second thread stays, and is.
fn thread_count(pid: i32) -> Result<usize, DumpError> {
    let count = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.count())
            .map_err(|source| DumpError::NoProcess { pid, source })
    };
    let mut n = count()?;
    for _ in 0..20 {
        if n <= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        n = count()?;
    }
    Ok(n)
}

/// What the stopped process gave: the metadata (files not yet identified), its pages, and
/// the files to identify once it runs again.
struct Captured {
    meta: Meta,
    pages: Vec<u8>,
    stats: DumpStats,
    files: Vec<Observation>,
}

/// Lets a stopped process go when dropped (on every return and on a panic): registers
/// and signal mask as they were (a sleep the dump interrupted re-issued in its own call,
/// [`state::capture::reissue_sleep`]), then detach.
struct Frozen {
    t: Tracee,
    released: bool,
}

impl Frozen {
    fn release(mut self) -> Result<(), TraceError> {
        self.released = true;
        state::capture::reissue_sleep(&mut self.t.regs);
        self.t.release()
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.released {
            state::capture::reissue_sleep(&mut self.t.regs);
            let _ = self.t.release();
        }
    }
}

/// Dumps process `pid` into the image directory `out`. The process must be single-threaded
/// and stays as it was: it runs on after the dump (kill it if it must not), also when the
/// dump fails or takes too long.
pub fn dump(pid: i32, out: &Path, opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    dump_restored(pid, out, opts, Lineage::default())
}

/// What a dump of a process this engine restored may use besides the process itself.
#[derive(Clone, Copy, Default)]
pub struct Lineage<'a> {
    /// Dump as a layer over this image (the one the process was restored from).
    pub parent: Option<&'a LoadedImage>,
    /// The page server of the process's lazy restore (lazy, bulk, prefetch), when it runs
    /// in this process: the pages it has not installed yet are read from its page source
    /// instead of being faulted in through it, and areas the process never touched are not
    /// faulted in at all (a sparse area costs nothing; faulting costs ~11-30 us a page).
    /// Such a dump runs on the caller's thread: the freeze limit is checked between areas,
    /// so a page source that stalls (a remote one) keeps the process stopped as long as it
    /// does; give a remote source its own timeouts.
    pub server: Option<&'a PageServer>,
}

/// Dumps process `pid` as a **layer** over `parent`, the image it was restored from: only
/// the pages that differ from the parent's page at the same address are stored, the others
/// refer to the parent's; everything else is stored whole. The layer records the parent's
/// id, metadata hash and (as a hint) its directory; a restore loads the parent with it.
pub fn dump_layer(
    pid: i32,
    out: &Path,
    opts: &DumpOptions,
    parent: &LoadedImage,
) -> Result<DumpStats, DumpError> {
    let lineage = Lineage {
        parent: Some(parent),
        server: None,
    };
    dump_restored(pid, out, opts, lineage)
}

/// [`dump`] or [`dump_layer`] of a restored process, with what its restore left: the image
/// it came from (to dump a layer over) and its page server.
pub fn dump_restored(
    pid: i32,
    out: &Path,
    opts: &DumpOptions,
    lineage: Lineage<'_>,
) -> Result<DumpStats, DumpError> {
    let t0 = Instant::now();
    let parent = lineage.parent;
    if let Some(p) = parent
        && !p.is_loaded()
    {
        return Err(DumpError::Parent {
            dir: p.dir.clone(),
            why: "it was opened without its pages; load it (LoadedImage::load)".into(),
        });
    }
    let threads = thread_count(pid)?;
    if threads != 1 {
        return Err(DumpError::MultiThreaded { pid, threads });
    }
    // Strict mode is refused before the process is touched; a process with filters is
    // seized with them suspended, so the injected queries pass them.
    let seccomp = state::seccomp_mode(pid)?;
    state::refuse_strict(pid, seccomp)?;
    let abandoned = Arc::new(AtomicBool::new(false));
    let stopped = if lineage.parent.is_none() && lineage.server.is_none() {
        // ptrace ties a tracee to the thread that attached it: the stopped part runs on a
        // thread of its own, so that the caller can give up on it without leaving the
        // process stopped (the thread lets it go at its next step). A dump with a lineage
        // borrows from its caller and runs on the caller's thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let (o, flag, span) = (opts.clone(), abandoned.clone(), tracing::Span::current());
        std::thread::Builder::new()
            .name(format!("ember-dump-{pid}"))
            .spawn(move || {
                let _e = span.enter();
                let _ = tx.send(stopped_part(pid, &o, seccomp, Lineage::default(), flag));
            })
            .map_err(DumpError::Thread)?;
        let waited = opts.freeze_limit + ATTACH_WAIT;
        match rx.recv_timeout(waited) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                abandoned.store(true, Ordering::Relaxed);
                return Err(DumpError::Stuck { pid, waited });
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(DumpError::Crashed { pid });
            }
        }
    } else {
        stopped_part(pid, opts, seccomp, lineage, abandoned)
    };
    let (captured, frozen_us) = stopped?;
    let Captured {
        mut meta,
        pages,
        mut stats,
        files,
    } = captured;
    meta.files = {
        let _s = info_span!("dump.files").entered();
        identify(pid, files)?
    };
    stats.files = meta.files.len();
    {
        let _s = info_span!("dump.write").entered();
        image::write_image(out, &mut meta, &pages)?;
    }
    stats.frozen_us = frozen_us;
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok(stats)
}

/// Stops the process, captures it and lets it go (whatever happened); the capture and the
/// time it was stopped.
fn stopped_part(
    pid: i32,
    opts: &DumpOptions,
    seccomp: u32,
    lineage: Lineage<'_>,
    abandoned: Arc<AtomicBool>,
) -> Result<(Captured, u64), DumpError> {
    let tracee = {
        let _s = info_span!("dump.freeze", pid).entered();
        Frozen {
            t: Tracee::attach(pid, false, seccomp == 2)?,
            released: false,
        }
    };
    let frozen = Instant::now();
    let cx = Ctx {
        pid,
        deadline: frozen + opts.freeze_limit,
        limit: opts.freeze_limit,
        abandoned,
    };
    let captured = capture(&tracee.t, &cx, opts, lineage.parent, lineage.server);
    let released = tracee.release();
    let frozen_us = frozen.elapsed().as_micros() as u64;
    let captured = captured?;
    released?;
    Ok((captured, frozen_us))
}

/// The children of `pid` (live and zombie): its `children` file, or a scan of /proc where
/// the kernel has none.
fn children(cx: &Ctx) -> Vec<i32> {
    let pid = cx.pid;
    if let Ok(t) = std::fs::read_to_string(cx.path(&format!("task/{pid}/children"))) {
        return proc::parse_children(&t);
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| proc::parse_ppid(&s))
                == Some(pid)
        })
        .collect()
}

/// The working directory, refused when it was deleted or its path now names another
/// directory (a restore would fail, or enter that other directory).
fn working_dir(cx: &Ctx) -> Result<String, DumpError> {
    let pid = cx.pid;
    let cwd = std::fs::read_link(cx.path("cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| cx.proc_err("cwd", e.to_string()))?;
    let refuse = |cwd: &str, why: &str| DumpError::Cwd {
        pid,
        cwd: cwd.to_string(),
        why: why.to_string(),
    };
    if let Some(gone) = cwd.strip_suffix(" (deleted)") {
        return Err(refuse(
            gone,
            "it was deleted, and a restore could not enter it again: chdir to a directory that exists before the dump",
        ));
    }
    let here = std::fs::metadata(cx.path("cwd")).map_err(|e| cx.proc_err("cwd", e.to_string()))?;
    let same = std::fs::metadata(cx.path(&format!("root{cwd}")))
        .is_ok_and(|n| (n.dev(), n.ino()) == (here.dev(), here.ino()));
    if !same {
        return Err(refuse(
            &cwd,
            "its path now names another directory (or none): chdir to a directory that exists before the dump",
        ));
    }
    Ok(cwd)
}

/// Everything read while the process is stopped.
fn capture(
    t: &Tracee,
    cx: &Ctx,
    opts: &DumpOptions,
    parent: Option<&LoadedImage>,
    server: Option<&PageServer>,
) -> Result<Captured, DumpError> {
    let pid = t.pid;
    let threads = thread_count(pid)?;
    if threads != 1 {
        return Err(DumpError::MultiThreaded { pid, threads });
    }
    let mut kids = children(cx);
    // A child that just exited under SA_NOCLDWAIT (or SIGCHLD ignored) is reaped by the
    // kernel a moment after its parent goes on: listed that long, and no reason to refuse.
    for _ in 0..20 {
        if kids.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        kids = children(cx);
    }
    if !kids.is_empty() {
        let children = kids
            .iter()
            .map(|k| format!("pid {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(DumpError::Children { pid, children });
    }
    let span = info_span!("dump.inspect").entered();
    let xstate = sys::get_xstate(pid).map_err(|e| cx.proc_err("NT_X86_XSTATE", e.to_string()))?;
    let rseq = sys::get_rseq(pid)
        .ok()
        .filter(|c| c.abi_pointer != 0)
        .map(|c| Rseq {
            addr: c.abi_pointer,
            len: c.abi_size,
            sig: c.signature,
        });
    // smaps rather than maps: the same lines, with each area's VmFlags (read once).
    let maps = proc::parse_smaps(&cx.read("smaps")?).map_err(|e| cx.proc_err("smaps", e))?;
    let stat_mm = proc::parse_stat_mm(&cx.read("stat")?)
        .ok_or_else(|| cx.proc_err("stat", "unexpected format".into()))?;
    let status_text = cx.read("status")?;
    let status = proc::parse_status(&status_text)
        .ok_or_else(|| cx.proc_err("status", "unexpected format".into()))?;
    let mut creds = crate::creds::parse_status(&status_text)
        .ok_or_else(|| cx.proc_err("status", "no ids or capability sets".into()))?;
    let auxv = proc::parse_auxv(
        &std::fs::read(cx.path("auxv")).map_err(|e| cx.proc_err("auxv", e.to_string()))?,
    );
    let personality = u32::from_str_radix(cx.read("personality")?.trim(), 16)
        .map_err(|e| cx.proc_err("personality", e.to_string()))?;
    let comm = cx.read("comm")?.trim_end_matches('\n').to_string();
    let cwd = working_dir(cx)?;
    let exe = std::fs::read_link(cx.path("exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| cx.proc_err("exe", e.to_string()))?;
    let mem = File::open(cx.path("mem")).map_err(|e| cx.proc_err("mem", e.to_string()))?;
    cx.check_time("inspect")?;

    let mut files = FileTable::default();
    let (vmas, vdso) = classify_vmas(pid, &maps, &mut files)?;
    let exe_idx = files.index(&exe, None, true);
    let (fds, async_fds) = classify_fds(cx, opts, &mut files)?;
    cx.check_time("descriptors")?;
    let vdso_hash = vdso_hash(cx, &mem, &maps)?;
    let insn = find_syscall(t, &mem, &maps).ok_or(DumpError::NoSyscall { pid })?;
    let areas: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
    let (q, process) = state::capture::capture(t, insn, &areas)?;
    fds::refuse_owned_async(t, insn, &async_fds)?;
    creds.securebits = t.syscall_ok(
        insn,
        libc::SYS_prctl,
        &[libc::PR_GET_SECUREBITS as u64],
        "prctl(PR_GET_SECUREBITS)",
    )?;
    let (head, len) =
        sys::get_robust_list(pid).map_err(|e| cx.proc_err("robust list", e.to_string()))?;
    let mut tid = [0u8; 4];
    let glibc_tid_offset = (mem
        .read_exact_at(&mut tid, t.regs.fs_base + u64::from(GLIBC_TID_OFFSET))
        .is_ok()
        && i32::from_ne_bytes(tid) == status.ns_tid)
        .then_some(GLIBC_TID_OFFSET);
    let observed = files.observe(pid)?;
    drop(span);
    cx.check_time("inspect")?;

    let read = {
        let _s = info_span!("dump.pages").entered();
        // Taken while the process is stopped and before pagemap is read: a page the server
        // installs from now on is found present; one neither pending now nor present later
        // was never the image's.
        let pending = match server.and_then(PageServer::pending) {
            Some(p) if p.pid != pid => {
                return Err(cx.proc_err(
                    "page server",
                    format!("the page server given is process {}'s", p.pid),
                ));
            }
            p => p,
        };
        read_pages(cx, &mem, &maps, &vmas, parent, pending.as_ref())?
    };
    let ReadPages {
        data: pages,
        runs,
        zero: zero_pages,
        parent_pages,
        faulted_in,
    } = read;
    cx.check_time("pages")?;
    let (xfeatures, xstate_size) = cpu::xstate_info(&xstate);
    let mut id = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .map_err(|e| cx.proc_err("/dev/urandom", e.to_string()))?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let count = pages.len() as u64 / PAGE;
    let meta = Meta {
        id,
        created,
        parent: parent.map(|p| ParentRef {
            id: p.meta.id,
            meta_hash: p.meta_hash(),
            space: p.space_len(),
            path: std::fs::canonicalize(&p.dir)
                .unwrap_or_else(|_| p.dir.clone())
                .to_string_lossy()
                .into_owned(),
        }),
        source: Source {
            pid,
            comm: comm.clone(),
            exe,
            kernel: sys::kernel_release(),
        },
        requires: Requires {
            vdso: VdsoLayout {
                areas: vdso,
                vdso_hash,
            },
            xfeatures,
            xstate_size,
            cpu_features: cpu::features(),
        },
        files: Vec::new(),
        vmas,
        pages: PageIndex {
            runs,
            count,
            chunks: Vec::new(),
        },
        task: Task {
            regs: regs_to_words(&t.regs),
            xstate,
            sigmask: t.sigmask,
            sigactions: q.sigactions,
            sigaltstack: q.altstack,
            tid_address: q.tid_address,
            robust_list: (head, len),
            rseq,
            glibc_tid_offset,
            syscall_insn: insn,
            personality,
            umask: status.umask,
            cwd,
            comm,
            creds,
            tid: status.ns_tid,
        },
        mm: MmFields {
            start_code: stat_mm.start_code,
            end_code: stat_mm.end_code,
            start_data: stat_mm.start_data,
            end_data: stat_mm.end_data,
            start_brk: stat_mm.start_brk,
            brk: q.brk,
            start_stack: stat_mm.start_stack,
            arg_start: stat_mm.arg_start,
            arg_end: stat_mm.arg_end,
            env_start: stat_mm.env_start,
            env_end: stat_mm.env_end,
            auxv,
            exe: exe_idx,
        },
        fds,
        process,
    };
    let stats = DumpStats {
        vmas: meta.vmas.len(),
        pages: count,
        parent_pages,
        faulted_in,
        zero_pages,
        ..DumpStats::default()
    };
    Ok(Captured {
        meta,
        pages,
        stats,
        files: observed,
    })
}

/// BLAKE3 of the process's vDSO code (the same for every process of one kernel).
fn vdso_hash(cx: &Ctx, mem: &File, maps: &[MapEntry]) -> Result<[u8; 32], DumpError> {
    let v = maps
        .iter()
        .find(|m| m.name.as_deref() == Some("[vdso]"))
        .ok_or_else(|| cx.proc_err("maps", "no [vdso] mapping".into()))?;
    let mut buf = vec![0u8; (v.end - v.start) as usize];
    mem.read_exact_at(&mut buf, v.start)
        .map_err(|e| cx.proc_err("mem", e.to_string()))?;
    Ok(*blake3::hash(&buf).as_bytes())
}

pub fn regs_to_words(r: &Regs) -> Vec<u64> {
    vec![
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds,
        r.es, r.fs, r.gs,
    ]
}

/// A `syscall` instruction to run queries with: the one the process is stopped in, or one
/// in the vDSO.
fn find_syscall(t: &Tracee, mem: &File, maps: &[MapEntry]) -> Option<u64> {
    let mut two = [0u8; 2];
    if t.regs.rip >= 2 && mem.read_exact_at(&mut two, t.regs.rip - 2).is_ok() && two == [0x0f, 0x05]
    {
        return Some(t.regs.rip - 2);
    }
    let v = maps.iter().find(|m| m.name.as_deref() == Some("[vdso]"))?;
    let mut buf = vec![0u8; (v.end - v.start) as usize];
    mem.read_exact_at(&mut buf, v.start).ok()?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| v.start + i as u64)
}
