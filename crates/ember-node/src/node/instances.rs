//! An instance's surroundings: its sandbox, its process spec, the pre-made sandboxes of
//! native functions, and stopping it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use ember_runtime::exec::ExecSpec;
use ember_runtime::python::StartError;
use ember_runtime::{StartSpec, native};
use ember_sandbox::InstanceSpec;

use super::{Deployed, InvokeOutcome, Node, error_chain};
use crate::function::Network;
use crate::live::{Live, Proc};
use crate::metrics::Metrics;

impl Node {
    pub(in crate::node) fn discard_all(&self, d: &Deployed, instances: Vec<Live>, why: &str) {
        for i in instances {
            self.discard(d, i, why);
        }
    }

    pub(in crate::node) fn discard(&self, d: &Deployed, inst: Live, why: &str) {
        let teardown = self.stop(d, inst, why);
        self.reap(teardown);
    }

    /// Stops an instance; the removal of its sandbox goes on in the returned task.
    pub(in crate::node) fn stop(
        &self,
        d: &Deployed,
        inst: Live,
        why: &str,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let name = &d.record.name;
        self.logs.append(
            name,
            inst.id(),
            "event",
            format!("instance stopped: {why}").as_bytes(),
        );
        tracing::debug!(function = %name, instance = inst.id(), why, "instance stopped");
        d.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(inst.id());
        d.pool.live().fetch_sub(1, Ordering::SeqCst);
        self.metrics
            .instances
            .get_or_create(&Metrics::fn_labels(name))
            .dec();
        inst.kill()
    }

    pub(in crate::node) fn reap(&self, task: Option<tokio::task::JoinHandle<()>>) {
        if let Some(t) = task {
            let mut r = self.reaping.lock().unwrap_or_else(|p| p.into_inner());
            r.retain(|t| !t.is_finished());
            r.push(t);
        }
    }

    /// Where an instance sees host path `p` (the sandbox's fixed paths; without the
    /// sandbox, `p` itself).
    pub(in crate::node) fn seen(&self, p: &std::path::Path) -> PathBuf {
        match &self.sandboxes {
            Some(b) => b.inside(p),
            None => p.to_path_buf(),
        }
    }

    /// A new instance of `d` running `python`, preloading `imports` (none when restored).
    pub(in crate::node) fn instance_spec(
        &self,
        d: &Deployed,
        id: String,
        python: PathBuf,
        imports: Vec<String>,
    ) -> StartSpec {
        let rec = &d.record;
        StartSpec {
            instance_id: id,
            function: rec.name.clone(),
            version: rec.version,
            handler: rec.config.handler.clone(),
            memory_mb: rec.config.memory_mb,
            python: self.seen(&python),
            bootstrap: self.seen(&self.bootstrap),
            code_dir: self.seen(&d.code_dir),
            imports,
            env: rec.config.runtime_env(),
        }
    }

    /// A sandbox for a new instance of `d` (none when the node runs without), with its
    /// Runtime API listener for a `provided` runtime.
    pub(in crate::node) fn new_sandbox(
        &self,
        d: &Deployed,
        instance_id: &str,
    ) -> Result<Option<ember_sandbox::Sandbox>, InvokeOutcome> {
        let Some(boxes) = &self.sandboxes else {
            return Ok(None);
        };
        let rec = &d.record;
        // Only what this function needs: its code, its packages, the Python bootstrap. A
        // native executable needs its code alone (each mount costs its start time).
        let runtime = rec.config.runtime;
        let mut read_only = vec![d.code_dir.clone()];
        if runtime.sees_packages() {
            read_only.push(d.env.dir.clone());
        }
        if runtime.sees_bootstrap() {
            read_only.push(self.bootstrap.clone());
        }
        let made = boxes.prepare(&InstanceSpec {
            id: instance_id.to_string(),
            memory_bytes: rec.config.memory_bytes(),
            read_only,
            bound_at: d.opt_binds(),
            tmp_bytes: Some(d.tmp_bytes(&self.cfg)),
            cwd: d.code_dir.clone(),
            host_network: rec.config.network == Network::Host,
            runtime_api_port: runtime
                .runtime_api()
                .then_some(ember_runtime::provided::SANDBOX_PORT),
        });
        made.map(Some).map_err(|e| {
            let msg = error_chain(&e);
            self.logs.append(
                &rec.name,
                instance_id,
                "event",
                format!("the sandbox could not be created: {msg}").as_bytes(),
            );
            tracing::error!(function = %rec.name, "creating a sandbox failed: {msg}");
            InvokeOutcome::StartFailed(msg)
        })
    }

