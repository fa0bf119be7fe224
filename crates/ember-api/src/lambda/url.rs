//! Function URLs: an HTTP endpoint per function, as Lambda's (`CreateFunctionUrlConfig` and
//! friends), served at `/lambda-url/<function>/<path>` on the daemon's address rather than
//! on a host name of its own. A request becomes Lambda's payload format 2.0 event; the
//! handler's answer becomes the response (a `statusCode` object as the function shaped it,
//! anything else as a 200 JSON body). `AuthType` `NONE` is public (no token even when the
//! daemon has one); `AWS_IAM` takes the daemon's token as any other API call does.
//!
//! `Cors`, as Lambda carries it out: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) is answered here without invoking the function; any
//! other request from an allowed origin gets the CORS headers over the function's own.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;

use ember_node::function::FunctionUrl;
use ember_node::{FunctionStatus, InvokeOptions};

use super::{LambdaError, json_body, lambda_body, latest_of, read, redeploy};
use crate::AppState;

/// Where function URLs are served.
pub(crate) const PREFIX: &str = "/lambda-url/";

/// A Create or UpdateFunctionUrlConfig body: what it names changes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UrlRequest {
    auth_type: Option<String>,
    cors: Option<serde_json::Value>,
    invoke_mode: Option<String>,
}

/// A URL's `Cors` configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct Cors {
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_origins: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    max_age: Option<u32>,
}

impl Cors {
    /// The configuration as stored, checked as Lambda checks it.
    fn parse(v: &serde_json::Value) -> Result<Cors, String> {
        let c: Cors = serde_json::from_value(v.clone()).map_err(|e| format!("Cors: {e}"))?;
        let lists = [
            ("AllowHeaders", &c.allow_headers, 1024),
            ("AllowMethods", &c.allow_methods, 6),
            ("AllowOrigins", &c.allow_origins, 253),
            ("ExposeHeaders", &c.expose_headers, 1024),
        ];
        for (field, items, longest) in lists {
            if items.len() > 100 {
                return Err(format!("Cors.{field} may have at most 100 items"));
            }
            if let Some(bad) = items
                .iter()
                .find(|i| i.is_empty() || i.len() > longest || HeaderValue::from_str(i).is_err())
            {
                return Err(format!(
                    "Cors.{field} item {bad:?} must be 1 to {longest} printable characters"
                ));
            }
        }
        if let Some(m) = c
            .allow_methods
            .iter()
            .find(|m| *m != "*" && axum::http::Method::from_bytes(m.as_bytes()).is_err())
        {
            return Err(format!(
                "Cors.AllowMethods item {m:?} is not an HTTP method or *"
            ));
        }
        if c.max_age.is_some_and(|a| a > 86_400) {
            return Err("Cors.MaxAge must be from 0 to 86400 seconds".into());
        }
        Ok(c)
    }

    /// The `Access-Control-Allow-Origin` a request from `origin` gets, if it is allowed.
    fn allowed_origin(&self, origin: &str) -> Option<String> {
        let o = origin.trim_end_matches('/');
        if self
            .allow_origins
            .iter()
            .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o))
        {
            return Some(origin.to_string());
        }
        // With credentials a browser takes no wildcard: the origin itself.
        self.allow_origins
            .iter()
            .any(|a| a == "*")
            .then(|| match self.allow_credentials {
                true => origin.to_string(),
                false => "*".to_string(),
            })
    }

    /// The headers of a response to a request from `origin` (a preflight: `preflight`).
    fn headers(&self, origin: &str, preflight: bool, hs: &mut HeaderMap) {
        // The function's own CORS headers give way to the configuration's.
        let own: Vec<_> = hs
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for k in own {
            hs.remove(k);
        }
        hs.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(allow) = self.allowed_origin(origin) else {
            return;
        };
        let mut put = |name: axum::http::HeaderName, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                hs.insert(name, v);
            }
        };
        put(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.allow_credentials {
            put(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into());
        }
        if preflight {
            if !self.allow_methods.is_empty() {
                put(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    self.allow_methods.join(","),
                );
            }
            if !self.allow_headers.is_empty() {
                put(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    self.allow_headers.join(","),
                );
            }
            if let Some(age) = self.max_age {
                put(header::ACCESS_CONTROL_MAX_AGE, age.to_string());
            }
        } else if !self.expose_headers.is_empty() {
            put(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                self.expose_headers.join(","),
            );
        }
    }
}

