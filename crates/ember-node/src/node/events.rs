//! Asynchronous invocations (Lambda's `Event` type): accepted into the registry's queue,
//! durable once accepted, and run by one worker per node, as Lambda runs them:
//!
//! ```text
//! enqueue (fsync'd row) --> worker: due? run (up to `concurrency` at once)
//!   ok                          -> removed                       -> on-success destination
//!   the function failed         -> retried after retry_delay, then 2 x retry_delay (up to
//!                                  its MaximumRetryAttempts); then dropped -> on-failure
//!   could not run (throttled,   -> retried with a growing backoff (1 s .. 5 min) until
//!   no instance could start)       max_age (or its MaximumEventAgeInSeconds), then dropped
//!                                  -> on-failure destination
//!   the function is gone        -> dropped
//! ```
//!
//! At least once: an event running when the daemon stops stays queued and runs again at the
//! next start, with the same request id. A dropped event is noted in the function's log and
//! counted in `ember_events_total`. A destination (Lambda's, functions only) is invoked
//! asynchronously with Lambda's invocation record: the request, the response (or error) and
//! why (`Success`, `RetriesExhausted`, `EventAgeExceeded`).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::ReasonLabels;
use crate::registry::QueuedEvent;

use super::{InvokeOptions, InvokeOutcome, Node, NodeError, blocking};

/// Attempts of an event whose invocation failed (Lambda: the first and two retries).
const ATTEMPTS: u32 = 3;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What became of one attempt.
enum After {
    /// Its result.
    Done(Vec<u8>),
    /// The function ran and failed: counts as an attempt. Why, and the error document.
    Failed(String, serde_json::Value),
    /// It could not run: retried by age, not by attempts.
    NotRun(String),
    Gone,
}

/// What an event becomes after an attempt.
enum Fate {
    Done,
    Retry {
        wait: Duration,
        attempts: u32,
        why: String,
    },
    Dropped(String),
}

/// A failed invocation as Lambda's error document shows it (a destination's
/// `responsePayload`).
fn error_doc(outcome: &InvokeOutcome) -> serde_json::Value {
    let doc = |t: &str, m: String| serde_json::json!({"errorType": t, "errorMessage": m});
    match outcome {
        InvokeOutcome::HandlerError(fe) | InvokeOutcome::InitError(fe) => serde_json::json!({
            "errorType": fe.error_type,
            "errorMessage": fe.message,
            "stackTrace": fe.traceback,
        }),
        InvokeOutcome::Timeout(d) | InvokeOutcome::InitTimeout(d) => doc(
            "Sandbox.Timedout",
            format!("Task timed out after {:.2} seconds", d.as_secs_f64()),
        ),
        InvokeOutcome::Limit(r) => doc(
            "Runtime.ExitError",
            format!("the sandbox stopped it: {}", r.as_str()),
        ),
        InvokeOutcome::Crashed(m) | InvokeOutcome::StartFailed(m) => {
            doc("Runtime.ExitError", m.clone())
        }
        InvokeOutcome::Ok(_) => serde_json::Value::Null,
    }
}

/// Lambda's invocation record, as a destination gets it.
fn record(
    ev: &QueuedEvent,
    condition: &str,
    attempts: u32,
    response: Option<serde_json::Value>,
    failed: bool,
) -> serde_json::Value {
    let (function, version) = crate::versions::split_qualified(&ev.function);
    let version = version.unwrap_or(crate::function::LATEST);
    let payload = |b: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(b)
            .unwrap_or_else(|_| String::from_utf8_lossy(b).into_owned().into())
    };
    let mut response_context = serde_json::json!({
        "statusCode": 200,
        "executedVersion": version,
    });
    if failed {
        response_context["functionError"] = "Unhandled".into();
    }
    serde_json::json!({
        "version": "1.0",
        "timestamp": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "requestContext": {
            "requestId": ev.id,
            "functionArn": format!("{}:{version}", crate::function::function_arn(function)),
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": payload(&ev.payload),
        "responseContext": response_context,
        "responsePayload": response,
    })
}

impl Node {
    /// Queues an asynchronous invocation of `name`; returns its request id once the event
    /// is on disk.
    pub async fn enqueue(&self, name: &str, payload: Vec<u8>) -> Result<String, NodeError> {
        self.enqueue_at(name, payload, 0).await
    }

    /// [`Node::enqueue`] for a destination's record `depth` records deep.
    async fn enqueue_at(
        &self,
        name: &str,
        payload: Vec<u8>,
        depth: u32,
    ) -> Result<String, NodeError> {
        self.deployed(name)?;
        let now = now_ms();
        let ev = QueuedEvent {
            id: uuid::Uuid::new_v4().to_string(),
            function: name.to_string(),
            payload,
            attempts: 0,
            enqueued_at: now,
            next_at: now,
            depth,
        };
        let id = ev.id.clone();
        let reg = self.registry.clone();
        blocking(move || Ok(reg.enqueue(&ev)?)).await?;
        self.event_wake.notify_one();
        Ok(id)
    }

