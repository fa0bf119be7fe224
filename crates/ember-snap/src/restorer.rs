//! The restorer blob: a few instructions copied into the tracee that run a whole list of
//! syscalls per ptrace stop, so a restore costs a handful of round trips instead of one per
//! VMA (an injected syscall costs 10-15 us here; a numpy image has ~175 VMAs).
//!
//! It is written here, in assembly, because it runs inside a process whose memory is being
//! replaced: it may touch nothing but its own page and its batch. The agent lays a batch out
//! in the tracee as
//!
//! ```text
//!   gadget page:   [ blob code ............................................ ]
//!   batch area:    [ data: paths, structs, out-buffers ][ Entry 0 ][ Entry 1 ] ... [ END ]
//!                                                        ^ rbx
//! Entry (72 bytes): nr | a0 a1 a2 a3 a4 a5 | flags | result
//! ```
//!
//! The blob runs entries in order, writes each result back, and stops with `int3` at the end
//! marker or at the first failing entry not flagged [`ALLOW_ERROR`]; `rbx` then points at that
//! entry. [`SAVE_RESULT`] keeps an entry's result in `r12`, and [`ARG0_FROM_SAVED`] and
//! [`ARG4_FROM_SAVED`] pass it as a later entry's first or fifth argument (open a file, then
//! `fstat`, `mmap` and `close` it).

use std::mem::size_of;

/// A failing result does not stop the batch.
pub const ALLOW_ERROR: u64 = 1;
/// Keep the result in `r12` for later entries.
pub const SAVE_RESULT: u64 = 2;
/// Replace the first argument by the saved result.
pub const ARG0_FROM_SAVED: u64 = 4;
/// Replace the fifth argument (`mmap`'s descriptor) by the saved result.
pub const ARG4_FROM_SAVED: u64 = 8;
/// `nr` of the end marker.
pub const END: u64 = u64::MAX;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry {
    pub nr: u64,
    pub args: [u64; 6],
    pub flags: u64,
    pub result: u64,
}
pub const ENTRY_SIZE: usize = 72;
const _: () = assert!(size_of::<Entry>() == ENTRY_SIZE);

std::arch::global_asm!(
    ".pushsection .text.ember_restorer,\"ax\",@progbits",
    ".balign 16",
    ".globl ember_restorer_start",
    "ember_restorer_start:",
    ".Lember_next:",
    "    mov rax, qword ptr [rbx]",
    "    cmp rax, -1",
    "    je .Lember_stop",
    "    mov rdi, qword ptr [rbx + 8]",
    "    test qword ptr [rbx + 56], 4",
    "    jz .Lember_args",
    "    mov rdi, r12",
    ".Lember_args:",
    "    mov rsi, qword ptr [rbx + 16]",
    "    mov rdx, qword ptr [rbx + 24]",
    "    mov r10, qword ptr [rbx + 32]",
    "    mov r8, qword ptr [rbx + 40]",
    "    test qword ptr [rbx + 56], 8",
    "    jz .Lember_arg5",
    "    mov r8, r12",
    ".Lember_arg5:",
    "    mov r9, qword ptr [rbx + 48]",
    "    syscall",
    "    mov qword ptr [rbx + 64], rax",
    "    test qword ptr [rbx + 56], 2",
    "    jz .Lember_check",
    "    mov r12, rax",
    ".Lember_check:",
    "    cmp rax, -4095",
    "    jb .Lember_ok",
    "    test qword ptr [rbx + 56], 1",
    "    jz .Lember_stop",
    ".Lember_ok:",
    "    add rbx, 72",
    "    jmp .Lember_next",
    ".Lember_stop:",
    "    int3",
    ".globl ember_restorer_end",
    "ember_restorer_end:",
    ".popsection",
);

// SAFETY: both symbols are defined by the `global_asm!` above, in a readable text section.
unsafe extern "C" {
    static ember_restorer_start: u8;
    static ember_restorer_end: u8;
}

/// The blob's machine code (position-independent: only relative jumps).
pub fn code() -> &'static [u8] {
    let start = &raw const ember_restorer_start;
    let end = &raw const ember_restorer_end;
    // SAFETY: the two symbols delimit the blob's bytes in our own text section, which is
    // mapped readable for the life of the process.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// What one entry does, for error messages; rendered only when one fails.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    Call(&'static str),
    Path(&'static str, &'a str),
    Addr(&'static str, u64),
    Fd(&'static str, i32),
}

impl std::fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Call(s) => write!(f, "{s}"),
            Step::Path(s, p) => write!(f, "{s} {p}"),
            Step::Addr(s, a) => write!(f, "{s} at {a:#x}"),
            Step::Fd(s, n) => write!(f, "{s} of fd {n}"),
        }
    }
}

