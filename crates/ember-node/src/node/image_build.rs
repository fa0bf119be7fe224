//! Dependency images: building one, its test restore, listing and removing them.
//!
//! ```text
//! build:  env -> sandbox -> runtime: interpreter, imports, pre-snapshot hook (BOOT snapshot)
//!             -> dump (ember-snap) -> kill -> test restore into a fresh sandbox, lazily,
//!                selfcheck handler, one event; its touched pages become the working set
//!             -> image.json -> catalog (and the memory pool when it fits)
//! ```
//!
//! Starting from an image is the ladder's image rung (`ladder/image.rs`).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ember_runtime::{Instance, LogSink, Outcome, StartSpec, Stream};
use ember_sandbox::InstanceSpec;
use ember_snap::lazy::{PageServer, Policy};
use ember_snap::{DumpOptions, LoadedImage};
use tracing::{Instrument, info_span};

use super::restore::{Restored, Sees, server_failure};
use super::{Node, NodeError, error_chain, now_secs};
use crate::envs::PackageEnv;
use crate::images::{ImageError, ImageInfo, ImageStatus, Pages, image_id};

/// The descriptors a runtime inherits: stdin, stdout, stderr and the protocol socket.
const INHERITED: [i32; 4] = [0, 1, 2, 3];

/// Standard-library modules every image imports beside its packages: handlers commonly
/// import them, and with them in the image their import costs nothing. Several seed a
/// generator at import, which the after-restore hook reseeds.
const STDLIB_PRELOAD: &[&str] = &["json", "random", "uuid", "tempfile", "datetime", "base64"];

/// Submodules a package leaves to be imported on first use that handlers commonly need.
const SUBMODULE_PRELOAD: &[(&str, &[&str])] = &[("numpy", &["numpy.random", "numpy.linalg"])];

