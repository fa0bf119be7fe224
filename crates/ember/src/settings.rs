//! Daemon settings: command-line flags and environment variables override an optional TOML
//! file, which overrides the embedded defaults.
//!
//! ```toml
//! # <home>/ember.toml, or the file given with --config / EMBER_CONFIG
//! listen = "127.0.0.1:8080"
//! token = "secret"
//! python = "/usr/bin/python3"
//! node_js = "/usr/bin/node"
//! envs_dir = "/var/lib/ember/envs"
//! keep_alive = "10m"
//! keep_alive_policy = "fixed" # fixed | histogram (per-function windows from idle times)
//! keep_alive_bin = "60s"    # the histogram policy's bin (240 of them)
//! hibernate = "1h"          # idle instances past their keep-alive are hibernated to disk
//!                           # for this long ("off": stopped instead)
//! hibernate_disk_mb = 2048  # disk budget of hibernated instances (oldest removed past it)
//! hibernate_policy = "bulk" # how a woken instance's pages come: bulk | lazy | eager
//! memory_pressure_percent = 10 # available memory under this % of the total: idle
//!                           # instances hibernated, least recently used first (0: never)
//! queue_depth = 100
//! queue_timeout = "10s"
//! init_timeout = "60s"
//! max_event_bytes = 6291456
//! max_deploy_bytes = 70167211
//! log_max_bytes = 8388608
//! sandbox = true          # false: instances run unconfined as the daemon's user
//! sandbox_uid = 65534
//! sandbox_gid = 65534
//! pids_max = 256
//! tmp_mb = 64
//! images = "on-deploy"     # "off", or a list of package sets: [["numpy"], ["pandas", "scikit-learn"]]
//! image_memory_mb = 1024   # the in-memory image pool; other images are served from disk
//! image_policy = "eager"  # eager | lazy | bulk | prefetch
//! snapshots = "local"      # "off": none taken or used; "remote": also uploaded to, and
//!                          # fetched from, the snapshot store (EMBER_S3_* and AWS_*
//!                          # variables: docs/store.md)
//! snapshot_disk_mb = 4096  # the snapshot cache's disk budget; past it, snapshots are evicted
//! snapshot_memory_mb = 512 # loaded snapshot layers kept in memory
//! snapshot_eviction = "lru" # lru | gdsf
//! snapshot_failures_unhealthy = 3 # failed restores in a row that remove a snapshot
//! lazy_remote = true       # false: a function snapshot from the store is fetched whole
//!                          # before it is restored (true: its working set first)
//! event_retry_delay = "60s" # before an Event invocation's first retry (the second waits 2x)
//! event_max_age = "6h"      # how long a throttled Event invocation keeps being retried
//! prestart = 2              # sandboxes made ahead per native function (0: on demand)
//! standby = 2               # instances forked ahead per image and per function snapshot (0: none)
//! fixed_ladder = false      # true: never skip a rung that measured slower
//! templates = true          # false: standbys are restored each, not forked from a template
//! header_timeout = "10s"    # a request's head must arrive within this, else closed
//! body_timeout = "30s"      # a body within this (+1 s per 64 KiB), else 408
//! idle_timeout = "60s"      # a keep-alive connection without a request is closed
//! max_connections = 10000   # one more gets 503 (never above half the descriptor limit)
//! max_buffered_body_bytes = 1073741824  # request bodies held at once; past it 503
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use ember_api::{ApiConfig, ConnectionLimits};
use ember_node::{AutoImages, Eviction, NodeConfig, Policy, SnapshotConfig, SnapshotMode};
use serde::Deserialize;