/// Refuses what Ember does not serve of a URL configuration.
fn check(u: &FunctionUrl) -> Result<(), LambdaError> {
    if !matches!(u.auth_type.as_str(), "NONE" | "AWS_IAM") {
        return Err(LambdaError::invalid("AuthType must be NONE or AWS_IAM"));
    }
    if let Some(m) = u.invoke_mode.as_deref().filter(|m| *m != "BUFFERED") {
        return Err(LambdaError::invalid(format!(
            "InvokeMode {m:?} is not supported: Ember answers BUFFERED only (a function's \
             result is handed over whole)"
        )));
    }
    if let Some(c) = u.cors.as_ref().filter(|c| !c.is_null()) {
        Cors::parse(c).map_err(LambdaError::invalid)?;
    }
    Ok(())
}

/// Whether a request for a function URL may go without the daemon's token: its function's
/// URL is public (`AuthType: NONE`), or it is a CORS preflight to a URL with `Cors` (a
/// browser sends no credentials with one; it is answered without invoking the function).
pub(crate) fn is_public<B>(s: &AppState, req: &axum::http::Request<B>) -> bool {
    let Some(rest) = req.uri().path().strip_prefix(PREFIX) else {
        return false;
    };
    let name = rest.split('/').next().unwrap_or("");
    let Some(u) = s.node.get(name).ok().and_then(|st| st.record.config.url) else {
        return false;
    };
    u.auth_type == "NONE" || (preflight_origin(req).is_some() && cors_of(&u).is_some())
}

/// The origin of a CORS preflight (`OPTIONS` with a readable `Origin` and
/// `Access-Control-Request-Method`); none for any other request. The one test of a
/// preflight: the token check and the handler must agree on it.
fn preflight_origin<B>(req: &axum::http::Request<B>) -> Option<String> {
    if req.method() != axum::http::Method::OPTIONS
        || !req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    req.headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string)
}

/// A URL's `Cors`, when it has one that reads.
fn cors_of(u: &FunctionUrl) -> Option<Cors> {
    u.cors
        .as_ref()
        .filter(|c| !c.is_null())
        .and_then(|c| Cors::parse(c).ok())
}

/// The daemon's address as the client named it (its `Host`).
fn host(headers: &HeaderMap) -> &str {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1:8080")
}

fn description(host: &str, st: &FunctionStatus, u: &FunctionUrl) -> serde_json::Value {
    let mut d = serde_json::json!({
        "FunctionUrl": format!("http://{host}{PREFIX}{}/", st.record.name),
        "FunctionArn": ember_node::function::function_arn(&st.record.name),
        "AuthType": u.auth_type,
        "InvokeMode": u.invoke_mode.clone().unwrap_or_else(|| "BUFFERED".into()),
        "CreationTime": super::lambda_time(st.record.created_at),
        "LastModifiedTime": super::lambda_time(st.record.updated_at),
    });
    if let Some(c) = &u.cors {
        d["Cors"] = c.clone();
    }
    d
}

fn not_found(name: &str) -> LambdaError {
    LambdaError::missing(format!(
        "The resource you requested does not exist: function {name} has no URL"
    ))
}

async fn set(
    s: &AppState,
    raw: &str,
    headers: &HeaderMap,
    body: Body,
    create: bool,
) -> Result<Response, LambdaError> {
    // The body first: an answer sent before it is read would cost the client its connection.
    let bytes = read(s, headers, body, 64 << 10, "FunctionUrlConfig").await?;
    let st = latest_of(s, raw)?;
    let name = st.record.name.clone();
    if create && st.record.config.url.is_some() {
        return Err(LambdaError::conflict(format!(
            "Failed to create function url config for function {name}: one exists"
        )));
    }
    if !create && st.record.config.url.is_none() {
        return Err(not_found(&name));
    }
    let req: UrlRequest = json_body(&bytes)?;
    let mut u = match st.record.config.url.clone() {
        Some(u) => u,
        None => FunctionUrl {
            auth_type: req
                .auth_type
                .clone()
                .ok_or_else(|| LambdaError::invalid("AuthType is required"))?,
            cors: None,
            invoke_mode: None,
        },
    };
    if let Some(a) = req.auth_type {
        u.auth_type = a;
    }
    if req.cors.is_some() {
        u.cors = req.cors;
    }
    if req.invoke_mode.is_some() {
        u.invoke_mode = req.invoke_mode;
    }
    check(&u)?;
    let mut config = st.record.config.clone();
    config.url = Some(u.clone());
    redeploy(s, &st, config).await?;
    let st = s.node.get(&name)?;
    let status = if create {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(description(host(headers), &st, &u))).into_response())
}

