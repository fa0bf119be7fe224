//! Dump and restore of a C process: every piece of state the restored process must have,
//! asserted on what it says.

mod common;

use std::process::Command;

use common::{Conv, privileged, testee, tmp};
use ember_snap::{DumpOptions, LoadedImage};

struct Fixture {
    _dir: tempfile::TempDir,
    image: LoadedImage,
    original: Conv,
    data: std::path::PathBuf,
}

/// Starts the testee, dumps it, and keeps it alive (for comparisons).
fn fixture() -> Fixture {
    let dir = tmp();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, format!("hello mapped file{}", " ".repeat(9000))).unwrap();
    let mut original = Conv::spawn(Command::new(testee()).arg(&data));
    let ready = original.line();
    assert!(ready.starts_with("ready"), "{ready}");
    let out = dir.path().join("image");
    let opts = DumpOptions {
        inherited: vec![0, 1, 2],
        ..Default::default()
    };
    ember_snap::dump(original.pid, &out, &opts).unwrap();
    let image = LoadedImage::load(&out).unwrap();
    Fixture {
        _dir: dir,
        image,
        original,
        data,
    }
}

#[test]
fn restored_process_answers_and_keeps_its_state() {
    if !privileged("restored_process_answers_and_keeps_its_state") {
        return;
    }
    let mut f = fixture();
    // The original goes on after the dump.
    assert!(f.original.ask("ping").starts_with("pong"));
    assert_eq!(f.original.ask("heap"), "heap ok");
    let mut r = common::restore(&f.image);
    assert_eq!(r.ask("ping"), format!("pong {}", r.pid));
    assert_eq!(r.ask("relro"), "relro beta");
    assert_eq!(r.ask("file"), "file Xello hello");
    assert_eq!(r.ask("avx"), "avx ok");
    assert_eq!(r.ask("mask"), "mask usr2=1 usr1=0");
    assert_eq!(r.ask("sig"), "sig 2");
    assert_eq!(r.ask("heap"), "heap ok");
    assert_eq!(r.ask("thread"), "thread 42");
    assert_eq!(r.ask("fork"), "fork 42");
    assert_eq!(r.ask("pi"), "pi ok");
    assert_eq!(r.ask("rseq"), "rseq 0 1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let said: i64 = r
        .ask("clock")
        .strip_prefix("clock ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((said - now).abs() <= 2, "restored clock {said}, ours {now}");
    // The regular file it held open is reopened at the same position, in append mode.
    assert_eq!(r.ask("log"), "log ok");
    let log = std::fs::read_to_string(f.data.with_extension("txt.log")).unwrap();
    assert_eq!(log, "before\nafter\n");
    // The restored thread's robust list is the one the kernel walks when it exits.
    r.send("robust-exit");
    assert_eq!(r.line(), "robust ownerdead");
}

#[test]
fn restored_maps_equal_the_originals() {
    if !privileged("restored_maps_equal_the_originals") {
        return;
    }
    let f = fixture();
    let want = common::merged_maps(f.original.pid);
    let r = common::restore(&f.image);
    assert_eq!(common::merged_maps(r.pid), want);
}

/// A child of this test, stopped, talking on two pipes as its stdin and stdout (the test
/// keeps the other ends), with nothing else open; with `at_limit`, also a descriptor at
/// 1023 under a 1024 limit: what a sandbox's first process looked like when its creator
/// held a thousand descriptors.
fn stopped_target(at_limit: bool) -> (i32, std::fs::File, std::io::BufReader<std::fs::File>) {
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    use std::os::fd::AsRawFd;
    let (a, b) = (in_r.as_raw_fd(), out_w.as_raw_fd());
    let lim = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: the child only calls async-signal-safe functions, then stops or exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the child on descriptors it inherited and a
        // stack rlimit.
        unsafe {
            libc::dup2(a, 0);
            libc::dup2(b, 1);
            libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
            if at_limit {
                libc::dup2(0, 1023);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::_exit(1);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child into a local.
    unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
    assert!(libc::WIFSTOPPED(st));
    drop((in_r, out_w));
    let w = std::fs::File::from(std::os::fd::OwnedFd::from(in_w));
    let rd = std::io::BufReader::new(std::fs::File::from(std::os::fd::OwnedFd::from(out_r)));
    (pid, w, rd)
}

/// Sends `cmd` to the restored target and returns its answer line.
fn ask(w: &mut std::fs::File, rd: &mut std::io::BufReader<std::fs::File>, cmd: &str) -> String {
    use std::io::{BufRead, Write};
    writeln!(w, "{cmd}").unwrap();
    let mut line = String::new();
    rd.read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

#[test]
fn restores_into_a_stopped_process_the_caller_created() {
    if !privileged("restores_into_a_stopped_process_the_caller_created") {
        return;
    }
    let f = fixture();
    let (pid, mut w, mut rd) = stopped_target(false);
    let r = ember_snap::restore(
        &f.image,
        ember_snap::Target::Stopped { pid },
        &ember_snap::RestoreOptions::default(),
    )
    .unwrap();
    assert_eq!(r.pid, pid);
    assert_eq!(ask(&mut w, &mut rd, "ping"), format!("pong {pid}"));
    use std::io::Write;
    writeln!(w, "exit").unwrap();
    assert_eq!(common::wait_exit(pid), 0);
}

#[test]
fn a_target_holding_a_descriptor_at_its_limit_restores_with_only_the_images() {
    if !privileged("a_target_holding_a_descriptor_at_its_limit_restores_with_only_the_images") {
        return;
    }
    let f = fixture();
    let (pid, mut w, mut rd) = stopped_target(true);
    assert_eq!(common::fds_of(pid), vec![0, 1, 2, 1023]);
    let r = ember_snap::restore(
        &f.image,
        ember_snap::Target::Stopped { pid },
        &ember_snap::RestoreOptions::default(),
    )
    .map_err(|e| common::chain(&e))
    .unwrap();
    assert_eq!(r.pid, pid);
    // The image's own descriptors (stdio and its log file), and nothing of the target's.
    assert_eq!(common::fds_of(pid), vec![0, 1, 2, 3]);
    assert_eq!(ask(&mut w, &mut rd, "ping"), format!("pong {pid}"));
    assert_eq!(ask(&mut w, &mut rd, "log"), "log ok");
    use std::io::Write;
    writeln!(w, "exit").unwrap();
    assert_eq!(common::wait_exit(pid), 0);
}
