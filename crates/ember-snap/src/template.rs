//! Templates: an image restored once into a parked process, from which each instance is
//! made by *forking* it: the instances share the template's pages copy-on-write until they
//! write them, with anonymous memory's exact semantics (`MADV_DONTNEED` reads zeros,
//! `mremap` grows), and no page is copied to make one.
//!
//! ```text
//! template thread (owns everything below; ptrace ties tracees to one thread)
//!   spawn the stopper (host pid namespace, /dev/null at the image's inherited numbers)
//!   restore it eagerly with accept_new_tid, ending before the gadget is removed:
//!   the template P stays stopped and traced, its restorer gadget mapped
//!   in P: pidfd_open(our process) parked at a fixed descriptor K; PTRACE_O_TRACEFORK
//! fork(spec), on that thread:
//!   in P, by single-step of the image's own syscall instruction:
//!     clone(CLONE_PARENT | CLONE_NEWPID | namespaces | SIGCHLD)
//!       CLONE_PARENT: the child's parent is P's, the template thread (P is not a pid
//!       namespace's init: an init's CLONE_PARENT is EINVAL); CLONE_NEWPID: the child is
//!       pid 1 of a fresh namespace
//!     fork event: the child C starts traced and stopped (PTRACE_EVENT_STOP)
//!   in C, one restorer batch (the gadget is C's copy of P's):
//!     pidfd_getfd(K, caller's fd) for each handed-in descriptor, parked high, then dup3
//!     to its number; close the parking and K; what a fork resets: set_robust_list,
//!     PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER (the TID address comes with the clone:
//!     CLONE_CHILD_CLEARTID; CLONE_CHILD_SETTID writes C's id, 1, into glibc's cached
//!     one when that is the TID address, as glibc's fork does; otherwise it is written)
//!   XSAVE area; munmap(gadget) by the image's own syscall instruction; registers (the
//!   interrupted syscall restarted), signal mask; SIGSTOP; detach: C waits in a group
//!   stop for the caller's SIGCONT, and the caller reaps it
//! ```
//!
//! Refused, because a fork child would differ from its image (the kernel resets or drops
//! these in a child): areas advised `MADV_DONTFORK` (absent in the child) or
//! `MADV_WIPEONFORK` (zeros), `mlock`ed areas, POSIX and interval timers, queued signals,
//! `SCHED_FLAG_RESET_ON_FORK`; and, not done yet, seccomp filters (they would judge the
//! template's own injected `clone`) and descriptors of files (a child would share the
//! template's open file description, its position included, with every other child).

use std::os::fd::{AsRawFd, RawFd};
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
    #[error("the template of {image} has ended (its thread is gone); make a new one")]
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
}

