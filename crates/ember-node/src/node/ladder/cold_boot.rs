//! The last rung: a new process, booted (Python: interpreter, packages, handler; `provided`:
//! the code's `bootstrap` until it asks for an event; `native`: the executable). It never
//! falls through: its failure is the invocation's answer.

use std::time::{Duration, Instant};

use ember_runtime::protocol::FunctionError;
use ember_runtime::python::StartError;
use ember_runtime::{Instance, provided};
use ember_sandbox::{LimitReason, killed_by_seccomp};
use tracing::{Instrument, info_span};

use super::{Attempt, AttemptFuture, Rung, StartPath};
use crate::function::Runtime;
use crate::live::{Live, Proc};
use crate::node::invoke::StartCx;
use crate::node::{Deployed, InvokeOutcome, Node, Timing, error_chain, instance_id};
use crate::ratelimit::RateLimit;

/// The cold-boot rung.
pub(in crate::node) struct ColdBoot;

impl<'c> Rung<StartCx<'c>, Live> for ColdBoot {
    fn path(&self) -> StartPath {
        StartPath::ColdBoot
    }
    fn name(&self) -> &'static str {
        "cold boot"
    }
    fn starts_new(&self) -> bool {
        true
    }
    fn attempt<'a>(&'a self, cx: &'a mut StartCx<'c>) -> AttemptFuture<'a, Live> {
        Box::pin(async move {
            match cx.node.cold_boot(cx.d, &mut cx.timing).await {
                Ok(live) => Attempt::Started(live),
                Err(outcome) => Attempt::Ended(outcome),
            }
        })
    }
}

impl Node {
    pub(in crate::node) async fn cold_boot(
        &self,
        d: &Deployed,
        timing: &mut Timing,
    ) -> Result<Live, InvokeOutcome> {
        let rec = &d.record;
        let id = instance_id(&rec.name);
        let note = |text: String| self.logs.append(&rec.name, &id, "event", text.as_bytes());
        let t_sandbox = Instant::now();
        let mut sandbox = self.new_sandbox(d, &id)?;
        if sandbox.is_some() {
            timing.sandbox = Some(t_sandbox.elapsed());
        }
        let span = info_span!("start.cold_boot", instance = %id);
        let started = match rec.config.runtime {
            Runtime::Python => {
                self.boot_python(d, &id, &mut sandbox, timing)
                    .instrument(span)
                    .await
            }
            Runtime::Native => {
                let _s = span.entered();
                let t0 = Instant::now();
                let started = self.start_native(d, &id, &mut sandbox, false);
                timing.spawn = Some(t0.elapsed());
                started
                    .map(|(inst, _)| Proc::Native(inst))
                    .map_err(NotStarted::Failed)
            }
            // Node.js runs Ember's JavaScript bootstrap, a Runtime API client.
            Runtime::Provided | Runtime::Node => {
                self.boot_provided(d, &id, &mut sandbox, timing)
                    .instrument(span)
                    .await
            }
        };
        let outcome = match started {
            Ok(inst) => {
                self.count_started(d, inst.id(), inst.pid());
                // A native instance's whole life is one request: its start is not news.
                if !rec.config.runtime.one_request_per_instance() {
                    note(format!(
                        "instance started (cold-boot, {}{}, pid {}) in {:.1} ms",
                        rec.config.runtime.as_str(),
                        if sandbox.is_some() { ", sandboxed" } else { "" },
                        inst.pid(),
                        timing.init().as_secs_f64() * 1e3
                    ));
                }
                let mut live = Live::new(inst, sandbox);
                // What happened during the start was the start's; invocations count from here.
                let _ = live.new_limit();
                return Ok(live);
            }
            Err(NotStarted::Failed(StartError::Handler(fe))) => {
                note(format!(
                    "initialisation failed: {}: {}",
                    fe.error_type, fe.message
                ));
                InvokeOutcome::InitError(fe)
            }
            Err(NotStarted::Failed(e @ (StartError::Spawn { .. } | StartError::Socket(_)))) => {
                let msg = error_chain(&e);
                note(format!("instance could not be started: {msg}"));
                tracing::error!(function = %rec.name, "cold boot failed: {msg}");
                InvokeOutcome::StartFailed(msg)
            }
            Err(NotStarted::Failed(e)) => {
                let limit = sandbox
                    .as_ref()
                    .and_then(|s| s.events().reason())
                    .or_else(|| {
                        matches!(&e, StartError::Exited(st) if killed_by_seccomp(st))
                            .then_some(LimitReason::Seccomp)
                    });
                let msg = e.to_string();
                note(format!("instance failed during start-up: {msg}"));
                // The function's own doing, possibly at every invocation: rate-limited.
                static LIMIT: RateLimit = RateLimit::new(Duration::from_secs(10), 5);
                if let Some(dropped) = LIMIT.allow() {
                    tracing::warn!(function = %rec.name, dropped, "cold boot failed: {msg}");
                }
                match limit {
                    Some(l) => InvokeOutcome::Limit(l),
                    // An executable that exits before it is ready is Lambda's init error.
                    None if rec.config.runtime.runtime_api() => {
                        InvokeOutcome::InitError(FunctionError {
                            error_type: "Runtime.ExitError".into(),
                            message: format!(
                                "the runtime exited before asking for an event: {msg}"
                            ),
                            traceback: Vec::new(),
                            duration_us: 0,
                            marshal: false,
                        })
                    }
                    None => InvokeOutcome::Crashed(msg),
                }
            }
            Err(NotStarted::InitTimeout) => {
                let limit = self.cfg.init_timeout;
                note(format!(
                    "instance start timed out after {} s",
                    limit.as_secs()
                ));
                InvokeOutcome::InitTimeout(limit)
            }
            Err(NotStarted::Timeout(limit)) => {
                note(format!(
                    "the runtime did not ask for an event (invocation/next) within the \
                     function's timeout of {} s",
                    limit.as_secs()
                ));
                InvokeOutcome::Timeout(limit)
            }
        };
        if let Some(sb) = sandbox {
            self.reap(Some(tokio::spawn(sb.destroy())));
        }
        Err(outcome)
    }

