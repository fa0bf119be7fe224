//! A restore into a fresh sandbox: the sandbox with its first process parked, the snapshot
//! restored into that process and handed over to the instance's user and filter. Shared by
//! the rungs that restore and by an image's test restore.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ember_runtime::{Instance, LogSink, StartSpec};
use ember_sandbox::InstanceSpec;
use ember_snap::lazy::{PageServer, Policy};
use ember_snap::{RestoreOptions, Target};
use tracing::{Instrument, info_span};

use ember_runtime::python::{RestoredInitError, RestoredTiming, StartError};

use super::ladder::RungError;
use super::{Deployed, InvokeOutcome, Node, error_chain};
use crate::images::Pages;
use crate::live::Live;

/// A first process just made, not yet taken over: dropped unclaimed (its start was
/// abandoned while it was made), it is killed and collected, by its parent thread.
struct Unclaimed(i32);

impl Unclaimed {
    fn claim(self) -> i32 {
        let pid = self.0;
        std::mem::forget(self);
        pid
    }
}

impl Drop for Unclaimed {
    fn drop(&mut self) {
        ember_runtime::kill_and_collect(self.0);
    }
}

/// An instance for a restore to replace: the sandbox's first process, the stopper, made
/// without a fork of the daemon ([`ember_sandbox::Sandbox::spawn_parked`], on one of the
/// node's spawner threads: see spawner.rs), stopped, holding the runtime's stdio and protocol
/// socket, taken over as the runtime's process. Gives the sandbox back, with the instance and
/// its host pid. On an error nothing of the process is left.
pub(in crate::node) async fn parked_instance(
    node: &Node,
    mut sb: ember_sandbox::Sandbox,
    spec: &StartSpec,
    log: Arc<dyn LogSink>,
) -> Result<(ember_sandbox::Sandbox, Instance, i32), (Option<ember_sandbox::Sandbox>, RungError)> {
    let (wiring, ours) = match Instance::wiring() {
        Ok(w) => w,
        Err(e) => return Err((Some(sb), RungError::Spawn(e))),
    };
    let program = match ember_snap::stopper::program_fd() {
        Ok(p) => p,
        Err(source) => {
            let e = ember_sandbox::SandboxError::Spawn {
                step: "preparing the stopper program",
                source,
            };
            return Err((Some(sb), RungError::Sandbox(e)));
        }
    };
    let span = info_span!("runtime.spawn");
    let made = node
        .spawner
        .run(move || {
            let _s = span.entered();
            let pid = sb.spawn_parked(program, &wiring.at_numbers());
            drop(wiring);
            (sb, pid.map(Unclaimed))
        })
        .await;
    // Without a spawner thread the job, and the sandbox with it, was dropped (which removes
    // the sandbox's cgroups). A start abandoned meanwhile drops the result on the spawner
    // thread, the process's parent, which then kills and collects it (`Unclaimed`).
    let Some((sb, pid)) = made else {
        let gone = RungError::Task("the node's spawner threads are gone".into());
        return Err((None, gone));
    };
    let pid = match pid {
        Ok(p) => p.claim(),
        Err(e) => return Err((Some(sb), RungError::Sandbox(e))),
    };
    match Instance::adopt(spec, log, pid, ours) {
        Ok(inst) => Ok((sb, inst, pid)),
        Err(e) => Err((Some(sb), RungError::Spawn(e))),
    }
}

/// What a restored instance's sandbox shows it besides the system: these directories,
/// read-only, and the host's network or none.
pub(in crate::node) struct Sees {
    pub read_only: Vec<PathBuf>,
    /// Directories at a path of their own (a function's layers at /opt).
    pub bound_at: Vec<(PathBuf, PathBuf)>,
    /// The size of its /tmp; the node's when none.
    pub tmp_bytes: Option<u64>,
    pub host_network: bool,
}

/// Whose fault a restore that did not give an instance was.
pub(in crate::node) enum Blame {
    /// The snapshot's (before HOOKED): counted against it, and the next rung serves.
    Snapshot(RungError),
    /// The function's own (after HOOKED: its import, its after-restore hooks): the
    /// invocation's answer; the function's log says why.
    Function(InvokeOutcome),
}

