//! Templates: an image restored once into a parked process, from which each instance is
//! made by *forking* it: the instances share the template's pages copy-on-write until they
//! write them, with anonymous memory's exact semantics (`MADV_DONTNEED` reads zeros,
//! `mremap` grows), and no page is copied to make one.
//!
//! ```text
//! template thread (owns everything below; ptrace ties tracees to one thread)
//!   with TemplateOptions::mount_ns: unshare(CLONE_FS), setns(ns, CLONE_NEWNS) for the spawn
//!   only (exec through the program's descriptor: the view has no /proc), then back
//!   spawn the stopper (host pid namespace, /dev/null at the image's inherited numbers)
//!   prlimit it down to TemplateOptions::limits (soft = hard; never raised)
//!   restore it eagerly with accept_new_tid, ending before the gadget is removed, and
//!   keeping the restorer's credentials (root, every capability: it must clone with
//!   namespaces); the image's limits bounded by the template's own; no image
//!   credentials, filters or after-credential prctl values (each child applies them):
//!   the template P stays stopped and traced, its restorer gadget mapped
//!   in P: pidfd_open(our process) parked at a fixed descriptor K; PTRACE_O_TRACEFORK
//! fork(spec), on that thread:
//!   in P, by single-step of the image's own syscall instruction:
//!     clone(CLONE_PARENT | CLONE_NEWPID | namespaces | SIGCHLD)
//!       CLONE_PARENT: the child's parent is P's, the template thread (P is not a pid
//!       namespace's init: an init's CLONE_PARENT is EINVAL); CLONE_NEWPID: the child is
//!       pid 1 of a fresh namespace
//!     fork event: the child C starts traced and stopped (PTRACE_EVENT_STOP)
//!   C moved into spec.cgroup_procs (stopped, still traced)
//!   in C, one restorer batch (the gadget is C's copy of P's):
//!     pidfd_getfd(K, caller's fd) for each handed-in descriptor, parked high, then dup3
//!     to its number; close the parking and K; setsid (its own session and process
//!     group: the node ends an instance with kill(-pid)); with spec.mounts, / made
//!     MS_REC | MS_PRIVATE, then each mount; sethostname; unshare(CLONE_NEWCGROUP)
//!     (rooted at its new cgroups); what a fork resets: set_robust_list,
//!     PR_SET_CHILD_SUBREAPER (the TID address comes with the clone:
//!     CLONE_CHILD_CLEARTID; CLONE_CHILD_SETTID writes C's id, 1, into glibc's cached
//!     one when that is the TID address, as glibc's fork does; otherwise it is written);
//!     credentials:
//!       handoff: PR_CAPBSET_DROP of every capability, PR_CAP_AMBIENT_CLEAR_ALL,
//!         securebits 0, setgroups/setresgid/setresuid, what a credential change
//!         resets (death signal, no_new_privs, dumpable), the handoff's death signal,
//!         no_new_privs and seccomp filter
//!       none: the image's own credentials (as a restore without handoff), then what a
//!         credential change resets
//!   XSAVE area; munmap(gadget) by the image's own syscall instruction; registers (the
//!   interrupted syscall restarted), signal mask; SIGSTOP; detach: C waits in a group
//!   stop for the caller's SIGCONT, and the caller reaps it
//! ```
//!
//! A child made by a fork that fails later is killed and collected. A template whose
//! process died (killed, or the OOM killer) answers [`TemplateError::Gone`], to that fork
//! and every later call. The descriptors a child's batch parks (up to K + 2n + 1 for n
//! handed in) must be below the template's `RLIMIT_NOFILE` soft limit: checked, with an
//! error that says what to raise.
//!
//! The thread id: an instance is always pid 1 of its own pid namespace. The node's images
//! are all dumped from pid 1 of theirs (a sandbox's first process), so that is exact;
//! images of another thread id are refused unless [`TemplateOptions::accept_new_tid`]
//! (then glibc's cached id is rewritten, but a mutex or robust futex that names the old id
//! stays wrong, as with [`RestoreOptions::accept_new_tid`]).
//!
//! Refused, because a fork child would differ from its image (the kernel resets or drops
//! these in a child): areas advised `MADV_DONTFORK` (absent in the child) or
//! `MADV_WIPEONFORK` (zeros), `mlock`ed areas, POSIX and interval timers, queued signals,
//! `SCHED_FLAG_RESET_ON_FORK`; and, not done yet, descriptors of files (a child would share
//! the template's open file description, its position included, with every other child).
//! The image's seccomp filters are not installed in the template (they would judge its
//! injected `clone`): each child installs them at the end of its batch, after the
//! handoff's (an image dumped in a sandbox carries the sandbox's filter: the handoff's).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::image::{FdKind, LoadedImage, Meta, PAGE, vma_flags};
use crate::restore::{self, Handoff, RestoreError, RestoreOptions, RestoreStats};
use crate::restorer::{ARG0_FROM_SAVED, Batch, SAVE_RESULT, Step};
use crate::sys::{self, Regs, Wait};
use crate::tracee::{self, TraceError, Tracee};

/// `SCHED_FLAG_RESET_ON_FORK`.
const SCHED_RESET_ON_FORK: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("image {image} cannot be a template: {why}; restore it instead")]
    Unsuitable { image: String, why: String },
    #[error("image {image}: restoring its template failed")]
    Restore {
        image: String,
        #[source]
        source: RestoreError,
    },
    #[error("template of {image}: {what}")]
    Io {
        image: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("template of {image}")]
    Trace {
        image: String,
        #[source]
        source: TraceError,
    },
    #[error("template of {image}: {why}")]
    Fork { image: String, why: String },
    #[error("the template of {image} has ended (its process or thread is gone); make a new one")]
    Gone { image: String },
}

