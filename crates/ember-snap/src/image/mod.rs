//! What an image holds. The on-disk layout is in [`format`]; file identities in [`files`].
//!
//! Everything here is plain data encoded with postcard (a stable, documented wire format:
//! <https://postcard.jamesmunns.com/wire-format>); field order is part of the format, so a
//! change here bumps [`format::FORMAT_VERSION`].

pub mod describe;
pub mod files;
pub mod format;
mod loaded;
pub mod pack;
pub(crate) mod validate;

use serde::{Deserialize, Serialize};

pub use describe::describe;
pub use files::{FileId, Ident};
pub use format::{
    ImageError, LoadedImage, read_meta, read_working_set, write_image, write_working_set,
};
pub use loaded::LayerPages;

pub const PAGE: u64 = 4096;

/// The whole metadata of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// Random id, also written in the page file's header: the two files belong together.
    pub id: [u8; 16],
    /// Unix seconds when the dump was taken.
    pub created: u64,
    /// The image this one is a layer over: then [`PageIndex::runs`] may also point past the
    /// stored pages, into the parent's page index space (see [`ParentRef`]).
    pub parent: Option<ParentRef>,
    pub source: Source,
    pub requires: Requires,
    /// Every file the image maps or holds open, referenced by index.
    pub files: Vec<FileId>,
    pub vmas: Vec<Vma>,
    pub pages: PageIndex,
    pub task: Task,
    pub mm: MmFields,
    pub fds: Vec<Fd>,
    pub process: ProcState,
}

/// The parent of a layered image. A layer stores only the pages that differ from its
/// parent's; its page index space is its own stored pages (`0..pages.count`), then the
/// parent's whole index space (`pages.count..pages.count + space`), recursively: a run may
/// point into either. Everything else (VMAs, registers, descriptors) is the layer's own.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ParentRef {
    /// The parent's [`Meta::id`].
    pub id: [u8; 16],
    /// BLAKE3 of the parent's metadata (as in its `meta` file header): the parent must be
    /// exactly the image the layer was taken over.
    pub meta_hash: [u8; 32],
    /// Size of the parent's page index space (its stored pages plus its parent's space).
    pub space: u64,
    /// Where the parent was at dump time: an absolute path, or one relative to the layer's
    /// directory. A hint: the id and hash decide.
    pub path: String,
}

/// Where the image came from (for people; restore does not depend on it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub pid: i32,
    pub comm: String,
    pub exe: String,
    pub kernel: String,
}

/// What the machine restoring the image must offer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Requires {
    /// Sizes of `[vvar]`, `[vvar_vclock]`, `[vdso]` and the vDSO's BLAKE3 hash: glibc keeps
    /// absolute pointers into the vDSO, so only the same vDSO code can be moved under it.
    pub vdso: VdsoLayout,
    /// XCR0 features the XSAVE area uses, and its size.
    pub xfeatures: u64,
    pub xstate_size: u32,
    /// CPU features glibc and libraries may have chosen code paths for at start.
    pub cpu_features: Vec<String>,
}

