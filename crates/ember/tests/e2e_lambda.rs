//! Lambda compatibility, end to end: boto3 and the AWS CLI against the Lambda API, the
//! Runtime API serving awslambdaric and a Rust `lambda_runtime` function, runtimes that
//! misbehave, native and cold-only functions under concurrency, and Event invocations across
//! a daemon restart. The clients and the Rust function are installed and built by
//! scripts/test.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Daemon, eventually, zip_files};

/// The venv with boto3 and the AWS CLI that scripts/test makes.
fn aws_tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("aws-tools");
    assert!(
        dir.join("bin/aws").exists(),
        "{} has no AWS CLI: run ./scripts/test, which installs boto3 and the AWS CLI there",
        dir.display()
    );
    dir
}

fn aws(d: &Daemon, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(aws_tools().join("bin/aws"))
        .args(["--endpoint-url", &d.url, "--output", "json"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A zip whose entries keep their Unix modes (executables for provided and native).
/// npm's aws-lambda-ric (the Node.js runtime interface client), which `./scripts/test`
/// installs: its files a function's zip needs (`bin`, `dist`, `package.json`), as paths
/// inside the zip and their bytes.
fn node_ric_files() -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-ric/node_modules/aws-lambda-ric");
    assert!(
        root.join("dist/rapid-client.node").exists(),
        "{} has no aws-lambda-ric: run ./scripts/test, which installs it there",
        root.display()
    );
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("bin"), PathBuf::from("dist")];
    out.push((
        "node_modules/aws-lambda-ric/package.json".to_string(),
        std::fs::read(root.join("package.json")).unwrap(),
    ));
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r);
            } else {
                let name = format!("node_modules/aws-lambda-ric/{}", r.display());
                out.push((name, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn zip_modes(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, mode, data) in files {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode);
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: serde_json::Value,
    raw: Vec<u8>,
}

impl Answer {
    fn header(&self, n: &str) -> &str {
        self.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

async fn lambda_invoke(d: &Daemon, name: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    lambda_invoke_at(&d.url, name, body, headers).await
}

async fn lambda_invoke_at(url: &str, name: &str, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/2015-03-31/functions/{name}/invocations"))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    answer(req.send().await.unwrap()).await
}

async fn answer(r: reqwest::Response) -> Answer {
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let raw = r.bytes().await.unwrap().to_vec();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&raw).unwrap_or_default(),
        raw,
    }
}

/// CreateFunction over plain HTTP (what boto3 sends).
async fn lambda_create(d: &Daemon, doc: serde_json::Value, zip: &[u8]) -> Answer {
    let mut doc = doc;
    doc["Code"] = serde_json::json!({
        "ZipFile": base64::engine::general_purpose::STANDARD.encode(zip)
    });
    let r = d
        .http()
        .post(format!("{}/2015-03-31/functions", d.url))
        .json(&doc)
        .send()
        .await
        .unwrap();
    answer(r).await
}

#[tokio::test]
async fn boto3_manages_and_invokes_functions_unchanged() {
    let tools = aws_tools();
    let home = tempfile::tempdir().unwrap();
    // The node queues (its default), but a synchronous Lambda call over the function's
    // concurrency is refused at once, as Lambda refuses it.
    let d = Daemon::start(home.path(), &[]);
    let (status, body) = d
        .deploy_zip(
            "slow",
            serde_json::json!({"handler": "main.handler", "max_instances": 1}),
            &common::py("import time\ndef handler(e, c):\n    time.sleep(1.5)\n    return 1\n"),
        )
        .await;
    assert!(status < 300, "{body}");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lambda/boto3_conformance.py");
    let out = Command::new(tools.join("bin/python"))
        .arg(&script)
        .arg(&d.url)
        .arg(home.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("boto3 conformance: OK"),
        "boto3 conformance failed:\n{stdout}\n{stderr}"
    );
}

/// Published versions and aliases with boto3; with the sandbox, each version's function
/// snapshot is taken at publish and restored by its first start.
#[tokio::test]
async fn boto3_publishes_versions_and_routes_aliases() {
    let tools = aws_tools();
    let home = tempfile::tempdir().unwrap();
    let snapshots = common::sandboxed();
    // A short keep-alive: instances kept ready (provisioned concurrency) must outlast it.
    let args: &[&str] = if snapshots {
        &["--snapshots", "local", "--keep-alive", "2s"]
    } else {
        eprintln!("function snapshots at publish not checked: they need the sandbox");
        &["--keep-alive", "2s"]
    };
    let d = Daemon::start(home.path(), args);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lambda/boto3_versions.py");
    let out = Command::new(tools.join("bin/python"))
        .arg(&script)
        .arg(&d.url)
        .arg(if snapshots { "1" } else { "0" })
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains("boto3 versions: OK"),
        "boto3 versions failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test]
async fn the_aws_cli_manages_and_invokes_functions_unchanged() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let zip = home.path().join("fn.zip");
    std::fs::write(
        &zip,
        zip_files(&[(
            "app.py",
            "def handler(event, context):\n    print('cli says', event.get('n'))\n    return {'n': event.get('n', 0) + 1}\n",
        )]),
    )
    .unwrap();
    let zip_arg = format!("fileb://{}", zip.display());
    let (ok, out, err) = aws(
        &d,
        &[
            "lambda",
            "create-function",
            "--function-name",
            "cli-fn",
            "--runtime",
            "python3.11",
            "--handler",
            "app.handler",
            "--role",
            "arn:aws:iam::123456789012:role/r",
            "--zip-file",
            &zip_arg,
            "--timeout",
            "7",
            "--memory-size",
            "256",
            "--environment",
            "Variables={STAGE=test}",
        ],
    );
    assert!(ok, "{out}{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["Timeout"], 7);
    assert_eq!(made["Environment"]["Variables"]["STAGE"], "test");
    let result = home.path().join("out.json");
    let (ok, out, err) = aws(
        &d,
        &[
            "lambda",
            "invoke",
            "--function-name",
            "cli-fn",
            "--payload",
            r#"{"n": 41}"#,
            "--log-type",
            "Tail",
            result.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}{err}");
    let meta: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(meta["StatusCode"], 200, "{out}");
    let log = base64::engine::general_purpose::STANDARD
        .decode(meta["LogResult"].as_str().unwrap())
        .unwrap();
    assert!(
        String::from_utf8_lossy(&log).contains("cli says 41"),
        "{out}"
    );
    let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(got, serde_json::json!({"n": 42}));
    let (ok, out, _) = aws(&d, &["lambda", "list-functions"]);
    assert!(ok && out.contains("\"cli-fn\""), "{out}");
    let (ok, out, err) = aws(
        &d,
        &[
            "lambda",
            "update-function-configuration",
            "--function-name",
            "cli-fn",
            "--description",
            "changed",
        ],
    );
    assert!(ok && out.contains("\"changed\""), "{out}{err}");
    let (ok, _, err) = aws(
        &d,
        &["lambda", "get-function", "--function-name", "missing"],
    );
    assert!(!ok && err.contains("ResourceNotFoundException"), "{err}");
    let (ok, out, err) = aws(
        &d,
        &["lambda", "delete-function", "--function-name", "cli-fn"],
    );
    assert!(ok, "{out}{err}");
    let (ok, _, err) = aws(&d, &["lambda", "get-function", "--function-name", "cli-fn"]);
    assert!(!ok && err.contains("ResourceNotFoundException"), "{err}");
}

#[tokio::test]
async fn a_token_decides_access_whatever_the_signature() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--token", "s3cret"]);
    // The CLI signs with the access key id: Ember's token opens, anything else is refused
    // the way Lambda refuses an unknown key.
    let (ok, _, err) = aws(&d, &["lambda", "list-functions"]);
    assert!(!ok && err.contains("UnrecognizedClientException"), "{err}");
    let out = Command::new(aws_tools().join("bin/aws"))
        .args(["--endpoint-url", &d.url, "lambda", "list-functions"])
        .env("AWS_ACCESS_KEY_ID", "s3cret")
        .env("AWS_SECRET_ACCESS_KEY", "anything")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A function URL with AuthType NONE is public; with AWS_IAM it takes the token.
    let zip = home.path().join("pub.zip");
    std::fs::write(
        &zip,
        common::py("def handler(e, c):\n    return {'ok': 1}\n"),
    )
    .unwrap();
    let signed = |args: &[&str]| {
        let out = Command::new(aws_tools().join("bin/aws"))
            .args(["--endpoint-url", &d.url, "lambda"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "s3cret")
            .env("AWS_SECRET_ACCESS_KEY", "anything")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    let fileb = format!("fileb://{}", zip.display());
    signed(&[
        "create-function",
        "--function-name",
        "pub",
        "--runtime",
        "python3.12",
        "--role",
        "r",
        "--handler",
        "main.handler",
        "--zip-file",
        &fileb,
    ]);
    signed(&[
        "create-function-url-config",
        "--function-name",
        "pub",
        "--auth-type",
        "NONE",
    ]);
    let url = format!("{}/lambda-url/pub/", d.url);
    let http = reqwest::Client::new();
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"ok": 1})
    );
    signed(&[
        "update-function-url-config",
        "--function-name",
        "pub",
        "--auth-type",
        "AWS_IAM",
    ]);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 403);
    let r = http.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A browser's CORS preflight carries no credentials: with Cors it is answered (without
    // the function), and the request it clears still needs the token.
    let preflight = || {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "GET")
            .send()
    };
    assert_eq!(preflight().await.unwrap().status(), 403, "no Cors yet");
    signed(&[
        "update-function-url-config",
        "--function-name",
        "pub",
        "--cors",
        "AllowOrigins=https://app.example,AllowMethods=GET",
    ]);
    let r = preflight().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = http
        .get(&url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // What the handler would not take as a preflight (an Origin that is not text) is no
    // preflight to the token check either: it never reaches the function without a token.
    let odd = reqwest::header::HeaderValue::from_bytes(b"https://a\xff").unwrap();
    let r = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", odd)
        .header("access-control-request-method", "GET")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn the_node_runtime_interface_client_serves_a_handler_under_the_filter() {
    // A `provided` function whose bootstrap runs `node` with npm's aws-lambda-ric: Node.js
    // under the sandbox's seccomp filter, and the client's error `trace` kept.
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let index = b"exports.handler = async (event, context) => {\n  \
        if (event.fail) throw new RangeError('too far');\n  \
        return {ric: true, event, fn: context.functionName};\n};\n";
    let bootstrap =
        b"#!/bin/sh\nexec node node_modules/aws-lambda-ric/bin/index.mjs \"$_HANDLER\"\n";
    let ric = node_ric_files();
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("index.js", 0o644, &index[..]),
        ("bootstrap", 0o755, &bootstrap[..]),
    ];
    files.extend(ric.iter().map(|(n, b)| (n.as_str(), 0o644, b.as_slice())));
    let (status, body) = d
        .deploy_zip(
            "node-ric",
            serde_json::json!({"runtime": "provided", "handler": "index.handler",
                               "timeout_s": 20}),
            &zip_modes(&files),
        )
        .await;
    assert!(status < 300, "{body}");
    let a = lambda_invoke(&d, "node-ric", r#"{"x": 1}"#, &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
    assert_eq!(
        a.body,
        serde_json::json!({"ric": true, "event": {"x": 1}, "fn": "node-ric"}),
        "{}",
        a.body
    );
    let e = lambda_invoke(&d, "node-ric", r#"{"fail": true}"#, &[]).await;
    assert_eq!(e.header("x-amz-function-error"), "Unhandled");
    assert_eq!(
        (&e.body["errorType"], &e.body["errorMessage"]),
        (&"RangeError".into(), &"too far".into()),
        "{}",
        e.body
    );
    // The client posts its frames as `trace`: they reach Lambda's stackTrace.
    let trace = e.body["stackTrace"].as_array().cloned().unwrap_or_default();
    assert!(
        trace
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("index.js"))),
        "{}",
        e.body
    );
}

#[tokio::test]
async fn awslambdaric_serves_a_python_handler_through_the_runtime_api() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let app = r#"import os
def handler(event, context):
    print('ric handling', context.aws_request_id)
    if event.get('fail'):
        raise RuntimeError('ric asked to fail')
    return {'echo': event, 'fn': context.function_name, 'arn': context.invoked_function_arn,
            'left_ms': context.get_remaining_time_in_millis(),
            'trace': os.environ.get('_X_AMZN_TRACE_ID', '')}
"#;
    let bootstrap = b"#!/bin/sh\nexec python3 -m awslambdaric \"$_HANDLER\"\n";
    let zip = zip_modes(&[
        ("app.py", 0o644, app.as_bytes()),
        ("bootstrap", 0o755, bootstrap),
    ]);
    let (status, body) = d
        .deploy_zip(
            "ric",
            serde_json::json!({"runtime": "provided", "handler": "app.handler",
                               "packages": ["awslambdaric"], "timeout_s": 20}),
            &zip,
        )
        .await;
    assert!(status < 300, "{body}");
    let a = lambda_invoke(&d, "ric", r#"{"x": 1}"#, &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
    assert_eq!(a.header("x-amz-function-error"), "", "{}", a.body);
    assert_eq!(a.body["echo"], serde_json::json!({"x": 1}));
    assert_eq!(a.body["fn"], "ric");
    assert_eq!(
        a.body["arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:ric"
    );
    let left = a.body["left_ms"].as_i64().unwrap();
    assert!((1..=20_000).contains(&left), "{left}");
    assert!(a.body["trace"].as_str().unwrap().starts_with("Root=1-"));
    assert_eq!(a.header("ember-start"), "cold-boot");
    // Warm: the same runtime asks for the next event.
    let b = lambda_invoke(&d, "ric", r#"{"x": 2}"#, &[]).await;
    assert_eq!(b.header("ember-start"), "warm");
    assert_eq!(b.header("ember-instance"), a.header("ember-instance"));
    let e = lambda_invoke(&d, "ric", r#"{"fail": true}"#, &[]).await;
    assert_eq!(e.status, 200);
    assert_eq!(e.header("x-amz-function-error"), "Unhandled");
    assert_eq!(e.body["errorType"], "RuntimeError", "{}", e.body);
    assert_eq!(e.body["errorMessage"], "ric asked to fail");
    d.assert_logged("ric", &["ric handling"]);
}

fn rust_lambda_bootstrap() -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/examples/release/bootstrap");
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; ./scripts/test builds examples/rust-lambda there",
            p.display()
        )
    })
}

