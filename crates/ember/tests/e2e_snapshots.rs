//! Privileged: function snapshots through the real daemon. A function's init (its handler's
//! import, module-level code) runs once; later starts restore its snapshot (a layer over its
//! dependency image, or whole without one) with its after-restore hooks run; a change the
//! snapshot depends on makes it stale; a broken snapshot never fails an invocation; every
//! restored instance has its own random values.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{Daemon, eventually, metric, need_sandbox, py};
use serde_json::{Value, json};

/// Module-level init that says when it ran (in the log and in what the handler returns), and
/// SnapStart's hooks, registered as AWS's `snapshot_restore_py` package has them.
const INIT_ONCE: &str = r#"
import os, random, time
from snapshot_restore_py import register_before_snapshot, register_after_restore

INIT_AT = time.time()
RESTORES = 0
FIRST = {}
print("module init ran", flush=True)

@register_before_snapshot
def before():
    print("before-snapshot hook ran", flush=True)

def after(label):
    global RESTORES
    RESTORES += 1
    print("after-restore hook ran: " + label, flush=True)

register_after_restore(after, "mine")

def handler(event, context):
    if "keep" in event:
        FIRST.setdefault("kept", event["keep"])
    time.sleep(event.get("hold", 0))
    return {
        "init_at": INIT_AT,
        "restores": RESTORES,
        "first": FIRST.get("kept"),
        "random": random.random(),
        "urandom": os.urandom(8).hex(),
        "instance": context.log_stream_name,
        "mine": os.environ.get("MINE"),
    }
"#;

