//! A runtime's process: spawned by us (a tokio `Child`), or made by someone else and handed
//! over (a child of this process forked from a template, `ember-snap`), which is waited for
//! through a pidfd: readable once it has ended, and holding its pid until it is collected,
//! so that no signal or wait can reach a process that reused the number.

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;

use tokio::io::unix::AsyncFd;
use tokio::process::Child;

use crate::sys;

pub(crate) enum Process {
    Spawned(Child),
    Adopted(Adopted),
}

pub(crate) struct Adopted {
    pidfd: AsyncFd<OwnedFd>,
    /// Once collected (its pid may be reused from then on: never waited for again).
    status: Option<ExitStatus>,
}

impl Adopted {
    /// Takes over `pid`, a child of this process (of any of its threads).
    pub(crate) fn new(pid: i32) -> io::Result<Adopted> {
        Ok(Adopted {
            pidfd: sys::pidfd_async(pid)?,
            status: None,
        })
    }
}

impl Adopted {
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        use std::os::fd::AsRawFd;
        if self.status.is_none() {
            self.status = sys::collect(self.pidfd.get_ref().as_raw_fd())?;
        }
        Ok(self.status)
    }

    /// Until it has ended (the pidfd turns readable), then collects it.
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            self.pidfd.readable().await?.clear_ready();
        }
    }
}

impl Drop for Adopted {
    /// Not collected yet: killed and collected (as a spawned child's `kill_on_drop` and
    /// tokio's reaper do), on a thread of its own: never a zombie for the daemon's life.
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        if self.status.is_some() {
            return;
        }
        let _ = sys::pidfd_kill(self.pidfd.get_ref().as_raw_fd());
        // The descriptor goes with the thread (dropping it deregisters it from tokio).
        let Ok(fd) = self.pidfd.get_ref().try_clone() else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("ember-collect".into())
            .spawn(move || sys::collect_blocking(fd.as_raw_fd()));
    }
}

impl Process {
    /// The exit status if the process has ended (collecting it), without waiting.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Process::Spawned(c) => c.try_wait(),
            Process::Adopted(a) => a.try_wait(),
        }
    }

    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Process::Spawned(c) => c.wait().await,
            Process::Adopted(a) => a.wait().await,
        }
    }

    /// SIGKILL, then waits for it to end and collects it.
    pub(crate) async fn kill(&mut self) -> io::Result<()> {
        match self {
            Process::Spawned(c) => c.kill().await,
            Process::Adopted(a) => {
                if a.status.is_none() {
                    use std::os::fd::AsRawFd;
                    sys::pidfd_kill(a.pidfd.get_ref().as_raw_fd())?;
                }
                a.wait().await.map(drop)
            }
        }
    }
}
