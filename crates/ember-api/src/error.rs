//! How failures become HTTP responses: a status and `{"error": {"code", "message", ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
pub use ember_node::error_chain;
use ember_node::{NodeError, NodeErrorKind};

use crate::types::{DeployError, DeployEvent, ErrorBody, ErrorResponse};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Box<ErrorBody>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: Box::new(ErrorBody {
                code: code.to_string(),
                message: message.into(),
                error_type: None,
                traceback: Vec::new(),
                reason: None,
            }),
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The last line of a streamed deploy that failed, with the status it stands for.
    pub fn deploy_event(self) -> DeployEvent {
        DeployEvent::Error(DeployError {
            status: Some(self.status.as_u16()),
            error: *self.body,
        })
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        let code = match &e {
            NodeError::NotFound(_) => "NotFound",
            NodeError::Invalid(_) => "InvalidFunction",
            NodeError::CodeRequired(_) => "CodeRequired",
            NodeError::Code(_) => "InvalidArchive",
            NodeError::Env(_) => "PackageInstallFailed",
            NodeError::Throttled { .. } => "TooManyRequests",
            NodeError::Changed(_) | NodeError::InUse { .. } => "Conflict",
            NodeError::Image(ember_node::images::ImageError::NotFound(_)) => "NotFound",
            NodeError::Image(ember_node::images::ImageError::NeedsSandbox) => "ImagesNeedSandbox",
            NodeError::Image(_) => "ImageBuildFailed",
            NodeError::Snapshot(ember_node::SnapshotError::NotFound(_)) => "NotFound",
            _ => "Internal",
        };
        let status = match e.kind() {
            NodeErrorKind::NotFound => StatusCode::NOT_FOUND,
            NodeErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            NodeErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            NodeErrorKind::Throttled => StatusCode::TOO_MANY_REQUESTS,
            NodeErrorKind::Conflict => StatusCode::CONFLICT,
            NodeErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = error_chain(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {message}");
        }
        ApiError::new(status, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let close = matches!(
            self.status,
            StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::SERVICE_UNAVAILABLE
        );
        let mut resp =
            (self.status, axum::Json(ErrorResponse { error: *self.body })).into_response();
        if close {
            // The body was left unread: the connection cannot carry another request.
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}
