//! Writing the stored pages into the target, before it runs.
//!
//! Filling is bound by the kernel allocating each 4 KiB page (~1.3-1.9 us on this VM; the
//! copy itself is ~0.2 us). Two things help: `UFFDIO_COPY` through the target's own
//! userfaultfd allocates a page and copies into it without zeroing it first (anonymous
//! memory only: the kernel refuses missing-page registration on private file mappings,
//! whose few copied pages go through `process_vm_writev`), and the work spreads over
//! several threads.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::image::{LoadedImage, PAGE, PageRun, VmaKind};
use crate::lazy::pending::Pending;
use crate::lazy::{self, Counters, PageServer, PageSource, ServerConfig, Victim};
use crate::sys;

/// How the pages went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillMode {
    #[default]
    VmWritev,
    UffdCopy,
}

/// Takes the target's userfaultfd (parked at `target_fd` by batch 1), agrees on `features`
/// and registers `ranges` for missing pages (all or none). Returns it with a pidfd of `pid`.
fn take_uffd(
    pid: i32,
    target_fd: i32,
    features: u64,
    ranges: &[(u64, u64)],
) -> io::Result<(OwnedFd, OwnedFd)> {
    let pidfd = sys::pidfd_open(pid)?;
    let uffd = sys::pidfd_getfd(&pidfd, target_fd)?;
    sys::uffd_api(&uffd, features)?;
    for (i, &(s, e)) in ranges.iter().enumerate() {
        if let Err(err) = sys::uffd_register(&uffd, s, e - s) {
            for &(s, e) in &ranges[..i] {
                let _ = sys::uffd_unregister(&uffd, s, e - s);
            }
            return Err(err);
        }
    }
    Ok((pidfd, uffd))
}

/// Private anonymous areas holding stored pages, adjacent ones merged. `readable_only`
/// (a lazy restore) leaves out areas without read access: a page server could serve them,
/// but a later dump could not read the pages still pending there (`process_vm_readv` does
/// not force access), so their pages go in before the process runs.
fn anon_ranges(img: &LoadedImage, readable_only: bool) -> Vec<(u64, u64)> {
    let m = &img.meta;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for v in m.vmas.iter().filter(|v| {
        !v.shared
            && !matches!(v.kind, VmaKind::File { .. })
            && (!readable_only || v.prot & libc::PROT_READ != 0)
    }) {
        if !m
            .pages
            .runs
            .iter()
            .any(|r| v.start <= r.addr && r.addr < v.end)
        {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == v.start => last.1 = v.end,
            _ => out.push((v.start, v.end)),
        }
    }
    out
}

/// Writes every stored page into `pid`, with `threads` threads.
pub(super) fn fill(
    pid: i32,
    img: &LoadedImage,
    runs: &[PageRun],
    threads: usize,
    uffd_fd: Option<i32>,
) -> io::Result<FillMode> {
    let ranges = anon_ranges(img, false);
    // Without a userfaultfd (or if registering fails) every page goes by process_vm_writev.
    let uffd = uffd_fd
        .and_then(|fd| take_uffd(pid, fd, 0, &ranges).ok())
        .map(|(_, u)| u);
    let registered: &[(u64, u64)] = if uffd.is_some() { &ranges } else { &[] };
    let in_uffd = |r: &PageRun| registered.iter().any(|&(s, e)| s <= r.addr && r.addr < e);
    let parts = split(runs, runs.iter().map(|r| u64::from(r.pages)).sum(), threads);
    let pages = img.page_data();
    let result = std::thread::scope(|s| {
        let work = |part: &[PageRun]| -> io::Result<()> {
            let (mut via_uffd, mut via_vm) = (Vec::new(), Vec::new());
            for r in part {
                if uffd.is_some() && in_uffd(r) {
                    via_uffd.push(*r);
                } else {
                    via_vm.push(*r);
                }
            }
            if let Some(u) = &uffd {
                for r in &via_uffd {
                    sys::uffd_copy_all(u, r.addr, slice(pages, r)?)?;
                }
            }
            write_runs(pid, pages, &via_vm)
        };
        let mut parts = parts.iter().map(Vec::as_slice);
        let first = parts.next();
        let others: Vec<_> = parts.map(|p| s.spawn(move || work(p))).collect();
        let mut r = first.map(work).unwrap_or(Ok(()));
        for h in others {
            let o = h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a fill thread panicked")));
            r = r.and(o);
        }
        r
    });
    if let Some(u) = &uffd {
        for &(s, e) in registered {
            sys::uffd_unregister(u, s, e - s)?;
        }
    }
    result.map(|()| {
        if uffd.is_some() {
            FillMode::UffdCopy
        } else {
            FillMode::VmWritev
        }
    })
}

