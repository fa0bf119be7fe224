//! Dump: freeze a single-threaded process, read everything a restore needs, write an image,
//! and let the process go on as before.
//!
//! Phases (tracing spans): `dump.freeze` (seize, interrupt, registers), `dump.inspect`
//! (/proc files; process-wide state and the queries only the process can answer, in
//! [`crate::state::capture`]), `dump.pages` (pagemap + page contents), `dump.files`
//! (file identities), `dump.write`.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::info_span;

use crate::cpu;
use crate::image::files::{self, FileError};
use crate::image::{
    self, Fd, FdKind, ImageError, Meta, MmFields, PAGE, PageIndex, PageRun, Requires, Rseq, Source,
    Task, VdsoArea, VdsoLayout, Vma, VmaKind,
};
use crate::proc::{self, MapEntry};
use crate::state::{self, StateError};
use crate::sys::{self, Regs};
use crate::tracee::{TraceError, Tracee};

/// Offset of `pd->tid` from the thread pointer in glibc 2.36 (checked against the real
/// thread id at every dump, recorded only when it matches).
const GLIBC_TID_OFFSET: u32 = 0x2d0;
/// Character devices a dump may reopen by path.
const SAFE_DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {pid} does not exist or cannot be read")]
    NoProcess { pid: i32, source: io::Error },
    #[error(
        "process {pid} has {threads} threads; only single-threaded processes can be dumped (start it with OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1)"
    )]
    MultiThreaded { pid: i32, threads: usize },
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
    #[error("process {pid}: cannot read {file}: {why}")]
    Proc { pid: i32, file: String, why: String },
    #[error("process {pid}: no syscall instruction found to run queries with")]
    NoSyscall { pid: i32 },
    #[error("process {1}: a file it maps cannot be identified")]
    File(#[source] FileError, i32),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What the caller tells a dump.
#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    /// Descriptors the caller owns (a protocol pipe, stdio): recorded as inherited, and a
    /// restore must hand in a descriptor at each of these numbers.
    pub inherited: Vec<i32>,
}

/// Figures of one dump.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub vmas: usize,
    pub pages: u64,
    pub zero_pages: u64,
    pub files: usize,
    /// Time the process was stopped.
    pub frozen_us: u64,
    pub total_us: u64,
}

struct Ctx {
    pid: i32,
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
}

fn thread_count(pid: i32) -> Result<usize, DumpError> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .map_err(|source| DumpError::NoProcess { pid, source })
}

/// Dumps process `pid` into the image directory `out`. The process must be single-threaded
/// and stays as it was: it runs on after the dump (kill it if it must not).
pub fn dump(pid: i32, out: &Path, opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    let t0 = Instant::now();
    let threads = thread_count(pid)?;
    if threads != 1 {
        return Err(DumpError::MultiThreaded { pid, threads });
    }
    // Strict mode is refused before the process is touched; a process with filters is
    // seized with them suspended, so the injected queries pass them.
    let seccomp = state::seccomp_mode(pid)?;
    state::refuse_strict(pid, seccomp)?;
    let tracee = {
        let _s = info_span!("dump.freeze", pid).entered();
        Tracee::attach(pid, false, seccomp == 2)?
    };
    let frozen = Instant::now();
    let captured = capture(&tracee, opts);
    let mut tracee = tracee;
    state::capture::reissue_sleep(&mut tracee.regs);
    let released = tracee.release();
    let frozen_us = frozen.elapsed().as_micros() as u64;
    let (mut meta, pages, mut stats) = captured?;
    released?;
    {
        let _s = info_span!("dump.write").entered();
        image::write_image(out, &mut meta, &pages)?;
    }
    stats.frozen_us = frozen_us;
    stats.total_us = t0.elapsed().as_micros() as u64;
    Ok(stats)
}

