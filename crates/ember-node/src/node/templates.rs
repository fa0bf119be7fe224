//! Templates: a dependency image, or a function snapshot, restored once into a parked
//! process (ember-snap's `Template`), in a filesystem view (ember-sandbox's `View`), from
//! which instances are forked: standbys (standby.rs) and starts that find none ready. Each
//! instance shares the template's pages copy-on-write until it writes them, and making one
//! copies page tables instead of pages.
//!
//! ```text
//! template (blocking, off the request path; an image's when it is built or first started,
//! a snapshot's after its first restore):
//!     view: the environment and the bootstrap (a snapshot's: its code too), read-only; no
//!         /proc; a read-only /tmp with only what is bound below it; an image's view leaves
//!         the code store's directory empty
//!     Template::new in that view, lowered to the sandbox's resource limits; it stays root;
//!     then moved into cgroups made for its first fork
//! fork (template_fork):
//!     the cgroups the template sits in (else fresh ones) -> clone injected into the
//!     template: new pid, mount, uts, ipc, net, cgroup namespaces; its own /proc, /tmp (and
//!     tmpfs on the code store's directory); host name; a runtime's descriptors; for a
//!     standby, the learned write set written ahead; the sandbox's user, no capabilities,
//!     no_new_privs, seccomp filter -> the template moves on to the next fork's cgroups in
//!     the background -> pinned (pidfd), mount namespace held, the directories below /tmp
//!     bound again -> SIGCONT: it waits for INIT
//! ```
//!
//! The instances are children of the template's thread (their death signal is tied to it),
//! so each instance holds its template ([`Live::holds`](crate::live::Live)) and a template
//! ends only when it is dropped from here and its last instance has ended. An image's
//! template is dropped when the image is rebuilt or goes unused for [`IDLE`]; a snapshot's
//! after [`IDLE`] unused or past [`MAX_SNAPSHOT_TEMPLATES`]. What cannot be a template
//! (`ember_snap::template::unsuitable`) is remembered by its metadata hash and restored as
//! before.
//!
//! [`IDLE`]: super::standby::IDLE

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ember_runtime::{Instance, StartSpec};
use ember_sandbox::{Spared, View, ViewSpec};
use ember_snap::template::{ForkMount, ForkSpec, Namespaces, Template, TemplateOptions};

use super::standby::{LateSink, Ready};
use super::{Deployed, Node, error_chain};
use crate::function::Network;
use crate::images::Checkout;
use crate::live::Live;

/// Address ranges (start, length).
type Ranges = Vec<(u64, u64)>;

/// Function snapshots' templates are kept under this prefix and the snapshot's id.
pub(in crate::node) const SNAPSHOT: &str = "snapshot:";

/// Most function snapshots with a template at once: each holds its whole image and layer in
/// memory (the least recently forked goes first).
pub(in crate::node) const MAX_SNAPSHOT_TEMPLATES: usize = 8;

/// One image's template and the view it was made in.
pub(in crate::node) struct Kept {
    /// `None` only while dropped.
    template: Option<Template>,
    /// `None` only while dropped.
    view: Option<View>,
    /// The image's metadata hash when the template was made (a function snapshot's: its id).
    meta_hash: String,
    /// When an instance was last forked from it.
    used: Mutex<std::time::Instant>,
    /// Cgroups made ahead that the template process sits in: the next fork is born there
    /// and pays no migration (see [`Node::template_move_on`]).
    next: Mutex<Option<ember_sandbox::Sandbox>>,
    /// One move on at a time, so that `next` is where the template went last.
    moving: tokio::sync::Mutex<()>,
    /// Given up (it could not leave an instance's cgroups): never forked from again.
    abandoned: std::sync::atomic::AtomicBool,
    /// What an instance forked from it wrote by the end of its first invocation (learned
    /// once): standbys write it ahead, off the request's path.
    write_set: Mutex<Option<Arc<Ranges>>>,
}

