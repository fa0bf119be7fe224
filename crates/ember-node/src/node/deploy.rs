//! Deploying functions: their code, checks, environments and records; listing, deleting,
//! stopping their instances and reading their logs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use tracing::{Instrument, info_span};

use super::{Deployed, Node, NodeError, blocking, now_secs};
use crate::config::AutoImages;
use crate::function::{FunctionConfig, FunctionRecord, InvalidFunction, validate_name};
use crate::versions::split_qualified;

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
    /// Hibernated on local disk (woken by the next request that finds none warm).
    pub instances_hibernated: usize,
    /// Their dumps' bytes on disk.
    pub hibernated_bytes: u64,
    /// Requests queued for a free instance right now.
    pub requests_waiting: usize,
    /// Moving average of each start path's time before the handler runs, ms (this
    /// version): a rung slower than another is not tried.
    pub start_ms: std::collections::BTreeMap<String, f64>,
    /// Its function snapshot is being taken (a version just published is Pending until
    /// then).
    pub snapshotting: bool,
    /// Its keep-alive and pre-warm windows now (the node's keep-alive policy's).
    pub keep_alive: crate::keepalive::Windows,
    /// The node's keep-alive policy.
    pub keep_alive_policy: &'static str,
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

impl Node {
    pub(in crate::node) fn deploy_gate(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
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
        self.deploy_expecting(name, config, code, progress, None)
            .await
    }

    /// [`Node::deploy`], refused with [`NodeError::Changed`] unless the function's version is
    /// still `expected` (when given) once the deploy holds the function: a read-modify-write
    /// that raced another change does not overwrite it.
    pub async fn deploy_expecting(
        &self,
        name: &str,
        config: FunctionConfig,
        code: Option<StoredCode>,
        progress: &(dyn Fn(&str) + Send + Sync),
        expected: Option<u64>,
    ) -> Result<(FunctionRecord, bool), NodeError> {
        validate_name(name)?;
        config.validate()?;
        let gate = self.deploy_gate(name);
        let _held = gate.lock().await;
        let previous = self.read_functions().get(name).map(|d| d.record.clone());
        if let Some(v) = expected
            && previous.as_ref().map(|p| p.version) != Some(v)
        {
            return Err(NodeError::Changed(name.to_string()));
        }
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
        // The function's own copy of its layers while it names the same ones: a layer
        // version deleted since does not take it away (as on Lambda).
        let opt_hash = match &previous {
            Some(p)
                if p.config.layers == config.layers
                    && p.opt_hash
                        .as_ref()
                        .is_some_and(|h| self.code.path(h).is_dir()) =>
            {
                if let Some(opt) = p.opt_hash.clone().filter(|_| p.code_hash != code.hash) {
                    // New code with the same layers: still within 250 MB together.
                    let (store, c) = (self.code.clone(), code.hash.clone());
                    blocking(move || Ok(store.check_total(&[&c, &opt])?)).await?;
                }
                p.opt_hash.clone()
            }
            _ => self.merge_layers(&config.layers, &code.hash).await?,
        };
        let opt_dir = opt_hash.as_ref().map(|h| self.code.path(h));
        check_entry_point(&config, &self.code.path(&code.hash), opt_dir.as_deref())?;
        if config.runtime == crate::function::Runtime::Python {
            let (me, dir) = (self.me.clone(), self.code.path(&code.hash));
            blocking(move || match me.upgrade() {
                Some(node) => node.check_bundled_builds(&dir),
                None => Ok(()),
            })
            .await?;
        }
        if config.runtime == crate::function::Runtime::Node && !self.cfg.node_js.is_file() {
            return Err(NodeError::Invalid(InvalidFunction {
                field: "runtime",
                value: "node".into(),
                rule: format!(
                    "needs Node.js, which this node does not have at {} (install it: apt \
                     install nodejs; or start the daemon with --node-js PATH)",
                    self.cfg.node_js.display()
                ),
            }));
        }
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
            opt_hash,
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
        if has_image && let Ok(d) = self.deployed(name) {
            self.prefetch_snapshot(&d);
        }
        if self.cfg.images.auto == AutoImages::OnDeploy
            && !has_image
            && rec.config.runtime.restorable()
            && rec.config.images
        {
            self.build_in_background(vec![rec.config.packages.clone()]);
        }
        Ok((rec, previous.is_none()))
    }

    pub fn get(&self, name: &str) -> Result<FunctionStatus, NodeError> {
        self.read_functions()
            .get(name)
            .map(|d| status(self, d))
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }

    /// The version serving `name` (without building its whole status).
    pub fn version(&self, name: &str) -> Result<u64, NodeError> {
        Ok(self.deployed(name)?.record.version)
    }