#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// Directory holding all of the node's state [default: ./.ember]
    #[arg(long, env = "EMBER_HOME")]
    pub home: Option<PathBuf>,
    /// TOML settings file [default: <home>/ember.toml if present]
    #[arg(long, env = "EMBER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve the API on [default: 127.0.0.1:8080]
    #[arg(long, env = "EMBER_LISTEN")]
    pub listen: Option<String>,
    /// Require this bearer token on every API request but /v1/health
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Base interpreter for package environments [default: /usr/bin/python3]
    #[arg(long, env = "EMBER_PYTHON")]
    pub python: Option<PathBuf>,
    /// Node.js for node (nodejs20.x, nodejs22.x) functions [default: /usr/bin/node]
    #[arg(long, env = "EMBER_NODE_JS")]
    pub node_js: Option<PathBuf>,
    /// Where package environments live [default: <home>/envs]
    #[arg(long, env = "EMBER_ENVS_DIR")]
    pub envs_dir: Option<PathBuf>,
    /// Stop idle instances after this long, e.g. 10m, 30s [default: 10m]
    #[arg(long, env = "EMBER_KEEP_ALIVE")]
    pub keep_alive: Option<String>,
    /// How keep-alive windows are decided: fixed (--keep-alive for every function) or
    /// histogram (per function, from its idle times; pre-warms before the next invocation)
    /// [default: fixed]
    #[arg(long, env = "EMBER_KEEP_ALIVE_POLICY")]
    pub keep_alive_policy: Option<String>,
    /// The histogram policy's bin width (240 bins) [default: 60s]
    #[arg(long, env = "EMBER_KEEP_ALIVE_BIN")]
    pub keep_alive_bin: Option<String>,
    /// Hibernate idle instances whose keep-alive ran out, to local disk, for this long (woken
    /// with their warm state by the next request that finds none warm), e.g. 1h, 30m; off
    /// stops them instead [default: 1h]
    #[arg(long, env = "EMBER_HIBERNATE")]
    pub hibernate: Option<String>,
    /// Disk budget of hibernated instances, in MiB; past it the oldest are removed
    /// [default: 2048]
    #[arg(long, env = "EMBER_HIBERNATE_DISK_MB")]
    pub hibernate_disk_mb: Option<u64>,
    /// How a woken hibernated instance's pages reach it: bulk or lazy (from its file as it
    /// touches them, each chunk checked; bulk then the rest in the background), or eager
    /// (its dump read and checked whole, every page installed before it runs)
    /// [default: bulk]
    #[arg(long, env = "EMBER_HIBERNATE_POLICY")]
    pub hibernate_policy: Option<String>,
    /// While the machine's available memory is under this percentage of its total, idle
    /// instances are hibernated, least recently used first, whatever their keep-alive (0:
    /// never) [default: 10]
    #[arg(long, env = "EMBER_MEMORY_PRESSURE_PERCENT")]
    pub memory_pressure_percent: Option<u8>,
    /// Requests that may queue per function when all its instances are busy [default: 100]
    #[arg(long, env = "EMBER_QUEUE_DEPTH")]
    pub queue_depth: Option<usize>,
    /// How long a queued request waits before 429 [default: 10s]
    #[arg(long, env = "EMBER_QUEUE_TIMEOUT")]
    pub queue_timeout: Option<String>,
    /// Longest a cold boot may take [default: 60s]
    #[arg(long, env = "EMBER_INIT_TIMEOUT")]
    pub init_timeout: Option<String>,
    /// Wait before an Event invocation's first retry; the second waits twice as long
    /// [default: 60s]
    #[arg(long, env = "EMBER_EVENT_RETRY_DELAY")]
    pub event_retry_delay: Option<String>,
    /// How long a throttled Event invocation keeps being retried [default: 6h]
    #[arg(long, env = "EMBER_EVENT_MAX_AGE")]
    pub event_max_age: Option<String>,
    /// Sandboxes made ahead of demand per native function, its executable spawned and
    /// stopped; 0 makes each request's sandbox on demand [default: 2]
    #[arg(long, env = "EMBER_PRESTART")]
    pub prestart: Option<usize>,
    /// Most instances of one dependency image, and of one function snapshot, made (forked
    /// from its template) ahead of demand (standby), as many as its recent starts, and most
    /// sandboxes made ahead for restores; a start then pays neither sandbox nor fork nor
    /// restore; 0 makes each on demand [default: 2]
    #[arg(long, env = "EMBER_STANDBY")]
    pub standby: Option<usize>,
    /// Climb the start ladder in its order always: never skip a rung that measured slower
    /// than another way of starting the function (to measure one rung)
    #[arg(long, env = "EMBER_FIXED_LADDER")]
    pub fixed_ladder: bool,
    /// Restore each standby instance of an image on its own instead of forking it from the
    /// image's template (one parked restore whose pages the instances share copy-on-write)
    #[arg(long, env = "EMBER_NO_TEMPLATES")]
    pub no_templates: bool,
    /// In snapshots = "remote" mode, fetch a function snapshot missing here whole before
    /// restoring it, instead of restoring it lazily (its recorded working set first, the
    /// rest as the instance touches it and in the background)
    #[arg(long, env = "EMBER_NO_LAZY_REMOTE")]
    pub no_lazy_remote: bool,
    /// Largest invoke payload in bytes [default: 6 MiB]
    #[arg(long, env = "EMBER_MAX_EVENT_BYTES")]
    pub max_event_bytes: Option<usize>,
    /// Largest deploy request in bytes [default: 70167211]
    #[arg(long, env = "EMBER_MAX_DEPLOY_BYTES")]
    pub max_deploy_bytes: Option<usize>,
    /// Size at which a function's log rotates [default: 8 MiB]
    #[arg(long, env = "EMBER_LOG_MAX_BYTES")]
    pub log_max_bytes: Option<u64>,
    /// Run instances unconfined, as this daemon's user (the sandbox needs root)
    #[arg(long, env = "EMBER_NO_SANDBOX")]
    pub no_sandbox: bool,
    /// User id instances run as [default: 65534]
    #[arg(long, env = "EMBER_SANDBOX_UID")]
    pub sandbox_uid: Option<u32>,
    /// Group id instances run as [default: 65534]
    #[arg(long, env = "EMBER_SANDBOX_GID")]
    pub sandbox_gid: Option<u32>,
    /// Most processes and threads in one instance [default: 256]
    #[arg(long, env = "EMBER_PIDS_MAX")]
    pub pids_max: Option<u64>,
    /// Size of each instance's private /tmp in MiB [default: 64]
    #[arg(long, env = "EMBER_TMP_MB")]
    pub tmp_mb: Option<u64>,
    /// Which dependency images to build by themselves: on-deploy or off (a list of package
    /// sets goes in the settings file) [default: on-deploy]
    #[arg(long, env = "EMBER_IMAGES")]
    pub images: Option<String>,
    /// Memory for the in-memory image pool, in MiB [default: 1024]
    #[arg(long, env = "EMBER_IMAGE_MEMORY_MB")]
    pub image_memory_mb: Option<u64>,
    /// How restored pages reach instances: eager, lazy, bulk or prefetch [default: eager]
    #[arg(long, env = "EMBER_IMAGE_POLICY")]
    pub image_policy: Option<String>,
    /// Function snapshots: local (taken after a function's init, and used by its later cold
    /// starts), remote (as local, and images and snapshots are also uploaded to the snapshot
    /// store named by EMBER_S3_ENDPOINT, EMBER_S3_BUCKET, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, and fetched from it when missing here) or off [default: local]
    #[arg(long, env = "EMBER_SNAPSHOTS")]
    pub snapshots: Option<String>,
    /// Disk budget of the function-snapshot cache, in MiB; past it, snapshots are evicted
    /// [default: 4096]
    #[arg(long, env = "EMBER_SNAPSHOT_DISK_MB")]
    pub snapshot_disk_mb: Option<u64>,
    /// Memory for loaded function-snapshot layers, in MiB [default: 512]
    #[arg(long, env = "EMBER_SNAPSHOT_MEMORY_MB")]
    pub snapshot_memory_mb: Option<u64>,
    /// Which function snapshots leave a full cache first: lru (least recently used) or gdsf
    /// (Greedy-Dual-Size-Frequency: large, rarely used, cheap-to-init ones) [default: lru]
    #[arg(long, env = "EMBER_SNAPSHOT_EVICTION")]
    pub snapshot_eviction: Option<String>,
    /// Failed restores in a row after which a function snapshot is removed [default: 3]
    #[arg(long, env = "EMBER_SNAPSHOT_FAILURES_UNHEALTHY")]
    pub snapshot_failures_unhealthy: Option<u32>,
    /// A request's head must arrive within this, else the connection is closed
    /// [default: 10s]
    #[arg(long, env = "EMBER_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// A request's body must arrive within this, plus 1 s per 64 KiB, else 408
    /// [default: 30s]
    #[arg(long, env = "EMBER_BODY_TIMEOUT")]
    pub body_timeout: Option<String>,
    /// A keep-alive connection with no request for this long is closed [default: 60s]
    #[arg(long, env = "EMBER_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Connections held at once; one more gets 503 (never above half the descriptor
    /// limit) [default: 10000]
    #[arg(long, env = "EMBER_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Bytes of request bodies held at once; a body past it gets 503 [default: 1 GiB]
    #[arg(long, env = "EMBER_MAX_BUFFERED_BODY_BYTES")]
    pub max_buffered_body_bytes: Option<usize>,
}

