//! The stopper: a tiny static program a restore target is made of; and the init of the
//! pid namespace a target is placed in (`restore::pidns`).
//!
//! Forking the agent to get a target copies the agent's page tables, and the restore then
//! has to tear them down: with a node holding a gigabyte of images that costs milliseconds
//! twice. Instead the target is spawned (`posix_spawn`, which is `vfork` + `exec`) from this
//! program, kept in a sealed memfd: it stops itself at once, with an address space of one
//! code page, a stack and the vDSO.
//!
//! No ELF writer in a maintained crate makes a bare executable from a few bytes of code
//! without a linker, so the two headers are written here:
//!
//! ```text
//! 0    ELF header (64 bytes): ELFCLASS64, little-endian, ET_EXEC, EM_X86_64, entry = BASE + 120
//! 64   one PT_LOAD program header (56 bytes): offset 0, vaddr BASE, R+X, the whole file
//! 120  code: getpid; kill(pid, SIGSTOP); exit(127)
//!            (as pid 1 of its namespace, whose own signals the kernel drops: pause() in a
//!            loop, stopped from outside by the engine)
//! ```
//!
//! The init program (pid 1 of the target's namespace) places the target and lives as long
//! as it does: it reads, on descriptor 0, the pid before the target's in decimal and writes
//! it to `/proc/sys/kernel/ns_last_pid` (which acts on the writer's own namespace: the next
//! process made there gets the pid after it), says so with one byte on descriptor 1, then
//! reads the target's pid (4 bytes), takes a pidfd of it, waits for that to say the target
//! ended, collects the target's orphans (reparented to it) until none is left, and exits: a
//! pid namespace lives as long as its init, and its other processes are killed when the
//! init ends. EOF, a short read or a failure ends it at once. (While the target lives,
//! orphans that end stay zombies until it ends.)

use std::ffi::CString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::sys;

/// Load address: low, away from where images put things (the target's own mappings are
/// unmapped by the restore anyway).
const BASE: u64 = 0x20_0000;
const HEADERS: usize = 64 + 56;

std::arch::global_asm!(
    ".pushsection .text.ember_stopper,\"ax\",@progbits",
    ".globl ember_stopper_start",
    "ember_stopper_start:",
    "    mov eax, 39",
    "    syscall",
    "    cmp eax, 1",
    "    je 2f",
    "    mov edi, eax",
    "    mov esi, 19",
    "    mov eax, 62",
    "    syscall",
    "    mov edi, 127",
    "    mov eax, 60",
    "    syscall",
    "2:",
    "    mov eax, 34",
    "    syscall",
    "    jmp 2b",
    ".globl ember_stopper_end",
    "ember_stopper_end:",
    ".popsection",
);

std::arch::global_asm!(
    ".pushsection .text.ember_pidns_init,\"ax\",@progbits",
    ".globl ember_pidns_init_start",
    "ember_pidns_init_start:",
    "    sub rsp, 32",
    // n = read(0, rsp, 16): the pid before the target's, in decimal.
    "    xor edi, edi",
    "    mov rsi, rsp",
    "    mov edx, 16",
    "    xor eax, eax",
    "    syscall",
    "    test rax, rax",
    "    jle 3f",
    "    mov r12, rax",
    // fd = open(\"/proc/sys/kernel/ns_last_pid\", O_WRONLY): this namespace's (the writer's)
    "    lea rdi, [rip + 4f]",
    "    mov esi, 1",
    "    xor edx, edx",
    "    mov eax, 2",
    "    syscall",
    "    test rax, rax",
    "    js 3f",
    "    mov r13, rax",
    // write(fd, rsp, n); close(fd)
    "    mov rdi, r13",
    "    mov rsi, rsp",
    "    mov rdx, r12",
    "    mov eax, 1",
    "    syscall",
    "    cmp rax, r12",
    "    jne 3f",
    "    mov rdi, r13",
    "    mov eax, 3",
    "    syscall",
    // write(1, rsp, 1): done
    "    mov edi, 1",
    "    mov rsi, rsp",
    "    mov edx, 1",
    "    mov eax, 1",
    "    syscall",
    // read(0, rsp, 4): the target's pid, once it exists
    "    xor edi, edi",
    "    mov rsi, rsp",
    "    mov edx, 4",
    "    xor eax, eax",
    "    syscall",
    "    cmp rax, 4",
    "    jne 3f",
    // pidfd_open(pid, 0)
    "    mov edi, dword ptr [rsp]",
    "    xor esi, esi",
    "    mov eax, 434",
    "    syscall",
    "    test rax, rax",
    "    js 3f",
    // struct pollfd { fd, events = POLLIN, revents = 0 } at rsp; poll until it ends.
    "    mov dword ptr [rsp], eax",
    "    mov dword ptr [rsp + 4], 1",
    "2:",
    "    mov rdi, rsp",
    "    mov esi, 1",
    "    mov edx, -1",
    "    mov eax, 7",
    "    syscall",
    "    cmp rax, -4",
    "    je 2b",
    // The target has ended; its orphans are ours now: wait4(-1, 0, __WALL) until none is
    // left (ECHILD), so that they are not killed with the namespace while they run.
    "5:",
    "    mov rdi, -1",
    "    xor esi, esi",
    "    mov edx, 0x40000000",
    "    xor r10d, r10d",
    "    mov eax, 61",
    "    syscall",
    "    cmp rax, -10",
    "    jne 5b",
    "3:",
    "    xor edi, edi",
    "    mov eax, 60",
    "    syscall",
    "4:",
    "    .asciz \"/proc/sys/kernel/ns_last_pid\"",
    ".globl ember_pidns_init_end",
    "ember_pidns_init_end:",
    ".popsection",
);