impl Kept {
    fn abandon(&self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn abandoned(&self) -> bool {
        self.abandoned.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn view(&self) -> &View {
        match &self.view {
            Some(v) => v,
            None => unreachable!("a Kept's view is taken only by its Drop"),
        }
    }

    fn template(&self) -> &Template {
        match &self.template {
            Some(t) => t,
            None => unreachable!("a Kept's template is taken only by its Drop"),
        }
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        // Ending a template kills and collects its process on its thread (a blocking
        // join), and the view's last reference tears its mounts down (RCU grace periods):
        // never on the node's async workers.
        let (t, v) = (self.template.take(), self.view.take());
        let next = self
            .next
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let _ = std::thread::Builder::new()
            .name("ember-template-end".into())
            .spawn(move || drop((t, next, v)));
    }
}

/// The node's templates, by image id.
#[derive(Default)]
pub(in crate::node) struct Templates {
    kept: Mutex<HashMap<String, Arc<Kept>>>,
    /// Images whose template is being made in the background.
    making: Mutex<std::collections::HashSet<String>>,
    /// Images (id and metadata hash) that cannot be templates, and why.
    refused: Mutex<HashMap<(String, String), Refusal>>,
}

impl Templates {
    fn get(&self, id: &str, meta_hash: &str) -> Option<Arc<Kept>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let k = kept
            .get(id)
            .filter(|k| k.meta_hash == meta_hash && !k.abandoned())
            .cloned()?;
        *k.used.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
        Some(k)
    }

    /// Keeps the templates `wanted(key, hash, last used)` says are still wanted (their
    /// instances keep theirs until they end), and the refusals it says are still current.
    pub fn retain(&self, wanted: impl Fn(&str, &str, std::time::Instant) -> bool) {
        let dropped: Vec<Arc<Kept>> = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<String> = kept
                .iter()
                .filter(|(id, k)| {
                    let used = *k.used.lock().unwrap_or_else(|p| p.into_inner());
                    k.abandoned() || !wanted(id, &k.meta_hash, used)
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| kept.remove(id)).collect()
        };
        drop(dropped);
        let now = std::time::Instant::now();
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.retain(|(id, hash), r| r.current() && wanted(id, hash, now));
    }

    /// Drops the templates of function snapshots no instance was forked from within `idle`,
    /// and past the [`MAX_SNAPSHOT_TEMPLATES`] most recently used.
    pub fn expire_snapshots(&self, idle: std::time::Duration) {
        let dropped: Vec<Arc<Kept>> = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            let used = |k: &Kept| *k.used.lock().unwrap_or_else(|p| p.into_inner());
            let mut snaps: Vec<(std::time::Instant, String)> = kept
                .iter()
                .filter(|(key, _)| key.starts_with(SNAPSHOT))
                .map(|(key, k)| (used(k), key.clone()))
                .collect();
            snaps.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
            snaps
                .iter()
                .enumerate()
                .filter(|(i, (t, _))| *i >= MAX_SNAPSHOT_TEMPLATES || t.elapsed() > idle)
                .filter_map(|(_, (_, key))| kept.remove(key))
                .collect()
        };
        drop(dropped);
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.retain(|(key, _), r| !key.starts_with(SNAPSHOT) || r.at.elapsed() <= idle);
    }

    /// Every template (shutdown).
    pub fn clear(&self) {
        let all: Vec<Arc<Kept>> = {
            let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.drain().map(|(_, k)| k).collect()
        };
        drop(all);
    }

    /// Whether function snapshot `id` has a template kept.
    pub fn snapshot_kept(&self, id: &str) -> bool {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get(&format!("{SNAPSHOT}{id}"))
            .is_some_and(|k| !k.abandoned())
    }

