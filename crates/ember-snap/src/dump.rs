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
pub use fds::FD_FLAGS;
use fds::classify_fds;
use files_table::{FileTable, Observation, identify};

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
        "process {pid}: the dump's {phase} step ran past the {limit:?} a process may be kept stopped (DumpOptions::freeze_limit); the process was let go unchanged: dump it again when it is less busy, or raise the limit"
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

fn thread_count(pid: i32) -> Result<usize, DumpError> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .map_err(|source| DumpError::NoProcess { pid, source })
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
    let kids = children(cx);
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

const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

/// Turns smaps areas into image VMAs, refusing what cannot be restored; returns the vDSO
/// areas separately.
fn classify_vmas(
    pid: i32,
    maps: &[MapEntry],
    files: &mut FileTable,
) -> Result<(Vec<Vma>, Vec<VdsoArea>), DumpError> {
    let mut vmas = Vec::new();
    let mut vdso = Vec::new();
    for m in maps {
        let refuse = |why: &str| DumpError::Vma {
            pid,
            vma: format!(
                "{:x}-{:x} {} {}{}",
                m.start,
                m.end,
                m.perms(),
                m.name.as_deref().unwrap_or(""),
                if m.deleted { " (deleted)" } else { "" }
            ),
            why: why.to_string(),
        };
        let name = m.name.as_deref();
        // Shared anonymous memory shows as the (deleted) /dev/zero it is made of.
        if m.shared && (name.is_none() || name == Some("/dev/zero")) {
            return Err(refuse("shared anonymous memory is not supported"));
        }
        let mut anon_name = None;
        let kind = match name {
            Some(n) if VDSO_NAMES.contains(&n) => {
                vdso.push((n.to_string(), m.start, m.end));
                continue;
            }
            Some("[vsyscall]") => continue,
            Some(n) if n.starts_with("/SYSV") => {
                return Err(refuse("SysV shared memory is not supported"));
            }
            // Memory a mapped restore shares from an image's memfd is the process's own
            // private memory: its present pages are what it holds (what it discarded is
            // not present and reads as zeros, as the restore's page server made it).
            Some(n) if !m.shared && m.deleted && is_image_memfd(n) => VmaKind::Anon,
            Some(n) if m.deleted => {
                return Err(refuse(&format!(
                    "the file it maps, {n}, was deleted: a restore could not map it again; keep the file until the process is dumped"
                )));
            }
            Some("[heap]") => VmaKind::Heap,
            Some("[stack]") => VmaKind::Stack,
            None => VmaKind::Anon,
            // A private mapping of /dev/zero is anonymous memory.
            Some("/dev/zero") if !m.shared => VmaKind::Anon,
            Some(n) if n.starts_with("[anon:") && n.ends_with(']') => {
                anon_name = Some(n["[anon:".len()..n.len() - 1].to_string());
                VmaKind::Anon
            }
            Some(n) if n.starts_with('/') && m.inode != 0 => VmaKind::File {
                file: files.index(n, Some((m.dev, m.inode)), true),
                offset: m.offset,
            },
            Some(_) => return Err(refuse("a special mapping of an unsupported kind")),
        };
        if m.shared {
            if !matches!(kind, VmaKind::File { .. }) {
                return Err(refuse("shared anonymous memory is not supported"));
            }
            if m.write {
                return Err(refuse("writable shared file mappings are not supported"));
            }
        }
        let mut flags = 0;
        for code in &m.vm_flags {
            match code.as_str() {
                "sl" => return Err(refuse("it is sealed (mseal): a restore could not map it")),
                "ht" => return Err(refuse("hugetlb memory is not supported")),
                "pf" | "io" => return Err(refuse("device memory is not supported")),
                "ss" => return Err(refuse("shadow stacks are not supported")),
                c => {
                    if let Some((_, f)) = vma_flags::CODES.iter().find(|(k, _)| *k == c) {
                        flags |= f;
                    }
                }
            }
        }
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            shared: m.shared,
            kind,
            flags,
            name: anon_name,
        });
    }
    Ok((vmas, vdso))
}