fn snapshots(d: &Daemon) -> Vec<Value> {
    let out = d.cli(&["snapshot", "ls", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    v.as_array()
        .or_else(|| v["snapshots"].as_array())
        .cloned()
        .unwrap_or_default()
}

/// The snapshot of `function`, once one is listed (taken in the background).
fn wait_snapshot(d: &Daemon, function: &str, not: Option<&str>) -> Value {
    let mut found = None;
    let ok = eventually(Duration::from_secs(60), || {
        found = snapshots(d)
            .into_iter()
            .find(|s| s["function"] == json!(function) && Some(s["id"].as_str().unwrap()) != not);
        found.is_some()
    });
    assert!(
        ok,
        "no snapshot of {function} was taken:\n{}",
        d.cli(&["logs", function, "-n", "200"]).stdout
    );
    found.unwrap()
}

fn log_count(d: &Daemon, function: &str, line: &str) -> usize {
    d.cli(&["logs", function, "-n", "1000"])
        .stdout
        .matches(line)
        .count()
}

fn image_of(d: &Daemon, packages: &str) -> Value {
    let mut found = None;
    let ok = eventually(Duration::from_secs(240), || {
        let out = d.cli(&["image", "ls", "--json"]);
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        found = v["images"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["packages"] == json!([packages]))
            .cloned();
        found.is_some()
    });
    assert!(ok, "no image of {packages} was built");
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_start_skips_init_runs_its_hooks_and_is_a_small_layer() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &["--images", "on-deploy", "--snapshots", "local"],
    );
    let config = json!({"handler": "main.handler", "packages": ["numpy"], "max_instances": 50,
                        "env": {"MINE": "one"}});
    d.deploy_ok("once", config.clone(), &py(INIT_ONCE)).await;
    let image = image_of(&d, "numpy");

    // The first start comes from the image; the snapshot is taken beside it.
    let first = d.fresh_start("once", "{}").await;
    assert_eq!(
        (first.status, first.start.as_str()),
        (200, "image"),
        "{}",
        first.raw
    );
    assert_eq!(first.body["restores"], json!(0));
    let snap = wait_snapshot(&d, "once", None);
    assert_eq!(snap["parent_image"], image["id"], "{snap}");
    assert_eq!(snap["point"], json!("after-init"));
    d.assert_logged("once", &["before-snapshot hook ran", "function snapshot"]);

    // The layer holds only what differs from the image.
    let (layer, whole) = (
        snap["pages"].as_u64().unwrap(),
        image["pages"].as_u64().unwrap(),
    );
    assert!(
        layer * 5 <= whole,
        "layer of {layer} pages over an image of {whole}"
    );

    // From the snapshot: no module init, no handler import, the after-restore hook ran.
    let inits = log_count(&d, "once", "module init ran");
    let r = d.fresh_start("once", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "function-snapshot"),
        "{}",
        r.raw
    );
    assert_eq!(r.body["restores"], json!(1), "{}", r.raw);
    assert_eq!(r.snapshot, snap["id"].as_str().unwrap());
    assert_eq!(r.body["mine"], json!("one"));
    // The module-level timestamp is the snapshot's: the same in every start from it, and not
    // the one the first (image) start made.
    let again = d.fresh_start("once", "{}").await;
    assert_eq!(again.start, "function-snapshot", "{}", again.raw);
    assert_eq!(again.body["init_at"], r.body["init_at"]);
    assert_ne!(r.body["init_at"], first.body["init_at"]);
    assert!(!r.timing.contains("import_handler;"), "{}", r.timing);
    for phase in ["sandbox;", "restore;", "hook;", "exec;"] {
        assert!(r.timing.contains(phase), "{}", r.timing);
    }
    assert_eq!(
        log_count(&d, "once", "module init ran"),
        inits,
        "init ran again"
    );
    d.assert_logged("once", &["after-restore hook ran: mine"]);
    let listed = wait_snapshot(&d, "once", None);
    assert!(listed["uses"].as_u64().unwrap() >= 1, "{listed}");
    let m = d.metrics().await;
    assert!(
        m.contains("ember_invocations_total{function=\"once\",start=\"function-snapshot\",outcome=\"ok\"} 2"),
        "{m}"
    );

    // 50 concurrent starts from the one snapshot: every random value differs.
    d.stop_instances("once").await;
    let results = d.invoke_many("once", 50, r#"{"hold": 1.0}"#).await;
    let mut seen: [HashSet<String>; 3] = Default::default();
    for r in &results {
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.start, "function-snapshot", "{}", r.timing);
        seen[0].insert(r.body["random"].to_string());
        seen[1].insert(r.body["urandom"].to_string());
        seen[2].insert(r.body["instance"].to_string());
    }
    for (i, k) in ["random", "urandom", "instance"].iter().enumerate() {
        assert_eq!(seen[i].len(), 50, "{k} repeats across restored instances");
    }
    assert_eq!(
        log_count(&d, "once", "module init ran"),
        inits,
        "init ran again"
    );

    // Invalidation: a configuration change the snapshot depends on (the environment)...
    let old = snap["id"].as_str().unwrap().to_string();
    let mut changed = config.clone();
    changed["env"] = json!({"MINE": "two"});
    d.deploy_ok("once", changed, &py(INIT_ONCE)).await;
    let r = d.fresh_start("once", "{}").await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{}", r.raw);
    assert_eq!(r.body["mine"], json!("two"));
    let snap2 = wait_snapshot(&d, "once", Some(&old));
    d.assert_logged("once", &[&format!("function snapshot {old} is stale")]);
    let r = d.fresh_start("once", "{}").await;
    assert_eq!(
        (r.start.as_str(), &r.body["mine"]),
        ("function-snapshot", &json!("two"))
    );

    // ... a new version of the code ...
    let old = snap2["id"].as_str().unwrap().to_string();
    let code = format!("{INIT_ONCE}\nVERSION = 3\n");
    let mut cfg = config.clone();
    cfg["env"] = json!({"MINE": "two"});
    d.deploy_ok("once", cfg, &py(&code)).await;
    let r = d.fresh_start("once", "{}").await;
    assert_eq!(r.start, "image", "{}", r.raw);
    let snap3 = wait_snapshot(&d, "once", Some(&old));

    // ... and a rebuilt parent image.
    let old = snap3["id"].as_str().unwrap().to_string();
    d.build_image("numpy");
    let r = d.fresh_start("once", "{}").await;
    assert_eq!((r.status, r.start.as_str()), (200, "image"), "{}", r.raw);
    wait_snapshot(&d, "once", Some(&old));
    let r = d.fresh_start("once", "{}").await;
    assert_eq!(r.start, "function-snapshot", "{}", r.raw);

    // The parent image gone: the snapshot cannot be used (it is stale: no image serves the
    // function now); a cold boot serves.
    let out = d.cli(&["image", "rm", image["id"].as_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    let r = d.fresh_start("once", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "cold-boot"),
        "{}",
        r.raw
    );
}

/// The snapshot directory of `id` on daemon `d`.
fn snapshot_dir(d: &Daemon, id: &str) -> PathBuf {
    d.home.join("snapshots").join(id)
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_image_the_snapshot_is_whole_and_a_broken_one_never_fails_a_request() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // No memory tier: every start reads the snapshot from disk.
    let args = ["--snapshots", "local", "--snapshot-memory-mb", "0"];
    let d = Daemon::start(home.path(), &args);
    d.deploy_ok("plain", json!({"handler": "main.handler"}), &py(INIT_ONCE))
        .await;
    let first = d.fresh_start("plain", "{}").await;
    assert_eq!(
        (first.status, first.start.as_str()),
        (200, "cold-boot"),
        "{}",
        first.raw
    );
    let snap = wait_snapshot(&d, "plain", None);
    assert_eq!(snap["parent_image"], Value::Null, "{snap}");
    // The start taken for the snapshot is not counted as the function's.
    let m = d.metrics().await;
    assert!(
        m.contains("ember_cold_boot_reasons_total{function=\"plain\",reason=\"no-image\"} 1\n"),
        "{m}"
    );
    let r = d.fresh_start("plain", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "function-snapshot"),
        "{}",
        r.raw
    );
    assert_eq!(r.body["restores"], json!(1));

    // A missing snapshot directory: a cold boot serves, and a new snapshot is taken.
    std::fs::remove_dir_all(snapshot_dir(&d, snap["id"].as_str().unwrap())).unwrap();
    let r = d.fresh_start("plain", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "cold-boot"),
        "{}",
        r.raw
    );
    let snap = wait_snapshot(&d, "plain", None);
    let has_files = |s: &Value| {
        snapshot_dir(&d, s["id"].as_str().unwrap())
            .join("meta")
            .exists()
    };
    assert!(
        eventually(Duration::from_secs(30), || has_files(&snap)),
        "{snap}"
    );

    // `ember snapshot rm` removes one; the next start is not from it (and takes a new one).
    let out = d.cli(&["snapshot", "rm", snap["id"].as_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    let r = d.fresh_start("plain", "{}").await;
    assert_eq!(r.start, "cold-boot", "{}", r.raw);
    let snap = wait_snapshot(&d, "plain", None);
    assert!(
        eventually(Duration::from_secs(30), || has_files(&snap)),
        "{snap}"
    );

    // A corrupted page file: the start falls back to a cold boot and says why.
    let id = snap["id"].as_str().unwrap();
    let pages = snapshot_dir(&d, id).join("pages");
    let mut bytes = std::fs::read(&pages).unwrap();
    let end = bytes.len();
    for b in &mut bytes[end - 4096..] {
        *b ^= 0xff;
    }
    std::fs::write(&pages, &bytes).unwrap();
    let r = d.fresh_start("plain", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "cold-boot"),
        "{}",
        r.raw
    );
    assert!(r.timing.contains("fallback;"), "{}", r.timing);
    d.assert_logged(
        "plain",
        &[&format!(
            "starting from function snapshot {id} failed, cold boot instead"
        )],
    );
    // Removed after 3 failures in a row, and not taken again at once: the same snapshot
    // would fail the same way.
    for _ in 0..2 {
        let r = d.fresh_start("plain", "{}").await;
        assert_eq!(
            (r.status, r.start.as_str()),
            (200, "cold-boot"),
            "{}",
            r.raw
        );
    }
    d.assert_logged("plain", &["the next try is in 60 s"]);
    assert!(snapshots(&d).is_empty(), "{:?}", snapshots(&d));
    let r = d.fresh_start("plain", "{}").await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "cold-boot"),
        "{}",
        r.raw
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        snapshots(&d).is_empty(),
        "retaken at once: {:?}",
        snapshots(&d)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_first_invoke_keeps_what_the_first_request_left_and_off_takes_none() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--snapshots", "local"]);
    d.deploy_ok(
        "later",
        json!({"handler": "main.handler", "snapshot": "after-first-invoke"}),
        &py(INIT_ONCE),
    )
    .await;
    let first = d
        .fresh_start("later", r#"{"keep": "from the first request"}"#)
        .await;
    assert_eq!(
        (first.status, first.start.as_str()),
        (200, "cold-boot"),
        "{}",
        first.raw
    );
    let snap = wait_snapshot(&d, "later", None);
    assert_eq!(snap["point"], json!("after-first-invoke"));
    // The instance that was snapshotted is stopped (its before-snapshot hooks ran in it): the
    // next start is from the snapshot, with what the first request left.
    let r = d.invoke("later", "{}").await;
    assert_eq!(r.start, "function-snapshot", "{}", r.raw);
    assert_eq!(r.body["first"], json!("from the first request"));

    d.deploy_ok(
        "never",
        json!({"handler": "main.handler", "snapshot": "off"}),
        &py(INIT_ONCE),
    )
    .await;
    for _ in 0..2 {
        let r = d.fresh_start("never", "{}").await;
        assert_eq!(r.start, "cold-boot", "{}", r.raw);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        snapshots(&d)
            .iter()
            .all(|s| s["function"] != json!("never"))
    );
}

