//! Templates: an image restored once into a parked process; instances forked from it share
//! its pages copy-on-write and behave as restored ones.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use common::{Conv, privileged, tmp};
use ember_snap::LoadedImage;
use ember_snap::template::{ForkSpec, Namespaces, Template, TemplateOptions};

fn memory_image(dir: &Path) -> Arc<LoadedImage> {
    Arc::new(common::dump_python("memory.py", &[], Path::new("/"), dir))
}

/// Forks an instance wired to fresh pipes on 0 and 1 (our stderr on 2) and lets it run.
fn fork(t: &Template, namespaces: Namespaces) -> Conv {
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    let spec = ForkSpec {
        fds: vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)],
        namespaces,
    };
    let f = t.fork(spec).unwrap();
    drop((in_r, out_w));
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(f.pid, libc::SIGCONT) };
    Conv::of(f.pid, 1, OwnedFd::from(in_w), OwnedFd::from(out_r))
}

fn check_memory(r: &mut Conv) {
    assert_eq!(r.ask("grow"), "grow True");
    assert_eq!(r.ask("free"), "free True");
    assert_eq!(r.ask("discard"), "discard True True");
    assert_eq!(r.ask("fork"), "fork 0");
}

#[test]
fn forked_instances_answer_independently_with_anonymous_memory_semantics() {
    if !privileged("forked_instances_answer_independently_with_anonymous_memory_semantics") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let tpl = Template::new(img.clone(), &TemplateOptions::default()).unwrap();
    let mut a = fork(&tpl, Namespaces::default());
    let mut b = fork(&tpl, Namespaces::default());
    // Each is pid 1 of its own pid namespace, holding only the descriptors it was given.
    assert_eq!(a.ask("ping"), "pong 1");
    assert_eq!(b.ask("ping"), "pong 1");
    assert_eq!(common::fds_of(a.pid), [0, 1, 2]);
    // A write in one is seen neither by the other nor by the template (a later instance).
    assert_eq!(a.ask("set alpha"), "set");
    assert_eq!(a.ask("get"), "get alpha False");
    assert_eq!(b.ask("get"), "get image True");
    let mut c = fork(&tpl, Namespaces::default());
    assert_eq!(c.ask("get"), "get image True");
    assert_eq!(b.ask("set beta"), "set");
    assert_eq!(a.ask("get"), "get alpha False");
    // Grown (mremap), freed, discarded (MADV_DONTNEED reads zeros) and forked memory.
    check_memory(&mut a);
    check_memory(&mut c);
    assert_eq!(b.ask("get"), "get beta False");
    // An instance that ends is collected by us; the template lives on.
    assert_eq!(a.ask("ping"), "pong 1");
    drop(a);
    let mut d = fork(&tpl, Namespaces::default());
    assert_eq!(d.ask("get"), "get image True");
    assert!(Path::new(&format!("/proc/{}", tpl.pid())).exists());
}

#[test]
fn forked_instances_get_fresh_namespaces() {
    if !privileged("forked_instances_get_fresh_namespaces") {
        return;
    }
    let dir = tmp();
    let img = memory_image(dir.path());
    let tpl = Template::new(img, &TemplateOptions::default()).unwrap();
    let mut a = fork(&tpl, Namespaces::all());
    assert_eq!(a.ask("ping"), "pong 1");
    let ns = |pid: i32, n: &str| std::fs::read_link(format!("/proc/{pid}/ns/{n}")).unwrap();
    for n in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(ns(a.pid, n), ns(tpl.pid(), n), "{n}");
    }
    check_memory(&mut a);
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

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Numbers for the design (printed; run with --nocapture): time from the request to the
/// first answer of a forked instance and of an eager restore, and the PSS of ten idle ones.
#[test]
fn forks_against_restores_measured() {
    if !privileged("forks_against_restores_measured") {
        return;
    }
    let runs: usize = std::env::var("EMBER_TEMPLATE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = tmp();
    let img = memory_image(dir.path());
    let t0 = Instant::now();
    let tpl = Template::new(img.clone(), &TemplateOptions::default()).unwrap();
    let make_us = t0.elapsed().as_micros();
    let (mut fork_us, mut fork_ready_us, mut restore_us) = (vec![], vec![], vec![]);
    for ns in [Namespaces::default(), Namespaces::all()] {
        let mut ready = vec![];
        for _ in 0..runs {
            let t = Instant::now();
            let mut c = fork(&tpl, ns);
            assert_eq!(c.ask("ping"), "pong 1");
            ready.push(t.elapsed().as_micros() as u64);
        }
        fork_ready_us.push(median(ready));
    }
    for _ in 0..runs {
        let (in_r, in_w) = std::io::pipe().unwrap();
        let (out_r, out_w) = std::io::pipe().unwrap();
        let spec = ForkSpec {
            fds: vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)],
            namespaces: Namespaces::default(),
        };
        let f = tpl.fork(spec).unwrap();
        fork_us.push(f.fork_us);
        drop((in_r, out_w));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(f.pid, libc::SIGCONT) };
        drop(Conv::of(
            f.pid,
            1,
            OwnedFd::from(in_w),
            OwnedFd::from(out_r),
        ));
    }
    for _ in 0..runs {
        let t = Instant::now();
        let mut r = common::restore(&img);
        assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
        restore_us.push(t.elapsed().as_micros() as u64);
    }
    let forked: Vec<Conv> = (0..10)
        .map(|_| {
            let mut c = fork(&tpl, Namespaces::default());
            assert_eq!(c.ask("ping"), "pong 1");
            c
        })
        .collect();
    let restored: Vec<Conv> = (0..10)
        .map(|_| {
            let mut r = common::restore(&img);
            assert_eq!(r.ask("ping"), format!("pong {}", r.tid));
            r
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let sum = |v: &[Conv]| v.iter().map(|c| pss_kib(c.pid)).sum::<u64>();
    let (f, r, t) = (sum(&forked), sum(&restored), pss_kib(tpl.pid()));
    eprintln!(
        "template: {} pages, made in {make_us} us (restore {:?})",
        img.meta.pages.count,
        tpl.stats()
    );
    eprintln!(
        "fork (request to stopped child) p50 {} us; to first answer p50 {} us (new pid ns), {} us (pid+mnt+uts+ipc+net); eager restore to first answer p50 {} us; {runs} runs each",
        median(fork_us),
        fork_ready_us[0],
        fork_ready_us[1],
        median(restore_us)
    );
    eprintln!(
        "PSS of 10 idle forked instances {f} KiB (+ template {t} KiB), of 10 restored {r} KiB"
    );
    assert!(f + t < r, "forked {f} + template {t} KiB, restored {r} KiB");
}
