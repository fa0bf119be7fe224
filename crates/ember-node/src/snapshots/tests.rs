//! The store on made-up snapshots: files named as ember-snap's, filled with bytes (the store
//! never parses them; the node's restore checks them).

use super::*;
use crate::config::Eviction;

const KB: u64 = 1024;

struct Fixture {
    home: tempfile::TempDir,
    cfg: SnapshotConfig,
    metrics: SnapshotMetrics,
}

impl Fixture {
    fn new(eviction: Eviction, disk_bytes: u64) -> Fixture {
        Fixture {
            home: tempfile::tempdir().unwrap(),
            cfg: SnapshotConfig {
                eviction,
                disk_bytes,
                failures_unhealthy: 3,
                ..SnapshotConfig::default()
            },
            metrics: SnapshotMetrics::default(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.home.path().join("snapshots")
    }

    fn open(&self) -> SnapshotStore {
        std::fs::create_dir_all(self.dir()).unwrap();
        SnapshotStore::open(self.dir(), self.cfg.clone(), self.metrics.clone()).unwrap()
    }
}

fn info(function: &str, key: &str, init_ms: f64) -> SnapshotInfo {
    SnapshotInfo {
        id: snapshot_id(function, key),
        function: function.into(),
        version: 1,
        key: key.into(),
        parent_image: Some("img-0123456789ab".into()),
        parent_meta_hash: Some("ab".repeat(32)),
        point: SnapshotPoint::AfterInit,
        bytes: 0,
        pages: 1,
        created_at: 1_700_000_000,
        init_ms,
        dump_ms: 5.0,
        store_key: None,
        fetched: false,
        working_set_pages: 0,
    }
}

/// Stages a dump of `bytes` bytes (meta + pages) and adds it.
fn add(
    store: &SnapshotStore,
    info: SnapshotInfo,
    bytes: u64,
) -> Result<Vec<Evicted>, SnapshotError> {
    let staged = store.staging(&info.id);
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("meta"), vec![1u8; 100]).unwrap();
    std::fs::write(staged.join("pages"), vec![2u8; (bytes - 100) as usize]).unwrap();
    store.add(&staged, info)
}

fn ids(store: &SnapshotStore) -> Vec<String> {
    store.list().into_iter().map(|s| s.info.function).collect()
}

fn hit(store: &SnapshotStore, function: &str, key: &str) -> Option<SnapshotHandle> {
    match store.lookup(function, key) {
        Lookup::Hit(h) => Some(h),
        _ => None,
    }
}

#[test]
fn lookup_hits_the_current_key_and_removes_a_stale_one() {
    let f = Fixture::new(Eviction::Lru, 1 << 20);
    let store = f.open();
    assert!(matches!(store.lookup("fa", "aa"), Lookup::Miss));
    add(&store, info("fa", "aa", 80.0), 10 * KB).unwrap();
    let h = hit(&store, "fa", "aa").unwrap();
    assert_eq!(h.dir, f.dir().join("snap-fa-aa"));
    assert!(h.dir.join("pages").is_file() && h.loaded.is_none());
    assert_eq!(h.info.bytes, 10 * KB);
    let json = std::fs::read_to_string(h.dir.join("snapshot.json")).unwrap();
    assert!(json.contains("\"format\": \"ember-snapshot/2\""), "{json}");
    assert!(json.contains("\"point\": \"after-init\""), "{json}");
    // New code: the snapshot is stale, removed, and reported once.
    match store.lookup("fa", "bb") {
        Lookup::Stale(old) => assert_eq!(old.key, "aa"),
        _ => panic!("expected stale"),
    }
    assert!(!h.dir.exists());
    assert!(matches!(store.lookup("fa", "aa"), Lookup::Miss));
    let l = Metrics::fn_labels("fa");
    assert_eq!(f.metrics.hits.get_or_create(&l).get(), 1);
    assert_eq!(f.metrics.stale.get_or_create(&l).get(), 1);
    assert_eq!(f.metrics.misses.get_or_create(&l).get(), 2);
    assert_eq!(f.metrics.disk_bytes.get(), 0);
}

#[test]
fn a_new_snapshot_replaces_the_functions_older_one() {
    let f = Fixture::new(Eviction::Lru, 1 << 20);
    let store = f.open();
    add(&store, info("fa", "aa", 1.0), 10 * KB).unwrap();
    add(&store, info("fb", "aa", 1.0), 10 * KB).unwrap();
    let ev = add(&store, info("fa", "bb", 1.0), 20 * KB).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].info.id.as_str(), ev[0].reason),
        ("snap-fa-aa", EvictReason::Replaced)
    );
    assert!(!f.dir().join("snap-fa-aa").exists());
    assert_eq!(store.disk_bytes(), (30 * KB, 1 << 20));
    assert_eq!(f.metrics.evictions.get(), 0);
    // The same id again (a retake) replaces itself.
    assert!(
        add(&store, info("fa", "bb", 1.0), 20 * KB)
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list().len(), 2);
    assert_eq!(store.disk_bytes().0, 30 * KB);
}