#[tokio::test]
async fn a_rust_lambda_runtime_function_runs_unchanged() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let zip = zip_modes(&[("bootstrap", 0o755, &rust_lambda_bootstrap())]);
    let made = lambda_create(
        &d,
        serde_json::json!({"FunctionName": "rusty", "Runtime": "provided.al2023",
            "Handler": "bootstrap", "Role": "arn:aws:iam::1:role/r"}),
        &zip,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(made.body["Runtime"], "provided.al2023");
    let a = lambda_invoke(
        &d,
        "rusty",
        r#"{"name": "ferris"}"#,
        &[("X-Amz-Log-Type", "Tail")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
    assert_eq!(a.body["message"], "hello, ferris");
    assert_eq!(a.body["request_id"], a.header("x-amzn-requestid"));
    assert!(a.body["deadline_ms"].as_u64().unwrap() > 0);
    let tail = base64::engine::general_purpose::STANDARD
        .decode(a.header("x-amz-log-result"))
        .unwrap();
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.contains("rust handling"), "{tail}");
    let e = lambda_invoke(&d, "rusty", r#"{"fail": true}"#, &[]).await;
    assert_eq!(e.header("x-amz-function-error"), "Unhandled");
    assert_eq!(e.body["errorMessage"], "asked to fail", "{}", e.body);
    // A bad event is the function's error too, and the runtime lives on.
    let e = lambda_invoke(&d, "rusty", r#"{"name": 5}"#, &[]).await;
    assert_eq!(e.header("x-amz-function-error"), "Unhandled", "{}", e.body);
    let a = lambda_invoke(&d, "rusty", r#"{}"#, &[]).await;
    assert_eq!(a.body["message"], "hello, world");
    assert_eq!(a.header("ember-start"), "warm");
}

/// A custom runtime in Python (Debian's, no packages) that does what `behaviour` says.
fn runtime_script(behaviour: &str) -> Vec<u8> {
    let base = r#"#!/usr/bin/python3
import http.client, json, os, sys, time
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
conn = http.client.HTTPConnection(host, int(port))
def call(method, path, body=b""):
    conn.request(method, "/2018-06-01/runtime/" + path, body=body)
    r = conn.getresponse()
    return r.status, dict(r.getheaders()), r.read()
"#;
    format!("{base}{behaviour}\n").into_bytes()
}

#[tokio::test]
async fn custom_runtimes_that_misbehave_get_lambdas_answers() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let cases: &[(&str, &str)] = &[
        ("exits", "sys.exit(3)"),
        (
            "init-error",
            r#"print(call("POST", "init/error", json.dumps({"errorMessage": "no config", "errorType": "Config.Missing"}).encode())[0]); time.sleep(60)"#,
        ),
        ("never-next", "time.sleep(60)"),
        (
            "never-answers",
            r#"call("GET", "invocation/next"); time.sleep(60)"#,
        ),
        (
            "hostile",
            r#"s, h, ev = call("GET", "invocation/next")
rid = h["Lambda-Runtime-Aws-Request-Id"]
bogus = call("POST", "invocation/not-" + rid + "/response", b"{}")
late = call("POST", "init/error", b"{}")
missing = call("GET", "no/such/route")
assert all(h.get("Content-Type") for _, h, _ in (bogus, late, missing))
answer = {"bogus": [bogus[0], json.loads(bogus[2])["errorType"]], "late_init_error": late[0],
          "missing": missing[0], "deadline": int(h["Lambda-Runtime-Deadline-Ms"]),
          "arn": h["Lambda-Runtime-Invoked-Function-Arn"], "trace": h["Lambda-Runtime-Trace-Id"],
          "ct": h["Content-Type"]}
call("POST", "invocation/" + rid + "/response", json.dumps(answer).encode())
time.sleep(60)"#,
        ),
        (
            "huge",
            r#"s, h, ev = call("GET", "invocation/next")
rid = h["Lambda-Runtime-Aws-Request-Id"]
print("huge answer got", call("POST", "invocation/" + rid + "/response", b"1" * (7 << 20))[0], flush=True)
time.sleep(60)"#,
        ),
    ];
    for (name, behaviour) in cases {
        let zip = zip_modes(&[("bootstrap", 0o755, &runtime_script(behaviour))]);
        let (status, body) = d
            .deploy_zip(
                name,
                serde_json::json!({"runtime": "provided", "handler": "x", "timeout_s": 2}),
                &zip,
            )
            .await;
        assert!(status < 300, "{name}: {body}");
    }
    let t0 = Instant::now();
    let a = lambda_invoke(&d, "exits", "{}", &[]).await;
    assert_eq!(a.header("x-amz-function-error"), "Unhandled");
    assert_eq!(a.body["errorType"], "Runtime.ExitError", "{}", a.body);
    let a = lambda_invoke(&d, "init-error", "{}", &[]).await;
    assert_eq!(a.header("x-amz-function-error"), "Unhandled");
    assert_eq!(a.body["errorType"], "Config.Missing", "{}", a.body);
    assert_eq!(a.body["errorMessage"], "no config");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    for name in ["never-next", "never-answers"] {
        let t = Instant::now();
        let a = lambda_invoke(&d, name, "{}", &[]).await;
        assert_eq!(a.header("x-amz-function-error"), "Unhandled", "{name}");
        assert_eq!(
            a.body["errorType"], "Sandbox.Timedout",
            "{name}: {}",
            a.body
        );
        assert!(
            a.body["errorMessage"]
                .as_str()
                .unwrap()
                .contains("Task timed out after 2.00 seconds"),
            "{}",
            a.body
        );
        // The function's timeout, not the node's init timeout (60 s).
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "{name}: {:?}",
            t.elapsed()
        );
    }
    let a = lambda_invoke(&d, "hostile", "{}", &[]).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
    assert_eq!(
        a.body["bogus"],
        serde_json::json!([400, "InvalidRequestID"]),
        "{}",
        String::from_utf8_lossy(&a.raw)
    );
    assert_eq!(a.body["late_init_error"], 403);
    assert_eq!(a.body["missing"], 404);
    assert_eq!(a.body["ct"], "application/json");
    assert!(a.body["deadline"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(
        a.body["arn"]
            .as_str()
            .unwrap()
            .ends_with(":function:hostile")
    );
    assert!(a.body["trace"].as_str().unwrap().starts_with("Root=1-"));
    let a = lambda_invoke(&d, "huge", "{}", &[]).await;
    assert_eq!(a.header("x-amz-function-error"), "Unhandled");
    assert_eq!(
        a.body["errorType"], "Function.ResponseSizeTooLarge",
        "{}",
        a.body
    );
    d.assert_logged("huge", &["huge answer got 413"]);
    // None of it hurt the daemon.
    let h = d.get_json("/v1/health").await;
    assert_eq!(h["status"], "ok");
}

fn hello_native() -> Vec<u8> {
    std::fs::read(env!("CARGO_BIN_EXE_ember-hello")).unwrap()
}

/// `n` requests at once, answers in request order.
async fn concurrent(d: &Daemon, name: &str, n: usize) -> Vec<Answer> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (url, name) = (d.url.clone(), name.to_string());
        set.spawn(async move {
            let body = format!(r#"{{"name": "r{i}"}}"#);
            (i, lambda_invoke_at(&url, &name, &body, &[]).await)
        });
    }
    let mut out: Vec<(usize, Answer)> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, a)| a).collect()
}

#[tokio::test]
async fn native_and_cold_only_functions_under_1_10_and_40_concurrent_requests() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let zip = zip_modes(&[("bin/hello", 0o755, &hello_native())]);
    let (status, body) = d
        .deploy_zip(
            "native",
            serde_json::json!({"runtime": "native", "handler": "bin/hello", "max_instances": 40}),
            &zip,
        )
        .await;
    assert!(status < 300, "{body}");
    for n in [1, 10, 40] {
        let answers = concurrent(&d, "native", n).await;
        let mut instances = HashSet::new();
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
            assert_eq!(a.body["message"], format!("hello, r{i}"));
            assert_eq!(a.header("ember-cold-only"), "true");
            assert_eq!(a.header("ember-start"), "cold-boot");
            instances.insert(a.header("ember-instance").to_string());
        }
        assert_eq!(instances.len(), n, "a fresh instance per request");
    }
    // No instance is kept: once the requests are answered, none is left but the sandboxes
    // made ahead for the next requests (`prestart`, in the sandbox).
    let want_prestarted = if common::sandboxed() { 2 } else { 0 };
    let t0 = Instant::now();
    loop {
        let st = d.get_json("/v1/functions/native").await;
        if st["instances_live"] == want_prestarted
            && st["instances_prestarted"] == want_prestarted
            && st["instances_idle"] == 0
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "instances left running: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if common::sandboxed() {
        // A request takes a pre-made sandbox: its executable is continued, not spawned.
        let a = lambda_invoke(&d, "native", r#"{"name": "pre"}"#, &[]).await;
        assert_eq!(a.body["message"], "hello, pre");
        let timing = a.header("ember-timing");
        assert!(
            timing.contains("resume;") && !timing.contains("spawn;"),
            "{timing}"
        );
    }
    // A native executable's failure: its status and last stderr line.
    let fail = zip_modes(&[(
        "fail.sh",
        0o755,
        b"#!/bin/sh\ncat >/dev/null\necho 'bad input, giving up' >&2\nexit 4\n",
    )]);
    let (status, body) = d
        .deploy_zip(
            "native-fail",
            serde_json::json!({"runtime": "native", "handler": "fail.sh"}),
            &fail,
        )
        .await;
    assert!(status < 300, "{body}");
    let a = lambda_invoke(&d, "native-fail", "{}", &[]).await;
    assert_eq!(a.header("x-amz-function-error"), "Unhandled");
    assert_eq!(a.body["errorType"], "Runtime.ExitError");
    let msg = a.body["errorMessage"].as_str().unwrap();
    assert!(
        msg.contains("status 4") && msg.contains("bad input, giving up"),
        "{msg}"
    );
    // What a deploy refuses: no such executable, one that is not executable.
    for (handler, mode, rule) in [
        ("missing", 0o755, "does not contain"),
        ("hello", 0o644, "must be executable"),
    ] {
        let zip = zip_modes(&[("hello", mode, b"#!/bin/sh\n")]);
        let (status, body) = d
            .deploy_zip(
                "native-bad",
                serde_json::json!({"runtime": "native", "handler": handler}),
                &zip,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().contains(rule), "{body}");
    }
    // A cold-only Python function: every request its own cold boot, even one after another.
    let (status, body) = d
        .deploy_zip(
            "py-cold",
            serde_json::json!({"handler": "main.handler", "cold_only": true, "max_instances": 10}),
            &common::py("import os\ndef handler(e, c):\n    return os.getpid()\n"),
        )
        .await;
    assert!(status < 300, "{body}");
    let mut instances = HashSet::new();
    for a in concurrent(&d, "py-cold", 10).await {
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.raw));
        assert_eq!(a.header("ember-cold-only"), "true");
        assert_eq!(a.header("ember-start"), "cold-boot");
        instances.insert(a.header("ember-instance").to_string());
    }
    let a = lambda_invoke(&d, "py-cold", "{}", &[]).await;
    instances.insert(a.header("ember-instance").to_string());
    assert_eq!(instances.len(), 11);
}