    /// `kept` when image `id` has a template, why not when it cannot have one.
    pub fn state(&self, id: &str) -> Option<String> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.contains_key(id) {
            return Some("kept".into());
        }
        drop(kept);
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused
            .iter()
            .find(|(key, r)| key.0 == id && r.current())
            .map(|(_, r)| format!("none: {}", r.why))
    }

    /// Whether a template of `key` (key, hash) is to be made now: none kept, none being
    /// made, not refused.
    fn to_make(&self, key: &(String, String)) -> bool {
        self.get(&key.0, &key.1).is_none()
            && !self.is_refused(key)
            && !self
                .making
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&key.0)
    }

    /// Drops the template of `key` (key, hash) when a fork found it ended.
    fn fork_failed(&self, key: &str, hash: &str, f: &ForkFailure) {
        tracing::warn!(
            of = key,
            "forking from the template failed; restoring: {}",
            f.why
        );
        if f.gone {
            self.retain(|k, h, _| !(k == key && h == hash));
        }
    }

    /// Whether the template of `key` (key, hash) was refused and is not to be tried now.
    fn is_refused(&self, key: &(String, String)) -> bool {
        let refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.get(key).is_some_and(Refusal::current)
    }

    /// Remembers why the template of `key` could not be made: for good when the image cannot
    /// be a template, for [`RETRY`] otherwise.
    fn refuse(&self, key: (String, String), why: &TemplateMakeError) {
        let (why, lasting) = match why {
            TemplateMakeError::Busy => return,
            TemplateMakeError::Unsuitable(w) => (w.clone(), true),
            TemplateMakeError::Failed(w) => (w.clone(), false),
        };
        match lasting {
            true => tracing::info!(of = %key.0, "no template (its starts restore): {why}"),
            false => {
                tracing::warn!(of = %key.0, "no template for now (its starts restore; tried again in {} s): {why}", RETRY.as_secs())
            }
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        refused.insert(
            key,
            Refusal {
                why,
                at: std::time::Instant::now(),
                lasting,
            },
        );
    }
}

impl Node {
    /// Whether standbys of images are forked from templates.
    pub(in crate::node) fn templates_on(&self) -> bool {
        self.cfg.templates && self.sandboxes.is_some()
    }

    /// Whether starts of `d` from an image may fork from the image's template (as standbys
    /// do, functions with the host's network do not: theirs is made with the sandbox).
    pub(in crate::node) fn templates_serve(&self, d: &Deployed) -> bool {
        self.templates_on() && d.record.config.network == Network::None
    }

    /// An instance of image `id` for a start of `d` forked now from the image's template,
    /// when one is kept for the image as it is; `None` otherwise (then the template is made
    /// in the background, for the next start).
    pub(in crate::node) async fn template_fork_now(&self, id: &str, d: &Deployed) -> Option<Ready> {
        if !self.templates_serve(d) {
            return None;
        }
        let co = self.images.checkout_quiet(id).ok()?;
        let hash = co.meta_hash();
        let Some(kept) = self.templates.get(id, &hash) else {
            self.template_ensure(id);
            return None;
        };
        let mut spec = self.standby_spec(co.python.clone(), co.env_dir.clone());
        spec.memory_mb = d.record.config.memory_mb;
        let forked = self.template_fork(id, kept, spec, false).await;
        forked
            .map_err(|f| self.templates.fork_failed(id, &hash, &f))
            .ok()
    }

    /// Makes the template of image `id` in the background, unless it is kept, being made,
    /// or cannot be one.
    pub(in crate::node) fn template_ensure(&self, id: &str) {
        let Ok(co) = self.images.checkout_quiet(id) else {
            return;
        };
        let key = (id.to_string(), co.meta_hash());
        if !self.templates.to_make(&key) {
            return;
        }
        let me = self.me.clone();
        let id = id.to_string();
        self.spawn_background(async move {
            let Some(node) = me.upgrade() else { return };
            let made = match node.images.checkout(&id) {
                Ok(co) => node.template_make(&id, &co).await.map(drop),
                Err(e) => Err(TemplateMakeError::Failed(error_chain(&e))),
            };
            if let Err(e) = made {
                node.templates.refuse(key, &e);
            }
        });
    }

