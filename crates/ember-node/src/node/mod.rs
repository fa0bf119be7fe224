//! The node: deploys functions and serves invocations through the start ladder.
//!
//! ```text
//! invoke (invoke.rs): lookup -> admit (queue or 429) -> the ladder (ladder/): warm ->
//!           pre-made -> | crash-loop gate | -> hibernated -> function snapshot ->
//!           dependency image -> cold boot
//!         -> run -> put back (or hibernate: hibernate.rs)
//! deploy (deploy.rs): check -> code (staged, content-addressed) -> environment -> registry
//!           txn -> new pool -> (images on deploy) an image for its package set, in the
//!           background (image_build.rs)
//! ```
//!
//! | file | its job |
//! |---|---|
//! | `mod.rs` | the node's state, opening its home, loading functions, shutdown, keep-alive |
//! | `error.rs` | [`NodeError`] and how each reaches a client |
//! | `invocation.rs` | what an invocation ends with and its phases |
//! | `deploy.rs` | code, deploys, listing, deleting |
//! | `bundled.rs` | a code's `requirements.txt`, and bundled packages built for another Python |
//! | `invoke.rs` | one invocation: admission, the ladder, the run, the answer |
//! | `ladder/` | the start ladder: one file per rung behind one trait |
//! | `instances.rs` | an instance's sandbox, spec, pre-made sandboxes, stopping; the instance listing |
//! | `hibernate.rs` | hibernating idle instances to disk and waking them (the Knix tier) |
//! | `holdings.rs` | what the node holds per function, and its load (a cluster's placement) |
//! | `provisioned.rs` | instances kept ready (`min_instances`) and pre-warms |
//! | `restore.rs` | a restore into a fresh sandbox (images and their test restores) |
//! | `standby.rs` | image instances restored ahead of demand, taken by the image rung |
//! | `templates.rs` | images restored once and parked; their standbys forked from them |
//! | `learn.rs` | submodules functions import, learned into their images |
//! | `start_costs.rs` | each function's measured start cost per rung; slower-than-cold rungs skipped |
//! | `image_build.rs` | building and listing dependency images |
//! | `snapshots_admin.rs` | listing and removing function snapshots (the API's), here and in the snapshot store |
//! | `events.rs`, `crash_loop.rs` | asynchronous invocations; the crash-loop backoff |

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ember_runtime::python::install_bootstrap;
use ember_sandbox::{NodeSandbox, Sandboxes};

use crate::code::{CodeStore, Limits};
use crate::config::{AutoImages, NodeConfig, SnapshotMode};
use crate::envs::{EnvManager, PackageEnv};
use crate::function::FunctionRecord;
use crate::images::ImageStore;
use crate::logs::LogStore;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::registry::Registry;
use crate::sys::{FileLock, try_lock_file};

mod bundled;
mod crash_loop;
mod deploy;
mod error;
mod events;
mod fetch;
mod hibernate;
mod holdings;
mod image_build;
mod image_pool;
mod instances;
mod invocation;
mod invoke;
mod ladder;
mod layers;
mod learn;
mod provisioned;
mod restore;
mod snapshot_take;
mod snapshots_admin;
mod spawner;
mod standby;
mod start_costs;
mod templates;
mod versions;
pub(crate) mod working_set;

use crash_loop::CrashLoop;
use deploy::precompile;
pub use deploy::{FunctionStatus, StoredCode};
pub use ember_snap::error_chain;
pub use error::{NodeError, NodeErrorKind};
pub use holdings::{FunctionHoldings, Holdings, Load};
use instances::instance_id;
pub use instances::{InstanceState, InstanceStatus};
pub use invocation::{Invocation, InvokeOptions, InvokeOutcome, Timing};
pub use ladder::StartPath;
pub use layers::LayerMeta;
pub use snapshots_admin::{SnapshotUsage, StoredSnapshot};
pub use versions::AliasChange;

/// Aliases by function and name.
type Aliases = HashMap<(String, String), crate::versions::Alias>;

