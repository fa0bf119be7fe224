//! The start ladder: the rungs an invocation tries, in order, until one gives it an instance.
//!
//! ```text
//! warm -> pre-made -> | crash-loop gate | -> hibernated -> function snapshot
//!      -> dependency image -> cold boot
//! ```
//!
//! Each rung is one file behind [`Rung`]. A rung's attempt comes to one of four things
//! ([`Attempt`]): an instance; *skipped* (it does not apply: no idle instance, no image);
//! *failed* on its own account (a snapshot that does not restore, a sandbox that cannot be
//! made for it), after which the next rung serves; or *ended* with the function's own failure
//! (its init raised, hit a limit), which is the invocation's answer. The fall-through rule is
//! written once, in [`climb`]: a failed attempt is timed (its time is the start's `fallback`
//! phase), reported to the [`Climber`] (which logs and counts it, naming the rung that served
//! instead), and the next rung is tried. A snapshot or image problem therefore never fails an
//! invocation: the last rung (cold boot) never falls through.
//!
//! Rungs that start a new instance come after the crash-loop gate ([`Climber::gate`]): a
//! function whose own starts keep failing is answered at once with its last failure, while
//! an instance it already has (warm, pre-made) still serves.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::InvokeOutcome;

pub(super) mod cold_boot;
pub(super) mod function_snapshot;
pub(super) mod hibernated;
pub(super) mod image;
pub(super) mod premade;
pub(super) mod warm;

/// The rung of the start ladder that served an invocation (`Ember-Start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPath {
    Warm,
    /// A hibernated instance of the function, woken from local disk.
    Hibernated,
    /// Restored from the function's own snapshot (a layer over its image, or whole).
    FunctionSnapshot,
    /// Restored from a dependency image.
    Image,
    /// A new process: booted, or a pre-made sandbox's executable continued.
    ColdBoot,
}

impl StartPath {
    pub fn as_str(self) -> &'static str {
        match self {
            StartPath::Warm => "warm",
            StartPath::Hibernated => "hibernated",
            StartPath::FunctionSnapshot => "function-snapshot",
            StartPath::Image => "image",
            StartPath::ColdBoot => "cold-boot",
        }
    }
}

/// Why a rung could not serve, when that is the rung's problem and not the function's.
#[derive(Debug, thiserror::Error)]
pub enum RungError {
    #[error("image {id} is not available")]
    Checkout {
        id: String,
        #[source]
        source: crate::images::ImageError,
    },
    #[error("restores need the sandbox, and it is off")]
    NoSandbox,
    #[error("creating the sandbox")]
    Sandbox(#[source] ember_sandbox::SandboxError),
    #[error("starting the sandbox's first process")]
    Spawn(#[source] ember_runtime::python::StartError),
    #[error("restoring")]
    Restore(#[source] ember_snap::RestoreError),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error("the page server failed: {0}")]
    PageServer(String),
    #[error("initialising the restored instance")]
    Init(#[source] ember_runtime::python::StartError),
    #[error("the restored instance did not initialise within {0} s")]
    InitTimeout(u64),
    #[error("function snapshot {id} cannot be used: {why}")]
    Snapshot { id: String, why: String },
    #[error("hibernated instance {id} cannot be woken: {why}")]
    Hibernated { id: String, why: String },
    #[error("its stopped executable could not be continued")]
    Resume,
}

/// What one rung's attempt came to.
pub(super) enum Attempt<T> {
    /// An instance, ready for the event.
    Started(T),
    /// The rung does not apply to this start.
    Skipped,
    /// The rung failed on its own account (`what` names what it tried, e.g. `image ab12`):
    /// the next rung serves.
    Failed { what: String, error: RungError },
    /// The function's own failure: the invocation's answer, no further rung is tried.
    Ended(InvokeOutcome),
}

pub(super) type AttemptFuture<'a, T> = Pin<Box<dyn Future<Output = Attempt<T>> + Send + 'a>>;

/// One rung of the ladder. `C` is what an attempt works with (the node, the function, the
/// start's timing); `T` is the instance a start gives.
pub(super) trait Rung<C: ?Sized, T>: Sync {
    /// What the response and the metrics name when this rung serves.
    fn path(&self) -> StartPath;
    /// Its name in logs (`pre-made` serves as a cold boot, for instance).
    fn name(&self) -> &'static str;
    /// It starts a new instance (after the crash-loop gate), rather than reusing one.
    fn starts_new(&self) -> bool;
    fn attempt<'a>(&'a self, cx: &'a mut C) -> AttemptFuture<'a, T>;
}

/// A rung's attempt that failed and was passed over.
pub(super) struct Fall {
    pub rung: &'static str,
    pub what: String,
    pub error: RungError,
    pub spent: Duration,
}

/// What the ladder tells its caller as it climbs.
pub(super) trait Climber {
    /// A failed attempt, reported once the climb is over, with the rung that served (or
    /// ended the start) instead.
    fn fell(&mut self, fall: &Fall, then: StartPath);
    /// Before the first rung that starts a new instance: `Some` answers the invocation with
    /// it instead (the crash-loop backoff).
    fn gate(&mut self) -> Option<InvokeOutcome>;
}

/// How a climb ended.
pub(super) enum Climbed<T> {
    Started {
        inst: T,
        path: StartPath,
        /// Time spent in attempts that failed before.
        fallback: Option<Duration>,
    },
    Ended {
        outcome: InvokeOutcome,
        path: StartPath,
        fallback: Option<Duration>,
        /// The crash-loop gate ended it (no start was tried).
        gated: bool,
    },
}

/// Tries `rungs` in order (see the module doc for the rule).
pub(super) async fn climb<C: Climber + Send + ?Sized, T>(
    rungs: &[&dyn Rung<C, T>],
    cx: &mut C,
) -> Climbed<T> {
    let mut falls: Vec<Fall> = Vec::new();
    let mut gated = false;
    let mut result = None;
    for rung in rungs {
        if rung.starts_new() && !gated {
            gated = true;
            if let Some(outcome) = cx.gate() {
                // Named as the last rung (a cold boot): no start was tried.
                let path = rungs.last().map_or(StartPath::ColdBoot, |r| r.path());
                result = Some((Err((outcome, true)), path));
                break;
            }
        }
        let t0 = Instant::now();
        match rung.attempt(cx).await {
            Attempt::Started(inst) => {
                result = Some((Ok(inst), rung.path()));
                break;
            }
            Attempt::Skipped => {}
            Attempt::Failed { what, error } => falls.push(Fall {
                rung: rung.name(),
                what,
                error,
                spent: t0.elapsed(),
            }),
            Attempt::Ended(outcome) => {
                result = Some((Err((outcome, false)), rung.path()));
                break;
            }
        }
    }
    let (result, path) = result.unwrap_or_else(|| {
        let why = match falls.last() {
            Some(f) => format!(
                "no rung of the start ladder could start an instance (last: {} failed)",
                f.rung
            ),
            None => "no rung of the start ladder applies to this function".to_string(),
        };
        let path = rungs.last().map_or(StartPath::ColdBoot, |r| r.path());
        (Err((InvokeOutcome::StartFailed(why), false)), path)
    });
    let fallback = (!falls.is_empty()).then(|| falls.iter().map(|f| f.spent).sum());
    for f in &falls {
        cx.fell(f, path);
    }
    match result {
        Ok(inst) => Climbed::Started {
            inst,
            path,
            fallback,
        },
        Err((outcome, gated)) => Climbed::Ended {
            outcome,
            path,
            fallback,
            gated,
        },
    }
}

#[cfg(test)]
mod tests;
