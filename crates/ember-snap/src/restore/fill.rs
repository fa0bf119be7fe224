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

use crate::image::{LoadedImage, PAGE, PageRun, VmaKind};
use crate::sys;

/// How the pages went in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillMode {
    #[default]
    VmWritev,
    UffdCopy,
}

/// Takes the target's userfaultfd (parked at `target_fd` by batch 1), if it made one.
fn take_uffd(pid: i32, target_fd: i32) -> Option<OwnedFd> {
    let pidfd = sys::pidfd_open(pid).ok()?;
    let fd = sys::pidfd_getfd(&pidfd, target_fd).ok()?;
    sys::uffd_api(&fd).ok()?;
    Some(fd)
}

/// Private anonymous areas holding stored pages, adjacent ones merged.
fn anon_ranges(img: &LoadedImage) -> Vec<(u64, u64)> {
    let m = &img.meta;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for v in m
        .vmas
        .iter()
        .filter(|v| !v.shared && !matches!(v.kind, VmaKind::File { .. }))
    {
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
    threads: usize,
    uffd_fd: i32,
) -> io::Result<FillMode> {
    let mut uffd = take_uffd(pid, uffd_fd);
    let ranges = anon_ranges(img);
    let mut registered = Vec::new();
    if let Some(u) = &uffd {
        for &(s, e) in &ranges {
            if sys::uffd_register(u, s, e - s).is_err() {
                break;
            }
            registered.push((s, e));
        }
        if registered.len() != ranges.len() {
            for &(s, e) in &registered {
                let _ = sys::uffd_unregister(u, s, e - s);
            }
            registered.clear();
            uffd = None;
        }
    }
    let in_uffd = |r: &PageRun| registered.iter().any(|&(s, e)| s <= r.addr && r.addr < e);
    let runs = &img.meta.pages.runs;
    let share = img.meta.pages.count.div_ceil(threads.max(1) as u64).max(1);
    let mut parts: Vec<&[PageRun]> = Vec::new();
    let (mut start, mut acc) = (0, 0u64);
    for (i, r) in runs.iter().enumerate() {
        acc += u64::from(r.pages);
        if acc >= share {
            parts.push(&runs[start..=i]);
            (start, acc) = (i + 1, 0);
        }
    }
    if start < runs.len() {
        parts.push(&runs[start..]);
    }
    let pages = img.pages();
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
                    sys::uffd_copy(u, r.addr, slice(pages, r)?)?;
                }
            }
            write_runs(pid, pages, &via_vm)
        };
        let mut parts = parts.into_iter();
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
        for &(s, e) in &registered {
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

fn slice<'a>(pages: &'a [u8], r: &PageRun) -> io::Result<&'a [u8]> {
    let off = (r.first * PAGE) as usize;
    let len = (u64::from(r.pages) * PAGE) as usize;
    pages
        .get(off..off + len)
        .ok_or_else(|| io::Error::other("page run outside the page data"))
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