struct Deployed {
    record: FunctionRecord,
    env: PackageEnv,
    code_dir: PathBuf,
    /// Its layers' merged tree, mounted at /opt.
    opt_dir: Option<PathBuf>,
    pool: Pool,
    crash_loop: CrashLoop,
    /// A function snapshot of it is being taken.
    snapshotting: std::sync::atomic::AtomicBool,
    /// The last take of its snapshot failed: when the next may be tried.
    take_backoff: Mutex<Option<snapshot_take::TakeBackoff>>,
    /// What each way of starting it measured (this version).
    start_costs: start_costs::StartCosts,
    /// Instances kept ready (its record's `min_instances`, changed in place).
    min_instances: std::sync::atomic::AtomicU32,
    /// A fill of its instances kept ready is under way.
    provisioning: std::sync::atomic::AtomicBool,
    /// When its last invocation ended (for its idle times).
    last_end: Mutex<Option<Instant>>,
    /// The end after which an instance was pre-warmed (one pre-warm per idle period).
    prewarmed_for: Mutex<Option<Instant>>,
    /// Its live instances by id: their host pid and when they started (listings).
    members: Mutex<HashMap<String, instances::Member>>,
    /// Hibernating its instances failed in a way that would repeat (hibernate.rs): they are
    /// stopped instead.
    hibernate_refused: std::sync::atomic::AtomicBool,
    /// Its instances being hibernated now (counted live, busy with nothing).
    hibernating: std::sync::atomic::AtomicUsize,
    /// Its hibernated instances being woken now (out of the set, not yet live).
    waking: std::sync::atomic::AtomicUsize,
    /// This install's number, unique in the daemon: what its hibernated instances belong to.
    deploy_id: u64,
}

/// The number of the next function version installed (see `Deployed::deploy_id`).
static NEXT_DEPLOY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Deployed {
    /// The size of its instances' /tmp: its own, or the node's.
    fn tmp_bytes(&self, cfg: &NodeConfig) -> u64 {
        self.record
            .config
            .tmp_mb
            .map_or(cfg.tmp_bytes, |mb| u64::from(mb) << 20)
    }

    /// What its instances see at a path of their own: its layers at /opt.
    fn opt_binds(&self) -> Vec<(PathBuf, PathBuf)> {
        self.opt_dir
            .iter()
            .map(|d| (d.clone(), PathBuf::from("/opt")))
            .collect()
    }
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
    /// Every function by the name it is served under: `name` for `$LATEST`, `name:N` for
    /// its published versions.
    functions: RwLock<HashMap<String, Arc<Deployed>>>,
    aliases: RwLock<Aliases>,
    /// Every layer version (the registry's).
    layers: RwLock<Vec<crate::layers::LayerVersion>>,
    deploying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    images: Arc<ImageStore>,
    snapshots: Arc<crate::snapshots::SnapshotStore>,
    /// The snapshot store, in `snapshots = "remote"` mode.
    remote: Option<Arc<crate::remote::Remote>>,
    /// Descriptions of function snapshots only the store holds, read for listings.
    store_descriptions: snapshots_admin::StoreDescriptions,
    /// Threads that make sandboxes' first processes for restores.
    spawner: spawner::Spawner,
    /// Image instances restored ahead of demand.
    standby: standby::Standby,
    /// Images restored once, parked, their standbys forked from them.
    templates: templates::Templates,
    /// Modules functions' handlers import, learned into their images.
    learned: learn::Learned,
    /// Function snapshots being restored lazily from the store while their page files come.
    lazy_sets: fetch::LazySets,
    /// Function snapshots whose working set an instance is recording.
    recording: Arc<working_set::Recording>,
    /// One build per image at a time.
    image_gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Automatic builds go one at a time.
    auto_builds: tokio::sync::Semaphore,
    /// Function snapshots are taken one at a time.
    snapshot_builds: Arc<tokio::sync::Semaphore>,
    /// The automatic builds' tasks: shutdown cancels them before removing their sandboxes.
    background: Mutex<tokio::task::JoinSet<()>>,
    /// Wakes the event worker (a new event, a finished one).
    event_wake: Arc<tokio::sync::Notify>,
    event_slots: Arc<tokio::sync::Semaphore>,
    me: Weak<Node>,
    /// Set when shutdown begins: what fails from then on is the shutdown's doing.
    stopping: std::sync::atomic::AtomicBool,
    /// Decides each function's keep-alive and pre-warm windows.
    keep_alive: Box<dyn crate::keepalive::KeepAlive>,
    /// Hibernated instances on local disk.
    hibernated: Arc<crate::hibernated::HibernatedSet>,
    /// Instances being hibernated (listings).
    hibernating: Mutex<HashSet<String>>,
    /// Hibernations run one at a time (a dump takes a core).
    hibernations: tokio::sync::Semaphore,
    /// In a cluster: the other nodes whose memory serves images, and their page servers'
    /// token ([`Node::join_page_pool`]).
    page_peers: std::sync::OnceLock<(Arc<dyn crate::PagePeers>, String)>,
    /// Its page server runs ([`Node::serve_pages`]).
    serving_pages: std::sync::atomic::AtomicBool,
    _home: FileLock,
}

