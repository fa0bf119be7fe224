//! The dependency-image rung: an instance restored from the image of exactly the function's
//! distributions, then its handler imported.
//!
//! ```text
//! a standby instance of the image (restored ahead, `standby.rs`) -> code bound, limits set
//! or: checkout -> fresh sandbox, first process parked -> restore (policy, handoff to the
//!     instance's user and filter)
//! then: INIT restored: environment, after-restore hook (reseed), handler import -> READY
//! ```
//!
//! A failure before the runtime says HOOKED (sandbox, restore, page source, hook) is the
//! image's: counted against it (the image is marked unhealthy after repeated failures) and
//! the next rung serves. A failure after HOOKED (the handler's import raises, crashes, hits a
//! limit, hangs) is the function's alone: it ends the start, its crash-loop backoff counts
//! it and the image stays healthy.

use ember_snap::lazy::Policy;
use tracing::{Instrument, info_span};

use super::{Attempt, AttemptFuture, Rung, RungError, StartPath};
use crate::function::Network;
use crate::live::Live;
use crate::metrics::ImageLabels;
use crate::node::invoke::StartCx;
use crate::node::restore::{Blame, Restored, Sees};
use crate::node::{Deployed, Node, error_chain, instance_id};

/// The image rung.
pub(in crate::node) struct Image;

impl<'c> Rung<StartCx<'c>, Live> for Image {
    fn path(&self) -> StartPath {
        StartPath::Image
    }
    fn name(&self) -> &'static str {
        "image"
    }
    fn starts_new(&self) -> bool {
        true
    }
    fn attempt<'a>(&'a self, cx: &'a mut StartCx<'c>) -> AttemptFuture<'a, Live> {
        Box::pin(async move {
            if !cx.background && cx.node.rung_slower(cx.d, StartPath::Image) {
                return Attempt::Skipped;
            }
            let chosen = match cx.background {
                true => cx.node.image_serving(cx.d).map(|id| (id, false)),
                false => cx.node.image_for(cx.d),
            };
            let Some((id, pooled)) = chosen else {
                return Attempt::Skipped;
            };
            match cx.node.image_start(cx, &id, pooled).await {
                Ok(live) => Attempt::Started(live),
                Err(Blame::Function(outcome)) => Attempt::Ended(outcome),
                Err(Blame::Snapshot(error)) => {
                    cx.node.image_failed(&id, &error);
                    Attempt::Failed {
                        what: format!("image {id}"),
                        error,
                    }
                }
            }
        })
    }
}

