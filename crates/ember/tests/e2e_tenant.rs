//! Privileged: a hostile tenant against the real daemon. Archives that try to make the root
//! daemon read or write outside the function's tree, namespace creation from inside an
//! instance on every start path, a function that crashes at import on a shared image, limit
//! events charged to the invocation they happened in, and the host network from an image.

mod common;

use std::io::Write;

use common::{Daemon, need_sandbox, py};
use serde_json::json;

const S_IFLNK: u32 = 0o120000;

/// An archive entry: name, mode (`S_IFLNK | ...` for a symlink), content or link target.
type Entry<'a> = (&'a str, u32, &'a [u8]);

/// A zip of files (mode) and symlinks (`S_IFLNK | mode`, content = target).
fn zip_entries(entries: &[Entry]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, mode, data) in entries {
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(*mode & 0o7777);
        if mode & S_IFLNK == S_IFLNK {
            w.add_symlink(*name, std::str::from_utf8(data).unwrap(), opts)
                .unwrap();
        } else {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

const PROBE: &str = include_str!("../../ember-sandbox/tests/fixtures/ns_probe.py");

/// Every archive that tried to escape gets a 400 naming its entry, with no host path, and
/// nothing lands outside the tree; the daemon's settings (with its token) stay unread.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_archives_get_400_and_reach_nothing_outside() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Stands for the daemon's settings with its token (what the escape once read).
    std::fs::write(
        home.path().join("secret.toml"),
        "token = \"secret-token-123\"\n",
    )
    .unwrap();
    let victim = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let home_s = home.path().to_string_lossy().into_owned();
    let victim_s = victim.path().to_string_lossy().into_owned();
    let climb = format!(
        "{}{}{home_s}/secret.toml",
        "s/".repeat(30),
        "../".repeat(40)
    );
    let to_victim = format!("{}{}{victim_s}", "s/".repeat(30), "../".repeat(40));
    let main = b"def handler(e, c):\n    return 1\n" as &[u8];
    let long = "a".repeat(300);
    let deep = format!("{}f.py", "d/".repeat(3000));
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "x.py",
            vec![
                ("main.py", 0o644, main),
                ("s", S_IFLNK | 0o777, b"."),
                ("x.py", S_IFLNK | 0o777, climb.as_bytes()),
            ],
            "resolves outside it",
        ),
        (
            "__pycache__",
            vec![
                ("main.py", 0o644, main),
                ("s", S_IFLNK | 0o777, b"."),
                ("__pycache__", S_IFLNK | 0o777, to_victim.as_bytes()),
            ],
            "resolves outside it",
        ),
        (
            "d/lnk/x",
            vec![
                ("main.py", 0o644, main),
                ("d/lnk", S_IFLNK | 0o777, b".."),
                ("d/lnk/x", 0o644, b"x"),
            ],
            "symlink in the archive",
        ),
        (
            &long,
            vec![("main.py", 0o644, main), (&long, 0o644, b"x")],
            "longer than 255",
        ),
        (
            "d/d/d",
            vec![("main.py", 0o644, main), (&deep, 0o644, b"x")],
            "longer than 1024",
        ),
        (
            "a/b.py",
            vec![
                ("main.py", 0o644, main),
                ("a", 0o644, b"x"),
                ("a/b.py", 0o644, b"y"),
            ],
            "which is a file",
        ),
    ];
    for (entry, files, rule) in cases {
        let (status, body) = d
            .deploy_zip(
                "evil",
                json!({"handler": "main.handler"}),
                &zip_entries(&files),
            )
            .await;
        let text = body.to_string();
        assert_eq!(status, 400, "{entry}: {text}");
        assert!(text.contains(entry), "{entry}: {text}");
        assert!(text.contains(rule), "{entry}: {rule}: {text}");
        assert!(!text.contains(&home_s), "host path in {text}");
    }
    // A duplicate name (patched in, since zip writers refuse to make one).
    let mut dup = zip_entries(&[("main.py", 0o644, main), ("mainx.py", 0o644, b"x")]);
    for i in 0..dup.len() - 8 {
        if &dup[i..i + 8] == b"mainx.py" {
            dup[i..i + 8].copy_from_slice(b"main.py\0");
        }
    }
    let (status, body) = d
        .deploy_zip("evil", json!({"handler": "main.handler"}), &dup)
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 0);
    let leaked = std::process::Command::new("grep")
        .args(["-rl", "secret-token-123"])
        .arg(home.path().join("code"))
        .output()
        .unwrap();
    assert!(leaked.stdout.is_empty(), "the token was copied into code/");
}