/// `images` in the settings file: a mode, or the package sets to build at start.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ImagesSetting {
    Mode(String),
    Sets(Vec<Vec<String>>),
}

fn auto_images(v: ImagesSetting) -> anyhow::Result<AutoImages> {
    match v {
        ImagesSetting::Mode(m) => match m.as_str() {
            "off" => Ok(AutoImages::Off),
            "on-deploy" => Ok(AutoImages::OnDeploy),
            other => bail!(
                "images {other:?} is not a mode: write \"off\", \"on-deploy\", or a list of \
                 package sets such as [[\"numpy\"], [\"pandas\", \"scikit-learn\"]]"
            ),
        },
        ImagesSetting::Sets(sets) => {
            for s in &sets {
                ember_node::function::validate_packages(s)
                    .with_context(|| format!("images: the package set {s:?}"))?;
            }
            Ok(AutoImages::Fixed(sets))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    home: Option<PathBuf>,
    listen: Option<String>,
    token: Option<String>,
    python: Option<PathBuf>,
    node_js: Option<PathBuf>,
    envs_dir: Option<PathBuf>,
    keep_alive: Option<String>,
    keep_alive_policy: Option<String>,
    keep_alive_bin: Option<String>,
    hibernate: Option<String>,
    hibernate_disk_mb: Option<u64>,
    memory_pressure_percent: Option<u8>,
    hibernate_policy: Option<String>,
    queue_depth: Option<usize>,
    queue_timeout: Option<String>,
    init_timeout: Option<String>,
    event_retry_delay: Option<String>,
    event_max_age: Option<String>,
    prestart: Option<usize>,
    standby: Option<usize>,
    fixed_ladder: Option<bool>,
    templates: Option<bool>,
    lazy_remote: Option<bool>,
    max_event_bytes: Option<usize>,
    max_deploy_bytes: Option<usize>,
    log_max_bytes: Option<u64>,
    sandbox: Option<bool>,
    sandbox_uid: Option<u32>,
    sandbox_gid: Option<u32>,
    pids_max: Option<u64>,
    tmp_mb: Option<u64>,
    images: Option<ImagesSetting>,
    image_memory_mb: Option<u64>,
    image_policy: Option<String>,
    snapshots: Option<String>,
    snapshot_disk_mb: Option<u64>,
    snapshot_memory_mb: Option<u64>,
    snapshot_eviction: Option<String>,
    snapshot_failures_unhealthy: Option<u32>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_buffered_body_bytes: Option<usize>,
}

/// Everything a daemon needs to start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: String,
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub connections: ConnectionLimits,
}

fn duration(name: &str, v: Option<String>, default: Duration) -> anyhow::Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).with_context(|| {
            format!("{name} {s:?} is not a duration (write e.g. 10m, 30s, 500ms)")
        }),
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the settings file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid settings file", path.display()))
}

