//! Standbys: dependency-image instances made ahead of demand (forked from the image's
//! template, `templates.rs`, or restored with templates off), in sandboxes that do not know
//! their function yet; instances forked ahead from a function snapshot's template (the
//! function's own); and parked sandboxes (first process stopped, nothing restored) for any
//! restore. A start from the image rung takes an instance of its image, binds the
//! function's code directory into it, sets its memory limit, and sends INIT: the sandbox and
//! the fork or restore are off the request's path (none ready: it forks one from the
//! template on its path). A function-snapshot start takes one of its snapshot's the same
//! way. A restore (templates off, or before a template is made) takes a parked sandbox,
//! binds the code and package directories into it and restores there: the sandbox is off
//! the path.
//!
//! ```text
//! fill (background, one at a time per node):
//!     image, with a template: forked from it (templates.rs), its write set written ahead
//!     snapshot: the same, from the snapshot's template
//!     image, templates off: sandbox (env + bootstrap, no code; the image's build
//!         memory) -> first process parked -> restore (the node's policy, handed off to the instance's user and
//!         filter) -> the runtime waits for INIT, its log lines held for a function not
//!         known yet
//!     sandbox: sandbox (bootstrap only) -> first process parked
//! take (image rung):
//!     code directory bound read-only at its path (Sandbox::add_read_only) -> memory limit
//!     and CPU weight of the function (Sandbox::resize) -> its log -> INIT restored
//! take (a restore, restore.rs): code and package directories bound -> limit -> restore
//! ```
//!
//! **How many.** Per image (and of parked sandboxes), as many as the starts that looked for
//! one in the last [`WINDOW`] (at least one, at most `--standby`), for as long as one looked
//! in the last [`IDLE`]; a built image that serves a deployed function counts as one start.
//! A start from the image or a function snapshot, served from a standby or not, tops them up
//! in the background as its request is answered (the refill first waits [`REFILL_DELAY`]:
//! it forks and restores, which alongside the request would slow the start it follows).
//! The refill of an image whose image was rebuilt meanwhile is dropped, never counted. A
//! standby that fails before HOOKED (it died while it waited) is not the image's failure:
//! the start restores its own.
//!
//! **What a standby is not.** It has run nothing of any function: only the image's own
//! state (Ember's runtime and the packages' imports, as every image start restores them).
//! Functions with the host's network do not use standbys (theirs is made with the sandbox).
//! A standby of an image rebuilt since is never taken (the image's metadata hash must match).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ember_runtime::{LogSink, StartSpec, Stream};

use super::restore::{Blame, Restored, Sees};
use super::{Deployed, Node, error_chain};
use crate::function::Network;
use crate::live::Live;
use crate::node::invoke::StartCx;

/// How long an image keeps its standby instances after its last start.
pub(in crate::node) const IDLE: Duration = Duration::from_secs(600);
/// The starts within this window size the image's standby count.
pub(in crate::node) const WINDOW: Duration = Duration::from_secs(10);
/// After a fill failed, the image is not filled again for this long.
const FAIL_PAUSE: Duration = Duration::from_secs(30);
/// A refill waits this long before it forks and restores, so that the answer of the start
/// that asked for it goes out first.
const REFILL_DELAY: Duration = Duration::from_millis(2);

/// Clears the node's fill mark however its fill task ends (a panic, shutdown's abort),
/// unless disarmed.
struct Filling {
    node: std::sync::Weak<Node>,
    armed: bool,
}

impl Drop for Filling {
    fn drop(&mut self) {
        if self.armed
            && let Some(n) = self.node.upgrade()
        {
            n.standby.filling.store(false, Ordering::SeqCst);
        }
    }
}

/// Log lines of an instance whose function is not known yet: dropped until [`LateSink::bind`]
/// (a standby runtime only waits for its INIT; it prints nothing of a function's).
#[derive(Default)]
pub(in crate::node) struct LateSink {
    target: OnceLock<Arc<dyn LogSink>>,
}