/// The namespace probe, as a handler on every start path: a cold boot, an image, a
/// `provided` runtime and a `native` executable. Each route is refused inside the instance.
#[tokio::test(flavor = "multi_thread")]
async fn no_start_path_lets_an_instance_make_a_namespace() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    let want = json!({
        "clone": "killed:SIGSYS", "clone3": "errno:38", "unshare": "killed:SIGSYS",
        "setns": "killed:SIGSYS", "af_alg": "errno:97", "af_packet": "errno:97",
        "sockets": "ok", "fork": "ok", "thread": "ok"
    });
    let probe_py = zip_entries(&[("main.py", 0o644, PROBE.as_bytes())]);
    // Cold boot (no image covers it yet), then from an image of the same packages.
    d.deploy_ok(
        "probe",
        json!({"handler": "main.handler", "packages": ["six"], "timeout_s": 20}),
        &probe_py,
    )
    .await;
    let r = d.invoke("probe", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "cold-boot"),
        "{}",
        r.raw
    );
    assert_eq!(r.body, want, "cold boot");
    d.build_image("six");
    d.stop_instances("probe").await;
    let r = d.invoke("probe", "{}").await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{}", r.raw);
    assert_eq!(r.body, want, "image");

    // provided: a bootstrap speaking the Runtime API with the standard library only.
    let library = PROBE.replace("if __name__ == \"__main__\":", "if False:");
    let bootstrap = format!(
        "#!/usr/bin/python3 -I\nimport json, os, urllib.request\n{library}\n\
         api = 'http://' + os.environ['AWS_LAMBDA_RUNTIME_API'] + '/2018-06-01/runtime/invocation/'\n\
         while True:\n\
         \x20   r = urllib.request.urlopen(api + 'next')\n\
         \x20   rid = r.headers['Lambda-Runtime-Aws-Request-Id']\n\
         \x20   body = json.dumps(probe()).encode()\n\
         \x20   urllib.request.urlopen(urllib.request.Request(api + rid + '/response', data=body, method='POST'))\n"
    );
    let zip = zip_entries(&[("bootstrap", 0o755, bootstrap.as_bytes())]);
    d.deploy_ok(
        "probe-provided",
        json!({"runtime": "provided", "handler": "x", "timeout_s": 20}),
        &zip,
    )
    .await;
    let r = d.invoke("probe-provided", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, want, "provided");

    // native: an executable per request, the result on stdout.
    let native = format!(
        "#!/usr/bin/python3 -I\nimport json, sys\n{library}\nsys.stdin.read()\nprint(json.dumps(probe()))\n"
    );
    let zip = zip_entries(&[("probe", 0o755, native.as_bytes())]);
    d.deploy_ok(
        "probe-native",
        json!({"runtime": "native", "handler": "probe", "timeout_s": 20}),
        &zip,
    )
    .await;
    let r = d.invoke("probe-native", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body, want, "native: {}", r.raw);
}

/// A function that exits during its own import, restored from an image every other function
/// shares, fails alone: the image stays healthy and serves the others, and the function's
/// crash-loop backoff spares the node from starting it again at once.
#[tokio::test(flavor = "multi_thread")]
async fn an_import_crash_fails_alone_and_the_shared_image_stays_healthy() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    d.build_image("six");
    for (name, code) in [
        ("crasher", "import os\nos._exit(3)\n"),
        ("good", "def handler(e, c):\n    return 'fine'\n"),
    ] {
        d.deploy_ok(
            name,
            json!({"handler": "main.handler", "packages": ["six"]}),
            &py(code),
        )
        .await;
    }
    for i in 0..5 {
        let r = d.invoke("crasher", "{}").await;
        assert_eq!(r.status, 502, "attempt {i}: {}", r.raw);
        assert!(!r.timing.contains("fallback"), "{}", r.timing);
        if i >= 3 {
            assert!(r.raw.contains("crash loop"), "attempt {i}: {}", r.raw);
        }
    }
    // Stopping its instances is an operator's request for a fresh start: tried at once.
    d.stop_instances("crasher").await;
    let r = d.invoke("crasher", "{}").await;
    assert_eq!(r.status, 502, "{}", r.raw);
    assert!(!r.raw.contains("crash loop"), "{}", r.raw);
    let images = d.cli(&["image", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&images.stdout).unwrap();
    assert_eq!(v["images"][0]["healthy"], json!(true), "{v}");
    assert_eq!(v["images"][0]["failures"], json!(0), "{v}");
    let r = d.invoke("good", "{}").await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{}", r.raw);
    d.assert_logged("crasher", &["failed while importing its handler"]);
}

/// Limit events belong to the invocation during which they happened: a child OOM-killed, or
/// a fork storm the handler contained, fails that invocation, and the next one is served.
#[tokio::test(flavor = "multi_thread")]
async fn limit_events_are_charged_to_their_own_invocation() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off", "--pids-max", "32"]);
    let code = r#"
import os, time
def handler(event, context):
    kind = event.get("kind")
    if kind == "child-oom":
        pid = os.fork()
        if pid == 0:
            b = bytearray(400 << 20)
            os._exit(0)
        os.waitpid(pid, 0)
    elif kind == "contained-storm":
        kids = []
        try:
            for _ in range(100):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                kids.append(pid)
        except OSError:
            pass
        for k in kids:
            os.kill(k, 9)
            os.waitpid(k, 0)
    return kind