impl From<RungError> for Blame {
    fn from(e: RungError) -> Blame {
        Blame::Snapshot(e)
    }
}

/// A restored instance before its INIT.
pub(in crate::node) struct Restored {
    pub live: Live,
    /// Host pid of the sandbox's first process, now the restored runtime.
    pub pid: i32,
    pub sandbox: Duration,
    pub restore: Duration,
}

impl Node {
    /// A fresh sandbox whose first process is parked, with the image restored into it and
    /// handed over to the instance's user and filter.
    /// With `pooled`, the sandbox is a parked one made ahead (`standby.rs`) when one is
    /// there; `spec` then takes its instance id.
    #[allow(
        clippy::too_many_arguments,
        reason = "each is one part of the restore; a struct would be built for this call only"
    )]
    pub(in crate::node) async fn restore_instance(
        &self,
        spec: &mut StartSpec,
        sees: Sees,
        id: &str,
        pages: &Pages,
        policy: Policy,
        log: Arc<dyn LogSink>,
        pooled: bool,
    ) -> Result<Restored, RungError> {
        let boxes = self.sandboxes.as_ref().ok_or(RungError::NoSandbox)?;
        let t0 = Instant::now();
        let parked = match pooled {
            true => self.parked_take(&sees, spec, &log),
            false => None,
        };
        let (mut live, pid) = match parked {
            Some(p) => p,
            None => {
                let sb = boxes
                    .prepare(&InstanceSpec {
                        id: spec.instance_id.clone(),
                        memory_bytes: u64::from(spec.memory_mb) << 20,
                        read_only: sees.read_only,
                        // The restore sets the process's own (the image's).
                        bound_at: sees.bound_at.clone(),
                        tmp_bytes: sees.tmp_bytes,
                        cwd: PathBuf::from("/"),
                        host_network: sees.host_network,
                        runtime_api_port: None,
                    })
                    .map_err(RungError::Sandbox)?;
                match parked_instance(self, sb, spec, log).await {
                    Ok((sb, inst, pid)) => (Live::new(inst, Some(sb)), pid),
                    Err((sb, e)) => {
                        if let Some(sb) = sb {
                            sb.destroy().await;
                        }
                        return Err(e);
                    }
                }
            }
        };
        let sandbox = t0.elapsed();
        let handoff = live.sandbox.as_ref().map(|s| s.handoff());
        let (policy, working_set) = match (policy, &pages.working_set) {
            (Policy::Prefetch, None) => (Policy::Lazy, None),
            (p, ws) => (p, ws.clone()),
        };
        let opts = RestoreOptions {
            handoff: handoff.map(|h| ember_snap::Handoff {
                uid: h.uid,
                gid: h.gid,
                die_with_parent: true,
                seccomp: h.sock_filters(),
            }),
            policy,
            source: Some(pages.source.clone()),
            working_set,
            ..RestoreOptions::default()
        };
        let img = pages.image.clone();
        let t1 = Instant::now();
        let restored = tokio::task::spawn_blocking(move || {
            ember_snap::restore(&img, Target::Stopped { pid }, &opts)
        })
        .instrument(info_span!("start.restore", image = id, %policy))
        .await;
        match restored {
            Ok(Ok(r)) => {
                let s = &r.stats;
                tracing::debug!(
                    image = id,
                    pages = s.pages,
                    vmas = s.vmas,
                    attach_us = s.attach_us,
                    map_us = s.map_us,
                    fill_us = s.fill_us,
                    state_us = s.state_us,
                    finish_us = s.finish_us,
                    fill = ?s.fill_mode,
                    "restored"
                );
                live.pages = r.server;
                Ok(Restored {
                    live,
                    pid,
                    sandbox,
                    restore: t1.elapsed(),
                })
            }
            Ok(Err(e)) => {
                self.reap(live.kill());
                Err(RungError::Restore(e))
            }
            Err(e) => {
                self.reap(live.kill());
                Err(RungError::Task(e.to_string()))
            }
        }
    }
}

