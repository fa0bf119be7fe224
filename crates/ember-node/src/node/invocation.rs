//! What an invocation ends with, and the time each phase of it took.

use std::time::Duration;

use ember_runtime::protocol::FunctionError;
use ember_sandbox::LimitReason;

use super::StartPath;

/// Time spent in each phase of one invocation; phases that did not happen are `None`.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub queue: Duration,
    /// Attempts of the ladder's rungs that failed before the one that served.
    pub fallback: Option<Duration>,
    /// A function snapshot fetched from the snapshot store (manifest and every chunk,
    /// checked) before its restore, or the time a fetch that failed cost.
    pub fetch: Option<Duration>,
    /// Of `fetch`: the set's manifest read from the store.
    pub fetch_manifest: Option<Duration>,
    /// Of `fetch`, lazily: the bundle (metadata, working set, pack) and the description.
    pub fetch_bundle: Option<Duration>,
    /// Of `fetch`, lazily: the bundle unpacked and checked, and the layer opened over its
    /// image (its working set's pages in hand).
    pub fetch_open: Option<Duration>,
    /// A function snapshot's layer read from disk, checked and laid over its image's pages
    /// (not when the layer is held in memory).
    pub load: Option<Duration>,
    /// From an image: the sandbox with its first process parked.
    pub sandbox: Option<Duration>,
    /// From a standby instance (restored ahead): the function's code directory bound into
    /// its sandbox and its limits set. Sandbox and restore were paid before the request.
    pub standby: Option<Duration>,
    /// Forked from the image's or function snapshot's template on the request's path (no
    /// standby was left): the instance's cgroups, the injected clone into fresh namespaces,
    /// its own mounts. Its pages are the template's, shared copy-on-write.
    pub fork: Option<Duration>,
    /// A pre-made sandbox's stopped executable continued (its sandbox and spawn were paid
    /// ahead of the request).
    pub resume: Option<Duration>,
    /// From an image: the restore into that process.
    pub restore: Option<Duration>,
    /// From an image: the after-restore hook (environment, new seeds).
    pub hook: Option<Duration>,
    pub spawn: Option<Duration>,
    /// A `provided` runtime's own start-up: from its exec to its first `invocation/next`.
    pub runtime_init: Option<Duration>,
    pub interpreter: Option<Duration>,
    pub import_packages: Option<Duration>,
    pub import_handler: Option<Duration>,
    pub exec: Option<Duration>,
    pub total: Duration,
}

