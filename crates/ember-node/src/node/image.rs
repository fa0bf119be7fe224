//! The dependency-image rung of the start ladder, and how images are made.
//!
//! ```text
//! build:  env -> sandbox -> runtime: interpreter, imports, pre-snapshot hook (BOOT snapshot)
//!             -> dump (ember-snap) -> kill -> test restore into a fresh sandbox, lazily,
//!                selfcheck handler, one event; its touched pages become the working set
//!             -> image.json -> catalog (and the memory pool when it fits)
//! start:  checkout -> fresh sandbox, first process parked -> restore (policy, handoff to
//!             the instance's user and filter) -> INIT restored: environment, after-restore
//!             hook (reseed), handler import -> READY
//!         a failure before the runtime says HOOKED (sandbox, restore, page source, hook):
//!         the image's: logged, counted, the image marked unhealthy after repeated failures,
//!         and the caller cold-boots instead; a failure after HOOKED (the handler's import
//!         raises, crashes, hits a limit, hangs): the function's alone, its crash-loop backoff
//!         counts it and the image stays healthy
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ember_runtime::python::{RestoredInitError, StartError};
use ember_runtime::{Instance, LogSink, Outcome, StartSpec, Stream};
use ember_sandbox::InstanceSpec;
use ember_snap::lazy::{PageServer, Policy};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions, Target};
use tracing::{Instrument, info_span};

use super::{Deployed, InvokeOutcome, Node, NodeError, Timing, error_chain, now_secs};
use crate::envs::PackageEnv;
use crate::function::{Network, Runtime};
use crate::images::{ImageError, ImageInfo, ImageStatus, Pages, image_id};
use crate::live::Live;
use crate::metrics::ImageLabels;
use crate::ratelimit::RateLimit;

/// How a start from an image ended.
pub(super) enum FromImage {
    Started(Box<Live>),
    /// The image could not serve (logged and counted); the caller cold-boots.
    Failed,
    /// The function's own failure (its handler import raised): no fallback.
    Outcome(InvokeOutcome),
}

/// The descriptors a runtime inherits: stdin, stdout, stderr and the protocol socket.
const INHERITED: [i32; 4] = [0, 1, 2, 3];

/// Standard-library modules every image imports beside its packages: handlers commonly
/// import them, and with them in the image their import costs nothing. Several seed a
/// generator at import, which the after-restore hook reseeds.
const STDLIB_PRELOAD: &[&str] = &["json", "random", "uuid", "tempfile", "datetime", "base64"];

/// Submodules a package leaves to be imported on first use that handlers commonly need.
const SUBMODULE_PRELOAD: &[(&str, &[&str])] = &[("numpy", &["numpy.random", "numpy.linalg"])];

/// What an image for `env` imports before it is dumped.
fn image_imports(env: &PackageEnv) -> Vec<String> {
    let mut v: Vec<String> = STDLIB_PRELOAD.iter().map(|s| s.to_string()).collect();
    for m in &env.imports {
        v.push(m.clone());
        if let Some((_, subs)) = SUBMODULE_PRELOAD.iter().find(|(p, _)| p == m) {
            v.extend(subs.iter().map(|s| s.to_string()));
        }
    }
    v
}

/// Where an image build's runtime output goes: the daemon's log.
struct BuildLog;

impl LogSink for BuildLog {
    fn line(&self, instance: &str, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(instance, ?stream, "{text}");
    }
}

/// What a restored instance's sandbox shows it besides the system: these directories,
/// read-only, and the host's network or none.
struct Sees {
    read_only: Vec<PathBuf>,
    host_network: bool,
}

/// Whose fault a start from an image that did not give an instance was.
enum Blame {
    /// The image's (before HOOKED): counted against it, and a cold boot serves.
    Image(String),
    /// The function's own (after HOOKED): the note for its log, and what its request gets.
    Function(String, InvokeOutcome),
}