impl DaemonArgs {
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(p) => read_file(p)?,
            None => {
                let home = self.home.clone().unwrap_or_else(|| PathBuf::from(".ember"));
                let p = home.join("ember.toml");
                if p.exists() {
                    read_file(&p)?
                } else {
                    FileSettings::default()
                }
            }
        };
        let d = NodeConfig::default();
        let a = ApiConfig::default();
        let mut images = d.images.clone();
        if let Some(v) = self.images.map(ImagesSetting::Mode).or(file.images) {
            images.auto = auto_images(v)?;
        }
        if let Some(mb) = self.image_memory_mb.or(file.image_memory_mb) {
            images.memory_bytes = mb << 20;
        }
        if let Some(p) = self.image_policy.or(file.image_policy) {
            images.policy = p.parse().map_err(anyhow::Error::msg)?;
            if images.policy == Policy::Mapped {
                bail!(
                    "image_policy mapped cannot restore into a sandbox; use prefetch, lazy, bulk \
                     or eager"
                );
            }
        }
        let ds = &d.snapshots;
        let snapshots = SnapshotConfig {
            mode: match self.snapshots.or(file.snapshots) {
                Some(m) => m.parse::<SnapshotMode>().map_err(anyhow::Error::msg)?,
                None => ds.mode,
            },
            disk_bytes: self
                .snapshot_disk_mb
                .or(file.snapshot_disk_mb)
                .map_or(ds.disk_bytes, |mb| mb << 20),
            memory_bytes: self
                .snapshot_memory_mb
                .or(file.snapshot_memory_mb)
                .map_or(ds.memory_bytes, |mb| mb << 20),
            eviction: match self.snapshot_eviction.or(file.snapshot_eviction) {
                Some(e) => e.parse::<Eviction>().map_err(anyhow::Error::msg)?,
                None => ds.eviction,
            },
            failures_unhealthy: self
                .snapshot_failures_unhealthy
                .or(file.snapshot_failures_unhealthy)
                .unwrap_or(ds.failures_unhealthy),
            lazy_remote: !self.no_lazy_remote && file.lazy_remote.unwrap_or(ds.lazy_remote),
        };
        if snapshots.failures_unhealthy == 0 {
            bail!("snapshot_failures_unhealthy must be at least 1");
        }
        let node = NodeConfig {
            home: self.home.or(file.home).unwrap_or(d.home),
            envs_dir: self.envs_dir.or(file.envs_dir),
            python: self.python.or(file.python).unwrap_or(d.python),
            node_js: self.node_js.or(file.node_js).unwrap_or(d.node_js),
            keep_alive: duration(
                "keep_alive",
                self.keep_alive.or(file.keep_alive),
                d.keep_alive,
            )?,
            keep_alive_policy: match self.keep_alive_policy.or(file.keep_alive_policy) {
                Some(p) => {
                    ember_node::keepalive::PolicyKind::parse(&p).map_err(anyhow::Error::msg)?
                }
                None => d.keep_alive_policy,
            },
            keep_alive_bin: duration(
                "keep_alive_bin",
                self.keep_alive_bin.or(file.keep_alive_bin),
                d.keep_alive_bin,
            )?,
            hibernate: ember_node::HibernateConfig {
                keep: match self.hibernate.or(file.hibernate).as_deref() {
                    Some("off") => Duration::ZERO,
                    v => duration("hibernate", v.map(String::from), d.hibernate.keep)?,
                },
                disk_bytes: self
                    .hibernate_disk_mb
                    .or(file.hibernate_disk_mb)
                    .map_or(d.hibernate.disk_bytes, |mb| mb << 20),
                pressure_percent: self
                    .memory_pressure_percent
                    .or(file.memory_pressure_percent)
                    .unwrap_or(d.hibernate.pressure_percent),
                policy: match self.hibernate_policy.or(file.hibernate_policy) {
                    None => d.hibernate.policy,
                    Some(p) => match p.parse().map_err(anyhow::Error::msg)? {
                        p @ (Policy::Eager | Policy::Lazy | Policy::Bulk) => p,
                        _ => bail!(
                            "hibernate_policy {p} cannot wake a hibernated instance; use bulk, lazy or eager"
                        ),
                    },
                },
            },
            queue_depth: self
                .queue_depth
                .or(file.queue_depth)
                .unwrap_or(d.queue_depth),
            queue_timeout: duration(
                "queue_timeout",
                self.queue_timeout.or(file.queue_timeout),
                d.queue_timeout,
            )?,
            init_timeout: duration(
                "init_timeout",
                self.init_timeout.or(file.init_timeout),
                d.init_timeout,
            )?,
            events: ember_node::EventConfig {
                retry_delay: duration(
                    "event_retry_delay",
                    self.event_retry_delay.or(file.event_retry_delay),
                    d.events.retry_delay,
                )?,
                max_age: duration(
                    "event_max_age",
                    self.event_max_age.or(file.event_max_age),
                    d.events.max_age,
                )?,
                ..d.events.clone()
            },
            prestart: self.prestart.or(file.prestart).unwrap_or(d.prestart),
            standby: self.standby.or(file.standby).unwrap_or(d.standby),
            fixed_ladder: self.fixed_ladder || file.fixed_ladder.unwrap_or(d.fixed_ladder),
            templates: !self.no_templates && file.templates.unwrap_or(d.templates),
            log_max_bytes: self
                .log_max_bytes
                .or(file.log_max_bytes)
                .unwrap_or(d.log_max_bytes),
            sandbox: !self.no_sandbox && file.sandbox.unwrap_or(d.sandbox),
            sandbox_uid: self
                .sandbox_uid
                .or(file.sandbox_uid)
                .unwrap_or(d.sandbox_uid),
            sandbox_gid: self
                .sandbox_gid
                .or(file.sandbox_gid)
                .unwrap_or(d.sandbox_gid),
            pids_max: self.pids_max.or(file.pids_max).unwrap_or(d.pids_max),
            tmp_bytes: self
                .tmp_mb
                .or(file.tmp_mb)
                .map_or(d.tmp_bytes, |mb| mb << 20),
            store: match snapshots.mode {
                SnapshotMode::Remote => ember_store::S3Config::from_env()?,
                _ => None,
            },
            images,
            snapshots,
        };
        let api = ApiConfig {
            cluster_member: false,
            token: self.token.or(file.token).filter(|t| !t.is_empty()),
            max_event_bytes: self
                .max_event_bytes
                .or(file.max_event_bytes)
                .unwrap_or(a.max_event_bytes),
            max_deploy_bytes: self
                .max_deploy_bytes
                .or(file.max_deploy_bytes)
                .unwrap_or(a.max_deploy_bytes),
        };
        if node.hibernate.pressure_percent > 100 {
            bail!("memory_pressure_percent must be from 0 to 100");
        }
        if node.keep_alive.is_zero() {
            bail!("keep_alive must be more than zero");
        }
        if node.keep_alive_bin < Duration::from_millis(100) {
            bail!("keep_alive_bin must be at least 100ms");
        }
        let c = ConnectionLimits::default();
        let connections = ConnectionLimits {
            header_timeout: duration(
                "header_timeout",
                self.header_timeout.or(file.header_timeout),
                c.header_timeout,
            )?,
            body_timeout: duration(
                "body_timeout",
                self.body_timeout.or(file.body_timeout),
                c.body_timeout,
            )?,
            idle_timeout: duration(
                "idle_timeout",
                self.idle_timeout.or(file.idle_timeout),
                c.idle_timeout,
            )?,
            max_connections: self
                .max_connections
                .or(file.max_connections)
                .unwrap_or(c.max_connections),
            max_buffered_body_bytes: self
                .max_buffered_body_bytes
                .or(file.max_buffered_body_bytes)
                .unwrap_or(c.max_buffered_body_bytes),
        };
        for (name, d) in [
            ("header_timeout", connections.header_timeout),
            ("body_timeout", connections.body_timeout),
            ("idle_timeout", connections.idle_timeout),
        ] {
            if d.is_zero() {
                bail!("{name} must be more than zero");
            }
        }
        if connections.max_connections == 0 || connections.max_buffered_body_bytes == 0 {
            bail!("max_connections and max_buffered_body_bytes must be more than zero");
        }
        Ok(Settings {
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8080".into()),
            node,
            api,
            connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Each flag of `ember serve` with the default its help states (`[default: X]` in its
    /// text, or clap's own), `None` when it states none.
    fn help_defaults() -> BTreeMap<String, Option<String>> {
        help_defaults_of("serve")
    }

    /// Each flag of `ember <sub>` and the default its help states.
    fn help_defaults_of(sub: &str) -> BTreeMap<String, Option<String>> {
        use clap::CommandFactory;
        let mut cli = crate::Cli::command();
        cli.build();
        let serve = cli.find_subcommand(sub).unwrap();
        let mut m = BTreeMap::new();
        for a in serve.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let stated = help
                .split_once("[default: ")
                .and_then(|(_, rest)| rest.split(']').next())
                .map(String::from)
                .or_else(|| {
                    // A switch's implied "false" is no stated default.
                    a.get_action()
                        .takes_values()
                        .then(|| a.get_default_values().first())
                        .flatten()
                        .map(|v| v.to_string_lossy().into_owned())
                });
            m.insert(format!("--{long}"), stated);
        }
        m
    }

    /// `6 MiB`, `1 GiB` or a plain number of bytes.
    fn bytes(text: &str) -> u64 {
        let (n, shift) = match text.split_once(' ') {
            Some((n, "MiB")) => (n, 20),
            Some((n, "GiB")) => (n, 30),
            _ => (text, 0),
        };
        n.parse::<u64>().unwrap() << shift
    }

    /// What `serve --help` says of each default is what the daemon uses.
    #[test]
    fn help_states_the_defaults_the_daemon_uses() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let s = DaemonArgs {
            config: Some(empty),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        let help = help_defaults();
        let said = |flag: &str| {
            help.get(flag)
                .cloned()
                .flatten()
                .unwrap_or_else(|| panic!("{flag} states no default"))
        };
        let dur = |flag: &str| humantime::parse_duration(&said(flag)).unwrap();
        let num = |flag: &str| said(flag).parse::<u64>().unwrap();
        assert_eq!(said("--home").trim_start_matches("./"), ".ember");
        assert_eq!(s.node.home, PathBuf::from(".ember"));
        assert_eq!(said("--listen"), s.listen);
        assert_eq!(PathBuf::from(said("--python")), s.node.python);
        assert_eq!(PathBuf::from(said("--node-js")), s.node.node_js);
        assert_eq!(said("--envs-dir"), "<home>/envs");
        assert_eq!(s.node.envs_dir, None);
        assert_eq!(dur("--keep-alive"), s.node.keep_alive);
        assert_eq!(num("--queue-depth"), s.node.queue_depth as u64);
        assert_eq!(dur("--queue-timeout"), s.node.queue_timeout);
        assert_eq!(dur("--init-timeout"), s.node.init_timeout);
        assert_eq!(dur("--event-retry-delay"), s.node.events.retry_delay);
        assert_eq!(dur("--event-max-age"), s.node.events.max_age);
        assert_eq!(num("--prestart"), s.node.prestart as u64);
        assert_eq!(num("--standby"), s.node.standby as u64);
        assert_eq!(
            bytes(&said("--max-event-bytes")),
            s.api.max_event_bytes as u64
        );
        assert_eq!(
            bytes(&said("--max-deploy-bytes")),
            s.api.max_deploy_bytes as u64
        );
        assert_eq!(bytes(&said("--log-max-bytes")), s.node.log_max_bytes);
        assert_eq!(num("--sandbox-uid"), u64::from(s.node.sandbox_uid));
        assert_eq!(num("--sandbox-gid"), u64::from(s.node.sandbox_gid));
        assert_eq!(num("--pids-max"), s.node.pids_max);
        assert_eq!(num("--tmp-mb") << 20, s.node.tmp_bytes);
        assert_eq!(said("--images"), "on-deploy");
        assert_eq!(s.node.images.auto, AutoImages::OnDeploy);
        assert_eq!(num("--image-memory-mb") << 20, s.node.images.memory_bytes);
        let policy: Policy = said("--image-policy").parse().unwrap();
        assert_eq!(policy, s.node.images.policy);
        let sn = &s.node.snapshots;
        assert_eq!(said("--snapshots").parse::<SnapshotMode>(), Ok(sn.mode));
        assert_eq!(num("--snapshot-disk-mb") << 20, sn.disk_bytes);
        assert_eq!(num("--snapshot-memory-mb") << 20, sn.memory_bytes);
        assert_eq!(
            said("--snapshot-eviction").parse::<Eviction>(),
            Ok(sn.eviction)
        );
        assert_eq!(
            num("--snapshot-failures-unhealthy"),
            u64::from(sn.failures_unhealthy)
        );
        assert_eq!(said("--log-format"), "text");
        assert!(s.node.sandbox && s.api.token.is_none());
        let c = &s.connections;
        assert_eq!(dur("--header-timeout"), c.header_timeout);
        assert_eq!(dur("--body-timeout"), c.body_timeout);
        assert_eq!(dur("--idle-timeout"), c.idle_timeout);
        assert_eq!(num("--max-connections"), c.max_connections as u64);
        assert_eq!(
            bytes(&said("--max-buffered-body-bytes")),
            c.max_buffered_body_bytes as u64
        );
    }

    /// The README's table of daemon settings has a row for every flag of `ember serve`, with
    /// the default its help states.
    #[test]
    fn the_readme_table_has_every_flag_and_its_default() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
                .unwrap();
        let mut rows = BTreeMap::new();
        for line in readme.lines().filter(|l| l.starts_with("| `--")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let default = cells.get(2).copied().unwrap_or_default().replace('`', "");
            for flag in cells[0].split('`').filter(|w| w.starts_with("--")) {
                rows.insert(flag.to_string(), default.clone());
            }
        }
        for (flag, stated) in help_defaults() {
            if flag == "--help" {
                continue;
            }
            let Some(row) = rows.get(&flag) else {
                panic!("README.md's daemon table has no row for {flag}");
            };
            if let Some(stated) = stated {
                assert_eq!(row, &stated, "{flag}: README.md and --help disagree");
            }
        }
    }

    /// docs/cluster.md's settings table has a row for every flag of `ember gateway`, with the
    /// default its help states.
    #[test]
    fn the_cluster_doc_has_every_gateway_flag_and_its_default() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/cluster.md"
        ))
        .unwrap();
        let mut rows = BTreeMap::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split(" | ").collect();
            let default = cells.get(2).copied().unwrap_or_default().replace('`', "");
            let first = cells[0].trim_start_matches("| ").replace('`', "");
            // `gateway --x` rows, and the flags both roles share (`--x`).
            let flag = match first.strip_prefix("gateway ") {
                Some(f) => f.to_string(),
                None if first.starts_with("--") => first.clone(),
                None => continue,
            };
            rows.insert(flag, default);
        }
        for (flag, stated) in help_defaults_of("gateway") {
            // Every command's own (the README's table has --log-format).
            if flag == "--help" || flag == "--log-format" {
                continue;
            }
            let Some(row) = rows.get(&flag) else {
                panic!("docs/cluster.md's settings table has no row for gateway {flag}");
            };
            if let Some(stated) = stated {
                assert_eq!(
                    row, &stated,
                    "gateway {flag}: docs/cluster.md and --help disagree"
                );
            }
        }
    }

    #[test]
    fn flags_beat_file_beats_defaults() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("e.toml");
        std::fs::write(
            &cfg,
            "listen = \"127.0.0.1:9\"\nkeep_alive = \"30s\"\nqueue_depth = 3\n",
        )
        .unwrap();
        let s = DaemonArgs {
            config: Some(cfg.clone()),
            queue_depth: Some(7),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9");
        assert_eq!(s.node.keep_alive, Duration::from_secs(30));
        assert_eq!(s.node.queue_depth, 7);
        assert_eq!(s.node.init_timeout, NodeConfig::default().init_timeout);
        std::fs::write(&cfg, "keep_alive = \"soon\"\n").unwrap();
        let err = DaemonArgs {
            config: Some(cfg.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("not a duration"), "{err:#}");
        std::fs::write(
            &cfg,
            "images = [[\"numpy\"], [\"pandas\", \"scikit-learn\"]]\n",
        )
        .unwrap();
        let s = DaemonArgs {
            config: Some(cfg.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.node.images.auto,
            AutoImages::Fixed(vec![
                vec!["numpy".into()],
                vec!["pandas".into(), "scikit-learn".into()]
            ])
        );
        for bad in [
            "images = \"sometimes\"\n",
            "images = [[\"-r /etc/passwd\"]]\n",
            "image_policy = \"mapped\"\n",
        ] {
            std::fs::write(&cfg, bad).unwrap();
            let r = DaemonArgs {
                config: Some(cfg.clone()),
                ..Default::default()
            }
            .resolve();
            assert!(r.is_err(), "{bad}");
        }
        std::fs::write(
            &cfg,
            "snapshots = \"off\"\nsnapshot_disk_mb = 100\nsnapshot_eviction = \"gdsf\"\n",
        )
        .unwrap();
        let s = DaemonArgs {
            config: Some(cfg.clone()),
            snapshot_eviction: Some("lru".into()),
            snapshot_memory_mb: Some(64),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(
            s.node.snapshots,
            SnapshotConfig {
                mode: SnapshotMode::Off,
                disk_bytes: 100 << 20,
                memory_bytes: 64 << 20,
                eviction: Eviction::Lru,
                failures_unhealthy: 3,
                lazy_remote: true,
            }
        );
        for (bad, says) in [
            (
                "snapshots = \"cloud\"\n",
                "snapshots \"cloud\" is not a mode: write \"off\", \"local\" or \"remote\"",
            ),
            (
                "snapshot_eviction = \"lfu\"\n",
                "snapshot_eviction \"lfu\" is not a policy: write \"lru\" or \"gdsf\"",
            ),
            (
                "snapshot_failures_unhealthy = 0\n",
                "snapshot_failures_unhealthy must be at least 1",
            ),
        ] {
            std::fs::write(&cfg, bad).unwrap();
            let err = DaemonArgs {
                config: Some(cfg.clone()),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert_eq!(format!("{err:#}"), says);
        }
        std::fs::write(&cfg, "listn = 1\n").unwrap();
        let err = DaemonArgs {
            config: Some(cfg),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field"), "{err:#}");
    }
}