// SAFETY: both symbols are defined by the `global_asm!` above, in a readable text section.
unsafe extern "C" {
    static ember_stopper_start: u8;
    static ember_stopper_end: u8;
    static ember_pidns_init_start: u8;
    static ember_pidns_init_end: u8;
}

fn code() -> &'static [u8] {
    let start = &raw const ember_stopper_start;
    let end = &raw const ember_stopper_end;
    // SAFETY: the two symbols delimit the code's bytes in our own text section, mapped
    // readable for the life of the process.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

fn init_code() -> &'static [u8] {
    let start = &raw const ember_pidns_init_start;
    let end = &raw const ember_pidns_init_end;
    // SAFETY: as in `code`, for the init's two symbols.
    unsafe { std::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// The whole executable.
pub fn elf() -> Vec<u8> {
    elf_of(code())
}

/// An executable of `code` (entry at its first byte).
fn elf_of(code: &[u8]) -> Vec<u8> {
    let total = (HEADERS + code.len()) as u64;
    let mut e = Vec::with_capacity(total as usize);
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    e.extend_from_slice(&(BASE + HEADERS as u64).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // phnum
    e.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // PF_R | PF_X
    e.extend_from_slice(&0u64.to_le_bytes()); // offset
    e.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // paddr
    e.extend_from_slice(&total.to_le_bytes()); // filesz
    e.extend_from_slice(&total.to_le_bytes()); // memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    debug_assert_eq!(e.len(), HEADERS);
    e.extend_from_slice(code);
    e
}

type Program = OnceLock<Result<(OwnedFd, CString), String>>;

/// `/proc/self/fd/N` of a sealed memfd holding the stopper, made once per process.
fn path() -> io::Result<(&'static CString, i32)> {
    static PATH: Program = OnceLock::new();
    program(&PATH, "ember-stopper", elf)
}

/// The same for the pid namespace's init.
fn init_path() -> io::Result<(&'static CString, i32)> {
    static PATH: Program = OnceLock::new();
    program(&PATH, "ember-pidns-init", || elf_of(init_code()))
}

fn program(
    cell: &'static Program,
    name: &str,
    make: impl FnOnce() -> Vec<u8>,
) -> io::Result<(&'static CString, i32)> {
    let r = cell.get_or_init(|| {
        let fd = sys::memfd_exec(name).map_err(|e| e.to_string())?;
        std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?)
            .write_all(&make())
            .map_err(|e| e.to_string())?;
        sys::seal(&fd).map_err(|e| e.to_string())?;
        let p =
            CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())?;
        Ok((fd, p))
    });
    match r {
        Ok((fd, p)) => Ok((p, fd.as_raw_fd())),
        Err(e) => Err(io::Error::other(format!(
            "preparing the {name} program: {e}"
        ))),
    }
}

/// The stopper program itself, a sealed memfd kept open for the life of this process: for
/// a process made elsewhere that execs it by descriptor (a sandbox's first process,
/// `ember_sandbox::Sandbox::spawn_parked`).
pub fn program_fd() -> io::Result<std::os::fd::BorrowedFd<'static>> {
    let (_, fd) = path()?;
    // SAFETY: `fd` is the memfd held by a static `OnceLock`, never closed.
    Ok(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
}

/// Spawns a stopper holding `fds` (`(wanted number, our descriptor)`); returns its pid. It
/// stops itself right away (wait for that with `WUNTRACED`).
pub fn spawn(fds: &[(i32, i32)]) -> io::Result<i32> {
    let (path, fd) = path()?;
    sys::spawn(path, fd, fds)
}

/// As [`spawn`], the stopper made in mount namespace `ns` (a template's view, which has no
/// /proc: the program is exec'd through its descriptor). The calling thread enters `ns`
/// for the spawn only and comes back to its own namespace and working directory.
pub fn spawn_in(ns: &OwnedFd, fds: &[(i32, i32)]) -> io::Result<i32> {
    let (_, fd) = path()?;
    let home = sys::own_mount_ns()?;
    sys::enter_mount_ns(ns)?;
    let spawned = sys::spawn_by_fd(fd, fds);
    let back = sys::enter_mount_ns(&home.0).and_then(|()| sys::fchdir(&home.1));
    match back {
        Ok(()) => spawned,
        Err(e) => {
            // This thread cannot read our /proc any more: nothing more of it is usable.
            if let Ok(pid) = spawned {
                sys::kill(pid, libc::SIGKILL);
                let _ = sys::wait(pid, 0);
            }
            Err(e)
        }
    }
}

/// Spawns the init program with `from` (a read end: what it is told) as its descriptor 0
/// and `to` (a write end: its answer) as 1.
pub fn spawn_init(from: i32, to: i32) -> io::Result<i32> {
    let (path, fd) = init_path()?;
    sys::spawn(path, fd, &[(0, from), (1, to)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_a_tiny_static_executable() {
        let e = elf();
        assert!(e.len() < 200, "{} bytes", e.len());
        assert_eq!(&e[..4], b"\x7fELF");
        let code = &e[HEADERS..];
        // getpid, kill, exit, and pause for a namespace's init: four syscall instructions.
        assert_eq!(code.windows(2).filter(|w| *w == [0x0f, 0x05]).count(), 4);
        let init = elf_of(init_code());
        assert!(init.len() < 400, "{} bytes", init.len());
        assert!(
            init.windows(28)
                .any(|w| w == b"/proc/sys/kernel/ns_last_pid"),
            "the init names the sysctl it writes"
        );
    }
}