/// Everything read while the process is stopped.
fn capture(t: &Tracee, opts: &DumpOptions) -> Result<(Meta, Vec<u8>, DumpStats), DumpError> {
    let pid = t.pid;
    let cx = Ctx { pid };
    let threads = thread_count(pid)?;
    if threads != 1 {
        return Err(DumpError::MultiThreaded { pid, threads });
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
    let maps = proc::parse_maps(&cx.read("maps")?).map_err(|e| cx.proc_err("maps", e))?;
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
    let link = |f: &str| -> Result<String, DumpError> {
        std::fs::read_link(cx.path(f))
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|e| cx.proc_err(f, e.to_string()))
    };
    let cwd = link("cwd")?;
    let exe = link("exe")?;
    let mem = File::open(cx.path("mem")).map_err(|e| cx.proc_err("mem", e.to_string()))?;

    let mut files = FileTable::default();
    let (vmas, vdso) = classify_vmas(pid, &maps, &mut files)?;
    let exe_idx = files.index(&exe, None);
    let fds = classify_fds(&cx, opts, &mut files)?;
    let vdso_hash = vdso_hash(&cx, &mem, &maps)?;
    let insn = find_syscall(t, &mem, &maps).ok_or(DumpError::NoSyscall { pid })?;
    let areas: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
    let (q, process) = state::capture::capture(t, insn, &areas)?;
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
    drop(span);

    let (pages, runs, zero_pages) = {
        let _s = info_span!("dump.pages").entered();
        read_pages(&cx, &mem, &maps, &vmas)?
    };
    let files = {
        let _s = info_span!("dump.files").entered();
        files.identify(pid)?
    };
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
        parent: None,
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
        files,
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
        zero_pages,
        files: meta.files.len(),
        ..DumpStats::default()
    };
    Ok((meta, pages, stats))
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

/// ((major, minor), inode) of a mapped file, as maps shows it.
type DevIno = ((u32, u32), u64);

/// Files the image refers to, by path, each with the (device, inode) the process had.
#[derive(Default)]
struct FileTable {
    paths: Vec<(String, Option<DevIno>)>,
    by_path: HashMap<String, u32>,
}

impl FileTable {
    fn index(&mut self, path: &str, dev_ino: Option<DevIno>) -> u32 {
        if let Some(&i) = self.by_path.get(path) {
            return i;
        }
        let i = self.paths.len() as u32;
        self.paths.push((path.to_string(), dev_ino));
        self.by_path.insert(path.to_string(), i);
        i
    }

    /// Identifies each file as the process sees it (through `/proc/PID/root`), checking the
    /// path still names the file the process mapped.
    fn identify(self, pid: i32) -> Result<Vec<files::FileId>, DumpError> {
        self.paths
            .into_iter()
            .map(|(path, dev_ino)| {
                let real = PathBuf::from(format!("/proc/{pid}/root{path}"));
                if let Some((dev, ino)) = dev_ino {
                    let md = std::fs::metadata(&real).map_err(|e| DumpError::Vma {
                        pid,
                        vma: path.clone(),
                        why: e.to_string(),
                    })?;
                    if sys::dev_parts(md.dev()) != dev || md.ino() != ino {
                        return Err(DumpError::Vma {
                            pid,
                            vma: path.clone(),
                            why: "the path now names another file than the one mapped".into(),
                        });
                    }
                }
                files::identify(&path, &real).map_err(|e| DumpError::File(e, pid))
            })
            .collect()
    }
}

const VDSO_NAMES: [&str; 3] = ["[vvar]", "[vvar_vclock]", "[vdso]"];

