//! A live instance as the node keeps it: the runtime process, when sandboxed its sandbox
//! (cgroup, limits), which goes when the instance goes, and when restored lazily from an
//! image the page server still serving it.

use std::time::Duration;

use ember_runtime::Instance;
use ember_sandbox::{LimitReason, Sandbox, killed_by_seccomp};
use ember_snap::lazy::{LazyStats, PageServer};

pub struct Live {
    pub inst: Instance,
    pub sandbox: Option<Sandbox>,
    /// The image it was restored from.
    pub image: Option<String>,
    /// Ends by itself once the process is gone.
    pub pages: Option<PageServer>,
    /// The page server's counters as last added to the node's metrics.
    pub reported: LazyStats,
}

impl Live {
    pub fn new(inst: Instance, sandbox: Option<Sandbox>) -> Live {
        Live {
            inst,
            sandbox,
            image: None,
            pages: None,
            reported: LazyStats::default(),
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
