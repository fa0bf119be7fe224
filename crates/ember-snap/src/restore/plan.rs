//! The two batches a restore runs in the target, laid out from the image and what the
//! target looks like now.

use super::{GAP_SEARCH_FROM, Handoff, RestoreError};
use crate::image::{FdKind, Meta, PAGE, VdsoLayout, VmaKind, format::USER_END, vma_flags};
use crate::proc::MapEntry;
use crate::restorer::{ALLOW_ERROR, ARG0_FROM_SAVED, ARG4_FROM_SAVED, Batch, SAVE_RESULT, Step};
use crate::{state, sys};

const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;
const RSEQ_FLAG_UNREGISTER: u64 = 1;
const MREMAP_MAYMOVE: u64 = 1;
const MREMAP_FIXED: u64 = 2;
const PR_SET_VMA: u64 = 0x5356_4d41;
const PR_SET_VMA_ANON_NAME: u64 = 0;
/// The `madvise` advice that restores each area flag set by one.
const ADVICE: [(u32, i32); 8] = [
    (vma_flags::DONTFORK, libc::MADV_DONTFORK),
    (vma_flags::DONTDUMP, libc::MADV_DONTDUMP),
    (vma_flags::HUGEPAGE, libc::MADV_HUGEPAGE),
    (vma_flags::NOHUGEPAGE, libc::MADV_NOHUGEPAGE),
    (vma_flags::WIPEONFORK, libc::MADV_WIPEONFORK),
    (vma_flags::SEQ_READ, libc::MADV_SEQUENTIAL),
    (vma_flags::RAND_READ, libc::MADV_RANDOM),
    (vma_flags::MERGEABLE, libc::MADV_MERGEABLE),
];

/// One image descriptor: where batch 1 parks its open file description and what batch 2
/// makes of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct FdPlace {
    pub(super) fd: i32,
    pub(super) cloexec: bool,
    /// Position to seek to (the first descriptor of a description only).
    pub(super) pos: Option<u64>,
    /// The parked descriptor it is a `dup3` of.
    pub(super) at: i32,
}

pub(super) struct Plan<'a> {
    pub(super) meta: &'a Meta,
    pub(super) image: String,
    /// First of the high descriptor numbers files are parked at.
    pub(super) high: i32,
    /// The image's descriptors (but the inherited ones), in order.
    pub(super) fd_files: Vec<FdPlace>,
    /// How many open file descriptions batch 1 parks for them.
    pub(super) parked: i32,
    pub(super) gadget: u64,
    pub(super) gadget_len: u64,
    /// VMA indices that hold saved pages (mapped writable until filled).
    pub(super) filled: Vec<bool>,
    /// Credentials and filter to end the restore with.
    pub(super) handoff: Option<&'a Handoff>,
    /// The target's thread id as it sees it (timers and signals aimed at itself).
    pub(super) tid: i32,
    /// The target's own hard limits (and, with a handoff, nice value), which the image's
    /// may not exceed.
    pub(super) bounds: state::apply::Bounds,
    /// Mapped policy: where the target holds the image's memfd.
    pub(super) mapped_fd: Option<i32>,
    /// A template's restore ([`crate::template`]): the target keeps the restorer's
    /// credentials (root, every capability), so that it can clone with namespaces; the
    /// image's credentials, filters and what a credential change resets are left to each
    /// fork child. Its gadget has room for a child's batch.
    pub(super) template: bool,
    /// Where batch 1 leaves each mapped file's `struct stat`.
    pub(super) stat_offsets: Vec<Option<usize>>,
}

/// The lowest address at or above `from` where `size` bytes touch nothing in `occupied`.
pub(super) fn find_gap(occupied: &[(u64, u64)], size: u64, from: u64) -> Option<u64> {
    let mut spans: Vec<(u64, u64)> = occupied.to_vec();
    spans.sort_unstable();
    let mut at = from;
    for (s, e) in spans {
        if e <= at {
            continue;
        }
        if s >= at + size {
            break;
        }
        at = at.max(e);
    }
    (at + size <= USER_END).then_some(at)
}

/// Every range of user space not in `keep` (sorted, disjoint).
fn complement(keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for (s, e) in keep {
        if s > at {
            out.push((at, s));
        }
        at = at.max(e);
    }
    if at < USER_END {
        out.push((at, USER_END));
    }
    out
}

