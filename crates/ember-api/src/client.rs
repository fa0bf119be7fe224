//! A client for the `/v1` API, used by the CLI and the benchmark driver.

use std::time::Duration;

use reqwest::StatusCode;

use crate::types::{DeployEvent, DeployResult, ErrorResponse, StopResult, headers as h};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach ember at {url}: is `ember serve` running there? (set --url or EMBER_URL)"
    )]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
        traceback: Vec<String>,
    },
    #[error("unexpected response from ember: {0}")]
    Protocol(String),
}

/// What an invoke returned, success or not.
#[derive(Debug, Clone)]
pub struct InvokeResponse {
    pub status: u16,
    pub start: String,
    pub timing: String,
    pub request_id: String,
    pub error: Option<String>,
    pub body: bytes::Bytes,
}

impl InvokeResponse {
    /// The duration of one phase from the `Ember-Timing` header, in milliseconds.
    pub fn phase_ms(&self, phase: &str) -> Option<f64> {
        self.timing.split(", ").find_map(|p| {
            let (name, dur) = p.split_once(";dur=")?;
            if name == phase {
                dur.parse().ok()
            } else {
                None
            }
        })
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(256)
            // Below the daemon's idle timeout (60 s), so a pooled connection is not reused
            // just as the daemon closes it.
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        r.send().await.map_err(|source| ClientError::Connect {
            url: self.base.clone(),
            source,
        })
    }

    async fn fail(resp: reqwest::Response) -> ClientError {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorResponse>(&text) {
            Ok(e) => ClientError::Api {
                status,
                code: e.error.code,
                message: e.error.message,
                traceback: e.error.traceback,
            },
            Err(_) => ClientError::Protocol(format!("HTTP {status}: {text}")),
        }
    }

    async fn json(&self, r: reqwest::RequestBuilder) -> Result<serde_json::Value, ClientError> {
        let resp = self.send(r).await?;
        if !resp.status().is_success() {
            return Err(Self::fail(resp).await);
        }
        resp.json()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn health(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/health"))
            .await
    }

    /// Creates or updates a function; `body` is the configuration with `code_zip`.
    /// `progress` receives the server's progress lines (package installs).
    pub async fn deploy(
        &self,
        name: &str,
        body: &serde_json::Value,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<DeployResult, ClientError> {
        let r = self
            .req(reqwest::Method::PUT, &format!("/v1/functions/{name}"))
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .json(body);
        let mut resp = self.send(r).await?;
        if !resp.status().is_success() {
            return Err(Self::fail(resp).await);
        }
        let http_status = resp.status().as_u16();
        let mut buf = Vec::new();
        loop {
            let chunk = resp
                .chunk()
                .await
                .map_err(|e| ClientError::Protocol(format!("the deploy stream broke: {e}")))?;
            let Some(chunk) = chunk else { break };
            buf.extend_from_slice(&chunk);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                match serde_json::from_slice::<DeployEvent>(&line) {
                    Ok(DeployEvent::Progress(p)) => progress(&p),
                    Ok(DeployEvent::Done(d)) => return Ok(d),
                    Ok(DeployEvent::Error(e)) => {
                        // The status the deploy failed with; a daemon that does not send
                        // it leaves the stream's own.
                        return Err(ClientError::Api {
                            status: e.status.unwrap_or(http_status),
                            code: e.error.code,
                            message: e.error.message,
                            traceback: e.error.traceback,
                        });
                    }
                    Err(e) => return Err(ClientError::Protocol(format!("bad deploy event: {e}"))),
                }
            }
        }
        Err(ClientError::Protocol(
            "the deploy stream ended without a result".into(),
        ))
    }

    pub async fn invoke(&self, name: &str, event: Vec<u8>) -> Result<InvokeResponse, ClientError> {
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("/v1/functions/{name}/invoke"),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(event);
        let resp = self.send(r).await?;
        if resp.status() != StatusCode::OK && resp.headers().get(h::START).is_none() {
            // Not an invocation at all: unknown function, bad JSON, throttled, too large.
            return Err(Self::fail(resp).await);
        }
        Self::invocation(resp, h::REQUEST_ID, h::ERROR).await
    }

    /// An invocation's answer: Ember's headers, the request id and error from the headers
    /// named.
    async fn invocation(
        resp: reqwest::Response,
        id_header: &str,
        error_header: &str,
    ) -> Result<InvokeResponse, ClientError> {
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (start, timing, request_id, error) = (
            header(h::START).unwrap_or_default(),
            header(h::TIMING).unwrap_or_default(),
            header(id_header).unwrap_or_default(),
            header(error_header),
        );
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(InvokeResponse {
            status,
            start,
            timing,
            request_id,
            error,
            body,
        })
    }

    /// Lambda's Invoke (`X-Amz-Invocation-Type` is `RequestResponse`, `Event` or `DryRun`);
    /// `error` is `X-Amz-Function-Error`.
    pub async fn lambda_invoke(
        &self,
        name: &str,
        invocation_type: &str,
        event: Vec<u8>,
    ) -> Result<InvokeResponse, ClientError> {
        let r = self
            .req(
                reqwest::Method::POST,
                &format!("/2015-03-31/functions/{name}/invocations"),
            )
            .header("x-amz-invocation-type", invocation_type)
            .body(event);
        let resp = self.send(r).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(ClientError::Protocol(format!("HTTP {status}: {body}")));
        }
        Self::invocation(resp, "x-amzn-requestid", "x-amz-function-error").await
    }

