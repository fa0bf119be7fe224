//! Instances kept ready: a function's (or a published version's) `min_instances`, Lambda's
//! provisioned concurrency. They are started ahead of demand, through the same rungs a
//! request climbs below warm (function snapshot, dependency image, cold boot), and the
//! keep-alive never stops them below the number.
//!
//! ```text
//! deploy / publish / set / every keep-alive tick: live + hibernated < min? -> one fill at
//!     a time per function: start one (snapshot, image or cold boot) -> idle in the pool
//!     -> again
//! expire: without hibernation, the min - busy most recently used idle instances stay,
//!     whatever their age; with it, they are hibernated past the keep-alive like any
//!     other, and the min - live newest hibernated ones stay whatever their age (a burst
//!     wakes them)
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::invoke::StartCx;
use super::ladder::{self, Climbed, Rung};
use super::{Deployed, Node, NodeError, Timing, blocking};
use crate::live::Live;
use crate::versions::split_qualified;

impl Node {
    /// Keeps `n` instances of `name` (a function, or a published version `name:N`) ready;
    /// 0 stops keeping any. Kept in its record, so a restart keeps them too.
    pub async fn set_min_instances(&self, name: &str, n: u32) -> Result<(), NodeError> {
        let gate = self.deploy_gate(split_qualified(name).0);
        let _held = gate.lock().await;
        let d = self.deployed(name)?;
        let mut rec = d.record.clone();
        rec.config.min_instances = n;
        // At most its instance limit, and not for one-request instances.
        rec.config.validate()?;
        let reg = self.registry.clone();
        blocking(move || Ok(reg.put(&rec)?)).await?;
        d.min_instances.store(n, Ordering::SeqCst);
        tracing::info!(function = name, min_instances = n, "instances kept ready");
        self.fill(&d);
        Ok(())
    }

    /// How many instances of `name` are kept ready (wanted), and how many are started.
    pub fn min_instances(&self, name: &str) -> Result<(u32, usize), NodeError> {
        let d = self.deployed(name)?;
        let live = d.pool.live().load(Ordering::SeqCst);
        Ok((d.min_instances.load(Ordering::SeqCst), live))
    }

    /// Starts instances of `d` until it has as many as it keeps ready, in the background,
    /// one fill at a time per function; a start that fails ends the fill (the next
    /// keep-alive tick tries again).
    pub(in crate::node) fn fill(&self, d: &Arc<Deployed>) {
        if d.min_instances.load(Ordering::SeqCst) == 0
            || self.stopping.load(Ordering::SeqCst)
            || d.pool.is_retired()
            || d.provisioning.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let (me, d) = (self.me.clone(), d.clone());
        self.spawn_background(async move {
            while let Some(node) = me.upgrade() {
                let want = d.min_instances.load(Ordering::SeqCst) as usize;
                if d.pool.is_retired()
                    || node.stopping.load(Ordering::SeqCst)
                    || d.pool.live().load(Ordering::SeqCst)
                        + node.hibernated_count(&d)
                        + d.waking.load(Ordering::SeqCst)
                        >= want
                {
                    break;
                }
                let generation = d.pool.generation();
                match node.start_ready(&d, false).await {
                    Ok(live) => {
                        if let Some(late) = d.pool.put_back(live, generation) {
                            node.discard(&d, late, "its function was replaced");
                        }
                    }
                    Err(why) => {
                        let msg = format!("an instance to keep ready could not start: {why}");
                        node.logs
                            .append(&d.record.name, "ember", "event", msg.as_bytes());
                        tracing::warn!(function = %d.record.name, "{msg}");
                        break;
                    }
                }
            }
            d.provisioning.store(false, Ordering::SeqCst);
        });
    }

    /// One instance of `d` from the rungs below warm, not serving a request; with `wake`, a
    /// hibernated one first (a pre-warm; a fill of those kept ready counts them as ready
    /// already).
    async fn start_ready(&self, d: &Arc<Deployed>, wake: bool) -> Result<Live, String> {
        let mut cx = StartCx {
            node: self,
            d,
            timing: Timing::default(),
            background: false,
        };
        let all: [&dyn Rung<StartCx<'_>, Live>; 4] = [
            &ladder::hibernated::Hibernated,
            &ladder::function_snapshot::FunctionSnapshot,
            &ladder::image::Image,
            &ladder::cold_boot::ColdBoot,
        ];
        let rungs = if wake { &all[..] } else { &all[1..] };
        match ladder::climb(rungs, &mut cx).await {
            Climbed::Started { inst, .. } => Ok(inst),
            Climbed::Ended { outcome, .. } => Err(outcome.label().to_string()),
        }
    }
}

impl Node {
    /// Notes the end of an invocation of `d` (for its idle times); with a pre-warm window
    /// the instance that served is not kept: it is hibernated (or stopped) and woken (or
    /// another started) when the next invocation is due (`prewarm_due`). The windows when
    /// it should leave the pool now.
    pub(in crate::node) fn invocation_ended(
        &self,
        d: &Deployed,
    ) -> Option<crate::keepalive::Windows> {
        if !self.keep_alive.learns() {
            return None;
        }
        *d.last_end.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        let w = self.keep_alive.windows(&d.record.name);
        (d.min_instances.load(Ordering::SeqCst) == 0 && !w.prewarm.is_zero()).then_some(w)
    }

    /// Notes the start of an invocation of `d`: when none of its instances was busy, the
    /// time since the last one ended is an idle time for its keep-alive policy.
    pub(in crate::node) fn invocation_started(&self, d: &Deployed) {
        if !self.keep_alive.learns() {
            return;
        }
        // Those being hibernated serve nothing.
        let busy = d
            .pool
            .live()
            .load(Ordering::SeqCst)
            .saturating_sub(d.pool.idle_count())
            .saturating_sub(d.hibernating.load(Ordering::SeqCst));
        let last = *d.last_end.lock().unwrap_or_else(|p| p.into_inner());
        if busy == 0
            && let Some(end) = last
        {
            self.keep_alive.observe(&d.record.name, end.elapsed());
        }
    }

    /// Starts one instance of `d` ahead of its next invocation when its policy's pre-warm
    /// window has passed since the last one ended and it has none (`live`).
    pub(in crate::node) fn prewarm_due(
        &self,
        d: &Arc<Deployed>,
        w: &crate::keepalive::Windows,
        live: usize,
    ) {
        if w.prewarm.is_zero() || live > 0 || d.pool.is_retired() {
            return;
        }
        let Some(end) = *d.last_end.lock().unwrap_or_else(|p| p.into_inner()) else {
            return;
        };
        if end.elapsed() < w.prewarm {
            return;
        }
        {
            let mut done = d.prewarmed_for.lock().unwrap_or_else(|p| p.into_inner());
            if *done == Some(end) {
                return;
            }
            *done = Some(end);
        }
        let (me, d) = (self.me.clone(), d.clone());
        self.spawn_background(async move {
            let Some(node) = me.upgrade() else { return };
            let generation = d.pool.generation();
            match node.start_ready(&d, true).await {
                Ok(live) => {
                    if let Some(late) = d.pool.put_back(live, generation) {
                        node.discard(&d, late, "its function was replaced");
                    }
                }
                Err(why) => tracing::warn!(function = %d.record.name, "pre-warming failed: {why}"),
            }
        });
    }
}
