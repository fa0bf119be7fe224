//! The first rung: an idle instance of the function, most recently used first.

use super::{Attempt, AttemptFuture, Rung, StartPath};
use crate::live::Live;
use crate::node::invoke::StartCx;

/// The warm rung.
pub(in crate::node) struct Warm;

impl<'c> Rung<StartCx<'c>, Live> for Warm {
    fn path(&self) -> StartPath {
        StartPath::Warm
    }
    fn name(&self) -> &'static str {
        "warm instance"
    }
    fn starts_new(&self) -> bool {
        false
    }
    fn attempt<'a>(&'a self, cx: &'a mut StartCx<'c>) -> AttemptFuture<'a, Live> {
        Box::pin(async move {
            let (node, d) = (cx.node, cx.d);
            let (warm, dead) = d.pool.take_idle();
            node.discard_all(d, dead, "found dead while idle");
            let Some(mut live) = warm else {
                return Attempt::Skipped;
            };
            // A limit event while it sat idle (a thread or child it left running) belongs to
            // no invocation: the instance goes, and this request gets another.
            match live.new_limit() {
                None => Attempt::Started(live),
                Some(reason) => {
                    let why = format!("limit reached while idle: {}", reason.as_str());
                    node.discard(d, live, &why);
                    Attempt::Skipped
                }
            }
        })
    }
}
