//! Event invocations through the gateway (Lambda's `X-Amz-Invocation-Type: Event`): queued
//! in etcd, not on a node, so that a node that dies does not take them with it, and run by
//! whichever gateway claims each first.
//!
//! ```text
//! Invoke (Event) -> <prefix>/events/<id> (JSON, at most 256 KiB of payload; 429 past
//!                   10,000 queued or 256 MiB) -> 202
//! any gateway: due, unclaimed? -> claim <prefix>/event-claims/<id> under its own lease
//!   -> placed and forwarded like a request (forward.rs)
//!   ok                                -> event and claim deleted
//!   the function failed, or the node  -> retried after retry_delay x attempts, up to 3
//!   died after the handler started      attempts; then dropped (logged)
//!   could not run (no node, throttled) -> retried with a growing backoff (2 s .. 5 min)
//!                                        until max_age; then dropped
//!   the function is gone              -> dropped
//! ```
//!
//! At least once: a gateway that dies while it runs an event loses its lease, so its claim
//! goes with it and another gateway (or its next run) runs the event again. Every change
//! is a transaction that holds only while the claim is still this gateway's.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use ember_api::ApiError;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::Gateway;
use crate::etcd::Mirror;

/// Lambda's cap on an asynchronous invocation's payload.
pub const MAX_EVENT_PAYLOAD: usize = 256 << 10;
/// Attempts of an event whose function failed (Lambda's: the first and two retries).
const ATTEMPTS: u32 = 3;
/// Events one gateway runs at once.
const DISPATCHES: usize = 32;
/// The claims' lease.
const CLAIM_TTL: i64 = 5;
/// Events queued in the cluster at most, and their bytes in etcd: past either, an Event is
/// refused (429) rather than fill etcd's database.
const MAX_QUEUED: usize = 10_000;
const MAX_QUEUED_BYTES: usize = 256 << 20;
const EVENT_FORMAT: u32 = 1;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedEvent {
    pub format: u32,
    pub id: String,
    pub function: String,
    /// The payload, base64.
    pub payload: String,
    pub enqueued_at_ms: u64,
    /// Attempts in which the function ran and failed.
    pub attempts: u32,
    /// Attempts in which it could not run.
    pub not_run: u32,
    pub not_before_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl QueuedEvent {
    fn decode(id: &str, bytes: &[u8]) -> Option<QueuedEvent> {
        if bytes.len() > MAX_EVENT_PAYLOAD * 2 {
            return None;
        }
        let e: QueuedEvent = serde_json::from_slice(bytes).ok()?;
        (e.id == id && e.format <= EVENT_FORMAT).then_some(e)
    }
}

/// This gateway's event counters, since it started: events run to their end, put back in
/// the queue (after a failure, or because they could not run), dropped.
#[derive(Debug, Default)]
pub struct EventStats {
    pub done: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

/// What an attempt came to.
enum After {
    Done,
    Failed(String),
    NotRun(String),
    Gone,
}

impl Gateway {
    /// Queues an Event invocation of `function`; its request id.
    pub(super) async fn enqueue(&self, function: &str, payload: &[u8]) -> Result<String, ApiError> {
        if payload.len() > MAX_EVENT_PAYLOAD {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("an Event's payload is at most {MAX_EVENT_PAYLOAD} bytes"),
            ));
        }
        // The queue lives in etcd, whose whole database is capped (2 GiB by default).
        let (queued, bytes) = {
            let view = self.event_queue.view();
            let bytes: usize = view.entries.values().map(|e| e.value.len()).sum();
            (view.entries.len(), bytes)
        };
        if queued >= MAX_QUEUED || bytes + payload.len() * 2 > MAX_QUEUED_BYTES {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "the cluster's Event queue is full ({queued} events, {} MiB): try again \
                     later",
                    bytes >> 20
                ),
            ));
        }
        let now = now_ms();
        // Time first: the queue, listed in key order, runs the oldest first.
        let id = format!("{now:013}-{}", uuid::Uuid::new_v4().simple());
        let ev = QueuedEvent {
            format: EVENT_FORMAT,
            id: id.clone(),
            function: function.to_string(),
            payload: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, payload),
            enqueued_at_ms: now,
            attempts: 0,
            not_run: 0,
            not_before_ms: 0,
            last_error: None,
        };
        self.etcd
            .clone()
            .put(
                self.cfg.keys.event(&id),
                serde_json::to_vec(&ev).unwrap_or_default(),
                None,
            )
            .await
            .map_err(|e| super::etcd_failed("queuing the event", e))?;
        Ok(id)
    }

    /// Starts running the queue's events (with a lease of this gateway's own for its claims).
    pub(super) fn start_events(self: &Arc<Self>) {
        let g = self.clone();
        tokio::spawn(async move { dispatcher(g).await });
    }
}

