//! A live instance as the node keeps it: the runtime process and, when sandboxed, its
//! sandbox (cgroup, limits), which goes when the instance goes.

use std::time::Duration;

use ember_runtime::Instance;
use ember_sandbox::{LimitReason, SECCOMP_EXIT_CODE, Sandbox};

pub struct Live {
    pub inst: Instance,
    pub sandbox: Option<Sandbox>,
}

impl Live {
    pub fn id(&self) -> &str {
        self.inst.id()
    }

    pub fn is_gone(&mut self) -> bool {
        self.inst.is_gone()
    }

    /// The limit the kernel enforced on this instance since it started, if any. Looks at the
    /// cgroup's counters and, for seccomp, at how the process ended (waiting up to `wait`).
    pub async fn limit_hit(&mut self, wait: Duration) -> Option<LimitReason> {
        if let Some(sb) = &self.sandbox {
            let ev = sb.events();
            if ev.oom_kills > 0 {
                return Some(LimitReason::Oom);
            }
            if ev.pids_max_hits > 0 {
                return Some(LimitReason::Pids);
            }
        }
        let status = self.inst.exit_status(wait).await?;
        ended_by_seccomp(&status).then_some(LimitReason::Seccomp)
    }

    /// Kills the instance; the sandbox's removal goes on in the returned task.
    pub fn kill(self) -> Option<tokio::task::JoinHandle<()>> {
        self.inst.kill();
        self.sandbox.map(|sb| tokio::spawn(sb.destroy()))
    }
}

/// True when a runtime was killed by the seccomp filter: SIGSYS itself, or the exit code the
/// sandbox's relaying parent turns it into.
pub fn ended_by_seccomp(status: &std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal() == Some(nix::sys::signal::Signal::SIGSYS as i32)
        || status.code() == Some(SECCOMP_EXIT_CODE)
}
