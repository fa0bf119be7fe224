//! The pre-made rung: a native function's sandbox made ahead of demand, its executable
//! spawned and stopped before its first instruction; continuing it is the whole start. It
//! serves as a cold boot (`Ember-Start: cold-boot`) whose only phase is `resume`.

use std::time::Instant;

use super::{Attempt, AttemptFuture, Rung, RungError, StartPath};
use crate::live::Live;
use crate::node::invoke::StartCx;

/// The pre-made rung.
pub(in crate::node) struct Premade;

impl<'c> Rung<StartCx<'c>, Live> for Premade {
    fn path(&self) -> StartPath {
        StartPath::ColdBoot
    }
    fn name(&self) -> &'static str {
        "pre-made sandbox"
    }
    fn starts_new(&self) -> bool {
        false
    }
    fn attempt<'a>(&'a self, cx: &'a mut StartCx<'c>) -> AttemptFuture<'a, Live> {
        Box::pin(async move {
            let (node, d) = (cx.node, cx.d);
            if !d.record.config.runtime.can_premake() {
                return Attempt::Skipped;
            }
            // Topped up after every take, and after a refill that failed earlier.
            let parked = d.pool.take_parked();
            node.refill(d);
            let Some(live) = parked else {
                return Attempt::Skipped;
            };
            let t = Instant::now();
            match resume(live) {
                Ok(live) => {
                    cx.timing.resume = Some(t.elapsed());
                    Attempt::Started(live)
                }
                Err(live) => {
                    node.discard(d, *live, "its pre-made sandbox could not be continued");
                    Attempt::Failed {
                        what: "a pre-made sandbox".into(),
                        error: RungError::Resume,
                    }
                }
            }
        })
    }
}

/// Continues a pre-made instance: its first process drops its privileges, installs the
/// seccomp filter and execs. Gives the instance back when it cannot be continued.
pub(in crate::node) fn resume(mut live: Live) -> Result<Live, Box<Live>> {
    let Some(pid) = live.parked.take() else {
        return Ok(live);
    };
    let cont = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    );
    match cont {
        Ok(()) if !live.is_gone() => Ok(live),
        _ => Err(Box::new(live)),
    }
}
