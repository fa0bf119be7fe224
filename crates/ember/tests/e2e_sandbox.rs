//! Privileged: the sandbox through the real daemon. Each case is what a function can try,
//! and what it and its caller see.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, eventually, need_sandbox, py};
use serde_json::json;

const PROBE: &str = r#"
import ctypes, errno, os, socket

def attempt(fn):
    try:
        fn()
        return 0
    except OSError as e:
        return e.errno

def write(path, size=1):
    with open(path, "wb") as f:
        f.write(b"x" * size)

def handler(event, context):
    kind = event["kind"]
    if kind == "oom":
        blob = b"x" * (400 << 20)
        return len(blob)
    if kind == "forkbomb":
        while True:
            os.fork()
    if kind == "syscall":
        ctypes.CDLL(None).syscall(event["nr"], 0, 0, 0, 0)
        return "survived"
    if kind == "probe":
        status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
        code = os.getcwd()
        write("/tmp/mine")
        return {
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "seccomp": status["Seccomp"].strip(),
            "cap_eff": status["CapEff"].strip(),
            "no_new_privs": status["NoNewPrivs"].strip(),
            "uid": os.getuid(),
            "code_siblings": os.listdir(os.path.dirname(code)),
            "write_usr": attempt(lambda: write("/usr/evil")),
            "write_root": attempt(lambda: write("/evil")),
            "write_code": attempt(lambda: write(os.path.join(code, "evil"))),
            "tmp_full": attempt(lambda: write("/tmp/big", 40 << 20)),
            "others_tmp": os.path.exists("/tmp/theirs"),
            "kill_other": attempt(lambda: os.kill(event["other_pid"], 9)),
            "api": attempt(lambda: socket.create_connection(("127.0.0.1", event["port"]), timeout=1)),
        }
    if kind == "mark":
        write("/tmp/theirs")
        return "marked"
"#;

