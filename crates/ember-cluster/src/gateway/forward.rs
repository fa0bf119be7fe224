//! An invocation through the gateway: placed (the policy orders the nodes that serve the
//! function's current definition), then forwarded to the first node's `/v1` API.
//!
//! The node reports when the handler is about to run (`ember_api::types::forwarded`: it
//! answers at once with a stream, `started` then the answer). A request a node did not run
//! goes to the next node in the placement's order: the connection refused, the stream
//! broken before `started` (the node died while the request waited in its queue or its
//! instance was starting), or a refusal before it ran (429: its queue for the function is
//! full; 503: busy or stopping; 404: it has not deployed the function yet). A request whose
//! handler had started when the node stopped answering is not: it may have run, and running
//! it again could run it twice; the client gets 502 `NodeLost` and decides.
//!
//! The response carries the node's (status, headers, body) plus `Ember-Node` (which node
//! served it) and `Ember-Placement` (`<tier>;us=<µs the placement took>;tried=<n>`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ember_api::ApiError;
use ember_api::types::forwarded;

use super::Gateway;
use crate::placement::{Candidate, Tier};

/// Which node served the request.
pub const NODE_HEADER: &str = "ember-node";
/// How it was placed: `<tier>;us=<placement µs>;tried=<nodes tried>`.
pub const PLACEMENT_HEADER: &str = "ember-placement";

/// A node's answer larger than this is refused (Lambda's 6 MB response, its error document
/// and headers fit far below).
const MAX_ANSWER_BYTES: u64 = 32 << 20;

/// Request headers not passed to the node: hop-by-hop ones, and those the gateway sets.
fn passed(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
            | "authorization"
    )
}

/// One request of this gateway running on a node (counted for placement while it runs).
struct Running<'g> {
    g: &'g Gateway,
    key: (String, String),
}

impl<'g> Running<'g> {
    fn new(g: &'g Gateway, node: &str, function: &str) -> Running<'g> {
        let key = (node.to_string(), function.to_string());
        *g.own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default() += 1;
        Running { g, key }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut own = self.g.own.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = own.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                own.remove(&self.key);
            }
        }
    }
}

/// A node tried, and what ranked it.
struct Choice {
    id: String,
    url: String,
    tier: Tier,
}

impl Gateway {
    /// The nodes that serve `function` at `revision`, best first, and how long ordering
    /// them took.
    fn place(&self, function: &str, revision: i64) -> (Vec<Choice>, Duration) {
        let started = Instant::now();
        let records = self.records();
        // This gateway's requests running per node: all of them, and this function's.
        let mut own: HashMap<String, (u32, u32)> = HashMap::new();
        for ((node, f), n) in self.own.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let e = own.entry(node.clone()).or_default();
            e.0 = e.0.saturating_add(*n);
            if f == function {
                e.1 = e.1.saturating_add(*n);
            }
        }
        let pool = crate::placement::pool_has_image(records.values(), function);
        let mut candidates: Vec<Candidate<'_>> = records
            .values()
            .filter(|r| r.serves(function, revision) && self.reachable(&r.id))
            .map(|r| {
                let (node_own, function_own) = own.get(&r.id).copied().unwrap_or_default();
                Candidate {
                    id: &r.id,
                    holdings: r.holdings.functions.get(function),
                    in_flight: r.holdings.load.in_flight.saturating_add(node_own),
                    memory_mb: r.holdings.load.memory_mb,
                    own_in_flight: function_own,
                    pool_has_image: pool,
                }
            })
            .collect();
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        self.cfg.placement.rank(function, &mut candidates, turn);
        let chosen = candidates
            .iter()
            .filter_map(|c| {
                records.get(c.id).map(|r| Choice {
                    id: r.id.clone(),
                    url: r.url.clone(),
                    tier: Tier::of(c),
                })
            })
            .collect();
        (chosen, started.elapsed())
    }
}

pub(super) async fn invoke(
    State(g): State<Arc<Gateway>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (def, entry) = g.definition(&name)?;
    let event = g
        .bodies
        .read(&headers, body, g.cfg.max_event_bytes, "event")
        .await?;
    let path = format!("/v1/functions/{name}/invoke");
    g.forward(&def, &entry, &path, &headers, event).await
}