/// `/memfd:ember-image-<32 hex digits>`: the memfd a mapped restore maps an image's pages
/// from ([`crate::LoadedImage::memfd`]).
fn is_image_memfd(name: &str) -> bool {
    name.strip_prefix("/memfd:ember-image-")
        .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
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

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// The pages a dump read.
struct ReadPages {
    /// The stored pages, in page-file order.
    data: Vec<u8>,
    runs: Vec<PageRun>,
    zero: u64,
    parent_pages: u64,
    faulted_in: u64,
}

/// Largest read of process memory at once.
const READ_CHUNK: usize = 4 << 20;

/// Reads the pages to save: present (or swapped) pages of private anonymous memory, and
/// pages of private file mappings that are no longer the file's own (copied on write,
/// RELRO included). All-zero pages are left out.
///
/// A process restored lazily (lazy, bulk, prefetch) has areas registered with a userfaultfd
/// in missing mode (`um` in smaps) whose pages it has not touched yet: not present, but the
/// image's. Those are read with `process_vm_readv`, whose page faults wait for the page
/// server (reads of `/proc/PID/mem` cannot wait: they fail with EIO).
///
/// With `parent`, a page equal to the parent's page at the same address is a reference to
/// it instead of a stored page.
fn read_pages(
    cx: &Ctx,
    mem: &File,
    maps: &[MapEntry],
    vmas: &[Vma],
    parent: Option<&LoadedImage>,
    pending: Option<&PendingPages>,
) -> Result<ReadPages, DumpError> {
    let pagemap =
        File::open(cx.path("pagemap")).map_err(|e| cx.proc_err("pagemap", e.to_string()))?;
    let uffd_areas = proc::parse_smaps_uffd(&cx.read("smaps")?);
    let mut c = Collector {
        parent,
        data: Vec::new(),
        entries: Vec::new(),
        vma_first_entry: 0,
        zero: 0,
        parent_pages: 0,
    };
    let mut faulted_in = 0u64;
    debug_assert!(maps.len() >= vmas.len());
    for v in vmas.iter().filter(|v| !v.shared) {
        cx.check_time("pages")?;
        let n = (v.len() / PAGE) as usize;
        let mut raw = vec![0u8; n * 8];
        pagemap
            .read_exact_at(&mut raw, v.start / PAGE * 8)
            .map_err(|e| cx.proc_err("pagemap", e.to_string()))?;
        let file_backed = matches!(v.kind, VmaKind::File { .. });
        let lazy = |a: u64| !file_backed && uffd_areas.iter().any(|&(s, e)| s <= a && a < e);
        // 0: leave out; 1: read from /proc/PID/mem; 2: not given by a lazy restore yet.
        let how = |i: usize| -> u8 {
            let e = u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            let stored = if file_backed {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
            } else {
                e & (PM_PRESENT | PM_SWAPPED) != 0
            };
            if stored {
                1
            } else if lazy(v.start + i as u64 * PAGE) {
                2
            } else {
                0
            }
        };
        c.vma_first_entry = c.entries.len();
        let mut i = 0;
        while i < n {
            let kind = how(i);
            if kind == 0 {
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < n && j - i < READ_CHUNK / PAGE as usize && how(j) == kind {
                j += 1;
            }
            let addr = v.start + i as u64 * PAGE;
            let len = (j - i) as u64 * PAGE;
            if kind == 2
                && let Some(p) = pending
            {
                // Only what the server still holds; the rest of the range is zeros.
                let mut seen = 0;
                for (at, bytes) in read_pending(cx.pid, p, addr, addr + len)? {
                    seen += bytes.len() as u64 / PAGE;
                    c.take(at, &bytes);
                }
                c.zero += (j - i) as u64 - seen;
            } else {
                let mut buf = vec![0u8; len as usize];
                if kind == 1 {
                    mem.read_exact_at(&mut buf, addr)
                        .map_err(|e| cx.proc_err("mem", format!("at {addr:#x}: {e}")))?;
                } else {
                    read_through_server(cx.pid, v, addr, &mut buf)?;
                    faulted_in += (j - i) as u64;
                }
                c.take(addr, &buf);
            }
            i = j;
        }
    }
    let own = c.data.len() as u64 / PAGE;
    let runs = c
        .entries
        .into_iter()
        .map(|(addr, is_parent, idx, pages)| PageRun {
            addr,
            pages,
            first: if is_parent { own + idx } else { idx },
        })
        .collect();
    Ok(ReadPages {
        data: c.data,
        runs,
        zero: c.zero,
        parent_pages: c.parent_pages,
        faulted_in,
    })
}

/// Where read pages go: all-zero ones left out, a layer's pages equal to the parent's
/// referred to, the rest stored; runs of consecutive addresses and indices, never across a
/// VMA.
struct Collector<'a> {
    parent: Option<&'a LoadedImage>,
    data: Vec<u8>,
    /// (address, refers to the parent, index in own or parent space, pages)
    entries: Vec<(u64, bool, u64, u32)>,
    /// First entry of the current VMA.
    vma_first_entry: usize,
    zero: u64,
    parent_pages: u64,
}

impl Collector<'_> {
    /// Pages read at `addr`.
    fn take(&mut self, addr: u64, bytes: &[u8]) {
        for (k, page) in bytes.chunks(PAGE as usize).enumerate() {
            if page.iter().all(|&b| b == 0) {
                self.zero += 1;
                continue;
            }
            let a = addr + k as u64 * PAGE;
            let from_parent = self.parent.and_then(|p| {
                let i = p.page_at(a)?;
                let theirs = p
                    .page_data()
                    .get((i * PAGE) as usize..((i + 1) * PAGE) as usize)?;
                (theirs == page).then(|| p.space_index(i))
            });
            let (is_parent, idx) = match from_parent {
                Some(x) => {
                    self.parent_pages += 1;
                    (true, x)
                }
                None => {
                    self.data.extend_from_slice(page);
                    (false, self.data.len() as u64 / PAGE - 1)
                }
            };
            let same_vma = self.entries.len() > self.vma_first_entry;
            match self.entries.last_mut() {
                Some(r)
                    if same_vma
                        && r.1 == is_parent
                        && r.0 + u64::from(r.3) * PAGE == a
                        && r.2 + u64::from(r.3) == idx =>
                {
                    r.3 += 1
                }
                _ => self.entries.push((a, is_parent, idx, 1)),
            }
        }
    }
}