/// What an image for `env` imports before it is dumped.
pub(in crate::node) fn image_imports(env: &PackageEnv) -> Vec<String> {
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
pub(in crate::node) struct BuildLog;

impl LogSink for BuildLog {
    fn line(&self, instance: &str, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(instance, ?stream, "{text}");
    }
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
        for (id, n) in self.standby_counts() {
            if let Some(s) = list.iter_mut().find(|s| s.info.id == id) {
                s.standby = n;
            }
        }
        for s in &mut list {
            s.template = self.templates.state(&s.info.id);
            s.imports_pending = self.imports_pending(&s.info.env_key, &s.info.imports);
            s.remote = self.remote_state("image", &s.info.id);
        }
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

    pub(in crate::node) async fn build_image_for(
        &self,
        env: &PackageEnv,
    ) -> Result<ImageInfo, NodeError> {
        if self.sandboxes.is_none() {
            return Err(ImageError::NeedsSandbox.into());
        }
        let id = image_id(&env.key);
        let gate = self.image_gate(&id);
        let _held = gate.lock().await;
        let staged = self.images.staging(&id);
        let t0 = Instant::now();
        // A first image of its environment may be in the snapshot store; a rebuild (with
        // learned imports) is this node's.
        let fetched = match self.images.has_image_for(&env.key) {
            true => None,
            false => self.image_from_store(env, &id, &staged).await,
        };
        let from_store = fetched.is_some();
        let built = match fetched {
            Some(info) => Ok(info),
            None => {
                self.build_into(env, &id, &staged)
                    .instrument(info_span!("image.build", image = %id))
                    .await
            }
        };
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
                    from_store,
                    "image ready and verified"
                );
                if !from_store {
                    self.upload_in_background("image", &id, self.images.path(&id));
                }
                // Standby instances of the image it replaces are stale now: they go at once
                // (not at the next keep-alive sweep), so that none is counted as ready.
                self.standby_expire();
                let served: Vec<Arc<super::Deployed>> = self
                    .read_functions()
                    .values()
                    .filter(|d| self.image_serving(d).as_deref() == Some(&id))
                    .cloned()
                    .collect();
                for d in &served {
                    self.prefetch_snapshot(d);
                }
                let serving: Vec<(bool, bool)> = served
                    .iter()
                    .map(|d| (self.standby_serves(d), self.templates_serve(d)))
                    .collect();
                if serving.iter().any(|s| s.0) {
                    self.standby_for_new_image(&id);
                } else if serving.iter().any(|s| s.1) {
                    // No standbys: the first start forks from the template, made now.
                    self.template_ensure(&id);
                }
                Ok(info)
            }
            Err(e) => Err(self.drop_staged(&staged, e)),
        }
    }

    pub(in crate::node) fn drop_staged(&self, staged: &std::path::Path, e: NodeError) -> NodeError {
        let _ = std::fs::remove_dir_all(staged);
        tracing::warn!("image build failed: {}", error_chain(&e));
        e
    }

    pub(in crate::node) fn image_gate(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.image_gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    pub(in crate::node) async fn build_into(
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
        let imports = self.image_imports_learned(env);
        let spec = StartSpec {
            instance_id: format!("{id}-build"),
            function: String::new(),
            version: 0,
            handler: String::new(),
            memory_mb: self.cfg.images.build_memory_mb,
            python: self.seen(&env.python()),
            bootstrap: self.seen(&self.bootstrap),
            code_dir: self.seen(&env.dir),
            imports: imports.clone(),
            env: Default::default(),
        };
        let mut sb = boxes
            .prepare(&InstanceSpec {
                id: spec.instance_id.clone(),
                memory_bytes: u64::from(spec.memory_mb) << 20,
                read_only: vec![env.dir.clone(), self.bootstrap.clone()],
                bound_at: Vec::new(),
                tmp_bytes: None,
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
            imports,
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
    pub(in crate::node) async fn verify_image(
        &self,
        env: &PackageEnv,
        id: &str,
        img: Arc<LoadedImage>,
    ) -> Result<Vec<u64>, String> {
        let mut spec = StartSpec {
            instance_id: format!("{id}-verify"),
            function: format!("{id}-verify"),
            version: 0,
            handler: "ember_bootstrap.selfcheck".into(),
            memory_mb: self.cfg.images.build_memory_mb,
            python: self.seen(&env.python()),
            bootstrap: self.seen(&self.bootstrap),
            code_dir: self.seen(&self.bootstrap),
            imports: Vec::new(),
            env: Default::default(),
        };
        let read_only = vec![env.dir.clone(), self.bootstrap.clone()];
        let pages = Pages::in_memory(img, None);
        let Restored { mut live, .. } = self
            .restore_instance(
                &mut spec,
                Sees {
                    read_only,
                    bound_at: Vec::new(),
                    tmp_bytes: None,
                    host_network: false,
                },
                id,
                &pages,
                Policy::Lazy,
                Arc::new(BuildLog),
                false,
            )
            .await
            .map_err(|e| error_chain(&e))?;
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
                live.inst.invoke("verify", deadline, event.as_bytes(), None),
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

    /// Starts the automatic builds the configuration asks for, one at a time, in the
    /// background: `sets` of packages, or deployed functions' environments.
    pub(in crate::node) fn build_in_background(&self, sets: Vec<Vec<String>>) {
        let Some(node) = self.me.upgrade() else {
            return;
        };
        if node.sandboxes.is_none() || sets.is_empty() {
            return;
        }
        self.spawn_background(async move {
            let _one = node.auto_builds.acquire().await;
            node.wait_for_pool().await;
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
                // In a cluster, the pool's copy serves at once; in pool mode it is the only
                // one while another node holds the image in memory.
                if node.image_to_pool(&env).await
                    && node.cfg.images.pool == crate::PoolMode::Pool
                    && node.pool_holds(&image_id(&env.key))
                {
                    continue;
                }
                // Failures are logged by the build itself.
                let _ = node.build_image_for(&env).await;
            }
        });
    }
}