/// A restored instance before its INIT.
struct Restored {
    live: Live,
    sandbox: Duration,
    restore: Duration,
}

impl Node {
    /// Builds (or rebuilds) the image for `packages`, making their environment first if
    /// needed; returns it once it has passed its test restore.
    pub async fn build_image(
        &self,
        packages: &[String],
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<ImageStatus, NodeError> {
        let env = self.envs.ensure(packages, progress).await?;
        let info = self.build_image_for(&env).await?;
        Ok(self
            .images()
            .into_iter()
            .find(|s| s.info.id == info.id)
            .ok_or(ImageError::NotFound(info.id))?)
    }

    /// Every image, with the number of deployed functions each would serve now.
    pub fn images(&self) -> Vec<ImageStatus> {
        let mut list = self.images.list();
        for d in self
            .read_functions()
            .values()
            .filter(|d| d.record.config.images)
        {
            let memory = d.record.config.memory_bytes();
            if let Ok(id) = self.images.find(&d.env.installed, memory)
                && let Some(s) = list.iter_mut().find(|s| s.info.id == id)
            {
                s.functions += 1;
            }
        }
        list
    }

    pub fn remove_image(&self, id: &str) -> Result<(), NodeError> {
        self.images.remove(id)?;
        tracing::info!(image = id, "image removed");
        Ok(())
    }

    /// Bytes of image pages in memory now (`ember image ls` shows it beside the budget).
    pub fn image_memory(&self) -> (u64, u64) {
        (self.images.resident_bytes(), self.images.budget())
    }

    pub(super) async fn build_image_for(&self, env: &PackageEnv) -> Result<ImageInfo, NodeError> {
        if self.sandboxes.is_none() {
            return Err(ImageError::NeedsSandbox.into());
        }
        let id = image_id(&env.key);
        let gate = self.image_gate(&id);
        let _held = gate.lock().await;
        let staged = self.images.staging(&id);
        let t0 = Instant::now();
        let built = self
            .build_into(env, &id, &staged)
            .instrument(info_span!("image.build", image = %id))
            .await;
        match built {
            Ok(info) => {
                let images = self.images.clone();
                let (dir, i) = (staged.clone(), info.clone());
                let added = tokio::task::spawn_blocking(move || images.add(&dir, &i)).await;
                match added {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(self.drop_staged(&staged, e.into())),
                    Err(e) => {
                        let e = ImageError::Io {
                            what: "adding",
                            path: staged.clone(),
                            source: std::io::Error::other(e),
                        };
                        return Err(self.drop_staged(&staged, e.into()));
                    }
                }
                tracing::info!(
                    image = %id,
                    packages = ?env.packages,
                    mib = info.bytes >> 20,
                    ms = t0.elapsed().as_millis() as u64,
                    "image built and verified"
                );
                Ok(info)
            }
            Err(e) => Err(self.drop_staged(&staged, e)),
        }
    }

    fn drop_staged(&self, staged: &std::path::Path, e: NodeError) -> NodeError {
        let _ = std::fs::remove_dir_all(staged);
        tracing::warn!("image build failed: {}", error_chain(&e));
        e
    }

    fn image_gate(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.image_gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    async fn build_into(
        &self,
        env: &PackageEnv,
        id: &str,
        staged: &std::path::Path,
    ) -> Result<ImageInfo, NodeError> {
        let fail = |phase: &'static str, why: String| ImageError::Build {
            packages: env.packages.clone(),
            phase,
            why,
        };
        let boxes = self.sandboxes.as_ref().ok_or(ImageError::NeedsSandbox)?;
        let spec = StartSpec {
            instance_id: format!("{id}-build"),
            function: String::new(),
            version: 0,
            handler: String::new(),
            memory_mb: self.cfg.images.build_memory_mb,
            python: env.python(),
            bootstrap: self.bootstrap.clone(),
            code_dir: env.dir.clone(),
            imports: image_imports(env),
            env: Default::default(),
        };
        let mut sb = boxes
            .prepare(&InstanceSpec {
                id: spec.instance_id.clone(),
                memory_bytes: u64::from(spec.memory_mb) << 20,
                read_only: vec![env.dir.clone(), self.bootstrap.clone()],
                cwd: env.dir.clone(),
                host_network: false,
                runtime_api_port: None,
            })
            .map_err(|e| fail("creating its sandbox", error_chain(&e)))?;
        let t0 = Instant::now();
        let started = tokio::time::timeout(
            self.cfg.init_timeout,
            Instance::start_for_image(&spec, Arc::new(BuildLog), |cmd| sb.attach(cmd)),
        )
        .await;
        let (inst, prepared) = match started {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                sb.destroy().await;
                return Err(fail("importing the packages", error_chain(&e)).into());
            }
            Err(_) => {
                sb.destroy().await;
                return Err(fail("importing the packages", "timed out".into()).into());
            }
        };
        let import = t0.elapsed();
        let Some(pid) = sb.first_process() else {
            inst.kill();
            sb.destroy().await;
            return Err(fail("dumping", "the runtime's process is gone".into()).into());
        };
        let t1 = Instant::now();
        let out = staged.to_path_buf();
        let dumped = tokio::task::spawn_blocking(move || {
            ember_snap::dump(
                pid,
                &out,
                &DumpOptions {
                    inherited: INHERITED.to_vec(),
                    ..Default::default()
                },
            )
        })
        .await;
        inst.kill();
        sb.destroy().await;
        let stats = match dumped {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail("dumping", error_chain(&e)).into()),
            Err(e) => return Err(fail("dumping", e.to_string()).into()),
        };
        let dump = t1.elapsed();
        tracing::debug!(
            image = id,
            closed_fds = prepared.closed_fds,
            "runtime dumped"
        );