/// Turns maps lines into image VMAs, refusing what cannot be restored; returns the vDSO
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
                "{:x}-{:x} {} {}",
                m.start,
                m.end,
                m.perms(),
                m.name.as_deref().unwrap_or("")
            ),
            why: why.to_string(),
        };
        let name = m.name.as_deref();
        // Shared anonymous memory shows as the (deleted) /dev/zero it is made of.
        if m.shared && (name.is_none() || name == Some("/dev/zero")) {
            return Err(refuse("shared anonymous memory is not supported"));
        }
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
            _ if m.deleted => return Err(refuse("the mapped file was deleted")),
            Some("[heap]") => VmaKind::Heap,
            Some("[stack]") => VmaKind::Stack,
            None => VmaKind::Anon,
            Some(n) if n.starts_with("[anon:") => VmaKind::Anon,
            Some(n) if n.starts_with('/') && m.inode != 0 => VmaKind::File {
                file: files.index(n, Some((m.dev, m.inode))),
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
        vmas.push(Vma {
            start: m.start,
            end: m.end,
            prot: m.prot(),
            shared: m.shared,
            kind,
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

fn classify_fds(cx: &Ctx, opts: &DumpOptions, files: &mut FileTable) -> Result<Vec<Fd>, DumpError> {
    let pid = cx.pid;
    let dir = std::fs::read_dir(cx.path("fd")).map_err(|e| cx.proc_err("fd", e.to_string()))?;
    let mut nums: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    let mut out = Vec::new();
    for fd in nums {
        let what = std::fs::read_link(cx.path(&format!("fd/{fd}")))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = cx.read(&format!("fdinfo/{fd}"))?;
        let (pos, flags) = proc::parse_fdinfo(&info)
            .ok_or_else(|| cx.proc_err(&format!("fdinfo/{fd}"), "unexpected format".into()))?;
        let cloexec = flags & libc::O_CLOEXEC as u32 != 0;
        if opts.inherited.contains(&fd) {
            out.push(Fd {
                fd,
                cloexec,
                kind: FdKind::Inherited { what },
            });
            continue;
        }
        let refuse = |why: &str| DumpError::Fd {
            pid,
            fd,
            what: what.clone(),
            why: why.to_string(),
        };
        let md =
            std::fs::metadata(cx.path(&format!("fd/{fd}"))).map_err(|e| refuse(&e.to_string()))?;
        let ft = md.file_type();
        let reopenable = (ft.is_file() && what.starts_with('/') && !what.ends_with(" (deleted)"))
            || (ft.is_char_device() && SAFE_DEVICES.contains(&what.as_str()));
        if !reopenable {
            return Err(refuse(
                "only regular files and /dev/null-like devices are supported; declare the caller's own descriptors as inherited",
            ));
        }
        let keep =
            libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME;
        out.push(Fd {
            fd,
            cloexec,
            kind: FdKind::File {
                file: files.index(&what, None),
                pos,
                flags: flags & keep as u32,
            },
        });
    }
    for &fd in &opts.inherited {
        if !out.iter().any(|f| f.fd == fd) {
            return Err(DumpError::Fd {
                pid,
                fd,
                what: "nothing".into(),
                why: "declared inherited but not open in the process".into(),
            });
        }
    }
    Ok(out)
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

/// Reads the pages to save: present (or swapped) pages of private anonymous memory, and
/// pages of private file mappings that are no longer the file's own (copied on write,
/// RELRO included). All-zero pages are left out. Returns (pages, runs, zero pages skipped).
fn read_pages(
    cx: &Ctx,
    mem: &File,
    maps: &[MapEntry],
    vmas: &[Vma],
) -> Result<(Vec<u8>, Vec<PageRun>, u64), DumpError> {
    let pagemap =
        File::open(cx.path("pagemap")).map_err(|e| cx.proc_err("pagemap", e.to_string()))?;
    let mut out: Vec<u8> = Vec::new();
    let mut runs: Vec<PageRun> = Vec::new();
    let mut zero = 0u64;
    debug_assert!(maps.len() >= vmas.len());
    for v in vmas.iter().filter(|v| !v.shared) {
        let n = (v.len() / PAGE) as usize;
        let mut raw = vec![0u8; n * 8];
        pagemap
            .read_exact_at(&mut raw, v.start / PAGE * 8)
            .map_err(|e| cx.proc_err("pagemap", e.to_string()))?;
        let file_backed = matches!(v.kind, VmaKind::File { .. });
        let keep = |i: usize| -> bool {
            let e = u64::from_ne_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
            if file_backed {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
            } else {
                e & (PM_PRESENT | PM_SWAPPED) != 0
            }
        };
        let mut i = 0;
        while i < n {
            if !keep(i) {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < n && keep(j) {
                j += 1;
            }
            let addr = v.start + i as u64 * PAGE;
            let mut buf = vec![0u8; (j - i) * PAGE as usize];
            mem.read_exact_at(&mut buf, addr)
                .map_err(|e| cx.proc_err("mem", format!("at {addr:#x}: {e}")))?;
            for (k, page) in buf.chunks(PAGE as usize).enumerate() {
                if page.iter().all(|&b| b == 0) {
                    zero += 1;
                    continue;
                }
                let a = addr + k as u64 * PAGE;
                let first = out.len() as u64 / PAGE;
                match runs.last_mut() {
                    Some(r) if r.addr >= v.start && r.addr + u64::from(r.pages) * PAGE == a => {
                        r.pages += 1
                    }
                    _ => runs.push(PageRun {
                        addr: a,
                        pages: 1,
                        first,
                    }),
                }
                out.extend_from_slice(page);
            }
            i = j;
        }
    }
    Ok((out, runs, zero))
}