    /// An instance of `d` from the template of its function snapshot `id`, when one is
    /// kept (it is then in use: kept on): a standby forked from it ahead when one is ready
    /// (`standby` then says how long taking it took), else forked now (`spec` is the start's: its memory, its log; its
    /// instance id becomes the standby's). `None` when there is no template.
    pub(in crate::node) async fn snapshot_fork_now(
        &self,
        d: &Deployed,
        id: &str,
        spec: &mut StartSpec,
        standby: &mut Option<std::time::Duration>,
    ) -> Option<Live> {
        let key = format!("{SNAPSHOT}{id}");
        // No template (yet, or any more): no standby of it wanted either (its standbys are
        // dropped with it), so none is asked for before there is one to fork from.
        let kept = self.templates.get(&key, id)?;
        let skey = super::standby::Key::Snapshot(id.to_string());
        if self.standby_serves(d)
            && let Some(mut ready) = self.standby.take(&skey)
        {
            let t = std::time::Instant::now();
            let gone = ready.live.is_gone();
            let resized = match ready.live.sandbox.as_ref() {
                Some(sb) if !gone => sb
                    .resize(u64::from(spec.memory_mb) << 20)
                    .map_err(|e| error_chain(&e)),
                _ => Err("it has ended".to_string()),
            };
            match resized {
                Ok(()) => {
                    self.count_take(&skey, "hit");
                    ready.sink.bind(self.logs.sink(&d.record.name));
                    spec.instance_id = ready.live.id().to_string();
                    *standby = Some(t.elapsed());
                    return Some(ready.live);
                }
                Err(why) => {
                    tracing::warn!(
                        snapshot = id,
                        "a standby of the function snapshot could not be used; forking one: {why}"
                    );
                    self.count_take(&skey, "unusable");
                    self.reap(ready.live.kill());
                }
            }
        } else if self.standby_serves(d) {
            self.count_take(&skey, "miss");
        }
        match self.template_fork(&key, kept, spec.clone(), false).await {
            Ok(ready) => {
                ready.sink.bind(self.logs.sink(&d.record.name));
                Some(ready.live)
            }
            Err(f) => {
                self.templates.fork_failed(&key, id, &f);
                None
            }
        }
    }

    /// A standby of function snapshot `id`: forked ahead from its template (kept), writing
    /// ahead what a forked instance wrote by its first answer, waiting for its INIT.
    pub(in crate::node) async fn snapshot_standby_make(&self, id: &str) -> Result<Ready, String> {
        let key = format!("{SNAPSHOT}{id}");
        let kept = self
            .templates
            .get(&key, id)
            .ok_or_else(|| format!("function snapshot {id} has no template (any more)"))?;
        let spec = self.standby_spec(self.cfg.python.clone(), self.bootstrap.clone());
        self.template_fork(&key, kept, spec, true)
            .await
            .map_err(|f| f.why)
    }

    /// Makes the template of function snapshot `id` (`layer`, over its image) in the
    /// background, in a view of what its instances see (`sees`: their directories, layers
    /// at /opt, /tmp's size), unless it is kept, being made, or cannot be one.
    pub(in crate::node) fn snapshot_template_ensure(
        &self,
        id: &str,
        layer: Arc<ember_snap::LoadedImage>,
        sees: &super::restore::Sees,
    ) {
        let (read_only, bound_at, tmp_bytes) = (
            sees.read_only.clone(),
            sees.bound_at.clone(),
            sees.tmp_bytes,
        );
        let key = format!("{SNAPSHOT}{id}");
        let refused_key = (key.clone(), id.to_string());
        if !self.templates.to_make(&refused_key) {
            return;
        }
        let me = self.me.clone();
        let id = id.to_string();
        self.spawn_background(async move {
            let Some(node) = me.upgrade() else { return };
            let Some(_making) = Making::start(&node.templates, &key) else {
                return;
            };
            let view = ViewSpec {
                read_only,
                private: Vec::new(),
                bound_at,
                tmp_bytes,
                host_network: false,
            };
            match node.template_keep(&key, id.clone(), layer, view).await {
                Ok(_) => node.templates.expire_snapshots(super::standby::IDLE),
                Err(e) => node.templates.refuse(refused_key, &e),
            }
        });
    }

