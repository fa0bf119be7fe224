//! One invocation: admission, the start ladder, the run under the function's timeout and
//! the cgroup's watch, and the answer with its metrics.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ember_runtime::Outcome;
use ember_runtime::python::InvokeError;
use ember_sandbox::LimitReason;
use tracing::{Instrument, info_span};

use super::invocation::Served;
use super::ladder::{self, Climbed, Climber, Fall, Rung, StartPath};
use super::{
    Deployed, Invocation, InvokeOptions, InvokeOutcome, Node, NodeError, Timing, error_chain,
};
use crate::live::Live;
use crate::metrics::{ImageLabels, InvokeLabels, Metrics, StartLabels};
use crate::ratelimit::RateLimit;

impl Node {
    /// Adds what the page server of a restored instance did since the last report to the
    /// node's counters.
    pub(in crate::node) fn report_pages(&self, live: &mut Live) {
        self.report_server(live);
        release_finished_server(live);
    }

    fn report_server(&self, live: &mut Live) {
        let (Some(server), Some(image)) = (&live.pages, &live.image) else {
            return;
        };
        let now = server.stats();
        let before = std::mem::replace(&mut live.reported, now);
        let l = ImageLabels {
            image: image.clone(),
        };
        let m = &self.metrics;
        m.page_faults
            .get_or_create(&l)
            .inc_by(now.faults.saturating_sub(before.faults));
        m.pages_installed
            .get_or_create(&l)
            .inc_by(now.pages_installed.saturating_sub(before.pages_installed));
        m.page_bytes_fetched
            .get_or_create(&l)
            .inc_by(now.bytes_fetched.saturating_sub(before.bytes_fetched));
        m.page_fault_blocked
            .get_or_create(&l)
            .inc_by(now.blocked_us.saturating_sub(before.blocked_us) as f64 / 1e6);
    }

    /// Runs one invocation of `name` with the JSON `event`.
    pub async fn invoke(&self, name: &str, event: &[u8]) -> Result<Invocation, NodeError> {
        self.invoke_with(name, event, InvokeOptions::default())
            .await
    }

    /// [`Node::invoke`], with options.
    pub async fn invoke_with(
        &self,
        name: &str,
        event: &[u8],
        opts: InvokeOptions,
    ) -> Result<Invocation, NodeError> {
        let d = self.deployed(name)?;
        let request_id = opts
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let capture = opts.tail.then(|| self.logs.capture(name));
        let span = info_span!("invoke", function = name, request_id = %request_id);
        let mut inv = self
            .invoke_deployed(&d, request_id, event, &opts)
            .instrument(span)
            .await?;
        if let Some(c) = capture {
            let lines = c.finish(&inv.instance).await;
            inv.log_lines = Some(lines);
        }
        Ok(inv)
    }

