//! A stopped, traced process: run syscalls inside it, one by single-step or many by the
//! restorer blob. While attached, every signal but SIGKILL/SIGSTOP is blocked in the
//! tracee so nothing but our own traps stops it.

use std::io;

use crate::restorer::Batch;
use crate::sys::{self, Regs, Wait};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("process {pid}: {op} failed")]
    Ptrace {
        pid: i32,
        op: &'static str,
        source: io::Error,
    },
    #[error("not allowed to trace process {pid}: run as root (ptrace needs CAP_SYS_PTRACE)")]
    NotPermitted { pid: i32 },
    #[error("process {pid} ended while it was being worked on ({how})")]
    Gone { pid: i32, how: String },
    #[error("process {pid} stopped unexpectedly (signal {sig}, event {event})")]
    Unexpected { pid: i32, sig: i32, event: i32 },
    #[error("process {pid}: injected {what} failed: {}", io::Error::from_raw_os_error(*errno))]
    Injected { pid: i32, what: String, errno: i32 },
}

pub struct Tracee {
    pub pid: i32,
    /// Registers when we attached (put back on a plain detach).
    pub regs: Regs,
    /// Signal mask when we attached.
    pub sigmask: u64,
}

fn pt(pid: i32, op: &'static str) -> impl FnOnce(io::Error) -> TraceError {
    move |source| TraceError::Ptrace { pid, op, source }
}

impl Tracee {
    /// Seizes `pid` and brings it to a ptrace stop (it may be running, sleeping in a
    /// syscall, or in a group stop). `suspend_seccomp`: syscalls run in it pass its seccomp
    /// filters while it is attached (needs CAP_SYS_ADMIN).
    pub fn attach(pid: i32, exitkill: bool, suspend_seccomp: bool) -> Result<Tracee, TraceError> {
        sys::seize(pid, exitkill, suspend_seccomp).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) => TraceError::NotPermitted { pid },
            _ => pt(pid, "PTRACE_SEIZE")(e),
        })?;
        let stopped = Self::interrupt(pid);
        let t = match stopped {
            Ok(()) => {
                let regs = sys::get_regs(pid).map_err(pt(pid, "PTRACE_GETREGS"));
                let mask = sys::get_sigmask(pid).map_err(pt(pid, "PTRACE_GETSIGMASK"));
                match (regs, mask) {
                    (Ok(regs), Ok(sigmask)) => Ok(Tracee { pid, regs, sigmask }),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        // Every failure after the seize detaches: a process is never left stopped.
        match t.and_then(|t| {
            sys::set_sigmask(pid, !0).map_err(pt(pid, "PTRACE_SETSIGMASK"))?;
            Ok(t)
        }) {
            Ok(t) => Ok(t),
            Err(e) => {
                let _ = sys::detach(pid);
                Err(e)
            }
        }
    }

    fn interrupt(pid: i32) -> Result<(), TraceError> {
        sys::interrupt(pid).map_err(pt(pid, "PTRACE_INTERRUPT"))?;
        loop {
            match sys::wait(pid, 0).map_err(pt(pid, "waitpid"))? {
                Wait::Stopped { event, .. } if event == libc::PTRACE_EVENT_STOP => return Ok(()),
                // A signal arrived first: let it through; the interrupt is still pending.
                Wait::Stopped { sig, .. } => sys::cont(pid, sig).map_err(pt(pid, "PTRACE_CONT"))?,
                other => {
                    return Err(TraceError::Gone {
                        pid,
                        how: format!("{other:?}"),
                    });
                }
            }
        }
    }

    /// Resumes with `step` (single-step or continue) and waits for the trap that ends an
    /// injected step. A job-control or interrupt trap still pending from the attach is
    /// taken before any instruction runs: resume again.
    fn step_until_trap(&self, single: bool) -> Result<(), TraceError> {
        loop {
            if single {
                sys::singlestep(self.pid).map_err(pt(self.pid, "PTRACE_SINGLESTEP"))?;
            } else {
                sys::cont(self.pid, 0).map_err(pt(self.pid, "PTRACE_CONT"))?;
            }
            match self.wait_trap() {
                Err(TraceError::Unexpected { event, .. }) if event == libc::PTRACE_EVENT_STOP => {
                    continue;
                }
                other => return other,
            }
        }
    }

    fn wait_trap(&self) -> Result<(), TraceError> {
        match sys::wait(self.pid, 0).map_err(pt(self.pid, "waitpid"))? {
            Wait::Stopped { sig, event: 0 } if sig == libc::SIGTRAP => Ok(()),
            Wait::Stopped { sig, event } => Err(TraceError::Unexpected {
                pid: self.pid,
                sig,
                event,
            }),
            other => Err(TraceError::Gone {
                pid: self.pid,
                how: format!("{other:?}"),
            }),
        }
    }

    /// Runs one syscall by single-stepping the `syscall` instruction at `insn`; returns
    /// the raw result (negative errno on failure).
    pub fn syscall(&self, insn: u64, nr: i64, args: &[u64]) -> Result<i64, TraceError> {
        self.syscall_with(&self.regs, insn, nr, args)
    }

    /// [`Self::syscall`] with other registers as the base (segment registers, flags).
    pub fn syscall_with(
        &self,
        base: &Regs,
        insn: u64,
        nr: i64,
        args: &[u64],
    ) -> Result<i64, TraceError> {
        let mut r = *base;
        r.rip = insn;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) = (a(0), a(1), a(2), a(3), a(4), a(5));
        sys::set_regs(self.pid, &r).map_err(pt(self.pid, "PTRACE_SETREGS"))?;
        self.step_until_trap(true)?;
        let out = sys::get_regs(self.pid).map_err(pt(self.pid, "PTRACE_GETREGS"))?;
        Ok(out.rax as i64)
    }

    /// [`Self::syscall`], with a failure turned into an error naming `what`.
    pub fn syscall_ok(
        &self,
        insn: u64,
        nr: i64,
        args: &[u64],
        what: &str,
    ) -> Result<u64, TraceError> {
        let r = self.syscall(insn, nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(TraceError::Injected {
                pid: self.pid,
                what: what.to_string(),
                errno: -r as i32,
            });
        }
        Ok(r as u64)
    }

    /// Writes `batch` at its base, runs it with the blob at `code`, and returns every
    /// entry's result and the batch area as read back (for out-buffers). Stops at the first
    /// failing entry not allowed to fail, with an error naming its step.
    pub fn run_batch(&self, code: u64, batch: &Batch) -> Result<(Vec<i64>, Vec<u8>), TraceError> {
        let bytes = batch.bytes();
        let base = batch.base();
        write(self.pid, base, &bytes).map_err(pt(self.pid, "process_vm_writev"))?;
        let mut r = self.regs;
        r.rip = code;
        r.rbx = batch.entries_addr();
        r.orig_rax = u64::MAX;
        sys::set_regs(self.pid, &r).map_err(pt(self.pid, "PTRACE_SETREGS"))?;
        self.step_until_trap(false)?;
        let out = sys::get_regs(self.pid).map_err(pt(self.pid, "PTRACE_GETREGS"))?;
        let mut area = vec![0u8; bytes.len()];
        sys::read_mem(self.pid, base, &mut area).map_err(pt(self.pid, "process_vm_readv"))?;
        let results = batch.results(&area);
        if let Some(i) = batch.index_of(out.rbx)
            && i < batch.len()
        {
            let errno = -results.get(i).copied().unwrap_or(0) as i32;
            return Err(TraceError::Injected {
                pid: self.pid,
                what: batch.step(i).to_string(),
                errno,
            });
        }
        Ok((results, area))
    }

    /// Puts back the registers and mask found at attach and detaches: the process goes on
    /// as if nothing happened (an interrupted syscall restarts).
    pub fn release(&self) -> Result<(), TraceError> {
        let pid = self.pid;
        let r = sys::set_regs(pid, &self.regs)
            .map_err(pt(pid, "PTRACE_SETREGS"))
            .and_then(|()| {
                sys::set_sigmask(pid, self.sigmask).map_err(pt(pid, "PTRACE_SETSIGMASK"))
            });
        let d = sys::detach(pid).map_err(pt(pid, "PTRACE_DETACH"));
        r.and(d)
    }
}