    pub async fn list(&self) -> Result<Vec<serde_json::Value>, ClientError> {
        let v = self
            .json(self.req(reqwest::Method::GET, "/v1/functions"))
            .await?;
        Ok(v["functions"].as_array().cloned().unwrap_or_default())
    }

    pub async fn get(&self, name: &str) -> Result<serde_json::Value, ClientError> {
        self.json(self.req(reqwest::Method::GET, &format!("/v1/functions/{name}")))
            .await
    }

    pub async fn delete(&self, name: &str) -> Result<(), ClientError> {
        let resp = self
            .send(self.req(reqwest::Method::DELETE, &format!("/v1/functions/{name}")))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::fail(resp).await)
        }
    }

    pub async fn stop_instances(&self, name: &str) -> Result<usize, ClientError> {
        let v = self
            .json(self.req(
                reqwest::Method::DELETE,
                &format!("/v1/functions/{name}/instances"),
            ))
            .await?;
        let r: StopResult =
            serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(r.stopped)
    }

    /// `{"images": [...], "memory": {"resident_bytes", "budget_bytes"}}`.
    pub async fn images(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/images"))
            .await
    }

    /// Builds (or rebuilds) the image for `packages` and returns it once verified.
    pub async fn build_image(&self, packages: &[String]) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::json!({ "packages": packages });
        self.json(self.req(reqwest::Method::POST, "/v1/images").json(&body))
            .await
    }

    pub async fn remove_image(&self, id: &str) -> Result<(), ClientError> {
        let resp = self
            .send(self.req(reqwest::Method::DELETE, &format!("/v1/images/{id}")))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::fail(resp).await)
        }
    }

    /// `{"instances": [{"instance", "function", "state", "bytes", ...}], "hibernated_bytes",
    /// "hibernated_budget_bytes"}`: every instance, or `function`'s.
    pub async fn instances(
        &self,
        function: Option<&str>,
    ) -> Result<serde_json::Value, ClientError> {
        let path = match function {
            Some(f) => {
                let f = reqwest::Url::parse_with_params("http://x/", [("function", f)])
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                format!("/v1/instances?{}", f.query().unwrap_or_default())
            }
            None => "/v1/instances".to_string(),
        };
        self.json(self.req(reqwest::Method::GET, &path)).await
    }

    /// `{"snapshots": [...], "cache": {"mode", "eviction", "disk_bytes", "disk_budget_bytes",
    /// "memory_bytes", "memory_budget_bytes"}}`, and in remote mode `"store": [...]` (the
    /// snapshots only the snapshot store holds) or `"store_error"`.
    pub async fn snapshots(&self) -> Result<serde_json::Value, ClientError> {
        self.json(self.req(reqwest::Method::GET, "/v1/snapshots"))
            .await
    }

    /// Removes snapshot `id` from the node's cache; with `from_store`, its set from the
    /// snapshot store too (`id` may then be a store key).
    pub async fn remove_snapshot(&self, id: &str, from_store: bool) -> Result<(), ClientError> {
        let query = if from_store { "?store=true" } else { "" };
        let resp = self
            .send(self.req(
                reqwest::Method::DELETE,
                &format!("/v1/snapshots/{id}{query}"),
            ))
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::fail(resp).await)
        }
    }

    /// The daemon's Prometheus metrics (text format).
    pub async fn metrics(&self) -> Result<String, ClientError> {
        self.text("/metrics").await
    }

    pub async fn logs(&self, name: &str, lines: usize) -> Result<String, ClientError> {
        self.text(&format!("/v1/functions/{name}/logs?lines={lines}"))
            .await
    }

    /// A GET whose answer is text.
    async fn text(&self, path: &str) -> Result<String, ClientError> {
        let resp = self.send(self.req(reqwest::Method::GET, path)).await?;
        if !resp.status().is_success() {
            return Err(Self::fail(resp).await);
        }
        resp.text()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }
}