/// The namespaces a forked instance gets besides its own pid namespace (always new: it is
/// pid 1 there).
#[derive(Debug, Clone, Copy, Default)]
pub struct Namespaces {
    pub mount: bool,
    pub uts: bool,
    pub ipc: bool,
    pub net: bool,
    /// A new cgroup namespace, made after the child was moved into
    /// [`ForkSpec::cgroup_procs`] (so it is rooted at the instance's own cgroups).
    pub cgroup: bool,
}

impl Namespaces {
    pub fn all() -> Namespaces {
        Namespaces {
            mount: true,
            uts: true,
            ipc: true,
            net: true,
            cgroup: true,
        }
    }

    fn clone_flags(self) -> u64 {
        let mut f = libc::CLONE_NEWPID;
        for (on, flag) in [
            (self.mount, libc::CLONE_NEWNS),
            (self.uts, libc::CLONE_NEWUTS),
            (self.ipc, libc::CLONE_NEWIPC),
            (self.net, libc::CLONE_NEWNET),
        ] {
            if on {
                f |= flag;
            }
        }
        f as u64
    }
}

/// One instance to fork.
#[derive(Debug, Clone, Default)]
pub struct ForkSpec {
    /// (number in the instance, descriptor of ours): every descriptor the image declares
    /// inherited, and any others the instance should hold. The instance gets its own
    /// copies (`pidfd_getfd`), so ours can be closed once `fork` returns.
    pub fds: Vec<(RawFd, RawFd)>,
    pub namespaces: Namespaces,
    /// What a sandboxed instance becomes last: no capability in any set (bounding and
    /// ambient cleared, securebits 0), its user and groups, death signal, `no_new_privs`
    /// and seccomp filter. Its resource limits are the template's
    /// ([`TemplateOptions::limits`]). `None`: the image's own credentials.
    pub handoff: Option<Handoff>,
    /// `cgroup.procs` files (one per hierarchy) the instance is moved into while still
    /// stopped, before its batch: it is born in the template's cgroups. Pages it shares
    /// with the template stay charged to the template's memory cgroup (cgroup v1 moves no
    /// charges by default); its own copies are charged to its new one.
    pub cgroup_procs: Vec<PathBuf>,
    /// Filesystems mounted by the child itself (it is the only process of its new pid
    /// namespace, so a `proc` mounted by it shows that namespace), in order, after it is
    /// in its namespaces and before its credentials change. Each target must exist. Needs
    /// [`Namespaces::mount`]; the child first makes its whole tree private
    /// (`MS_REC | MS_PRIVATE`), so that none of them propagates to the template's view.
    pub mounts: Vec<ForkMount>,
    /// The child's host name (in its own uts namespace: needs [`Namespaces::uts`]).
    pub hostname: Option<String>,
    /// Ranges (start, length) the child writes in ahead (`MADV_POPULATE_WRITE`): their
    /// pages are copied from the template's now, not at the instance's first write to
    /// each (a copy-on-write fault, ~3.4 us here, on its request's path). A range the
    /// kernel refuses (unmapped since, not writable) is left alone; with a large filter, only
    /// as many as fit the restorer's area. See [`WriteProbe`].
    pub populate: Vec<(u64, u64)>,
}

/// Most ranges a fork populates (each is one step of the child's batch).
pub const MAX_POPULATE_RANGES: usize = 128;

/// Most pages of one process's memory [`WriteProbe::read`] looks at (16 GiB): a tenant's
/// huge mapping is not read whole.
const MAX_SCAN_PAGES: u64 = 1 << 22;

/// An instance forked from a template whose write set is to be read: its pid pinned by a
/// pidfd when the probe is made, while the caller knows the pid is its instance's.
pub struct WriteProbe {
    pid: i32,
    pidfd: OwnedFd,
}

impl WriteProbe {
    pub fn open(pid: i32) -> std::io::Result<WriteProbe> {
        Ok(WriteProbe {
            pid,
            pidfd: sys::pidfd_open(pid)?,
        })
    }

