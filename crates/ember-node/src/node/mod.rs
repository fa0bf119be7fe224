//! The node: deploys functions and serves invocations through the start ladder.
//!
//! ```text
//! invoke: lookup -> admit (queue or 429) -> warm instance?
//!           -> else a dependency image of exactly its distributions? restore (image.rs)
//!           -> else, or if that failed, cold boot
//!         -> run -> put back
//! deploy: check -> code (staged, content-addressed) -> environment -> registry txn -> new pool
//!           -> (images on deploy) an image for its package set, in the background
//! ```

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_runtime::exec::ExecSpec;
use ember_runtime::protocol::FunctionError;
use ember_runtime::python::InvokeError;
use ember_runtime::python::{StartError, install_bootstrap};
use ember_runtime::{Instance, Outcome, StartSpec, native, provided};
use ember_sandbox::{InstanceSpec, LimitReason, NodeSandbox, Sandboxes, killed_by_seccomp};
use serde::Serialize;
use tracing::{Instrument, info_span};

use crate::code::{CodeError, CodeStore, Limits};
use crate::config::AutoImages;
use crate::config::NodeConfig;
use crate::envs::{EnvError, EnvManager, PackageEnv};
use crate::function::{
    FunctionConfig, FunctionRecord, InvalidFunction, Network, Runtime, validate_name,
};
use crate::images::{ImageError, ImageStore};
use crate::live::{Live, Proc};
use crate::logs::LogStore;
use crate::metrics::{InvokeLabels, Metrics, StartLabels};
use crate::pool::Pool;
use crate::ratelimit::RateLimit;
use crate::registry::{Registry, RegistryError};
use crate::sys::{FileLock, try_lock_file};

mod crash_loop;
mod events;
mod image;
use crash_loop::CrashLoop;
use image::FromImage;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("function {0:?} does not exist (`ember ls` lists deployed functions)")]
    NotFound(String),
    #[error(transparent)]
    Invalid(#[from] InvalidFunction),
    #[error("function {0:?} does not exist yet, so its first deploy must include code")]
    CodeRequired(String),
    #[error(transparent)]
    Code(#[from] CodeError),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "function {function:?} is at its limit of {max_instances} instances and {queue_depth} \
         queued requests; retry later or raise max_instances"
    )]
    Throttled {
        function: String,
        max_instances: u32,
        queue_depth: usize,
    },
    #[error(transparent)]
    Sandbox(#[from] ember_sandbox::SandboxError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("another ember daemon is using {0}; stop it or choose another --home")]
    HomeLocked(PathBuf),
    #[error("{what} {path} failed")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How an error should reach a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeErrorKind {
    NotFound,
    BadRequest,
    /// The request was fine but could not be satisfied (e.g. pip failed).
    Unprocessable,
    Throttled,
    Internal,
}

impl NodeError {
    pub fn kind(&self) -> NodeErrorKind {
        match self {
            NodeError::NotFound(_) => NodeErrorKind::NotFound,
            NodeError::Invalid(_) | NodeError::CodeRequired(_) => NodeErrorKind::BadRequest,
            NodeError::Code(e) if e.is_user_error() => NodeErrorKind::BadRequest,
            NodeError::Env(e) if e.is_user_error() => NodeErrorKind::Unprocessable,
            NodeError::Image(e) if e.is_user_error() => NodeErrorKind::NotFound,
            NodeError::Image(ImageError::NeedsSandbox) => NodeErrorKind::Unprocessable,
            NodeError::Image(ImageError::Build { .. } | ImageError::Verify { .. }) => {
                NodeErrorKind::Unprocessable
            }
            NodeError::Config(_) => NodeErrorKind::BadRequest,
            NodeError::Throttled { .. } => NodeErrorKind::Throttled,
            _ => NodeErrorKind::Internal,
        }
    }
}

/// The rung of the start ladder that served an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPath {
    Warm,
    /// Restored from a dependency image.
    Image,
    ColdBoot,
}

impl StartPath {
    pub fn as_str(self) -> &'static str {
        match self {
            StartPath::Warm => "warm",
            StartPath::Image => "image",
            StartPath::ColdBoot => "cold-boot",
        }
    }
}

/// Time spent in each phase of one invocation; phases that did not happen are `None`.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub queue: Duration,
    /// A start from an image that failed before the cold boot that served instead.
    pub fallback: Option<Duration>,
    /// From an image: the sandbox with its first process parked.
    pub sandbox: Option<Duration>,
    /// A pre-made sandbox's stopped executable continued (its sandbox and spawn were paid
    /// ahead of the request).
    pub resume: Option<Duration>,
    /// From an image: the restore into that process.
    pub restore: Option<Duration>,
    /// From an image: the after-restore hook (environment, new seeds).
    pub hook: Option<Duration>,
    pub spawn: Option<Duration>,
    /// A `provided` runtime's own start-up: from its exec to its first `invocation/next`.
    pub runtime_init: Option<Duration>,
    pub interpreter: Option<Duration>,
    pub import_packages: Option<Duration>,
    pub import_handler: Option<Duration>,
    pub exec: Option<Duration>,
    pub total: Duration,
}