impl Gateway {
    /// Places a start of `def` (its etcd `entry`: the revision nodes must serve) and forwards
    /// a POST of `event` to `path` on the node (the next one when a node did not run it): the
    /// node's answer, with where it was placed.
    pub(super) async fn forward(
        &self,
        def: &crate::defs::FunctionDef,
        entry: &crate::etcd::Entry,
        path: &str,
        headers: &HeaderMap,
        event: Bytes,
    ) -> Result<Response, ApiError> {
        let (g, name) = (self, def.name.as_str());
        let (choices, took) = g.place(name, entry.mod_revision);
        if choices.is_empty() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NoNodeReady",
                format!(
                    "no node serves version {} of {name:?} now ({} nodes in the cluster; GET \
                 /v1/functions/{name} shows each one's state)",
                    entry.version,
                    g.records().len()
                ),
            ));
        }
        let timeout = Duration::from_secs(u64::from(def.config.timeout_s) + 60);
        let mut refused: Option<Response> = None;
        for (i, c) in choices.iter().enumerate() {
            let _running = Running::new(g, &c.id, name);
            let mut req = g
                .http
                .post(format!("{}{path}", c.url.trim_end_matches('/')))
                .timeout(timeout)
                .header(forwarded::REQUEST, "1")
                .body(event.clone());
            for (k, v) in headers {
                if passed(k) {
                    req = req.header(k, v);
                }
            }
            if let Some(t) = &g.cfg.node_token {
                req = req.bearer_auth(t);
            }
            let placement = format!(
                "{};us={};tried={}",
                c.tier.as_str(),
                took.as_micros(),
                i + 1
            );
            let answer = match attempt(req).await {
                Attempt::Answered { answer, started } => (answer, started),
                Attempt::NotStarted(why) => {
                    tracing::warn!(node = %c.id, "the node did not run the request ({why}): trying the next");
                    g.mark_unreachable(&c.id);
                    continue;
                }
                Attempt::Lost(why) => return Err(lost(&c.id, &why)),
            };
            let (mut out, started) = answer;
            let status = out.status();
            let h = out.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&c.id) {
                h.insert(NODE_HEADER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&placement) {
                h.insert(PLACEMENT_HEADER, v);
            }
            // Refusals before the handler ran: the queue full (429), the node busy or stopping
            // (503), the function not deployed there yet (404).
            let not_started = !started
                && matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::NOT_FOUND
                );
            if not_started && i + 1 < choices.len() {
                tracing::debug!(node = %c.id, %status, "the node did not run it: trying the next");
                refused = Some(out);
                continue;
            }
            return Ok(out);
        }
        Ok(refused.unwrap_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "NoNodeReady",
                format!("every node that serves {name:?} failed before running it: try again"),
            )
            .into_response()
        }))
    }
}

/// How one node took a forwarded request.
enum Attempt {
    /// Its answer, and whether the handler had started.
    Answered { answer: Response, started: bool },
    /// It failed before the handler ran: the request may go to another node.
    NotStarted(String),
    /// It failed after the handler started: the request may have run.
    Lost(String),
}

/// Sends `req` to a node and reads the framed answer (see `ember_api::types::forwarded`).
async fn attempt(req: reqwest::RequestBuilder) -> Attempt {
    let mut resp = match req.send().await {
        Ok(r) => r,
        // Never sent: refused, unreachable.
        Err(e) if e.is_connect() => return Attempt::NotStarted(e.to_string()),
        // Sent, and no head came back: the node answers its head as soon as it has the
        // request, so this is rare, and the request may have started.
        Err(e) => return Attempt::Lost(format!("no answer to the request: {e}")),
    };
    let framed = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == forwarded::CONTENT_TYPE);
    if !framed {
        // Refused before the invocation (by the node's API: a token, a limit): as is.
        let status = resp.status().as_u16();
        let mut out = Response::builder().status(status);
        for (k, v) in resp.headers() {
            if passed(k) {
                out = out.header(k, v);
            }
        }
        return match resp.bytes().await {
            Ok(body) => Attempt::Answered {
                answer: out
                    .body(Body::from(body))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
                started: false,
            },
            Err(e) => Attempt::NotStarted(format!("its answer broke off: {e}")),
        };
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut started = false;
    let mut head: Option<(forwarded::AnswerHead, usize)> = None;
    loop {
        if !started && buf.starts_with(forwarded::STARTED) {
            started = true;
            buf.drain(..forwarded::STARTED.len());
        }
        if head.is_none()
            && buf.starts_with(forwarded::ANSWER)
            && let Some(nl) = buf.iter().position(|&b| b == b'\n')
        {
            match serde_json::from_slice::<forwarded::AnswerHead>(&buf[forwarded::ANSWER.len()..nl])
            {
                Ok(h) if h.len > MAX_ANSWER_BYTES => {
                    return broken(true, format!("an answer of {} bytes, over the cap", h.len));
                }
                Ok(h) => {
                    // An answer other than a refusal before the run: the handler may have
                    // run, whether or not `started` came first.
                    if !matches!(h.status, 429 | 503 | 404) {
                        started = true;
                    }
                    head = Some((h, nl + 1));
                }
                Err(e) => return broken(started, format!("a bad answer head: {e}")),
            }
        }
        if let Some((h, at)) = &head
            && (buf.len() - at) as u64 >= h.len
        {
            let body = buf.split_off(*at);
            if body.len() as u64 != h.len {
                return broken(started, "more bytes than its answer holds".into());
            }
            let mut out = Response::builder().status(h.status);
            for (k, v) in &h.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v))
                    && passed(&k)
                {
                    out = out.header(k, v);
                }
            }
            return Attempt::Answered {
                answer: out
                    .body(Body::from(body))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
                started,
            };
        }
        if head.is_none() && buf.len() > forwarded::MAX_HEAD_BYTES {
            return broken(started, "an answer head over its cap".into());
        }
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) => return broken(started, "its answer ended early".into()),
            // A deadline passed: the node may be slow, not gone, and may still run it.
            Err(e) if e.is_timeout() => return Attempt::Lost(format!("no answer in time: {e}")),
            Err(e) => return broken(started, format!("its answer broke off: {e}")),
        }
    }
}

fn broken(started: bool, why: String) -> Attempt {
    if started {
        Attempt::Lost(why)
    } else {
        Attempt::NotStarted(why)
    }
}

fn lost(node: &str, e: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "NodeLost",
        format!(
            "node {node} took the request and then stopped answering ({e}): it may have run; \
             the gateway does not retry it, so that it cannot run twice"
        ),
    )
}