        let t2 = Instant::now();
        let dir = staged.to_path_buf();
        let img = tokio::task::spawn_blocking(move || LoadedImage::load(&dir))
            .await
            .map_err(|e| fail("reading the dump back", e.to_string()))?
            .map_err(|e| fail("reading the dump back", error_chain(&e)))?;
        let img = Arc::new(img);
        let working_set = self
            .verify_image(env, id, img.clone())
            .await
            .map_err(|why| ImageError::Verify {
                packages: env.packages.clone(),
                why,
            })?;
        ember_snap::image::write_working_set(staged, &img.meta, &working_set)
            .map_err(ImageError::from)?;
        let bytes = img.meta.pages.count * ember_snap::image::PAGE;
        Ok(ImageInfo {
            id: id.to_string(),
            env_key: env.key.clone(),
            env_dir: env.dir.clone(),
            python: env.python(),
            packages: env.packages.clone(),
            imports: image_imports(env),
            installed: env.installed.clone(),
            created_at: now_secs(),
            pages: stats.pages,
            bytes,
            vmas: stats.vmas,
            working_set_pages: working_set.len() as u64,
            import_ms: import.as_secs_f64() * 1e3,
            dump_ms: dump.as_secs_f64() * 1e3,
            verify_ms: t2.elapsed().as_secs_f64() * 1e3,
            runtime: super::runtime_of(&self.bootstrap),
        })
    }

    /// The test restore: the image restored lazily into a fresh sandbox answers the
    /// bootstrap's selfcheck with every preloaded module present. Returns the pages it
    /// touched, the image's working set.
    async fn verify_image(
        &self,
        env: &PackageEnv,
        id: &str,
        img: Arc<LoadedImage>,
    ) -> Result<Vec<u64>, String> {
        let spec = StartSpec {
            instance_id: format!("{id}-verify"),
            function: format!("{id}-verify"),
            version: 0,
            handler: "ember_bootstrap.selfcheck".into(),
            memory_mb: self.cfg.images.build_memory_mb,
            python: env.python(),
            bootstrap: self.bootstrap.clone(),
            code_dir: self.bootstrap.clone(),
            imports: Vec::new(),
            env: Default::default(),
        };
        let read_only = vec![env.dir.clone(), self.bootstrap.clone()];
        let pages = Pages::in_memory(img, None);
        let Restored { mut live, .. } = self
            .restore_instance(
                &spec,
                Sees {
                    read_only,
                    host_network: false,
                },
                id,
                &pages,
                Policy::Lazy,
                Arc::new(BuildLog),
            )
            .await?;
        let limit = self.cfg.init_timeout;
        let checked = async {
            match tokio::time::timeout(limit, live.inst.init_restored(&spec)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("initialising: {}", error_chain(&e))),
                Err(_) => return Err("initialising timed out".to_string()),
            }
            let event = serde_json::json!({ "modules": image_imports(env) }).to_string();
            let deadline = SystemTime::now() + limit;
            let ran = tokio::time::timeout(
                limit,
                live.inst.invoke("verify", deadline, event.as_bytes()),
            )
            .await;
            match ran {
                Ok(Ok(Outcome::Result { payload, .. })) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&payload).map_err(|e| e.to_string())?;
                    match v["missing"].as_array() {
                        Some(m) if m.is_empty() => Ok(()),
                        _ => Err(format!("modules missing after restore: {}", v["missing"])),
                    }
                }
                Ok(Ok(Outcome::Error(fe))) => Err(format!(
                    "selfcheck raised {}: {}",
                    fe.error_type, fe.message
                )),
                Ok(Err(e)) => Err(error_chain(&e)),
                Err(_) => Err("selfcheck timed out".to_string()),
            }
        }
        .await;
        let working_set = live.pages.as_ref().map(PageServer::working_set);
        let failure = server_failure(&mut live);
        if let Some(t) = live.kill() {
            let _ = t.await;
        }
        match (checked, failure) {
            (Ok(()), None) => Ok(working_set.unwrap_or_default()),
            (_, Some(f)) => Err(f),
            (Err(e), None) => Err(e),
        }
    }

    /// A fresh sandbox whose first process is parked, with the image restored into it and
    /// handed over to the instance's user and filter.
    async fn restore_instance(
        &self,
        spec: &StartSpec,
        sees: Sees,
        id: &str,
        pages: &Pages,
        policy: Policy,
        log: Arc<dyn LogSink>,
    ) -> Result<Restored, String> {
        let boxes = self.sandboxes.as_ref().ok_or("the sandbox is off")?;
        let t0 = Instant::now();
        let mut sb = boxes
            .prepare(&InstanceSpec {
                id: spec.instance_id.clone(),
                memory_bytes: u64::from(spec.memory_mb) << 20,
                read_only: sees.read_only,
                cwd: spec.code_dir.clone(),
                host_network: sees.host_network,
                runtime_api_port: None,
            })
            .map_err(|e| format!("creating the sandbox: {}", error_chain(&e)))?;
        let inst = match Instance::spawn_parked(spec, log, |cmd| sb.attach_stopped(cmd)) {
            Ok(i) => i,
            Err(e) => {
                sb.destroy().await;
                return Err(format!("starting the sandbox: {}", error_chain(&e)));
            }
        };
        let mut live = Live::new(inst, Some(sb));
        let Some(pid) = live.sandbox.as_ref().and_then(|s| s.first_process()) else {
            self.reap(live.kill());
            return Err("the sandbox's first process is gone".into());
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
                live.pages = r.server;
                Ok(Restored {
                    live,
                    sandbox,
                    restore: t1.elapsed(),
                })
            }
            Ok(Err(e)) => {
                self.reap(live.kill());
                Err(format!("restoring: {}", error_chain(&e)))
            }
            Err(e) => {
                self.reap(live.kill());
                Err(format!("restoring: {e}"))
            }
        }
    }

    /// The image rung: an instance of `d` restored from image `id`.
    pub(super) async fn image_start(
        &self,
        d: &Deployed,
        id: &str,
        timing: &mut Timing,
    ) -> FromImage {
        let t0 = Instant::now();
        let rec = &d.record;
        let co = match self.images.checkout(id) {
            Ok(c) => c,
            Err(e) => return self.image_failed(d, id, t0, timing, error_chain(&e)),
        };
        let policy = self.cfg.images.policy;
        let whole = policy == Policy::Eager;
        let taken = co.clone();
        let pages = match tokio::task::spawn_blocking(move || taken.pages(whole)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return self.image_failed(d, id, t0, timing, error_chain(&e)),
            Err(e) => return self.image_failed(d, id, t0, timing, e.to_string()),
        };
        if co.load_after {
            let images = self.images.clone();
            let id = id.to_string();
            tokio::task::spawn_blocking(move || images.load(&id));
        }
        let spec = self.instance_spec(
            d,
            super::instance_id(&rec.name),
            co.python.clone(),
            Vec::new(),
        );
        let read_only = vec![
            d.code_dir.clone(),
            co.env_dir.clone(),
            self.bootstrap.clone(),
        ];
        let sink = self.logs.sink(&rec.name);
        let sees = Sees {
            read_only,
            host_network: rec.config.network == Network::Host,
        };
        let restored = self
            .restore_instance(&spec, sees, id, &pages, policy, sink)
            .instrument(info_span!("start.image", instance = %spec.instance_id, image = id))
            .await;
        let Restored {
            mut live,
            sandbox,
            restore,
        } = match restored {
            Ok(r) => r,
            Err(msg) => return self.image_failed(d, id, t0, timing, msg),
        };
        let init = tokio::time::timeout(self.cfg.init_timeout, live.inst.init_restored(&spec))
            .instrument(info_span!("start.init"))
            .await;
        let blame = match init {
            Ok(Ok(t)) => {
                timing.sandbox = Some(sandbox);
                timing.restore = Some(restore);
                timing.hook = Some(t.hook);
                timing.import_handler = Some(t.import_handler);
                live.image = Some(id.to_string());
                // Invocations count the sandbox's limit events from here.
                let _ = live.new_limit();
                self.images.succeeded(id);
                self.count_started(d);
                self.logs.append(
                    &rec.name,
                    &spec.instance_id,
                    "event",
                    format!(
                        "instance started (image {id} from {}, {policy}, sandboxed, pid {}) in {:.1} ms",
                        co.location.as_str(),
                        live.inst.pid(),
                        timing.init().as_secs_f64() * 1e3
                    )
                    .as_bytes(),
                );
                return FromImage::Started(Box::new(live));
            }
            // A page server that failed is the image's fault, whatever the process did since.
            _ if let Some(msg) = server_failure(&mut live) => Blame::Image(msg),
            Ok(Err(RestoredInitError::Image(e))) => Blame::Image(error_chain(&e)),
            Err(_) if !live.inst.hooked() => Blame::Image(format!(
                "the restored instance did not initialise within {} s",
                self.cfg.init_timeout.as_secs()
            )),
            // Past HOOKED: the function's own import, never the shared image's doing.
            Ok(Err(RestoredInitError::Function(StartError::Handler(fe)))) => Blame::Function(
                format!(
                    "importing the handler failed: {}: {}",
                    fe.error_type, fe.message
                ),
                InvokeOutcome::InitError(fe),
            ),
            Ok(Err(RestoredInitError::Function(e))) => {
                let limit = live.limit_hit(Duration::from_millis(200)).await;
                let msg = error_chain(&e);
                Blame::Function(
                    format!("instance failed while importing its handler: {msg}"),
                    limit.map_or(InvokeOutcome::Crashed(msg), InvokeOutcome::Limit),
                )
            }
            Err(_) => Blame::Function(
                format!(
                    "instance start timed out after {} s, importing its handler",
                    self.cfg.init_timeout.as_secs()
                ),
                InvokeOutcome::InitTimeout(self.cfg.init_timeout),
            ),
        };
        self.reap(live.kill());
        match blame {
            Blame::Image(msg) => self.image_failed(d, id, t0, timing, msg),
            Blame::Function(note, outcome) => {
                let note = note.as_bytes();
                self.logs
                    .append(&rec.name, &spec.instance_id, "event", note);
                FromImage::Outcome(outcome)
            }
        }
    }

    fn image_failed(
        &self,
        d: &Deployed,
        id: &str,
        t0: Instant,
        timing: &mut Timing,
        msg: String,
    ) -> FromImage {
        timing.fallback = Some(t0.elapsed());
        let name = &d.record.name;
        self.metrics
            .image_failures
            .get_or_create(&ImageLabels {
                image: id.to_string(),
            })
            .inc();
        let unhealthy = self.images.failed(id, &msg);
        self.logs.append(
            name,
            "ember",
            "event",
            format!("starting from image {id} failed, cold boot instead: {msg}").as_bytes(),
        );
        static LIMIT: RateLimit = RateLimit::new(Duration::from_secs(10), 5);
        if let Some(dropped) = LIMIT.allow() {
            tracing::warn!(function = %name, image = id, dropped, "start from image failed; cold boot instead: {msg}");
        }
        if unhealthy {
            tracing::error!(
                image = id,
                "image marked unhealthy after {} failed restores in a row; rebuild it with \
                 `ember image build` or remove it",
                self.cfg.images.failures_unhealthy
            );
        }
        FromImage::Failed
    }

    /// The image that should serve `d`, if images may; counts why not otherwise.
    pub(super) fn image_for(&self, d: &Deployed) -> Option<String> {
        // Images hold Ember's Python runtime; other runtimes always start from their code.
        if d.record.config.runtime != Runtime::Python {
            return None;
        }
        let reason = if !d.record.config.images {
            "images-off"
        } else if self.sandboxes.is_none() {
            "no-sandbox"
        } else {
            let memory = d.record.config.memory_bytes();
            match self.images.find(&d.env.installed, memory) {
                Ok(id) => return Some(id),
                Err(why) => why.reason(),
            }
        };
        self.metrics
            .cold_boot_reasons
            .get_or_create(&crate::metrics::ReasonLabels {
                function: d.record.name.clone(),
                reason: reason.to_string(),
            })
            .inc();
        None
    }

    /// Adds what the page server of a restored instance did since the last report to the
    /// node's counters.
    pub(super) fn report_pages(&self, live: &mut Live) {
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

    /// Starts the automatic builds the configuration asks for, one at a time, in the
    /// background: `sets` of packages, or deployed functions' environments.
    pub(super) fn build_in_background(&self, sets: Vec<Vec<String>>) {
        let Some(node) = self.me.upgrade() else {
            return;
        };
        if node.sandboxes.is_none() || sets.is_empty() {
            return;
        }
        let mut tasks = self.background.lock().unwrap_or_else(|p| p.into_inner());
        // Finished builds leave their results in the set: drop them.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _one = node.auto_builds.acquire().await;
            for packages in sets {
                let env = match node.envs.ensure(&packages, &|_| {}).await {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(?packages, "no image: {}", error_chain(&e));
                        continue;
                    }
                };
                if node.images.has_image_for(&env.key) {
                    continue;
                }
                // Failures are logged by the build itself.
                let _ = node.build_image_for(&env).await;
            }
        });
    }
}

/// The page server's error, when it is what ended the instance.
fn server_failure(live: &mut Live) -> Option<String> {
    let finished = live.pages.as_ref().is_some_and(PageServer::is_finished);
    if !finished {
        return None;
    }
    live.pages.take()?.wait().err().map(|e| error_chain(&e))
}
