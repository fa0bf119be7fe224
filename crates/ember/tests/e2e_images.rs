//! Privileged: dependency images through the real daemon: built with the CLI, shared by
//! functions, unique after every restore, held to the memory budget, and never the reason an
//! invocation fails.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, eventually, need_sandbox, py};
use serde_json::json;

fn images(d: &Daemon) -> serde_json::Value {
    let out = d.cli(&["image", "ls", "--json"]);
    assert!(out.ok, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

fn resident(d: &Daemon) -> (u64, u64) {
    let v = images(d);
    let m = &v["memory"];
    (
        m["resident_bytes"].as_u64().unwrap(),
        m["budget_bytes"].as_u64().unwrap(),
    )
}

async fn deploy(d: &Daemon, name: &str, packages: &[&str], code: &str, max: u32) {
    let (status, body) = d
        .deploy_zip(
            name,
            json!({"handler": "main.handler", "packages": packages, "max_instances": max}),
            &py(code),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
}

/// The page file of image `id` on daemon `d`.
fn image_pages(d: &Daemon, id: &str) -> PathBuf {
    d.home.join("images").join(id).join("pages")
}

/// Flips every bit of `range` in `file` (the first 4 KiB of a page file are its header).
fn corrupt(file: &Path, range: std::ops::Range<usize>) {
    let mut bytes = std::fs::read(file).unwrap();
    for b in &mut bytes[range] {
        *b ^= 0xff;
    }
    std::fs::write(file, &bytes).unwrap();
}

/// A fresh start of `name` that a cold boot serves with `body`: the answer and the log.
async fn cold_boot_serves(
    d: &Daemon,
    name: &str,
    body: serde_json::Value,
) -> (common::Invoked, String) {
    let r = d.fresh_start(name, "{}").await;
    assert_eq!(
        (r.start.as_str(), r.status),
        ("cold-boot", 200),
        "{}",
        r.raw
    );
    assert_eq!(r.body, body);
    (r, d.cli(&["logs", name]).stdout)
}

const UNIQUE: &str = r#"
import os, random, tempfile, time, uuid
import numpy as np

def handler(event, context):
    time.sleep(event.get("hold", 0))
    return {
        "random": random.random(),
        "numpy": float(np.random.rand()),
        "uuid": str(uuid.uuid4()),
        "tempfile": next(tempfile._get_candidate_names()),
        "urandom": os.urandom(16).hex(),
        "pid": os.getpid(),
        "aws": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
        "mine": os.environ.get("MINE"),
    }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn functions_share_one_image_and_every_restore_is_unique() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Restores, each (the phases and counts below are a restore's).
    let d = Daemon::start(home.path(), &["--images", "off", "--no-templates"]);
    let img = d.build_image("numpy");
    let id = img["id"].as_str().unwrap().to_string();
    assert!(img["pages"].as_u64().unwrap() > 1000, "{img}");
    assert!(img["working_set_pages"].as_u64().unwrap() > 0, "{img}");

    // Three functions, three handlers, one package set: all from the one image.
    let handlers = [
        (
            "sum",
            "import numpy as np\ndef handler(e, c):\n    return int(np.arange(e['n']).sum())\n",
            45,
        ),
        (
            "det",
            "import numpy as np\ndef handler(e, c):\n    return round(float(np.linalg.det(np.eye(e['n']) * 2)))\n",
            1024,
        ),
        (
            "name",
            "def handler(e, c):\n    return c.function_name\n",
            0,
        ),
    ];
    for (name, code, _) in &handlers {
        deploy(&d, name, &["numpy"], code, 10).await;
    }
    for (name, _, want) in &handlers {
        let r = d.invoke(name, r#"{"n": 10}"#).await;
        assert_eq!(r.status, 200, "{name}: {}", r.raw);
        assert_eq!(r.start, "image", "{name}: {}", r.timing);
        for phase in ["sandbox;", "restore;", "hook;", "import_handler;", "exec;"] {
            assert!(r.timing.contains(phase), "{name}: {}", r.timing);
        }
        match name {
            &"name" => assert_eq!(r.body, json!("name")),
            _ => assert_eq!(r.body, json!(want), "{name}"),
        }
    }
    let listed = images(&d);
    let mine = &listed["images"].as_array().unwrap()[0];
    assert_eq!(mine["id"], json!(id));
    assert_eq!(mine["functions"], json!(3), "{listed}");
    assert_eq!(mine["restores"], json!(3), "{listed}");

    // 50 concurrent restores of the one image: every seeded value differs.
    let (status, body) = d
        .deploy_zip(
            "unique",
            json!({"handler": "main.handler", "packages": ["numpy"], "max_instances": 50,
                   "env": {"MINE": "yes"}}),
            &py(UNIQUE),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let results = d.invoke_many("unique", 50, r#"{"hold": 1.0}"#).await;
    let mut seen: [HashSet<String>; 6] = Default::default();
    for r in &results {
        assert_eq!(r.status, 200, "{}", r.raw);
        assert_eq!(r.start, "image", "{}", r.timing);
        // The function's environment, not the image build's.
        assert_eq!(r.body["aws"], json!("unique"));
        assert_eq!(r.body["mine"], json!("yes"));
        for (i, k) in ["random", "numpy", "uuid", "tempfile", "urandom"]
            .iter()
            .enumerate()
        {
            seen[i].insert(r.body[k].to_string());
        }
        seen[5].insert(r.raw.clone());
    }
    for (i, k) in ["random", "numpy", "uuid", "tempfile", "urandom", "whole"]
        .iter()
        .enumerate()
    {
        assert_eq!(seen[i].len(), 50, "{k} repeats across restored instances");
    }
    // Every instance is pid 1 of its own namespace, which is why tempfile's own
    // pid-change check could not have caught it.
    assert!(results.iter().all(|r| r.body["pid"] == json!(1)));
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(
            "ember_invocations_total{function=\"unique\",start=\"image\",outcome=\"ok\"} 50"
        ),
        "{metrics}"
    );
}

/// The build-id bytes of an ELF file, by `readelf -n`.
fn build_id(file: &Path) -> Option<Vec<u8>> {
    let out = std::process::Command::new("readelf")
        .arg("-n")
        .arg(file)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))?;
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

fn find_file(dir: &Path, name: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        } else if name(&e.file_name().to_string_lossy()) {
            return Some(p);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_image_falls_back_to_a_cold_boot_with_a_warning() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Its own environments: this test changes a library in one. The image pool is empty,
    // so every restore reads the image from disk (and checks it).
    let envs = home.path().join("envs");
    let envs_arg = envs.to_string_lossy().into_owned();
    let d = Daemon::start(
        home.path(),
        &[
            "--images",
            "off",
            "--image-memory-mb",
            "0",
            "--envs-dir",
            &envs_arg,
            // A template made before the image broke would serve from its own copy.
            "--no-templates",
        ],
    );
    let code = "import markupsafe\ndef handler(e, c):\n    return str(markupsafe.escape('<b>'))\n";
    deploy(&d, "esc", &["markupsafe"], code, 10).await;
    let img = d.build_image("markupsafe");
    let id = img["id"].as_str().unwrap().to_string();
    let r = d.fresh_start("esc", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert_eq!(r.body, json!("&lt;b&gt;"));
    assert_eq!(images(&d)["images"][0]["location"], json!("disk"));
    // An instance started from an image counts as live, and stops counting when stopped.
    assert_eq!(d.get_json("/v1/functions/esc").await["instances_live"], 1);

    // 1. A corrupted page file: refused by its hashes, served by a cold boot.
    let n = std::fs::metadata(image_pages(&d, &id)).unwrap().len() as usize;
    corrupt(&image_pages(&d, &id), 4096 + n / 3..4096 + n / 3 + 64);
    let (r, logs) = cold_boot_serves(&d, "esc", json!("&lt;b&gt;")).await;
    assert!(r.timing.contains("fallback;"), "{}", r.timing);
    assert!(
        logs.contains(&format!(
            "starting from image {id} failed, cold boot instead"
        )),
        "{logs}"
    );

    assert_eq!(d.get_json("/v1/functions/esc").await["instances_live"], 1);

    // 2. A changed library: the restore refuses it, a cold boot serves.
    let img = d.build_image("markupsafe");
    assert_eq!(img["id"], json!(id));
    let r = d.fresh_start("esc", "{}").await;
    assert_eq!(r.start, "image", "a rebuilt image serves again: {}", r.raw);
    let so = find_file(&envs, &|n| n.starts_with("_speedups") && n.ends_with(".so"))
        .expect("markupsafe ships a C extension");
    let mut lib = std::fs::read(&so).unwrap();
    match build_id(&so) {
        // A rebuilt library: same code here, another build-id.
        Some(bid) => {
            let at = lib
                .windows(bid.len())
                .position(|w| w == bid)
                .expect("the build-id is in the file");
            lib[at] ^= 0xff;
        }
        None => lib.extend_from_slice(b"\0changed"),
    }
    std::fs::write(&so, &lib).unwrap();
    let (_, logs) = cold_boot_serves(&d, "esc", json!("&lt;b&gt;")).await;
    assert!(logs.contains("changed since the image was taken"), "{logs}");

    // 3. Failures in a row mark the image unhealthy: no more attempts, no more cost.
    for _ in 0..2 {
        let r = d.fresh_start("esc", "{}").await;
        assert_eq!(r.start, "cold-boot");
        assert!(r.timing.contains("fallback;"), "{}", r.timing);
    }
    let v = images(&d);
    let i = &v["images"][0];
    assert_eq!(i["healthy"], json!(false), "{v}");
    assert_eq!(i["failures"], json!(3), "{v}");
    let r = d.fresh_start("esc", "{}").await;
    assert_eq!(r.start, "cold-boot");
    assert!(!r.timing.contains("fallback;"), "{}", r.timing);
    let metrics = d.metrics().await;
    assert!(
        metrics.contains(&format!("ember_image_failures_total{{image=\"{id}\"}} 4")),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"no-image\""), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_pool_holds_its_budget() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // 16 MiB: the numpy image (~12 MiB) and the bare runtime's (~4 MiB) do not both fit.
    let d = Daemon::start(home.path(), &["--images", "off", "--image-memory-mb", "16"]);
    let first = d.build_image("numpy");
    // Rebuilding an image that is in memory replaces it there.
    let numpy = d.build_image("numpy");
    assert_eq!(first["id"], numpy["id"]);
    let budget = 16u64 << 20;
    assert_eq!(resident(&d), (numpy["bytes"].as_u64().unwrap(), budget));
    deploy(
        &d,
        "np",
        &["numpy"],
        "import numpy\ndef handler(e, c):\n    return 1\n",
        10,
    )
    .await;
    deploy(&d, "bare", &[], "def handler(e, c):\n    return 2\n", 10).await;
    let bare = d.build_image(""); // no packages: the bare runtime
    assert_ne!(bare["id"], numpy["id"]);
    let total = bare["bytes"].as_u64().unwrap() + numpy["bytes"].as_u64().unwrap();
    assert!(
        total > budget,
        "the test needs images that do not fit together"
    );
    assert!(resident(&d).0 <= budget);
    // The bare function is served by the smallest image that covers it: its own.
    for round in 0..3 {
        for (name, want) in [("np", 1), ("bare", 2)] {
            let r = d.fresh_start(name, "{}").await;
            assert_eq!(
                (r.start.as_str(), r.status),
                ("image", 200),
                "{name}: {}",
                r.raw
            );
            assert_eq!(r.body, json!(want));
            let (now, _) = resident(&d);
            assert!(now <= budget, "round {round}: {now} bytes in memory");
        }
    }
    let v = images(&d);
    let places: HashSet<String> = v["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["location"].as_str().unwrap().to_string())
        .collect();
    assert!(places.contains("disk"), "{v}");
    let metrics = d.metrics().await;
    let gauge: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ember_image_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the memory gauge");
    assert!(gauge <= budget);
    // Removing an image frees its memory; functions it served cold-boot or use another.
    let out = d.cli(&["image", "rm", numpy["id"].as_str().unwrap()]);
    assert!(out.ok, "{}", out.stderr);
    let r = d.fresh_start("np", "{}").await;
    assert_eq!(r.start, "cold-boot");
    let out = d.cli(&["image", "rm", "img-nonexistent"]);
    assert!(
        !out.ok && out.stderr.contains("does not exist"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_built_on_deploy() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "on-deploy"]);
    deploy(
        &d,
        "np",
        &["numpy"],
        "import numpy\ndef handler(e, c):\n    return 3\n",
        10,
    )
    .await;
    assert!(
        eventually(Duration::from_secs(60), || {
            images(&d)["images"]
                .as_array()
                .is_some_and(|a| a.len() == 1)
        }),
        "no image was built for the deployed package set"
    );
    let r = d.fresh_start("np", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    // A second function with the same packages does not build another.
    deploy(
        &d,
        "np2",
        &["numpy"],
        "def handler(e, c):\n    return 4\n",
        10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(images(&d)["images"].as_array().unwrap().len(), 1);
    assert_eq!(images(&d)["images"][0]["functions"], json!(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_page_source_falls_back_to_a_cold_boot() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // Lazy restores from disk: pages are read, and checked, as the instance touches them.
    // A template made before the pages went bad would serve from its own (checked) copy.
    let d = Daemon::start(
        home.path(),
        &[
            "--images",
            "off",
            "--image-memory-mb",
            "0",
            "--image-policy",
            "lazy",
            "--no-templates",
        ],
    );
    deploy(
        &d,
        "np",
        &["numpy"],
        "import numpy\ndef handler(e, c):\n    return 5\n",
        10,
    )
    .await;
    let img = d.build_image("numpy");
    let id = img["id"].as_str().unwrap().to_string();
    let r = d.fresh_start("np", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert_eq!(r.body, json!(5));
    // Every page now fails its hash: the page server must kill the process rather than let
    // it run on one, and the invocation is served by a cold boot.
    let n = std::fs::metadata(image_pages(&d, &id)).unwrap().len() as usize;
    corrupt(&image_pages(&d, &id), 4096..n);
    let (r, logs) = cold_boot_serves(&d, "np", json!(5)).await;
    assert!(r.timing.contains("fallback;"), "{}", r.timing);
    assert!(
        logs.contains(&format!(
            "starting from image {id} failed, cold boot instead"
        )) && logs.contains("pages"),
        "{logs}"
    );
}

/// Waits until `d` lists a standby instance of its (one) image.
fn standby_ready(d: &Daemon) -> bool {
    eventually(Duration::from_secs(20), || {
        images(d)["images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["standby"].as_u64().unwrap_or(0) > 0)
    })
}

const WHO: &str = r#"import os
def handler(e, c):
    if e.get('alloc'):
        x = bytearray(e['alloc'] << 20)
        for i in range(0, len(x), 4096):
            x[i] = 1
        return len(x)
    here = os.path.dirname(os.path.abspath(__file__))
    return {'who': c.function_name, 'root': sorted(os.listdir(os.path.dirname(here))),
            'here': os.path.basename(here), 'cwd': os.getcwd() == here}
"#;

/// Standby instances: restored ahead, then taken by whichever function of the image starts;
/// each sees its own code only, gets its own memory limit, and a standby that died is
/// skipped for a restore of its own.
#[tokio::test(flavor = "multi_thread")]
async fn standby_instances_serve_each_function_its_own_code_and_limit() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "on-deploy", "--standby", "2"]);
    deploy(&d, "first", &[], WHO, 10).await;
    // The image is built on deploy; a standby of it follows.
    assert!(
        standby_ready(&d),
        "no standby after the build: {}",
        images(&d)
    );
    let r = d.fresh_start("first", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert!(r.timing.contains("standby;"), "{}", r.timing);
    assert!(!r.timing.contains("restore;"), "{}", r.timing);
    assert_eq!(r.body["who"], json!("first"));
    assert_eq!(r.body["cwd"], json!(true), "{}", r.raw);
    // Its measured start cost per path.
    let st = d.get_json("/v1/functions/first").await;
    assert!(st["start_ms"]["image"].as_f64().is_some(), "{st}");

    // Another function of the image, with less memory, takes the next standby.
    let (status, body) = d
        .deploy_zip(
            "second",
            json!({"handler": "main.handler", "packages": [], "memory_mb": 128}),
            &py(WHO),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(standby_ready(&d), "no standby refilled: {}", images(&d));
    let r = d.fresh_start("second", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert!(r.timing.contains("standby;"), "{}", r.timing);
    assert_eq!(r.body["who"], json!("second"));
    // Its code directory only: the first function's is not there.
    assert_eq!(r.body["root"], json!([r.body["here"].clone()]), "{}", r.raw);
    d.assert_logged("second", &["a standby forked from its template"]);

    // Its own memory limit (the standby was made with the image's build memory).
    assert!(standby_ready(&d));
    let r = d.fresh_start("second", r#"{"alloc": 400}"#).await;
    assert!(r.timing.contains("standby;"), "{}", r.timing);
    assert_eq!((r.status, r.error.as_str()), (502, "oom"), "{}", r.raw);

    // A standby that died is skipped: the start restores its own.
    d.stop_instances("first").await;
    d.stop_instances("second").await;
    assert!(standby_ready(&d));
    assert!(eventually(Duration::from_secs(10), || {
        let pids = d.instance_pids();
        let n = images(&d)["images"][0]["standby"].as_u64().unwrap_or(0);
        !pids.is_empty() && pids.len() as u64 == n
    }));
    for pid in d.instance_pids() {
        // SAFETY: kill with a pid of this daemon's instance and SIGKILL.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let r = d.invoke("first", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert!(r.timing.contains("restore;"), "{}", r.timing);
    assert_eq!(r.body["who"], json!("first"));
}

const ISOLATED: &str = r#"import os, random, socket, uuid
def handler(e, c):
    seen = sorted(os.listdir('/tmp'))
    with open('/tmp/' + c.aws_request_id, 'w') as f:
        f.write('x')
    status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())
    return {'rid': c.aws_request_id, 'rnd': [random.random(), str(uuid.uuid4())], 'pid': os.getpid(), 'uid': os.getuid(), 'host': socket.gethostname(),
            'procs': sorted(p for p in os.listdir('/proc') if p.isdigit()), 'tmp': seen,
            'bnd': status['CapBnd'].strip(), 'eff': status['CapEff'].strip(),
            'nnp': status['NoNewPrivs'].strip(), 'seccomp': status['Seccomp'].strip(),
            'nofile': open('/proc/self/limits').read().count('1024'),
            'code': sorted(os.listdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))}
"#;

/// Standbys forked from their image's template: each a sandbox of its own as a restored
/// one is (pid 1 of its namespace, its own /proc and /tmp, the sandbox's user, no
/// capabilities, no_new_privs, the filter, the limits, only its function's code), while
/// the image shows its template kept.
#[tokio::test(flavor = "multi_thread")]
async fn forked_standbys_are_sandboxes_of_their_own() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "on-deploy", "--standby", "2"]);
    deploy(&d, "iso", &[], ISOLATED, 10).await;
    assert!(standby_ready(&d), "no standby: {}", images(&d));
    assert_eq!(
        images(&d)["images"][0]["template"],
        json!("kept"),
        "{}",
        images(&d)
    );
    let (mut tmp_seen, mut written, mut drawn) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        assert!(standby_ready(&d));
        let r = d.fresh_start("iso", "{}").await;
        assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
        assert!(r.timing.contains("standby;"), "{}", r.timing);
        let b = &r.body;
        assert_eq!(b["pid"], json!(1), "{}", r.raw);
        assert_eq!(
            b["procs"],
            json!(["1"]),
            "only its own processes: {}",
            r.raw
        );
        assert_eq!(b["uid"], json!(65534), "{}", r.raw);
        assert_eq!(b["host"], json!("ember"), "{}", r.raw);
        assert_eq!(b["bnd"], json!("0000000000000000"), "{}", r.raw);
        assert_eq!(b["eff"], json!("0000000000000000"), "{}", r.raw);
        assert_eq!(
            (b["nnp"].as_str(), b["seccomp"].as_str()),
            (Some("1"), Some("2"))
        );
        assert!(
            b["nofile"].as_u64().unwrap_or(0) >= 1,
            "RLIMIT_NOFILE 1024: {}",
            r.raw
        );
        assert_eq!(b["code"].as_array().map(Vec::len), Some(1), "{}", r.raw);
        tmp_seen.extend(b["tmp"].as_array().cloned().unwrap_or_default());
        written.push(b["rid"].clone());
        drawn.push(b["rnd"].clone());
    }
    // Forks of one template, each reseeded at its INIT: their random draws differ.
    assert_ne!(drawn[0], drawn[1]);
    // Each instance's /tmp is its own: neither saw the other's file (only the directories
    // its binds below /tmp need: this test's home is there).
    assert!(
        written.iter().all(|w| !tmp_seen.contains(w)),
        "{tmp_seen:?} {written:?}"
    );
    d.assert_logged("iso", &["a standby forked from its template"]);
    let out = d.cli(&["image", "ls"]);
    assert!(
        out.stdout.contains("TEMPLATE") && out.stdout.contains("kept"),
        "{}",
        out.stdout
    );
}

/// With no standby ready (none kept: --standby 0), an image start forks from the image's
/// template on its path (made when the image was built), starts at once served so, each
/// its own instance.
#[tokio::test(flavor = "multi_thread")]
async fn an_image_start_without_a_standby_forks_from_the_template() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "on-deploy", "--standby", "0"]);
    deploy(&d, "fk", &[], ISOLATED, 10).await;
    assert!(
        eventually(
            Duration::from_secs(30),
            || images(&d)["images"][0]["template"] == json!("kept")
        ),
        "no template made on the build: {}",
        images(&d)
    );
    let r = d.fresh_start("fk", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert!(r.timing.contains("fork;"), "{}", r.timing);
    assert_eq!(
        (r.body["pid"].clone(), r.body["uid"].clone()),
        (json!(1), json!(65534))
    );
    d.stop_instances("fk").await;
    // At once: each start that finds no idle instance forks its own.
    let (a, b, c) = tokio::join!(
        d.invoke("fk", "{}"),
        d.invoke("fk", "{}"),
        d.invoke("fk", "{}")
    );
    for r in [&a, &b, &c] {
        assert_eq!(r.status, 200, "{}", r.raw);
        let forked = r.start == "image" && r.timing.contains("fork;");
        assert!(forked || r.start == "warm", "{}", r.raw);
    }
    d.assert_logged("fk", &["forked from its template (no standby was ready)"]);
}

/// A handler that imports a submodule its package leaves to first use, at its import and in
/// its body: the node learns both from the start and its first invocation and rebuilds the
/// image with them, so later starts find them imported; the function's own module is never
/// learned.
#[tokio::test(flavor = "multi_thread")]
async fn submodules_a_handler_imports_are_learned_into_its_image() {
    if !need_sandbox() {
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start(home.path(), &["--images", "on-deploy"]);
    // One submodule imported with the handler, one by its first invocation.
    let code = "import sys\n\
                PRE = 'numpy.testing' in sys.modules\n\
                import numpy.testing\n\
                def handler(e, c):\n    had = 'numpy.matlib' in sys.modules\n    \
                import numpy.matlib\n    return [PRE, had]\n";
    deploy(&d, "learner", &["numpy"], code, 10).await;
    assert!(
        eventually(Duration::from_secs(120), || images(&d)["images"]
            .as_array()
            .is_some_and(|a| a.len() == 1)),
        "no image built on deploy"
    );
    let r = d.fresh_start("learner", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert_eq!(r.body, json!([false, false]), "not in the image yet");
    let learned = || {
        let v = images(&d);
        let img = &v["images"][0];
        let has = img["imports"].as_array().is_some_and(|a| {
            a.contains(&json!("numpy.testing")) && a.contains(&json!("numpy.matlib"))
        });
        has && img["imports_pending"] == json!(0)
    };
    assert!(
        eventually(Duration::from_secs(120), learned),
        "the image was not rebuilt with numpy.testing and numpy.matlib: {}",
        images(&d)
    );
    let r = d.fresh_start("learner", "{}").await;
    assert_eq!((r.start.as_str(), r.status), ("image", 200), "{}", r.raw);
    assert_eq!(
        r.body,
        json!([true, true]),
        "the rebuilt image preloads both: {}",
        r.timing
    );
    let imports = images(&d)["images"][0]["imports"].clone();
    assert!(
        !imports.as_array().unwrap().contains(&json!("main")),
        "{imports}"
    );
}