    /// The ranges of private writable memory the instance wrote since it was forked, within
    /// areas its template (`template`, its pid) maps too: pages mapped by the instance alone
    /// (pagemap's exclusive bit: copied from the template's, or new there), at most
    /// `max_pages` of them (the template's own size: a write set is never larger than what a
    /// restore copies, whatever the instance did); gaps merged within an area, wider until
    /// at most [`MAX_POPULATE_RANGES`] ranges are left (the pages between are written ahead
    /// too), the longest kept within `max_pages` pages. Read in 64 KiB steps, at most
    /// [`MAX_SCAN_PAGES`] pages looked at. An error when the instance ended meanwhile (its
    /// pid may name another process since). Needs root.
    pub fn read(&self, template: i32, max_pages: u64) -> std::io::Result<Vec<(u64, u64)>> {
        use std::os::unix::fs::FileExt;
        const PRESENT: u64 = 1 << 63;
        const EXCLUSIVE: u64 = 1 << 56;
        const STEP: u64 = 8192;
        let pid = self.pid;
        let writable = |maps: &str| -> Vec<(u64, u64)> {
            maps.lines()
                .filter_map(|line| {
                    let mut f = line.split_whitespace();
                    let (range, perms) = (f.next()?, f.next()?);
                    if !perms.starts_with("rw") || perms.as_bytes().get(3) != Some(&b'p') {
                        return None;
                    }
                    let (lo, hi) = range.split_once('-')?;
                    let (lo, hi) = (
                        u64::from_str_radix(lo, 16).ok()?,
                        u64::from_str_radix(hi, 16).ok()?,
                    );
                    Some((lo / PAGE, hi / PAGE))
                })
                .collect()
        };
        let areas = writable(&std::fs::read_to_string(format!("/proc/{pid}/maps"))?);
        let theirs = writable(&std::fs::read_to_string(format!("/proc/{template}/maps"))?);
        let mine = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let (mut scanned, mut found) = (0u64, 0u64);
        let mut buf = vec![0u8; STEP as usize * 8];
        // The instance's areas where the template maps too, each on its own.
        let spans = areas.iter().flat_map(|&(s, e)| {
            theirs
                .iter()
                .map(move |&(ts, te)| (s.max(ts), e.min(te)))
                .filter(|(s, e)| s < e)
        });
        let mut span_of: Vec<usize> = Vec::new();
        'spans: for (span, (start, end)) in spans.enumerate() {
            let span_first = runs.len();
            let mut page = start;
            while page < end {
                if scanned >= MAX_SCAN_PAGES || found >= max_pages {
                    break 'spans;
                }
                let n = STEP.min(end - page);
                let len = n as usize * 8;
                if mine.read_exact_at(&mut buf[..len], page * 8).is_err() {
                    break;
                }
                for (i, e) in buf[..len].chunks_exact(8).enumerate() {
                    let e = u64::from_ne_bytes(e.try_into().unwrap_or([0; 8]));
                    if e & PRESENT == 0 || e & EXCLUSIVE == 0 || found >= max_pages {
                        continue;
                    }
                    found += 1;
                    let p = page + i as u64;
                    // Within this span only: a populate may not cross areas.
                    let in_span = runs.len() > span_first;
                    match runs.last_mut() {
                        Some((_, e)) if in_span && p - *e <= 4 => *e = p + 1,
                        _ => {
                            runs.push((p, p + 1));
                            span_of.push(span);
                        }
                    }
                }
                page += n;
                scanned += n;
            }
        }
        // Few enough steps: runs of one span merged across wider gaps (the pages between are
        // written ahead too, at most `max_pages` in all), the shortest left out past that.
        let mut gap = 16;
        while runs.len() > MAX_POPULATE_RANGES && gap <= 1 << 20 {
            let mut merged: Vec<(u64, u64)> = Vec::with_capacity(runs.len());
            let mut spans: Vec<usize> = Vec::with_capacity(runs.len());
            for (&(s, e), &sp) in runs.iter().zip(&span_of) {
                match (merged.last_mut(), spans.last()) {
                    (Some((_, end)), Some(&last)) if last == sp && s - *end <= gap => *end = e,
                    _ => {
                        merged.push((s, e));
                        spans.push(sp);
                    }
                }
            }
            (runs, span_of) = (merged, spans);
            gap *= 4;
        }
        runs.sort_unstable_by_key(|&(s, e)| std::cmp::Reverse(e - s));
        runs.truncate(MAX_POPULATE_RANGES);
        let mut total = 0;
        runs.retain(|&(s, e)| {
            total += e - s;
            total <= max_pages
        });
        runs.sort_unstable();
        // Still the same process: nothing read names another.
        if sys::pidfd_signal(&self.pidfd, 0).is_err() {
            return Err(std::io::Error::other(
                "the instance ended while it was read",
            ));
        }
        Ok(runs
            .into_iter()
            .map(|(s, e)| (s * PAGE, (e - s) * PAGE))
            .collect())
    }
}

