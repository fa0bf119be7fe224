//! The repository against both backends: a local directory always, and the real S3 server
//! the test script starts (Garage on loopback) when it says where (`EMBER_TEST_S3_*`);
//! without it the S3 half says why it skips.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ember_store::backend::{local::Local, s3::S3};
use ember_store::{Backend, PutFile, Repo, RepoError, S3Config, SetRef};

/// The S3 server the test script started, under a prefix of this test's own.
fn s3(test: &str) -> Option<Arc<dyn Backend>> {
    let get = |k: &str| {
        let var = k
            .replace("EMBER_S3_", "EMBER_TEST_S3_")
            .replace("AWS_", "EMBER_TEST_S3_AWS_");
        std::env::var(var).ok()
    };
    let Some(mut cfg) = S3Config::from_lookup(get).expect("EMBER_TEST_S3_* are consistent") else {
        eprintln!(
            "{test}: the S3 half skips: EMBER_TEST_S3_ENDPOINT is unset (./scripts/test starts Garage and sets it)"
        );
        return None;
    };
    cfg.prefix = format!("t-{test}-{}", std::process::id());
    Some(Arc::new(
        S3::open(&cfg).expect("the S3 client is configured"),
    ))
}

fn backends(test: &str, dir: &Path) -> Vec<Arc<dyn Backend>> {
    let mut out: Vec<Arc<dyn Backend>> = vec![Arc::new(Local::open(&dir.join("store")).unwrap())];
    out.extend(s3(test));
    out
}