impl Timing {
    /// `Server-Timing` syntax, milliseconds: `queue;dur=0.012, spawn;dur=1.1, ...`.
    pub fn header(&self) -> String {
        let phases = [
            ("queue", Some(self.queue)),
            ("fallback", self.fallback),
            ("sandbox", self.sandbox),
            ("resume", self.resume),
            ("restore", self.restore),
            ("hook", self.hook),
            ("spawn", self.spawn),
            ("runtime_init", self.runtime_init),
            ("interpreter", self.interpreter),
            ("import_packages", self.import_packages),
            ("import_handler", self.import_handler),
            ("exec", self.exec),
            ("total", Some(self.total)),
        ];
        phases
            .iter()
            .filter_map(|(n, d)| d.map(|d| format!("{n};dur={:.3}", d.as_secs_f64() * 1e3)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Time to get an instance able to run the event.
    pub fn init(&self) -> Duration {
        [
            self.fallback,
            self.sandbox,
            self.resume,
            self.restore,
            self.hook,
            self.spawn,
            self.runtime_init,
            self.interpreter,
            self.import_packages,
            self.import_handler,
        ]
        .iter()
        .flatten()
        .sum()
    }
}

/// Which instance served an invocation, and how it started.
struct Served {
    start: StartPath,
    image: Option<String>,
    instance: String,
}

impl Served {
    fn none(start: StartPath) -> Served {
        Served {
            start,
            image: None,
            instance: String::new(),
        }
    }
}

/// What an invocation ended with.
#[derive(Debug, Clone)]
pub enum InvokeOutcome {
    /// The handler's JSON result.
    Ok(Vec<u8>),
    /// The handler raised, or returned something that is not JSON.
    HandlerError(FunctionError),
    /// Importing the handler raised; the instance was discarded.
    InitError(FunctionError),
    /// The handler ran past the function's timeout; the instance was killed.
    Timeout(Duration),
    /// The cold boot took longer than the node's init timeout.
    InitTimeout(Duration),
    /// The instance died or broke the protocol.
    Crashed(String),
    /// The runtime could not be started at all (the node's problem, not the function's).
    StartFailed(String),
    /// The sandbox stopped the instance: memory, process count or a forbidden syscall.
    Limit(LimitReason),
}

impl InvokeOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            InvokeOutcome::Ok(_) => "ok",
            InvokeOutcome::HandlerError(_) => "handler-error",
            InvokeOutcome::InitError(_) => "init-error",
            InvokeOutcome::Timeout(_) => "timeout",
            InvokeOutcome::InitTimeout(_) => "init-timeout",
            InvokeOutcome::Crashed(_) => "crashed",
            InvokeOutcome::StartFailed(_) => "start-failed",
            InvokeOutcome::Limit(r) => r.as_str(),
        }
    }

    /// The same outcome, its message (where it carries one) followed by `note`.
    fn with_note(&self, note: &str) -> InvokeOutcome {
        match self {
            InvokeOutcome::InitError(fe) => {
                let mut fe = fe.clone();
                fe.message.push_str(note);
                InvokeOutcome::InitError(fe)
            }
            InvokeOutcome::Crashed(m) => InvokeOutcome::Crashed(format!("{m}{note}")),
            other => other.clone(),
        }
    }

    /// A failed start that is the function's own doing (its import, its limits), as opposed
    /// to the node's: what the crash-loop backoff counts.
    fn is_function_start_failure(&self) -> bool {
        matches!(
            self,
            InvokeOutcome::InitError(_)
                | InvokeOutcome::InitTimeout(_)
                | InvokeOutcome::Crashed(_)
                | InvokeOutcome::Limit(_)
                | InvokeOutcome::Timeout(_)
        )
    }
}

#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    pub function: String,
    pub version: u64,
    pub start: StartPath,
    /// The image the instance was restored from (now or when it started, for a warm start).
    pub image: Option<String>,
    pub instance: String,
    /// The instance served this request only (a cold-only function, or a native one).
    pub cold_only: bool,
    /// With [`InvokeOptions::tail`]: the invocation's log as Lambda shows it (START, the
    /// instance's lines, END, REPORT).
    pub log_tail: Option<String>,
    pub timing: Timing,
    pub outcome: InvokeOutcome,
}

#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// Collect the invocation's log lines into [`Invocation::log_tail`].
    pub tail: bool,
    /// The request id to use (an event's retries keep theirs); a new one when `None`.
    pub request_id: Option<String>,
}

/// An invocation's log in Lambda's shape.
fn lambda_log(inv: &Invocation, rec: &FunctionRecord, lines: &str) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let id = &inv.request_id;
    let exec = inv.timing.exec.unwrap_or_default();
    let mut report = format!(
        "REPORT RequestId: {id}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB",
        ms(exec),
        exec.as_millis() + 1,
        rec.config.memory_mb
    );
    if inv.start != StartPath::Warm {
        report.push_str(&format!("\tInit Duration: {:.2} ms", ms(inv.timing.init())));
    }
    format!(
        "START RequestId: {id} Version: {}\n{lines}END RequestId: {id}\n{report}\n",
        rec.version
    )
}