impl<'m> Plan<'m> {
    /// Places the gadget (the blob's page and the batch area after it) in the first gap of
    /// `occupied` from [`GAP_SEARCH_FROM`] and lays both batches out for that place; sets
    /// `gadget` and `gadget_len`. The batches depend on where the gadget is (batch 1 unmaps
    /// everything around it: one `munmap` more when it is not at the bottom of the address
    /// space, and the vDSO's way aside avoids it), so they are laid out at the address they
    /// will be written to, and the gadget is grown and placed again until they fit. Laying
    /// them out once elsewhere to learn their size made batch 1 up to 72 bytes longer than
    /// the mapping when its size fell just below a page boundary: its write stopped at the
    /// end of the mapping ("process_vm_writev failed: short write", issue 14).
    pub(super) fn lay_out(
        &mut self,
        maps: &[MapEntry],
        here: &VdsoLayout,
        rseq_now: Option<sys::RseqConfig>,
        occupied: &[(u64, u64)],
    ) -> Result<(Batch<'m>, Batch<'m>), RestoreError> {
        // A template's children run their own batch (descriptors, mounts, capability
        // drops, a sandbox's filter) in the area it leaves behind.
        let mut need = if self.template { 8 * PAGE } else { 2 * PAGE };
        // The size grows with the address only by a few entries: two rounds almost always.
        for _ in 0..8 {
            self.gadget = find_gap(occupied, need, GAP_SEARCH_FROM).ok_or(RestoreError::NoGap {
                image: self.image.clone(),
                size: need,
            })?;
            self.gadget_len = need;
            let (b1, b2) = self.batches(maps, here, rseq_now, self.gadget + PAGE)?;
            let fits = (PAGE + b1.size().max(b2.size()) as u64).next_multiple_of(PAGE);
            if fits <= need {
                return Ok((b1, b2));
            }
            need = fits;
        }
        Err(RestoreError::NoGap {
            image: self.image.clone(),
            size: need,
        })
    }

    /// Files a restore maps (or execs from): checked against the image; files held only
    /// as open descriptors are reopened without a content check (a log file grows).
    fn mapped_files(&self) -> Vec<bool> {
        let meta = self.meta;
        let mut used = vec![false; meta.files.len()];
        for v in &meta.vmas {
            if let VmaKind::File { file, .. } = v.kind
                && let Some(u) = used.get_mut(file as usize)
            {
                *u = true;
            }
        }
        if let Some(u) = used.get_mut(meta.mm.exe as usize) {
            *u = true;
        }
        used
    }

    /// Batch 1 (descriptors, address space, files) and batch 2 (everything else), laid out
    /// for a batch area at `base`.
    pub(super) fn batches(
        &mut self,
        maps: &[MapEntry],
        here: &VdsoLayout,
        rseq_now: Option<sys::RseqConfig>,
        base: u64,
    ) -> Result<(Batch<'m>, Batch<'m>), RestoreError> {
        let mut b1 = Batch::new(base);
        if let Some(c) = rseq_now {
            let args = [
                c.abi_pointer,
                u64::from(c.abi_size),
                RSEQ_FLAG_UNREGISTER,
                u64::from(c.signature),
            ];
            b1.call("rseq(unregister)", libc::SYS_rseq, &args, 0);
        }
        self.close_fds(&mut b1);
        // Address space: keep the gadget and the vDSO, move the vDSO.
        let mut keep: Vec<(u64, u64)> = here.areas.iter().map(|(_, s, e)| (*s, *e)).collect();
        keep.push((self.gadget, self.gadget + self.gadget_len.max(PAGE)));
        for (s, e) in complement(&keep) {
            b1.call(Step::Addr("munmap", s), libc::SYS_munmap, &[s, e - s], 0);
        }
        self.move_vdso(&mut b1, maps, here)?;
        self.map_image(&mut b1);
        self.reopen_fds(&mut b1);
        self.park_userfaultfd(&mut b1);
        Ok((b1, self.batch2(base)))
    }

    /// Closes every descriptor of the target but the inherited ones (and a mapped
    /// restore's memfd).
    fn close_fds(&self, b: &mut Batch<'m>) {
        let meta = self.meta;
        let mut keep: Vec<i32> = meta.inherited_fds();
        keep.extend(self.mapped_fd);
        keep.sort_unstable();
        let mut next = 0i64;
        for k in keep.iter().map(|&k| i64::from(k)) {
            if k > next {
                b.call(
                    "close_range",
                    libc::SYS_close_range,
                    &[next as u64, (k - 1) as u64, 0],
                    0,
                );
            }
            next = k + 1;
        }
        b.call(
            "close_range",
            libc::SYS_close_range,
            &[next as u64, u32::MAX as u64, 0],
            0,
        );
    }

