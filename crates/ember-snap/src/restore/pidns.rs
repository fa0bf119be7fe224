//! The target of `Target::Fork`, made at the image's thread id in a pid namespace of its
//! own: a thread id is baked into a process's memory (the owner of glibc's error-checking,
//! recursive and robust mutexes, the robust futex list, glibc's cached `pd->tid`), so a
//! restored process keeps the one it had.
//!
//! ```text
//! restoring thread: unshare(CLONE_NEWPID)    its next children go into a fresh namespace,
//!                                            the first one as its init (pid 1); it stays
//!                                            their parent
//!   image tid 1:  the stopper is that first child: the target is the namespace's init
//!                 (an init's signals to itself are dropped: it waits in pause(), and is
//!                 stopped with SIGSTOP from here)
//!   image tid T:  1. the init program (pid 1), reading T from a pipe
//!                 2. the stopper, by clone3 with set_tid = [T]: the target, pid T
//!                 3. T into the pipe: the init takes a pidfd of T, waits for it to end,
//!                    and exits; a namespace ends with its init, so the two go together
//!                    (killing the init kills the target too)
//!   then setns back to the thread's own namespace for children, on every path
//! ```
//!
//! The init is our child: a thread of ours waits for it (it exits once the target has
//! ended *and* been reaped by its parent, the caller), started once the restoring thread
//! is back in its own namespace (a thread whose children go elsewhere cannot make threads).
//! Any failure after the init started closes the pipe, which ends it.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::stopper;
use crate::sys::{self, Wait};

/// How long a stopper that is its namespace's init may take to reach its `pause()`.
const PAUSE_WAIT: Duration = Duration::from_secs(2);

/// Puts this thread's children back into its own pid namespace when dropped.
struct Back(File);

impl Drop for Back {
    fn drop(&mut self) {
        if let Err(e) = sys::setns_pid(&self.0) {
            // Later children of this thread would go into a namespace that is dead or
            // someone else's: nothing can be done but say so.
            tracing::error!("putting the restoring thread's pid namespace back failed: {e}");
        }
    }
}

/// Spawns the stopper holding `fds` at thread id `tid` of a fresh pid namespace; returns
/// its pid as we see it (it stops itself, or is stopped: wait with `WUNTRACED`).
pub(super) fn spawn(fds: &[(i32, i32)], tid: i32) -> io::Result<i32> {
    let own = File::open("/proc/thread-self/ns/pid_for_children")?;
    sys::unshare_pidns()
        .map_err(|e| io::Error::new(e.kind(), format!("a new pid namespace: {e}")))?;
    let mut init = None;
    let spawned = {
        let _back = Back(own);
        if tid == 1 {
            spawn_as_init(fds)
        } else {
            spawn_with_init(fds, tid, &mut init)
        }
    };
    // Only now: a thread whose children go into another pid namespace cannot make threads
    // (clone gives EINVAL).
    if let Some(init) = init {
        reap_later(init);
    }
    spawned
}

fn spawn_as_init(fds: &[(i32, i32)]) -> io::Result<i32> {
    let pid = stopper::spawn(fds)?;
    let deadline = Instant::now() + PAUSE_WAIT;
    while !sys::in_syscall(pid, libc::SYS_pause) {
        if Instant::now() > deadline {
            sys::kill(pid, libc::SIGKILL);
            let _ = sys::wait(pid, 0);
            return Err(io::Error::other(format!(
                "the target {pid} (init of its pid namespace) did not reach pause() within {PAUSE_WAIT:?}"
            )));
        }
        std::thread::yield_now();
    }
    // From an ancestor namespace, SIGSTOP reaches an init.
    sys::kill(pid, libc::SIGSTOP);
    Ok(pid)
}

/// The init, then the target; `started` gets the init's pid as soon as there is one.
fn spawn_with_init(fds: &[(i32, i32)], tid: i32, started: &mut Option<i32>) -> io::Result<i32> {
    let (r, mut w) = io::pipe()?;
    let init = stopper::spawn_init(r.as_raw_fd())?;
    *started = Some(init);
    drop(r);
    let pid = stopper::spawn_at(fds, tid).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("a process at thread id {tid} of a new pid namespace (clone3 set_tid): {e}"),
        )
    })?;
    if let Err(e) = w.write_all(&tid.to_ne_bytes()) {
        sys::kill(pid, libc::SIGKILL);
        while let Ok(Wait::Stopped { .. }) = sys::wait(pid, 0) {}
        return Err(io::Error::new(
            e.kind(),
            format!("handing the target's pid to its namespace's init {init}: {e}"),
        ));
    }
    Ok(pid)
}

/// A thread that collects the init when it exits (it is our child).
fn reap_later(init: i32) {
    let spawned = std::thread::Builder::new()
        .name("ember-pidns-init".into())
        .stack_size(64 << 10)
        .spawn(
            move || {
                while let Ok(Wait::Stopped { .. }) = sys::wait(init, 0) {}
            },
        );
    if let Err(e) = spawned {
        tracing::warn!(init, "no thread to collect the pid namespace's init: {e}");
    }
}