    /// Tops up `d`'s pre-made sandboxes (native functions, in the sandbox, `prestart` > 0) in
    /// the background, one refill at a time.
    pub(in crate::node) fn refill(&self, d: &Arc<Deployed>) {
        let want = self.cfg.prestart;
        if want == 0
            || self.sandboxes.is_none()
            || !d.record.config.runtime.can_premake()
            || d.pool.filling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let (me, d) = (self.me.clone(), d.clone());
        tokio::spawn(async move {
            while let Some(node) = me.upgrade() {
                if d.pool.is_retired() || d.pool.parked_count() >= want {
                    break;
                }
                match node.prestart(&d) {
                    Ok(live) => {
                        if let Some(late) = d.pool.park(live) {
                            node.discard(&d, late, "its function was replaced");
                        }
                    }
                    Err(msg) => {
                        // Requests make their own sandboxes meanwhile, and say why if they fail.
                        tracing::warn!(function = %d.record.name, "pre-making a sandbox failed: {msg}");
                        break;
                    }
                }
            }
            d.pool.filling.store(false, Ordering::SeqCst);
        });
    }

    /// A native instance in a new sandbox, spawned and stopped before its first instruction.
    pub(in crate::node) fn prestart(&self, d: &Deployed) -> Result<Live, String> {
        let id = instance_id(&d.record.name);
        let mut sandbox = self
            .new_sandbox(d, &id)
            .map_err(|o| o.label().to_string())?;
        let (inst, pid) = self
            .start_native(d, &id, &mut sandbox, true)
            .map_err(|e| error_chain(&e))?;
        let Some(pid) = pid else {
            inst.kill();
            return Err("its first process is not in its cgroup".into());
        };
        self.count_started(d, &id, inst.pid());
        let mut live = Live::new(Proc::Native(inst), sandbox);
        live.parked = Some(pid);
        Ok(live)
    }

    /// Starts the native executable of `d` in `sandbox`, parked before its first instruction
    /// when `parked`. Returns the host pid of the instance's first process (in the sandbox),
    /// whose mounts the sandbox now holds: the exit of a process per request would otherwise
    /// unmount its whole tree on the request's path.
    pub(in crate::node) fn start_native(
        &self,
        d: &Deployed,
        id: &str,
        sandbox: &mut Option<ember_sandbox::Sandbox>,
        parked: bool,
    ) -> Result<(native::Instance, Option<i32>), StartError> {
        let exec = self.exec_spec(d, id.to_string());
        let inst = native::Instance::start(&exec, self.logs.sink(&d.record.name), |cmd| {
            match sandbox.as_mut() {
                Some(sb) if parked => sb.attach_stopped(cmd),
                Some(sb) => sb.attach(cmd),
                None => {}
            }
        })?;
        let pid = sandbox.as_mut().and_then(|sb| {
            let pid = sb.first_process()?;
            sb.hold_mounts(pid);
            Some(pid)
        });
        Ok((inst, pid))
    }

    /// Counts a new live instance of `d`, `id` with host pid `pid` (the pool's count, its
    /// members and the gauge; [`Node::stop`] takes it back).
    pub(in crate::node) fn count_started(&self, d: &Deployed, id: &str, pid: u32) {
        d.members.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id.to_string(),
            Member {
                pid,
                since: super::now_secs(),
            },
        );
        d.pool.live().fetch_add(1, Ordering::SeqCst);
        self.metrics
            .instances
            .get_or_create(&Metrics::fn_labels(&d.record.name))
            .inc();
    }

    /// The process spec of a `provided` or `native` instance of `d`.
    pub(in crate::node) fn exec_spec(&self, d: &Deployed, instance_id: String) -> ExecSpec {
        let rec = &d.record;
        let node_js = rec.config.runtime == crate::function::Runtime::Node;
        let program = match rec.config.runtime.entry_point(&rec.config.handler) {
            // A custom runtime's `bootstrap` from its layers when its code has none (as
            // Lambda's): /opt is where instances see them.
            Some(("bootstrap", _))
                if rec.config.runtime == crate::function::Runtime::Provided
                    && !d.code_dir.join("bootstrap").exists()
                    && d.opt_dir
                        .as_ref()
                        .is_some_and(|o| o.join("bootstrap").exists()) =>
            {
                PathBuf::from("/opt/bootstrap")
            }
            Some((rel, _)) => d.code_dir.join(rel),
            None if node_js => self.cfg.node_js.clone(),
            None => d.code_dir.join("bootstrap"),
        };
        let python = self.seen(&d.env.python());
        let (args, runtime_dir) = if node_js {
            let dir = self.seen(&self.bootstrap);
            let js = dir.join(ember_runtime::python::BOOTSTRAP_JS_NAME);
            (vec![js.to_string_lossy().into_owned()], dir)
        } else {
            (Vec::new(), self.seen(&d.code_dir))
        };
        ExecSpec {
            instance_id,
            function: rec.name.clone(),
            version: rec.version,
            handler: rec.config.handler.clone(),
            memory_mb: rec.config.memory_mb,
            code_dir: self.seen(&d.code_dir),
            program: self.seen(&program),
            args,
            runtime_dir,
            // The package environment first: a bootstrap's `python3` is the function's.
            bin_dirs: python.parent().map(PathBuf::from).into_iter().collect(),
            env: rec.config.runtime_env(),
            region: crate::function::REGION.to_string(),
        }
    }
}