    /// Maps every VMA: each mapped file opened, `fstat`ed (checked after the batch), its
    /// VMAs mapped, the executable parked for PR_SET_MM_MAP, closed; then the anonymous VMAs;
    /// for a mapped restore, the stored runs from the image's memfd over them.
    fn map_image(&mut self, b: &mut Batch<'m>) {
        let meta = self.meta;
        let mapped = self.mapped_files();
        let mut stat_at = vec![None; meta.files.len()];
        for (k, f) in meta.files.iter().enumerate() {
            if !mapped[k] {
                continue;
            }
            let path = b.cstr(&f.path);
            let open = [
                libc::AT_FDCWD as u64,
                path,
                (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
            ];
            b.call(
                Step::Path("open", &f.path),
                libc::SYS_openat,
                &open,
                SAVE_RESULT,
            );
            let (buf, off) = b.out(size_of::<libc::stat>());
            stat_at[k] = Some(off);
            b.call(
                Step::Path("fstat", &f.path),
                libc::SYS_fstat,
                &[0, buf],
                ARG0_FROM_SAVED,
            );
            for (i, v) in meta.vmas.iter().enumerate() {
                if matches!(v.kind, VmaKind::File { file, .. } if file as usize == k) {
                    self.mmap(b, i, ARG4_FROM_SAVED);
                }
            }
            if k == meta.mm.exe as usize {
                let args = [0, self.exe_fd() as u64, libc::O_CLOEXEC as u64];
                b.call(
                    Step::Path("dup3", &f.path),
                    libc::SYS_dup3,
                    &args,
                    ARG0_FROM_SAVED,
                );
            }
            b.call(
                Step::Path("close", &f.path),
                libc::SYS_close,
                &[0],
                ARG0_FROM_SAVED,
            );
        }
        for (i, v) in meta.vmas.iter().enumerate() {
            if !matches!(v.kind, VmaKind::File { .. }) {
                self.mmap(b, i, 0);
            }
        }
        if let Some(fd) = self.mapped_fd {
            // Each stored run of a VMA that shares pages becomes a private mapping of the
            // image's memfd, at the offset equal to its address (adjacent runs merge into
            // one VMA): shared until written. Its page table is filled now (the memfd holds
            // every page), so only what the process discards or grows later faults to the
            // page server.
            for r in &meta.pages.runs {
                let Some(v) = meta
                    .vmas
                    .iter()
                    .find(|v| v.start <= r.addr && r.addr < v.end)
                else {
                    continue;
                };
                if !v.shares_pages() {
                    continue;
                }
                let len = u64::from(r.pages) * PAGE;
                // Readable until batch 2 sets the final protection: MADV_POPULATE_READ
                // refuses (EINVAL) an area without read access (a PROT_NONE one).
                let prot = (v.prot | libc::PROT_READ | libc::PROT_WRITE) as u64;
                let flags = (libc::MAP_PRIVATE | libc::MAP_FIXED) as u64;
                let args = [r.addr, len, prot, flags, fd as u64, r.addr];
                b.call(
                    Step::Addr("mmap image pages", r.addr),
                    libc::SYS_mmap,
                    &args,
                    0,
                );
                let populate = [r.addr, len, libc::MADV_POPULATE_READ as u64];
                b.call(
                    Step::Addr("madvise(MADV_POPULATE_READ)", r.addr),
                    libc::SYS_madvise,
                    &populate,
                    0,
                );
            }
        }
        self.stat_offsets = stat_at;
    }

    /// Files the image held open, reopened with their flags (status flags, `O_PATH`,
    /// `O_DIRECTORY`) and parked above the executable, once per open file description.
    fn reopen_fds(&mut self, b: &mut Batch<'m>) {
        let meta = self.meta;
        self.fd_files.clear();
        self.parked = 0;
        for f in &meta.fds {
            if let FdKind::Dup { of } = f.kind {
                // `validate` made sure `of` is an earlier File descriptor.
                if let Some(first) = self.fd_files.iter().find(|p| p.fd == of).copied() {
                    self.fd_files.push(FdPlace {
                        fd: f.fd,
                        cloexec: f.cloexec,
                        pos: None,
                        at: first.at,
                    });
                }
                continue;
            }
            if let FdKind::File { file, pos, flags } = f.kind {
                let Some(fid) = meta.files.get(file as usize) else {
                    continue;
                };
                let at = self.exe_fd() + 1 + self.parked;
                self.parked += 1;
                let path = b.cstr(&fid.path);
                let open = [
                    libc::AT_FDCWD as u64,
                    path,
                    u64::from(flags) | libc::O_CLOEXEC as u64,
                ];
                b.call(
                    Step::Path("open", &fid.path),
                    libc::SYS_openat,
                    &open,
                    SAVE_RESULT,
                );
                let dup = [0, at as u64, libc::O_CLOEXEC as u64];
                b.call(
                    Step::Fd("dup3", f.fd),
                    libc::SYS_dup3,
                    &dup,
                    ARG0_FROM_SAVED,
                );
                b.call(
                    Step::Fd("close", f.fd),
                    libc::SYS_close,
                    &[0],
                    ARG0_FROM_SAVED,
                );
                self.fd_files.push(FdPlace {
                    fd: f.fd,
                    cloexec: f.cloexec,
                    pos: Some(pos),
                    at,
                });
            }
        }
    }

    /// A userfaultfd of the target's, parked at a known number for the agent to take:
    /// UFFDIO_COPY fills fresh pages without zeroing them first. Optional: without it the
    /// fill writes through process_vm_writev.
    fn park_userfaultfd(&self, b: &mut Batch<'m>) {
        let uffd = self.uffd_fd() as u64;
        let soft = ALLOW_ERROR;
        let uflags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64;
        b.call(
            "userfaultfd",
            libc::SYS_userfaultfd,
            &[uflags],
            SAVE_RESULT | soft,
        );
        let dup = [0, uffd, libc::O_CLOEXEC as u64];
        b.call(
            "dup3 userfaultfd",
            libc::SYS_dup3,
            &dup,
            ARG0_FROM_SAVED | soft,
        );
        b.call(
            "close userfaultfd",
            libc::SYS_close,
            &[0],
            ARG0_FROM_SAVED | soft,
        );
    }

    /// One `mmap` of VMA `i` at its address; writable until filled when it holds pages.
    fn mmap(&self, b: &mut Batch<'m>, i: usize, flags: u64) {
        let v = &self.meta.vmas[i];
        let mut prot = v.prot as u64;
        if self.filled[i] {
            prot |= libc::PROT_WRITE as u64;
        }
        let mut mflags = libc::MAP_FIXED_NOREPLACE as u64;
        mflags |= if v.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u64;
        if v.flags & vma_flags::GROWSDOWN != 0 {
            mflags |= libc::MAP_GROWSDOWN as u64;
        }
        if v.flags & vma_flags::NORESERVE != 0 {
            mflags |= libc::MAP_NORESERVE as u64;
        }
        let (fd, off) = match v.kind {
            VmaKind::File { offset, .. } => (0, offset),
            VmaKind::Stack => {
                mflags |= (libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN) as u64;
                (u64::MAX, 0)
            }
            VmaKind::Anon | VmaKind::Heap => {
                mflags |= libc::MAP_ANONYMOUS as u64;
                (u64::MAX, 0)
            }
        };
        let args = [v.start, v.len(), prot, mflags, fd, off];
        b.call(Step::Addr("mmap", v.start), libc::SYS_mmap, &args, flags);
    }

    /// What the process set on its areas beyond protections: `madvise` advice, `mlock`,
    /// anonymous area names (`MAP_GROWSDOWN` and `MAP_NORESERVE` went with the `mmap`).
    fn vma_state(&self, b2: &mut Batch<'m>) {
        for v in &self.meta.vmas {
            for (flag, advice) in ADVICE {
                if v.flags & flag != 0 {
                    let args = [v.start, v.len(), advice as u64];
                    b2.call(Step::Addr("madvise", v.start), libc::SYS_madvise, &args, 0);
                }
            }
            if v.flags & vma_flags::LOCKED != 0 {
                let args = [v.start, v.len()];
                b2.call(Step::Addr("mlock", v.start), libc::SYS_mlock, &args, 0);
            }
            if let Some(name) = &v.name {
                let at = b2.cstr(name);
                let args = [PR_SET_VMA, PR_SET_VMA_ANON_NAME, v.start, v.len(), at];
                b2.call(
                    Step::Addr("prctl(PR_SET_VMA_ANON_NAME)", v.start),
                    libc::SYS_prctl,
                    &args,
                    0,
                );
            }
        }
    }

    /// `PR_SET_MM_MAP`: the mm fields, auxv and executable (after the unmap: EBUSY while the
    /// old executable is mapped).
    fn set_mm(&self, b2: &mut Batch<'m>) {
        let m = &self.meta.mm;
        let mut auxv = Vec::new();
        for w in &m.auxv {
            auxv.extend_from_slice(&w.to_ne_bytes());
        }
        let auxv_at = b2.data(&auxv);
        let mut map = Vec::new();
        for w in [
            m.start_code,
            m.end_code,
            m.start_data,
            m.end_data,
            m.start_brk,
            m.brk,
            m.start_stack,
            m.arg_start,
            m.arg_end,
            m.env_start,
            m.env_end,
            auxv_at,
        ] {
            map.extend_from_slice(&w.to_ne_bytes());
        }
        map.extend_from_slice(&(auxv.len() as u32).to_ne_bytes());
        map.extend_from_slice(&(self.exe_fd() as u32).to_ne_bytes());
        let map_at = b2.data(&map);
        let args = [PR_SET_MM, PR_SET_MM_MAP, map_at, map.len() as u64];
        b2.call("prctl(PR_SET_MM_MAP)", libc::SYS_prctl, &args, 0);
    }

    fn batch2(&self, base: u64) -> Batch<'m> {
        let meta = self.meta;
        let mut b2 = Batch::new(base);
        for (i, v) in meta.vmas.iter().enumerate() {
            if self.filled[i] && v.prot & libc::PROT_WRITE == 0 {
                let args = [v.start, v.len(), v.prot as u64];
                b2.call(
                    Step::Addr("mprotect", v.start),
                    libc::SYS_mprotect,
                    &args,
                    0,
                );
            }
        }
        self.vma_state(&mut b2);
        self.set_mm(&mut b2);
        for p in &self.fd_files {
            let fl = if p.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            b2.call(
                Step::Fd("dup3", p.fd),
                libc::SYS_dup3,
                &[p.at as u64, p.fd as u64, fl],
                0,
            );
            // A position is put back exactly (a directory's too), or the restore fails;
            // a descriptor at 0 (an O_PATH one has no position to seek) is left.
            if let Some(pos) = p.pos.filter(|&pos| pos != 0) {
                let seek = [p.fd as u64, pos, libc::SEEK_SET as u64];
                b2.call(Step::Fd("lseek", p.fd), libc::SYS_lseek, &seek, 0);
            }
        }
        for f in &meta.fds {
            if matches!(f.kind, FdKind::Inherited { .. }) {
                let v = if f.cloexec { libc::FD_CLOEXEC } else { 0 } as u64;
                let args = [f.fd as u64, libc::F_SETFD as u64, v];
                b2.call(Step::Fd("fcntl(F_SETFD)", f.fd), libc::SYS_fcntl, &args, 0);
            }
        }
        let parked = [self.exe_fd() as u64, self.uffd_fd() as u64, 0];
        b2.call("close_range(parked)", libc::SYS_close_range, &parked, 0);
        if let Some(fd) = self.mapped_fd {
            b2.call("close(image memfd)", libc::SYS_close, &[fd as u64], 0);
        }
        for sig in 1..=64u64 {
            if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
                continue;
            }
            let a = meta
                .task
                .sigactions
                .iter()
                .find(|a| u64::from(a.sig) == sig);
            let words = match a {
                Some(a) => [a.handler, a.flags, a.restorer, a.mask],
                None => [libc::SIG_DFL as u64, 0, 0, 0],
            };
            let mut raw = Vec::new();
            for w in words {
                raw.extend_from_slice(&w.to_ne_bytes());
            }
            let at = b2.data(&raw);
            b2.call(
                Step::Addr("rt_sigaction", sig),
                libc::SYS_rt_sigaction,
                &[sig, at, 0, 8],
                0,
            );
        }
        let ss = meta.task.sigaltstack;
        let mut raw = Vec::new();
        raw.extend_from_slice(&ss.sp.to_ne_bytes());
        raw.extend_from_slice(&(ss.flags as u64 & !(libc::SS_ONSTACK as u64)).to_ne_bytes());
        raw.extend_from_slice(&ss.size.to_ne_bytes());
        let at = b2.data(&raw);
        b2.call("sigaltstack", libc::SYS_sigaltstack, &[at, 0], 0);
        let (head, len) = meta.task.robust_list;
        if head != 0 {
            b2.call(
                "set_robust_list",
                libc::SYS_set_robust_list,
                &[head, len],
                0,
            );
        }
        let tid = [meta.task.tid_address];
        b2.call("set_tid_address", libc::SYS_set_tid_address, &tid, 0);
        if let Some(r) = meta.task.rseq {
            let args = [r.addr, u64::from(r.len), 0, u64::from(r.sig)];
            b2.call("rseq(register)", libc::SYS_rseq, &args, 0);
        }
        b2.call("umask", libc::SYS_umask, &[u64::from(meta.task.umask)], 0);
        let cwd = b2.cstr(&meta.task.cwd);
        b2.call(
            Step::Path("chdir", &meta.task.cwd),
            libc::SYS_chdir,
            &[cwd],
            0,
        );
        let pers = [u64::from(meta.task.personality)];
        b2.call("personality", libc::SYS_personality, &pers, 0);
        let comm = b2.cstr(&meta.task.comm);
        b2.call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            &[libc::PR_SET_NAME as u64, comm],
            0,
        );
        let st = &meta.process;
        state::apply::timers_and_signals(&mut b2, st, self.tid);
        match self.handoff {
            Some(h) => {
                // The sandbox decides what the instance may set: its credentials first,
                // then the image's values, bounded by the target's (`Bounds`).
                handoff_credentials(&mut b2, h, crate::creds::last_cap());
                state::apply::limits_and_sched(&mut b2, st, &self.bounds);
                state::apply::after_credentials(&mut b2, st, h.die_with_parent);
                handoff_confine(&mut b2, h);
                state::apply::filters(&mut b2, st, &h.seccomp);
            }
            None if self.template => {
                // Still as root: the limits (bounded by the template's own, as a
                // sandbox's) and scheduling the fork children inherit. No credentials,
                // filters (refused for templates) or prctl values a credential change
                // resets: each child applies them (template.rs).
                state::apply::limits_and_sched(&mut b2, st, &self.bounds);
            }
            None => {
                // Filters first, while the target is still privileged (installing one
                // needs CAP_SYS_ADMIN or no_new_privs, which a process may lack that got
                // its filter before dropping privileges); the seize suspends seccomp, so
                // the steps after them pass whatever they allow. Then what needs
                // privilege to set (a negative nice value, a real-time policy or I/O
                // class, a raised hard limit), still as root; the image's credentials;
                // last what a credential change resets.
                state::apply::filters(&mut b2, st, &[]);
                state::apply::limits_and_sched(&mut b2, st, &self.bounds);
                crate::creds::restore_calls(&mut b2, &meta.task.creds, crate::creds::last_cap());
                state::apply::after_credentials(&mut b2, st, false);
            }
        }
        b2
    }

    /// Moves the target's vDSO areas to the image's addresses, all by one offset; through a
    /// free spot first when the old and new places overlap.
    fn move_vdso(
        &self,
        b: &mut Batch<'m>,
        maps: &[MapEntry],
        here: &VdsoLayout,
    ) -> Result<(), RestoreError> {
        let want = &self.meta.requires.vdso.areas;
        let (Some(first_here), Some(first_want)) = (here.areas.first(), want.first()) else {
            return Ok(());
        };
        if first_here.1 == first_want.1 {
            return Ok(());
        }
        let lo = |v: &[(String, u64, u64)]| v.first().map(|a| a.1).unwrap_or(0);
        let hi = |v: &[(String, u64, u64)]| v.last().map(|a| a.2).unwrap_or(0);
        let (hl, hh, wl, wh) = (lo(&here.areas), hi(&here.areas), lo(want), hi(want));
        let mut from: Vec<(u64, u64)> = here.areas.iter().map(|(_, s, e)| (*s, *e)).collect();
        if hl < wh && wl < hh {
            let mut occupied: Vec<(u64, u64)> = maps.iter().map(|m| (m.start, m.end)).collect();
            occupied.extend(self.meta.vmas.iter().map(|v| (v.start, v.end)));
            occupied.push((wl, wh));
            occupied.push((self.gadget, self.gadget + self.gadget_len.max(PAGE)));
            let tmp = find_gap(&occupied, hh - hl, GAP_SEARCH_FROM).ok_or(RestoreError::NoGap {
                image: self.image.clone(),
                size: hh - hl,
            })?;
            for (s, e) in &from {
                b.call(
                    "mremap vdso (aside)",
                    libc::SYS_mremap,
                    &[
                        *s,
                        e - s,
                        e - s,
                        MREMAP_MAYMOVE | MREMAP_FIXED,
                        tmp + (s - hl),
                    ],
                    0,
                );
            }
            from = from
                .iter()
                .map(|(s, e)| (tmp + (s - hl), tmp + (e - hl)))
                .collect();
        }
        let base = from.first().map(|a| a.0).unwrap_or(0);
        for (s, e) in from {
            b.call(
                "mremap vdso",
                libc::SYS_mremap,
                &[
                    s,
                    e - s,
                    e - s,
                    MREMAP_MAYMOVE | MREMAP_FIXED,
                    wl + (s - base),
                ],
                0,
            );
        }
        Ok(())
    }

    /// Each file the target opened must be the one checked (no swap between check and open).
    /// Where batch 1 parks the executable (for PR_SET_MM_MAP).
    pub(super) fn exe_fd(&self) -> i32 {
        self.high
    }

    /// Where batch 1 parks the target's userfaultfd (above the executable and the reopened
    /// files; batch 2 closes all of them).
    pub(super) fn uffd_fd(&self) -> i32 {
        self.high + 1 + self.parked
    }
}