async fn dispatcher(g: Arc<Gateway>) {
    let mut events = g.event_queue.clone();
    let claims = Mirror::start(g.etcd.clone(), g.cfg.keys.claims());
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut lease: Option<i64> = None;
    let mut keeper: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = events.changed() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if keeper.as_ref().is_some_and(|k| k.is_finished()) {
            (lease, keeper) = (None, None);
        }
        let view = events.view();
        if view.entries.is_empty() || !view.live {
            continue;
        }
        if lease.is_none() {
            match g.etcd.clone().lease_grant(CLAIM_TTL, None).await {
                Ok(l) => {
                    lease = Some(l.id());
                    keeper = Some(tokio::spawn(keep_alive(g.etcd.clone(), l.id())));
                }
                Err(e) => {
                    tracing::warn!("granting the event claims' lease: {e}");
                    continue;
                }
            }
        }
        let Some(lease) = lease else { continue };
        // The due events, picked before any await (a view held across one would make the
        // mirror copy its whole map at its next change).
        let (due, bad) = {
            let claimed = claims.view();
            let running = running.lock().unwrap_or_else(|p| p.into_inner());
            let room = DISPATCHES.saturating_sub(running.len());
            let now = now_ms();
            let mut bad = Vec::new();
            let due: Vec<(String, i64, QueuedEvent)> = view
                .entries
                .iter()
                .filter(|(id, _)| !claimed.entries.contains_key(*id) && !running.contains(*id))
                .filter_map(|(id, entry)| match QueuedEvent::decode(id, &entry.value) {
                    Some(ev) => {
                        (ev.not_before_ms <= now).then(|| (id.clone(), entry.mod_revision, ev))
                    }
                    None => {
                        bad.push(id.clone());
                        None
                    }
                })
                .take(room)
                .collect();
            (due, bad)
        };
        drop(view);
        for id in bad {
            tracing::warn!("dropping {id} from the event queue: not an event");
            let _ = g.etcd.clone().delete(g.cfg.keys.event(&id), None).await;
        }
        for (id, revision, ev) in due {
            let id = &id;
            let claim = g.cfg.keys.claim(id);
            let txn = Txn::new()
                .when([
                    Compare::version(claim.as_str(), CompareOp::Equal, 0),
                    Compare::mod_revision(g.cfg.keys.event(id), CompareOp::Equal, revision),
                ])
                .and_then([TxnOp::put(
                    claim.as_str(),
                    "claimed",
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            match g.etcd.clone().txn(txn).await {
                Ok(r) if r.succeeded() => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("claiming event {id}: {e}");
                    break;
                }
            }
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone());
            let (g, running) = (g.clone(), running.clone());
            tokio::spawn(async move {
                let after = attempt(&g, &ev, revision).await;
                settle(&g, ev.clone(), revision, lease, after).await;
                running
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&ev.id);
            });
        }
    }
}