    /// Sets `ember_events_queued` from the queue (at a scrape of the metrics).
    pub(super) fn report_queue(&self) {
        let gauge = &self.metrics.events_queued;
        gauge.clear();
        match self.registry.queued_events() {
            Ok(counts) => {
                for (function, n) in counts {
                    gauge
                        .get_or_create(&crate::metrics::Metrics::fn_labels(&function))
                        .set(i64::try_from(n).unwrap_or(i64::MAX));
                }
            }
            Err(e) => tracing::warn!("reading the event queue failed: {}", super::error_chain(&e)),
        }
    }

    fn count_event(&self, function: &str, result: &str) {
        self.metrics
            .events
            .get_or_create(&ReasonLabels {
                function: function.to_string(),
                reason: result.to_string(),
            })
            .inc();
    }

    async fn run_event(&self, ev: &QueuedEvent) -> After {
        let opts = InvokeOptions {
            tail: false,
            request_id: Some(ev.id.clone()),
            no_queue: false,
            client_context: None,
            running: None,
        };
        match self.invoke_with(&ev.function, &ev.payload, opts).await {
            Ok(inv) => match inv.outcome {
                InvokeOutcome::Ok(result) => After::Done(result),
                InvokeOutcome::StartFailed(msg) => After::NotRun(msg),
                other => After::Failed(other.label().to_string(), error_doc(&other)),
            },
            Err(NodeError::NotFound(_)) => After::Gone,
            Err(e) => After::NotRun(super::error_chain(&e)),
        }
    }

    /// Records what became of an attempt of `ev`.
    async fn settle(&self, ev: QueuedEvent, after: After) {
        if self.stopping.load(Ordering::SeqCst) && !matches!(after, After::Done(_)) {
            // Cut by the daemon's own shutdown, not by the function: not an attempt. Left as
            // it is in the registry, it runs again at the next start.
            return;
        }
        let cfg = &self.cfg.events;
        // The function's own limits and destinations, where it set them.
        let own = self
            .deployed(&ev.function)
            .ok()
            .and_then(|d| d.record.config.event_invoke.clone())
            .unwrap_or_default();
        let attempts_max = own.max_retries.map_or(ATTEMPTS, |r| r + 1);
        let max_age = own
            .max_age_s
            .map_or(cfg.max_age, |s| Duration::from_secs(s.into()));
        let now = now_ms();
        let age = Duration::from_millis(now.saturating_sub(ev.enqueued_at));
        // A failed attempt counts; one that could not run does not.
        let failed = ev.attempts + 1;
        let retry = |wait, attempts, why| Fate::Retry {
            wait,
            attempts,
            why,
        };
        // Where the record of what became of it goes, and the record: made only when the
        // function has a destination for it.
        let mut dest: Option<(&str, serde_json::Value)> = None;
        let fate = match after {
            After::Done(result) => {
                dest = own.on_success.as_deref().map(|to| {
                    let result = serde_json::from_slice(&result).unwrap_or(serde_json::Value::Null);
                    (to, record(&ev, "Success", failed, Some(result), false))
                });
                Fate::Done
            }
            After::Gone => Fate::Dropped("its function was deleted".to_string()),
            After::Failed(label, _) if failed < attempts_max && age < max_age => {
                retry(cfg.retry_delay * failed, failed, label)
            }
            After::Failed(label, doc) => {
                let (condition, why) = match failed >= attempts_max {
                    true => (
                        "RetriesExhausted",
                        format!("{label} at each of {attempts_max} attempts"),
                    ),
                    false => (
                        "EventAgeExceeded",
                        format!("{label}, and it is {age:?} old (at most {max_age:?})"),
                    ),
                };
                dest = own
                    .on_failure
                    .as_deref()
                    .map(|to| (to, record(&ev, condition, failed, Some(doc), true)));
                Fate::Dropped(why)
            }
            After::NotRun(msg) if age < max_age => {
                let backoff = (age / 2).clamp(Duration::from_secs(1), Duration::from_secs(300));
                retry(backoff, ev.attempts, msg)
            }
            After::NotRun(msg) => {
                dest = own.on_failure.as_deref().map(|to| {
                    let r = record(&ev, "EventAgeExceeded", ev.attempts, None, false);
                    (to, r)
                });
                Fate::Dropped(format!("it could not run for {age:?}: {msg}"))
            }
        };
        if let Some((to, r)) = dest {
            self.deliver(&ev, to, r).await;
        }
        let reg = self.registry.clone();
        let id = ev.id.clone();
        let result = match fate {
            Fate::Retry {
                wait,
                attempts,
                why,
            } => {
                self.count_event(&ev.function, "retried");
                tracing::info!(function = %ev.function, event = %ev.id, "asynchronous invocation retried in {wait:?}: {why}");
                let at = now + wait.as_millis() as u64;
                blocking(move || Ok(reg.reschedule(&id, attempts, at)?)).await
            }
            Fate::Done => {
                self.count_event(&ev.function, "ok");
                blocking(move || Ok(reg.remove_event(&id)?)).await
            }
            Fate::Dropped(why) => {
                self.count_event(&ev.function, "dropped");
                let note = format!("asynchronous invocation {} dropped: {why}", ev.id);
                self.logs
                    .append(&ev.function, "ember", "event", note.as_bytes());
                tracing::warn!(function = %ev.function, "{note}");
                blocking(move || Ok(reg.remove_event(&id)?)).await
            }
        };
        if let Err(e) = result {
            tracing::error!(
                "updating the event queue failed: {}",
                super::error_chain(&e)
            );
        }
    }
}