/// Become the instance's user with no capability left in any set (before the image's
/// limits and prctl values, which the kernel then judges for that user, and which a
/// credential change would reset): the bounding set emptied while CAP_SETPCAP is held
/// (a sandbox's first process and a template are root with all of it), ambient cleared,
/// securebits 0 so that the setresuid clears the permitted and effective sets, and a
/// `capset` the inheritable one.
pub(crate) fn handoff_credentials(b: &mut Batch<'_>, h: &Handoff, last_cap: u32) {
    for cap in 0..=last_cap.min(63) {
        let args = [libc::PR_CAPBSET_DROP as u64, u64::from(cap)];
        b.call("prctl(PR_CAPBSET_DROP)", libc::SYS_prctl, &args, 0);
    }
    let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as u64;
    let args = [libc::PR_CAP_AMBIENT as u64, clear, 0, 0, 0];
    b.call("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", libc::SYS_prctl, &args, 0);
    let args = [libc::PR_SET_SECUREBITS as u64, 0];
    b.call("prctl(PR_SET_SECUREBITS)", libc::SYS_prctl, &args, 0);
    let (uid, gid) = (u64::from(h.uid), u64::from(h.gid));
    b.call("setgroups", libc::SYS_setgroups, &[0, 0], 0);
    b.call("setresgid", libc::SYS_setresgid, &[gid, gid, gid], 0);
    b.call("setresuid", libc::SYS_setresuid, &[uid, uid, uid], 0);
    crate::creds::clear_calls(b);
}