async fn keep_alive(mut etcd: etcd_client::Client, lease: i64) {
    let Ok((mut keeper, mut acks)) = etcd.lease_keep_alive(lease).await else {
        return;
    };
    loop {
        if keeper.keep_alive().await.is_err() {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(3), acks.message()).await {
            Ok(Ok(Some(a))) if a.ttl() > 0 => {}
            _ => return,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn attempt(g: &Gateway, ev: &QueuedEvent, revision: i64) -> After {
    let Ok(payload) =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &ev.payload)
    else {
        return After::Gone;
    };
    let Ok((def, entry)) = g.definition(&ev.function) else {
        // Gone only if the definitions as seen are at least as new as the event: a view not
        // listed yet, or behind, may lack a function that exists.
        let defs = g.defs.view();
        return match defs.live && defs.revision >= revision {
            true => After::Gone,
            false => After::NotRun("the gateway has not seen the function's definition yet".into()),
        };
    };
    let path = format!("/v1/functions/{}/invoke", ev.function);
    match g
        .forward(&def, &entry, &path, &HeaderMap::new(), Bytes::from(payload))
        .await
    {
        Ok(resp) => {
            let status = resp.status();
            let error = resp
                .headers()
                .get(ember_api::types::headers::ERROR)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match (status, error) {
                (StatusCode::OK, None) => After::Done,
                (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, _) => {
                    After::NotRun(format!("HTTP {status}"))
                }
                (StatusCode::NOT_FOUND, _) => After::NotRun("not deployed on the node".into()),
                // A start that failed ran nothing of the request.
                (_, Some(e)) if e == "start" => After::NotRun("its instance did not start".into()),
                (_, Some(e)) => After::Failed(e),
                (_, None) => After::Failed(format!("HTTP {status}")),
            }
        }
        Err(e) if e.body.code == "NodeLost" => After::Failed(e.body.message),
        Err(e) if e.status == StatusCode::NOT_FOUND => After::NotRun(e.body.message),
        Err(e) => After::NotRun(e.body.message),
    }
}

/// Records what became of an attempt, while the claim is still ours.
async fn settle(g: &Gateway, mut ev: QueuedEvent, revision: i64, lease: i64, after: After) {
    let (key, claim) = (g.cfg.keys.event(&ev.id), g.cfg.keys.claim(&ev.id));
    let age = Duration::from_millis(now_ms().saturating_sub(ev.enqueued_at_ms));
    let drop_it = |why: String| {
        tracing::warn!(event = %ev.id, function = %ev.function, "event dropped: {why}");
        g.events.dropped.fetch_add(1, Ordering::Relaxed);
    };
    let keep = match after {
        After::Done => {
            g.events.done.fetch_add(1, Ordering::Relaxed);
            None
        }
        After::Gone => {
            drop_it("its function is gone".into());
            None
        }
        After::Failed(why) => {
            ev.attempts = ev.attempts.saturating_add(1);
            if ev.attempts >= ATTEMPTS || age >= g.cfg.event_max_age {
                drop_it(format!("{why}, at attempt {}", ev.attempts));
                None
            } else {
                g.events.retried.fetch_add(1, Ordering::Relaxed);
                let wait = g.cfg.event_retry_delay * ev.attempts;
                ev.not_before_ms = now_ms() + wait.as_millis() as u64;
                ev.last_error = Some(why);
                Some(ev)
            }
        }
        After::NotRun(why) => {
            if age >= g.cfg.event_max_age {
                drop_it(format!("{why}, and it is {age:?} old"));
                None
            } else {
                g.events.retried.fetch_add(1, Ordering::Relaxed);
                ev.not_run = ev.not_run.saturating_add(1);
                // 2 s, 4 s, ... 256 s, then 5 min.
                let wait = match ev.not_run {
                    n @ 1..=8 => Duration::from_secs(1 << n),
                    _ => Duration::from_secs(300),
                };
                ev.not_before_ms = now_ms() + wait.as_millis() as u64;
                ev.last_error = Some(why);
                Some(ev)
            }
        }
    };
    let ours = [
        Compare::lease(claim.as_str(), CompareOp::Equal, lease),
        Compare::mod_revision(key.as_str(), CompareOp::Equal, revision),
    ];
    let ops = match keep {
        None => vec![
            TxnOp::delete(key.as_str(), None),
            TxnOp::delete(claim.as_str(), None),
        ],
        Some(ev) => vec![
            TxnOp::put(
                key.as_str(),
                serde_json::to_vec(&ev).unwrap_or_default(),
                None,
            ),
            TxnOp::delete(claim.as_str(), None),
        ],
    };
    match g
        .etcd
        .clone()
        .txn(Txn::new().when(ours).and_then(ops))
        .await
    {
        Ok(r) if r.succeeded() => {}
        Ok(_) => tracing::warn!(
            "event {key}: this gateway's claim lapsed while it ran; another gateway runs it again"
        ),
        Err(e) => tracing::warn!("event {key}: recording its attempt failed ({e}); it runs again"),
    }
}