/// `POST /2021-10-31/functions/{name}/url`: CreateFunctionUrlConfig.
pub(super) async fn create(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    set(&s, &raw, &headers, body, true).await
}

/// `PUT /2021-10-31/functions/{name}/url`: UpdateFunctionUrlConfig.
pub(super) async fn update(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, LambdaError> {
    set(&s, &raw, &headers, body, false).await
}

/// `GET /2021-10-31/functions/{name}/url`: GetFunctionUrlConfig.
pub(super) async fn get(
    State(s): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let name = &st.record.name;
    let u = st
        .record
        .config
        .url
        .clone()
        .ok_or_else(|| not_found(name))?;
    Ok(axum::Json(description(host(&headers), &st, &u)).into_response())
}

/// `DELETE /2021-10-31/functions/{name}/url`: DeleteFunctionUrlConfig.
pub(super) async fn delete(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, LambdaError> {
    let st = latest_of(&s, &raw)?;
    let name = &st.record.name;
    if st.record.config.url.is_none() {
        return Err(not_found(name));
    }
    let mut config = st.record.config.clone();
    config.url = None;
    redeploy(&s, &st, config).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Lambda's payload format 2.0 event for a request to `path` of a function URL.
fn event(
    req_id: &str,
    parts: &axum::http::request::Parts,
    path: &str,
    body: &[u8],
) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    let mut cookies = Vec::new();
    for (k, v) in &parts.headers {
        // The caller's credentials are the daemon's (its token, as a bearer or a SigV4 key
        // id): never handed to a tenant's code.
        if k == header::AUTHORIZATION || k.as_str() == "x-amz-security-token" {
            continue;
        }
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        if k == header::COOKIE {
            cookies.extend(v.split(';').map(|c| c.trim().to_string()));
            continue;
        }
        // Repeated headers are joined with commas, as Lambda joins them.
        match headers.get_mut(k.as_str()) {
            Some(serde_json::Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&v);
            }
            _ => {
                headers.insert(k.as_str().to_string(), v.into());
            }
        }
    }
    let query = parts.uri.query().unwrap_or("");
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        params
            .entry(k.into_owned())
            .and_modify(|p| {
                p.push(',');
                p.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    let text = std::str::from_utf8(body).ok();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ev = serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "ember",
            "domainName": parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(""),
            "http": {
                "method": parts.method.as_str(),
                "path": path,
                "protocol": format!("{:?}", parts.version),
                "sourceIp": "",
                "userAgent": parts.headers.get(header::USER_AGENT).and_then(|h| h.to_str().ok()).unwrap_or(""),
            },
            "requestId": req_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "timeEpoch": now.as_millis() as u64,
        },
        "isBase64Encoded": text.is_none(),
    });
    if !params.is_empty() {
        ev["queryStringParameters"] = serde_json::to_value(params).unwrap_or_default();
    }
    if !cookies.is_empty() {
        ev["cookies"] = cookies.into();
    }
    if !body.is_empty() {
        ev["body"] = match text {
            Some(t) => t.into(),
            None => base64::engine::general_purpose::STANDARD
                .encode(body)
                .into(),
        };
    }
    ev
}

