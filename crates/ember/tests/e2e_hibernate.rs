//! Privileged: hibernated instances through the real daemon. An idle instance past its
//! keep-alive is dumped to disk (a layer over the function snapshot or image it came from,
//! or whole) and its memory freed; the next request wakes it with the state its earlier
//! invocations built, reseeded, its after-restore hooks run. A hibernated instance that
//! cannot be woken never fails a request; one of an earlier deploy never serves; those kept
//! ready stay hibernated until a burst wakes them; the disk budget holds.

mod common;

use std::time::Duration;

use common::{Daemon, eventually, need_sandbox, py};
use serde_json::{Value, json};

/// State the instance builds across invocations, and what says whether it was reseeded and
/// restored.
const STATEFUL: &str = r#"
import hashlib, os, random
from snapshot_restore_py import register_after_restore

COUNT = 0
RESTORES = 0
MODEL = None

def after():
    global RESTORES
    RESTORES += 1

register_after_restore(after)

def handler(event, context):
    global COUNT, MODEL
    COUNT += 1
    if MODEL is None:
        # What a first invocation builds and later ones reuse (a loaded model, a cache).
        MODEL = [i * i for i in range(200000)]
    return {
        "count": COUNT,
        "restores": RESTORES,
        "model": sum(MODEL[:10]),
        "rng": hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
        "instance": context.log_stream_name,
    }
"#;

fn instances(d: &Daemon, function: &str) -> Value {
    let out = d.cli(&["instances", "ls", "--function", function, "--json"]);
    assert!(out.ok, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn states(d: &Daemon, function: &str) -> Vec<String> {
    instances(d, function)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["state"].as_str().unwrap().to_string())
        .collect()
}

fn hibernated(d: &Daemon, function: &str) -> Vec<Value> {
    instances(d, function)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "hibernated")
        .cloned()
        .collect()
}