#[test]
fn both_policies_hold_the_budget() {
    for eviction in [Eviction::Lru, Eviction::Gdsf] {
        let f = Fixture::new(eviction, 100 * KB);
        let store = f.open();
        let mut evicted = 0;
        for i in 0..30u64 {
            let name = format!("f{i}");
            let ev = add(
                &store,
                info(&name, "aa", (i * 37 % 300) as f64),
                (10 + i % 25) * KB,
            )
            .unwrap();
            evicted += ev.len();
            let (used, budget) = store.disk_bytes();
            assert!(used <= budget, "{eviction:?}: {used} > {budget}");
            // The one just added is never its own victim.
            assert!(hit(&store, &name, "aa").is_some(), "{eviction:?}");
            store.record_use(&snapshot_id(&name, "aa"));
            let on_disk: u64 = store
                .list()
                .iter()
                .map(|s| dir_bytes(&f.dir().join(&s.info.id)).unwrap())
                .sum();
            assert_eq!(on_disk, used, "{eviction:?}");
        }
        assert!(evicted > 0);
        assert_eq!(f.metrics.evictions.get(), evicted as u64, "{eviction:?}");
        let entries = std::fs::read_dir(f.dir()).unwrap().count();
        assert_eq!(
            entries,
            store.list().len() + 1,
            "{eviction:?}: files left behind"
        );
    }
}

#[test]
fn lru_evicts_the_least_recently_used() {
    let f = Fixture::new(Eviction::Lru, 30 * KB);
    let store = f.open();
    for name in ["fa", "fb", "fc"] {
        add(&store, info(name, "aa", 100.0), 10 * KB).unwrap();
    }
    store.record_use(&snapshot_id("fa", "aa"));
    let ev = add(&store, info("fd", "aa", 100.0), 10 * KB).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].info.function.as_str(), ev[0].reason),
        ("fb", EvictReason::Budget)
    );
    assert_eq!(ids(&store), ["fa", "fc", "fd"]);
}

#[test]
fn gdsf_keeps_a_small_frequent_costly_snapshot_over_a_large_rare_one() {
    let run = |eviction| {
        let f = Fixture::new(eviction, 100 * KB);
        let store = f.open();
        add(&store, info("small", "aa", 300.0), 5 * KB).unwrap();
        for _ in 0..5 {
            store.record_use(&snapshot_id("small", "aa"));
        }
        add(&store, info("large", "aa", 50.0), 60 * KB).unwrap();
        store.record_use(&snapshot_id("large", "aa"));
        add(&store, info("new", "aa", 10.0), 40 * KB).unwrap();
        ids(&store)
    };
    assert_eq!(run(Eviction::Gdsf), ["new", "small"]);
    // LRU, for contrast, drops the small one: it was used least recently.
    assert_eq!(run(Eviction::Lru), ["large", "new"]);
}

#[test]
fn a_snapshot_larger_than_the_budget_is_refused() {
    let f = Fixture::new(Eviction::Lru, 50 * KB);
    let store = f.open();
    add(&store, info("fa", "aa", 1.0), 10 * KB).unwrap();
    let err = add(&store, info("big", "aa", 1.0), 51 * KB).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "snapshot snap-big-aa takes {} bytes, more than the whole snapshot cache ({} \
             bytes); raise snapshot_disk_mb, or set snapshot = \"off\" for function big",
            51 * KB,
            50 * KB
        )
    );
    // Nothing left behind, nothing evicted for it.
    assert_eq!(ids(&store), ["fa"]);
    assert_eq!(std::fs::read_dir(f.dir().join(STAGING)).unwrap().count(), 0);
    // A dump that did not finish is refused too.
    let staged = store.staging("x");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("meta"), b"m").unwrap();
    let err = store.add(&staged, info("fx", "aa", 1.0)).unwrap_err();
    assert!(err.to_string().contains("has no pages file"), "{err}");
    assert!(!staged.exists());
    let mut bad = info("fx", "aa", 1.0);
    bad.id = "../escape".into();
    assert!(matches!(
        add(&store, bad, 10 * KB),
        Err(SnapshotError::Invalid { .. })
    ));
}