/// (name, start, end) of one vDSO area.
pub type VdsoArea = (String, u64, u64);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VdsoLayout {
    /// Each vDSO area, in address order.
    pub areas: Vec<VdsoArea>,
    pub vdso_hash: [u8; 32],
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum VmaKind {
    Anon,
    Heap,
    Stack,
    /// A file mapping: index into [`Meta::files`], offset in the file.
    File {
        file: u32,
        offset: u64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub prot: i32,
    pub shared: bool,
    pub kind: VmaKind,
    /// What the process set on the area beyond its protection ([`vma_flags`]: `MAP_GROWSDOWN`,
    /// `mlock`, `madvise` advice), from the `VmFlags` of `/proc/PID/smaps`.
    pub flags: u32,
    /// The name an anonymous area was given with `PR_SET_VMA_ANON_NAME` (`[anon:NAME]`).
    pub name: Option<String>,
}

/// The area flags an image records, each restored by the `mmap` flag or call named.
pub mod vma_flags {
    /// `gd`: `MAP_GROWSDOWN`.
    pub const GROWSDOWN: u32 = 1 << 0;
    /// `lo`: `mlock`.
    pub const LOCKED: u32 = 1 << 1;
    /// `dc`: `MADV_DONTFORK`.
    pub const DONTFORK: u32 = 1 << 2;
    /// `dd`: `MADV_DONTDUMP`.
    pub const DONTDUMP: u32 = 1 << 3;
    /// `hg`: `MADV_HUGEPAGE`.
    pub const HUGEPAGE: u32 = 1 << 4;
    /// `nh`: `MADV_NOHUGEPAGE`.
    pub const NOHUGEPAGE: u32 = 1 << 5;
    /// `wf`: `MADV_WIPEONFORK` (private anonymous memory only).
    pub const WIPEONFORK: u32 = 1 << 6;
    /// `sr`: `MADV_SEQUENTIAL`.
    pub const SEQ_READ: u32 = 1 << 7;
    /// `rr`: `MADV_RANDOM`.
    pub const RAND_READ: u32 = 1 << 8;
    /// `nr`: `MAP_NORESERVE`.
    pub const NORESERVE: u32 = 1 << 9;
    /// `mg`: `MADV_MERGEABLE` (KSM).
    pub const MERGEABLE: u32 = 1 << 10;
    pub const ALL: u32 = (1 << 11) - 1;

    /// (smaps code, flag).
    pub const CODES: [(&str, u32); 11] = [
        ("gd", GROWSDOWN),
        ("lo", LOCKED),
        ("dc", DONTFORK),
        ("dd", DONTDUMP),
        ("hg", HUGEPAGE),
        ("nh", NOHUGEPAGE),
        ("wf", WIPEONFORK),
        ("sr", SEQ_READ),
        ("rr", RAND_READ),
        ("nr", NORESERVE),
        ("mg", MERGEABLE),
    ];
}

impl Vma {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// Whether a mapped restore maps this VMA's stored pages from the image's memfd:
    /// private anonymous memory and the heap (a quarter to two fifths of a Python image's
    /// pages; `brk` still grows and shrinks it), but not the stack (one growable area), nor
    /// an area with [`vma_flags`] or a name (a memfd mapping could not carry them: it stays
    /// anonymous memory and its pages are written).
    pub fn shares_pages(&self) -> bool {
        !self.shared
            && matches!(self.kind, VmaKind::Anon | VmaKind::Heap)
            && self.flags == 0
            && self.name.is_none()
    }
}

/// Where each saved page lives in the page file. Pages are stored in runs of consecutive
/// addresses; page `i` of the file is at byte `PAGE * (1 + i)` (the first page is the header).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageIndex {
    pub runs: Vec<PageRun>,
    pub count: u64,
    /// BLAKE3 of each [`format::CHUNK_PAGES`] pages of the file (the last chunk may be short).
    pub chunks: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageRun {
    pub addr: u64,
    pub pages: u32,
    /// Index of the run's first page in the page file.
    pub first: u64,
}

/// The one thread's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Task {
    /// `user_regs_struct` as 27 words.
    pub regs: Vec<u64>,
    pub xstate: Vec<u8>,
    pub sigmask: u64,
    /// Every signal whose `sigaction` is not `SIG_DFL` with no flags, mask or restorer
    /// (ignored and default dispositions keep their flags: `SA_NOCLDWAIT`).
    pub sigactions: Vec<SigAction>,
    pub sigaltstack: AltStack,
    pub tid_address: u64,
    pub robust_list: (u64, u64),
    pub rseq: Option<Rseq>,
    /// Offset from `fs_base` of glibc's cached thread id (`pd->tid`), when it was found there.
    pub glibc_tid_offset: Option<u32>,
    /// Address of a `syscall` instruction in the image's code (the restorer's last step).
    pub syscall_insn: u64,
    pub personality: u32,
    pub umask: u32,
    pub cwd: String,
    pub comm: String,
    /// Ids, groups, capabilities and securebits ([`crate::creds`]).
    pub creds: crate::creds::Creds,
    /// Its thread id in its own pid namespace (the last `NSpid` of its status). A restore
    /// gives it back: glibc's mutexes, robust futex lists and glibc's own cache hold it.
    pub tid: i32,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SigAction {
    pub sig: u8,
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AltStack {
    pub sp: u64,
    pub flags: i32,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rseq {
    pub addr: u64,
    pub len: u32,
    pub sig: u32,
}

/// Process-wide state a restore sets at the end of batch 2 (`crate::state`): limits,
/// scheduling, prctl values, the process's own seccomp filters, queued signals, timers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcState {
    /// (resource, soft, hard) of every `RLIMIT_*`.
    pub rlimits: Vec<(u32, u64, u64)>,
    pub sched: Sched,
    /// CPU affinity as 64-bit mask words; `None` when it was every online CPU (the
    /// restored process then keeps the target's, which a sandbox's cpuset bounds).
    pub affinity: Option<Vec<u64>>,
    pub prctl: Prctl,
    /// The process's seccomp filters, oldest first, each as raw 8-byte `sock_filter`s.
    pub seccomp: Vec<Vec<u64>>,
    /// Queued signals, as raw 128-byte `siginfo_t`s in queue order: the thread's own queue.
    pub pending_thread: Vec<Vec<u8>>,
    /// The process's shared queue.
    pub pending_process: Vec<Vec<u8>>,
    /// `ITIMER_REAL`, `ITIMER_VIRTUAL`, `ITIMER_PROF`, in that order.
    pub itimers: Vec<ITimer>,
    pub timers: Vec<PosixTimer>,
    /// The task's NUMA memory policy (`get_mempolicy`).
    pub mempolicy: MemPolicy,
    /// Memory areas with a NUMA policy of their own (`mbind`; OpenBLAS sets one on its
    /// buffers), each a whole VMA.
    pub area_policies: Vec<AreaPolicy>,
    /// The I/O priority (`ioprio_get(IOPRIO_WHO_PROCESS)`), class and level as one value.
    pub ioprio: u32,
}

/// A NUMA memory policy: the mode with its flags (`MPOL_F_STATIC_NODES`,
/// `MPOL_F_RELATIVE_NODES`, `MPOL_F_NUMA_BALANCING`) ORed in, and the nodes as 64-bit mask
/// words (as the process gave them, for relative and static nodes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemPolicy {
    pub mode: u32,
    pub nodes: Vec<u64>,
}

/// A VMA's own NUMA policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AreaPolicy {
    pub start: u64,
    pub end: u64,
    pub policy: MemPolicy,
}

/// `sched_attr` without the utilisation clamps.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sched {
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prctl {
    pub no_new_privs: bool,
    /// 0 or 1 (2, `suid_dumpable`, is refused at dump: prctl cannot set it).
    pub dumpable: u32,
    pub pdeathsig: u32,
    pub timerslack_ns: u64,
    pub child_subreaper: bool,
    pub thp_disable: bool,
}

/// An interval timer: what is left and the reload, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ITimer {
    pub interval_us: u64,
    pub value_us: u64,
}