    /// Ember's Python runtime: interpreter, packages, handler, within the node's init timeout.
    pub(in crate::node) async fn boot_python(
        &self,
        d: &Deployed,
        id: &str,
        sandbox: &mut Option<ember_sandbox::Sandbox>,
        timing: &mut Timing,
    ) -> Result<Proc, NotStarted> {
        let spec = self.instance_spec(d, id.to_string(), d.env.python(), d.env.imports.clone());
        let start = Instance::start(&spec, self.logs.sink(&d.record.name), |cmd| {
            if let Some(sb) = sandbox.as_mut() {
                sb.attach(cmd);
            }
        });
        match tokio::time::timeout(self.cfg.init_timeout, start).await {
            Ok(Ok((inst, boot))) => {
                timing.spawn = Some(boot.spawn);
                timing.interpreter = Some(boot.interpreter);
                timing.import_packages = Some(boot.import_packages);
                timing.import_handler = Some(boot.import_handler);
                Ok(Proc::Python(inst))
            }
            Ok(Err(e)) => Err(NotStarted::Failed(e)),
            Err(_) => Err(NotStarted::InitTimeout),
        }
    }

    /// A custom runtime, ready when it first asks for an event. Lambda's rule: one that never
    /// asks gets the function's timeout (from its start), not the node's init timeout.
    pub(in crate::node) async fn boot_provided(
        &self,
        d: &Deployed,
        id: &str,
        sandbox: &mut Option<ember_sandbox::Sandbox>,
        timing: &mut Timing,
    ) -> Result<Proc, NotStarted> {
        let rec = &d.record;
        let listener = match sandbox.as_mut().and_then(|s| s.take_listener()) {
            Some(l) => l,
            // Unsandboxed or with the host's network: the host's loopback.
            None => std::net::TcpListener::bind(("127.0.0.1", 0))
                .map_err(|e| NotStarted::Failed(StartError::Socket(e)))?,
        };
        let addr = listener
            .local_addr()
            .map_err(|e| NotStarted::Failed(StartError::Socket(e)))?
            .to_string();
        let exec = self.exec_spec(d, id.to_string());
        let arn = crate::function::function_arn(&rec.name);
        let sink = self.logs.sink(&rec.name);
        let start = provided::Instance::start(&exec, arn, listener, &addr, sink, |cmd| {
            if let Some(sb) = sandbox.as_mut() {
                sb.attach(cmd);
            }
        });
        let limit = Duration::from_secs(u64::from(rec.config.timeout_s));
        match tokio::time::timeout(limit, start).await {
            Ok(Ok((inst, init))) => {
                timing.runtime_init = Some(init);
                Ok(Proc::Provided(inst))
            }
            Ok(Err(e)) => Err(NotStarted::Failed(e)),
            Err(_) => Err(NotStarted::Timeout(limit)),
        }
    }
}

/// Why a cold boot did not give an instance.
pub(in crate::node) enum NotStarted {
    Failed(StartError),
    /// The node's init timeout passed.
    InitTimeout,
    /// A `provided` runtime did not ask for an event within the function's timeout.
    Timeout(Duration),
}