/// A deployed function as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStatus {
    #[serde(flatten)]
    pub record: FunctionRecord,
    /// Versions of every installed distribution in the function's environment.
    pub installed: std::collections::BTreeMap<String, String>,
    /// Modules preloaded before the handler (the packages' top-level modules).
    pub imports: Vec<String>,
    /// The environment's interpreter, e.g. to time a bare `python -c 'import ...'` beside it.
    pub python: PathBuf,
    pub instances_live: usize,
    pub instances_idle: usize,
    /// Instances started ahead of demand (native functions' pre-made sandboxes), among the
    /// live ones.
    pub instances_prestarted: usize,
    /// Requests queued for a free instance right now.
    pub requests_waiting: usize,
}

struct Deployed {
    record: FunctionRecord,
    env: PackageEnv,
    code_dir: PathBuf,
    pool: Pool,
    crash_loop: CrashLoop,
}

pub struct Node {
    cfg: NodeConfig,
    registry: Arc<Registry>,
    code: Arc<CodeStore>,
    envs: EnvManager,
    logs: Arc<LogStore>,
    metrics: Metrics,
    bootstrap: PathBuf,
    sandboxes: Option<Sandboxes>,
    /// Sandboxes being torn down; shutdown waits for them.
    reaping: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    functions: RwLock<HashMap<String, Arc<Deployed>>>,
    deploying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    images: Arc<ImageStore>,
    /// One build per image at a time.
    image_gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Automatic builds go one at a time.
    auto_builds: tokio::sync::Semaphore,
    /// The automatic builds' tasks: shutdown cancels them before removing their sandboxes.
    background: Mutex<tokio::task::JoinSet<()>>,
    /// Wakes the event worker (a new event, a finished one).
    event_wake: Arc<tokio::sync::Notify>,
    event_slots: Arc<tokio::sync::Semaphore>,
    me: Weak<Node>,
    /// Set when shutdown begins: what fails from then on is the shutdown's doing.
    stopping: std::sync::atomic::AtomicBool,
    _home: FileLock,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, NodeError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NodeError::Io {
            what: "a background task",
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })?
}