async fn deploy_probe(d: &Daemon, name: &str) {
    let config = json!({"handler": "main.handler", "memory_mb": 256, "timeout_s": 10});
    let (status, body) = d.deploy_zip(name, config, &py(PROBE)).await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_sees_only_itself_and_cannot_write_outside_tmp() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--tmp-mb", "16"]);
    deploy_probe(&d, "probe").await;
    deploy_probe(&d, "other").await;
    // Another function's instance, holding a file in its own /tmp.
    assert_eq!(
        d.invoke("other", r#"{"kind": "mark"}"#).await.body,
        "marked"
    );
    let other_pid = *d.instance_pids().first().unwrap();
    let port: u16 = d.url.rsplit(':').next().unwrap().parse().unwrap();
    let event = json!({"kind": "probe", "other_pid": other_pid, "port": port});
    let r = d.invoke("probe", &event.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    let b = &r.body;
    assert_eq!(b["pids"], json!([1]), "host processes are visible: {b}");
    assert_eq!(b["seccomp"], "2");
    assert_eq!(b["cap_eff"], "0000000000000000");
    assert_eq!(b["no_new_privs"], "1");
    assert_eq!(b["uid"], 65534);
    assert_eq!(
        b["code_siblings"].as_array().unwrap().len(),
        1,
        "another function's code is visible: {b}"
    );
    for key in ["write_usr", "write_root", "write_code"] {
        assert_eq!(b[key], libc_errno("EROFS"), "{key}: {b}");
    }
    assert_eq!(b["tmp_full"], libc_errno("ENOSPC"), "{b}");
    assert_eq!(b["others_tmp"], false);
    assert_eq!(b["kill_other"], libc_errno("ESRCH"), "{b}");
    assert_ne!(
        b["api"], 0,
        "the daemon's API is reachable from inside: {b}"
    );

    // A function deployed with the host's network reaches the host's loopback.
    let config = json!({"handler": "main.handler", "network": "host"});
    let (status, body) = d.deploy_zip("online", config, &py(PROBE)).await;
    assert_eq!(status, 201, "{body}");
    let r = d.invoke("online", &event.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["api"], 0, "{}", r.raw);
}

fn libc_errno(name: &str) -> serde_json::Value {
    json!(match name {
        "EROFS" => 30,
        "ENOSPC" => 28,
        "ESRCH" => 3,
        _ => unreachable!(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_end_the_instance_with_a_reason() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--pids-max", "32"]);
    deploy_probe(&d, "probe").await;

    let t0 = Instant::now();
    let r = d.invoke("probe", r#"{"kind": "oom"}"#).await;
    assert_eq!((r.status, r.error.as_str()), (502, "oom"), "{}", r.raw);
    assert_eq!(r.body["error"]["reason"], "oom");
    assert_eq!(r.body["error"]["code"], "OutOfMemory");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(eventually(Duration::from_secs(2), || d
        .instance_pids()
        .is_empty()));

    let t0 = Instant::now();
    let r = d.invoke("probe", r#"{"kind": "forkbomb"}"#).await;
    assert_eq!((r.status, r.error.as_str()), (502, "pids"), "{}", r.raw);
    assert_eq!(r.body["error"]["code"], "TooManyProcesses");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        eventually(Duration::from_secs(2), || d.instance_pids().is_empty()),
        "fork bomb survivors"
    );

    // mount, ptrace, bpf, unshare, keyctl: each kills the instance.
    for (name, nr) in [
        ("mount", 165),
        ("ptrace", 101),
        ("bpf", 321),
        ("unshare", 272),
        ("keyctl", 250),
    ] {
        let r = d
            .invoke("probe", &json!({"kind": "syscall", "nr": nr}).to_string())
            .await;
        assert_eq!(
            (r.status, r.error.as_str()),
            (502, "seccomp"),
            "{name}: {}",
            r.raw
        );
        assert_eq!(r.body["error"]["code"], "ForbiddenSyscall");
    }
    // Other instances and the function itself go on.
    let r = d.invoke("probe", r#"{"kind": "mark"}"#).await;
    assert_eq!((r.status, r.start.as_str()), (200, "cold-boot"));

    let metrics = d.metrics().await;
    for reason in ["oom", "pids", "seccomp"] {
        assert!(
            metrics.contains(&format!(r#"outcome="{reason}""#)),
            "{reason} missing from metrics"
        );
    }
    d.assert_logged("probe", &["limit reached: oom", "limit reached: seccomp"]);
}

fn node_cgroups_named(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for node in std::fs::read_dir("/sys/fs/cgroup/pids/ember")
        .into_iter()
        .flatten()
        .flatten()
    {
        for inst in std::fs::read_dir(node.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = inst.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(name);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_daemon_leaves_nothing_after_the_next_start() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(home.path(), &[]);
    let config = json!({"handler": "main.handler", "max_instances": 3});
    let code = py("import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 1\n");
    let (status, _) = d.deploy_zip("orphan-check", config, &code).await;
    assert_eq!(status, 201);
    let url = d.url.clone();
    let busy = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/functions/orphan-check/invoke"))
            .body(r#"{"s": 30}"#)
            .send()
            .await
    });
    // One instance busy for 30 s, and a second one (started meanwhile) idle.
    assert!(eventually(Duration::from_secs(5), || d
        .instance_pids()
        .len()
        == 1));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.invoke("orphan-check", "{}").await.start, "cold-boot");
    assert_eq!(d.instance_pids().len(), 2);
    assert_eq!(node_cgroups_named("orphan-check-").len(), 2);
    d.kill9();
    let _ = busy.await;
    assert!(eventually(Duration::from_secs(2), || {
        common::instance_pids_under(home.path()).is_empty()
    }));
    let d = Daemon::start(home.path(), &[]);
    assert!(
        node_cgroups_named("orphan-check-").is_empty(),
        "{:?}",
        node_cgroups_named("orphan-check-")
    );
    assert_eq!(d.invoke("orphan-check", "{}").await.status, 200);
}