/// Runs cut into `threads` parts of equal page counts (a long run is cut in pieces).
fn split(runs: &[PageRun], count: u64, threads: usize) -> Vec<Vec<PageRun>> {
    let share = count.div_ceil(threads.max(1) as u64).max(1);
    let mut parts = vec![Vec::new()];
    let mut room = share;
    for r in runs {
        let mut r = *r;
        while r.pages > 0 {
            if room == 0 {
                parts.push(Vec::new());
                room = share;
            }
            let take = u64::from(r.pages).min(room) as u32;
            if let Some(p) = parts.last_mut() {
                p.push(PageRun { pages: take, ..r });
            }
            room -= u64::from(take);
            r = PageRun {
                addr: r.addr + u64::from(take) * PAGE,
                pages: r.pages - take,
                first: r.first + u64::from(take),
            };
        }
    }
    parts
}

fn slice<'a>(pages: &'a [u8], r: &PageRun) -> io::Result<&'a [u8]> {
    let off = (r.first * PAGE) as usize;
    let len = (u64::from(r.pages) * PAGE) as usize;
    pages
        .get(off..off + len)
        .ok_or_else(|| io::Error::other("page run outside the page data"))
}

/// Installs the working set's pages that are still pending, contiguous ones of one run
/// together (runs never cross VMAs; one `UFFDIO_COPY` across two VMAs fails with ENOENT),
/// before the process resumes.
fn prefetch(
    uffd: &OwnedFd,
    pending: &mut Pending,
    runs: &[PageRun],
    ws: &[u64],
    source: &dyn PageSource,
) -> io::Result<()> {
    let mut idx: Vec<u64> = ws.to_vec();
    idx.sort_unstable();
    idx.dedup();
    let addr_of = |i: u64| -> Option<(usize, u64)> {
        let k = runs.partition_point(|r| r.first + u64::from(r.pages) <= i);
        let r = runs.get(k)?;
        (r.first <= i).then(|| (k, r.addr + (i - r.first) * PAGE))
    };
    let mut pieces: Vec<(usize, lazy::pending::Piece)> = Vec::new();
    for i in idx {
        let Some((run, a)) = addr_of(i) else { continue };
        for p in pending.cut(a, a + PAGE) {
            match pieces.last_mut() {
                Some((k, l))
                    if *k == run
                        && l.addr + l.pages * PAGE == p.addr
                        && l.first + l.pages == p.first =>
                {
                    l.pages += p.pages;
                }
                _ => pieces.push((run, p)),
            }
        }
    }
    for (_, p) in pieces {
        let data = source
            .pages(p.first, p.pages)
            .map_err(|e| io::Error::other(e.to_string()))?;
        sys::uffd_copy_all(uffd, p.addr, &data)?;
    }
    Ok(())
}

/// `process_vm_writev` of `runs`, up to `IOV_MAX` runs per call.
fn write_runs(pid: i32, pages: &[u8], runs: &[PageRun]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    for runs in runs.chunks(IOV_MAX) {
        let mut local = Vec::with_capacity(runs.len());
        let mut remote = Vec::with_capacity(runs.len());
        let mut want = 0;
        for r in runs {
            let src = slice(pages, r)?;
            local.push(libc::iovec {
                iov_base: src.as_ptr() as *mut libc::c_void,
                iov_len: src.len(),
            });
            remote.push(libc::iovec {
                iov_base: r.addr as *mut libc::c_void,
                iov_len: src.len(),
            });
            want += src.len();
        }
        let n = sys::write_mem(pid, &local, &remote)?;
        if n != want {
            return Err(io::Error::other(format!("wrote {n} of {want} bytes")));
        }
    }
    Ok(())
}