"#;
    d.deploy_ok(
        "blame",
        json!({"handler": "main.handler", "memory_mb": 128}),
        &py(code),
    )
    .await;
    for (kind, reason) in [("child-oom", "oom"), ("contained-storm", "pids")] {
        let r = d.invoke("blame", r#"{"kind": "warm-up"}"#).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let r = d.invoke("blame", &json!({"kind": kind}).to_string()).await;
        assert_eq!((r.status, r.error.as_str()), (502, reason), "{}", r.raw);
        let r = d.invoke("blame", r#"{"kind": "harmless"}"#).await;
        assert_eq!(
            (r.status, r.body.clone()),
            (200, json!("harmless")),
            "{}",
            r.raw
        );
    }
}

/// A function on the host's network has it whatever its start path: it reaches a listener
/// on the host's loopback from a cold boot and from an image.
#[tokio::test(flavor = "multi_thread")]
async fn host_network_functions_have_it_from_an_image() {
    if !need_sandbox() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let _ = (&c).write_all(b"host");
        }
    });
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    let code = r#"
import socket
def handler(event, context):
    try:
        s = socket.create_connection(("127.0.0.1", event["port"]), timeout=2)
        return s.recv(4).decode()
    except OSError as e:
        return "unreachable: %s" % e
"#;
    for (name, network) in [("hostnet", "host"), ("isolated", "none")] {
        d.deploy_ok(
            name,
            json!({"handler": "main.handler", "packages": ["six"], "network": network}),
            &py(code),
        )
        .await;
    }
    let event = json!({ "port": port }).to_string();
    let r = d.invoke("hostnet", &event).await;
    assert_eq!(
        (r.start.as_str(), r.body.clone()),
        ("cold-boot", json!("host")),
        "{}",
        r.raw
    );
    d.build_image("six");
    for name in ["hostnet", "isolated"] {
        d.stop_instances(name).await;
    }
    let r = d.invoke("hostnet", &event).await;
    assert_eq!(
        (r.start.as_str(), r.body.clone()),
        ("image", json!("host")),
        "{}",
        r.raw
    );
    let r = d.invoke("isolated", &event).await;
    assert_eq!(r.start, "image", "{}", r.raw);
    assert!(
        r.body
            .as_str()
            .unwrap_or_default()
            .starts_with("unreachable"),
        "{}",
        r.raw
    );
}

/// A limit event while an instance sits idle (a thread it left running OOM-kills a child)
/// belongs to no invocation: the next request gets a fresh instance and its answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_limit_event_while_idle_is_charged_to_no_invocation() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    let code = r#"
import os, subprocess, threading, time
def later():
    time.sleep(0.3)
    subprocess.run(["/usr/bin/python3", "-c", "b = bytearray(400 << 20)"])
def handler(event, context):
    if event.get("arm"):
        threading.Thread(target=later, daemon=True).start()
    return os.getpid()
"#;
    d.deploy_ok(
        "idle",
        json!({"handler": "main.handler", "memory_mb": 128}),
        &py(code),
    )
    .await;
    let first = d.invoke("idle", r#"{"arm": true}"#).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let next = d.invoke("idle", "{}").await;
    assert_eq!(next.status, 200, "{}", next.raw);
    assert_eq!(next.start, "cold-boot", "the OOM'd instance was not reused");
    d.assert_logged("idle", &["limit reached while idle: oom"]);
}

/// An image serves only functions with exactly its distributions: a function that asked for
/// fewer packages never runs with the import-time code of packages another tenant chose.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_serves_only_functions_with_exactly_its_packages() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    d.build_image("six");
    let code = "import sys\ndef handler(e, c):\n    return 'six' in sys.modules\n";
    for (name, packages) in [("with-six", json!(["six"])), ("bare", json!([]))] {
        d.deploy_ok(
            name,
            json!({"handler": "main.handler", "packages": packages}),
            &py(code),
        )
        .await;
    }
    let r = d.invoke("with-six", "{}").await;
    assert_eq!(
        (r.start.as_str(), r.body.clone()),
        ("image", json!(true)),
        "{}",
        r.raw
    );
    let r = d.invoke("bare", "{}").await;
    assert_eq!(
        (r.start.as_str(), r.body.clone()),
        ("cold-boot", json!(false)),
        "{}",
        r.raw
    );
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(r#"ember_cold_boot_reasons_total{function="bare",reason="no-image"} 1"#),
        "{metrics}"
    );
}

/// Node.js starts inside an instance (V8 allocates a memory protection key at start).
#[tokio::test(flavor = "multi_thread")]
async fn node_runs_inside_an_instance() {
    if !need_sandbox() || !std::path::Path::new("/usr/bin/node").exists() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    let code = r#"
import subprocess
def handler(event, context):
    p = subprocess.run(["/usr/bin/node", "-e", "console.log(6 * 7)"], capture_output=True, text=True)
    return [p.returncode, p.stdout.strip(), p.stderr[-300:]]
"#;
    d.deploy_ok(
        "node",
        json!({"handler": "main.handler", "memory_mb": 512}),
        &py(code),
    )
    .await;
    let r = d.invoke("node", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        (&r.body[0], &r.body[1]),
        (&json!(0), &json!("42")),
        "{}",
        r.raw
    );
}
