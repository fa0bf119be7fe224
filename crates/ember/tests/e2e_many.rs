//! Privileged: hundreds of live instances restored from one image. Each instance costs the
//! daemon a few descriptors (its socket, its output pipes, its namespaces), so with a few
//! hundred of them every descriptor the daemon makes has a number above 1,024, the limit of
//! an instance: a restore must not depend on that.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, need_sandbox, py};
use serde_json::json;

/// Instances kept live at once; `EMBER_TEST_INSTANCES` asks for another number (1,000
/// needs ~7 GiB and ~1.5 min here).
fn instances() -> usize {
    std::env::var("EMBER_TEST_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Sleeps until `until` (seconds since the epoch), so that every request holds its own
/// instance while the others start; answers with the descriptors the instance holds.
const HOLD: &str = r#"
import os, time

def handler(event, context):
    time.sleep(max(0.0, event["until"] - time.time()))
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))
"#;

/// Raises this process's descriptor limit (the daemon inherits it, and this test holds a
/// connection per request).
fn raise_nofile(to: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the rlimit on our stack.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max = lim.rlim_max.max(to);
    lim.rlim_cur = lim.rlim_cur.max(to);
    // SAFETY: setrlimit reads the rlimit on our stack (as root, the hard limit may rise).
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_instances_restore_from_one_image() {
    if !need_sandbox() {
        return;
    }
    let n = instances();
    raise_nofile(16384.max(8 * n as u64));
    let home = tempfile::tempdir().unwrap();
    // Restores, each (forks from a template are e2e_images' tests).
    let d = Daemon::start(
        home.path(),
        &[
            "--images",
            "off",
            "--image-policy",
            "eager",
            "--no-templates",
        ],
    );
    // The bare runtime's image: the smallest there is.
    let out = d.cli(&["image", "build", "--packages", "", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let img: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = img["id"].as_str().unwrap().to_string();
    let (status, body) = d
        .deploy_zip(
            "hold",
            json!({"handler": "main.handler", "packages": [], "memory_mb": 128,
                   "max_instances": 1000, "timeout_s": 900}),
            &py(HOLD),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Starting 300 instances takes ~20 s here: every request holds its instance until all
    // have started.
    let t0 = Instant::now();
    let until = unix_now() + 10.0 + n as f64 / 10.0;
    let event = json!({ "until": until }).to_string();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (http, url) = (d.http(), format!("{}/v1/functions/hold/invoke", d.url));
        let event = event.clone();
        calls.spawn(async move {
            let r = http
                .post(url)
                .body(event)
                .timeout(Duration::from_secs(900))
                .send()
                .await
                .unwrap();
            common::Invoked::from(r).await
        });
    }
    let results = calls.join_all().await;
    let took = t0.elapsed();
    let mut fds = std::collections::BTreeMap::new();
    for r in &results {
        assert_eq!(r.status, 200, "{} {}", r.error, r.raw);
        assert_eq!(r.start, "image", "{}", r.timing);
        assert!(!r.timing.contains("fallback"), "{}", r.timing);
        *fds.entry(r.body.to_string()).or_insert(0) += 1;
    }
    eprintln!("{n} restored instances answered in {took:?}; their descriptors: {fds:?}");
    // Each instance holds its stdio and protocol socket (and the directory it lists): none
    // of the daemon's.
    assert_eq!(
        fds.keys().collect::<Vec<_>>(),
        ["[0,1,2,3,4]"],
        "descriptors of the restored instances"
    );
    let live = d.get_json("/v1/functions/hold").await["instances_live"].clone();
    assert_eq!(live, json!(n));
    let out = d.cli(&["image", "ls", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mine = &listed["images"][0];
    assert_eq!(mine["id"], json!(id));
    assert_eq!(mine["healthy"], json!(true), "{listed}");
    assert_eq!(mine["failures"], json!(0), "{listed}");
    assert_eq!(mine["restores"], json!(n), "{listed}");
}