/// Lazy and bulk: register the anonymous memory with the target's userfaultfd (with the
/// events that keep the pending pages right), install eagerly what cannot wait for a fault,
/// and start the page server.
pub(super) fn lazy(
    pid: i32,
    img: &LoadedImage,
    uffd_fd: i32,
    source: Arc<dyn PageSource>,
    bulk: bool,
    working_set: Option<&[u64]>,
) -> io::Result<PageServer> {
    let features = sys::UFFD_FEATURE_EVENT_FORK
        | sys::UFFD_FEATURE_EVENT_REMAP
        | sys::UFFD_FEATURE_EVENT_REMOVE
        | sys::UFFD_FEATURE_EVENT_UNMAP
        | sys::UFFD_FEATURE_THREAD_ID;
    let ranges = anon_ranges(img, true);
    let (pidfd, uffd) = take_uffd(pid, uffd_fd, features, &ranges)?;
    let in_uffd = |r: &PageRun| ranges.iter().any(|&(s, e)| s <= r.addr && r.addr < e);
    let runs = &img.meta.pages.runs;
    // Copies inside private file mappings (no missing-page mode there) go in now; a remote
    // source fetches them (and the working set) in a few batches first.
    let mut warm: Vec<(u64, u64)> = runs
        .iter()
        .filter(|r| !in_uffd(r))
        .map(|r| (r.first, u64::from(r.pages)))
        .collect();
    warm.extend(working_set.unwrap_or_default().iter().map(|&i| (i, 1)));
    source.warm(&warm);
    for r in runs.iter().filter(|r| !in_uffd(r)) {
        let data = source
            .pages(r.first, u64::from(r.pages))
            .map_err(|e| io::Error::other(e.to_string()))?;
        crate::tracee::write(pid, r.addr, &data)?;
    }
    let mut pending = Pending::from_runs(runs.iter().filter(|r| in_uffd(r)));
    for (s, e) in early_ranges(img) {
        for p in pending.cut(s, e) {
            let data = source
                .pages(p.first, p.pages)
                .map_err(|e| io::Error::other(e.to_string()))?;
            sys::uffd_copy_all(&uffd, p.addr, &data)?;
        }
    }
    if let Some(ws) = working_set {
        prefetch(&uffd, &mut pending, runs, ws, source.as_ref())?;
    }
    serve(pid, pidfd, uffd, img, pending, source, bulk, false)
}

/// What the kernel reads for others (/proc/PID/cmdline, environ) or the agent patches
/// (glibc's thread id) cannot be faulted in (reads of an unserved page fail with EIO): these
/// page-aligned address ranges are installed before the process runs.
fn early_ranges(img: &LoadedImage) -> Vec<(u64, u64)> {
    let m = &img.meta;
    let mut early: Vec<(u64, u64)> = vec![(m.mm.arg_start, m.mm.env_end)];
    if let Some(off) = m.task.glibc_tid_offset {
        let at = crate::restore::words_to_regs(&m.task.regs).fs_base + u64::from(off);
        early.push((at, at + 4));
    }
    early
        .into_iter()
        .filter(|(s, e)| e > s)
        .map(|(s, e)| (s & !(PAGE - 1), e.next_multiple_of(PAGE)))
        .collect()
}

/// The held pages (`page_data` order) a lazy restore of `img` installs before the process
/// runs, whatever its working set: the copies inside private file mappings and the pages
/// [`early_ranges`] names. A working set recorded from a restore's faults lacks them; a
/// source that fetches them from afar wants them with it.
pub fn first_pages(img: &LoadedImage) -> Vec<u64> {
    let ranges = anon_ranges(img, true);
    let in_uffd = |addr: u64| ranges.iter().any(|&(s, e)| s <= addr && addr < e);
    let mut out = Vec::new();
    for r in img.meta.pages.runs.iter().filter(|r| !in_uffd(r.addr)) {
        out.extend(r.first..r.first + u64::from(r.pages));
    }
    for (s, e) in early_ranges(img) {
        out.extend((s..e).step_by(PAGE as usize).filter_map(|a| img.page_at(a)));
    }
    out
}

