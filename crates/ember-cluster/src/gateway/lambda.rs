//! Lambda's Invoke API through the gateway (`POST /2015-03-31/functions/{name}/invocations`),
//! for the AWS clients users know: `RequestResponse` is placed and forwarded to the node's
//! own Lambda route (which answers as Lambda does), `Event` is queued in etcd (`events.rs`),
//! `DryRun` checks the function. The function is named as on Lambda (a name, or a function
//! ARN); a cluster serves `$LATEST` only. Errors have Lambda's shape (`x-amzn-ErrorType`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ember_api::{ApiError, lambda_error};
use serde::Deserialize;

use super::Gateway;

#[derive(Debug, Deserialize)]
pub(super) struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    qualifier: Option<String>,
}

/// An error of the gateway's own, in Lambda's shape.
fn from_api(e: ApiError) -> Response {
    let kind = match e.status {
        StatusCode::NOT_FOUND => "ResourceNotFoundException",
        StatusCode::PAYLOAD_TOO_LARGE => "RequestTooLargeException",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequestsException",
        StatusCode::BAD_REQUEST => "InvalidRequestContentException",
        _ => "ServiceException",
    };
    lambda_error(e.status, kind, e.body.message)
}

/// `NAME`, `NAME:QUALIFIER` or `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`:
/// the name and the qualifier.
fn parse_name(raw: &str) -> (String, Option<String>) {
    let rest = match raw.split_once(":function:") {
        Some((_, r)) => r,
        None => raw,
    };
    match rest.split_once(':') {
        Some((n, q)) => (n.to_string(), Some(q.to_string())),
        None => (rest.to_string(), None),
    }
}

pub(super) async fn invoke(
    State(g): State<Arc<Gateway>>,
    Path(raw): Path<String>,
    Query(q): Query<QualifierQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (name, qualifier) = parse_name(&raw);
    if let Some(q) = qualifier.or(q.qualifier).filter(|q| q != "$LATEST") {
        return lambda_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!("Function not found: {name}:{q} (a cluster serves $LATEST only)"),
        );
    }
    let (def, entry) = match g.definition(&name) {
        Ok(d) => d,
        Err(e) => {
            return lambda_error(
                StatusCode::NOT_FOUND,
                "ResourceNotFoundException",
                e.body.message,
            );
        }
    };
    let kind = headers
        .get("x-amz-invocation-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("RequestResponse")
        .to_string();
    let limit = match kind.as_str() {
        "Event" => super::MAX_EVENT_PAYLOAD,
        _ => g.cfg.max_event_bytes,
    };
    let payload = match g.bodies.read(&headers, body, limit, "Invoke payload").await {
        Ok(p) => p,
        Err(e) => return from_api(e),
    };
    if !payload.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&payload).is_err() {
        return lambda_error(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            "Could not parse request body into json",
        );
    }
    match kind.as_str() {
        "DryRun" => StatusCode::NO_CONTENT.into_response(),
        "Event" => match g.enqueue(&name, &payload).await {
            Ok(id) => {
                let mut resp = StatusCode::ACCEPTED.into_response();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    resp.headers_mut().insert("x-amzn-requestid", v);
                }
                resp
            }
            Err(e) => from_api(e),
        },
        "RequestResponse" => {
            let path = format!("/2015-03-31/functions/{name}/invocations");
            match g.forward(&def, &entry, &path, &headers, payload).await {
                Ok(resp) => resp,
                Err(e) => from_api(e),
            }
        }
        other => lambda_error(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            format!("X-Amz-Invocation-Type {other:?} must be RequestResponse, Event or DryRun"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn names_as_lambda_takes_them() {
        assert_eq!(parse_name("f"), ("f".into(), None));
        assert_eq!(
            parse_name("f:$LATEST"),
            ("f".into(), Some("$LATEST".into()))
        );
        assert_eq!(
            parse_name("arn:aws:lambda:us-east-1:000000000000:function:f:3"),
            ("f".into(), Some("3".into()))
        );
        assert_eq!(
            parse_name("arn:aws:lambda:us-east-1:000000000000:function:f"),
            ("f".into(), None)
        );
    }
}