fn wait_hibernated(d: &Daemon, function: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    let ok = eventually(Duration::from_secs(20), || {
        got = hibernated(d, function);
        got.len() == n && !states(d, function).iter().any(|s| s != "hibernated")
    });
    assert!(
        ok,
        "{function}: {n} hibernated wanted, instances: {}",
        instances(d, function)
    );
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_instance_is_hibernated_and_woken_with_its_warm_state() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &[
            "--snapshots",
            "local",
            "--keep-alive",
            "1500ms",
            "--hibernate",
            "1h",
        ],
    );
    let config = json!({"handler": "main.handler", "memory_mb": 256});
    d.deploy_ok("stateful", config.clone(), &py(STATEFUL)).await;

    // A start from the function snapshot (taken beside the first cold boot), then warm.
    let first = d.invoke("stateful", "{}").await;
    assert_eq!(first.status, 200, "{}", first.raw);
    assert!(
        eventually(Duration::from_secs(20), || {
            let out = d.cli(&["snapshot", "ls", "--json"]);
            out.stdout.contains("\"stateful\"")
        }),
        "no function snapshot was taken"
    );
    let r = d.fresh_start("stateful", "{}").await;
    assert_eq!(r.start, "function-snapshot", "{}", r.raw);
    let warm = d.invoke("stateful", "{}").await;
    assert_eq!(
        (warm.start.as_str(), &warm.body["count"]),
        ("warm", &json!(2))
    );
    assert_eq!(warm.body["rng"], r.body["rng"], "nothing drew from random");

    // Past its keep-alive: hibernated, a small layer over the function snapshot, and no
    // process of it left in memory.
    let h = wait_hibernated(&d, "stateful", 1);
    assert!(
        h[0]["layer_over"]
            .as_str()
            .unwrap()
            .contains("function snapshot"),
        "{}",
        h[0]
    );
    let bytes = h[0]["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < 64 << 20, "{bytes} bytes on disk");
    assert!(
        eventually(Duration::from_secs(5), || d.instance_pids().is_empty()),
        "its processes are gone"
    );
    let st = d.get_json("/v1/functions/stateful").await;
    assert_eq!(
        (&st["instances_live"], &st["instances_hibernated"]),
        (&json!(0), &json!(1)),
        "{st}"
    );
    d.assert_logged(
        "stateful",
        &["instance hibernated (a layer over function snapshot"],
    );

    // Woken by the next request: its state kept, its after-restore hooks run, reseeded.
    let woken = d.invoke("stateful", "{}").await;
    assert_eq!(
        (woken.status, woken.start.as_str()),
        (200, "hibernated"),
        "{}",
        woken.raw
    );
    assert_eq!(
        woken.body["count"],
        json!(3),
        "its invocations' state is kept"
    );
    assert_eq!(woken.body["model"], warm.body["model"]);
    assert_eq!(woken.body["restores"], json!(2), "{}", woken.raw);
    assert_ne!(woken.body["rng"], warm.body["rng"], "not reseeded");
    for phase in ["sandbox;", "restore;", "hook;", "exec;"] {
        assert!(woken.timing.contains(phase), "{}", woken.timing);
    }
    d.assert_logged("stateful", &["woken from hibernation: instance"]);
    assert!(hibernated(&d, "stateful").is_empty());
    assert_eq!(
        instances(&d, "stateful")["hibernated_bytes"],
        json!(0),
        "its dump is removed once woken"
    );
    let again = d.invoke("stateful", "{}").await;
    assert_eq!(
        (again.start.as_str(), &again.body["count"]),
        ("warm", &json!(4))
    );
    let m = d.metrics().await;
    assert!(
        m.contains(
            "ember_invocations_total{function=\"stateful\",start=\"hibernated\",outcome=\"ok\"} 1"
        ),
        "{m}"
    );

    // Hibernated again (a layer over the same snapshot), then a corrupted dump: the request
    // is served all the same, by the function snapshot.
    let h = wait_hibernated(&d, "stateful", 1);
    let dir = d
        .home
        .join("hibernated")
        .join(h[0]["instance"].as_str().unwrap());
    let pages = dir.join("pages");
    let mut data = std::fs::read(&pages).unwrap();
    for i in (4096..data.len()).step_by(4096) {
        data[i] ^= 0xff;
    }
    std::fs::write(&pages, data).unwrap();
    let r = d.invoke("stateful", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(
        r.body["count"],
        json!(1),
        "a fresh instance served: {}",
        r.raw
    );
    assert!(!dir.exists(), "the broken dump is removed");

    // Stopping its instances on request removes the hibernated ones too.
    wait_hibernated(&d, "stateful", 1);
    d.stop_instances("stateful").await;
    assert!(hibernated(&d, "stateful").is_empty());
    let r = d.invoke("stateful", "{}").await;
    assert_ne!(r.start, "hibernated", "{}", r.raw);
    assert_eq!(r.body["count"], json!(1));

    // A new deploy: the earlier deploy's hibernated instances never serve it.
    wait_hibernated(&d, "stateful", 1);
    let code = format!("{STATEFUL}\nVERSION = 2\n");
    d.deploy_ok("stateful", config.clone(), &py(&code)).await;
    assert!(eventually(Duration::from_secs(5), || hibernated(
        &d, "stateful"
    )
    .is_empty()));
    let r = d.invoke("stateful", "{}").await;
    assert_ne!(r.start, "hibernated", "{}", r.raw);
    assert_eq!(r.body["count"], json!(1));

    // Deleted: nothing of it stays on disk.
    wait_hibernated(&d, "stateful", 1);
    let out = d.cli(&["rm", "stateful"]);
    assert!(out.ok, "{}", out.stderr);
    assert!(eventually(Duration::from_secs(5), || {
        std::fs::read_dir(d.home.join("hibernated"))
            .unwrap()
            .next()
            .is_none()
    }));
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_kept_ready_stay_hibernated_until_a_burst_wakes_them() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--keep-alive", "1s", "--hibernate", "2s"]);
    let config = json!({"handler": "main.handler", "memory_mb": 256, "min_instances": 3});
    d.deploy_ok("ready", config, &py(STATEFUL)).await;
    // Made at deploy, hibernated past their keep-alive, and kept hibernated past the
    // hibernation window (they are kept ready), not started again.
    wait_hibernated(&d, "ready", 3);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(hibernated(&d, "ready").len(), 3);
    assert!(d.instance_pids().is_empty(), "no instance in memory");
    // Whole dumps (cold-booted instances, no image or snapshot here).
    assert_eq!(hibernated(&d, "ready")[0]["layer_over"], "whole");

    // A burst of three finds them.
    let burst = d.invoke_many("ready", 3, r#"{}"#).await;
    for r in &burst {
        assert_eq!(
            (r.status, r.start.as_str()),
            (200, "hibernated"),
            "{}",
            r.raw
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dump_over_the_disk_budget_stops_the_instance_instead() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &[
            "--keep-alive",
            "1s",
            "--hibernate",
            "1h",
            "--hibernate-disk-mb",
            "1",
        ],
    );
    d.deploy_ok("big", json!({"handler": "main.handler"}), &py(STATEFUL))
        .await;
    let r = d.invoke("big", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(eventually(Duration::from_secs(10), || {
        d.instance_pids().is_empty()
    }));
    d.assert_logged(
        "big",
        &[
            "not hibernated: the dump takes",
            "stopped instead of hibernated from now on",
        ],
    );
    assert!(hibernated(&d, "big").is_empty());
    let r = d.invoke("big", "{}").await;
    assert_eq!(
        (r.start.as_str(), &r.body["count"]),
        ("cold-boot", &json!(1))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_pressure_hibernates_idle_instances_before_their_keep_alive() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Available memory is always under 100% of the total: always under pressure.
    let d = Daemon::start(
        home.path(),
        &[
            "--keep-alive",
            "1h",
            "--hibernate",
            "1h",
            "--memory-pressure-percent",
            "100",
            // The other tests wake with the default (bulk); this one reads the dump whole.
            "--hibernate-policy",
            "eager",
        ],
    );
    d.deploy_ok("pressed", json!({"handler": "main.handler"}), &py(STATEFUL))
        .await;
    let r = d.invoke("pressed", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    wait_hibernated(&d, "pressed", 1);
    let r = d.invoke("pressed", "{}").await;
    assert_eq!(
        (r.start.as_str(), &r.body["count"]),
        ("hibernated", &json!(2))
    );
}