/// Starts the page server of restored process `pid` (its pidfd and userfaultfd taken).
#[allow(
    clippy::too_many_arguments,
    reason = "one call per policy, each naming every part of the server"
)]
fn serve(
    pid: i32,
    pidfd: OwnedFd,
    uffd: OwnedFd,
    img: &LoadedImage,
    pending: Pending,
    source: Arc<dyn PageSource>,
    bulk: bool,
    mapped: bool,
) -> io::Result<PageServer> {
    lazy::spawn(ServerConfig {
        uffd,
        victim: Arc::new(Victim {
            pidfd: pidfd.try_clone()?,
            pid,
            same_pidns: std::fs::read_link("/proc/self/ns/pid").ok()
                == std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok(),
        }),
        pid: Some((pid, pidfd)),
        pending,
        bulk,
        mapped,
        source,
        image: img.dir.display().to_string(),
        counters: Arc::new(Counters::default()),
    })
}

/// The page server of a mapped restore. The stored pages of the VMAs that share them are
/// mapped from the image's memfd and already in the page table; the server keeps anonymous
/// memory's semantics there for as long as the process lives: a page the process discards
/// (`MADV_DONTNEED`) or frees, or memory it grows in place with `mremap`, reads as zeros,
/// not as the image. The areas are registered for minor faults (a memfd page not mapped
/// here) and missing ones (a hole of the memfd); `pending` holds, by where they are now,
/// the pages whose image content is still right (a fault there maps the memfd's page
/// again: `UFFDIO_CONTINUE`); anything else gets a zero page.
pub(super) fn mapped(pid: i32, img: &LoadedImage, uffd_fd: i32) -> io::Result<PageServer> {
    let features = sys::UFFD_FEATURE_EVENT_FORK
        | sys::UFFD_FEATURE_EVENT_REMAP
        | sys::UFFD_FEATURE_EVENT_REMOVE
        | sys::UFFD_FEATURE_EVENT_UNMAP
        | sys::UFFD_FEATURE_THREAD_ID
        | sys::UFFD_FEATURE_MISSING_SHMEM
        | sys::UFFD_FEATURE_MINOR_SHMEM;
    let m = &img.meta;
    let shared: Vec<PageRun> = m
        .pages
        .runs
        .iter()
        .filter(|r| m.shares_run(r.addr))
        .copied()
        .collect();
    let pidfd = sys::pidfd_open(pid)?;
    let uffd = sys::pidfd_getfd(&pidfd, uffd_fd)?;
    sys::uffd_api(&uffd, features)?;
    // Runs of one VMA that touch are one mapping (their memfd offsets are their addresses).
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for r in &shared {
        let end = r.addr + u64::from(r.pages) * PAGE;
        match ranges.last_mut() {
            Some(last) if last.1 == r.addr => last.1 = end,
            _ => ranges.push((r.addr, end)),
        }
    }
    for &(s, e) in &ranges {
        sys::uffd_register_shmem(&uffd, s, e - s)?;
    }
    let pending = Pending::from_runs(&shared);
    serve(
        pid,
        pidfd,
        uffd,
        img,
        pending,
        Arc::new(NoPages),
        false,
        true,
    )
}

/// A mapped restore's server never fetches a page: the memfd holds them all.
struct NoPages;

impl PageSource for NoPages {
    fn describe(&self) -> String {
        "the image's memfd".into()
    }

    fn pages(
        &self,
        first: u64,
        _pages: u64,
    ) -> Result<std::borrow::Cow<'_, [u8]>, lazy::SourceError> {
        Err(lazy::SourceError {
            source_name: self.describe(),
            why: format!("page {first} is mapped from the memfd, never fetched"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_have_equal_page_counts_and_cover_every_page_once() {
        let runs = [
            PageRun {
                addr: 0x1000,
                pages: 10,
                first: 0,
            },
            PageRun {
                addr: 0x20000,
                pages: 1,
                first: 10,
            },
        ];
        let parts = split(&runs, 11, 2);
        assert_eq!(parts.len(), 2);
        let pages: Vec<u32> = parts
            .iter()
            .map(|p| p.iter().map(|r| r.pages).sum())
            .collect();
        assert_eq!(pages, vec![6, 5]);
        assert_eq!(
            parts[1][0],
            PageRun {
                addr: 0x7000,
                pages: 4,
                first: 6
            }
        );
        assert_eq!(split(&runs, 11, 1).len(), 1);
    }
}