/// Tie the instance's life to its parent's (this wins over the image's death signal) and
/// install the sandbox's seccomp filter, before the image's own filters.
pub(crate) fn handoff_confine(b: &mut Batch<'_>, h: &Handoff) {
    if h.die_with_parent {
        let args = [libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64];
        b.call("prctl(PR_SET_PDEATHSIG)", libc::SYS_prctl, &args, 0);
    }
    let nnp = [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0];
    b.call("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, &nnp, 0);
    if !h.seccomp.is_empty() {
        let mut code = Vec::with_capacity(h.seccomp.len() * 8);
        for f in &h.seccomp {
            code.extend_from_slice(&f.code.to_ne_bytes());
            code.push(f.jt);
            code.push(f.jf);
            code.extend_from_slice(&f.k.to_ne_bytes());
        }
        let at = b.data(&code);
        // struct sock_fprog: unsigned short len; (padding); struct sock_filter *filter.
        let mut prog = Vec::with_capacity(16);
        prog.extend_from_slice(&(h.seccomp.len() as u64).to_ne_bytes());
        prog.extend_from_slice(&at.to_ne_bytes());
        let prog = b.data(&prog);
        let args = [libc::SECCOMP_SET_MODE_FILTER as u64, 0, prog];
        b.call("seccomp(SET_MODE_FILTER)", libc::SYS_seccomp, &args, 0);
    }
}

#[cfg(test)]
mod tests;