#[test]
fn a_reopened_store_keeps_its_catalog() {
    for eviction in [Eviction::Lru, Eviction::Gdsf] {
        let f = Fixture::new(eviction, 1 << 20);
        {
            let store = f.open();
            add(&store, info("fa", "aa", 10.0), 10 * KB).unwrap();
            add(&store, info("fb", "bb", 20.0), 20 * KB).unwrap();
        }
        let store = f.open();
        let list = store.list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].info, {
            let mut i = info("fa", "aa", 10.0);
            i.bytes = 10 * KB;
            i
        });
        assert_eq!(list[1].location, Location::Disk);
        assert!(hit(&store, "fb", "bb").is_some());
        assert_eq!(f.metrics.disk_bytes.get(), 30 * 1024);
        // A smaller budget at the next start: evicted down to it.
        let mut small = Fixture::new(eviction, 25 * KB);
        small.home = f.home;
        drop(store);
        let store = small.open();
        assert_eq!(store.list().len(), 1, "{eviction:?}");
        assert!(store.disk_bytes().0 <= 25 * KB);
    }
}

#[test]
fn corrupt_entries_are_dropped_at_open() {
    let f = Fixture::new(Eviction::Lru, 1 << 20);
    let good = {
        let store = f.open();
        for name in [
            "good", "json", "big", "format", "nopages", "moved", "noformat", "tampered",
        ] {
            add(&store, info(name, "aa", 1.0), 10 * KB).unwrap();
        }
        store.path(&snapshot_id("good", "aa"))
    };
    let d = |name: &str| f.dir().join(snapshot_id(name, "aa"));
    std::fs::write(
        d("json").join(INFO_FILE),
        b"{\"format\": \"ember-snapshot/2\", ",
    )
    .unwrap();
    let mut huge = b"{\"format\": \"ember-snapshot/2\", \"pad\": \"".to_vec();
    huge.resize(70 << 10, b'x');
    std::fs::write(d("big").join(INFO_FILE), huge).unwrap();
    let text = std::fs::read_to_string(d("format").join(INFO_FILE)).unwrap();
    std::fs::write(
        d("format").join(INFO_FILE),
        text.replace("ember-snapshot/2", "ember-snapshot/9"),
    )
    .unwrap();
    let text = std::fs::read_to_string(d("noformat").join(INFO_FILE)).unwrap();
    std::fs::write(
        d("noformat").join(INFO_FILE),
        text.replace("\"format\"", "\"f\""),
    )
    .unwrap();
    let text = std::fs::read_to_string(d("tampered").join(INFO_FILE)).unwrap();
    assert!(text.contains("\"version\": 1"), "{text}");
    std::fs::write(
        d("tampered").join(INFO_FILE),
        text.replace("\"version\": 1", "\"version\": 2"),
    )
    .unwrap();
    std::fs::remove_file(d("nopages").join("pages")).unwrap();
    std::fs::rename(d("moved"), f.dir().join("snap-other")).unwrap();
    std::fs::create_dir_all(f.dir().join("empty")).unwrap();
    std::fs::write(f.dir().join("stray-file"), b"\xff\xfe").unwrap();
    std::fs::create_dir_all(f.dir().join(STAGING).join("half-a-dump")).unwrap();
    let store = f.open();
    assert_eq!(ids(&store), ["good"]);
    let mut left: Vec<String> = std::fs::read_dir(f.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, [".staging", "snap-good-aa"]);
    assert!(good.join("pages").is_file());
    assert_eq!(std::fs::read_dir(f.dir().join(STAGING)).unwrap().count(), 0);
}

#[test]
fn a_snapshot_failing_to_restore_in_a_row_is_removed() {
    let f = Fixture::new(Eviction::Gdsf, 1 << 20);
    let store = f.open();
    add(&store, info("fa", "aa", 1.0), 10 * KB).unwrap();
    let id = snapshot_id("fa", "aa");
    assert!(!store.failed(&id, "restore: bad"));
    assert!(!store.failed(&id, "restore: bad"));
    store.record_use(&id);
    let s = &store.list()[0];
    assert_eq!((s.failures, s.uses), (0, 1));
    assert_eq!(s.last_error.as_deref(), Some("restore: bad"));
    assert!(!store.failed(&id, "restore: worse"));
    assert!(!store.failed(&id, "restore: worse"));
    assert!(store.failed(&id, "restore: worse"));
    assert!(store.list().is_empty());
    assert!(!store.path(&id).exists());
    assert!(!store.failed(&id, "again"));
}

#[test]
fn remove_and_remove_function() {
    let f = Fixture::new(Eviction::Lru, 1 << 20);
    let store = f.open();
    add(&store, info("fa", "aa", 1.0), 10 * KB).unwrap();
    add(&store, info("fb", "aa", 1.0), 10 * KB).unwrap();
    let err = store.remove("snap-nope").unwrap_err();
    assert!(err.is_user_error());
    assert_eq!(
        err.to_string(),
        "snapshot \"snap-nope\" does not exist (`ember snapshot ls` lists snapshots)"
    );
    store.remove(&snapshot_id("fa", "aa")).unwrap();
    assert!(!f.dir().join("snap-fa-aa").exists());
    let gone = store.remove_function("fb");
    assert_eq!(gone.len(), 1);
    assert!(store.remove_function("fb").is_empty());
    assert!(store.list().is_empty());
    assert_eq!(store.disk_bytes().0, 0);
}