/// A POSIX timer (`timer_create`), recreated with the same id.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    pub clock: i32,
    pub signo: i32,
    /// `SIGEV_SIGNAL`, `SIGEV_NONE` or `SIGEV_THREAD_ID` (then aimed at the restored thread).
    pub notify: i32,
    /// `sigev_value`.
    pub value: u64,
    /// Reload and time left (0: disarmed), in nanoseconds.
    pub interval_ns: u64,
    pub value_ns: u64,
}

/// The fields `prctl(PR_SET_MM, PR_SET_MM_MAP)` restores.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MmFields {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
    /// Index into [`Meta::files`] of the executable.
    pub exe: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    pub kind: FdKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum FdKind {
    /// Reopened by path at restore: index into [`Meta::files`], position, `open` flags
    /// (access mode and every status flag, `O_PATH` and `O_DIRECTORY` included).
    File { file: u32, pos: u64, flags: u32 },
    /// Shares the open file description of descriptor `of` (a lower number, of kind
    /// `File`): made by `dup`, `dup2` or inherited across `fork`; restored with `dup3`.
    Dup { of: i32 },
    /// A descriptor the caller declared its own (a protocol pipe, stdio): the restorer's
    /// caller hands one in at this number.
    Inherited { what: String },
}

impl Meta {
    /// The area holding `addr` (areas are sorted and disjoint: checked at load).
    pub fn vma_at(&self, addr: u64) -> Option<&Vma> {
        let i = self.vmas.partition_point(|v| v.end <= addr);
        self.vmas.get(i).filter(|v| v.start <= addr)
    }

    /// Whether a mapped restore maps the page run at `addr` from the image's memfd.
    pub fn shares_run(&self, addr: u64) -> bool {
        self.vma_at(addr).is_some_and(Vma::shares_pages)
    }

    /// Total bytes of address space the image maps.
    pub fn mapped_bytes(&self) -> u64 {
        self.vmas.iter().map(Vma::len).sum()
    }

    /// The descriptors a restore must be handed.
    pub fn inherited_fds(&self) -> Vec<i32> {
        self.fds
            .iter()
            .filter(|f| matches!(f.kind, FdKind::Inherited { .. }))
            .map(|f| f.fd)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::format::tests::sample;

    #[test]
    fn the_area_at_an_address_is_found_by_binary_search() {
        let (meta, _) = sample();
        for v in &meta.vmas {
            assert_eq!(meta.vma_at(v.start), Some(v));
            assert_eq!(meta.vma_at(v.end - 1), Some(v));
        }
        assert_eq!(meta.vma_at(0), None);
        assert_eq!(meta.vma_at(u64::MAX), None);
        let heap = meta.vmas.iter().find(|v| v.kind == super::VmaKind::Heap);
        let heap = heap.expect("the sample has a heap");
        assert!(meta.shares_run(heap.start));
    }
}