impl Node {
    /// Opens (or creates) the node's home, loads the deployed functions and starts the
    /// keep-alive reaper.
    pub async fn open(mut cfg: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let io =
            |what: &'static str, path: PathBuf| move |source| NodeError::Io { what, path, source };
        std::fs::create_dir_all(&cfg.home).map_err(io("creating", cfg.home.clone()))?;
        // Instances run with their code directory as cwd: every path handed to them must be
        // absolute, whatever --home said.
        cfg.home = std::fs::canonicalize(&cfg.home).map_err(io("resolving", cfg.home.clone()))?;
        if let Some(dir) = &cfg.envs_dir {
            cfg.envs_dir = Some(std::path::absolute(dir).map_err(io("resolving", dir.clone()))?);
        }
        if cfg.images.policy == ember_snap::lazy::Policy::Mapped {
            return Err(NodeError::Config(
                "the mapped restore policy cannot restore into a sandbox; use prefetch, lazy, \
                 bulk or eager"
                    .into(),
            ));
        }
        let home = cfg.home.clone();
        let lock_path = home.join("ember.lock");
        let home_lock = lock_home(&lock_path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => NodeError::HomeLocked(home.clone()),
            _ => NodeError::Io {
                what: "locking",
                path: lock_path.clone(),
                source: e,
            },
        })?;
        let registry = Arc::new(Registry::open(&home.join("registry.db"))?);
        let code = Arc::new(CodeStore::open(&home, Limits::default())?);
        let envs_dir = cfg.envs_dir.clone().unwrap_or_else(|| home.join("envs"));
        let envs = EnvManager::open(envs_dir, cfg.python.clone()).await?;
        let logs = LogStore::open(home.join("logs"), cfg.log_max_bytes)
            .map_err(io("creating the log directory under", home.clone()))?;
        let bootstrap = install_bootstrap(&home.join("runtime"))
            .map_err(io("installing the bootstrap under", home.clone()))?;
        precompile(&cfg.python, &bootstrap).await;
        let sandboxes = if cfg.sandbox {
            Some(Sandboxes::open(NodeSandbox {
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                // One name per home: daemons sharing a machine keep to their own cgroups.
                node_id: blake3::hash(home.as_os_str().as_encoded_bytes()).to_hex()[..12]
                    .to_string(),
                mount_point: home.join("sandbox-root"),
                uid: cfg.sandbox_uid,
                gid: cfg.sandbox_gid,
                pids_max: cfg.pids_max,
                tmp_bytes: cfg.tmp_bytes,
            })?)
        } else {
            tracing::warn!("sandbox off: instances run as this daemon's user, unconfined");
            None
        };
        let images = Arc::new(ImageStore::open(
            home.join("images"),
            cfg.images.memory_bytes,
            cfg.images.failures_unhealthy,
            &runtime_of(&bootstrap),
        )?);
        if sandboxes.is_none() && !images.list().is_empty() {
            tracing::warn!("dependency images are not used without the sandbox");
        }
        let node = Arc::new_cyclic(|me| Node {
            images,
            image_gates: Mutex::new(HashMap::new()),
            auto_builds: tokio::sync::Semaphore::new(1),
            background: Mutex::new(tokio::task::JoinSet::new()),
            event_wake: Arc::new(tokio::sync::Notify::new()),
            event_slots: Arc::new(tokio::sync::Semaphore::new(cfg.events.concurrency.max(1))),
            me: me.clone(),
            cfg,
            registry,
            code,
            envs,
            logs,
            metrics: Metrics::default(),
            bootstrap,
            sandboxes,
            reaping: Mutex::new(Vec::new()),
            functions: RwLock::new(HashMap::new()),
            deploying: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            _home: home_lock,
        });
        node.load().await?;
        // Images into the memory pool from the start, in catalog order, as the budget allows.
        let images = node.images.clone();
        let ids: Vec<String> = images.list().into_iter().map(|s| s.info.id).collect();
        tokio::task::spawn_blocking(move || {
            for id in &ids {
                images.load(id);
            }
        });
        let wanted = match &node.cfg.images.auto {
            AutoImages::Off => Vec::new(),
            AutoImages::Fixed(sets) => sets.clone(),
            AutoImages::OnDeploy => node.missing_images(),
        };
        node.build_in_background(wanted);
        tokio::spawn(reaper(Arc::downgrade(&node)));
        tokio::spawn(events::worker(Arc::downgrade(&node)));
        Ok(node)
    }

    async fn load(&self) -> Result<(), NodeError> {
        let reg = self.registry.clone();
        let records = blocking(move || Ok(reg.load_all()?)).await?;
        let mut keep = HashSet::new();
        for rec in records {
            keep.insert(rec.code_hash.clone());
            let env = match self.envs.load(&rec.env_key) {
                Ok(env) => env,
                Err(_) => {
                    tracing::warn!(function = %rec.name, "package environment missing; rebuilding it");
                    match self.envs.ensure(&rec.config.packages, &|_| {}).await {
                        Ok(env) => env,
                        // One function's packages must not keep the others from serving.
                        Err(e) => {
                            tracing::error!(
                                function = %rec.name,
                                "its package environment could not be rebuilt, so it is not served; \
                                 redeploy it: {}",
                                error_chain(&e)
                            );
                            continue;
                        }
                    }
                }
            };
            let code_dir = self.code.path(&rec.code_hash);
            if !code_dir.exists() {
                tracing::error!(function = %rec.name, code = %rec.code_hash, "stored code is missing; redeploy this function");
                continue;
            }
            self.install(rec, env);
        }
        let code = self.code.clone();
        let removed = blocking(move || Ok(code.retain(&keep)?)).await?;
        let n = self.read_functions().len();
        tracing::info!(
            functions = n,
            unreferenced_code_removed = removed,
            "registry loaded"
        );
        Ok(())
    }

    fn read_functions(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Deployed>>> {
        self.functions.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `rec` the served version; the previous version's instances are stopped.
    fn install(&self, rec: FunctionRecord, env: PackageEnv) {
        let name = rec.name.clone();
        let deployed = Arc::new(Deployed {
            code_dir: self.code.path(&rec.code_hash),
            pool: Pool::new(rec.config.max_instances),
            crash_loop: CrashLoop::default(),
            record: rec,
            env,
        });
        let old = self
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, deployed.clone());
        self.refill(&deployed);
        if let Some(old) = old {
            self.discard_all(&old, old.pool.retire(), "replaced by a new version");
        }
    }

    pub fn metrics(&self) -> &Metrics {
        self.metrics
            .image_memory
            .set(i64::try_from(self.images.resident_bytes()).unwrap_or(i64::MAX));
        self.report_queue();
        &self.metrics
    }

    /// Package sets of deployed functions that have no image of their own.
    fn missing_images(&self) -> Vec<Vec<String>> {
        let mut seen = HashSet::new();
        self.read_functions()
            .values()
            .filter(|d| d.record.config.runtime == Runtime::Python && d.record.config.images)
            .filter(|d| !self.images.has_image_for(&d.env.key))
            .filter(|d| seen.insert(d.env.key.clone()))
            .map(|d| d.record.config.packages.clone())
            .collect()
    }

    fn deploy_gate(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.deploying
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Checks a zip archive of function code and stores it, for [`Node::deploy`]. Code no
    /// function refers to is removed at the next start.
    pub async fn store_code(&self, zip: Vec<u8>) -> Result<StoredCode, NodeError> {
        let store = self.code.clone();
        let stored = blocking(move || {
            use sha2::Digest;
            let sha256 = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                sha2::Sha256::digest(&zip),
            );
            let size = zip.len() as u64;
            Ok(StoredCode {
                hash: store.add_zip(&zip)?,
                sha256,
                size,
            })
        })
        .await?;
        // Instances see their code read-only and could not cache its bytecode themselves.
        precompile(&self.cfg.python, &self.code.path(&stored.hash)).await;
        Ok(stored)
    }

    /// Creates or updates a function. `code` comes from [`Node::store_code`]; it may be
    /// omitted on update. Returns the record and whether the function is new.
    pub async fn deploy(
        &self,
        name: &str,
        config: FunctionConfig,
        code: Option<StoredCode>,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(FunctionRecord, bool), NodeError> {
        validate_name(name)?;
        config.validate()?;
        let gate = self.deploy_gate(name);
        let _held = gate.lock().await;
        let previous = self.read_functions().get(name).map(|d| d.record.clone());
        let code = match code {
            Some(c) => c,
            None => match &previous {
                Some(p) => StoredCode {
                    hash: p.code_hash.clone(),
                    sha256: p.code_sha256.clone(),
                    size: p.code_size,
                },
                None => return Err(NodeError::CodeRequired(name.to_string())),
            },
        };
        check_entry_point(&config, &self.code.path(&code.hash))?;
        let env = self
            .envs
            .ensure(&config.packages, progress)
            .instrument(info_span!("deploy.environment", function = name))
            .await?;
        let now = now_secs();
        let reg = self.registry.clone();
        let rec = FunctionRecord {
            name: name.to_string(),
            version: 0,
            config,
            code_hash: code.hash,
            env_key: env.key.clone(),
            created_at: previous.as_ref().map_or(now, |p| p.created_at),
            updated_at: now,
            code_sha256: code.sha256,
            code_size: code.size,
        };
        let rec = blocking(move || {
            let mut rec = rec;
            rec.version = reg.next_version(&rec.name)?;
            reg.put(&rec)?;
            Ok(rec)
        })
        .await?;
        tracing::info!(function = name, version = rec.version, "deployed");
        self.logs.append(
            name,
            "ember",
            "event",
            format!("deployed version {}", rec.version).as_bytes(),
        );
        let has_image = self.images.has_image_for(&env.key);
        self.install(rec.clone(), env);
        if self.cfg.images.auto == AutoImages::OnDeploy
            && !has_image
            && rec.config.runtime == Runtime::Python
            && rec.config.images
        {
            self.build_in_background(vec![rec.config.packages.clone()]);
        }
        Ok((rec, previous.is_none()))
    }

    pub fn get(&self, name: &str) -> Result<FunctionStatus, NodeError> {
        self.read_functions()
            .get(name)
            .map(|d| status(d))
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    /// The version serving `name` (without building its whole status).
    pub fn version(&self, name: &str) -> Result<u64, NodeError> {
        Ok(self.deployed(name)?.record.version)
    }

    pub fn list(&self) -> Vec<FunctionStatus> {
        let mut v: Vec<FunctionStatus> =
            self.read_functions().values().map(|d| status(d)).collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    pub async fn delete(&self, name: &str) -> Result<(), NodeError> {
        let gate = self.deploy_gate(name);
        let _held = gate.lock().await;
        let reg = self.registry.clone();
        let n = name.to_string();
        if !blocking(move || Ok(reg.delete(&n)?)).await? {
            return Err(NodeError::NotFound(name.to_string()));
        }
        let old = self
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        if let Some(old) = old {
            self.discard_all(&old, old.pool.retire(), "function deleted");
        }
        self.logs.remove(name);
        tracing::info!(function = name, "deleted");
        Ok(())
    }

    /// Stops a function's instances, idle ones now and busy ones when they finish, so that
    /// the next invocation cold-boots. Returns once the idle ones and their sandboxes are
    /// gone, so that a cold start that follows (as in `ember bench`) does not overlap with
    /// their teardown.
    pub async fn stop_instances(&self, name: &str) -> Result<usize, NodeError> {
        let d = self.deployed(name)?;
        // An operator asking for fresh starts gets one now, not after a crash-loop window.
        d.crash_loop.started();
        let idle = d.pool.flush();
        let n = idle.len();
        let gone: Vec<_> = idle
            .into_iter()
            .filter_map(|i| self.stop(&d, i, "stopped on request"))
            .collect();
        for g in gone {
            let _ = g.await;
        }
        Ok(n)
    }

    pub fn logs(&self, name: &str, lines: usize) -> Result<String, NodeError> {
        self.deployed(name)?;
        self.logs.tail(name, lines).map_err(|source| NodeError::Io {
            what: "reading the log of",
            path: PathBuf::from(name),
            source,
        })
    }

    fn deployed(&self, name: &str) -> Result<Arc<Deployed>, NodeError> {
        self.read_functions()
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    fn discard_all(&self, d: &Deployed, instances: Vec<Live>, why: &str) {
        for i in instances {
            self.discard(d, i, why);
        }
    }

    fn discard(&self, d: &Deployed, inst: Live, why: &str) {
        let teardown = self.stop(d, inst, why);
        self.reap(teardown);
    }

    /// Stops an instance; the removal of its sandbox goes on in the returned task.
    fn stop(&self, d: &Deployed, inst: Live, why: &str) -> Option<tokio::task::JoinHandle<()>> {
        let name = &d.record.name;
        self.logs.append(
            name,
            inst.id(),
            "event",
            format!("instance stopped: {why}").as_bytes(),
        );
        tracing::debug!(function = %name, instance = inst.id(), why, "instance stopped");
        d.pool.live().fetch_sub(1, Ordering::SeqCst);
        self.metrics
            .instances
            .get_or_create(&Metrics::fn_labels(name))
            .dec();
        inst.kill()
    }

    fn reap(&self, task: Option<tokio::task::JoinHandle<()>>) {
        if let Some(t) = task {
            let mut r = self.reaping.lock().unwrap_or_else(|p| p.into_inner());
            r.retain(|t| !t.is_finished());
            r.push(t);
        }
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
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let capture = opts.tail.then(|| self.logs.capture(name));
        let span = info_span!("invoke", function = name, request_id = %request_id);
        let mut inv = self
            .invoke_deployed(&d, request_id, event)
            .instrument(span)
            .await?;
        if let Some(c) = capture {
            let lines = c.finish(&inv.instance).await;
            inv.log_tail = Some(lambda_log(&inv, &d.record, &lines));
        }
        Ok(inv)
    }

    async fn invoke_deployed(
        &self,
        d: &Arc<Deployed>,
        request_id: String,
        event: &[u8],
    ) -> Result<Invocation, NodeError> {
        let t0 = Instant::now();
        let rec = &d.record;
        let fn_labels = Metrics::fn_labels(&rec.name);
        let Some(_permit) = d
            .pool
            .admit(self.cfg.queue_depth, self.cfg.queue_timeout)
            .instrument(info_span!("queue"))
            .await
        else {
            self.metrics.throttled.get_or_create(&fn_labels).inc();
            return Err(NodeError::Throttled {
                function: rec.name.clone(),
                max_instances: rec.config.max_instances,
                queue_depth: self.cfg.queue_depth,
            });
        };
        let mut timing = Timing {
            queue: t0.elapsed(),
            ..Timing::default()
        };
        let generation = d.pool.generation();
        let (warm, dead) = d.pool.take_idle();
        self.discard_all(d, dead, "found dead while idle");
        // A limit event while it sat idle (a thread or child it left running) belongs to no
        // invocation: the instance goes, and this request gets another.
        let warm = warm.and_then(|mut w| match w.new_limit() {
            None => Some(w),
            Some(reason) => {
                let why = format!("limit reached while idle: {}", reason.as_str());
                self.discard(d, w, &why);
                None
            }
        });
        let mut started = warm.map(|i| (i, StartPath::Warm));
        let parked = if rec.config.runtime == Runtime::Native && started.is_none() {
            // Topped up after every take, and after a refill that failed earlier.
            let p = d.pool.take_parked();
            self.refill(d);
            p
        } else {
            None
        };
        if let Some(live) = parked {
            let t = Instant::now();
            match resume(live) {
                Ok(live) => {
                    timing.resume = Some(t.elapsed());
                    started = Some((live, StartPath::ColdBoot));
                }
                Err(live) => self.discard(d, *live, "its pre-made sandbox could not be continued"),
            }
        }
        if started.is_none()
            && let Some(outcome) = d.crash_loop.holds(Instant::now())
        {
            timing.total = t0.elapsed();
            let served = Served::none(StartPath::ColdBoot);
            return Ok(self.finish(d, request_id, served, timing, outcome));
        }
        if started.is_none()
            && let Some(id) = self.image_for(d)
        {
            match self.image_start(d, &id, &mut timing).await {
                FromImage::Started(i) => started = Some((*i, StartPath::Image)),
                FromImage::Failed => {}
                FromImage::Outcome(outcome) => {
                    d.crash_loop.failed(&outcome, Instant::now());
                    timing.total = t0.elapsed();
                    let start = StartPath::Image;
                    let served = Served::none(start);
                    return Ok(self.finish(d, request_id, served, timing, outcome));
                }
            }
        }
        let (mut inst, start) = match started {
            Some(s) => s,
            None => match self.cold_boot(d, &mut timing).await {
                Ok(i) => (i, StartPath::ColdBoot),
                Err(outcome) => {
                    d.crash_loop.failed(&outcome, Instant::now());
                    timing.total = t0.elapsed();
                    let served = Served::none(StartPath::ColdBoot);
                    return Ok(self.finish(d, request_id, served, timing, outcome));
                }
            },
        };
        if start != StartPath::Warm {
            d.crash_loop.started();
        }
        let instance_id = inst.id().to_string();
        let image = inst.image.clone();
        let limit = Duration::from_secs(u64::from(rec.config.timeout_s));
        let ran = watched(&mut inst, &request_id, limit, event)
            .instrument(info_span!("exec"))
            .await;
        self.report_pages(&mut inst);
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
                if rec.cold_only() {
                    self.discard(d, inst, "cold-only: it served its request");
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
        let served = Served {
            start,
            image,
            instance: instance_id,
        };
        Ok(self.finish(d, request_id, served, timing, outcome))
    }

    fn finish(
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
            log_tail: None,
            version: d.record.version,
            start,
            image,
            instance,
            timing,
            outcome,
        }
    }

    /// A new instance of `d` running `python`, preloading `imports` (none when restored).
    fn instance_spec(
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
            python,
            bootstrap: self.bootstrap.clone(),
            code_dir: d.code_dir.clone(),
            imports,
            env: rec.config.env.clone(),
        }
    }

    /// A sandbox for a new instance of `d` (none when the node runs without), with its
    /// Runtime API listener for a `provided` runtime.
    fn new_sandbox(
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
        let read_only = match rec.config.runtime {
            Runtime::Python => vec![
                d.code_dir.clone(),
                d.env.dir.clone(),
                self.bootstrap.clone(),
            ],
            Runtime::Provided => vec![d.code_dir.clone(), d.env.dir.clone()],
            Runtime::Native => vec![d.code_dir.clone()],
        };
        let made = boxes.prepare(&InstanceSpec {
            id: instance_id.to_string(),
            memory_bytes: rec.config.memory_bytes(),
            read_only,
            cwd: d.code_dir.clone(),
            host_network: rec.config.network == Network::Host,
            runtime_api_port: (rec.config.runtime == Runtime::Provided)
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
    fn refill(&self, d: &Arc<Deployed>) {
        let want = self.cfg.prestart;
        if want == 0
            || self.sandboxes.is_none()
            || d.record.config.runtime != Runtime::Native
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
    fn prestart(&self, d: &Deployed) -> Result<Live, String> {
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
        self.count_started(d);
        let mut live = Live::new(Proc::Native(inst), sandbox);
        live.parked = Some(pid);
        Ok(live)
    }

    /// Starts the native executable of `d` in `sandbox`, parked before its first instruction
    /// when `parked`. Returns the host pid of the instance's first process (in the sandbox),
    /// whose mounts the sandbox now holds: the exit of a process per request would otherwise
    /// unmount its whole tree on the request's path.
    fn start_native(
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

    /// Counts a new live instance of `d` (the pool's count and the gauge; [`Node::stop`]
    /// takes it back).
    fn count_started(&self, d: &Deployed) {
        d.pool.live().fetch_add(1, Ordering::SeqCst);
        self.metrics
            .instances
            .get_or_create(&Metrics::fn_labels(&d.record.name))
            .inc();
    }

    /// The process spec of a `provided` or `native` instance of `d`.
    fn exec_spec(&self, d: &Deployed, instance_id: String) -> ExecSpec {
        let rec = &d.record;
        let program = match rec.config.runtime {
            Runtime::Native => d.code_dir.join(&rec.config.handler),
            _ => d.code_dir.join("bootstrap"),
        };
        let python = d.env.python();
        ExecSpec {
            instance_id,
            function: rec.name.clone(),
            version: rec.version,
            handler: rec.config.handler.clone(),
            memory_mb: rec.config.memory_mb,
            code_dir: d.code_dir.clone(),
            program,
            // The package environment first: a bootstrap's `python3` is the function's.
            bin_dirs: python.parent().map(PathBuf::from).into_iter().collect(),
            env: rec.config.env.clone(),
            region: crate::function::REGION.to_string(),
        }
    }

    async fn cold_boot(&self, d: &Deployed, timing: &mut Timing) -> Result<Live, InvokeOutcome> {
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
            Runtime::Provided => {
                self.boot_provided(d, &id, &mut sandbox, timing)
                    .instrument(span)
                    .await
            }
        };
        let outcome = match started {
            Ok(inst) => {
                self.count_started(d);
                // A native instance's whole life is one request: its start is not news.
                if rec.config.runtime != Runtime::Native {
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
                    None if rec.config.runtime == Runtime::Provided => {
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
    async fn boot_python(
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
    async fn boot_provided(
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

    /// Cancels the automatic image builds in flight, stops every idle instance and waits for
    /// their sandboxes to be gone, then kills what is left in the node's cgroups (a build's
    /// sandbox, an instance still busy with an Event) and removes them: a daemon leaves
    /// nothing behind. Call it once nothing is served any more.
    pub async fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut builds =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|p| p.into_inner()));
        // Aborted builds drop their sandboxes (killed; removed below once reaped).
        builds.shutdown().await;
        let all: Vec<Arc<Deployed>> = self.read_functions().values().cloned().collect();
        for d in all {
            self.discard_all(&d, d.pool.retire(), "daemon shutting down");
        }
        let tasks = std::mem::take(&mut *self.reaping.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        if let Some(boxes) = &self.sandboxes {
            boxes.remove_all().await;
        }
    }

    fn expire_idle(&self) {
        let all: Vec<Arc<Deployed>> = self.read_functions().values().cloned().collect();
        for d in all {
            let old = d.pool.expire(self.cfg.keep_alive);
            self.discard_all(&d, old, "idle past the keep-alive time");
        }
    }
}

/// Takes the home's lock. A daemon killed a moment ago (a crash, `kill -9`, then a restart by a
/// supervisor) may still have children on their way out that hold its descriptors, the lock
/// among them: they die with it, so the lock is waited for a little before another daemon is
/// taken to be there.
async fn lock_home(path: &std::path::Path) -> std::io::Result<FileLock> {
    const PATIENCE: Duration = Duration::from_secs(3);
    let t0 = Instant::now();
    loop {
        match try_lock_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && t0.elapsed() < PATIENCE => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Names the bootstrap an image's process runs: its directory, named by its content hash.
pub(crate) fn runtime_of(bootstrap: &std::path::Path) -> String {
    // An image is only as good as the bootstrap its process runs and the snapshot format it
    // is written in: images of either an earlier one are removed at start and rebuilt.
    let name = bootstrap
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{name}/snap{}", ember_snap::image::format::FORMAT_VERSION)
}

/// A new instance's id: `<function>-<12 hex digits>`.
fn instance_id(function: &str) -> String {
    format!(
        "{function}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Why a cold boot did not give an instance.
enum NotStarted {
    Failed(StartError),
    /// The node's init timeout passed.
    InitTimeout,
    /// A `provided` runtime did not ask for an event within the function's timeout.
    Timeout(Duration),
}

/// Code stored by [`Node::store_code`].
#[derive(Debug, Clone)]
pub struct StoredCode {
    /// BLAKE3 of the unpacked tree: the directory under `code/`.
    pub hash: String,
    /// SHA-256 of the archive, base64 (Lambda's `CodeSha256`).
    pub sha256: String,
    pub size: u64,
}

/// The executable a `provided` or `native` function starts must be in its code and be
/// executable, so that a deploy fails rather than every invocation.
fn check_entry_point(config: &FunctionConfig, code_dir: &std::path::Path) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let (rel, what) = match config.runtime {
        Runtime::Python => return Ok(()),
        Runtime::Provided => (
            "bootstrap",
            "a provided runtime starts the code's 'bootstrap'",
        ),
        Runtime::Native => (
            config.handler.as_str(),
            "a native function's handler names its executable",
        ),
    };
    let path = code_dir.join(rel);
    let rule = match std::fs::metadata(&path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(()),
        Ok(m) if m.is_file() => {
            format!("{what}, which must be executable (chmod +x before zipping)")
        }
        _ => format!("{what}, which the code does not contain"),
    };
    Err(NodeError::Invalid(InvalidFunction {
        field: "code",
        value: rel.to_string(),
        rule,
    }))
}

/// An error and its sources, joined with ": " (a source already quoted is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        src = c.source();
    }
    s
}

/// Writes the bytecode of the Python files under `dir` next to them (the bootstrap, a
/// function's code): instances see those directories read-only, so they could not cache it
/// themselves. A failure only costs a compile (~1 ms) per start.
async fn precompile(python: &std::path::Path, dir: &std::path::Path) {
    // checked-hash: the .pyc records the source's hash, not its mtime, so identical code
    // compiles identically. A file that does not compile is left for the import to report.
    let mut cmd = tokio::process::Command::new(python);
    cmd.args([
        "-I",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "checked-hash",
    ])
    .arg(dir)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    ember_runtime::kill_with_daemon(&mut cmd);
    match cmd.status().await {
        Ok(s) if s.success() => {}
        other => {
            tracing::debug!(dir = %dir.display(), "precompiling left files uncompiled: {other:?}")
        }
    }
}

enum Ran {
    Done(Result<Outcome, InvokeError>),
    TimedOut,
    Limit(LimitReason),
}

/// Runs one invocation under the function's timeout, and, when sandboxed, watches the
/// cgroup's counters so that a fork storm or an OOM in a child process ends it at once
/// (within 100 ms) rather than at the timeout.
async fn watched(live: &mut Live, request_id: &str, limit: Duration, event: &[u8]) -> Ran {
    const TICK: Duration = Duration::from_millis(100);
    let Live {
        inst,
        sandbox,
        limits_seen,
        ..
    } = live;
    let invoke = inst.invoke(request_id, SystemTime::now() + limit, event);
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

/// Continues a pre-made instance: its first process drops its privileges, installs the
/// seccomp filter and execs. Gives the instance back when it cannot be continued.
fn resume(mut live: Live) -> Result<Live, Box<Live>> {
    let Some(pid) = live.parked.take() else {
        return Ok(live);
    };
    let cont = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    );
    match cont {
        Ok(()) if !live.is_gone() => Ok(live),
        _ => Err(Box::new(live)),
    }
}

fn status(d: &Deployed) -> FunctionStatus {
    FunctionStatus {
        record: d.record.clone(),
        installed: d.env.installed.clone(),
        imports: d.env.imports.clone(),
        python: d.env.python(),
        instances_live: d.pool.live().load(Ordering::SeqCst),
        instances_idle: d.pool.idle_count(),
        instances_prestarted: d.pool.parked_count(),
        requests_waiting: d.pool.waiting(),
    }
}

async fn reaper(node: Weak<Node>) {
    let period = match node.upgrade() {
        Some(n) => {
            (n.cfg.keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(n) = node.upgrade() else { return };
        n.expire_idle();
    }
}