#[test]
fn snapshot_ids_name_the_function_and_key() {
    assert_eq!(
        snapshot_id("hello", "0123456789abcdef0123"),
        "snap-hello-0123456789abcdef"
    );
    assert!(valid_id(&snapshot_id("a-b", "../..")));
    assert!(valid_id(&snapshot_id("My_Fn", "ab")));
    for bad in ["", ".staging", "../x", "a/b", "a b", &"a".repeat(129)] {
        assert!(!valid_id(bad), "{bad}");
    }
}

/// A real image: `sleep` dumped with ember-snap (needs root and ptrace).
fn real_image(dir: &Path) -> Option<Arc<LoadedImage>> {
    let on = std::env::var_os("EMBER_PRIVILEGED_TESTS").is_some_and(|v| v == "1");
    // /proc/self belongs to the process's effective user.
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if !on || !root {
        eprintln!("SKIP: needs root and EMBER_PRIVILEGED_TESTS=1 (ptrace to dump a process)");
        return None;
    }
    // Through Python, which closes the descriptors the test harness leaks (a dump refuses
    // pipes it was not told about) and execs sleep.
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import os; os.closerange(3, 65536); os.execvp('sleep', ['sleep', '100'])",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Until it has exec'd sleep (not this test binary's image).
    let exe = format!("/proc/{}/exe", child.id());
    while std::fs::read_link(&exe).is_ok_and(|p| !p.ends_with("sleep")) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let pid = i32::try_from(child.id()).unwrap();
    let opts = ember_snap::DumpOptions {
        inherited: vec![0, 1, 2],
        ..Default::default()
    };
    let dumped = ember_snap::dump(pid, dir, &opts);
    let _ = child.kill();
    let _ = child.wait();
    dumped.unwrap();
    Some(Arc::new(LoadedImage::load(dir).unwrap()))
}

#[test]
fn loaded_layers_are_kept_in_memory_under_their_budget() {
    let mut f = Fixture::new(Eviction::Lru, 1 << 30);
    let scratch = tempfile::tempdir().unwrap();
    let Some(img) = real_image(&scratch.path().join("img")) else {
        return;
    };
    let bytes = img.page_data().len() as u64;
    // Room for one loaded image, not two.
    f.cfg.memory_bytes = bytes + bytes / 2;
    let store = f.open();
    for name in ["fa", "fb"] {
        add(&store, info(name, "aa", 1.0), 10 * KB).unwrap();
    }
    let (a, b) = (snapshot_id("fa", "aa"), snapshot_id("fb", "aa"));
    assert!(!store.keep("snap-unknown", img.clone()));
    // Metadata alone is not a layer in memory.
    let opened = Arc::new(LoadedImage::open(&scratch.path().join("img")).unwrap());
    assert!(!store.keep(&a, opened));
    assert!(store.keep(&a, img.clone()));
    assert_eq!(store.memory_bytes(), (bytes, f.cfg.memory_bytes));
    assert_eq!(f.metrics.memory_bytes.get(), i64::try_from(bytes).unwrap());
    let h = hit(&store, "fa", "aa").unwrap();
    assert!(Arc::ptr_eq(h.loaded.as_ref().unwrap(), &img));
    let whr =
        |s: &SnapshotStore| -> Vec<Location> { s.list().iter().map(|s| s.location).collect() };
    assert_eq!(whr(&store), [Location::Memory, Location::Disk]);
    // The second pushes the first out; removing it empties the tier.
    assert!(store.keep(&b, img.clone()));
    assert!(store.cached(&a).is_none() && store.cached(&b).is_some());
    assert_eq!(whr(&store), [Location::Disk, Location::Memory]);
    store.remove(&b).unwrap();
    assert_eq!(store.memory_bytes().0, 0);
    assert_eq!(f.metrics.memory_bytes.get(), 0);
}

#[test]
fn a_snapshot_json_with_inexact_floats_reads_back() {
    let f = Fixture::new(Eviction::Lru, 1 << 20);
    let mut i = info("floats", "aa", 2042.3914289999998);
    i.dump_ms = 0.1 + 0.2;
    {
        let store = f.open();
        add(&store, i, 10 * KB).unwrap();
    }
    // Reopened: the checksum, recomputed from the parsed values, still matches.
    assert_eq!(ids(&f.open()), ["floats"]);
}

#[test]
fn a_published_versions_snapshot_id_keeps_to_the_id_alphabet() {
    let id = snapshot_id("f_1:3", "ab12cd");
    assert_eq!(id, "snap-f_1.3-ab12cd");
    assert_ne!(id, snapshot_id("f_1", "ab12cd"));
}