/// Pages read at an address.
type Segment<'p> = (u64, std::borrow::Cow<'p, [u8]>);

/// The pending image pages in `[start, end)` (a page server's, for pages the process does
/// not have), from the server's source: (address, pages) in address order.
fn read_pending<'p>(
    pid: i32,
    p: &'p PendingPages,
    start: u64,
    end: u64,
) -> Result<Vec<Segment<'p>>, DumpError> {
    let k = p
        .pieces
        .partition_point(|x| x.addr + x.pages * PAGE <= start);
    let mut out = Vec::new();
    for piece in p.pieces[k..].iter().take_while(|x| x.addr < end) {
        let lo = piece.addr.max(start);
        let hi = (piece.addr + piece.pages * PAGE).min(end);
        let first = piece.first + (lo - piece.addr) / PAGE;
        let pages = (hi - lo) / PAGE;
        let data = p.source.pages(first, pages).map_err(|e| DumpError::Proc {
            pid,
            file: "the page source of its lazy restore".into(),
            why: e.to_string(),
        })?;
        if data.len() as u64 != pages * PAGE {
            return Err(DumpError::Proc {
                pid,
                file: "the page source of its lazy restore".into(),
                why: format!("{} bytes for {pages} pages from {first}", data.len()),
            });
        }
        out.push((lo, data));
    }
    Ok(out)
}

/// Reads pages a lazy restore has not installed yet with `process_vm_readv`: each fault
/// waits for the page server to install the page, as the process's own touch would.
fn read_through_server(pid: i32, v: &Vma, addr: u64, buf: &mut [u8]) -> Result<(), DumpError> {
    sys::read_mem(pid, addr, buf).map_err(|e| DumpError::Vma {
        pid,
        vma: format!("{:x}-{:x}", v.start, v.end),
        why: if v.prot & libc::PROT_READ == 0 {
            "pages its lazy restore has not given it yet are in an area it made inaccessible \
             (PROT_NONE), where they cannot be read; restore it eagerly to dump it"
                .into()
        } else {
            format!(
                "reading the pages its lazy restore has not given it yet, at {addr:#x}: {e} \
                 (is the page server of that restore still running?)"
            )
        },
    })
}
