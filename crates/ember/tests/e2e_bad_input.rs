//! Every bad input of the issue, through HTTP and the CLI: a clear status and message,
//! nothing written where it should not be, and a daemon that keeps serving.

mod common;

use std::time::Duration;

use common::{Daemon, cli_at, eventually, py, zip_files};
use serde_json::json;

fn cfg(handler: &str) -> serde_json::Value {
    json!({ "handler": handler, "timeout_s": 1 })
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_failures_give_502_504_and_clear_bodies() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let code = py(r#"
import os, sys, threading, time

def handler(event, context):
    kind = event.get("kind")
    if kind == "raise":
        return 1 / 0
    if kind == "sleep":
        time.sleep(30)
    if kind == "nonjson":
        return {"x": object()}
    if kind == "nan":
        return float("nan")
    if kind == "circular":
        a = []
        a.append(a)
        return a
    if kind == "echo":
        return event
    if kind == "die-later":
        threading.Timer(0.05, lambda: os._exit(3)).start()
    if kind == "exit":
        os._exit(4)
    return {"pid": os.getpid(), "remaining": context.get_remaining_time_in_millis(),
            "fn": context.function_name, "mem": context.memory_limit_in_mb, "path": sys.path}
"#);
    let (status, body) = d.deploy_zip("faulty", cfg("main.handler"), &code).await;
    assert_eq!(status, 201, "{body}");

    let ok = d.invoke("faulty", "{}").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert_eq!(ok.body["fn"], "faulty");
    // A string, as Lambda's runtime gives it.
    assert_eq!(ok.body["mem"], "512");
    let rem = ok.body["remaining"].as_i64().unwrap();
    assert!(rem > 0 && rem <= 1000, "{rem}");
    // The function's code comes first on sys.path; Ember's own bootstrap is not on it.
    let path: Vec<String> = serde_json::from_value(ok.body["path"].clone()).unwrap();
    // (At the sandbox's fixed paths, whatever the node's home.)
    assert!(path[0].starts_with("/ember/code/"), "{path:?}");
    assert!(
        !path.iter().any(|p| p.starts_with("/ember/runtime")),
        "{path:?}"
    );

    let r = d.invoke("faulty", r#"{"kind": "raise"}"#).await;
    assert_eq!((r.status, r.error.as_str()), (502, "handler"), "{}", r.raw);
    assert_eq!(r.body["error"]["code"], "HandlerError");
    assert_eq!(r.body["error"]["type"], "ZeroDivisionError");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("division by zero")
    );
    let tb = r.body["error"]["traceback"].to_string();
    assert!(tb.contains("main.py") && tb.contains("1 / 0"), "{tb}");
    // A raising handler does not cost the instance.
    assert_eq!(d.invoke("faulty", "{}").await.start, "warm");

    for kind in ["nonjson", "nan", "circular"] {
        let r = d
            .invoke("faulty", &format!(r#"{{"kind": "{kind}"}}"#))
            .await;
        assert_eq!(r.status, 502, "{kind}");
        assert_eq!(
            r.body["error"]["type"], "Runtime.MarshalError",
            "{kind}: {}",
            r.raw
        );
    }
    let event = json!({"kind": "echo", "text": "h\u{00e9}llo \u{1F525} \"q\" \\", "n": [1.5, -2, 1e300, null, true], "o": {}});
    let r = d.invoke("faulty", &event.to_string()).await;
    assert_eq!((r.status, &r.body), (200, &event), "{}", r.raw);

    // Timeout: 504, the instance is killed and never reused.
    assert_eq!(d.instance_pids().len(), 1);
    let r = d.invoke("faulty", r#"{"kind": "sleep"}"#).await;
    assert_eq!((r.status, r.error.as_str()), (504, "timeout"), "{}", r.raw);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timeout of 1 s")
    );
    // Every process of the timed-out instance is gone within 1 s.
    assert!(eventually(Duration::from_secs(1), || d
        .instance_pids()
        .is_empty()));
    let next = d.invoke("faulty", "{}").await;
    assert_eq!((next.status, next.start.as_str()), (200, "cold-boot"));

    // An instance that dies between invocations is replaced without the caller noticing.
    let r = d.invoke("faulty", r#"{"kind": "die-later"}"#).await;
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let r = d.invoke("faulty", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "cold-boot"),
        "{}",
        r.raw
    );

    // One that dies during an invocation gives 502 and is replaced for the next.
    let r = d.invoke("faulty", r#"{"kind": "exit"}"#).await;
    assert_eq!((r.status, r.error.as_str()), (502, "crashed"), "{}", r.raw);
    assert_eq!(d.invoke("faulty", "{}").await.status, 200);

    // A handler whose import fails: 502 InitError with the traceback.
    let (status, _) = d
        .deploy_zip("broken", cfg("main.handler"), &py("import not_a_module\n"))
        .await;
    assert_eq!(status, 201);
    let r = d.invoke("broken", "{}").await;
    assert_eq!((r.status, r.error.as_str()), (502, "init"), "{}", r.raw);
    assert_eq!(r.body["error"]["type"], "Runtime.ImportModuleError");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.ends_with("Unable to import module 'main': No module named 'not_a_module'"),
        "{message}"
    );
    let (status, _) = d
        .deploy_zip("nohandler", cfg("main.missing"), &py("x = 1\n"))
        .await;
    assert_eq!(status, 201);
    let r = d.invoke("nohandler", "{}").await;
    assert_eq!(
        r.body["error"]["type"], "Runtime.HandlerNotFound",
        "{}",
        r.raw
    );
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.ends_with("Handler 'missing' missing on module 'main'"),
        "{message}"
    );

    // The CLI shows the traceback and fails.
    let out = d.cli(&["invoke", "faulty", "--data", r#"{"kind": "raise"}"#]);
    assert!(!out.ok);
    assert!(out.stderr.contains("ZeroDivisionError"), "{}", out.stderr);
    assert!(out.stderr.contains("HTTP 502"), "{}", out.stderr);
}

/// Deploys `echo`, which returns its event.
async fn deploy_echo(d: &Daemon) {
    let code = py("def handler(e, c):\n    return e\n");
    let (status, body) = d.deploy_zip("echo", cfg("main.handler"), &code).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_checked_before_anything_runs() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--max-event-bytes", "1048576"]);
    deploy_echo(&d).await;

    let r = d.invoke("echo", "{not json").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["code"], "InvalidJson", "{}", r.raw);
    let r = d.invoke("nope", "{}").await;
    assert_eq!(r.status, 404);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"nope\" does not exist")
    );
    // An empty body is the event {}.
    assert_eq!(d.invoke("echo", "").await.body, json!({}));

    // Over the limit: 413, whether the length is declared or streamed.
    let big = format!("\"{}\"", "x".repeat(2 << 20));
    let r = d.invoke("echo", &big).await;
    assert_eq!(r.status, 413, "{}", r.raw);
    assert_eq!(r.body["error"]["code"], "PayloadTooLarge");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    let r = d
        .http()
        .post(format!("{}/v1/functions/echo/invoke", d.url))
        .body(reqwest::Body::wrap_stream(tokio_stream::iter(chunks)))
        .send()
        .await;
    // The server answers 413 at the limit and stops reading: the client sees the answer, or,
    // when the close wins the race with its writes, a broken pipe. Either way it was refused.
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(
            format!("{e:?}").contains("BrokenPipe") || format!("{e:?}").contains("ConnectionReset"),
            "{e:?}"
        ),
    }
    // Just under the limit is fine.
    let fits = format!("\"{}\"", "y".repeat(1_000_000));
    assert_eq!(d.invoke("echo", &fits).await.status, 200);

    // Invalid names, handlers and settings name the rule.
    for (name, config, rule) in [
        ("Bad.Name", cfg("main.handler"), "[A-Za-z0-9_-]{1,64}"),
        ("ok", cfg("main"), "module.function"),
        (
            "ok",
            json!({"handler": "m.h", "packages": ["-r /etc/passwd"]}),
            "no options, URLs or paths",
        ),
        ("ok", json!({"handler": "m.h", "timeout_s": 0}), "timeout_s"),
        (
            "ok",
            json!({"handler": "m.h", "memory_mb": 64}),
            "between 128 and 10240",
        ),
        (
            "ok",
            json!({"handler": "m.h", "env": {"AWS_LAMBDA_X": "1"}}),
            "reserved",
        ),
        (
            "ok",
            json!({"handler": "m.h", "colour": 1}),
            "unknown field",
        ),
    ] {
        let message = d.deploy_refused(name, config).await;
        assert!(
            message.contains(rule),
            "{name}: {message} should mention {rule}"
        );
    }
    let r = d
        .http()
        .put(format!("{}/v1/functions/ok", d.url))
        .json(&json!({"handler": "m.h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a first deploy without code");

    // The CLI reports the same, and what it cannot reach.
    let out = d.cli(&[
        "deploy",
        common::examples().join("noop").to_str().unwrap(),
        "--name",
        "Bad.Name",
    ]);
    assert!(!out.ok);
    assert!(out.stderr.contains("[A-Za-z0-9_-]{1,64}"), "{}", out.stderr);
    let out = d.cli(&["invoke", "nope"]);
    assert!(
        !out.ok && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
    let out = cli_at("http://127.0.0.1:9", &["ls"]);
    assert!(
        !out.ok && out.stderr.contains("is `ember serve` running"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let mut cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            zip_files(&[("/tmp/evil.py", "x")]),
            "absolute paths",
        ),
        ("dotdot", zip_files(&[("a/../../evil.py", "x")]), "'..'"),
        ("empty", zip_files(&[]), "empty"),
        ("notzip", b"PK not really".to_vec(), "not a valid zip"),
    ];
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.add_symlink(
        "link",
        "../../../etc/passwd",
        zip::write::SimpleFileOptions::default(),
    )
    .unwrap();
    cases.push((
        "symlink",
        w.finish().unwrap().into_inner(),
        "symlinks must point inside",
    ));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        "dev",
        zip::write::SimpleFileOptions::default().external_attributes(0o020644 << 16),
    )
    .unwrap();
    cases.push(("device", w.finish().unwrap().into_inner(), "device files"));
    let names: Vec<String> = (0..50_001).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "")).collect();
    cases.push(("many", zip_files(&many), "at most 50000"));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file("bomb", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut w, &vec![0u8; 8 << 20]).unwrap();
    cases.push(("bomb", w.finish().unwrap().into_inner(), "expands past"));

    for (what, zip, rule) in cases {
        let (status, body) = d.deploy_zip("victim", cfg("main.handler"), &zip).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(body["error"]["code"], "InvalidArchive", "{what}");
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.contains(rule), "{what}: {msg}");
    }
    assert!(!std::path::Path::new("/tmp/evil.py").exists());
    assert!(!home.path().join("evil.py").exists());
    assert_eq!(
        std::fs::read_dir(home.path().join("staging"))
            .unwrap()
            .count(),
        0,
        "staging left behind"
    );
    assert_eq!(
        std::fs::read_dir(home.path().join("code")).unwrap().count(),
        0,
        "code stored"
    );
    assert_eq!(
        d.invoke("victim", "{}").await.status,
        404,
        "no function was created"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_events_get_400_on_both_apis_before_any_instance_starts() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    deploy_echo(&d).await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let events: [(&str, Vec<u8>, &str); 4] = [
        (
            "invalid UTF-8 in a string",
            b"{\"a\": \"\xff\xfe\"}".to_vec(),
            "not valid UTF-8",
        ),
        ("100,000 levels deep", deep.into_bytes(), "64 levels"),
        (
            "65 levels deep",
            format!("{}{}", "[".repeat(65), "]".repeat(65)).into_bytes(),
            "64 levels",
        ),
        ("not JSON", b"{not json".to_vec(), "not valid JSON"),
    ];
    for (what, event, says) in &events {
        let r = d
            .http()
            .post(format!("{}/v1/functions/echo/invoke", d.url))
            .body(event.clone())
            .send()
            .await
            .unwrap();
        let r = common::Invoked::from(r).await;
        assert_eq!(r.status, 400, "{what}: {}", r.raw);
        assert_eq!(r.body["error"]["code"], "InvalidJson", "{what}");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        for kind in ["RequestResponse", "Event", "DryRun"] {
            let r = d
                .http()
                .post(format!("{}/2015-03-31/functions/echo/invocations", d.url))
                .header("x-amz-invocation-type", kind)
                .body(event.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 400, "{what}, {kind}");
            assert_eq!(
                r.headers()["x-amzn-errortype"],
                "InvalidRequestContentException",
                "{what}, {kind}"
            );
            let body: serde_json::Value = r.json().await.unwrap();
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(says), "{what}, {kind}: {message}");
        }
    }
    // Nothing ran: no invocation, no instance, no queued event (give a wrongly queued one
    // the time to start).
    std::thread::sleep(Duration::from_millis(500));
    let metrics = d.metrics().await;
    assert!(
        !metrics.contains(r#"ember_invocations_total{function="echo""#),
        "{metrics}"
    );
    assert!(d.instance_pids().is_empty());
    assert_eq!(d.get_json("/v1/functions/echo").await["instances_live"], 0);
    // 64 levels and UTF-8 strings are fine.
    let ok = format!("{}\"h\u{e9} \u{1F525}\"{}", "[".repeat(64), "]".repeat(64));
    let r = d.invoke("echo", &ok).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.body,
        serde_json::from_str::<serde_json::Value>(&ok).unwrap()
    );
}