/// A new instance's id: `<function>-<12 hex digits>`.
pub(in crate::node) fn instance_id(function: &str) -> String {
    format!(
        "{function}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A live instance as listings show it.
pub(in crate::node) struct Member {
    pub pid: u32,
    pub since: u64,
}

/// Where an instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Idle in memory, ready for the next request.
    Warm,
    /// Serving a request (or being started, or snapshotted).
    Busy,
    /// Being dumped to disk.
    Hibernating,
    /// On local disk, its memory freed.
    Hibernated,
    /// Started ahead and stopped before its first instruction (a native function's).
    Prestarted,
}

/// One instance of a function, in memory or hibernated (`GET /v1/instances`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub function: String,
    pub state: InstanceState,
    /// Memory it holds (its processes' proportional set size) or, hibernated, its dump's
    /// bytes on disk.
    pub bytes: u64,
    /// Its resident set, in memory (pages shared with other instances counted whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Seconds since the epoch: when it started, or was hibernated.
    pub since: u64,
    /// Hibernated: what its dump is a layer over.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_over: Option<String>,
}

impl Node {
    /// Every instance on this node (of `function` only, when given): warm, busy,
    /// hibernating or hibernated, with the bytes each holds.
    pub fn instances(&self, function: Option<&str>) -> Vec<InstanceStatus> {
        let all: Vec<Arc<Deployed>> = self
            .read_functions()
            .values()
            .filter(|d| function.is_none_or(|f| d.record.name == f))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for d in all {
            let idle: std::collections::HashSet<String> = d.pool.idle_ids().into_iter().collect();
            let prestarted = d.pool.parked_count() > 0;
            let members: Vec<(String, u32, u64)> = d
                .members
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(id, m)| (id.clone(), m.pid, m.since))
                .collect();
            for (id, pid, since) in members {
                let state = if self.is_hibernating(&id) {
                    InstanceState::Hibernating
                } else if idle.contains(&id) {
                    match prestarted && d.record.config.runtime.one_request_per_instance() {
                        true => InstanceState::Prestarted,
                        false => InstanceState::Warm,
                    }
                } else {
                    InstanceState::Busy
                };
                let (pss, rss) = crate::sys::process_memory(pid);
                out.push(InstanceStatus {
                    instance: id,
                    function: d.record.name.clone(),
                    state,
                    bytes: pss.unwrap_or(0),
                    rss_bytes: rss,
                    pid: Some(pid),
                    since,
                    layer_over: None,
                });
            }
        }
        let live: std::collections::HashSet<String> =
            out.iter().map(|i| i.instance.clone()).collect();
        for e in self.hibernated.list() {
            // Dumped, not stopped yet: listed once, as hibernating.
            if function.is_some_and(|f| e.function != f) || live.contains(&e.instance) {
                continue;
            }
            out.push(InstanceStatus {
                instance: e.instance.clone(),
                function: e.function.clone(),
                state: InstanceState::Hibernated,
                bytes: e.bytes,
                rss_bytes: None,
                pid: None,
                since: e.at_unix,
                layer_over: Some(e.origin.describe()),
            });
        }
        out.sort_by(|a, b| (&a.function, &a.instance).cmp(&(&b.function, &b.instance)));
        out
    }

    /// Bytes of hibernated instances on disk, and the budget.
    pub fn hibernated_bytes(&self) -> (u64, u64) {
        (self.hibernated.bytes(), self.hibernated.budget())
    }
}