    /// A standby instance of image `co` (id `id`) forked from its template, made first if
    /// needed. `Ok(None)`: the image cannot be a template (the caller restores one).
    pub(in crate::node) async fn template_standby(
        &self,
        id: &str,
        co: &Checkout,
        spec: StartSpec,
    ) -> Result<Option<Ready>, String> {
        let hash = co.meta_hash();
        let key = (id.to_string(), hash.clone());
        if self.templates.is_refused(&key) {
            return Ok(None);
        }
        let kept = match self.templates.get(id, &hash) {
            Some(k) => k,
            None => match self.template_make(id, co).await {
                Ok(k) => k,
                Err(e) => {
                    self.templates.refuse(key, &e);
                    return match e {
                        TemplateMakeError::Unsuitable(_) | TemplateMakeError::Busy => Ok(None),
                        TemplateMakeError::Failed(why) => Err(why),
                    };
                }
            },
        };
        match self.template_fork(id, kept, spec, true).await {
            Ok(mut r) => {
                r.live.image = Some(id.to_string());
                Ok(Some(r))
            }
            Err(f) => {
                // A template that has ended is dropped: the next standby makes another.
                self.templates.fork_failed(id, &hash, &f);
                Err(f.why)
            }
        }
    }

    /// The template of image `co` (id `id`): its environment and the bootstrap in the view,
    /// the code store's directory left for each instance's own tmpfs.
    async fn template_make(&self, id: &str, co: &Checkout) -> Result<Arc<Kept>, TemplateMakeError> {
        let _making = Making::start(&self.templates, id).ok_or(TemplateMakeError::Busy)?;
        let taken = co.clone();
        let pages = tokio::task::spawn_blocking(move || taken.pages(true))
            .await
            .map_err(|e| TemplateMakeError::Failed(e.to_string()))?
            .map_err(|e| TemplateMakeError::Failed(error_chain(&e)))?;
        let view = ViewSpec {
            read_only: vec![co.env_dir.clone(), self.bootstrap.clone()],
            private: vec![self.code.root().to_path_buf()],
            host_network: false,
            ..Default::default()
        };
        self.template_keep(id, co.meta_hash(), pages.image.clone(), view)
            .await
    }