impl Node {
    /// An instance of `cx.d` restored from image `id` (`pooled`: one this node has no copy
    /// of, its pages from the cluster's pool).
    async fn image_start(
        &self,
        cx: &mut StartCx<'_>,
        id: &str,
        pooled: bool,
    ) -> Result<Live, Blame> {
        let d = cx.d;
        let rec = &d.record;
        // A snapshot's take (a background start) restores its own: standbys are for requests.
        if !cx.background
            && !pooled
            && (self.standby_serves(d) || self.templates_serve(d))
            && let Some(live) = self.standby_start(cx, id).await?
        {
            return Ok(live);
        }
        let co = match pooled {
            true => self.images.checkout_pooled(id),
            false => self.images.checkout(id),
        }
        .map_err(|source| RungError::Checkout {
            id: id.to_string(),
            source,
        })?;
        // A pooled image's pages are elsewhere: its working set first, the rest on fault.
        let policy = match self.cfg.images.policy {
            Policy::Eager | Policy::Mapped if pooled => Policy::Prefetch,
            p => p,
        };
        let whole = policy == Policy::Eager;
        let taken = co.clone();
        let pages = match tokio::task::spawn_blocking(move || taken.pages(whole)).await {
            Ok(Ok(p)) => p,
            Ok(Err(source)) => {
                return Err(Blame::Snapshot(RungError::Checkout {
                    id: id.to_string(),
                    source,
                }));
            }
            Err(e) => return Err(Blame::Snapshot(RungError::Task(e.to_string()))),
        };
        if co.load_after {
            let images = self.images.clone();
            let id = id.to_string();
            tokio::task::spawn_blocking(move || images.load(&id));
        }
        let mut spec = self.instance_spec(d, instance_id(&rec.name), co.python.clone(), Vec::new());
        let sees = Sees {
            read_only: vec![
                d.code_dir.clone(),
                co.env_dir.clone(),
                self.bootstrap.clone(),
            ],
            bound_at: d.opt_binds(),
            tmp_bytes: Some(d.tmp_bytes(&self.cfg)),
            host_network: rec.config.network == Network::Host,
        };
        let sink = self.logs.sink(&rec.name);
        let span = info_span!("start.image", instance = %spec.instance_id, image = id);
        let standby = !cx.background && self.standby_serves(d);
        let Restored {
            live,
            sandbox,
            restore,
            ..
        } = self
            .restore_instance(&mut spec, sees, id, &pages, policy, sink, standby)
            .instrument(span)
            .await?;
        let (mut live, t) = self.init_restored_instance(d, live, &spec).await?;
        let timing = &mut cx.timing;
        timing.sandbox = Some(sandbox);
        timing.restore = Some(restore);
        timing.hook = Some(t.hook);
        timing.import_handler = Some(t.import_handler);
        // Hibernation and snapshots layer over images this node holds; an instance whose
        // pages still come from elsewhere is not hibernated.
        live.image = (!pooled).then(|| id.to_string());
        live.from_store |= pooled;
        live.pages_may_fail |= pooled;
        self.images.succeeded(id);
        let how = format!("image {id} from {}, {policy}", co.location.as_str());
        self.restored_started(d, &spec, &live, &how, timing.init());
        Ok(live)
    }

    /// Counts a failed start against image `id` (the ladder logs it and falls through).
    fn image_failed(&self, id: &str, error: &RungError) {
        self.metrics
            .image_failures
            .get_or_create(&ImageLabels {
                image: id.to_string(),
            })
            .inc();
        if self.images.failed(id, &error_chain(error)) {
            tracing::error!(
                image = id,
                "image marked unhealthy after {} failed restores in a row; rebuild it with \
                 `ember image build` or remove it",
                self.cfg.images.failures_unhealthy
            );
        }
    }

    /// The image that should serve `d`, if images may, and whether it is a pooled one;
    /// counts why none otherwise.
    fn image_for(&self, d: &Deployed) -> Option<(String, bool)> {
        let reason = match self.image_choice(d) {
            Ok(id) => return Some((id, false)),
            // Other runtimes always start from their code: no reason to count.
            Err("not-python") => return None,
            Err(reason) => reason,
        };
        if reason == "no-image"
            && let Some(id) = self.image_pooled(d)
        {
            return Some((id, true));
        }
        self.metrics
            .cold_boot_reasons
            .get_or_create(&crate::metrics::ReasonLabels {
                function: d.record.name.clone(),
                reason: reason.to_string(),
            })
            .inc();
        None
    }

    /// The image that serves `d` now, if any (nothing counted).
    pub(in crate::node) fn image_serving(&self, d: &Deployed) -> Option<String> {
        self.image_choice(d).ok()
    }

    /// The image that should serve `d`, or why none does.
    fn image_choice(&self, d: &Deployed) -> Result<String, &'static str> {
        // Images hold Ember's Python runtime; other runtimes always start from their code.
        if !d.record.config.runtime.restorable() {
            return Err("not-python");
        }
        if !d.record.config.images {
            return Err("images-off");
        }
        if self.sandboxes.is_none() {
            return Err("no-sandbox");
        }
        let memory = d.record.config.memory_bytes();
        self.images
            .find(&d.env.installed, memory)
            .map_err(|why| why.reason())
    }
}
