//! userfaultfd: the API handshake, registration (missing and minor modes), events, and the
//! ioctls that resolve faults (copy, zero page, continue, wake).

use std::io;
use std::mem::size_of;

use super::check;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioApi>() == 24);

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}
const _: () = assert!(size_of::<UffdioRange>() == 16);

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
const _: () = assert!(size_of::<UffdioRegister>() == 32);

/// `struct uffdio_copy`.
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
const _: () = assert!(size_of::<UffdioCopy>() == 40);

const UFFD_API: u64 = 0xaa;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_REGISTER_MODE_MINOR: u64 = 4;
/// `_IOWR(0xAA, 0x07, struct uffdio_continue)` (32 bytes).
const UFFDIO_CONTINUE: libc::c_ulong = 0xc020_aa07;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;

fn uffd_ioctl<T>(fd: &std::os::fd::OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `arg` is a live, exclusively borrowed struct of the layout `req` expects
    // (sizes asserted above); the kernel reads and writes only within it.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) } as libc::c_long).map(drop)
}

/// The API handshake on a fresh userfaultfd, asking for `features`.
pub fn uffd_api(fd: &std::os::fd::OwnedFd, features: u64) -> io::Result<()> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    uffd_ioctl(fd, UFFDIO_API, &mut a)
}

pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// Missing-page faults in shmem (a memfd) mappings: a hole of the image's memfd.
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// Minor faults in shmem mappings: the page is in the memfd but not mapped here.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;

pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
pub const UFFD_EVENT_FORK: u8 = 0x13;
pub const UFFD_EVENT_REMAP: u8 = 0x14;
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// One `struct uffd_msg` (32 bytes, packed): the event and its three argument words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdMsg {
    pub event: u8,
    pub arg: [u64; 3],
}

/// Reads the events waiting on a non-blocking userfaultfd (none: empty).
pub fn uffd_read(fd: &std::os::fd::OwnedFd) -> io::Result<Vec<UffdMsg>> {
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 32 * 64];
    // SAFETY: reading into a live local buffer of the given length.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(Vec::new())
        } else {
            Err(e)
        };
    }
    Ok(buf[..n as usize]
        .chunks_exact(32)
        .map(|m| {
            let w = |i: usize| {
                u64::from_ne_bytes(m[8 + 8 * i..16 + 8 * i].try_into().unwrap_or([0; 8]))
            };
            UffdMsg {
                event: m[0],
                arg: [w(0), w(1), w(2)],
            }
        })
        .collect())
}

/// `struct uffdio_zeropage`.
#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xc020_aa04;
const UFFDIO_WAKE: libc::c_ulong = 0x8010_aa02;

/// Resolves a missing page with zeros (memory the image never had, or discarded).
pub fn uffd_zeropage(fd: &std::os::fd::OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    uffd_ioctl(fd, UFFDIO_ZEROPAGE, &mut z)
}

/// [`uffd_zeropage`] of a range that may stop short: the bytes zero-filled from `start`
/// (the kernel stops at the first page already there, answering EAGAIN with the count;
/// those it did fill are woken), and the kernel's answer. A range that is not inside one
/// registered area is refused whole (ENOENT), as is one the process is changing (EAGAIN,
/// nothing filled).
pub fn uffd_zeropage_part(
    fd: &std::os::fd::OwnedFd,
    start: u64,
    len: u64,
) -> (u64, io::Result<()>) {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode: 0,
        zeropage: 0,
    };
    match uffd_ioctl(fd, UFFDIO_ZEROPAGE, &mut z) {
        Ok(()) => (len, Ok(())),
        Err(e) => (z.zeropage.max(0) as u64, Err(e)),
    }
}

/// Wakes threads waiting on `[start, start+len)`.
pub fn uffd_wake(fd: &std::os::fd::OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    uffd_ioctl(fd, UFFDIO_WAKE, &mut r)
}

/// Registers `[start, start+len)` for missing-page handling.
pub fn uffd_register(fd: &std::os::fd::OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    uffd_ioctl(fd, UFFDIO_REGISTER, &mut r)
}

/// Registers `[start, start+len)` of a private memfd mapping for missing (a hole of the
/// memfd) and minor faults (a page of the memfd not mapped here, e.g. after
/// `MADV_DONTNEED`).
pub fn uffd_register_shmem(fd: &std::os::fd::OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRegister {
        range: UffdioRange { start, len },
        mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR,
        ioctls: 0,
    };
    uffd_ioctl(fd, UFFDIO_REGISTER, &mut r)
}

/// `struct uffdio_continue`.
#[repr(C)]
struct UffdioContinue {
    range: UffdioRange,
    mode: u64,
    mapped: i64,
}

/// Maps the memfd's own page at `[start, start+len)` (resolves a minor fault) and wakes the
/// waiting thread.
pub fn uffd_continue(fd: &std::os::fd::OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut c = UffdioContinue {
        range: UffdioRange { start, len },
        mode: 0,
        mapped: 0,
    };
    uffd_ioctl(fd, UFFDIO_CONTINUE, &mut c)
}

pub fn uffd_unregister(fd: &std::os::fd::OwnedFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    uffd_ioctl(fd, UFFDIO_UNREGISTER, &mut r)
}

/// Installs `src` at `dst` of the registered process: fresh pages, filled without being
/// zeroed first; `wake` wakes a thread waiting on them. Returns the bytes installed and, if
/// it stopped short, why (EAGAIN: the address space is changing and an event waits to be
/// read; the caller must read it before trying the rest).
pub fn uffd_copy(
    fd: &std::os::fd::OwnedFd,
    dst: u64,
    src: &[u8],
    wake: bool,
) -> (u64, io::Result<()>) {
    let mut done = 0u64;
    let len = src.len() as u64;
    while done < len {
        let mut c = UffdioCopy {
            dst: dst + done,
            src: src.as_ptr() as u64 + done,
            len: len - done,
            mode: if wake { 0 } else { UFFDIO_COPY_MODE_DONTWAKE },
            copy: 0,
        };
        match uffd_ioctl(fd, UFFDIO_COPY, &mut c) {
            Ok(()) => done = len,
            Err(e) => return (done + c.copy.max(0) as u64, Err(e)),
        }
    }
    (done, Ok(()))
}

/// [`uffd_copy`] where nothing else changes the process meanwhile (it is stopped): stopping
/// short is an error.
pub fn uffd_copy_all(fd: &std::os::fd::OwnedFd, dst: u64, src: &[u8]) -> io::Result<()> {
    uffd_copy(fd, dst, src, false).1
}
