//! A live instance as the node keeps it: the runtime process, when sandboxed its sandbox
//! (cgroup, limits), which goes when the instance goes, and when restored lazily from an
//! image the page server still serving it.

use std::time::{Duration, SystemTime};

use ember_runtime::python::{InvokeError, RestoredInitError, RestoredTiming, StartError};
use ember_runtime::{Outcome, StartSpec, native, provided, python};
use ember_sandbox::{Events, LimitReason, Sandbox, killed_by_seccomp};
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

    /// One event, with the caller's client context (Python and Runtime API runtimes hand
    /// it to the handler; a native executable gets the event alone).
    pub async fn invoke(
        &mut self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
        client_context: Option<&serde_json::Value>,
    ) -> Result<Outcome, InvokeError> {
        match self {
            Proc::Python(i) => {
                i.invoke_with(request_id, deadline, event, client_context)
                    .await
            }
            Proc::Provided(i) => i.invoke(request_id, deadline, event, client_context).await,
            Proc::Native(i) => i.invoke(event).await,
        }
    }

    /// The modules the runtime reported imported since last asked (Python only; see
    /// [`python::Instance::take_imported`]).
    pub fn take_imported(&mut self) -> Vec<String> {
        match self {
            Proc::Python(i) => i.take_imported(),
            _ => Vec::new(),
        }
    }

    /// A restored instance got past its after-restore hook (see [`python::Instance::hooked`]).
    pub fn hooked(&self) -> bool {
        matches!(self, Proc::Python(i) if i.hooked())
    }

    /// The function snapshot point (Python only): its before-snapshot hooks run, then the
    /// runtime waits, ready to be dumped, for CONTINUE (or, in a restored copy, INIT).
    pub async fn snapshot_point(
        &mut self,
    ) -> Result<python::SnapshotReady, python::SnapshotPointError> {
        match self {
            Proc::Python(i) => i.snapshot_point().await,
            _ => Err(python::SnapshotPointError::Protocol(
                ember_runtime::protocol::ProtocolError::Io(std::io::Error::other(
                    "only Python instances have a snapshot point",
                )),
            )),
        }
    }

    /// The second half of a start from an image (Python only: images hold its runtime).
    pub async fn init_restored(
        &mut self,
        spec: &StartSpec,
    ) -> Result<RestoredTiming, RestoredInitError> {
        match self {
            Proc::Python(i) => i.init_restored(spec).await,
            _ => Err(RestoredInitError::Image(StartError::Socket(
                std::io::Error::other("only Python instances are restored from images"),
            ))),
        }
    }
}

pub struct Live {
    pub inst: Proc,
    pub sandbox: Option<Sandbox>,
    /// The image it was restored from.
    pub image: Option<String>,
    /// The function snapshot it was restored from.
    pub snapshot: Option<String>,
    /// Ends by itself once the process is gone.
    pub pages: Option<PageServer>,
    /// The page server's counters as last added to the node's metrics.
    pub reported: LazyStats,
    /// Pre-started and stopped: the host pid of its first process, to continue it.
    pub parked: Option<i32>,
    /// The sandbox's limit counters when last looked at: a later event belongs to whatever
    /// ran since (the start-up, then each invocation), never to the next one.
    pub limits_seen: Events,
    /// Kept as long as the instance: the template it was forked from (its process's parent
    /// is the template's thread).
    pub holds: Option<std::sync::Arc<dyn std::any::Any + Send + Sync>>,
    /// Restored lazily to record its function snapshot's working set (node/working_set.rs).
    pub records: Option<crate::node::working_set::Claim>,
    /// Restored lazily from the snapshot store or the cluster's image pool: it is not
    /// hibernated while pages are still coming.
    pub from_store: bool,
    /// Its page server reads a source that may fail at a page (the snapshot store, a
    /// hibernated instance's file, the cluster's image pool): a request it fails runs again
    /// on another instance.
    pub pages_may_fail: bool,
    /// Why its page server failed, once it finished so (its source failed a page).
    pub page_failed: Option<String>,
}

impl Live {
    pub fn new(inst: impl Into<Proc>, sandbox: Option<Sandbox>) -> Live {
        Live {
            inst: inst.into(),
            sandbox,
            image: None,
            snapshot: None,
            pages: None,
            reported: LazyStats::default(),
            parked: None,
            limits_seen: Events::default(),
            holds: None,
            records: None,
            from_store: false,
            pages_may_fail: false,
            page_failed: None,
        }
    }

    /// The limit the kernel enforced since the counters were last looked at (by this method
    /// or [`Live::limit_hit`]), if any; the counters are looked at anew.
    pub fn new_limit(&mut self) -> Option<LimitReason> {
        let now = self.sandbox.as_ref()?.events();
        let new = now.since(self.limits_seen);
        self.limits_seen = now;
        new.reason()
    }

    pub fn id(&self) -> &str {
        self.inst.id()
    }

    pub fn is_gone(&mut self) -> bool {
        self.inst.is_gone()
    }

    /// The limit the kernel enforced on this instance since the counters were last looked
    /// at, if any: the cgroup's counters and, for seccomp, how the process ended (waiting up
    /// to `wait`).
    pub async fn limit_hit(&mut self, wait: Duration) -> Option<LimitReason> {
        if let Some(reason) = self.new_limit() {
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