/// Writes `bytes` at `addr` of `pid`. `process_vm_writev` may stop early at a page it could
/// not fault in the other process (and then fail if called for that page alone); a write
/// that stopped early goes on from there, so a transient refusal is retried and a lasting
/// one is reported with its address and errno instead of as a bare "short write".
pub fn write(pid: i32, addr: u64, bytes: &[u8]) -> io::Result<()> {
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let at = addr + done as u64;
        let local = [libc::iovec {
            iov_base: rest.as_ptr() as *mut libc::c_void,
            iov_len: rest.len(),
        }];
        let remote = [libc::iovec {
            iov_base: at as *mut libc::c_void,
            iov_len: rest.len(),
        }];
        match sys::write_mem(pid, &local, &remote) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("process_vm_writev wrote nothing at {at:#x}"),
                ));
            }
            Ok(n) => done += n,
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "process_vm_writev at {at:#x} ({} of {} bytes written): {e}",
                        done,
                        bytes.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that runs into an unmapped page writes what it can, then says where it
    /// stopped and why.
    #[test]
    fn a_write_into_a_hole_names_where_it_stopped() {
        const PAGE: usize = 4096;
        // SAFETY: a fresh anonymous mapping of two pages, private to this test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: the second page of the mapping made above, which nothing else uses.
        let unmapped = unsafe { libc::munmap(base.cast::<u8>().add(PAGE).cast(), PAGE) };
        assert_eq!(unmapped, 0);
        let pid = std::process::id() as i32;
        let data = vec![7u8; 2 * PAGE];
        let err = write(pid, base as u64, &data).unwrap_err().to_string();
        assert!(err.contains("4096 of 8192 bytes written"), "{err}");
        // SAFETY: the first page is still mapped and was written above.
        assert_eq!(unsafe { *base.cast::<u8>() }, 7);
        write(pid, base as u64, &data[..PAGE]).unwrap();
        // SAFETY: the first page of the mapping made above.
        unsafe { libc::munmap(base, PAGE) };
    }
}