impl LateSink {
    pub fn bind(&self, sink: Arc<dyn LogSink>) {
        let _ = self.target.set(sink);
    }
}

impl LogSink for LateSink {
    fn line(&self, instance: &str, stream: Stream, line: &[u8]) {
        match self.target.get() {
            Some(t) => t.line(instance, stream, line),
            None => tracing::debug!(
                instance,
                "standby instance wrote before it served a function: {}",
                String::from_utf8_lossy(line)
            ),
        }
    }
}

/// Pins the sandbox's first process `pid` by a pidfd, made just now: later binds enter its
/// mount namespace through that, never through a pid that may have been reused since.
fn pin(live: &mut Live, pid: i32) -> Result<(), String> {
    match live.sandbox.as_mut() {
        Some(sb) => sb.pin_first(pid).map_err(|e| error_chain(&e)),
        None => Err("it has no sandbox".into()),
    }
}

/// An image instance restored ahead, waiting for its INIT.
pub(in crate::node) struct Ready {
    pub live: Live,
    /// Host pid of the sandbox's first process (the restored runtime; a parked sandbox's is
    /// restored into by it), pinned in the sandbox by a pidfd too.
    pub pid: i32,
    pub sink: Arc<LateSink>,
    /// The image's metadata hash at the restore.
    pub meta_hash: String,
    pub made: Instant,
    /// Forked from its image's template (`templates.rs`), not restored on its own.
    pub forked: bool,
}

#[derive(Default)]
struct Slot {
    ready: Vec<Ready>,
    /// Starts that wanted an instance of the image, within [`WINDOW`].
    starts: VecDeque<Instant>,
    last_demand: Option<Instant>,
    failed_at: Option<Instant>,
}

impl Slot {
    fn target(&mut self, now: Instant, cap: usize) -> usize {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            self.starts.pop_front();
        }
        match self.last_demand {
            Some(t) if cap > 0 && now.duration_since(t) <= IDLE => self.starts.len().clamp(1, cap),
            _ => 0,
        }
    }
}

/// What a standby is of.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(in crate::node) enum Key {
    /// An instance of this image, restored, waiting for its INIT.
    Image(String),
    /// A sandbox whose first process is parked (nothing restored), for any restore: a
    /// function snapshot's, or an image's when no standby of it is left.
    Sandbox,
    /// An instance forked ahead from the template of this function snapshot (`templates.rs`),
    /// waiting for its INIT.
    Snapshot(String),
}

impl Key {
    /// The metrics' `kind` label.
    fn kind(&self) -> &'static str {
        match self {
            Key::Image(_) => "image",
            Key::Sandbox => "sandbox",
            Key::Snapshot(_) => "snapshot",
        }
    }
}

/// The node's standby instances and sandboxes.
pub(in crate::node) struct Standby {
    /// Most standby instances per image, and parked sandboxes (0: none are made).
    cap: usize,
    slots: Mutex<HashMap<Key, Slot>>,
    /// A fill task is running.
    filling: AtomicBool,
}