    pub(in crate::node) async fn invoke_deployed(
        &self,
        d: &Arc<Deployed>,
        request_id: String,
        event: &[u8],
        opts: &InvokeOptions,
    ) -> Result<Invocation, NodeError> {
        let no_queue = opts.no_queue;
        let t0 = Instant::now();
        let rec = &d.record;
        let fn_labels = Metrics::fn_labels(&rec.name);
        let queue_depth = if no_queue { 0 } else { self.cfg.queue_depth };
        let Some(permit) = d
            .pool
            .admit(queue_depth, self.cfg.queue_timeout)
            .instrument(info_span!("queue"))
            .await
        else {
            self.metrics.throttled.get_or_create(&fn_labels).inc();
            return Err(NodeError::Throttled {
                function: rec.name.clone(),
                max_instances: rec.config.max_instances,
                queue_depth,
            });
        };
        self.invocation_started(d);
        let generation = d.pool.generation();
        let mut cx = StartCx {
            node: self,
            d,
            timing: Timing {
                queue: t0.elapsed(),
                ..Timing::default()
            },
            background: false,
        };
        // A start restored lazily whose page could not be had (the snapshot store failed
        // after its working set arrived) is killed before it can run anything unchecked;
        // the invocation then runs once more, on an instance from the ladder anew.
        let limit = Duration::from_secs(u64::from(rec.config.timeout_s));
        let mut again = true;
        let (mut inst, start, mut timing, mut imported, ran) = loop {
            let climbed = ladder::climb(&rungs(), &mut cx).await;
            let mut timing = std::mem::take(&mut cx.timing);
            let (mut inst, start) = match climbed {
                Climbed::Started {
                    inst,
                    path,
                    fallback,
                } => {
                    timing.fallback = fallback;
                    (inst, path)
                }
                Climbed::Ended {
                    outcome,
                    path,
                    fallback,
                    gated,
                } => {
                    timing.fallback = fallback;
                    if !gated {
                        d.crash_loop.failed(&outcome, Instant::now());
                    }
                    timing.total = t0.elapsed();
                    let served = Served::none(path);
                    return Ok(self.finish(d, request_id, served, timing, outcome));
                }
            };
            if start != StartPath::Warm {
                d.crash_loop.started();
                if timing.fallback.is_none() {
                    d.start_costs.record(start, timing.init());
                }
            }
            let imported = inst.inst.take_imported();
            if let Some(r) = &opts.running {
                r.send_replace(true);
            }
            let ran = watched(
                &mut inst,
                &request_id,
                limit,
                event,
                opts.client_context.as_ref(),
            )
            .instrument(info_span!("exec"))
            .await;
            self.report_pages(&mut inst);
            if again
                && matches!(ran, Ran::Done(Err(_)))
                && let Some(why) = super::restore::page_unavailable(&mut inst).await
            {
                again = false;
                // The store's snapshot is at fault, not a hibernated instance's own file.
                if start != StartPath::Hibernated
                    && let Some(id) = &inst.snapshot
                {
                    self.lazy_sets.forget(id);
                }
                self.discard(d, inst, &why);
                self.logs.append(
                    &rec.name,
                    "ember",
                    "event",
                    format!(
                        "an instance was stopped in the middle of request {request_id}: {why}; \
                         the request runs again on another instance"
                    )
                    .as_bytes(),
                );
                cx.timing.queue = timing.queue;
                continue;
            }
            break (inst, start, timing, imported, ran);
        };
        let instance_id = inst.id().to_string();
        let image = inst.image.clone();
        let snapshot = inst.snapshot.clone();
        let outcome = match ran {
            Ran::TimedOut => {
                self.discard(
                    d,
                    inst,
                    &format!("timed out after {} s", rec.config.timeout_s),
                );
                InvokeOutcome::Timeout(limit)
            }
            Ran::Limit(reason) => {
                self.discard(d, inst, &format!("limit reached: {}", reason.as_str()));
                InvokeOutcome::Limit(reason)
            }
            Ran::Done(Err(e)) => {
                let msg = e.to_string();
                match inst.limit_hit(Duration::from_millis(500)).await {
                    Some(reason) => {
                        self.discard(d, inst, &format!("limit reached: {}", reason.as_str()));
                        InvokeOutcome::Limit(reason)
                    }
                    None => {
                        self.discard(d, inst, &msg);
                        InvokeOutcome::Crashed(msg)
                    }
                }
            }
            Ran::Done(Ok(out)) if let Some(reason) = inst.new_limit() => {
                // The kernel stopped something during this invocation (a child OOM-killed, a
                // fork storm the handler survived): this invocation is charged with it, and
                // the instance goes, whatever the handler answered.
                timing.exec = Some(match &out {
                    Outcome::Result { exec, .. } => *exec,
                    Outcome::Error(fe) => Duration::from_micros(fe.duration_us),
                });
                self.discard(d, inst, &format!("limit reached: {}", reason.as_str()));
                InvokeOutcome::Limit(reason)
            }
            Ran::Done(Ok(out)) => {
                if start != StartPath::Warm {
                    // What a forked start wrote: its template's standbys write it ahead.
                    self.learn_write_set(&inst);
                    // What a recording restore touched: other nodes fetch it first.
                    self.record_working_set(&mut inst);
                }
                // What its first invocation imported, learned as the handler's import's.
                imported.extend(inst.inst.take_imported());
                if rec.cold_only() {
                    self.discard(d, inst, "cold-only: it served its request");
                } else if start != StartPath::Warm
                    && matches!(out, Outcome::Result { .. })
                    && self.first_invoke_snapshot_wanted(d)
                {
                    // Off the request path: the answer goes now, the instance is dumped, then
                    // stopped (its before-snapshot hooks ran in it); it holds its permit.
                    self.snapshot_after_first_invoke(d, inst, permit, generation, timing.init());
                } else if let Some(w) = self.invocation_ended(d) {
                    // Its keep-alive policy pre-warms one for the next invocation instead:
                    // this one, hibernated until then (or stopped).
                    let why = "stopped until its next pre-warm";
                    self.hibernate_or_stop(d, inst, w.hibernate, why, generation);
                } else if let Some(stale) = d.pool.put_back(inst, generation) {
                    self.discard(d, stale, "stopped while busy");
                }
                match out {
                    Outcome::Result { payload, exec } => {
                        timing.exec = Some(exec);
                        InvokeOutcome::Ok(payload)
                    }
                    Outcome::Error(mut fe) => {
                        timing.exec = Some(Duration::from_micros(fe.duration_us));
                        if fe.marshal {
                            fe.error_type = "Runtime.MarshalError".into();
                            fe.message =
                                format!("the handler's result is not JSON: {}", fe.message);
                        }
                        InvokeOutcome::HandlerError(fe)
                    }
                }
            }
        };
        timing.total = t0.elapsed();
        if matches!(
            start,
            StartPath::Image | StartPath::FunctionSnapshot | StartPath::Hibernated
        ) {
            // Tops the standby instances and parked sandboxes up once this request is
            // answered: a refill forks and restores, which would slow the start it follows.
            self.standby_refill();
        }
        // So does an image rebuild with what the start imported (learn.rs).
        self.learn_imports(d, imported);
        let served = Served {
            start,
            image,
            snapshot,
            instance: instance_id,
        };
        Ok(self.finish(d, request_id, served, timing, outcome))
    }