/// The page server's error, when it is what ended the instance.
impl Node {
    /// The second half of a start from a snapshot: INIT restored (environment, after-restore
    /// hooks, the handler's import unless the snapshot holds it), within the node's init
    /// timeout. On failure the instance is killed and the blame decided by HOOKED.
    pub(in crate::node) async fn init_restored_instance(
        &self,
        d: &Deployed,
        mut live: Live,
        spec: &StartSpec,
    ) -> Result<(Live, RestoredTiming), Blame> {
        let limit = self.cfg.init_timeout;
        let init = tokio::time::timeout(limit, live.inst.init_restored(spec))
            .instrument(info_span!("start.init"))
            .await;
        let blame = match init {
            Ok(Ok(t)) => {
                // Invocations count the sandbox's limit events from here.
                let _ = live.new_limit();
                return Ok((live, t));
            }
            // A page server that failed is the snapshot's fault, whatever the process did.
            _ if let Some(msg) = server_failure(&mut live) => {
                Blame::Snapshot(RungError::PageServer(msg))
            }
            Ok(Err(RestoredInitError::Image(e))) => Blame::Snapshot(RungError::Init(e)),
            Err(_) if !live.inst.hooked() => {
                Blame::Snapshot(RungError::InitTimeout(limit.as_secs()))
            }
            // Past HOOKED: the function's own code, never the shared snapshot's doing.
            Ok(Err(RestoredInitError::Function(StartError::Handler(fe)))) => {
                self.note(
                    d,
                    spec,
                    format!(
                        "importing the handler failed: {}: {}",
                        fe.error_type, fe.message
                    ),
                );
                Blame::Function(InvokeOutcome::InitError(fe))
            }
            Ok(Err(RestoredInitError::Function(e))) => {
                let hit = live.limit_hit(Duration::from_millis(200)).await;
                let msg = error_chain(&e);
                self.note(
                    d,
                    spec,
                    format!("instance failed while importing its handler: {msg}"),
                );
                Blame::Function(hit.map_or(InvokeOutcome::Crashed(msg), InvokeOutcome::Limit))
            }
            Err(_) => {
                self.note(
                    d,
                    spec,
                    format!(
                        "instance start timed out after {} s, importing its handler",
                        limit.as_secs()
                    ),
                );
                Blame::Function(InvokeOutcome::InitTimeout(limit))
            }
        };
        self.reap(live.kill());
        Err(blame)
    }

    /// Counts a restored instance of `d` as started and says in its log how (`how`: what it
    /// was restored from) and in how long.
    pub(in crate::node) fn restored_started(
        &self,
        d: &Deployed,
        spec: &StartSpec,
        live: &Live,
        how: &str,
        init: Duration,
    ) {
        self.count_started(d, &spec.instance_id, live.inst.pid());
        let text = format!(
            "instance started ({how}, sandboxed, pid {}) in {:.1} ms",
            live.inst.pid(),
            init.as_secs_f64() * 1e3
        );
        self.note(d, spec, text);
    }

    fn note(&self, d: &Deployed, spec: &StartSpec, text: String) {
        self.logs
            .append(&d.record.name, &spec.instance_id, "event", text.as_bytes());
    }
}

pub(in crate::node) fn server_failure(live: &mut Live) -> Option<String> {
    let finished = live.pages.as_ref().is_some_and(PageServer::is_finished);
    if !finished {
        return None;
    }
    live.pages.take()?.wait().err().map(|e| error_chain(&e))
}

/// Why `live`'s process was killed by its page server, when that is what ended it: a page
/// could not be had at its source (the snapshot store failed after a lazy restore's working
/// set arrived, a hibernated instance's file failed its checks). The server ends once the
/// process is gone: waited for briefly.
pub(in crate::node) async fn page_unavailable(live: &mut Live) -> Option<String> {
    if !live.pages_may_fail {
        return None;
    }
    if let Some(why) = live.page_failed.take() {
        return Some(why);
    }
    let t0 = Instant::now();
    while !live.pages.as_ref()?.is_finished() {
        if t0.elapsed() > Duration::from_millis(500) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    match live.pages.take()?.wait() {
        Err(e @ ember_snap::lazy::ServeError::Source { .. }) => Some(error_chain(&e)),
        Err(e) => {
            tracing::warn!(
                "the page server of a restored instance failed: {}",
                error_chain(&e)
            );
            None
        }
        Ok(_) => None,
    }
}
