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
//!   image tid T:  1. the init program (pid 1), told T - 1 on a pipe, writes it to
//!                    /proc/sys/kernel/ns_last_pid (its own namespace's) and answers
//!                 2. the stopper (posix_spawn: no copy of our page tables): pid T, checked
//!                 3. T into the pipe: the init takes a pidfd of T, waits for it to end,
//!                    collects the orphans it left (they go on running meanwhile) and
//!                    exits; a namespace ends with its init (killing the init kills the
//!                    target too)
//!   then setns back to the thread's own namespace for children, on every path
//! ```
//!
//! The init is our child: it exits once the target has ended *and* been reaped by its
//! parent (the caller) and its orphans have ended; each `Target::Fork` restore collects the
//! inits that have exited by then (a thread per namespace waiting for its init would
//! outlive the restore). Any failure after the init started closes the pipes, which ends it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
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
    let (from_r, mut to_init) = io::pipe()?;
    let (mut from_init, to_w) = io::pipe()?;
    let init = stopper::spawn_init(from_r.as_raw_fd(), to_w.as_raw_fd())?;
    *started = Some(init);
    drop((from_r, to_w));
    let failed = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("placing the target at pid {tid} of a new pid namespace: {what}: {e}"),
        )
    };
    // The init sets the namespace's last pid to tid - 1 and says so (EOF: it could not).
    to_init
        .write_all((tid - 1).to_string().as_bytes())
        .map_err(|e| failed("telling its init", e))?;
    let mut ack = [0u8; 1];
    from_init.read_exact(&mut ack).map_err(|e| {
        failed(
            "its init could not write /proc/sys/kernel/ns_last_pid (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE)",
            e,
        )
    })?;
    let pid = stopper::spawn(fds).map_err(|e| failed("spawning the target", e))?;
    let placed = ns_pid(pid);
    let told = match placed {
        Some(p) if p == tid => to_init.write_all(&tid.to_ne_bytes()),
        other => Err(io::Error::other(format!("it got {other:?}"))),
    };
    if let Err(e) = told {
        sys::kill(pid, libc::SIGKILL);
        while let Ok(Wait::Stopped { .. }) = sys::wait(pid, 0) {}
        return Err(failed("the target's pid", e));
    }
    Ok(pid)
}

/// The pid of `pid` in its own namespace (the last of `NSpid`).
fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    crate::proc::parse_status(&status).map(|s| s.ns_tid)
}

/// Inits spawned and not yet collected (they are our children).
static INITS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Remembers `init` and collects every earlier init that has exited: an init lingers as a
/// zombie of ours until the next `Target::Fork` restore (no thread per namespace waits).
fn reap_later(init: i32) {
    let mut inits = INITS.lock().unwrap_or_else(|e| e.into_inner());
    inits.retain(|&p| !sys::reap_if_ended(p));
    inits.push(init);
}