    /// Makes the template of `image` in a view of `view`, kept under `key` as of `hash`.
    async fn template_keep(
        &self,
        key: &str,
        hash: String,
        image: Arc<ember_snap::LoadedImage>,
        view: ViewSpec,
    ) -> Result<Arc<Kept>, TemplateMakeError> {
        let failed = |e: &dyn std::error::Error| TemplateMakeError::Failed(error_chain(e));
        let boxes = self
            .sandboxes
            .as_ref()
            .ok_or_else(|| TemplateMakeError::Failed("the node runs without the sandbox".into()))?;
        let view = boxes.view(&view).map_err(|e| failed(&e))?;
        let opts = TemplateOptions {
            mount_ns: Some(view.mount_ns()),
            limits: ember_sandbox::RLIMITS.to_vec(),
            ..TemplateOptions::default()
        };
        let template = tokio::task::spawn_blocking(move || Template::new(image, &opts))
            .await
            .map_err(|e| TemplateMakeError::Failed(e.to_string()))?
            .map_err(|e| match e {
                ember_snap::template::TemplateError::Unsuitable { .. } => {
                    TemplateMakeError::Unsuitable(error_chain(&e))
                }
                e => failed(&e),
            })?;
        tracing::info!(
            of = key,
            pid = template.pid(),
            pages = template.stats().pages,
            "template made"
        );
        let kept = Arc::new(Kept {
            template: Some(template),
            view: Some(view),
            meta_hash: hash,
            used: Mutex::new(std::time::Instant::now()),
            next: Mutex::new(None),
            moving: tokio::sync::Mutex::new(()),
            abandoned: std::sync::atomic::AtomicBool::new(false),
            write_set: Mutex::new(None),
        });
        self.template_move_on(kept.clone(), None);
        self.templates
            .kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), kept.clone());
        Ok(kept)
    }

    /// Forks an instance from `kept`, the template of `id` (an image's id, or a snapshot's
    /// key; see the module doc), writing its write set ahead with `prefault`.
    async fn template_fork(
        &self,
        id: &str,
        kept: Arc<Kept>,
        spec: StartSpec,
        prefault: bool,
    ) -> Result<Ready, ForkFailure> {
        let boxes = self
            .sandboxes
            .as_ref()
            .ok_or_else(|| ForkFailure::node("the node runs without the sandbox".into()))?;
        let t0 = std::time::Instant::now();
        let memory = u64::from(spec.memory_mb) << 20;
        // Born in the cgroups the template moved into ahead, when it has; else moved into
        // its own after the clone (on cgroup v1, an RCU grace period per hierarchy).
        let next = kept.next.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (mut sb, born_in) = match next.map(|sb| (sb.resize(memory), sb)) {
            Some((Ok(()), sb)) => (sb, true),
            other => {
                if let Some((_, sb)) = other {
                    // The template is in them: it moves on first.
                    self.template_pass(&kept, &sb, 0);
                    self.reap(Some(tokio::spawn(sb.destroy())));
                }
                let sb = boxes
                    .prepare_forked(&spec.instance_id, memory)
                    .map_err(|e| ForkFailure::node(error_chain(&e)))?;
                (sb, false)
            }
        };
        let (wiring, ours) = Instance::wiring().map_err(|e| ForkFailure::node(error_chain(&e)))?;
        let h = sb.handoff();
        let fork = ForkSpec {
            fds: wiring.at_numbers(),
            namespaces: Namespaces::all(),
            handoff: Some(ember_snap::Handoff {
                uid: h.uid,
                gid: h.gid,
                die_with_parent: true,
                seccomp: h.sock_filters(),
            }),
            cgroup_procs: match born_in {
                true => Vec::new(),
                false => sb.cgroup_procs(),
            },
            mounts: kept
                .view()
                .child_mounts()
                .iter()
                .map(|m| ForkMount {
                    fstype: m.fstype.to_string(),
                    target: m.target.clone(),
                    flags: m.flags,
                    data: m.data.clone(),
                })
                .collect(),
            hostname: Some(ember_sandbox::HOSTNAME.to_string()),
            populate: match prefault {
                true => kept
                    .write_set
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|w| w.to_vec())
                    .unwrap_or_default(),
                false => Vec::new(),
            },
        };
        let k = kept.clone();
        let t1 = std::time::Instant::now();
        let forked = tokio::task::spawn_blocking(move || match k.abandoned() {
            false => k.template().fork(fork).map_err(|e| ForkFailure {
                gone: matches!(e, ember_snap::template::TemplateError::Gone { .. }),
                why: error_chain(&e),
            }),
            true => Err(ForkFailure {
                why: "the template was given up".into(),
                gone: true,
            }),
        })
        .await
        .map_err(|e| ForkFailure::node(e.to_string()));
        drop(wiring);
        let forked = match forked {
            Ok(Ok(f)) => f,
            Ok(Err(f)) | Err(f) => {
                if born_in {
                    // The template may still be in them: it moves on first.
                    self.template_pass(&kept, &sb, 0);
                }
                sb.destroy().await;
                return Err(f);
            }
        };
        if born_in {
            self.template_pass(&kept, &sb, forked.pid);
        }
        let sink = Arc::new(LateSink::default());
        let inst = match Instance::adopt(&spec, sink.clone(), forked.pid, ours) {
            Ok(i) => i,
            Err(e) => {
                // `adopt` killed and collected it.
                sb.destroy().await;
                return Err(ForkFailure::node(error_chain(&e)));
            }
        };
        let mut live = Live::new(inst, None);
        live.holds = Some(kept.clone());
        let late: Vec<PathBuf> = kept.view().late_read_only().to_vec();
        let t2 = std::time::Instant::now();
        let placed = sb
            .pin_first(forked.pid)
            .and_then(|()| match late.is_empty() {
                true => Ok(()),
                false => sb.add_read_only(&late),
            })
            .map_err(|e| error_chain(&e));
        sb.hold_mounts(forked.pid);
        live.sandbox = Some(sb);
        if let Err(why) = placed {
            self.reap(live.kill());
            return Err(ForkFailure::node(why));
        }
        if let Err(e) = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(forked.pid),
            nix::sys::signal::Signal::SIGCONT,
        ) {
            self.reap(live.kill());
            return Err(ForkFailure::node(format!(
                "continuing the forked instance: {e}"
            )));
        }
        tracing::debug!(
            of = id,
            pid = forked.pid,
            cgroups_us = (t1 - t0).as_micros() as u64,
            fork_task_us = (t2 - t1).as_micros() as u64,
            binds_us = t2.elapsed().as_micros() as u64,
            fork_us = forked.fork_us,
            clone_us = forked.clone_us,
            cgroup_us = forked.cgroup_us,
            born_in,
            "forked from the template"
        );
        Ok(Ready {
            live,
            pid: forked.pid,
            sink,
            meta_hash: kept.meta_hash.clone(),
            made: std::time::Instant::now(),
            forked: true,
        })
    }
}