/// The HTTP response a handler's `result` (JSON) makes, as Lambda's function URLs make it.
fn response(result: &[u8]) -> Response {
    let json = |status: StatusCode, body: Vec<u8>| {
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    };
    let v: serde_json::Value = match serde_json::from_slice(result) {
        Ok(v) => v,
        Err(_) => return json(StatusCode::OK, result.to_vec()),
    };
    let Some(obj) = v.as_object().filter(|o| o.contains_key("statusCode")) else {
        return json(StatusCode::OK, result.to_vec());
    };
    // A final status only: a function may not switch protocols or send an interim answer
    // on the daemon's connection.
    let status = obj
        .get("statusCode")
        .and_then(|c| c.as_u64())
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match obj.get("body") {
        Some(serde_json::Value::String(b)) if obj.get("isBase64Encoded") == Some(&true.into()) => {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default()
        }
        Some(serde_json::Value::String(b)) => b.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
        None => Vec::new(),
    };
    let mut r = (status, body).into_response();
    let hs = r.headers_mut();
    for (k, v) in obj
        .get("headers")
        .and_then(|h| h.as_object())
        .into_iter()
        .flatten()
    {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) && !framing(&k)
        {
            hs.insert(k, v);
        }
    }
    for c in obj
        .get("cookies")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        if let Some(Ok(v)) = c.as_str().map(HeaderValue::from_str) {
            hs.append(header::SET_COOKIE, v);
        }
    }
    r
}

/// Headers that frame the HTTP message or the connection: the daemon sets them, a function
/// may not (a `Content-Length` of its own would let it forge the connection's next
/// response).
fn framing(h: &axum::http::HeaderName) -> bool {
    matches!(
        h.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
            | "proxy-connection"
            | "proxy-authenticate"
    )
}

