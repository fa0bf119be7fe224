//! The hibernated rung: the function's newest hibernated instance, woken from local disk
//! with the warm state its earlier invocations built (`node/hibernate.rs`). It comes
//! second, after warm: nothing else starts an instance that has already served.
//!
//! ```text
//! hibernated instance of this deploy? -> out of the set -> woken (lazy, from its file)
//!     -> INIT restored -> READY
//! ```
//!
//! A wake that fails before the after-restore hooks (its parent gone, a page file that
//! fails its checks, a restore error) falls through to the function snapshot; the
//! hibernated instance is gone either way (it was taken out of the set).

use std::sync::atomic::Ordering;

use super::{Attempt, AttemptFuture, Rung, StartPath};
use crate::live::Live;
use crate::node::hibernate::deploy_of;
use crate::node::invoke::StartCx;
use crate::node::restore::Blame;

/// The hibernated rung.
pub(in crate::node) struct Hibernated;

impl<'c> Rung<StartCx<'c>, Live> for Hibernated {
    fn path(&self) -> StartPath {
        StartPath::Hibernated
    }
    fn name(&self) -> &'static str {
        "hibernated instance"
    }
    fn starts_new(&self) -> bool {
        true
    }
    fn attempt<'a>(&'a self, cx: &'a mut StartCx<'c>) -> AttemptFuture<'a, Live> {
        Box::pin(async move {
            let (node, d) = (cx.node, cx.d);
            if cx.background || !node.can_hibernate(d) {
                return Attempt::Skipped;
            }
            // Counted as waking until it is live (or failed): a fill of the instances kept
            // ready must not start one for it meanwhile.
            d.waking.fetch_add(1, Ordering::SeqCst);
            let Some(entry) = node.hibernated.take(&d.record.name, deploy_of(d)) else {
                d.waking.fetch_sub(1, Ordering::SeqCst);
                return Attempt::Skipped;
            };
            let what = format!("hibernated instance {}", entry.instance);
            let woken = node.wake(cx, entry).await;
            d.waking.fetch_sub(1, Ordering::SeqCst);
            match woken {
                Ok(live) => Attempt::Started(live),
                Err(Blame::Function(outcome)) => Attempt::Ended(outcome),
                Err(Blame::Snapshot(error)) => Attempt::Failed { what, error },
            }
        })
    }
}