impl From<&'static str> for Step<'_> {
    fn from(s: &'static str) -> Self {
        Step::Call(s)
    }
}

/// A batch being laid out for the tracee at `base` (the start of the batch area).
pub struct Batch<'a> {
    base: u64,
    data: Vec<u8>,
    entries: Vec<Entry>,
    steps: Vec<Step<'a>>,
}

impl<'a> Batch<'a> {
    pub fn new(base: u64) -> Batch<'a> {
        Batch {
            base,
            data: Vec::new(),
            entries: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// Copies `bytes` into the data area; returns their address in the tracee.
    pub fn data(&mut self, bytes: &[u8]) -> u64 {
        while !self.data.len().is_multiple_of(8) {
            self.data.push(0);
        }
        let at = self.base + self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        at
    }

    /// A NUL-terminated copy of `s`.
    pub fn cstr(&mut self, s: &str) -> u64 {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.data(&v)
    }

    /// `len` zero bytes for the kernel to fill; returns (address, offset in the data area).
    pub fn out(&mut self, len: usize) -> (u64, usize) {
        let at = self.data(&vec![0; len]);
        (at, (at - self.base) as usize)
    }

    pub fn call(&mut self, step: impl Into<Step<'a>>, nr: i64, args: &[u64], flags: u64) {
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        self.entries.push(Entry {
            nr: nr as u64,
            args: a,
            flags,
            result: 0,
        });
        self.steps.push(step.into());
    }

    /// Where the batch starts in the tracee.
    pub fn base(&self) -> u64 {
        self.base
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn entries_offset(&self) -> usize {
        self.data.len().next_multiple_of(8)
    }

    /// Address of the first entry (what `rbx` starts at).
    pub fn entries_addr(&self) -> u64 {
        self.base + self.entries_offset() as u64
    }

    /// Bytes the batch occupies in the tracee.
    pub fn size(&self) -> usize {
        self.entries_offset() + (self.entries.len() + 1) * ENTRY_SIZE
    }

    /// The batch as it is written to the tracee: data, entries, end marker.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.data.clone();
        out.resize(self.entries_offset(), 0);
        for e in self.entries.iter().chain(std::iter::once(&Entry {
            nr: END,
            ..Entry::default()
        })) {
            out.extend_from_slice(&e.nr.to_ne_bytes());
            for a in e.args {
                out.extend_from_slice(&a.to_ne_bytes());
            }
            out.extend_from_slice(&e.flags.to_ne_bytes());
            out.extend_from_slice(&e.result.to_ne_bytes());
        }
        out
    }

    /// Reads the results out of the batch area as read back from the tracee.
    pub fn results(&self, area: &[u8]) -> Vec<i64> {
        let off = self.entries_offset();
        (0..self.entries.len())
            .map(|i| {
                let at = off + i * ENTRY_SIZE + 64;
                area.get(at..at + 8)
                    .map(|b| i64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0)
            })
            .collect()
    }

    pub fn step(&self, i: usize) -> String {
        self.steps
            .get(i)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "end".into())
    }

    /// Index of the entry `rbx` points at.
    pub fn index_of(&self, rbx: u64) -> Option<usize> {
        let first = self.entries_addr();
        if rbx < first {
            return None;
        }
        Some(((rbx - first) / ENTRY_SIZE as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_is_small_and_ends_in_int3() {
        let c = code();
        assert!(!c.is_empty() && c.len() < 256, "blob is {} bytes", c.len());
        assert_eq!(*c.last().unwrap(), 0xcc);
        // The one syscall instruction of the loop.
        assert!(c.windows(2).any(|w| w == [0x0f, 0x05]));
    }

    #[test]
    fn layout_puts_entries_after_aligned_data_and_ends_with_marker() {
        let mut b = Batch::new(0x1000);
        let p = b.cstr("/x");
        assert_eq!(p, 0x1000);
        let (o, off) = b.out(5);
        assert_eq!((o, off), (0x1008, 8));
        b.call("munmap", libc::SYS_munmap, &[1, 2], ALLOW_ERROR);
        assert_eq!(b.entries_addr(), 0x1010);
        let bytes = b.bytes();
        assert_eq!(bytes.len(), b.size());
        assert_eq!(bytes.len(), 16 + 2 * ENTRY_SIZE);
        let end = &bytes[16 + ENTRY_SIZE..16 + ENTRY_SIZE + 8];
        assert_eq!(end, &u64::MAX.to_ne_bytes());
        assert_eq!(b.index_of(0x1010 + ENTRY_SIZE as u64), Some(1));
        assert_eq!(b.step(0), "munmap");
    }
}