/// `ANY /lambda-url/{name}/{*path}`: one request to a function's URL.
pub(crate) async fn serve(State(s): State<AppState>, req: Request) -> Response {
    match serve_inner(&s, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve_inner(s: &AppState, req: Request) -> Result<Response, LambdaError> {
    let full = req.uri().path().to_string();
    let rest = full.strip_prefix(PREFIX).unwrap_or("");
    let (name, path) = match rest.split_once('/') {
        Some((n, p)) => (n.to_string(), format!("/{p}")),
        None => (rest.to_string(), "/".to_string()),
    };
    let st = s.node.get(&name).map_err(|_| not_found(&name))?;
    let Some(url) = st.record.config.url else {
        return Err(not_found(&name));
    };
    let cors = cors_of(&url);
    match (&cors, preflight_origin(&req)) {
        (Some(cors), Some(origin)) => {
            // A preflight: answered here, as Lambda answers it, without invoking the
            // function (and the only request to an AWS_IAM URL let in without the token).
            let mut r = StatusCode::OK.into_response();
            cors.headers(&origin, true, r.headers_mut());
            return Ok(r);
        }
        // Its Cors went between the token check and here: never forwarded.
        (None, Some(_)) if url.auth_type != "NONE" => return Err(LambdaError::unauthorized()),
        _ => {}
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let (parts, body) = req.into_parts();
    let bytes = read(s, &parts.headers, body, super::MAX_SYNC_PAYLOAD, "Invoke").await?;
    let request_id = uuid::Uuid::new_v4().to_string();
    let ev = event(&request_id, &parts, &path, &bytes);
    let event = serde_json::to_vec(&ev).map_err(|e| LambdaError::invalid(e.to_string()))?;
    let opts = InvokeOptions {
        tail: false,
        request_id: Some(request_id),
        no_queue: true,
        client_context: None,
        running: None,
    };
    let node = s.node.clone();
    let mut inv = tokio::spawn(async move { node.invoke_with(&name, &event, opts).await })
        .await
        .map_err(|e| super::lambda_task_failed("the invocation", e))??;
    let mut r = match lambda_body(&mut inv)? {
        Ok(payload) => response(&payload),
        // As Lambda's function URLs answer a function error: 502 with a short body.
        Err(_) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({"Message": "Internal Server Error"})),
        )
            .into_response(),
    };
    if let (Some(cors), Some(origin)) = (&cors, &origin) {
        cors.headers(origin, false, r.headers_mut());
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handlers_answer_becomes_the_response() {
        let r = response(
            br#"{"statusCode": 201, "headers": {"x-a": "1"}, "body": "made", "cookies": ["c=1"]}"#,
        );
        assert_eq!(r.status(), 201);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers()[header::SET_COOKIE], "c=1");
        let r = response(br#"{"statusCode": 200, "body": "aGk=", "isBase64Encoded": true}"#);
        assert_eq!(r.status(), 200);
        let r = response(br#"{"answer": 42}"#);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = response(br#"{"statusCode": 99999}"#);
        assert_eq!(r.status(), 500);
        // No interim status, no framing headers of the function's.
        assert_eq!(response(br#"{"statusCode": 101}"#).status(), 500);
        let r = response(
            br#"{"statusCode": 200, "body": "0123456789", "headers": {"content-length": "2",
                "transfer-encoding": "chunked", "connection": "close", "x-ok": "1"}}"#,
        );
        assert!(r.headers().get("content-length").is_none());
        assert!(r.headers().get("transfer-encoding").is_none());
        assert!(r.headers().get("connection").is_none());
        assert_eq!(r.headers()["x-ok"], "1");
    }

    #[test]
    fn cors_answers_allowed_origins_only_and_overrides_the_function() {
        let c = Cors::parse(&serde_json::json!({
            "AllowOrigins": ["https://app.example"], "AllowMethods": ["GET", "POST"],
            "AllowHeaders": ["x-custom"], "ExposeHeaders": ["x-ember"], "MaxAge": 600,
            "AllowCredentials": true}))
        .unwrap();
        let mut hs = HeaderMap::new();
        c.headers("https://app.example", true, &mut hs);
        assert_eq!(hs["access-control-allow-origin"], "https://app.example");
        assert_eq!(hs["access-control-allow-methods"], "GET,POST");
        assert_eq!(hs["access-control-allow-headers"], "x-custom");
        assert_eq!(hs["access-control-max-age"], "600");
        assert_eq!(hs["access-control-allow-credentials"], "true");
        let mut hs = HeaderMap::new();
        hs.insert("access-control-allow-origin", HeaderValue::from_static("*"));
        c.headers("https://evil.example", false, &mut hs);
        assert!(hs.get("access-control-allow-origin").is_none(), "{hs:?}");
        let mut hs = HeaderMap::new();
        c.headers("https://APP.example", false, &mut hs);
        assert_eq!(hs["access-control-expose-headers"], "x-ember");
        assert!(hs.get("access-control-allow-methods").is_none());
        let any = Cors::parse(&serde_json::json!({"AllowOrigins": ["*"]})).unwrap();
        assert_eq!(
            any.allowed_origin("https://x.example").as_deref(),
            Some("*")
        );
        for bad in [
            serde_json::json!({"AllowMethods": ["FETCHALL"]}),
            serde_json::json!({"MaxAge": 86401}),
            serde_json::json!({"AllowOrigins": [""]}),
            serde_json::json!({"AllowOrigin": ["*"]}),
            serde_json::json!({"AllowHeaders": ["a\nb"]}),
        ] {
            assert!(Cors::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_request_becomes_a_payload_2_event() {
        let req = axum::http::Request::builder()
            .method("POST")
            .uri("/lambda-url/f/a/b?x=1&x=2&y=z")
            .header("content-type", "text/plain")
            .header("cookie", "s=1; t=2")
            .header("authorization", "Bearer the-daemon-token")
            .header("x-amz-security-token", "t")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let ev = event("r1", &parts, "/a/b", b"hello");
        assert_eq!(ev["version"], "2.0");
        assert_eq!(ev["rawPath"], "/a/b");
        assert_eq!(ev["rawQueryString"], "x=1&x=2&y=z");
        assert_eq!(ev["queryStringParameters"]["x"], "1,2");
        assert_eq!(ev["cookies"], serde_json::json!(["s=1", "t=2"]));
        assert_eq!(ev["requestContext"]["http"]["method"], "POST");
        assert_eq!(ev["body"], "hello");
        assert!(ev["headers"].get("authorization").is_none(), "{ev}");
        assert!(ev["headers"].get("x-amz-security-token").is_none(), "{ev}");
        assert_eq!(ev["isBase64Encoded"], false);
        let ev = event("r2", &parts, "/", &[0xff, 0xfe]);
        assert_eq!(ev["isBase64Encoded"], true);
        assert_eq!(ev["body"], "//4=");
    }
}
