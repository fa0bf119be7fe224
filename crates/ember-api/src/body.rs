//! Reading request bodies within limits, for the node's API and a cluster's gateway alike:
//! a size cap (413 before more is read), a deadline that grows with what arrived (408 for a
//! body that trickles in), and a budget of bytes all bodies being received may hold (503
//! past it).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use tokio_stream::StreamExt;

use crate::ConnectionLimits;
use crate::error::{ApiError, error_chain};

/// Body bytes a client is granted one more second of `body_timeout` for.
const BODY_BYTES_PER_EXTRA_SECOND: usize = 64 << 10;

/// Reads request bodies within [`ConnectionLimits`]' body timeout and buffered-bytes budget.
#[derive(Clone)]
pub struct BodyReader {
    limits: ConnectionLimits,
    /// `limits.max_buffered_body_bytes`, in KiB, less what bodies being received hold.
    budget: Arc<tokio::sync::Semaphore>,
}

impl BodyReader {
    pub fn new(limits: ConnectionLimits) -> BodyReader {
        let kib = (limits.max_buffered_body_bytes / 1024).min(tokio::sync::Semaphore::MAX_PERMITS);
        BodyReader {
            limits,
            budget: Arc::new(tokio::sync::Semaphore::new(kib)),
        }
    }

    /// Reads a body of at most `limit` bytes; more is refused with 413 before it is buffered.
    /// The body must arrive within the body timeout, plus a second per 64 KiB received: a
    /// client that trickles it in gets 408 (and the connection closes), so it cannot hold the
    /// buffer for long. While it arrives it holds its size of the bodies' budget: past the
    /// budget, 503.
    pub async fn read(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
        what: &str,
    ) -> Result<Bytes, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                format!("the {what} is larger than the limit of {limit} bytes"),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let started = tokio::time::Instant::now();
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        loop {
            let granted = self.limits.body_timeout
                + Duration::from_secs((buf.len() / BODY_BYTES_PER_EXTRA_SECOND) as u64);
            let next = tokio::time::timeout_at(started + granted, stream.next())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "RequestTimeout",
                        format!(
                            "the {what} did not arrive within {} s ({} bytes came); send it \
                         faster or smaller",
                            granted.as_secs(),
                            buf.len()
                        ),
                    )
                })?;
            match next {
                None => return Ok(Bytes::from(buf)),
                Some(Ok(chunk)) if buf.len() + chunk.len() > limit => return Err(too_large()),
                Some(Ok(chunk)) => {
                    let kib = u32::try_from(chunk.len().div_ceil(1024)).unwrap_or(u32::MAX);
                    let more = self
                        .budget
                        .clone()
                        .try_acquire_many_owned(kib)
                        .map_err(|_| {
                            ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "ServerBusy",
                                format!(
                                    "the daemon is receiving {} MiB of request bodies at once, its \
                             limit; retry shortly",
                                    self.limits.max_buffered_body_bytes >> 20
                                ),
                            )
                        })?;
                    match &mut held {
                        Some(h) => h.merge(more),
                        None => held = Some(more),
                    }
                    buf.extend_from_slice(&chunk);
                }
                Some(Err(e)) => {
                    return Err(ApiError::bad_request(
                        "BadBody",
                        format!("reading the request body failed: {}", error_chain(&e)),
                    ));
                }
            }
        }
    }
}
