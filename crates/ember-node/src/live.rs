//! A live instance as the node keeps it: the runtime process, when sandboxed its sandbox
//! (cgroup, limits), which goes when the instance goes, and when restored lazily from an
//! image the page server still serving it.

use std::time::{Duration, SystemTime};

use ember_runtime::python::{InvokeError, RestoredTiming, StartError};
use ember_runtime::{Outcome, StartSpec, native, provided, python};
use ember_sandbox::{LimitReason, Sandbox, killed_by_seccomp};
use ember_snap::lazy::{LazyStats, PageServer};

/// The runtime process of an instance, whichever runtime it is.
pub enum Proc {
    Python(python::Instance),
    Provided(provided::Instance),
    Native(native::Instance),
}

impl From<python::Instance> for Proc {
    fn from(i: python::Instance) -> Proc {
        Proc::Python(i)
    }
}

impl Proc {
    pub fn id(&self) -> &str {
        match self {
            Proc::Python(i) => i.id(),
            Proc::Provided(i) => i.id(),
            Proc::Native(i) => i.id(),
        }
    }

    pub fn pid(&self) -> u32 {
        match self {
            Proc::Python(i) => i.pid(),
            Proc::Provided(i) => i.pid(),
            Proc::Native(i) => i.pid(),
        }
    }

    pub fn is_gone(&mut self) -> bool {
        match self {
            Proc::Python(i) => i.is_gone(),
            Proc::Provided(i) => i.is_gone(),
            Proc::Native(i) => i.is_gone(),
        }
    }

    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        match self {
            Proc::Python(i) => i.exit_status(within).await,
            Proc::Provided(i) => i.exit_status(within).await,
            Proc::Native(i) => i.exit_status(within).await,
        }
    }

    pub fn kill(self) {
        match self {
            Proc::Python(i) => i.kill(),
            Proc::Provided(i) => i.kill(),
            Proc::Native(i) => i.kill(),
        }
    }

    pub async fn invoke(
        &mut self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
    ) -> Result<Outcome, InvokeError> {
        match self {
            Proc::Python(i) => i.invoke(request_id, deadline, event).await,
            Proc::Provided(i) => i.invoke(request_id, deadline, event).await,
            Proc::Native(i) => i.invoke(event).await,
        }
    }

    /// The second half of a start from an image (Python only: images hold its runtime).
    pub async fn init_restored(&mut self, spec: &StartSpec) -> Result<RestoredTiming, StartError> {
        match self {
            Proc::Python(i) => i.init_restored(spec).await,
            _ => Err(StartError::Socket(std::io::Error::other(
                "only Python instances are restored from images",
            ))),
        }
    }
}

pub struct Live {
    pub inst: Proc,
    pub sandbox: Option<Sandbox>,
    /// The image it was restored from.
    pub image: Option<String>,
    /// Ends by itself once the process is gone.
    pub pages: Option<PageServer>,
    /// The page server's counters as last added to the node's metrics.
    pub reported: LazyStats,
    /// Pre-started and stopped: the host pid of its first process, to continue it.
    pub parked: Option<i32>,
}

impl Live {
    pub fn new(inst: impl Into<Proc>, sandbox: Option<Sandbox>) -> Live {
        Live {
            inst: inst.into(),
            sandbox,
            image: None,
            pages: None,
            reported: LazyStats::default(),
            parked: None,
        }
    }

    pub fn id(&self) -> &str {
        self.inst.id()
    }

    pub fn is_gone(&mut self) -> bool {
        self.inst.is_gone()
    }

    /// The limit the kernel enforced on this instance since it started, if any. Looks at the
    /// cgroup's counters and, for seccomp, at how the process ended (waiting up to `wait`).
    pub async fn limit_hit(&mut self, wait: Duration) -> Option<LimitReason> {
        if let Some(reason) = self.sandbox.as_ref().and_then(|s| s.events().reason()) {
            return Some(reason);
        }
        let status = self.inst.exit_status(wait).await?;
        killed_by_seccomp(&status).then_some(LimitReason::Seccomp)
    }

    /// Kills the instance; the sandbox's removal goes on in the returned task.
    pub fn kill(self) -> Option<tokio::task::JoinHandle<()>> {
        self.inst.kill();
        self.sandbox.map(|sb| tokio::spawn(sb.destroy()))
    }
}