    pub(in crate::node) fn finish(
        &self,
        d: &Deployed,
        request_id: String,
        served: Served,
        timing: Timing,
        outcome: InvokeOutcome,
    ) -> Invocation {
        let Served {
            start,
            image,
            snapshot,
            instance,
        } = served;
        let function = d.record.name.clone();
        self.metrics
            .invocations
            .get_or_create(&InvokeLabels {
                function: function.clone(),
                start: start.as_str().to_string(),
                outcome: outcome.label().to_string(),
            })
            .inc();
        self.metrics
            .init_seconds
            .get_or_create(&StartLabels {
                function: function.clone(),
                start: start.as_str().to_string(),
            })
            .observe(timing.init().as_secs_f64());
        if let Some(exec) = timing.exec {
            self.metrics
                .exec_seconds
                .get_or_create(&Metrics::fn_labels(&function))
                .observe(exec.as_secs_f64());
        }
        Invocation {
            request_id,
            function,
            cold_only: d.record.cold_only(),
            log_lines: None,
            memory_mb: d.record.config.memory_mb,
            version: d.record.version,
            start,
            image,
            snapshot,
            instance,
            timing,
            outcome,
        }
    }
}

pub(in crate::node) enum Ran {
    Done(Result<Outcome, InvokeError>),
    TimedOut,
    Limit(LimitReason),
}