#[tokio::test]
async fn event_invocations_survive_a_restart_and_failures_are_retried() {
    let home = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(home.path(), &["--event-retry-delay", "1s"]);
    let (status, body) = d
        .deploy_zip(
            "ev",
            serde_json::json!({"handler": "main.handler", "timeout_s": 10}),
            &common::py(
                r#"import time
def handler(event, context):
    print('attempt', event['id'], context.aws_request_id, flush=True)
    if event.get('fail'):
        raise ValueError('failing on purpose')
    time.sleep(event.get('sleep', 0))
    print('done', event['id'], flush=True)
"#,
            ),
        )
        .await;
    assert!(status < 300, "{body}");
    // Accepted at once, durable before the 202.
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = lambda_invoke(
            &d,
            "ev",
            &format!(r#"{{"id": "slow{i}", "sleep": 3}}"#),
            &[("X-Amz-Invocation-Type", "Event")],
        )
        .await;
        assert_eq!(a.status, 202, "{}", String::from_utf8_lossy(&a.raw));
        assert!(a.raw.is_empty());
        ids.push(a.header("x-amzn-requestid").to_string());
    }
    // Queued (or running) until done: the metric counts them.
    let m = d.metrics().await;
    assert!(m.contains(r#"ember_events_queued{function="ev"} 3"#), "{m}");
    // The daemon dies before any of them can finish.
    d.kill9();
    let log = std::fs::read_to_string(home.path().join("logs/ev.log")).unwrap_or_default();
    assert!(!log.contains("done slow"), "{log}");
    let d = Daemon::start(home.path(), &["--event-retry-delay", "1s"]);
    let done = eventually(Duration::from_secs(60), || {
        let log = std::fs::read_to_string(home.path().join("logs/ev.log")).unwrap_or_default();
        (0..3).all(|i| log.contains(&format!("done slow{i}")))
    });
    let log = std::fs::read_to_string(home.path().join("logs/ev.log")).unwrap_or_default();
    assert!(done, "events were lost across the restart:\n{log}");
    // Each keeps its request id across the restart.
    for id in &ids {
        assert!(log.contains(id.as_str()), "{id} missing:\n{log}");
    }
    // A failing event: the first attempt and two retries (after 1 s and 2 s), then dropped.
    let a = lambda_invoke(
        &d,
        "ev",
        r#"{"id": "bad", "fail": true}"#,
        &[("X-Amz-Invocation-Type", "Event")],
    )
    .await;
    assert_eq!(a.status, 202);
    let dropped = eventually(Duration::from_secs(30), || {
        std::fs::read_to_string(home.path().join("logs/ev.log"))
            .unwrap_or_default()
            .contains("dropped: handler-error at each of 3 attempts")
    });
    let log = std::fs::read_to_string(home.path().join("logs/ev.log")).unwrap_or_default();
    assert!(dropped, "{log}");
    assert_eq!(log.matches("attempt bad").count(), 3, "{log}");
    let m = d.metrics().await;
    assert!(
        m.contains(r#"ember_events_total{function="ev",reason="dropped"} 1"#),
        "{m}"
    );
    // Bad input of the Lambda API: an unknown invocation type, a payload over 1 MiB.
    let a = lambda_invoke(&d, "ev", "{}", &[("X-Amz-Invocation-Type", "Later")]).await;
    assert_eq!(a.status, 400);
    assert_eq!(
        a.header("x-amzn-errortype"),
        "InvalidParameterValueException"
    );
    let big = format!(r#"{{"id": "{}"}}"#, "x".repeat(1 << 20));
    let a = lambda_invoke(&d, "ev", &big, &[("X-Amz-Invocation-Type", "Event")]).await;
    assert_eq!(a.status, 413);
    assert_eq!(a.header("x-amzn-errortype"), "RequestTooLargeException");
}
