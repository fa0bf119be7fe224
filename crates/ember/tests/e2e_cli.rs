//! The CLI's per-function switches and `ember bench` against a shared daemon, as a user
//! runs them: `images`, `network` and `snapshot` in a function's `ember.toml` and as `deploy`
//! flags, `ember snapshot ls|rm`, and
//! a bench that finds its daemon through `EMBER_URL` and leaves that daemon's functions alone.

mod common;

use std::io::Write;
use std::path::Path;

use common::{Daemon, need_sandbox};

/// A function directory: `main.py` and an `ember.toml`.
fn function_dir(parent: &Path, name: &str, main_py: &str, manifest: &str) -> String {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.py"), main_py).unwrap();
    std::fs::write(dir.join("ember.toml"), manifest).unwrap();
    dir.to_string_lossy().into_owned()
}

fn deploy(d: &Daemon, args: &[&str]) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let out = d.cli(&all);
    assert!(out.ok, "ember {all:?}: {}", out.stderr);
}

#[tokio::test]
async fn a_function_that_opts_out_of_images_always_cold_boots() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "off"]);
    // The bare runtime's image serves every function without packages.
    let built = d.cli(&["image", "build", "--json"]);
    assert!(built.ok, "{}", built.stderr);
    let noop = common::examples().join("noop");
    let noop = noop.to_string_lossy();
    deploy(&d, &[&noop, "--name", "with-image"]);
    let toml_off = function_dir(
        code.path(),
        "toml-off",
        "def handler(event, context):\n    return event\n",
        "name = \"toml-off\"\nhandler = \"main.handler\"\nimages = \"off\"\n",
    );
    deploy(&d, &[&toml_off]);
    deploy(&d, &[&noop, "--name", "flag-off", "--no-images"]);
    let r = d.fresh_start("with-image", "{\"n\": 1}").await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{}", r.raw);
    for name in ["toml-off", "flag-off"] {
        for _ in 0..2 {
            let r = d.fresh_start(name, "{\"n\": 2}").await;
            assert_eq!((r.status, r.start.as_str()), (200, "cold-boot"), "{name}");
            assert_eq!(r.body, serde_json::json!({"n": 2}));
        }
    }
    let shown = d.get_json("/v1/functions/flag-off").await;
    assert_eq!(shown["images"], false, "{shown}");
    let metrics = d.metrics().await;
    assert!(
        metrics.contains("function=\"toml-off\",reason=\"images-off\"")
            || metrics.contains("reason=\"images-off\",function=\"toml-off\""),
        "{metrics}"
    );
    // A bad switch is refused before anything is sent, naming the file.
    let bad = function_dir(
        code.path(),
        "bad",
        "def handler(event, context):\n    return event\n",
        "name = \"bad\"\nhandler = \"main.handler\"\nimages = \"sometimes\"\n",
    );
    let out = d.cli(&["deploy", &bad]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("ember.toml") && out.stderr.contains("\"off\""),
        "{}",
        out.stderr
    );
}

/// The handler connects to the port in its event on the host's 127.0.0.1 and reads a line.
const CONNECT: &str = r#"import socket
def handler(event, context):
    try:
        s = socket.create_connection(("127.0.0.1", event["port"]), timeout=2)
        return {"read": s.recv(64).decode()}
    except OSError as e:
        return {"error": type(e).__name__}
"#;

#[tokio::test]
async fn network_host_in_ember_toml_or_as_a_flag_reaches_the_host() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = c.write_all(b"from the host");
        }
    });
    let host = function_dir(
        code.path(),
        "on-host",
        CONNECT,
        "name = \"on-host\"\nhandler = \"main.handler\"\nnetwork = \"host\"\n",
    );
    let none = function_dir(
        code.path(),
        "no-net",
        CONNECT,
        "name = \"no-net\"\nhandler = \"main.handler\"\n",
    );
    deploy(&d, &[&host]);
    deploy(&d, &[&none]);
    deploy(&d, &[&none, "--name", "flag-host", "--network", "host"]);
    let event = format!("{{\"port\": {port}}}");
    for name in ["on-host", "flag-host"] {
        let r = d.invoke(name, &event).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.body["read"], "from the host", "{name}: {}", r.raw);
    }
    let r = d.invoke("no-net", &event).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(
        r.body["error"].is_string(),
        "no-net reached the host: {}",
        r.raw
    );
    let out = d.cli(&["deploy", &none, "--network", "everywhere"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("host"), "{}", out.stderr);
}

