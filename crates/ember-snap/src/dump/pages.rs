//! The pages a dump stores: pagemap says which are there; a lazily restored process's
//! pages not yet installed come from its page server (or through it); a layer keeps only
//! what differs from its parent.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::*;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// The pages a dump read.
pub(super) struct ReadPages {
    /// The stored pages, in page-file order.
    pub(super) data: Vec<u8>,
    pub(super) runs: Vec<PageRun>,
    pub(super) zero: u64,
    pub(super) parent_pages: u64,
    pub(super) faulted_in: u64,
}

/// A page of zeros to compare pages with: a slice comparison is one `memcmp`, fast in a
/// debug build too (a byte-by-byte scan of a 256 MiB sparse area took ~1.7 s there).
static ZERO_PAGE: [u8; PAGE as usize] = [0; PAGE as usize];

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
pub(super) fn read_pages(
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
            if page == &ZERO_PAGE[..page.len()] {
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
