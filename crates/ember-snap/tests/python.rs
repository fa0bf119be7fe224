//! Dump and restore of CPython processes: threads, fork and many concurrent instances.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Conv, privileged, tmp};
use ember_snap::{DumpOptions, Handoff, LoadedImage, RestoreOptions};

/// The Python target, started with `modules` imported, once it is ready.
fn start(modules: &[&str]) -> Conv {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/target.py");
    let mut original = Conv::spawn(
        Command::new("/usr/bin/python3")
            .arg("-I")
            .arg(&script)
            .args(modules)
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1"),
    );
    assert_eq!(original.line(), "ready");
    original
}

/// Dumps `pid` (stdio inherited) into `dir/image` and loads the image.
fn dump(pid: i32, dir: &Path) -> LoadedImage {
    let out = dir.join("image");
    ember_snap::dump(
        pid,
        &out,
        &DumpOptions {
            inherited: vec![0, 1, 2],
            ..Default::default()
        },
    )
    .unwrap();
    LoadedImage::load(&out).unwrap()
}

/// A Python target that imported `modules`, dumped into `dir/image` and loaded.
fn python_image(dir: &Path, modules: &[&str]) -> LoadedImage {
    let original = start(modules);
    dump(original.pid, dir)
}

#[test]
fn python_threads_fork_and_heap_work_after_restore() {
    if !privileged("python_threads_fork_and_heap_work_after_restore") {
        return;
    }
    let dir = tmp();
    let img = python_image(dir.path(), &["json"]);
    let mut r = common::restore(&img);
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    assert_eq!(r.ask("json"), r#"json {"a": null, "b": [1, 2]}"#);
    assert_eq!(r.ask("thread"), "thread 45");
    assert_eq!(r.ask("fork"), "fork 7");
    assert_eq!(r.ask("alloc"), format!("alloc {}", (50 << 20) + 1));
    assert_eq!(r.ask("thread"), "thread 45");
}

#[test]
fn twenty_concurrent_instances_from_one_image_each_answer() {
    if !privileged("twenty_concurrent_instances_from_one_image_each_answer") {
        return;
    }
    let dir = tmp();
    let img = python_image(dir.path(), &["json"]);
    let answers: Vec<(i32, i32, String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                s.spawn(|| {
                    let mut r = common::restore(&img);
                    let ping = r.ask("ping");
                    let thread = r.ask("thread");
                    (r.pid, r.tid, ping, thread)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut pids: Vec<i32> = answers.iter().map(|a| a.0).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 20);
    for (_, tid, ping, thread) in answers {
        assert_eq!(ping, format!("pong {tid}"));
        assert_eq!(thread, "thread 45");
    }
}

#[test]
fn a_stopped_process_is_dumped_left_stopped_and_its_image_restores() {
    if !privileged("a_stopped_process_is_dumped_left_stopped_and_its_image_restores") {
        return;
    }
    let dir = tmp();
    let mut original = start(&[]);
    // SAFETY: plain integers; the pid is our child.
    unsafe { libc::kill(original.pid, libc::SIGSTOP) };
    let state = || {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", original.pid)).unwrap();
        s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
    };
    while state() != 'T' {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let img = dump(original.pid, dir.path());
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(state(), 'T', "still stopped after the dump");
    let mut r = common::restore(&img);
    assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
    // SAFETY: plain integers; the pid is our child.
    unsafe { libc::kill(original.pid, libc::SIGCONT) };
    assert_eq!(original.ask("ping"), format!("pong {}", original.pid));
}

#[test]
fn python_maps_equal_the_originals() {
    if !privileged("python_maps_equal_the_originals") {
        return;
    }
    let dir = tmp();
    let original = start(&["json"]);
    let img = dump(original.pid, dir.path());
    let want = common::merged_maps(original.pid);
    let r = common::restore(&img);
    assert_eq!(common::merged_maps(r.pid), want);
}

#[test]
fn a_sleep_interrupted_by_the_dump_finishes_after_restore() {
    if !privileged("a_sleep_interrupted_by_the_dump_finishes_after_restore") {
        return;
    }
    let dir = tmp();
    // Asleep in clock_nanosleep at the dump: its restart block stays with the old task, so
    // the restored call returns EINTR and CPython sleeps what is left (PEP 475).
    let code = "import os, sys, time\nos.closerange(3, 1 << 16)\nos.write(1, b'ready\\n')\nt = time.monotonic()\ntime.sleep(0.6)\nos.write(1, b'woke %d\\n' % (time.monotonic() - t >= 0.6))\nsys.stdin.buffer.readline()\n";
    let mut original = Conv::spawn(Command::new("/usr/bin/python3").args(["-I", "-c", code]));
    assert_eq!(original.line(), "ready");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let img = dump(original.pid, dir.path());
    let mut r = common::restore(&img);
    assert_eq!(r.line(), "woke 1");
    assert_eq!(original.line(), "woke 1");
}

#[test]
fn a_restore_can_end_as_another_user_under_a_seccomp_filter() {
    if !privileged("a_restore_can_end_as_another_user_under_a_seccomp_filter") {
        return;
    }
    let dir = tmp();
    let img = python_image(dir.path(), &[]);
    // A filter that refuses mkdir and mkdirat with EPERM and allows the rest.
    let f = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    let (ld, jeq, ret) = (0x20, 0x15, 0x06);
    let seccomp = vec![
        f(ld, 0, 0, 0),
        f(jeq, 2, 0, libc::SYS_mkdir as u32),
        f(jeq, 1, 0, libc::SYS_mkdirat as u32),
        f(ret, 0, 0, 0x7fff_0000),
        f(ret, 0, 0, 0x0005_0000 | libc::EPERM as u32),
    ];
    let opts = RestoreOptions {
        handoff: Some(Handoff {
            uid: 65534,
            gid: 65534,
            die_with_parent: true,
            seccomp,
        }),
        ..RestoreOptions::default()
    };
    let mut r = common::restore_with(&img, &opts);
    assert_eq!(r.ask("creds"), "creds 65534 65534 Operation not permitted");
    assert_eq!(r.ask("thread"), "thread 45");
    // Without the handoff the same image keeps root and may mkdir.
    let mut plain = common::restore(&img);
    assert_eq!(plain.ask("creds"), "creds 0 0 made");
}