/// A file of `n` 4 KiB pages: page `i` holds `pattern(i)` repeated (compressible, with
/// repeats where `pattern` repeats).
fn file(dir: &Path, name: &str, n: u32, pattern: impl Fn(u32) -> u32) -> PathBuf {
    let mut data = Vec::with_capacity(n as usize * 4096);
    for i in 0..n {
        let word = pattern(i).to_le_bytes();
        for _ in 0..1024 {
            data.extend_from_slice(&word);
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

fn set(kind: &str, id: &str) -> SetRef {
    SetRef::new(kind, id).unwrap()
}

/// A repository over `backend` with 256 KiB chunks (64 pages), which the figures of these
/// tests count in.
fn big(backend: &Arc<dyn Backend>) -> Repo {
    Repo::new(backend.clone())
        .with_chunk_size(256 << 10)
        .unwrap()
}

/// `(name, path)` pairs as files without a head.
fn plain(files: &[(&str, &PathBuf)]) -> Vec<PutFile> {
    files.iter().map(|(n, p)| PutFile::new(*n, *p)).collect()
}

#[tokio::test]
async fn sets_round_trip_deduplicated_and_compressed() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends("roundtrip", dir.path()) {
        let backend: Arc<dyn Backend> = backend;
        let repo = big(&backend);
        // 200 pages whose content repeats every 64 pages (a chunk): chunks 0, 1 and 2 equal;
        // the last, shorter chunk differs. Plus a small file.
        let pages = file(dir.path(), "pages", 200, |i| i % 64);
        let meta = dir.path().join("meta");
        std::fs::write(&meta, b"not page aligned, 37 bytes of meta...").unwrap();
        let files = plain(&[("pages", &pages), ("meta", &meta)]);
        let (m, st) = repo
            .put_files(&set("image", "img-a"), &files)
            .await
            .unwrap();
        assert_eq!(
            (st.files, st.chunks, st.distinct),
            (2, 5, 3),
            "{}: {st:?}",
            backend.describe()
        );
        assert!(st.dedup_ratio() > 1.5, "{st:?}");
        assert!(st.compression_ratio() > 50.0, "{st:?}");
        assert_eq!(m.files[0].chunks[0], m.files[0].chunks[2]);

        let again = repo.manifest(&set("image", "img-a")).await.unwrap();
        assert_eq!(again, m);
        let out = dir.path().join("out");
        let got = repo.get_files(&again, &out).await.unwrap();
        assert_eq!(got.chunks, 5);
        assert_eq!(
            std::fs::read(out.join("pages")).unwrap(),
            std::fs::read(&pages).unwrap()
        );
        assert_eq!(
            std::fs::read(out.join("meta")).unwrap(),
            std::fs::read(&meta).unwrap()
        );
        assert_eq!(
            repo.sets("image").await.unwrap(),
            ["img-a"],
            "{}",
            backend.describe()
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[tokio::test]
async fn a_second_set_over_the_same_pages_writes_only_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends("dedup", dir.path()) {
        let image = file(dir.path(), "image-pages", 256, |i| i);
        // A layer-like file: the same pages but the last chunk's.
        let other = file(dir.path(), "other-pages", 256, |i| {
            if i >= 192 { i + 1000 } else { i }
        });
        // Two nodes (repos), one store.
        let (a, b) = (big(&backend), big(&backend));
        let (_, first) = a
            .put_files(&set("snapshot", "fn-one"), &plain(&[("pages", &image)]))
            .await
            .unwrap();
        assert_eq!(
            (first.written, first.reused),
            (4, 0),
            "{}",
            backend.describe()
        );
        let (_, second) = b
            .put_files(&set("snapshot", "fn-two"), &plain(&[("pages", &other)]))
            .await
            .unwrap();
        assert_eq!(
            (second.written, second.reused),
            (1, 3),
            "{}",
            backend.describe()
        );
    }
}

#[tokio::test]
async fn wrong_or_missing_bytes_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends("faults", dir.path()) {
        let repo = big(&backend);
        let pages = file(dir.path(), "pages", 128, |i| i * 7);
        let (m, _) = repo
            .put_files(&set("image", "img-f"), &plain(&[("pages", &pages)]))
            .await
            .unwrap();
        let (c0, c1) = (m.files[0].chunks[0], m.files[0].chunks[1]);
        // The store answers chunk 0's name with chunk 1's (valid) object: wrong bytes.
        let other = backend.get(&c1.key()).await.unwrap();
        backend.put(&c0.key(), other).await.unwrap();
        let out = dir.path().join("out-corrupt");
        let e = repo.get_files(&m, &out).await.unwrap_err();
        assert!(matches!(e, RepoError::Chunk(_)), "{e}");
        assert!(e.to_string().contains("another chunk"), "{e}");
        assert!(!out.join("pages").exists(), "no file from a corrupt set");
        // Bytes flipped inside a stored object.
        let mut flipped = backend.get(&c1.key()).await.unwrap().to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x55;
        backend.put(&c1.key(), Bytes::from(flipped)).await.unwrap();
        assert!(repo.fetch_chunk(c1).await.is_err());
        // A lost object.
        backend.delete(&c1.key()).await.unwrap();
        let e = repo.fetch_chunk(c1).await.unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        // A manifest replaced by garbage.
        backend
            .put(
                &ember_store::Key::new("manifests/image/img-f").unwrap(),
                Bytes::from_static(b"junk"),
            )
            .await
            .unwrap();
        let e = repo.manifest(&set("image", "img-f")).await.unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}

#[tokio::test]
async fn gc_removes_what_no_manifest_names_and_never_races_an_upload() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(2);
    for backend in backends("gc", dir.path()) {
        let shared = file(dir.path(), "shared", 128, |i| i);
        let only_a = file(dir.path(), "only-a", 64, |i| i + 5000);
        let only_b = file(dir.path(), "only-b", 64, |i| i + 9000);
        let node = big(&backend).with_grace(grace);
        node.put_files(
            &set("image", "a"),
            &plain(&[("s", &shared), ("x", &only_a)]),
        )
        .await
        .unwrap();
        let (mb, _) = node
            .put_files(
                &set("image", "b"),
                &plain(&[("s", &shared), ("x", &only_b)]),
            )
            .await
            .unwrap();
        node.delete_set(&set("image", "a")).await.unwrap();
        // Young orphans are kept.
        let gc = big(&backend).with_grace(grace);
        let st = gc.gc().await.unwrap();
        assert_eq!(
            (st.deleted, st.kept_young),
            (0, 1),
            "{}: {st:?}",
            backend.describe()
        );
        tokio::time::sleep(grace + Duration::from_millis(1100)).await;
        let st = gc.gc().await.unwrap();
        assert_eq!(
            (st.deleted, st.referenced),
            (1, 3),
            "{}: {st:?}",
            backend.describe()
        );
        node.get_files(&mb, &dir.path().join("b")).await.unwrap();

        // Every chunk old now, b deleted: an upload of c, reusing b's shared chunks, runs
        // while another node collects over and over. The node that uploaded b believes
        // those chunks stored; a collection that deleted something makes it check again.
        node.delete_set(&set("image", "b")).await.unwrap();
        tokio::time::sleep(grace + Duration::from_millis(1100)).await;
        let (c, files) = (set("image", "c"), plain(&[("s", &shared)]));
        let upload = node.put_files(&c, &files);
        let collect = async {
            let (mut deleted, mut busy) = (0, 0);
            for _ in 0..30 {
                match gc.gc().await {
                    Ok(st) => deleted += st.deleted,
                    Err(RepoError::Busy(_)) => busy += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (deleted, busy)
        };
        let ((mc, put), (deleted, busy)) = tokio::join!(async { upload.await.unwrap() }, collect);
        eprintln!(
            "{}: upload {put:?}; collections deleted {deleted}, busy {busy}",
            backend.describe()
        );
        node.get_files(&mc, &dir.path().join("c")).await.unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("c/s")).unwrap(),
            std::fs::read(&shared).unwrap()
        );
        // b's own chunk went; nothing named is lost; no lock is left behind.
        let st = gc.gc().await.unwrap();
        assert_eq!((st.referenced, st.chunks), (2, 2), "{st:?}");
        assert!(backend.list("locks/").await.unwrap().is_empty());

        // A crashed upload's lock holds collections off until it is stale.
        let dead = ember_store::Key::new("locks/shared-0123456789abcdef").unwrap();
        backend.put(&dead, Bytes::from_static(b"0")).await.unwrap();
        assert!(matches!(gc.gc().await, Err(RepoError::Busy(_))));
        let patient = big(&backend).with_lock_stale(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        patient.gc().await.unwrap();
        backend.delete(&dead).await.unwrap();
    }
}

/// A store that is down, or that accepts and never answers, gives an error within the
/// configured bound: callers fall back instead of waiting.
#[tokio::test]
async fn a_store_down_or_silent_fails_within_its_bound() {
    use std::time::Instant;
    // Accepts connections and reads, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    // Nothing listens here.
    let down_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (what, addr) in [("silent", silent_addr), ("down", down_addr)] {
        let get = |k: &str| match k {
            "EMBER_S3_ENDPOINT" => Some(format!("http://{addr}")),
            "EMBER_S3_BUCKET" => Some("b".into()),
            "AWS_ACCESS_KEY_ID" => Some("GK000000000000000000000000".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("0".repeat(64)),
            "EMBER_S3_TIMEOUT_MS" => Some("300".into()),
            _ => None,
        };
        let cfg = S3Config::from_lookup(get).unwrap().unwrap();
        let repo = Repo::new(Arc::new(S3::open(&cfg).unwrap()));
        let t0 = Instant::now();
        let e = repo.manifest(&set("image", "x")).await.unwrap_err();
        let took = t0.elapsed();
        // One request of 300 ms, two retries with back-off, a connect of 75 ms: the call's
        // own deadline is 3 x 300 + 75 ms.
        assert!(took < Duration::from_secs(3), "{what}: {took:?} {e}");
        eprintln!("{what}: failed in {took:?}: {e}");
    }
}

/// With the default 16 KiB chunks and a page file's 4 KiB header as its own chunk, two
/// page files holding the same pages behind different headers share every page chunk.
#[tokio::test]
async fn page_files_share_their_page_chunks_behind_their_own_headers() {
    let dir = tempfile::tempdir().unwrap();
    for backend in backends("heads", dir.path()) {
        let repo = Repo::new(backend.clone());
        let mut one = vec![1u8; 4096];
        let mut two = vec![2u8; 4096];
        for i in 0..40u32 {
            let page: Vec<u8> = (0..1024).flat_map(|_| (i * 31).to_le_bytes()).collect();
            one.extend_from_slice(&page);
            two.extend_from_slice(&page);
        }
        let (p1, p2) = (dir.path().join("one"), dir.path().join("two"));
        std::fs::write(&p1, &one).unwrap();
        std::fs::write(&p2, &two).unwrap();
        let put = |p: &PathBuf| vec![PutFile::new("pages", p.clone()).with_head(4096)];
        let (m1, a) = repo
            .put_files(&set("image", "one"), &put(&p1))
            .await
            .unwrap();
        assert_eq!(
            (a.chunks, a.written),
            (11, 11),
            "{}: {a:?}",
            backend.describe()
        );
        assert_eq!(m1.files[0].chunk_range(1), (4096, 16384));
        let (m2, b) = repo
            .put_files(&set("image", "two"), &put(&p2))
            .await
            .unwrap();
        assert_eq!(
            (b.written, b.reused),
            (1, 10),
            "{}: {b:?}",
            backend.describe()
        );
        let out = dir.path().join("two-out");
        repo.get_files(&m2, &out).await.unwrap();
        assert_eq!(std::fs::read(out.join("pages")).unwrap(), two);
        // Pieces without the rest (a lazy restore's pages): across the head, across chunk
        // boundaries, cut at the end; only the chunks covering them are read.
        let f = &m2.files[0];
        for (off, len) in [(0, 10), (4000, 200), (4096 + 16384 - 8, 16), (5000, 40000)] {
            let (got, st) = repo.read_range(f, off, len).await.unwrap();
            assert_eq!(got, two[off as usize..(off + len) as usize], "{off}+{len}");
            assert_eq!(st.chunks, f.chunks_for(off, len).1, "{off}+{len}");
        }
        let end = two.len() as u64;
        let (got, _) = repo.read_range(f, end - 100, 4096).await.unwrap();
        assert_eq!(got, two[(end - 100) as usize..]);
    }
}