impl Timing {
    /// Every phase in the order it happens, with its duration when it happened (the API
    /// turns it into the `Ember-Timing`/`Server-Timing` header).
    /// `fetch_manifest`, `fetch_bundle` and `fetch_open` are parts of `fetch`, listed after
    /// it.
    pub fn phases(&self) -> [(&'static str, Option<Duration>); 20] {
        [
            ("queue", Some(self.queue)),
            ("fallback", self.fallback),
            ("fetch", self.fetch),
            ("fetch_manifest", self.fetch_manifest),
            ("fetch_bundle", self.fetch_bundle),
            ("fetch_open", self.fetch_open),
            ("load", self.load),
            ("sandbox", self.sandbox),
            ("standby", self.standby),
            ("fork", self.fork),
            ("resume", self.resume),
            ("restore", self.restore),
            ("hook", self.hook),
            ("spawn", self.spawn),
            ("runtime_init", self.runtime_init),
            ("interpreter", self.interpreter),
            ("import_packages", self.import_packages),
            ("import_handler", self.import_handler),
            ("exec", self.exec),
            ("total", Some(self.total)),
        ]
    }

    /// Time to get an instance able to run the event.
    pub fn init(&self) -> Duration {
        [
            self.fallback,
            self.fetch,
            self.load,
            self.sandbox,
            self.standby,
            self.fork,
            self.resume,
            self.restore,
            self.hook,
            self.spawn,
            self.runtime_init,
            self.interpreter,
            self.import_packages,
            self.import_handler,
        ]
        .iter()
        .flatten()
        .sum()
    }
}

/// Which instance served an invocation, and how it started.
pub(in crate::node) struct Served {
    pub start: StartPath,
    pub image: Option<String>,
    pub snapshot: Option<String>,
    pub instance: String,
}

impl Served {
    pub(in crate::node) fn none(start: StartPath) -> Served {
        Served {
            start,
            image: None,
            snapshot: None,
            instance: String::new(),
        }
    }
}

/// What an invocation ended with.
#[derive(Debug, Clone)]
pub enum InvokeOutcome {
    /// The handler's JSON result.
    Ok(Vec<u8>),
    /// The handler raised, or returned something that is not JSON.
    HandlerError(FunctionError),
    /// Importing the handler raised; the instance was discarded.
    InitError(FunctionError),
    /// The handler ran past the function's timeout; the instance was killed.
    Timeout(Duration),
    /// The cold boot took longer than the node's init timeout.
    InitTimeout(Duration),
    /// The instance died or broke the protocol.
    Crashed(String),
    /// The runtime could not be started at all (the node's problem, not the function's).
    StartFailed(String),
    /// The sandbox stopped the instance: memory, process count or a forbidden syscall.
    Limit(LimitReason),
}

impl InvokeOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            InvokeOutcome::Ok(_) => "ok",
            InvokeOutcome::HandlerError(_) => "handler-error",
            InvokeOutcome::InitError(_) => "init-error",
            InvokeOutcome::Timeout(_) => "timeout",
            InvokeOutcome::InitTimeout(_) => "init-timeout",
            InvokeOutcome::Crashed(_) => "crashed",
            InvokeOutcome::StartFailed(_) => "start-failed",
            InvokeOutcome::Limit(r) => r.as_str(),
        }
    }

    /// The same outcome, its message (where it carries one) followed by `note`.
    pub(in crate::node) fn with_note(&self, note: &str) -> InvokeOutcome {
        match self {
            InvokeOutcome::InitError(fe) => {
                let mut fe = fe.clone();
                fe.message.push_str(note);
                InvokeOutcome::InitError(fe)
            }
            InvokeOutcome::Crashed(m) => InvokeOutcome::Crashed(format!("{m}{note}")),
            other => other.clone(),
        }
    }

    /// A failed start that is the function's own doing (its import, its limits), as opposed
    /// to the node's: what the crash-loop backoff counts.
    pub(in crate::node) fn is_function_start_failure(&self) -> bool {
        matches!(
            self,
            InvokeOutcome::InitError(_)
                | InvokeOutcome::InitTimeout(_)
                | InvokeOutcome::Crashed(_)
                | InvokeOutcome::Limit(_)
                | InvokeOutcome::Timeout(_)
        )
    }
}

#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    pub function: String,
    pub version: u64,
    pub start: StartPath,
    /// The image the instance was restored from (now or when it started, for a warm start).
    pub image: Option<String>,
    /// The function snapshot the instance was restored from (now, or when it started).
    pub snapshot: Option<String>,
    pub instance: String,
    /// The instance served this request only (a cold-only function, or a native one).
    pub cold_only: bool,
    /// The function's memory size (what Lambda's REPORT line shows).
    pub memory_mb: u32,
    /// With [`InvokeOptions::tail`]: the instance's log lines during the invocation.
    pub log_lines: Option<String>,
    pub timing: Timing,
    pub outcome: InvokeOutcome,
}

#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// Collect the invocation's log lines into [`Invocation::log_lines`].
    pub tail: bool,
    /// The request id to use (an event's retries keep theirs); a new one when `None`.
    pub request_id: Option<String>,
    /// Refused at once (throttled) when every instance the function may have is busy, as
    /// Lambda refuses a synchronous call over its reserved concurrency, instead of waiting
    /// in the node's queue.
    pub no_queue: bool,
    /// The caller's client context (a JSON object: the Invoke API's `X-Amz-Client-Context`),
    /// handed to the handler.
    pub client_context: Option<serde_json::Value>,
    /// Set to true when the handler is about to run (the request admitted, an instance
    /// started): before it, the request has run nothing and may go elsewhere (a cluster's
    /// gateway retries it on another node if this one dies).
    pub running: Option<std::sync::Arc<tokio::sync::watch::Sender<bool>>>,
}