#[tokio::test]
async fn bench_finds_its_daemon_in_ember_url_and_leaves_its_functions_alone() {
    let home = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &[]);
    // The user's own function, with a workload's name.
    let mine = function_dir(
        cwd.path(),
        "mine",
        "def handler(event, context):\n    return {\"mine\": True}\n",
        "name = \"noop\"\nhandler = \"main.handler\"\n",
    );
    deploy(&d, &[&mine]);
    let out_json = cwd.path().join("b.json");
    let out = std::process::Command::new(common::EMBER)
        .args([
            "bench",
            "--workloads",
            "noop",
            "--cold",
            "1",
            "--warm",
            "2",
            "--baseline",
            "0",
            "--envs-dir",
        ])
        .arg(common::shared_envs())
        .arg("--out")
        .arg(&out_json)
        .current_dir(cwd.path())
        .env("EMBER_URL", &d.url)
        .env_remove("EMBER_TOKEN")
        .env("EMBER_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    assert_eq!(
        report["url"].as_str().map(|u| u.trim_end_matches('/')),
        Some(d.url.as_str()),
        "the bench did not drive the daemon at EMBER_URL"
    );
    assert!(stderr.contains("function bench-"), "{stderr}");
    // The user's noop: the same version, answering as before; nothing of the bench is left.
    let listed = d.get_json("/v1/functions").await;
    let names: Vec<&str> = listed["functions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["noop"], "{listed}");
    let f = d.get_json("/v1/functions/noop").await;
    assert_eq!(f["version"], 1, "{f}");
    let r = d.invoke("noop", "{}").await;
    assert_eq!(r.body, serde_json::json!({"mine": true}));
}

#[tokio::test]
async fn the_snapshot_point_and_the_snapshot_cache_through_the_cli() {
    let home = tempfile::tempdir().unwrap();
    let code = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &["--images", "off", "--snapshot-eviction", "gdsf"],
    );
    let echo = "def handler(event, context):\n    return event\n";
    let off = function_dir(
        code.path(),
        "snap-off",
        echo,
        "name = \"snap-off\"\nhandler = \"main.handler\"\nsnapshot = \"off\"\n",
    );
    deploy(&d, &[&off]);
    deploy(
        &d,
        &[
            &off,
            "--name",
            "snap-vhive",
            "--snapshot",
            "after-first-invoke",
        ],
    );
    let ls = d.cli(&["ls"]);
    assert!(ls.ok, "{}", ls.stderr);
    // The SNAPSHOT column: where its header starts.
    let header = ls.stdout.lines().next().unwrap_or_default();
    let at = header.find("SNAPSHOT").expect("a SNAPSHOT column");
    let point = |name: &str| {
        let line = ls
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} not listed: {}", ls.stdout));
        line.get(at..)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(point("snap-off"), "off", "{}", ls.stdout);
    assert_eq!(point("snap-vhive"), "after-first-invoke", "{}", ls.stdout);
    let shown = d.get_json("/v1/functions/snap-off").await;
    assert_eq!(shown["snapshot"], "off", "{shown}");

    let out = d.cli(&["snapshot", "ls"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.starts_with("ID "), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("snapshots local, eviction gdsf: disk 0.0 of 4096.0 MiB"),
        "{}",
        out.stdout
    );
    let out = d.cli(&["snapshot", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["snapshots"], serde_json::json!([]));
    let out = d.cli(&["snapshot", "rm", "snap-nope"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "snapshot \"snap-nope\" does not exist (`ember snapshot ls` lists snapshots)"
        ),
        "{}",
        out.stderr
    );
    // A bad point is refused, naming the field and the choices.
    let out = d.cli(&["deploy", &off, "--snapshot", "sometimes"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("after-first-invoke"), "{}", out.stderr);
    let bad = function_dir(
        code.path(),
        "snap-bad",
        echo,
        "name = \"snap-bad\"\nhandler = \"main.handler\"\nsnapshot = \"always\"\n",
    );
    let out = d.cli(&["deploy", &bad]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "snapshot \"always\" is invalid: must be after-init, after-first-invoke or off"
        ),
        "{}",
        out.stderr
    );
}

/// `ember bench trace` replays a generated trace against a daemon per keep-alive policy and
/// writes its table's numbers and every call.
#[test]
fn bench_trace_replays_a_trace_per_keep_alive_policy() {
    let cwd = tempfile::tempdir().unwrap();
    let out_json = cwd.path().join("t.json");
    let mut cmd = std::process::Command::new(common::EMBER);
    cmd.args([
        "bench",
        "trace",
        "--functions",
        "10",
        "--minutes",
        "10",
        "--compression",
        "300",
        "--envs-dir",
    ])
    .arg(common::shared_envs())
    .arg("--out")
    .arg(&out_json)
    .current_dir(cwd.path())
    .env("EMBER_LOG", "warn");
    if !common::sandboxed() {
        cmd.arg("--no-sandbox");
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("cold-boot%")
            && stdout.contains("hibernated%")
            && stdout.contains("histogram+hibernate"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap();
    let results = doc["results"].as_array().unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["fixed", "fixed+hibernate", "histogram+hibernate"],
        "the default settings"
    );
    for r in results {
        // 10 trace-minutes at 300x: the fixed window (and the histogram's fallback) was
        // given to the daemon, not the bench's default hour.
        assert_eq!(r["keep_alive_s"], 2.0, "{r}");
        // Idle memory stays under every function's instance idle all the replay.
        let bound = 10.0 * 0.125 * r["replay_s"].as_f64().unwrap();
        assert!(r["idle_gb_s"].as_f64().unwrap() < bound, "{r}");
        // Without hibernation nothing is kept on disk.
        if r["policy"] == "fixed" {
            assert_eq!(r["disk_gb_s"], 0.0, "{r}");
        }
        assert!(!r["calls"].as_array().unwrap().is_empty(), "{r}");
    }
    for r in results {
        for c in r["calls"].as_array().unwrap() {
            assert_ne!(c["start"], "error", "{c}");
        }
    }
    assert!(out_json.with_extension("svg").exists());
}
