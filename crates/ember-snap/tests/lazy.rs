//! Lazy and bulk restore: pages on demand from a page server, with the process moving,
//! freeing and discarding memory it has not touched yet.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{Conv, privileged, tmp};
use ember_snap::lazy::{FileSource, PageSource, Policy};
use ember_snap::{LoadedImage, RestoreOptions};

/// An image of the memory target, loaded (the in-memory page source).
fn memory_image(dir: &Path) -> Arc<LoadedImage> {
    Arc::new(common::dump_python("memory.py", &[], Path::new("/"), dir))
}

fn options(img: &Arc<LoadedImage>, policy: Policy) -> RestoreOptions {
    RestoreOptions {
        policy,
        source: Some(img.clone() as Arc<dyn PageSource>),
        ..RestoreOptions::default()
    }
}

fn check_memory(r: &mut Conv) {
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    common::check_memory(r);
}

#[test]
fn lazy_restore_serves_moved_freed_and_discarded_memory_right() {
    if !privileged("lazy_restore_serves_moved_freed_and_discarded_memory_right") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let (mut r, server) = common::restore_served(&img, &options(&img, Policy::Lazy));
    check_memory(&mut r);
    let live = server.stats();
    assert!(live.faults > 0 && live.events > 0, "{live:?}");
    assert!(
        live.pages_installed < img.meta.pages.count,
        "lazy installs only what is touched: {live:?}"
    );
    drop(r); // kills the process: the server ends with it
    let end = server.wait().unwrap();
    assert!(end.bytes_fetched >= end.pages_installed * 4096, "{end:?}");
}

#[test]
fn bulk_restore_fills_everything_then_its_server_ends() {
    if !privileged("bulk_restore_fills_everything_then_its_server_ends") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let (mut r, server) = common::restore_served(&img, &options(&img, Policy::Bulk));
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    // The first fault started the background fill; it ends on its own, process alive.
    for _ in 0..500 {
        if server.is_finished() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        server.is_finished(),
        "bulk server still running: {:?}",
        server.stats()
    );
    let s = server.wait().unwrap();
    // Everything but the few pages installed before the process ran (file-private copies,
    // arguments, glibc's thread descriptor).
    assert!(
        s.pages_installed * 10 >= img.meta.pages.count * 9,
        "{s:?} of {}",
        img.meta.pages.count
    );
    check_memory(&mut r);
}

#[test]
fn lazy_restore_from_the_page_file_checks_chunks_as_it_reads_them() {
    if !privileged("lazy_restore_from_the_page_file_checks_chunks_as_it_reads_them") {
        return;
    }
    let dir = tmp();
    let loaded = memory_image(dir.path());
    let image = dir.path().join("image");
    let img = Arc::new(LoadedImage::open(&image).unwrap());
    assert!(!img.is_loaded());
    let file: Arc<dyn PageSource> = Arc::new(FileSource::open(&image, &img.meta).unwrap());
    let opts = RestoreOptions {
        policy: Policy::Lazy,
        source: Some(file),
        ..RestoreOptions::default()
    };
    let (mut r, server) = common::restore_served(&img, &opts);
    check_memory(&mut r);
    drop(r);
    assert!(server.wait().unwrap().faults > 0);
    // An eager restore needs the pages in memory.
    let Err(e) = common::try_restore(&img) else {
        panic!("an eager restore of an image opened without pages succeeded");
    };
    assert!(
        common::chain(&e).contains("needs its pages in memory"),
        "{}",
        common::chain(&e)
    );
    drop(loaded);
}