impl Node {
    /// Learns what an instance forked from a template wrote by the end of its first
    /// invocation (`live`, just answered), once per template, in the background.
    pub(in crate::node) fn learn_write_set(&self, live: &Live) {
        let Some(kept) = live.holds.clone().and_then(|h| h.downcast::<Kept>().ok()) else {
            return;
        };
        if kept
            .write_set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        // Pinned now, while the pid is surely this instance's (it has not been collected).
        let Ok(probe) = ember_snap::template::WriteProbe::open(live.inst.pid() as i32) else {
            return;
        };
        let (template, pages) = (kept.template().pid(), kept.template().stats().pages);
        self.spawn_background(async move {
            let read = tokio::task::spawn_blocking(move || probe.read(template, pages)).await;
            if let Ok(Ok(ranges)) = read {
                let pages: u64 = ranges.iter().map(|r| r.1 / 4096).sum();
                tracing::debug!(
                    ranges = ranges.len(),
                    pages,
                    "a template's write set learned"
                );
                let mut w = kept.write_set.lock().unwrap_or_else(|p| p.into_inner());
                w.get_or_insert_with(|| Arc::new(ranges));
            }
        });
    }

    /// The template of `kept` sits in `sb`'s cgroups (an instance, `instance`, was just born
    /// there, or 0): `sb`'s kills spare it until it has moved on to its next fork's, and the
    /// instance is meanwhile the OOM killer's first choice there (the template's resident
    /// pages would otherwise weigh as much as its own).
    fn template_pass(&self, kept: &Arc<Kept>, sb: &ember_sandbox::Sandbox, instance: i32) {
        let spared = sb.spare(kept.template().pid());
        if instance > 0 {
            let _ = std::fs::write(format!("/proc/{instance}/oom_score_adj"), "1000");
        }
        self.template_move_on(kept.clone(), Some(Passing { spared, instance }));
    }