/// Runs one invocation under the function's timeout, and, when sandboxed, watches the
/// cgroup's counters so that a fork storm or an OOM in a child process ends it at once
/// (within 100 ms) rather than at the timeout.
pub(in crate::node) async fn watched(
    live: &mut Live,
    request_id: &str,
    limit: Duration,
    event: &[u8],
    client_context: Option<&serde_json::Value>,
) -> Ran {
    const TICK: Duration = Duration::from_millis(100);
    let Live {
        inst,
        sandbox,
        limits_seen,
        ..
    } = live;
    let invoke = inst.invoke(request_id, SystemTime::now() + limit, event, client_context);
    tokio::pin!(invoke);
    let timeout = tokio::time::sleep(limit);
    tokio::pin!(timeout);
    // The first look comes after one tick: short invocations never read a cgroup file.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    loop {
        tokio::select! {
            r = &mut invoke => return Ran::Done(r),
            _ = &mut timeout => return Ran::TimedOut,
            _ = tick.tick(), if sandbox.is_some() => {
                let seen = *limits_seen;
                if let Some(reason) = sandbox.as_ref().and_then(|s| s.events().since(seen).reason()) {
                    return Ran::Limit(reason);
                }
            }
        }
    }
}

/// Lets a finished page server go: its source may keep what it read (a file's chunks), and
/// the process has every page. Its failure is kept for `page_unavailable`; nothing is let go
/// while the instance's working set is to be recorded from it.
pub(in crate::node) fn release_finished_server(live: &mut Live) {
    if live.records.is_none()
        && live.pages.as_ref().is_some_and(|s| s.is_finished())
        && let Some(Err(e)) = live.pages.take().map(|s| s.wait())
    {
        let why = error_chain(&e);
        match e {
            ember_snap::lazy::ServeError::Source { .. } if live.pages_may_fail => {
                live.page_failed = Some(why);
            }
            _ => tracing::warn!(
                instance = live.id(),
                "the page server of a restored instance failed: {why}"
            ),
        }
    }
}

/// The rungs of the ladder, in the order they are tried.
fn rungs<'r, 'c>() -> [&'r (dyn Rung<StartCx<'c>, Live> + 'r); 6] {
    [
        &ladder::warm::Warm,
        &ladder::premade::Premade,
        &ladder::hibernated::Hibernated,
        &ladder::function_snapshot::FunctionSnapshot,
        &ladder::image::Image,
        &ladder::cold_boot::ColdBoot,
    ]
}

/// What the rungs of one start work with.
pub(in crate::node) struct StartCx<'a> {
    pub node: &'a Node,
    pub d: &'a Arc<Deployed>,
    pub timing: Timing,
    /// A start for a snapshot, not for an invocation: not counted or logged as one.
    pub background: bool,
}

impl Climber for StartCx<'_> {
    fn fell(&mut self, fall: &Fall, then: StartPath) {
        let name = &self.d.record.name;
        let msg = error_chain(&fall.error);
        if self.background {
            tracing::info!(function = %name, rung = fall.rung, "a start for a function snapshot: {} failed: {msg}", fall.what);
            return;
        }
        let instead = match then {
            StartPath::Warm => "a warm instance",
            StartPath::Hibernated => "a hibernated instance",
            StartPath::FunctionSnapshot => "a function snapshot",
            StartPath::Image => "an image",
            StartPath::ColdBoot => "cold boot",
        };
        self.node
            .metrics
            .start_fallbacks
            .get_or_create(&crate::metrics::RungLabels {
                function: name.clone(),
                rung: fall.rung.to_string(),
            })
            .inc();
        self.node.logs.append(
            name,
            "ember",
            "event",
            format!(
                "starting from {} failed, {instead} instead: {msg}",
                fall.what
            )
            .as_bytes(),
        );
        static LIMIT: RateLimit = RateLimit::new(Duration::from_secs(10), 5);
        if let Some(dropped) = LIMIT.allow() {
            tracing::warn!(function = %name, rung = fall.rung, dropped, "starting from {} failed; {instead} instead: {msg}", fall.what);
        }
    }

    fn gate(&mut self) -> Option<InvokeOutcome> {
        self.d.crash_loop.holds(Instant::now())
    }
}