#[test]
fn a_corrupted_chunk_is_never_installed_and_its_process_is_killed() {
    if !privileged("a_corrupted_chunk_is_never_installed_and_its_process_is_killed") {
        return;
    }
    let dir = tmp();
    let loaded = memory_image(dir.path());
    let image = dir.path().join("image");
    let chunks = loaded.meta.pages.chunks.len() as u64;
    // Spoil one byte in the middle chunk, after the image was checked at open.
    let img = Arc::new(LoadedImage::open(&image).unwrap());
    let file: Arc<dyn PageSource> = Arc::new(FileSource::open(&image, &img.meta).unwrap());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(image.join("pages"))
            .unwrap();
        f.write_all_at(
            b"\xee",
            4096 * (1 + chunks / 2 * ember_snap::image::format::CHUNK_PAGES) + 100,
        )
        .unwrap();
    }
    let opts = RestoreOptions {
        policy: Policy::Bulk,
        source: Some(file),
        ..RestoreOptions::default()
    };
    let pages = image.join("pages").display().to_string();
    match common::try_restore_served(&img, &opts) {
        // The chunk held a page the restore installs itself: refused before running.
        Err(e) => {
            let e = common::chain(&e);
            eprintln!("refused during the restore: {e}");
            assert!(e.contains(&pages) && e.contains("hash check"), "{e}");
        }
        // Otherwise the background fill reaches it: the process dies, the server says why.
        Ok((mut r, server)) => {
            let _ = r.ask("ping");
            let e = server.wait().unwrap_err();
            let text = common::chain(&e);
            eprintln!("the page server refused it: {text}");
            assert!(
                text.contains(&pages) && text.contains("hash check"),
                "{text}"
            );
            assert!(text.contains(&image.display().to_string()), "{text}");
            assert_eq!(common::wait_signal(r.pid), libc::SIGKILL);
            std::mem::forget(r);
        }
    }
}

#[test]
fn a_recorded_working_set_replays_and_spares_the_faults() {
    if !privileged("a_recorded_working_set_replays_and_spares_the_faults") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    // Record: what the first request after a lazy restore touched.
    let (mut r, server) = common::restore_served(&img, &options(&img, Policy::Lazy));
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    let ws = server.working_set();
    let lazy_faults = server.stats().faults;
    assert!(
        !ws.is_empty() && ws.len() as u64 == lazy_faults,
        "{} of {lazy_faults}",
        ws.len()
    );
    drop(r);
    server.wait().unwrap();
    ember_snap::image::write_working_set(&img.dir, &img.meta, &ws).unwrap();

    // Replay: the set goes in before the process runs; the same request faults little.
    let recorded = ember_snap::image::read_working_set(&img.dir, &img.meta)
        .unwrap()
        .unwrap();
    let opts = RestoreOptions {
        working_set: Some(Arc::new(recorded)),
        ..options(&img, Policy::Prefetch)
    };
    let (mut r, server) = common::restore_served(&img, &opts);
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    let replay_faults = server.stats().faults;
    assert!(
        replay_faults * 4 <= lazy_faults,
        "{replay_faults} faults after prefetch, {lazy_faults} lazily"
    );
    check_memory(&mut r);
    drop(r);
    server.wait().unwrap();

    // Without a recorded set, prefetch says what to do.
    let Err(e) = common::try_restore_with(&img, &options(&img, Policy::Prefetch)) else {
        panic!("a prefetch restore without a working set succeeded");
    };
    assert!(
        common::chain(&e).contains("record one"),
        "{}",
        common::chain(&e)
    );
}

