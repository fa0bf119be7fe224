//! The page server thread of one restored process (and one per child it forks).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::pending::{Pending, Piece};
use super::{Counters, LazyStats, PageSource, SourceError};
use crate::image::PAGE;
use crate::sys;

/// Pages per background copy in bulk mode (1 MiB).
const BULK_BATCH: u64 = 256;
/// Most pages one zero fault fills: the faulting page and those after it up to the next
/// pending page (1 MiB). A read of memory the process never touched (a dump's
/// `process_vm_readv` of a large sparse area, a scan) then waits on the server once per
/// window instead of once per page; the extra pages are the kernel's shared zero page, as
/// a read of untouched memory would map anyway.
const ZERO_WINDOW: u64 = 256;
/// How often a server without a pidfd (a forked child's) checks that its process lives.
const PROBE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("image {image}: a page failed at its source; process {pid} was killed")]
    Source {
        image: String,
        pid: i32,
        #[source]
        source: SourceError,
    },
    #[error("image {image}: the page server of process {pid} failed")]
    Uffd {
        image: String,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
}

/// A running page server.
pub struct PageServer {
    handle: Option<JoinHandle<Result<(), ServeError>>>,
    counters: Arc<Counters>,
    /// What the server has not installed yet, shared with it (see [`PageServer::pending`]).
    pending: Arc<Mutex<Pending>>,
    source: Arc<dyn PageSource>,
    /// The restored process (`None` for a forked child's server).
    pid: Option<i32>,
    mapped: bool,
}

/// What a lazy restore's page server has not installed yet, at one moment, and where it
/// gets pages: what a dump of the process reads instead of faulting them in.
pub struct PendingPages {
    pub pid: i32,
    pub pieces: Vec<Piece>,
    pub source: Arc<dyn PageSource>,
}

