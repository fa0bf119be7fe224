//! InvokeWithResponseStream's answer: the result in an AWS event stream
//! (`application/vnd.amazon.eventstream`, framed by `aws-smithy-eventstream`, the AWS SDKs'
//! own implementation): `PayloadChunk` events, then one `InvokeComplete` (the error, if the
//! function failed, and the log tail). Ember's runtimes hand over a result whole, so the
//! stream is the buffered result: its first byte comes when the function returns, as Lambda
//! answers a function that does not stream.

use aws_smithy_types::event_stream::{Header, HeaderValue as EventHeader, Message};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{LambdaError, lambda_body, log_result};
use crate::routes::ember_headers;

/// Bytes of the result per `PayloadChunk`.
const CHUNK: usize = 64 << 10;

/// One event of the stream.
fn event(kind: &'static str, content_type: &'static str, payload: Vec<u8>) -> Message {
    Message::new(payload)
        .add_header(Header::new(":event-type", EventHeader::String(kind.into())))
        .add_header(Header::new(
            ":content-type",
            EventHeader::String(content_type.into()),
        ))
        .add_header(Header::new(
            ":message-type",
            EventHeader::String("event".into()),
        ))
}

/// The events of an invocation's answer, framed.
fn frames(payload: &[u8], complete: &serde_json::Value) -> Result<Vec<u8>, LambdaError> {
    let mut out = Vec::with_capacity(payload.len() + 256);
    let mut write = |m: Message| {
        aws_smithy_eventstream::frame::write_message_to(&m, &mut out).map_err(|e| {
            LambdaError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ServiceException",
                format!("framing the response stream failed: {e}"),
            )
        })
    };
    for chunk in payload.chunks(CHUNK) {
        write(event(
            "PayloadChunk",
            "application/octet-stream",
            chunk.to_vec(),
        ))?;
    }
    let done = serde_json::to_vec(complete).unwrap_or_default();
    write(event("InvokeComplete", "application/json", done))?;
    Ok(out)
}

/// The answer to an InvokeWithResponseStream that ran (`version` ran).
pub(super) fn response(
    mut inv: ember_node::Invocation,
    version: &str,
) -> Result<Response, LambdaError> {
    let mut complete = serde_json::Map::new();
    let payload = match lambda_body(&mut inv)? {
        Ok(payload) => payload,
        Err(doc) => {
            let code = doc["errorType"].as_str().unwrap_or("Unhandled").to_string();
            complete.insert("ErrorCode".into(), code.into());
            complete.insert("ErrorDetails".into(), doc.to_string().into());
            Vec::new()
        }
    };
    if let Some(tail) = log_result(&inv) {
        complete.insert("LogResult".into(), tail.into());
    }
    let body = frames(&payload, &serde_json::Value::Object(complete))?;
    let mut resp = (StatusCode::OK, body).into_response();
    let hs = resp.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    ember_headers(hs, &inv);
    for (n, v) in [
        ("x-amzn-requestid", inv.request_id.as_str()),
        ("x-amz-executed-version", version),
    ] {
        if let Ok(v) = HeaderValue::from_str(v) {
            hs.insert(n, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::read_message_from;

    #[test]
    fn a_result_is_payload_chunks_then_invoke_complete() {
        let payload = vec![b'x'; CHUNK + 10];
        let framed = frames(&payload, &serde_json::json!({"LogResult": "dGFpbA=="})).unwrap();
        let mut buf = &framed[..];
        let mut got = Vec::new();
        let mut kinds = Vec::new();
        while !buf.is_empty() {
            let m = read_message_from(&mut buf).unwrap();
            let kind = m
                .headers()
                .iter()
                .find(|h| h.name().as_str() == ":event-type")
                .and_then(|h| h.value().as_string().ok().map(|s| s.as_str().to_string()))
                .unwrap();
            if kind == "PayloadChunk" {
                got.extend_from_slice(m.payload());
            } else {
                let done: serde_json::Value = serde_json::from_slice(m.payload()).unwrap();
                assert_eq!(done["LogResult"], "dGFpbA==");
            }
            kinds.push(kind);
        }
        assert_eq!(got, payload);
        assert_eq!(kinds, ["PayloadChunk", "PayloadChunk", "InvokeComplete"]);
    }
}