const SLOW_HOOK: &str = r#"
import os, time
from snapshot_restore_py import register_before_snapshot

KEPT = {}

@register_before_snapshot
def slow():
    time.sleep(float(os.environ.get("HOOK_S", "0")))

def handler(event, context):
    if "secret" in event:
        KEPT.setdefault("secret", event["secret"])
    return {"secret": KEPT.get("secret"), "pid": os.getpid()}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_take_never_outlives_its_function_nor_hangs_nor_exceeds_max_instances() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        home.path(),
        &["--snapshots", "local", "--init-timeout", "3s"],
    );

    // Deleted while its snapshot is taken, then created again under its name: the new
    // function never starts from the old one's snapshot.
    // The same configuration both times (so the same version, and within a second the same
    // creation time): only the node's bookkeeping keeps them apart.
    let config = json!({"handler": "main.handler", "snapshot": "after-first-invoke",
                        "env": {"HOOK_S": "2"}});
    d.deploy_ok("reused", config.clone(), &py(SLOW_HOOK)).await;
    let r = d.invoke("reused", r#"{"secret": "old owner"}"#).await;
    assert_eq!(r.body["secret"], json!("old owner"), "{}", r.raw);
    std::thread::sleep(Duration::from_millis(300));
    let out = d.cli(&["rm", "reused"]);
    assert!(out.ok, "{}", out.stderr);
    d.deploy_ok("reused", config, &py(SLOW_HOOK)).await;
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..2 {
        let r = d.fresh_start("reused", "{}").await;
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(
            r.body["secret"],
            Value::Null,
            "the old owner's data: {}",
            r.raw
        );
    }

    // A before-snapshot hook that never returns: the take gives up at the init timeout, the
    // instance goes, and other functions still get their snapshots.
    d.deploy_ok(
        "hangs",
        json!({"handler": "main.handler", "env": {"HOOK_S": "100000"}}),
        &py(SLOW_HOOK),
    )
    .await;
    let r = d.invoke("hangs", "{}").await;
    assert_eq!(r.status, 200, "{}", r.raw);
    d.deploy_ok("fine", json!({"handler": "main.handler"}), &py(SLOW_HOOK))
        .await;
    assert_eq!(d.invoke("fine", "{}").await.status, 200);
    wait_snapshot(&d, "fine", None);
    d.assert_logged("hangs", &["did not reach its snapshot point within 3 s"]);
    d.stop_instances("hangs").await;
    let live = |name: &str| {
        let out = d.cli(&["ls", "--json"]);
        let v: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == json!(name))
            .map_or(-1, |f| f["instances_live"].as_i64().unwrap_or(-1))
    };
    assert!(
        eventually(Duration::from_secs(5), || live("hangs") == 0),
        "{}",
        live("hangs")
    );
    assert!(
        snapshots(&d)
            .iter()
            .all(|s| s["function"] != json!("hangs"))
    );

    // After the first invocation, the instance being snapshotted still holds its permit: a
    // function of one instance never has two.
    d.deploy_ok(
        "single",
        json!({"handler": "main.handler", "max_instances": 1, "snapshot": "after-first-invoke",
               "env": {"HOOK_S": "1.5"}}),
        &py(SLOW_HOOK),
    )
    .await;
    assert_eq!(d.invoke("single", "{}").await.status, 200);
    let second = {
        let (http, url) = (d.http(), format!("{}/v1/functions/single/invoke", d.url));
        tokio::spawn(async move {
            common::Invoked::from(http.post(url).body("{}").send().await.unwrap()).await
        })
    };
    let mut most = 0;
    while !second.is_finished() {
        most = most.max(live("single"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(second.await.unwrap().status, 200);
    assert!(most <= 1, "{most} instances of a function of one");
    wait_snapshot(&d, "single", None);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_holds_its_disk_budget_under_both_policies() {
    if !need_sandbox() {
        return;
    }
    for policy in ["lru", "gdsf"] {
        let home = tempfile::tempdir().unwrap();
        // A whole snapshot of a bare Python function is about 3 MiB: two fit in 7 MiB.
        let args = [
            "--snapshots",
            "local",
            "--snapshot-disk-mb",
            "7",
            "--snapshot-eviction",
            policy,
        ];
        let d = Daemon::start(home.path(), &args);
        let mut taken = Vec::new();
        for name in ["f1", "f2", "f3", "f4"] {
            d.deploy_ok(name, json!({"handler": "main.handler"}), &py(INIT_ONCE))
                .await;
            assert_eq!(d.invoke(name, "{}").await.status, 200);
            taken.push(wait_snapshot(&d, name, None));
            let out = d.cli(&["snapshot", "ls", "--json"]);
            let v: Value = serde_json::from_str(&out.stdout).unwrap();
            let (used, budget) = (
                v["cache"]["disk_bytes"].as_u64().unwrap(),
                v["cache"]["disk_budget_bytes"].as_u64().unwrap(),
            );
            assert!(
                used <= budget,
                "{policy}: {used} bytes over a budget of {budget}"
            );
            let listed: u64 = snapshots(&d)
                .iter()
                .map(|s| s["bytes"].as_u64().unwrap())
                .sum();
            assert_eq!(listed, used, "{policy}: {v}");
        }
        let left = snapshots(&d);
        assert!(
            (1..4).contains(&left.len()),
            "{policy}: {} snapshots left",
            left.len()
        );
        // The newest is never the one evicted; the evicted ones' files are gone.
        assert!(
            left.iter().any(|s| s["function"] == json!("f4")),
            "{policy}"
        );
        for t in &taken {
            let id = t["id"].as_str().unwrap();
            let listed = left.iter().any(|s| s["id"] == t["id"]);
            assert_eq!(snapshot_dir(&d, id).exists(), listed, "{policy}: {id}");
        }
        let m = d.metrics().await;
        assert!(m.contains("ember_snapshot_evictions_total"), "{m}");
    }
}

/// A start from a function snapshot takes a sandbox made ahead (its first process parked,
/// the function's directories bound in when taken) instead of making one on the request's
/// path, and then still runs the function's own code with its hooks.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_start_takes_a_sandbox_made_ahead() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Parked sandboxes are for restores: no template to fork from instead.
    let d = Daemon::start(
        home.path(),
        &["--snapshots", "local", "--standby", "2", "--no-templates"],
    );
    d.deploy_ok("ahead", json!({"handler": "main.handler"}), &py(INIT_ONCE))
        .await;
    let first = d.fresh_start("ahead", "{}").await;
    assert_eq!(first.status, 200, "{}", first.raw);
    wait_snapshot(&d, "ahead", None);
    // The first snapshot start finds no parked sandbox and makes its own; one is made after.
    let r = d.fresh_start("ahead", "{}").await;
    assert_eq!((r.status, r.start.as_str()), (200, "function-snapshot"));
    let mut text = String::new();
    for _ in 0..200 {
        text = d.metrics().await;
        if metric(&text, "ember_standby_ready{kind=\"sandbox\"}") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metric(&text, "ember_standby_ready{kind=\"sandbox\"}") > 0,
        "{text}"
    );
    let r = d.fresh_start("ahead", r#"{"keep": 1}"#).await;
    assert_eq!(
        (r.status, r.start.as_str()),
        (200, "function-snapshot"),
        "{}",
        r.raw
    );
    assert_eq!(r.body["restores"], json!(1), "its after-restore hook ran");
    assert_eq!(r.body["first"], json!(1));
    let text = d.metrics().await;
    assert_eq!(
        metric(
            &text,
            "ember_standby_takes_total{kind=\"sandbox\",result=\"hit\"}"
        ),
        1,
        "{text}"
    );
    d.assert_logged("ahead", &["after-restore hook ran: mine"]);
}

/// Once a function snapshot has served a start, its template is made (the snapshot restored
/// once, parked); later starts fork from it on their path, or take an instance forked from
/// it ahead (a standby): the function's own state from the snapshot, its after-restore hooks
/// run, each fork reseeded.
#[tokio::test(flavor = "multi_thread")]
async fn snapshot_starts_fork_from_the_snapshots_template() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--snapshots", "local", "--standby", "1"]);
    d.deploy_ok("tpl", json!({"handler": "main.handler"}), &py(INIT_ONCE))
        .await;
    let first = d.fresh_start("tpl", "{}").await;
    assert_eq!(first.status, 200, "{}", first.raw);
    wait_snapshot(&d, "tpl", None);
    let restored = d.fresh_start("tpl", "{}").await;
    assert_eq!(
        (restored.status, restored.start.as_str()),
        (200, "function-snapshot")
    );
    assert!(restored.timing.contains("restore;"), "{}", restored.timing);
    let (mut forked, mut standby) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        // Two at once: one takes the standby (--standby 1) when it is ready, the other
        // forks on its path.
        d.stop_instances("tpl").await;
        let (a, b) = tokio::join!(d.invoke("tpl", "{}"), d.invoke("tpl", "{}"));
        for r in [a, b] {
            assert_eq!(r.status, 200, "{}", r.raw);
            if r.start != "function-snapshot" {
                continue;
            }
            if r.timing.contains("fork;") {
                forked.push(r);
            } else if r.timing.contains("standby;") {
                standby.push(r);
            }
        }
        if !forked.is_empty() && !standby.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !forked.is_empty() && !standby.is_empty(),
        "no start forked from the snapshot's template ({}) or took a standby forked from it ({})",
        forked.len(),
        standby.len()
    );
    for r in forked.iter().chain(&standby) {
        assert!(!r.timing.contains("restore;"), "{}", r.timing);
        assert_eq!(
            r.body["restores"],
            json!(1),
            "its after-restore hook ran: {}",
            r.raw
        );
        // Its module's state is the snapshot's (as a restore's): init ran before the dump.
        assert_eq!(r.body["init_at"], restored.body["init_at"], "{}", r.raw);
    }
    assert_ne!(
        forked[0].body["random"], standby[0].body["random"],
        "each fork reseeded"
    );
    d.assert_logged(
        "tpl",
        &[
            "forked from its template",
            "a standby forked from its template",
            "after-restore hook ran: mine",
        ],
    );
}