/// The pending pages, whoever holds them (a poisoned lock still holds consistent data:
/// every change to it is a single call).
fn lock(p: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl PageServer {
    /// The image pages the server has not installed in its process yet, by where they are
    /// now. The server installs nothing while this is taken and finishes what it was
    /// installing first, so a page missing from the process and from this list is not the
    /// image's (it reads as zeros). `None` for a mapped restore's server (its pages are
    /// mapped, not pending) and a forked child's.
    pub fn pending(&self) -> Option<PendingPages> {
        let pid = self.pid.filter(|_| !self.mapped)?;
        Some(PendingPages {
            pid,
            pieces: lock(&self.pending).pieces(),
            source: self.source.clone(),
        })
    }

    pub fn stats(&self) -> LazyStats {
        self.counters.snapshot()
    }

    /// The page-file indices faulted in so far, in order: record this after the first
    /// request as the image's working set ([`crate::image::write_working_set`]).
    pub fn working_set(&self) -> Vec<u64> {
        self.counters
            .touched
            .lock()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for the server to end (every page served, or the process gone).
    pub fn wait(mut self) -> Result<LazyStats, ServeError> {
        let r = match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => Ok(()),
        };
        r.map(|()| self.counters.snapshot())
    }
}

/// Whom a page that fails its check kills: the restored process, by pidfd (no pid reuse).
/// A forked child's server kills the faulting thread's process by the thread id the kernel
/// reports instead; that id is in the faulting task's own pid namespace, so it is used only
/// when that is ours. In a sandbox the restored process is the namespace's init, and its
/// death ends every process in it, the child included.
pub(crate) struct Victim {
    pub pidfd: OwnedFd,
    pub pid: i32,
    pub same_pidns: bool,
}

impl Victim {
    fn kill(&self, tid: i32, child: bool) {
        if child && self.same_pidns {
            sys::kill(tid, libc::SIGKILL);
        } else {
            sys::pidfd_kill(&self.pidfd, libc::SIGKILL);
        }
    }
}

pub(crate) struct ServerConfig {
    pub uffd: OwnedFd,
    /// The restored process (`None` for a forked child, known only by its uffd).
    pub pid: Option<(i32, OwnedFd)>,
    pub pending: Pending,
    pub bulk: bool,
    /// A mapped restore's server ([`crate::restore`]'s `fill::mapped`): `pending` is where
    /// the image's memfd pages are still the right content; it lives as long as the process.
    pub mapped: bool,
    pub source: Arc<dyn PageSource>,
    pub image: String,
    pub counters: Arc<Counters>,
    pub victim: Arc<Victim>,
}

pub(crate) fn spawn(mut cfg: ServerConfig) -> std::io::Result<PageServer> {
    let counters = cfg.counters.clone();
    let pending = Arc::new(Mutex::new(std::mem::take(&mut cfg.pending)));
    let server = PageServer {
        handle: None,
        counters,
        pending: pending.clone(),
        source: cfg.source.clone(),
        pid: cfg.pid.as_ref().map(|p| p.0),
        mapped: cfg.mapped,
    };
    let handle = std::thread::Builder::new()
        .name("ember-pages".into())
        .spawn(move || Server::new(cfg, pending).run())?;
    Ok(PageServer {
        handle: Some(handle),
        ..server
    })
}

struct Server {
    cfg: ServerConfig,
    /// The pending pages (`cfg.pending` moved here), shared with [`PageServer::pending`]:
    /// held across each change and each install, so a reader never sees a page neither
    /// pending nor in.
    pending: Arc<Mutex<Pending>>,
    /// Faults that met a changing address space (EAGAIN): retried after the next events.
    retry: Vec<(u64, i32)>,
    started: bool,
    children: Vec<PageServer>,
}

impl Server {
    fn new(cfg: ServerConfig, pending: Arc<Mutex<Pending>>) -> Server {
        Server {
            cfg,
            pending,
            retry: Vec::new(),
            started: false,
            children: Vec::new(),
        }
    }

    fn pid(&self) -> i32 {
        self.cfg.pid.as_ref().map_or(0, |p| p.0)
    }

    fn uffd_err(&self, source: std::io::Error) -> ServeError {
        ServeError::Uffd {
            image: self.cfg.image.clone(),
            pid: self.pid(),
            source,
        }
    }

    fn run(mut self) -> Result<(), ServeError> {
        let r = self.serve();
        // A server for a forked child ends with its process; wait for those too.
        for c in self.children.drain(..) {
            let _ = c.wait();
        }
        r
    }

    fn serve(&mut self) -> Result<(), ServeError> {
        let mut last_probe = Instant::now();
        loop {
            let busy = self.cfg.bulk && self.started && !lock(&self.pending).is_empty();
            let timeout = if busy {
                0
            } else if !self.retry.is_empty() {
                1
            } else {
                PROBE.as_millis() as i32
            };
            let mut fds = vec![self.cfg.uffd.as_raw_fd()];
            if let Some((_, pidfd)) = &self.cfg.pid {
                fds.push(pidfd.as_raw_fd());
            }
            let ready = sys::poll_in(&fds, timeout).map_err(|e| self.uffd_err(e))?;
            if ready.get(1) == Some(&true) {
                return Ok(()); // the process is gone
            }
            if ready[0] {
                let msgs = sys::uffd_read(&self.cfg.uffd).map_err(|e| self.uffd_err(e))?;
                for m in msgs {
                    self.event(m)?;
                }
            }
            // Faults that met a changing address space: again, now the events are in (a
            // thread waits on each).
            for (addr, tid) in std::mem::take(&mut self.retry) {
                self.fault(addr, tid)?;
            }
            if !ready[0] && self.cfg.pid.is_none() && last_probe.elapsed() >= PROBE {
                last_probe = Instant::now();
                if !self.alive() {
                    return Ok(());
                }
            }
            if busy {
                self.bulk_step()?;
            }
            let done = lock(&self.pending).is_empty() && self.cfg.pid.is_some() && self.started;
            if done && !self.cfg.mapped {
                return self.unregister_all();
            }
        }
    }

    /// A child's server has no pidfd: its address space is gone when the kernel refuses
    /// to act on it (ESRCH).
    fn alive(&self) -> bool {
        !matches!(
            sys::uffd_zeropage(&self.cfg.uffd, PAGE, PAGE).map_err(|e| e.raw_os_error()),
            Err(Some(libc::ESRCH))
        )
    }

    fn event(&mut self, m: sys::UffdMsg) -> Result<(), ServeError> {
        match m.event {
            sys::UFFD_EVENT_PAGEFAULT => {
                // arg: flags, address, thread id.
                self.fault(m.arg[1] & !(PAGE - 1), m.arg[2] as u32 as i32)?;
            }
            sys::UFFD_EVENT_REMAP => lock(&self.pending).remap(m.arg[0], m.arg[1], m.arg[2]),
            sys::UFFD_EVENT_REMOVE | sys::UFFD_EVENT_UNMAP => {
                lock(&self.pending).cut(m.arg[0], m.arg[1]);
            }
            sys::UFFD_EVENT_FORK => {
                // SAFETY: the kernel installed this descriptor in our table for us to own.
                let child = unsafe { OwnedFd::from_raw_fd(m.arg[0] as u32 as i32) };
                let server = spawn(ServerConfig {
                    uffd: child,
                    pid: None,
                    pending: lock(&self.pending).clone(),
                    // A child's server serves faults only: it knows its process by the
                    // faulting thread's id alone, which a background copy does not have.
                    bulk: false,
                    mapped: self.cfg.mapped,
                    source: self.cfg.source.clone(),
                    image: self.cfg.image.clone(),
                    counters: self.cfg.counters.clone(),
                    victim: self.cfg.victim.clone(),
                })
                .map_err(|e| self.uffd_err(e))?;
                self.children.push(server);
            }
            _ => {}
        }
        if m.event != sys::UFFD_EVENT_PAGEFAULT {
            self.cfg.counters.events.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Resolves a fault at `addr` (page-aligned) by thread `tid`.
    fn fault(&mut self, addr: u64, tid: i32) -> Result<(), ServeError> {
        let t = Instant::now();
        self.started = true;
        let c = self.cfg.counters.clone();
        if self.cfg.mapped {
            return self.mapped_fault(addr, t);
        }
        let shared = self.pending.clone();
        let mut pending = lock(&shared);
        let pieces = pending.cut(addr, addr + PAGE);
        let (retry, r) = match pieces.first() {
            Some(&piece) => {
                c.faults.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut t) = c.touched.lock() {
                    t.push(piece.first);
                }
                match self.install(piece, true, tid)? {
                    (_, Ok(())) => (false, Ok(())),
                    (done, Err(e)) => (self.put_back(&mut pending, piece, done, &e)?, Err(e)),
                }
            }
            None => {
                c.zero_faults.fetch_add(1, Ordering::Relaxed);
                let r = self.zero_fill(&pending, addr);
                let again = r.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::EAGAIN);
                (again, r)
            }
        };
        drop(pending);
        if retry {
            // The address space is changing: serve it after the event that says how.
            self.retry.push((addr, tid));
        } else if let Err(e) = r {
            match e.raw_os_error() {
                // Already there (a racing copy), or the memory went away: just wake.
                Some(libc::EEXIST | libc::ENOENT) => {
                    let _ = sys::uffd_wake(&self.cfg.uffd, addr, PAGE);
                }
                Some(libc::ESRCH) => {}
                _ => return Err(self.uffd_err(e)),
            }
        }
        c.blocked_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Zeros at `addr` (not pending), and in the same call the pages after it up to the
    /// next pending one, at most [`ZERO_WINDOW`] pages. A window that leaves the registered
    /// area is refused whole by the kernel (ENOENT): then the one page. The kernel stops at
    /// a page already there; what it filled, `addr` first, it wakes.
    fn zero_fill(&self, pending: &Pending, addr: u64) -> std::io::Result<()> {
        let window = addr.saturating_add(ZERO_WINDOW * PAGE);
        let end = pending.next_start(addr).map_or(window, |n| n.min(window));
        if end > addr + PAGE {
            match sys::uffd_zeropage_part(&self.cfg.uffd, addr, end - addr) {
                (done, _) if done >= PAGE => return Ok(()),
                (_, Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
                (_, r) => return r,
            }
        }
        sys::uffd_zeropage(&self.cfg.uffd, addr, PAGE)
    }

    /// A mapped restore's fault: the memfd's page again where the image's content is still
    /// right (a page the kernel unmapped under the process), zeros anywhere else (discarded,
    /// freed and remapped, or grown).
    fn mapped_fault(&mut self, addr: u64, t: Instant) -> Result<(), ServeError> {
        let c = self.cfg.counters.clone();
        let held = lock(&self.pending).holds(addr);
        let r = if held {
            c.faults.fetch_add(1, Ordering::Relaxed);
            sys::uffd_continue(&self.cfg.uffd, addr, PAGE)
        } else {
            c.zero_faults.fetch_add(1, Ordering::Relaxed);
            sys::uffd_zeropage(&self.cfg.uffd, addr, PAGE)
        };
        match r.as_ref().map_err(|e| e.raw_os_error()) {
            Ok(()) => {}
            // The address space is changing: again after the event that says how.
            Err(Some(libc::EAGAIN)) => self.retry.push((addr, 0)),
            Err(Some(libc::EEXIST | libc::ENOENT)) => {
                let _ = sys::uffd_wake(&self.cfg.uffd, addr, PAGE);
            }
            Err(Some(libc::ESRCH)) => {}
            Err(_) => return Err(self.uffd_err(r.unwrap_err())),
        }
        c.blocked_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Fetches `piece` from the source (checked there) and installs it. A source failure
    /// is fatal (the outer error) and kills the process first: it must never run on a page
    /// that failed. The inner result is the kernel's answer to the copy.
    fn install(
        &self,
        piece: Piece,
        wake: bool,
        tid: i32,
    ) -> Result<(u64, std::io::Result<()>), ServeError> {
        let data = match self.cfg.source.pages(piece.first, piece.pages) {
            Ok(d) => d,
            Err(source) => {
                let child = self.cfg.pid.is_none();
                self.cfg.victim.kill(tid, child);
                return Err(ServeError::Source {
                    image: self.cfg.image.clone(),
                    pid: if child && self.cfg.victim.same_pidns {
                        tid
                    } else {
                        self.cfg.victim.pid
                    },
                    source,
                });
            }
        };
        let c = &self.cfg.counters;
        c.bytes_fetched
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let (done, r) = sys::uffd_copy(&self.cfg.uffd, piece.addr, &data, wake);
        c.pages_installed.fetch_add(done / PAGE, Ordering::Relaxed);
        Ok((done, r))
    }

    /// After a copy of `piece` stopped at `done` bytes with `err`: what of it must still be
    /// installed goes back to pending. EAGAIN: all the rest (after the next events); EEXIST:
    /// the rest after the page that is already there; the process gone (ESRCH): nothing.
    /// ENOENT: the range is not inside one registered area any more. A bulk batch spanning
    /// an area the process has since split (`mprotect` of a part) gets that too, so a piece
    /// of several pages goes back page by page (each then copies or finds its area gone);
    /// a single page is gone. Returns whether to retry after reading events.
    fn put_back(
        &self,
        pending: &mut Pending,
        piece: Piece,
        done: u64,
        err: &std::io::Error,
    ) -> Result<bool, ServeError> {
        let skip = match err.raw_os_error() {
            Some(libc::EAGAIN) => 0,
            Some(libc::EEXIST) => 1,
            Some(libc::ENOENT) => {
                let used = done / PAGE;
                // The area is not there (any more): moved or unmapped by the process, with
                // the event that says which possibly still unread. While an event waits, the
                // page goes back too, so that event moves or drops it; otherwise (the area
                // is gone for good) it is dropped. A batch goes back page by page (it may
                // span areas the process split since).
                let event_waits = sys::poll_in(&[self.cfg.uffd.as_raw_fd()], 0)
                    .is_ok_and(|r| r.first() == Some(&true));
                if piece.pages > used + 1 || event_waits {
                    for k in used..piece.pages {
                        pending.restore(Piece {
                            addr: piece.addr + k * PAGE,
                            first: piece.first + k,
                            pages: 1,
                        });
                    }
                }
                return Ok(false);
            }
            Some(libc::ESRCH) => return Ok(false),
            _ => {
                let e = std::io::Error::from_raw_os_error(err.raw_os_error().unwrap_or(libc::EIO));
                return Err(self.uffd_err(e));
            }
        };
        let used = done / PAGE + skip;
        if used < piece.pages {
            pending.restore(Piece {
                addr: piece.addr + used * PAGE,
                first: piece.first + used,
                pages: piece.pages - used,
            });
        }
        Ok(skip == 0)
    }

    fn bulk_step(&mut self) -> Result<(), ServeError> {
        let shared = self.pending.clone();
        let mut pending = lock(&shared);
        let Some(piece) = pending.next_batch(BULK_BATCH) else {
            return Ok(());
        };
        let (done, r) = self.install(piece, false, 0)?;
        if let Err(e) = r {
            self.put_back(&mut pending, piece, done, &e)?;
        }
        Ok(())
    }

    /// Everything is in: stop catching faults in the process's memory. The process runs
    /// meanwhile and may move a registered area (mremap), so the areas still marked `um` in
    /// smaps are unregistered until two scans in a row find none, reading events between.
    fn unregister_all(&mut self) -> Result<(), ServeError> {
        let Some((pid, _)) = &self.cfg.pid else {
            return Ok(());
        };
        let path = format!("/proc/{pid}/smaps");
        let mut clean = 0;
        while clean < 2 {
            let Ok(text) = std::fs::read_to_string(&path) else {
                return Ok(()); // the process is gone
            };
            let registered = crate::proc::parse_smaps_uffd(&text);
            if registered.is_empty() {
                clean += 1;
            } else {
                clean = 0;
            }
            for (start, end) in registered {
                let _ = sys::uffd_unregister(&self.cfg.uffd, start, end - start);
            }
            for m in sys::uffd_read(&self.cfg.uffd).map_err(|e| self.uffd_err(e))? {
                self.event(m)?;
            }
        }
        Ok(())
    }
}