impl Node {
    /// Queues `record` for destination `to` (a function) of the asynchronous invocation
    /// `ev`; a destination that cannot take it is noted in its function's log. Records that
    /// lead to records (functions naming each other) stop after [`MAX_DEPTH`] in a row, as
    /// Lambda stops recursive loops.
    async fn deliver(&self, ev: &QueuedEvent, to: &str, record: serde_json::Value) {
        let from = ev.function.as_str();
        if ev.depth >= MAX_DEPTH {
            let note = format!(
                "the record of asynchronous invocation {} was not sent to {to}: it came from \
                 {MAX_DEPTH} destination records in a row, a recursive loop",
                ev.id
            );
            self.logs.append(from, "ember", "event", note.as_bytes());
            tracing::warn!(function = from, "{note}");
            self.count_event(from, "loop-stopped");
            return;
        }
        let mut record = record;
        let mut bytes = serde_json::to_vec(&record).unwrap_or_default();
        if bytes.len() > MAX_RECORD {
            // Lambda's cap on an asynchronous payload: the record goes without the payloads.
            record["requestPayload"] = serde_json::Value::Null;
            record["responsePayload"] = serde_json::Value::Null;
            bytes = serde_json::to_vec(&record).unwrap_or_default();
        }
        let queued = match crate::function::parse_destination(to) {
            Ok((name, q)) => match self.resolve(&name, q.as_deref(), true) {
                Ok(target) => self.enqueue_at(&target, bytes, ev.depth + 1).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(NodeError::Invalid(e)),
        };
        match queued {
            Ok(_) => self.count_event(from, "destination"),
            Err(e) => {
                let note = format!(
                    "the destination {to} could not take the record of an asynchronous \
                     invocation: {}",
                    super::error_chain(&e)
                );
                self.logs.append(from, "ember", "event", note.as_bytes());
                tracing::warn!(function = from, "{note}");
            }
        }
    }
}

/// Destination records in a row after which the next is not sent (Lambda stops a
/// recursive loop after 16 invocations).
const MAX_DEPTH: u32 = 16;

/// The largest destination record with its payloads (Lambda's asynchronous payload limit).
const MAX_RECORD: usize = 1024 * 1024;

/// The node's event worker: runs due events, at most `concurrency` at once.
pub(super) async fn worker(node: Weak<Node>) {
    let busy: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    loop {
        let Some(n) = node.upgrade() else { return };
        let slots = n.event_slots.clone();
        let taken = busy.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let free = slots.available_permits();
        let due = if free > 0 {
            n.registry.due_events(now_ms(), free, &taken)
        } else {
            Ok(Vec::new())
        };
        let due = due.unwrap_or_else(|e| {
            tracing::error!("reading the event queue failed: {}", super::error_chain(&e));
            Vec::new()
        });
        for ev in due {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                break;
            };
            busy.lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ev.id.clone());
            let (node, busy) = (node.clone(), busy.clone());
            tokio::spawn(async move {
                if let Some(n) = node.upgrade() {
                    let id = ev.id.clone();
                    let after = n.run_event(&ev).await;
                    n.settle(ev, after).await;
                    busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    n.event_wake.notify_one();
                }
                drop(permit);
            });
        }
        let taken = busy.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let now = now_ms();
        let wait = match n.registry.next_due(&taken) {
            Ok(Some(at)) if slots.available_permits() > 0 => {
                Duration::from_millis(at.saturating_sub(now))
            }
            _ => Duration::from_secs(60),
        };
        let wake = n.event_wake.clone();
        drop(n);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
        }
    }
}