/// One filesystem a forked child mounts: `mount(fstype, target, fstype, flags, data)`.
#[derive(Debug, Clone, Default)]
pub struct ForkMount {
    pub fstype: String,
    pub target: PathBuf,
    /// `MS_*` flags.
    pub flags: u64,
    /// Filesystem options (`size=1m`).
    pub data: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TemplateOptions {
    /// As [`RestoreOptions::fill_threads`], for the one restore of the template.
    pub fill_threads: usize,
    /// Collapse the template's anonymous memory into transparent huge pages
    /// (`MADV_COLLAPSE`, every 2 MiB-aligned range that holds pages): a fork then copies
    /// one page-table entry per 2 MiB instead of 512 (measured: 56 MiB forked in 0.15 ms
    /// instead of 1.2 ms), and a child's first write in such a range splits it (~18 us)
    /// before its 4 KiB copy. The collapse is slow (~2 ms per MiB here) and done once.
    pub collapse: bool,
    /// A mount namespace to make the template process in (its own thread enters it with
    /// `unshare(CLONE_FS)` + `setns(fd, CLONE_NEWNS)` to spawn the stopper, and goes back
    /// to ours: the stopper and the restored template live in it; a fork with
    /// [`Namespaces::mount`] copies it).
    pub mount_ns: Option<Arc<OwnedFd>>,
    /// Resource limits (resource number, value used as soft and hard) the template process
    /// is lowered to (`prlimit` on the stopper) before its restore; the image's own limits
    /// are bounded by them (as a sandbox's parked process bounds a restore's), and every
    /// fork inherits them. Only lowering (`CAP_SYS_RESOURCE` is missing on these machines):
    /// a value above the current hard limit is that hard limit.
    pub limits: Vec<(u32, u64)>,
    /// Fork an image whose thread id is not 1 (refused otherwise). An instance is always
    /// pid 1 of its own pid namespace, so only images of pid 1 (the node's: a sandbox's
    /// first process) are exact; with another id, glibc's cached thread id is rewritten
    /// (`gettid()`, threads and fork work) but what holds the old id stays wrong, as
    /// [`RestoreOptions::accept_new_tid`] says.
    pub accept_new_tid: bool,
}

/// A forked instance: stopped (a group stop: `SIGCONT` runs it), a child of this process
/// (of the template's thread: `waitpid` from any thread collects it).
#[derive(Debug, Clone, Copy)]
pub struct Forked {
    /// As we see it.
    pub pid: i32,
    /// From the request to the instance ready to continue, in microseconds.
    pub fork_us: u64,
    /// Of which the injected `clone` (the template's page tables copied, the namespaces
    /// made) until the child's first stop.
    pub clone_us: u64,
    /// Of which the moves into [`ForkSpec::cgroup_procs`] (on cgroup v1 each waits for an
    /// RCU grace period).
    pub cgroup_us: u64,
}

type Reply = mpsc::Sender<Result<Forked, TemplateError>>;

/// What the template's thread does for a caller.
enum Job {
    Fork(ForkSpec, Reply),
    /// Moves the template process into these `cgroup.procs` files.
    Move(Vec<PathBuf>, mpsc::Sender<Result<(), TemplateError>>),
}

/// An image restored once, parked, and forked for each instance. Dropping it kills the
/// template (not the instances); the instances' parent thread (the template's) then ends,
/// so an instance that asked for a death signal (`PR_SET_PDEATHSIG`, a handoff's
/// `die_with_parent`) gets it: keep the template as long as its instances.
pub struct Template {
    image: String,
    pid: i32,
    stats: RestoreStats,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Template {
    /// Restores `image` into a parked template on a thread of its own. Blocking.
    pub fn new(image: Arc<LoadedImage>, opts: &TemplateOptions) -> Result<Template, TemplateError> {
        let name = image.dir.display().to_string();
        if let Some(why) = unsuitable(&image.meta) {
            return Err(TemplateError::Unsuitable { image: name, why });
        }
        let tid = image.meta.task.tid;
        if tid != 1 && !opts.accept_new_tid {
            return Err(TemplateError::Unsuitable {
                image: name,
                why: format!(
                    "its thread id is {tid} and a forked instance's is always 1 (what holds the old id, a locked mutex or a robust futex, would stay wrong); dump it as pid 1 of its pid namespace, or set TemplateOptions::accept_new_tid"
                ),
            });
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let opts = opts.clone();
        let thread = std::thread::Builder::new()
            .name("ember-template".into())
            .spawn(move || {
                let parked = match Parked::make(image, &opts) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((parked.t.pid, parked.stats)));
                for job in job_rx {
                    let (spec, reply) = match job {
                        Job::Fork(spec, reply) => (spec, reply),
                        Job::Move(procs, reply) => {
                            let _ = reply.send(parked.move_into(&procs));
                            continue;
                        }
                    };
                    let r = parked.fork(&spec);
                    if let Err(TemplateError::Gone { .. }) = r {
                        // Collected before the answer; later calls find the jobs' channel
                        // closed: Gone too.
                        parked.end();
                        let _ = reply.send(r);
                        return;
                    }
                    let _ = reply.send(r);
                }
                parked.end();
            })
            .map_err(|source| TemplateError::Io {
                image: name.clone(),
                what: "starting its thread".into(),
                source,
            })?;
        match ready_rx.recv() {
            Ok(Ok((pid, stats))) => Ok(Template {
                image: name,
                pid,
                stats,
                jobs: Some(jobs),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(TemplateError::Gone { image: name })
            }
        }
    }

    /// The template process, as we see it.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The template's restore.
    pub fn stats(&self) -> RestoreStats {
        self.stats
    }

    /// Forks one instance (see the module doc). Blocking; forks from one template run one
    /// at a time.
    pub fn fork(&self, spec: ForkSpec) -> Result<Forked, TemplateError> {
        self.ask(|tx| Job::Fork(spec, tx))
    }

    /// Hands the template's thread a job and waits for its answer; `Gone` when the thread
    /// has ended.
    fn ask<T>(
        &self,
        job: impl FnOnce(mpsc::Sender<Result<T, TemplateError>>) -> Job,
    ) -> Result<T, TemplateError> {
        let gone = || TemplateError::Gone {
            image: self.image.clone(),
        };
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send(job(tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    /// Moves the template process into `cgroup_procs` (one `cgroup.procs` file per
    /// hierarchy), between forks: a fork then given no [`ForkSpec::cgroup_procs`] is born
    /// there and pays no migration (on cgroup v1 each move waits for an RCU grace period,
    /// 3-6 ms a hierarchy on these machines, tens of milliseconds under load). The pages
    /// the template holds stay charged where they were first charged (cgroup v1 moves no
    /// charges by default). Blocking.
    pub fn move_into(&self, cgroup_procs: Vec<PathBuf>) -> Result<(), TemplateError> {
        self.ask(|tx| Job::Move(cgroup_procs, tx))
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why `meta` cannot be forked exactly, if it cannot.
pub fn unsuitable(meta: &Meta) -> Option<String> {
    for v in &meta.vmas {
        let why = if v.flags & vma_flags::DONTFORK != 0 {
            "is advised MADV_DONTFORK (a fork child would not have it)"
        } else if v.flags & vma_flags::WIPEONFORK != 0 {
            "is advised MADV_WIPEONFORK (a fork child would read zeros there)"
        } else if v.flags & vma_flags::LOCKED != 0 {
            "is mlocked (a fork child's memory is not locked)"
        } else {
            continue;
        };
        return Some(format!("its area at {:#x} {why}", v.start));
    }
    let st = &meta.process;
    if !st.timers.is_empty() {
        return Some("it has POSIX timers (a fork child has none)".into());
    }
    if st.itimers.iter().any(|t| t.value_us != 0) {
        return Some("it has an interval timer running (a fork child has none)".into());
    }
    if !st.pending_thread.is_empty() || !st.pending_process.is_empty() {
        return Some("it has queued signals (a fork child has none)".into());
    }
    if st.sched.flags & SCHED_RESET_ON_FORK != 0 {
        return Some("its scheduling policy is reset on fork".into());
    }
    if let Some(f) = meta
        .fds
        .iter()
        .find(|f| !matches!(f.kind, FdKind::Inherited { .. }))
    {
        return Some(format!(
            "its descriptor {} is a file it opened (fork children would share one open file description and its position; not supported by templates yet)",
            f.fd
        ));
    }
    None
}

/// The template process, on its thread.
struct Parked {
    img: Arc<LoadedImage>,
    image: String,
    t: Tracee,
    gadget: u64,
    gadget_len: u64,
    stats: RestoreStats,
    /// The image's registers, its interrupted syscall restarted: what each child resumes
    /// with.
    regs: Regs,
    /// Where the template holds a pidfd of our process (children take their descriptors
    /// through it).
    pidfd_at: i32,
    /// The template's `RLIMIT_NOFILE` soft limit (its children's): descriptor numbers a
    /// child's batch uses must be below it.
    nofile: u64,
    /// The highest capability number this kernel knows.
    last_cap: u32,
    /// The template process was collected (it died during a fork): nothing to kill.
    reaped: std::cell::Cell<bool>,
    /// The last fork's cgroup moves, in microseconds.
    cgroup_us: std::cell::Cell<u64>,
}

impl Parked {
    fn make(img: Arc<LoadedImage>, opts: &TemplateOptions) -> Result<Parked, TemplateError> {
        let image = img.dir.display().to_string();
        let io_err = |what: &str| {
            let image = image.clone();
            let what = what.to_string();
            move |source| TemplateError::Io {
                image,
                what,
                source,
            }
        };
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(io_err("opening /dev/null"))?;
        let fds: Vec<(RawFd, RawFd)> = img
            .meta
            .inherited_fds()
            .into_iter()
            .map(|n| (n, null.as_raw_fd()))
            .collect();
        // Only the process is made in the view: this thread reads /proc of our namespace.
        let pid = match &opts.mount_ns {
            Some(ns) => crate::stopper::spawn_in(ns, &fds),
            None => crate::stopper::spawn(&fds),
        }
        .map_err(io_err("spawning the template process"))?;
        drop(null);
        match sys::wait(pid, libc::WUNTRACED) {
            Ok(Wait::Stopped { .. }) => {}
            other => {
                sys::kill(pid, libc::SIGKILL);
                let _ = sys::wait(pid, 0);
                return Err(TemplateError::Fork {
                    image,
                    why: format!("the template process did not stop ({other:?})"),
                });
            }
        }
        for &(res, value) in &opts.limits {
            if let Err(source) = sys::lower_limit(pid, res, value) {
                sys::kill(pid, libc::SIGKILL);
                let _ = sys::wait(pid, 0);
                return Err(TemplateError::Io {
                    image,
                    what: format!(
                        "lowering resource limit {res} of the template process to {value}"
                    ),
                    source,
                });
            }
        }
        let ropts = RestoreOptions {
            resume: false,
            fill_threads: opts.fill_threads,
            accept_new_tid: true,
            ..RestoreOptions::default()
        };
        let p = restore::restore_parked(&img, pid, &ropts).map_err(|source| {
            TemplateError::Restore {
                image: image.clone(),
                source,
            }
        })?;
        let mut regs = restore::words_to_regs(&img.meta.task.regs);
        restore::restart_interrupted(&mut regs);
        let nofile = get_limit(pid, libc::RLIMIT_NOFILE).unwrap_or(u64::MAX);
        let mut parked = Parked {
            pidfd_at: img.meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 16,
            img,
            image,
            t: p.tracee,
            gadget: p.gadget,
            gadget_len: p.gadget_len,
            stats: p.stats,
            regs,
            nofile,
            last_cap: crate::creds::last_cap(),
            reaped: std::cell::Cell::new(false),
            cgroup_us: std::cell::Cell::new(0),
        };
        // The base for what runs in the template: the image's registers (its segments).
        parked.t.regs = restore::words_to_regs(&parked.img.meta.task.regs);
        if parked.pidfd_at as u64 >= nofile {
            let e = parked.fork_err(format!(
                "its descriptor limit (RLIMIT_NOFILE soft limit {nofile}) is below the number it parks a descriptor at ({}): raise the image's limit, or TemplateOptions::limits' RLIMIT_NOFILE, above that",
                parked.pidfd_at
            ));
            parked.end();
            return Err(e);
        }
        match parked.prepare(opts.collapse) {
            Ok(()) => Ok(parked),
            Err(e) => {
                parked.end();
                Err(e)
            }
        }
    }

    fn trace_err(&self) -> impl FnOnce(TraceError) -> TemplateError {
        let image = self.image.clone();
        move |source| TemplateError::Trace { image, source }
    }

    fn fork_err(&self, why: impl Into<String>) -> TemplateError {
        TemplateError::Fork {
            image: self.image.clone(),
            why: why.into(),
        }
    }

    /// A pidfd of our process at `pidfd_at`; fork events traced.
    fn prepare(&self, collapse: bool) -> Result<(), TemplateError> {
        let pid = self.t.pid;
        let mut b = Batch::new(self.gadget + PAGE);
        let us = u64::from(std::process::id());
        b.call("pidfd_open", libc::SYS_pidfd_open, &[us, 0], SAVE_RESULT);
        let at = self.pidfd_at as u64;
        let args = [0, at, libc::O_CLOEXEC as u64];
        b.call("dup3(pidfd)", libc::SYS_dup3, &args, ARG0_FROM_SAVED);
        b.call("close(pidfd)", libc::SYS_close, &[0], ARG0_FROM_SAVED);
        self.t
            .run_batch(self.gadget, &b)
            .map_err(self.trace_err())?;
        if collapse {
            self.collapse()?;
        }
        let mut opts = libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEFORK;
        if !self.img.meta.process.seccomp.is_empty() {
            opts |= libc::PTRACE_O_SUSPEND_SECCOMP;
        }
        sys::set_options(pid, opts).map_err(|source| TemplateError::Io {
            image: self.image.clone(),
            what: "PTRACE_SETOPTIONS".into(),
            source,
        })
    }

    /// `MADV_COLLAPSE` on each anonymous area of the image (a range the kernel cannot
    /// collapse stays as it is).
    fn collapse(&self) -> Result<(), TemplateError> {
        const MADV_COLLAPSE: u64 = 25;
        const HUGE: u64 = 2 << 20;
        let mut b = Batch::new(self.gadget + PAGE);
        for v in &self.img.meta.vmas {
            if matches!(v.kind, crate::image::VmaKind::File { .. }) {
                continue;
            }
            let (s, e) = (v.start.next_multiple_of(HUGE), v.end / HUGE * HUGE);
            if s < e {
                let args = [s, e - s, MADV_COLLAPSE];
                let step = Step::Addr("madvise(MADV_COLLAPSE)", s);
                b.call(step, libc::SYS_madvise, &args, crate::restorer::ALLOW_ERROR);
            }
        }
        self.t
            .run_batch(self.gadget, &b)
            .map(drop)
            .map_err(self.trace_err())
    }

    /// Moves the template process into `procs` (see [`Template::move_into`]).
    fn move_into(&self, procs: &[PathBuf]) -> Result<(), TemplateError> {
        let pid = self.t.pid.to_string();
        for p in procs {
            std::fs::write(p, &pid).map_err(|source| TemplateError::Io {
                image: self.image.clone(),
                what: format!("moving the template into {}", p.display()),
                source,
            })?;
        }
        Ok(())
    }

    /// Kills and collects the template.
    fn end(self) {
        let pid = self.t.pid;
        if self.reaped.get() {
            return;
        }
        sys::kill(pid, libc::SIGKILL);
        while let Ok(Wait::Stopped { .. }) = sys::wait(pid, 0) {}
    }

    fn fork(&self, spec: &ForkSpec) -> Result<Forked, TemplateError> {
        if !self.alive() {
            return Err(self.gone());
        }
        self.fork_alive(spec).map_err(|e| match self.alive() {
            true => e,
            false => self.gone(),
        })
    }

    /// Whether the template process lives (a killed one is a zombie until we collect it:
    /// it is our thread's child).
    fn alive(&self) -> bool {
        if self.reaped.get() {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.t.pid)) else {
            return false;
        };
        // Between forks and after a failed one it is in a ptrace stop; a killed one has
        // left it at once (SIGKILL wakes it to die).
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        matches!(state, Some('t' | 'T'))
    }

    fn gone(&self) -> TemplateError {
        TemplateError::Gone {
            image: self.image.clone(),
        }
    }

    fn fork_alive(&self, spec: &ForkSpec) -> Result<Forked, TemplateError> {
        let t0 = Instant::now();
        let meta = &self.img.meta;
        let missing: Vec<i32> = meta
            .inherited_fds()
            .into_iter()
            .filter(|n| !spec.fds.iter().any(|(want, _)| want == n))
            .collect();
        if !missing.is_empty() {
            return Err(self.fork_err(format!(
                "the image needs descriptors {missing:?} from its caller; hand them in at those numbers"
            )));
        }
        if let Some((n, _)) = spec.fds.iter().find(|(n, _)| *n < 0 || *n >= self.pidfd_at) {
            return Err(self.fork_err(format!(
                "descriptor number {n} is out of range (0 to {})",
                self.pidfd_at - 1
            )));
        }
        // The child's batch parks the descriptors at pidfd_at + n + 2 and up.
        let n = spec.fds.len() as u64;
        let top = self.pidfd_at as u64 + 2 * n + 1;
        if top >= self.nofile {
            return Err(self.fork_err(format!(
                "handing in {n} descriptors parks them up to number {top}, at or above the template's descriptor limit (RLIMIT_NOFILE soft limit {}): raise TemplateOptions::limits' RLIMIT_NOFILE (or the image's own limit) above {top}, or hand in fewer",
                self.nofile
            )));
        }
        if !spec.mounts.is_empty() && !spec.namespaces.mount {
            return Err(self
                .fork_err("a fork with mounts needs its own mount namespace (Namespaces::mount)"));
        }
        if spec.hostname.is_some() && !spec.namespaces.uts {
            return Err(self.fork_err(
                "a fork with a host name needs its own uts namespace (Namespaces::uts)",
            ));
        }
        let t1 = Instant::now();
        let child = self.clone_child(spec.namespaces)?;
        let clone_us = t1.elapsed().as_micros() as u64;
        match self.finish_child(child, spec) {
            Ok(()) => Ok(Forked {
                pid: child,
                fork_us: t0.elapsed().as_micros() as u64,
                clone_us,
                cgroup_us: self.cgroup_us.get(),
            }),
            Err(e) => {
                collect(child);
                Err(e)
            }
        }
    }

    /// Turns an I/O failure of step `what` into this template's error.
    fn io_err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> TemplateError {
        let image = self.image.clone();
        move |source| TemplateError::Io {
            image,
            what: what.into(),
            source,
        }
    }

    /// Injects `clone` into the template; returns the child, stopped and traced. A child
    /// made before a failure is killed and collected.
    fn clone_child(&self, ns: Namespaces) -> Result<i32, TemplateError> {
        let mut child = None;
        self.inject_clone(ns, &mut child).inspect_err(|_| {
            if let Some(c) = child {
                collect(c);
            }
        })
    }

    /// [`Self::clone_child`]; `made`: the child, once the fork event named it.
    fn inject_clone(&self, ns: Namespaces, made: &mut Option<i32>) -> Result<i32, TemplateError> {
        let pid = self.t.pid;
        let io = |what: &'static str| self.io_err(what);
        let task = &self.img.meta.task;
        // The kernel sets the child's TID address (CLONE_CHILD_CLEARTID, as
        // set_tid_address) and, when that is glibc's cached thread id, writes the child's
        // id there (CLONE_CHILD_SETTID: as the child sees it, 1), as glibc's fork does.
        let mut flags = libc::CLONE_PARENT as u64 | ns.clone_flags() | libc::SIGCHLD as u64;
        flags |= libc::CLONE_CHILD_CLEARTID as u64;
        if self.settid() {
            flags |= libc::CLONE_CHILD_SETTID as u64;
        }
        let mut r = self.t.regs;
        r.rip = task.syscall_insn;
        r.rax = libc::SYS_clone as u64;
        r.orig_rax = u64::MAX;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8) = (flags, 0, 0, task.tid_address, 0);
        sys::set_regs(pid, &r).map_err(io("PTRACE_SETREGS"))?;
        loop {
            sys::singlestep(pid).map_err(io("PTRACE_SINGLESTEP"))?;
            match sys::wait(pid, 0).map_err(io("waitpid"))? {
                Wait::Stopped { event, .. } if event == libc::PTRACE_EVENT_FORK => {
                    *made = Some(sys::event_msg(pid).map_err(io("PTRACE_GETEVENTMSG"))? as i32);
                }
                Wait::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => {}
                Wait::Stopped { sig, event: 0 } if sig == libc::SIGTRAP => break,
                other => {
                    if matches!(other, Wait::Exited(_) | Wait::Signaled(_)) {
                        self.reaped.set(true);
                    }
                    return Err(self.fork_err(format!("the template stopped: {other:?}")));
                }
            }
        }
        let rax = sys::get_regs(pid).map_err(io("PTRACE_GETREGS"))?.rax as i64;
        let child = match *made {
            Some(c) if rax == i64::from(c) => c,
            _ if (-4095..0).contains(&rax) => {
                return Err(self.fork_err(format!(
                    "its clone failed: {} (it needs CAP_SYS_ADMIN for the namespaces)",
                    std::io::Error::from_raw_os_error(-rax as i32)
                )));
            }
            other => {
                return Err(
                    self.fork_err(format!("its clone returned {rax} (fork event {other:?})"))
                );
            }
        };
        match sys::wait(child, 0) {
            Ok(Wait::Stopped { .. }) => Ok(child),
            other => {
                if matches!(other, Ok(Wait::Exited(_) | Wait::Signaled(_))) {
                    // Already collected by this wait: nothing left to kill.
                    *made = None;
                }
                Err(self.fork_err(format!("the child {child} did not stop: {other:?}")))
            }
        }
    }

    /// Makes the stopped child the image's instance (see the module doc).
    fn finish_child(&self, child: i32, spec: &ForkSpec) -> Result<(), TemplateError> {
        let meta = &self.img.meta;
        let ct = Tracee {
            pid: child,
            regs: self.t.regs,
            sigmask: meta.task.sigmask,
        };
        let io = |what: &'static str| self.io_err(what);
        // Moved while stopped, before its batch: a new cgroup namespace it makes there is
        // rooted at its own cgroups.
        let t = Instant::now();
        for procs in &spec.cgroup_procs {
            std::fs::write(procs, child.to_string()).map_err(|source| TemplateError::Io {
                image: self.image.clone(),
                what: format!("moving the child into {}", procs.display()),
                source,
            })?;
        }
        self.cgroup_us.set(t.elapsed().as_micros() as u64);
        // The populate steps give way to a large filter: as many as fit.
        let room = self.gadget_len - PAGE;
        let mut populate = spec.populate.len().min(MAX_POPULATE_RANGES);
        let mut b = self.child_batch(spec, populate);
        while (b.size() as u64) > room && populate > 0 {
            populate /= 2;
            b = self.child_batch(spec, populate);
        }
        if (b.size() as u64) > room {
            return Err(self.fork_err(format!(
                "the child's steps ({} bytes, a large seccomp filter?) do not fit the restorer's area ({} bytes)",
                b.size(),
                self.gadget_len - PAGE
            )));
        }
        ct.run_batch(self.gadget, &b).map_err(self.trace_err())?;
        if let Some(off) = meta.task.glibc_tid_offset
            && !self.settid()
        {
            // The child is pid 1 of its new pid namespace.
            let at = self.regs.fs_base + u64::from(off);
            tracee::write(child, at, &1i32.to_ne_bytes())
                .map_err(io("writing glibc's thread id"))?;
        }
        sys::set_xstate(child, &meta.task.xstate).map_err(io("setting the XSAVE area"))?;
        let args = [self.gadget, self.gadget_len];
        let rc = ct
            .syscall(meta.task.syscall_insn, libc::SYS_munmap, &args)
            .map_err(self.trace_err())?;
        if rc != 0 {
            return Err(self.fork_err(format!("removing the restorer from the child: {rc}")));
        }
        sys::set_regs(child, &self.regs).map_err(io("PTRACE_SETREGS"))?;
        sys::set_sigmask(child, meta.task.sigmask).map_err(io("PTRACE_SETSIGMASK"))?;
        // Stopped once detached: a group stop the caller ends with SIGCONT (from an
        // ancestor namespace, SIGSTOP reaches a namespace's init).
        sys::kill(child, libc::SIGSTOP);
        sys::detach(child).map_err(io("PTRACE_DETACH"))
    }

    /// Whether the image's TID address is glibc's cached thread id (the main thread's,
    /// as glibc sets it), which `CLONE_CHILD_SETTID` then writes.
    fn settid(&self) -> bool {
        let task = &self.img.meta.task;
        task.glibc_tid_offset
            .is_some_and(|off| task.tid_address == self.regs.fs_base + u64::from(off))
    }

    /// The child's descriptors, session, mounts, host name, cgroup namespace, what a fork
    /// resets and its credentials, as one restorer batch.
    fn child_batch<'s>(&self, spec: &'s ForkSpec, populate: usize) -> Batch<'s> {
        let meta = &self.img.meta;
        let mut b = Batch::new(self.gadget + PAGE);
        let k = self.pidfd_at as u64;
        // Parked above anything pidfd_getfd can return (the lowest free number).
        let n = spec.fds.len() as u64;
        let high = k + n + 2;
        for (i, &(_, ours)) in spec.fds.iter().enumerate() {
            let args = [k, ours as u64, 0];
            let step = Step::Fd("pidfd_getfd", ours);
            b.call(step, libc::SYS_pidfd_getfd, &args, SAVE_RESULT);
            let park = [0, high + i as u64, libc::O_CLOEXEC as u64];
            b.call("dup3(park)", libc::SYS_dup3, &park, ARG0_FROM_SAVED);
            b.call("close", libc::SYS_close, &[0], ARG0_FROM_SAVED);
        }
        for (i, &(want, _)) in spec.fds.iter().enumerate() {
            let cloexec = meta.fds.iter().any(|f| f.fd == want && f.cloexec);
            let fl = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            let args = [high + i as u64, want as u64, fl];
            b.call(Step::Fd("dup3", want), libc::SYS_dup3, &args, 0);
        }
        if n > 0 {
            let args = [high, high + n - 1, 0];
            b.call("close_range(parked)", libc::SYS_close_range, &args, 0);
        }
        b.call("close(pidfd)", libc::SYS_close, &[k], 0);
        // Its own session and process group: the node ends an instance with kill(-pid).
        b.call("setsid", libc::SYS_setsid, &[], 0);
        // MADV_POPULATE_WRITE (Linux 5.14).
        const POPULATE_WRITE: u64 = 23;
        for &(start, len) in spec.populate.iter().take(populate) {
            let step = Step::Addr("madvise(MADV_POPULATE_WRITE)", start);
            let args = [start, len, POPULATE_WRITE];
            b.call(step, libc::SYS_madvise, &args, crate::restorer::ALLOW_ERROR);
        }
        if !spec.mounts.is_empty() {
            // Nothing it mounts propagates to the template's view or its siblings.
            let root = b.cstr("/");
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            b.call(
                "mount(/, MS_REC | MS_PRIVATE)",
                libc::SYS_mount,
                &[0, root, 0, flags, 0],
                0,
            );
        }
        for m in &spec.mounts {
            let fstype = b.cstr(&m.fstype);
            let target = b.cstr(&m.target.to_string_lossy());
            let data = m.data.as_deref().map_or(0, |d| b.cstr(d));
            let args = [fstype, target, fstype, m.flags, data];
            let step = Step::Path("mount", m.fstype.as_str());
            b.call(step, libc::SYS_mount, &args, 0);
        }
        if let Some(h) = &spec.hostname {
            let at = b.cstr(h);
            let args = [at, h.len() as u64];
            b.call("sethostname", libc::SYS_sethostname, &args, 0);
        }
        if spec.namespaces.cgroup {
            let args = [libc::CLONE_NEWCGROUP as u64];
            b.call("unshare(CLONE_NEWCGROUP)", libc::SYS_unshare, &args, 0);
        }
        let (head, len) = meta.task.robust_list;
        if head != 0 {
            let args = [head, len];
            b.call("set_robust_list", libc::SYS_set_robust_list, &args, 0);
        }
        let pr = &meta.process.prctl;
        if pr.child_subreaper {
            let args = [libc::PR_SET_CHILD_SUBREAPER as u64, 1];
            b.call("prctl(PR_SET_CHILD_SUBREAPER)", libc::SYS_prctl, &args, 0);
        }
        match &spec.handoff {
            // As a restore's handoff, from the template's root: no capability left, the
            // instance's user, then what a credential change resets, then its
            // confinement.
            Some(h) => {
                restore::handoff_credentials(&mut b, h, self.last_cap);
                crate::state::apply::after_credentials(&mut b, &meta.process, h.die_with_parent);
                restore::handoff_confine(&mut b, h);
                // The image's own filters last (those equal to the handoff's, which an
                // image dumped in a sandbox carries, are the handoff's).
                crate::state::apply::filters(&mut b, &meta.process, &h.seccomp);
            }
            // The image's own filters while still privileged, then its user (the template
            // stayed root to clone with namespaces).
            None => {
                crate::state::apply::filters(&mut b, &meta.process, &[]);
                crate::creds::restore_calls(&mut b, &meta.task.creds, self.last_cap);
                crate::state::apply::after_credentials(&mut b, &meta.process, false);
            }
        }
        b
    }
}

/// Kills a child the template made and collects it (as its tracer and parent: stop
/// reports still queued come first).
fn collect(child: i32) {
    sys::kill(child, libc::SIGKILL);
    while let Ok(Wait::Stopped { .. }) = sys::wait(child, 0) {}
}

/// The soft limit of resource `res` of `pid`.
fn get_limit(pid: i32, res: u32) -> std::io::Result<u64> {
    sys::limit_of(pid, res).map(|(soft, _)| soft)
}