/// Sandboxes' first processes made at once for restores (their cgroup joins overlap).
const SPAWNER_THREADS: usize = 4;

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
                remap: inside_paths(code.root(), envs.root(), &home.join("runtime")),
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
        let metrics = Metrics::default();
        let snapshots = Arc::new(crate::snapshots::SnapshotStore::open(
            home.join("snapshots"),
            cfg.snapshots.clone(),
            metrics.snapshots.clone(),
        )?);
        let remote = match (&cfg.store, cfg.snapshots.mode) {
            (Some(store), SnapshotMode::Remote) => {
                let r = crate::remote::Remote::open(store, &home, metrics.store.clone())
                    .map_err(|e| NodeError::Config(format!("the snapshot store: {e}")))?;
                tracing::info!(
                    store = r.describe(),
                    "snapshots = remote: uploading to the store"
                );
                Some(Arc::new(r))
            }
            (None, SnapshotMode::Remote) => {
                return Err(NodeError::Config(
                    "snapshots = \"remote\" needs a snapshot store: set EMBER_S3_ENDPOINT, \
                     EMBER_S3_BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     (docs/store.md)"
                        .into(),
                ));
            }
            _ => None,
        };
        let keep_alive =
            cfg.keep_alive_policy
                .make(cfg.keep_alive, cfg.hibernate.keep, cfg.keep_alive_bin);
        let hibernated = crate::hibernated::HibernatedSet::open(
            home.join("hibernated"),
            cfg.hibernate.disk_bytes,
        )
        .map_err(|e| NodeError::Config(format!("hibernated instances: {}", error_chain(&e))))?;
        let node = Arc::new_cyclic(|me| Node {
            remote,
            spawner: spawner::Spawner::new(SPAWNER_THREADS),
            standby: standby::Standby::new(cfg.standby),
            templates: templates::Templates::default(),
            learned: learn::Learned::default(),
            lazy_sets: fetch::LazySets::default(),
            recording: Arc::default(),
            images,
            snapshots,
            image_gates: Mutex::new(HashMap::new()),
            store_descriptions: Default::default(),
            auto_builds: tokio::sync::Semaphore::new(1),
            snapshot_builds: Arc::new(tokio::sync::Semaphore::new(1)),
            background: Mutex::new(tokio::task::JoinSet::new()),
            event_wake: Arc::new(tokio::sync::Notify::new()),
            event_slots: Arc::new(tokio::sync::Semaphore::new(cfg.events.concurrency.max(1))),
            me: me.clone(),
            cfg,
            registry,
            code,
            envs,
            logs,
            metrics,
            bootstrap,
            sandboxes,
            reaping: Mutex::new(Vec::new()),
            functions: RwLock::new(HashMap::new()),
            aliases: RwLock::new(HashMap::new()),
            layers: RwLock::new(Vec::new()),
            deploying: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            keep_alive,
            hibernated: Arc::new(hibernated),
            hibernating: Mutex::new(HashSet::new()),
            hibernations: tokio::sync::Semaphore::new(1),
            page_peers: std::sync::OnceLock::new(),
            serving_pages: std::sync::atomic::AtomicBool::new(false),
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
        node.upload_missing();
        tokio::spawn(reaper(Arc::downgrade(&node)));
        if let (Some(remote), Some(every)) = (
            node.remote.clone(),
            node.cfg.store.as_ref().and_then(|s| s.gc_every),
        ) {
            // In the background set: shutdown stops it.
            node.spawn_background(collector(remote, &node.cfg.home, every));
        }
        tokio::spawn(events::worker(Arc::downgrade(&node)));
        Ok(node)
    }

    async fn load(&self) -> Result<(), NodeError> {
        let reg = self.registry.clone();
        let records = blocking(move || Ok(reg.load_all()?)).await?;
        let mut keep = HashSet::new();
        for rec in records {
            keep.insert(rec.code_hash.clone());
            keep.extend(rec.opt_hash.clone());
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
        // Layer versions keep their trees, whether or not a function uses them.
        keep.extend(self.load_layers().await?.into_iter().map(|l| l.code_hash));
        let reg = self.registry.clone();
        let aliases = blocking(move || Ok(reg.load_aliases()?)).await?;
        *self.write_aliases() = aliases
            .into_iter()
            .map(|a| ((a.function.clone(), a.name.clone()), a))
            .collect();
        let code = self.code.clone();
        let removed = blocking(move || Ok(code.retain(&keep)?)).await?;
        // Snapshots of functions that are gone (deleted while one was taken, or before a
        // crash): a function created again under the name must never get one.
        let names: HashSet<String> = self.read_functions().keys().cloned().collect();
        let store = self.snapshots.clone();
        blocking(move || {
            for s in store.list() {
                if !names.contains(&s.info.function) {
                    tracing::info!(snapshot = %s.info.id, function = %s.info.function, "snapshot of a function that is gone removed");
                    let _ = store.remove(&s.info.id);
                }
            }
            Ok(())
        })
        .await?;
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
            opt_dir: rec.opt_hash.as_ref().map(|h| self.code.path(h)),
            pool: Pool::new(rec.config.max_instances),
            crash_loop: CrashLoop::default(),
            snapshotting: std::sync::atomic::AtomicBool::new(false),
            take_backoff: Mutex::new(None),
            start_costs: start_costs::StartCosts::default(),
            min_instances: std::sync::atomic::AtomicU32::new(rec.config.min_instances),
            provisioning: std::sync::atomic::AtomicBool::new(false),
            last_end: Mutex::new(None),
            prewarmed_for: Mutex::new(None),
            members: Mutex::new(HashMap::new()),
            hibernate_refused: std::sync::atomic::AtomicBool::new(false),
            hibernating: std::sync::atomic::AtomicUsize::new(0),
            waking: std::sync::atomic::AtomicUsize::new(0),
            deploy_id: NEXT_DEPLOY.fetch_add(1, Ordering::SeqCst),
            record: rec,
            env,
        });
        let old = self
            .functions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, deployed.clone());
        // A published version gets pre-made sandboxes once it is invoked, not for being
        // published (or loaded): most old versions are never invoked again.
        if crate::versions::split_qualified(&deployed.record.name)
            .1
            .is_none()
        {
            self.refill(&deployed);
        }
        self.fill(&deployed);
        if let Some(old) = old {
            self.discard_all(&old, old.pool.retire(), "replaced by a new version");
            self.forget_hibernated(&old.record.name, Some(hibernate::deploy_of(&deployed)));
        }
    }

    /// Bytes of /tmp every instance gets.
    pub fn tmp_bytes(&self) -> u64 {
        self.cfg.tmp_bytes
    }

    /// How many instances of `memory_mb` this machine holds at once: three quarters of its
    /// memory (the rest for the daemon, images and the kernel), between 1 and 1,000 (Lambda's
    /// default concurrency). What a Lambda function without reserved concurrency may use.
    pub fn capacity_instances(&self, memory_mb: u32) -> u32 {
        let total = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| mem_total_kib(&t))
            .unwrap_or(4 << 20);
        let per = u64::from(memory_mb.max(1)) << 10;
        u32::try_from((total * 3 / 4) / per)
            .unwrap_or(u32::MAX)
            .clamp(1, 1000)
    }

    pub fn metrics(&self) -> &Metrics {
        self.metrics
            .image_memory
            .set(i64::try_from(self.images.resident_bytes()).unwrap_or(i64::MAX));
        self.report_standby();
        self.report_queue();
        &self.metrics
    }

    /// Package sets of deployed functions that have no image of their own.
    fn missing_images(&self) -> Vec<Vec<String>> {
        let mut seen = HashSet::new();
        self.read_functions()
            .values()
            .filter(|d| d.record.config.runtime.restorable() && d.record.config.images)
            .filter(|d| !self.images.has_image_for(&d.env.key))
            .filter(|d| seen.insert(d.env.key.clone()))
            .map(|d| d.record.config.packages.clone())
            .collect()
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
        self.standby_drain();
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
        // Hibernated instances do not outlive the daemon (the next one empties the set too).
        let set = self.hibernated.clone();
        let _ = tokio::task::spawn_blocking(move || set.clear()).await;
    }

    /// In `snapshots = "remote"` mode, uploads set `kind/id` (the files of `dir`) to the
    /// snapshot store in the background.
    fn upload_in_background(&self, kind: &'static str, id: &str, dir: PathBuf) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        // Said at once: a listing meanwhile must not show an earlier version's state.
        remote.mark_uploading(kind, id);
        let id = id.to_string();
        self.spawn_background(async move { remote.upload(kind, &id, &dir).await });
    }

    /// In `snapshots = "remote"` mode, at start: uploads the images and function snapshots
    /// this node holds that the store lacks (made before the mode was on, or while the store
    /// was down), in the background.
    fn upload_missing(&self) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let local: Vec<(&'static str, String, PathBuf)> = self
            .images
            .list()
            .into_iter()
            .map(|s| ("image", s.info.id.clone(), self.images.path(&s.info.id)))
            .chain(self.snapshots.list().into_iter().map(|s| {
                (
                    "snapshot",
                    s.info.set_id().to_string(),
                    self.snapshots.path(&s.info.id),
                )
            }))
            .collect();
        if local.is_empty() {
            return;
        }
        let me = self.me.clone();
        self.spawn_background(async move {
            for (kind, id, dir) in local {
                match remote.stored(kind, &id).await {
                    Ok(true) => remote.mark_stored(kind, &id),
                    Ok(false) => {
                        let Some(node) = me.upgrade() else { return };
                        node.upload_in_background(kind, &id, dir);
                    }
                    Err(e) => {
                        tracing::warn!(
                            store = remote.describe(),
                            "the snapshot store could not be read at start; what this node \
                             holds is uploaded when it is made again: {e}"
                        );
                        return;
                    }
                }
            }
        });
    }

    /// Where set `kind/id` stands in the snapshot store, if this node uploaded it.
    pub(crate) fn remote_state(&self, kind: &str, id: &str) -> Option<String> {
        let state = self.remote.as_ref()?.state(kind, id)?;
        Some(state.describe())
    }

    /// Runs `task` in the node's background set: shutdown cancels it before it removes the
    /// node's sandboxes (image builds, snapshot takes).
    fn spawn_background(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut tasks = self.background.lock().unwrap_or_else(|p| p.into_inner());
        // Finished tasks leave their results in the set: drop them.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(task);
    }

    fn expire_idle(&self) {
        self.standby_expire();
        let all: Vec<Arc<Deployed>> = self.read_functions().values().cloned().collect();
        for d in all {
            // Those kept ready stay: as many as are not busy.
            let min = d.min_instances.load(Ordering::SeqCst) as usize;
            let live = d.pool.live().load(Ordering::SeqCst);
            let busy = live.saturating_sub(d.pool.idle_count());
            let w = self.keep_alive.windows(&d.record.name);
            // Kept ready in memory unless they would be hibernated (then kept ready there).
            let hibernates = self.hibernates(&d) && !w.hibernate.is_zero();
            let keep = if hibernates {
                0
            } else {
                min.saturating_sub(busy)
            };
            let out = d.pool.expire(w.keep_alive, keep);
            self.discard_all(&d, out.gone, "found dead, or of an earlier generation");
            let generation = d.pool.generation();
            for live in out.expired {
                let why = "idle past the keep-alive time";
                self.hibernate_or_stop(&d, live, w.hibernate, why, generation);
            }
            // Finished page servers of idle instances let go of what they read.
            d.pool.for_each_idle(invoke::release_finished_server);
            self.fill(&d);
            self.prewarm_due(&d, &w, live);
        }
        self.expire_hibernated();
        self.relieve_memory_pressure();
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo_kib(meminfo, "MemTotal:")
}