    pub fn list(&self) -> Vec<FunctionStatus> {
        let mut v: Vec<FunctionStatus> = self
            .read_functions()
            .values()
            .map(|d| status(self, d))
            .collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// Deletes a function with its published versions and aliases, or (`name:N`) one
    /// published version no alias names.
    pub async fn delete(&self, name: &str) -> Result<(), NodeError> {
        let (function, version) = split_qualified(name);
        let gate = self.deploy_gate(function);
        let _held = gate.lock().await;
        if version.is_some() {
            let using = self.aliases_using(name);
            if !using.is_empty() {
                return Err(NodeError::InUse {
                    what: format!("version {name}"),
                    by: format!("alias {}", using.join(", ")),
                    hint: "point those aliases at another version first",
                });
            }
        }
        let reg = self.registry.clone();
        let n = name.to_string();
        if !blocking(move || Ok(reg.delete(&n)?)).await? {
            return Err(NodeError::NotFound(name.to_string()));
        }
        let gone: Vec<Arc<Deployed>> = {
            let mut fs = self.functions.write().unwrap_or_else(|p| p.into_inner());
            let names: Vec<String> = fs
                .keys()
                .filter(|k| *k == name || (version.is_none() && split_qualified(k).0 == function))
                .cloned()
                .collect();
            names.iter().filter_map(|k| fs.remove(k)).collect()
        };
        if version.is_none() {
            self.write_aliases().retain(|(f, _), _| f != function);
        }
        for old in &gone {
            self.discard_all(old, old.pool.retire(), "function deleted");
            self.keep_alive.forget(&old.record.name);
            self.forget_hibernated(&old.record.name, None);
        }
        self.logs.remove(name);
        let (store, me) = (self.snapshots.clone(), self.me.clone());
        let names: Vec<String> = gone.iter().map(|d| d.record.name.clone()).collect();
        self.spawn_background(async move {
            for n in names {
                let store = store.clone();
                let Ok(gone) = tokio::task::spawn_blocking(move || store.remove_function(&n)).await
                else {
                    return;
                };
                // Its sets in the snapshot store serve nobody now.
                if let Some(node) = me.upgrade() {
                    node.retire_from_store(None, gone);
                }
            }
        });
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
        // Its hibernated instances go too: the next invocation starts afresh.
        let set = self.hibernated.clone();
        let fname = d.record.name.clone();
        let hibernated = tokio::task::spawn_blocking(move || set.remove_function(&fname, None))
            .await
            .map_or(0, |v| v.len());
        let n = idle.len() + hibernated;
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

    pub(in crate::node) fn deployed(&self, name: &str) -> Result<Arc<Deployed>, NodeError> {
        self.read_functions()
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(name.to_string()))
    }
}

/// The executable a `provided` or `native` function starts must be in its code (or, for a
/// `provided` one's `bootstrap`, in its layers at /opt, as Lambda looks there next) and be
/// executable, so that a deploy fails rather than every invocation.
pub(in crate::node) fn check_entry_point(
    config: &FunctionConfig,
    code_dir: &std::path::Path,
    opt_dir: Option<&std::path::Path>,
) -> Result<(), NodeError> {
    use std::os::unix::fs::PermissionsExt;
    let Some((rel, what)) = config.runtime.entry_point(&config.handler) else {
        return Ok(());
    };
    let mut path = code_dir.join(rel);
    if let Some(opt) = opt_dir
        && config.runtime == crate::function::Runtime::Provided
        && std::fs::symlink_metadata(&path).is_err()
    {
        path = opt.join(rel);
    }
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

/// Writes the bytecode of the Python files under `dir` next to them (the bootstrap, a
/// function's code): instances see those directories read-only, so they could not cache it
/// themselves. A failure only costs a compile (~1 ms) per start.
pub(in crate::node) async fn precompile(python: &std::path::Path, dir: &std::path::Path) {
    // checked-hash: the .pyc records the source's hash, not its mtime, so identical code
    // compiles identically. A file that does not compile is left for the import to report.
    let mut cmd = tokio::process::Command::new(python);
    crate::envs::without_secrets(&mut cmd)
        .args([
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

pub(in crate::node) fn status(node: &Node, d: &Deployed) -> FunctionStatus {
    let mut record = d.record.clone();
    // As changed since its deploy (provisioned concurrency is set in place).
    record.config.min_instances = d.min_instances.load(Ordering::SeqCst);
    FunctionStatus {
        record,
        installed: d.env.installed.clone(),
        imports: d.env.imports.clone(),
        python: d.env.python(),
        instances_live: d.pool.live().load(Ordering::SeqCst),
        instances_idle: d.pool.idle_count(),
        instances_prestarted: d.pool.parked_count(),
        instances_hibernated: node.hibernated_count(d),
        hibernated_bytes: node.hibernated.function_bytes(&d.record.name),
        requests_waiting: d.pool.waiting(),
        start_ms: d.start_costs.averages(),
        snapshotting: d.snapshotting.load(Ordering::SeqCst),
        keep_alive: node.keep_alive.windows(&d.record.name),
        keep_alive_policy: node.keep_alive.name(),
    }
}