    /// Moves the template of `kept` into cgroups made now for its next fork (in the
    /// background: the template's thread does it between forks), then releases `spared`
    /// (the instance it was just forked for, whose cgroups it leaves).
    pub(in crate::node) fn template_move_on(&self, kept: Arc<Kept>, spared: Option<Passing>) {
        let me = self.me.clone();
        self.spawn_background(async move {
            let moved = match me.upgrade() {
                Some(node) => node.template_move(&kept).await,
                None => Err("the node is ending".into()),
            };
            if let Err(why) = &moved {
                // Still in the instance's cgroups (or half in the new ones): it is given up,
                // and ends with them; the next start makes another.
                tracing::warn!(
                    "a template could not move on to its next fork's cgroups; it is dropped: {why}"
                );
                kept.abandon();
                if let Some(node) = me.upgrade() {
                    // `retain` drops the templates given up, whatever it is asked.
                    node.templates.retain(|_, _, _| true);
                }
            }
            if let Some(p) = spared {
                p.spared.release();
                if moved.is_ok() && p.instance > 0 {
                    // No longer the template's cgroup-mate: an ordinary OOM candidate.
                    let _ = std::fs::write(format!("/proc/{}/oom_score_adj", p.instance), "0");
                }
            }
        });
    }

    /// Makes the cgroups of the template's next fork and moves the template into them.
    async fn template_move(&self, kept: &Arc<Kept>) -> Result<(), String> {
        let boxes = self
            .sandboxes
            .as_ref()
            .ok_or("the node runs without the sandbox")?;
        let _one = kept.moving.lock().await;
        let id = format!("fork-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let memory = u64::from(self.cfg.images.build_memory_mb) << 20;
        let sb = boxes
            .prepare_forked(&id, memory)
            .map_err(|e| format!("its next fork's cgroups: {}", error_chain(&e)))?;
        let procs = sb.cgroup_procs();
        let k = kept.clone();
        let moved = tokio::task::spawn_blocking(move || match k.abandoned() {
            false => k.template().move_into(procs).map_err(|e| error_chain(&e)),
            true => Err("the template was given up".into()),
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        if let Err(why) = moved {
            // Perhaps half in them: it is given up (the caller), so they may kill it.
            self.reap(Some(tokio::spawn(sb.destroy())));
            return Err(why);
        }
        let old = kept
            .next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(sb);
        if let Some(old) = old {
            self.reap(Some(tokio::spawn(old.destroy())));
        }
        Ok(())
    }
}

/// An instance whose cgroups its template was in when it was born, until the template has
/// moved on.
pub(in crate::node) struct Passing {
    pub spared: Spared,
    /// The instance's pid (its `oom_score_adj` is 1000 meanwhile).
    pub instance: i32,
}

/// Marks an image's template as being made, for as long as it lives.
struct Making<'a> {
    templates: &'a Templates,
    id: String,
}

impl<'a> Making<'a> {
    /// `None` when the image's template is being made already.
    fn start(templates: &'a Templates, id: &str) -> Option<Making<'a>> {
        let mut making = templates.making.lock().unwrap_or_else(|p| p.into_inner());
        making.insert(id.to_string()).then(|| Making {
            templates,
            id: id.to_string(),
        })
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        let mut making = self
            .templates
            .making
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        making.remove(&self.id);
    }
}

/// Why a fork gave no instance.
pub(in crate::node) struct ForkFailure {
    pub why: String,
    /// The template has ended (dropped, a new one made); otherwise it is kept: a failure of
    /// the node's own (cgroups, descriptors) or of one fork says nothing of the template.
    pub gone: bool,
}

impl ForkFailure {
    fn node(why: String) -> ForkFailure {
        ForkFailure { why, gone: false }
    }
}

/// How long a template that failed to be made (not one that cannot be) is not tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Why a template was not made.
struct Refusal {
    why: String,
    at: std::time::Instant,
    /// The image cannot be a template; else it failed and is tried again after [`RETRY`].
    lasting: bool,
}

impl Refusal {
    fn current(&self) -> bool {
        self.lasting || self.at.elapsed() < RETRY
    }
}

enum TemplateMakeError {
    /// Being made by another task.
    Busy,
    /// The image cannot be a template: remembered, its standbys restored.
    Unsuitable(String),
    Failed(String),
}