/// Field `name` of a `/proc/meminfo` text, in KiB.
fn meminfo_kib(meminfo: &str, name: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The machine's available memory in percent of its total.
fn available_percent() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/meminfo").ok()?;
    let (avail, total) = (meminfo_kib(&t, "MemAvailable:")?, mem_total_kib(&t)?);
    Some(avail * 100 / total.max(1))
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

/// Where instances see the node's code, package environments and runtime: the same fixed
/// paths on every node, whatever its home or `--envs-dir`, so that an image or a function
/// snapshot taken on one node (it records the paths of the files its process holds) is
/// restored on another (the snapshot store).
fn inside_paths(code: &Path, envs: &Path, runtime: &Path) -> ember_sandbox::PathMap {
    ember_sandbox::PathMap::default()
        .with(code, "/ember/code")
        .with(envs, "/ember/envs")
        .with(runtime, "/ember/runtime")
}

/// Names the bootstrap an image's process runs: its directory, named by its content hash.
pub(crate) fn runtime_of(bootstrap: &std::path::Path) -> String {
    // An image is only as good as the bootstrap its process runs and the snapshot format it
    // is written in: images of either an earlier one are removed at start and rebuilt.
    let name = bootstrap
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `paths1`: instances see the node's files at the sandbox's fixed paths (/ember/...);
    // images and snapshots taken when they saw them at the host's are not restorable.
    format!(
        "{name}/snap{}/paths1",
        ember_snap::image::format::FORMAT_VERSION
    )
}

/// In `snapshots = "remote"` mode: collects the store's garbage every `every`, the first
/// time after between a half and the whole of it, by the node's `home`, so that the nodes
/// of one store do not all try at once (one at a time can: the others find the store busy).
/// Runs until the node's shutdown aborts it.
fn collector(
    remote: Arc<crate::remote::Remote>,
    home: &std::path::Path,
    every: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let h = blake3::hash(home.as_os_str().as_encoded_bytes());
    let first = every / 2 + every.mul_f64(f64::from(h.as_bytes()[0]) / 512.0);
    async move {
        tokio::time::sleep(first).await;
        loop {
            remote.collect().await;
            tokio::time::sleep(every).await;
        }
    }
}

async fn reaper(node: Weak<Node>) {
    let period = match node.upgrade() {
        // Often enough for the histogram policy's windows too (a bin's quarter).
        // At least every second: memory pressure is looked at as often.
        Some(n) => (n.cfg.keep_alive.min(n.cfg.keep_alive_bin) / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(n) = node.upgrade() else { return };
        n.expire_idle();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_total_is_read_from_meminfo() {
        let t = "MemTotal:       24570012 kB\nMemFree:         1000 kB\n";
        assert_eq!(super::mem_total_kib(t), Some(24_570_012));
        assert_eq!(super::mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(super::mem_total_kib("MemTotal: lots\n"), None);
    }
}
