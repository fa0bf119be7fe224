//! Writing the stored pages into the target.

use std::io;

use crate::image::{LoadedImage, PAGE, PageRun};
use crate::sys;

/// Writes every stored page into the target with `process_vm_writev`, splitting the runs
/// between `threads` threads of about equal page counts.
pub(super) fn fill(pid: i32, img: &LoadedImage, threads: usize) -> io::Result<()> {
    let runs = &img.meta.pages.runs;
    if threads <= 1 || runs.len() < 2 {
        return fill_runs(pid, img.pages(), runs);
    }
    let share = img.meta.pages.count.div_ceil(threads as u64);
    let mut parts = Vec::new();
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
    std::thread::scope(|s| {
        let hs: Vec<_> = parts
            .into_iter()
            .map(|part| s.spawn(move || fill_runs(pid, img.pages(), part)))
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a fill thread panicked")))
            })
            .collect::<io::Result<Vec<()>>>()
            .map(drop)
    })
}

/// `process_vm_writev` of `runs`, up to `IOV_MAX` runs per call.
fn fill_runs(pid: i32, pages: &[u8], runs: &[PageRun]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    for runs in runs.chunks(IOV_MAX) {
        let mut local = Vec::with_capacity(runs.len());
        let mut remote = Vec::with_capacity(runs.len());
        let mut want = 0;
        for r in runs {
            let len = u64::from(r.pages) * PAGE;
            let off = (r.first * PAGE) as usize;
            let src = pages
                .get(off..off + len as usize)
                .ok_or_else(|| io::Error::other("page run outside the page data"))?;
            local.push(libc::iovec {
                iov_base: src.as_ptr() as *mut libc::c_void,
                iov_len: src.len(),
            });
            remote.push(libc::iovec {
                iov_base: r.addr as *mut libc::c_void,
                iov_len: len as usize,
            });
            want += len as usize;
        }
        let n = sys::write_mem(pid, &local, &remote)?;
        if n != want {
            return Err(io::Error::other(format!("wrote {n} of {want} bytes")));
        }
    }
    Ok(())
}