/// PSS (KiB) of a process, from smaps_rollup.
fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn mapped_instances_share_unwritten_pages_with_anonymous_memory_semantics() {
    if !privileged("mapped_instances_share_unwritten_pages_with_anonymous_memory_semantics") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let mapped = RestoreOptions {
        policy: Policy::Mapped,
        ..RestoreOptions::default()
    };
    let (mut r, server) = common::restore_served(&img, &mapped);
    // The same answers as every other policy: memory moved, grown in place, freed and
    // discarded reads as anonymous memory would (zeros where discarded or grown), though
    // its pages are mapped from the image's memfd; a forked child too.
    check_memory(&mut r);
    let s = server.stats();
    assert!(s.zero_faults > 0 && s.events > 0, "{s:?}");
    assert_eq!(
        s.bytes_fetched, 0,
        "a mapped restore fetches nothing: {s:?}"
    );
    drop(r);
    server.wait().unwrap();

    // Four instances: unwritten pages are shared, so each one's PSS is well below an
    // eager instance's.
    let eager: Vec<Conv> = (0..4).map(|_| common::restore(&img)).collect();
    let shared: Vec<Conv> = (0..4)
        .map(|_| common::restore_with(&img, &mapped))
        .collect();
    let sum = |v: &[Conv]| v.iter().map(|c| pss_kib(c.pid)).sum::<u64>();
    let (e, m) = (sum(&eager), sum(&shared));
    assert!(
        m * 2 < e,
        "PSS of 4 mapped instances {m} KiB, of 4 eager ones {e} KiB"
    );
    for mut c in shared {
        assert_eq!(c.ask("ping"), format!("pong {}", c.tid));
    }

    // A caller-made target cannot take the memfd.
    // SAFETY: the child only stops itself and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the child.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let e = ember_snap::restore(&img, ember_snap::Target::Stopped { pid }, &mapped).unwrap_err();
    assert!(e.to_string().contains("Target::Fork"), "{e}");
    let mut st = 0;
    // SAFETY: reaping our own child into a local.
    unsafe { libc::waitpid(pid, &mut st, 0) };
}

/// Threads and descriptors of this test process.
fn threads_and_fds() -> (usize, usize) {
    let n = |d: &str| std::fs::read_dir(d).unwrap().count();
    (n("/proc/self/task"), n("/proc/self/fd"))
}

#[test]
fn every_policy_from_every_source_answers_and_leaves_nothing_behind() {
    if !privileged("every_policy_from_every_source_answers_and_leaves_nothing_behind") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let served = vec![img.clone()];
    std::thread::spawn(move || ember_snap::lazy::remote::serve(listener, "t".into(), served));
    // A working set for prefetch, from one lazy restore.
    let (mut r, server) = common::restore_served(&img, &options(&img, Policy::Lazy));
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    let ws = Arc::new(server.working_set());
    drop(r);
    server.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = threads_and_fds();
    let image = img.dir.clone();
    let meta_only = Arc::new(LoadedImage::open(&image).unwrap());
    for policy in [Policy::Lazy, Policy::Bulk, Policy::Prefetch] {
        for source in ["memory", "file", "remote"] {
            let (target, src): (&Arc<LoadedImage>, Arc<dyn PageSource>) = match source {
                "memory" => (&img, img.clone()),
                "file" => (
                    &meta_only,
                    Arc::new(FileSource::open(&image, &img.meta).unwrap()),
                ),
                _ => (
                    &meta_only,
                    Arc::new(
                        ember_snap::lazy::RemoteSource::connect(&addr, "t", &img.meta).unwrap(),
                    ),
                ),
            };
            let opts = RestoreOptions {
                policy,
                source: Some(src),
                working_set: Some(ws.clone()),
                ..RestoreOptions::default()
            };
            eprintln!("{policy} from {source}");
            let (mut r, server) = common::restore_served(target, &opts);
            check_memory(&mut r);
            drop(r);
            server
                .wait()
                .unwrap_or_else(|e| panic!("{policy} from {source}: {e}"));
        }
    }
    drop(meta_only);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Page servers, their children's servers, userfaultfds, pidfds, connections: all gone
    // (the loopback page server's own listener thread stays). Counted only when this test has
    // the process to itself, as under nextest.
    let alone = std::env::var("NEXTEST_EXECUTION_MODE").is_ok_and(|m| m == "process-per-test");
    if !alone {
        eprintln!("not checking leftover threads and fds: other tests share this process");
        return;
    }
    let after = threads_and_fds();
    assert!(
        after.0 <= before.0 + 1 && after.1 <= before.1,
        "threads/fds before {before:?}, after {after:?}"
    );
}