impl Namespaces {
    pub fn all() -> Namespaces {
        Namespaces {
            mount: true,
            uts: true,
            ipc: true,
            net: true,
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
    /// What a sandboxed instance becomes last: its user and groups, death signal,
    /// `no_new_privs` and seccomp filter. Not yet a restore's whole handoff: the sandbox's
    /// resource-limit bounds and the clearing of capabilities beyond what `setresuid` drops
    /// are missing (docs/snap.md, Templates).
    pub handoff: Option<Handoff>,
    /// `cgroup.procs` files (one per hierarchy) the instance is moved into while still
    /// stopped: it is born in the template's cgroups. Pages it shares with the template
    /// stay charged to the template's memory cgroup (cgroup v1 moves no charges by
    /// default); its own copies are charged to its new one.
    pub cgroup_procs: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct TemplateOptions {
    /// As [`RestoreOptions::fill_threads`], for the one restore of the template.
    pub fill_threads: usize,
    /// Collapse the template's anonymous memory into transparent huge pages
    /// (`MADV_COLLAPSE`, every 2 MiB-aligned range that holds pages): a fork then copies
    /// one page-table entry per 2 MiB instead of 512 (measured: 56 MiB forked in 0.15 ms
    /// instead of 1.2 ms), and a child's first write in such a range splits it (~18 us)
    /// before its 4 KiB copy. The collapse is slow (~2 ms per MiB here) and done once.
    pub collapse: bool,
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
}

type Reply = mpsc::Sender<Result<Forked, TemplateError>>;

/// An image restored once, parked, and forked for each instance. Dropping it kills the
/// template (not the instances); the instances' parent thread (the template's) then ends,
/// so an instance that asked for a death signal (`PR_SET_PDEATHSIG`, a handoff's
/// `die_with_parent`) gets it: keep the template as long as its instances.
pub struct Template {
    image: String,
    pid: i32,
    stats: RestoreStats,
    jobs: Option<mpsc::Sender<(ForkSpec, Reply)>>,
    thread: Option<JoinHandle<()>>,
}

impl Template {
    /// Restores `image` into a parked template on a thread of its own. Blocking.
    pub fn new(image: Arc<LoadedImage>, opts: &TemplateOptions) -> Result<Template, TemplateError> {
        let name = image.dir.display().to_string();
        if let Some(why) = unsuitable(&image.meta) {
            return Err(TemplateError::Unsuitable { image: name, why });
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, job_rx) = mpsc::channel::<(ForkSpec, Reply)>();
        let opts = *opts;
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
                for (spec, reply) in job_rx {
                    let _ = reply.send(parked.fork(&spec));
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
        let gone = || TemplateError::Gone {
            image: self.image.clone(),
        };
        let (tx, rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .ok_or_else(gone)?
            .send((spec, tx))
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
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
    if !st.seccomp.is_empty() {
        return Some("it has seccomp filters (not supported by templates yet)".into());
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
        let pid = crate::stopper::spawn(&fds).map_err(io_err("spawning the template process"))?;
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
        let mut parked = Parked {
            pidfd_at: img.meta.fds.iter().map(|f| f.fd).max().unwrap_or(2).max(2) + 16,
            img,
            image,
            t: p.tracee,
            gadget: p.gadget,
            gadget_len: p.gadget_len,
            stats: p.stats,
            regs,
        };
        // The base for what runs in the template: the image's registers (its segments).
        parked.t.regs = restore::words_to_regs(&parked.img.meta.task.regs);
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

    /// Kills and collects the template.
    fn end(self) {
        let pid = self.t.pid;
        sys::kill(pid, libc::SIGKILL);
        while let Ok(Wait::Stopped { .. }) = sys::wait(pid, 0) {}
    }

    fn fork(&self, spec: &ForkSpec) -> Result<Forked, TemplateError> {
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
        let t1 = Instant::now();
        let child = self.clone_child(spec.namespaces)?;
        let clone_us = t1.elapsed().as_micros() as u64;
        match self.finish_child(child, spec) {
            Ok(()) => Ok(Forked {
                pid: child,
                fork_us: t0.elapsed().as_micros() as u64,
                clone_us,
            }),
            Err(e) => {
                sys::kill(child, libc::SIGKILL);
                while let Ok(Wait::Stopped { .. }) = sys::wait(child, 0) {}
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

    /// Injects `clone` into the template; returns the child, stopped and traced.
    fn clone_child(&self, ns: Namespaces) -> Result<i32, TemplateError> {
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
        let mut child = None;
        loop {
            sys::singlestep(pid).map_err(io("PTRACE_SINGLESTEP"))?;
            match sys::wait(pid, 0).map_err(io("waitpid"))? {
                Wait::Stopped { event, .. } if event == libc::PTRACE_EVENT_FORK => {
                    child = Some(sys::event_msg(pid).map_err(io("PTRACE_GETEVENTMSG"))? as i32);
                }
                Wait::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => {}
                Wait::Stopped { sig, event: 0 } if sig == libc::SIGTRAP => break,
                other => return Err(self.fork_err(format!("the template stopped: {other:?}"))),
            }
        }
        let rax = sys::get_regs(pid).map_err(io("PTRACE_GETREGS"))?.rax as i64;
        let child = match child {
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
            other => Err(self.fork_err(format!("the child {child} did not stop: {other:?}"))),
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
        let b = self.child_batch(spec);
        if (b.size() as u64) > self.gadget_len - PAGE {
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
        for procs in &spec.cgroup_procs {
            std::fs::write(procs, child.to_string()).map_err(|source| TemplateError::Io {
                image: self.image.clone(),
                what: format!("moving the child into {}", procs.display()),
                source,
            })?;
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

    /// The child's descriptors and what a fork resets, as one restorer batch.
    fn child_batch(&self, spec: &ForkSpec) -> Batch<'static> {
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
            // As a restore's handoff: the instance's user, then what a credential change
            // resets, then its confinement.
            Some(h) => {
                restore::handoff_credentials(&mut b, h);
                crate::state::apply::after_credentials(&mut b, &meta.process, h.die_with_parent);
                restore::handoff_confine(&mut b, h);
            }
            None if pr.pdeathsig != 0 => {
                let args = [libc::PR_SET_PDEATHSIG as u64, u64::from(pr.pdeathsig)];
                b.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, &args, 0);
            }
            None => {}
        }
        b
    }
}