impl Standby {
    pub fn new(cap: usize) -> Standby {
        Standby {
            cap,
            slots: Mutex::new(HashMap::new()),
            filling: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a start that wants a standby of `key` (taken or not).
    pub fn demand(&self, key: &Key) {
        if self.cap == 0 {
            return;
        }
        let now = Instant::now();
        let mut slots = self.lock();
        let slot = slots.entry(key.clone()).or_default();
        slot.starts.push_back(now);
        slot.last_demand = Some(now);
    }

    /// A standby of `key`, the most recently made first; counts the demand.
    pub fn take(&self, key: &Key) -> Option<Ready> {
        self.demand(key);
        self.lock().get_mut(key)?.ready.pop()
    }

    /// What most wants another standby, if anything.
    fn wanted(&self) -> Option<Key> {
        let now = Instant::now();
        let cap = self.cap;
        let mut slots = self.lock();
        slots
            .iter_mut()
            .filter(|(_, s)| {
                s.failed_at
                    .is_none_or(|t| now.duration_since(t) > FAIL_PAUSE)
            })
            .filter_map(|(id, s)| {
                let short = s.target(now, cap).saturating_sub(s.ready.len());
                (short > 0).then(|| (short, id.clone()))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// Keeps `ready` for `key`; gives it back when no longer wanted.
    fn put(&self, key: &Key, ready: Ready) -> Option<Ready> {
        let now = Instant::now();
        let cap = self.cap;
        let mut slots = self.lock();
        let slot = slots.entry(key.clone()).or_default();
        slot.failed_at = None;
        if slot.ready.len() >= slot.target(now, cap) {
            return Some(ready);
        }
        slot.ready.push(ready);
        None
    }

    fn fill_failed(&self, key: &Key) {
        if let Some(s) = self.lock().get_mut(key) {
            s.failed_at = Some(Instant::now());
        }
    }

    /// Removes the standbys of keys without a start in [`IDLE`], and those `stale` says are
    /// of an image that is gone or was rebuilt, or of a function snapshot whose template
    /// was dropped.
    fn expire(&self, stale: impl Fn(&Key, &str) -> bool) -> Vec<Ready> {
        let now = Instant::now();
        let cap = self.cap;
        let mut slots = self.lock();
        let mut out = Vec::new();
        slots.retain(|id, s| {
            if s.target(now, cap) == 0 {
                out.append(&mut s.ready);
                return false;
            }
            if *id == Key::Sandbox {
                return true;
            }
            let (gone, kept): (Vec<Ready>, Vec<Ready>) =
                s.ready.drain(..).partition(|r| stale(id, &r.meta_hash));
            s.ready = kept;
            out.extend(gone);
            true
        });
        out
    }

    /// Every standby instance (the daemon's shutdown).
    fn drain(&self) -> Vec<Ready> {
        let mut slots = self.lock();
        slots.values_mut().flat_map(|s| s.ready.drain(..)).collect()
    }

    /// Whether standbys of `key` are still kept (a start looked for one within [`IDLE`]).
    pub fn wants(&self, key: &Key) -> bool {
        self.lock().contains_key(key)
    }

    /// Standbys ready now, per kind of key (`image`, `sandbox`, `snapshot`).
    fn ready(&self) -> [(&'static str, usize); 3] {
        let mut n = [("image", 0), ("sandbox", 0), ("snapshot", 0)];
        for (k, s) in self.lock().iter() {
            if let Some(slot) = n.iter_mut().find(|(kind, _)| *kind == k.kind()) {
                slot.1 += s.ready.len();
            }
        }
        n
    }

    /// Standby instances ready now, per image.
    pub fn counts(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .lock()
            .iter()
            .filter_map(|(k, s)| match k {
                Key::Image(id) => Some((id.clone(), s.ready.len())),
                Key::Sandbox | Key::Snapshot(_) => None,
            })
            .collect();
        v.sort();
        v
    }
}

impl Node {
    /// Whether starts of `d` from an image may take standby instances.
    pub(in crate::node) fn standby_serves(&self, d: &Deployed) -> bool {
        self.standby.cap > 0 && self.sandboxes.is_some() && d.record.config.network == Network::None
    }

    /// Tops up the standby instances in the background, one at a time for the node.
    pub(in crate::node) fn standby_refill(&self) {
        if self.standby.cap == 0
            || self.sandboxes.is_none()
            || self.stopping.load(Ordering::SeqCst)
            || self.standby.filling.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let me = self.me.clone();
        self.spawn_background(async move {
            let mut mark = Filling {
                node: me.clone(),
                armed: true,
            };
            // The start that asked for it is answered first.
            tokio::time::sleep(REFILL_DELAY).await;
            loop {
                let Some(node) = me.upgrade() else { return };
                if node.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Some(key) = node.standby.wanted() else {
                    // A refill asked for since `wanted` last looked found the mark set and
                    // left: look once more with it cleared, unless another task took it.
                    mark.armed = false;
                    node.standby.filling.store(false, Ordering::SeqCst);
                    if node.standby.wanted().is_none()
                        || node.standby.filling.swap(true, Ordering::SeqCst)
                    {
                        return;
                    }
                    mark.armed = true;
                    continue;
                };
                let made = match &key {
                    Key::Image(id) => node.standby_make(id).await,
                    Key::Sandbox => node.parked_make().await,
                    Key::Snapshot(id) => node.snapshot_standby_make(id).await,
                };
                match made {
                    // Its image was rebuilt while it was restored: never counted as ready.
                    Ok(ready) if node.standby_stale(&key, &ready) => {
                        node.reap(ready.live.kill());
                    }
                    Ok(ready) => {
                        if let Some(back) = node.standby.put(&key, ready) {
                            node.reap(back.live.kill());
                        }
                    }
                    Err(why) => {
                        node.standby.fill_failed(&key);
                        tracing::warn!(
                            standby = ?key,
                            "a standby could not be made (starts make their own meanwhile; \
                             tried again in {} s): {why}",
                            FAIL_PAUSE.as_secs()
                        );
                    }
                }
                // Forks and cgroup joins block: let the node's other tasks run in between.
                tokio::task::yield_now().await;
            }
        });
    }

    /// Whether `ready`, just made for `key`, is of an image that changed meanwhile.
    fn standby_stale(&self, key: &Key, ready: &Ready) -> bool {
        match key {
            Key::Image(id) => self.image_changed(id, &ready.meta_hash),
            Key::Sandbox | Key::Snapshot(_) => false,
        }
    }

    /// Whether image `id` is gone or is no longer the one whose metadata hash is `hash`.
    fn image_changed(&self, id: &str, hash: &str) -> bool {
        self.images
            .checkout_quiet(id)
            .map_or(true, |co| co.meta_hash() != hash)
    }

    /// A sandbox whose first process is parked, showing only the bootstrap (a restore's
    /// directories are bound in when it is taken), limited to the image build memory until
    /// then.
    async fn parked_make(&self) -> Result<Ready, String> {
        let boxes = self
            .sandboxes
            .as_ref()
            .ok_or("the node runs without the sandbox")?;
        let spec = self.standby_spec(self.cfg.python.clone(), self.bootstrap.clone());
        let sb = boxes
            .prepare(&ember_sandbox::InstanceSpec {
                id: spec.instance_id.clone(),
                memory_bytes: u64::from(spec.memory_mb) << 20,
                read_only: vec![self.bootstrap.clone()],
                bound_at: Vec::new(),
                tmp_bytes: None,
                cwd: self.bootstrap.clone(),
                host_network: false,
                runtime_api_port: None,
            })
            .map_err(|e| error_chain(&e))?;
        let sink = Arc::new(LateSink::default());
        let (sb, inst, pid) =
            match super::restore::parked_instance(self, sb, &spec, sink.clone()).await {
                Ok(made) => made,
                Err((_, e)) => return Err(error_chain(&e)),
            };
        let mut live = Live::new(inst, Some(sb));
        if let Err(why) = pin(&mut live, pid) {
            self.reap(live.kill());
            return Err(why);
        }
        Ok(Ready {
            live,
            pid,
            sink,
            meta_hash: String::new(),
            made: Instant::now(),
            forked: false,
        })
    }

    /// A parked sandbox made ahead for a restore of `spec` that shows `sees`: its
    /// directories bound in, its memory limit set, its log lines to `log`, its instance id
    /// now `spec`'s. `None` when there is none, or it cannot be used (then it is stopped).
    pub(in crate::node) fn parked_take(
        &self,
        sees: &Sees,
        spec: &mut StartSpec,
        log: &Arc<dyn LogSink>,
    ) -> Option<(Live, i32)> {
        if sees.host_network || self.standby.cap == 0 {
            return None;
        }
        let Some(mut ready) = self.standby.take(&Key::Sandbox) else {
            self.count_take(&Key::Sandbox, "miss");
            return None;
        };
        if ready.live.is_gone() {
            self.count_take(&Key::Sandbox, "unusable");
            self.reap(ready.live.kill());
            return None;
        }
        let dirs: Vec<std::path::PathBuf> = sees
            .read_only
            .iter()
            .filter(|d| **d != self.bootstrap)
            .cloned()
            .collect();
        let bound = match ready.live.sandbox.as_ref() {
            Some(sb) => sb
                .add_read_only(&dirs)
                .and_then(|()| sb.add_read_only_at(&sees.bound_at))
                .and_then(|()| match sees.tmp_bytes {
                    Some(b) if b != self.cfg.tmp_bytes => sb.resize_tmp(b),
                    _ => Ok(()),
                })
                .and_then(|()| sb.resize(u64::from(spec.memory_mb) << 20))
                .map_err(|e| error_chain(&e)),
            None => Err("it has no sandbox".to_string()),
        };
        if let Err(why) = bound {
            tracing::warn!(function = %spec.function, "a parked sandbox could not be used; making one: {why}");
            self.count_take(&Key::Sandbox, "unusable");
            self.reap(ready.live.kill());
            return None;
        }
        self.count_take(&Key::Sandbox, "hit");
        ready.sink.bind(log.clone());
        spec.instance_id = ready.live.id().to_string();
        Some((ready.live, ready.pid))
    }

    /// The spec a standby's process is spawned with: no function yet.
    pub(in crate::node) fn standby_spec(
        &self,
        python: std::path::PathBuf,
        cwd: std::path::PathBuf,
    ) -> StartSpec {
        StartSpec {
            instance_id: format!(
                "standby-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            function: String::new(),
            version: 0,
            handler: String::new(),
            memory_mb: self.cfg.images.build_memory_mb,
            python: self.seen(&python),
            bootstrap: self.seen(&self.bootstrap),
            code_dir: self.seen(&cwd),
            imports: Vec::new(),
            env: Default::default(),
        }
    }

    /// An instance of image `id` restored into a sandbox of its own that shows the image's
    /// environment and the bootstrap, limited to the image's build memory until taken.
    async fn standby_make(&self, id: &str) -> Result<Ready, String> {
        let co = self.images.checkout(id).map_err(|e| error_chain(&e))?;
        let whole = self.cfg.images.policy == ember_snap::lazy::Policy::Eager;
        let taken = co.clone();
        let pages = tokio::task::spawn_blocking(move || taken.pages(whole))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| error_chain(&e))?;
        // The image's own working directory (it was built there).
        let mut spec = self.standby_spec(co.python.clone(), co.env_dir.clone());
        if self.templates_on() {
            match self.template_standby(id, &co, spec.clone()).await {
                Ok(Some(ready)) => return Ok(ready),
                Ok(None) => {}
                Err(why) => tracing::warn!(
                    image = id,
                    "forking a standby from the image's template failed; restoring it: {why}"
                ),
            }
        }
        let sees = Sees {
            read_only: vec![co.env_dir.clone(), self.bootstrap.clone()],
            bound_at: Vec::new(),
            tmp_bytes: None,
            host_network: false,
        };
        let sink = Arc::new(LateSink::default());
        let policy = self.cfg.images.policy;
        let Restored { mut live, pid, .. } = self
            .restore_instance(&mut spec, sees, id, &pages, policy, sink.clone(), false)
            .await
            .map_err(|e| error_chain(&e))?;
        if let Err(why) = pin(&mut live, pid) {
            self.reap(live.kill());
            return Err(why);
        }
        live.image = Some(id.to_string());
        Ok(Ready {
            live,
            pid,
            sink,
            meta_hash: co.meta_hash(),
            made: Instant::now(),
            forked: false,
        })
    }

    /// A start of `cx.d` from a standby instance of image `id`, when one is there and still
    /// of the image as it is now. `Ok(None)`: none could be used (the caller restores one);
    /// an error is the start's, blamed as an image start's.
    pub(in crate::node) async fn standby_start(
        &self,
        cx: &mut StartCx<'_>,
        id: &str,
    ) -> Result<Option<Live>, Blame> {
        let d = cx.d;
        let rec = &d.record;
        // The image rung's start, served from here or not, tops the standbys up when its
        // request is answered (invoke.rs).
        let key = Key::Image(id.to_string());
        let mut fork = None;
        let mut ready = match self.standby.take(&key) {
            Some(r) => r,
            None => {
                self.count_take(&key, "miss");
                // None left: forked now from the image's template when it has one.
                let t = Instant::now();
                match self.template_fork_now(id, cx.d).await {
                    Some(r) => {
                        fork = Some(t.elapsed());
                        r
                    }
                    None => return Ok(None),
                }
            }
        };
        let co = match self.images.checkout_quiet(id) {
            Ok(co) if co.meta_hash() == ready.meta_hash => co,
            _ => {
                self.count_take(&key, "unusable");
                self.reap(ready.live.kill());
                return Ok(None);
            }
        };
        if ready.live.is_gone() {
            self.count_take(&key, "unusable");
            self.reap(ready.live.kill());
            return Ok(None);
        }
        let t = Instant::now();
        let bound = match ready.live.sandbox.as_ref() {
            Some(sb) => sb
                .add_read_only(std::slice::from_ref(&d.code_dir))
                .and_then(|()| sb.add_read_only_at(&d.opt_binds()))
                .and_then(|()| match d.tmp_bytes(&self.cfg) {
                    b if b != self.cfg.tmp_bytes => sb.resize_tmp(b),
                    _ => Ok(()),
                })
                .and_then(|()| sb.resize(rec.config.memory_bytes()))
                .map_err(|e| error_chain(&e)),
            None => Err("it has no sandbox".to_string()),
        };
        if let Err(why) = bound {
            tracing::warn!(function = %rec.name, image = id, "a standby instance could not be used; restoring one: {why}");
            self.count_take(&key, "unusable");
            self.reap(ready.live.kill());
            return Ok(None);
        }
        ready.sink.bind(self.logs.sink(&rec.name));
        let standby = t.elapsed();
        let spec = self.instance_spec(
            d,
            ready.live.id().to_string(),
            co.python.clone(),
            Vec::new(),
        );
        let (mut live, tm) = match self.init_restored_instance(d, ready.live, &spec).await {
            Ok(v) => v,
            // Before HOOKED: the standby itself failed (it died while it waited: killed, a
            // limit), not the image, which restored it fine: the start restores its own, and
            // that restore is what counts for the image.
            Err(Blame::Snapshot(e)) => {
                tracing::warn!(function = %rec.name, image = id, "a standby instance failed at its INIT; restoring one: {}", error_chain(&e));
                self.count_take(&key, "unusable");
                return Ok(None);
            }
            Err(fault) => return Err(fault),
        };
        self.count_take(&key, if fork.is_some() { "forked" } else { "hit" });
        let timing = &mut cx.timing;
        timing.standby = Some(standby);
        timing.fork = fork;
        timing.hook = Some(tm.hook);
        timing.import_handler = Some(tm.import_handler);
        live.image = Some(id.to_string());
        self.images.succeeded(id);
        let how = match (fork, ready.forked) {
            (Some(_), _) => format!("image {id}, forked from its template (no standby was ready)"),
            (None, forked) => format!(
                "image {id}, a standby {} {:.1} s ago",
                if forked {
                    "forked from its template"
                } else {
                    "restored"
                },
                ready.made.elapsed().as_secs_f64()
            ),
        };
        self.restored_started(d, &spec, &live, &how, timing.init());
        Ok(Some(live))
    }

    /// Counts a built image as a start, so that its first start finds a standby.
    pub(in crate::node) fn standby_for_new_image(&self, id: &str) {
        self.standby.demand(&Key::Image(id.to_string()));
        self.standby_refill();
    }

    /// Stops the standby instances of images idle past [`IDLE`], gone or rebuilt, and
    /// drops their templates.
    pub(in crate::node) fn standby_expire(&self) {
        self.templates.expire_snapshots(IDLE);
        let stale = |key: &Key, hash: &str| match key {
            Key::Image(id) => self.image_changed(id, hash),
            Key::Snapshot(id) => !self.templates.snapshot_kept(id),
            Key::Sandbox => false,
        };
        for r in self.standby.expire(stale) {
            self.reap(r.live.kill());
        }
        // An image's template while its standbys are kept or a start forked from it within
        // IDLE; function snapshots' by their own rule.
        self.templates.retain(|key, hash, used| {
            key.starts_with(super::templates::SNAPSHOT)
                || ((used.elapsed() <= IDLE || self.standby.wants(&Key::Image(key.to_string())))
                    && !self.image_changed(key, hash))
        });
    }

    /// Stops every standby instance (shutdown).
    pub(in crate::node) fn standby_drain(&self) {
        for r in self.standby.drain() {
            self.reap(r.live.kill());
        }
        self.templates.clear();
    }

    /// Standby instances ready now, per image.
    pub fn standby_counts(&self) -> Vec<(String, usize)> {
        self.standby.counts()
    }

    /// Sets the standby gauges (at each scrape).
    pub(in crate::node) fn report_standby(&self) {
        for (kind, n) in self.standby.ready() {
            self.metrics
                .standby_ready
                .get_or_create(&crate::metrics::KindLabels { kind: kind.into() })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a look for a standby of `key`.
    pub(in crate::node) fn count_take(&self, key: &Key, result: &str) {
        let kind = key.kind();
        self.metrics
            .standby_takes
            .get_or_create(&crate::metrics::TakeLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_recent_starts_within_the_cap_and_ends_when_idle() {
        let now = Instant::now();
        let mut s = Slot::default();
        assert_eq!(s.target(now, 4), 0, "no demand, none");
        s.last_demand = Some(now);
        s.starts.push_back(now);
        assert_eq!(s.target(now, 4), 1);
        for _ in 0..9 {
            s.starts.push_back(now);
        }
        assert_eq!(s.target(now, 4), 4, "capped");
        // Past the window the burst no longer counts, but the image still keeps one.
        let later = now + WINDOW + Duration::from_secs(1);
        assert_eq!(s.target(later, 4), 1);
        assert!(s.starts.is_empty());
        let idle = now + IDLE + Duration::from_secs(1);
        assert_eq!(s.target(idle, 4), 0);
        assert_eq!(s.target(now, 0), 0, "--standby 0 makes none");
    }

    #[test]
    fn wanted_picks_the_image_shortest_of_its_target_and_skips_a_failing_one() {
        let k = |s: &str| Key::Image(s.to_string());
        let st = Standby::new(3);
        assert!(st.wanted().is_none());
        st.demand(&k("a"));
        st.demand(&k("b"));
        st.demand(&k("b"));
        assert_eq!(st.wanted(), Some(k("b")));
        st.fill_failed(&k("b"));
        assert_eq!(st.wanted(), Some(k("a")));
        st.fill_failed(&k("a"));
        assert!(st.wanted().is_none());
        assert!(st.take(&Key::Sandbox).is_none(), "a miss counts as demand");
        assert_eq!(st.wanted(), Some(Key::Sandbox));
        let counts = st.counts();
        assert_eq!(
            counts,
            [("a".to_string(), 0), ("b".to_string(), 0)],
            "parked sandboxes are not an image's"
        );
        let none = Standby::new(0);
        none.demand(&k("a"));
        assert!(none.wanted().is_none());
    }
}
