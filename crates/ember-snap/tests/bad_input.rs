//! What bad input gets: dump errors that name the pid and the VMA or fd, restore errors that
//! name the file, and no process left stopped or half-restored.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Conv, privileged, testee, tmp};
use ember_snap::image::{format, read_meta, write_image};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions, Target};

const STDIO: [i32; 3] = [0, 1, 2];

/// A Python process that ran `setup`, then waits on stdin.
fn python(setup: &str) -> Conv {
    let code = format!(
        "import os, sys\nos.closerange(3, 1 << 16)\n{setup}\nos.write(1, b'ready\\n')\nsys.stdin.buffer.readline()\n"
    );
    let mut c = Conv::spawn(Command::new("/usr/bin/python3").args(["-I", "-c", &code]));
    assert_eq!(c.line(), "ready");
    c
}

fn state(pid: i32) -> char {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..].chars().next().unwrap()
}

/// Dumping `setup`'s process fails with a message containing each of `want`, and the
/// process runs on.
fn dump_refused(setup: &str, want: &[&str]) {
    let c = python(setup);
    let dir = tmp();
    let err = ember_snap::dump(
        c.pid,
        &dir.path().join("image"),
        &DumpOptions {
            inherited: STDIO.to_vec(),
            ..Default::default()
        },
    )
    .unwrap_err();
    let err = common::chain(&err);
    assert!(err.contains(&format!("process {}", c.pid)), "{err}");
    for w in want {
        assert!(err.contains(w), "{err:?} lacks {w:?}");
    }
    assert!(!dir.path().join("image").join("meta").exists());
    // Left as it was: back asleep in its read, not stopped.
    let mut s = state(c.pid);
    for _ in 0..100 {
        if s == 'S' {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        s = state(c.pid);
    }
    assert_eq!(s, 'S', "the refused process is left as it was");
}

#[test]
fn dump_refuses_what_it_cannot_restore() {
    if !privileged("dump_refuses_what_it_cannot_restore") {
        return;
    }
    dump_refused(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()",
        &["has 2 threads", "single-threaded"],
    );
    dump_refused(
        "import mmap, tempfile\nf = tempfile.NamedTemporaryFile(dir='/tmp')\nf.write(b'x' * 4096); f.flush()\nm = mmap.mmap(f.fileno(), 4096, mmap.MAP_PRIVATE)\nf.close()",
        &[
            "cannot dump VMA",
            "rw-p /tmp/",
            "the file it maps, /tmp/",
            "was deleted",
        ],
    );
    dump_refused(
        "import mmap\nm = mmap.mmap(-1, 4096)\nm[0] = 1",
        &["cannot dump VMA", "rw-s", "shared anonymous memory"],
    );
    dump_refused(
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\nid = libc.shmget(0, 4096, 0o1600)\nassert libc.shmat(id, None, 0) != 2**64 - 1\nlibc.shmctl(id, 0, None)",
        &["cannot dump VMA", "SYSV", "SysV shared memory"],
    );
    dump_refused(
        "import os, tempfile\nf = tempfile.NamedTemporaryFile(dir='/tmp')\nos.unlink(f.name)",
        &[
            "cannot dump fd 3",
            "the file it holds open, /tmp/",
            "was deleted",
        ],
    );
    dump_refused(
        "import os\nif os.fork() == 0:\n    os._exit(0)",
        &["has child processes", "wait for or kill its children first"],
    );
    dump_refused(
        "import os, tempfile\nd = tempfile.mkdtemp(dir='/tmp')\nos.chdir(d)\nos.rmdir(d)",
        &["cannot dump its working directory /tmp/", "was deleted"],
    );
    dump_refused(
        "import socket\ns = socket.socket()",
        &[
            "cannot dump fd 3",
            "socket:[",
            "declare the caller's own descriptors",
        ],
    );
}

/// A dump that runs past its freeze limit stops, names the step it was at, writes nothing,
/// and lets the process go: it answers as before.
#[test]
fn a_dump_past_its_freeze_limit_lets_the_process_run_on() {
    if !privileged("a_dump_past_its_freeze_limit_lets_the_process_run_on") {
        return;
    }
    let dir = tmp();
    let data = dir.path().join("data.txt");
    std::fs::write(&data, "hello mapped file").unwrap();
    let mut c = Conv::spawn(Command::new(testee()).arg(&data));
    assert!(c.line().starts_with("ready"));
    let out = dir.path().join("image");
    let opts = DumpOptions {
        inherited: STDIO.to_vec(),
        freeze_limit: std::time::Duration::ZERO,
    };
    let err = common::chain(&ember_snap::dump(c.pid, &out, &opts).unwrap_err());
    assert!(
        err.contains(&format!("process {}", c.pid))
            && err.contains("step ran past")
            && err.contains("inspect")
            && err.contains("freeze_limit"),
        "{err}"
    );
    assert!(!out.join("meta").exists());
    assert_eq!(c.ask("ping"), format!("pong {}", c.pid));
    let s = state(c.pid);
    assert!(!matches!(s, 'T' | 't'), "left stopped ({s})");
    // And a dump within the limit works on the same process afterwards.
    let opts = DumpOptions {
        inherited: STDIO.to_vec(),
        ..DumpOptions::default()
    };
    ember_snap::dump(c.pid, &out, &opts).unwrap();
    assert_eq!(c.ask("ping"), format!("pong {}", c.pid));
}

/// A good image of the C testee in `dir/image` (its data file in `dir`).
fn good_image(dir: &Path) -> std::path::PathBuf {
    let data = dir.join("data.txt");
    std::fs::write(&data, "hello mapped file").unwrap();
    let mut c = Conv::spawn(Command::new(testee()).arg(&data));
    assert!(c.line().starts_with("ready"));
    let out = dir.join("image");
    ember_snap::dump(
        c.pid,
        &out,
        &DumpOptions {
            inherited: STDIO.to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    out
}

fn load_err(dir: &Path) -> String {
    match LoadedImage::load(dir) {
        Ok(_) => panic!("{dir:?} loaded"),
        Err(e) => common::chain(&e),
    }
}

fn patch(path: &Path, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

#[test]
fn corrupted_truncated_and_foreign_images_are_refused_by_file() {
    if !privileged("corrupted_truncated_and_foreign_images_are_refused_by_file") {
        return;
    }
    let dir = tmp();
    let good = good_image(dir.path());
    let fresh = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in [format::META_FILE, format::PAGES_FILE] {
            std::fs::copy(good.join(f), d.join(f)).unwrap();
        }
        d
    };
    LoadedImage::load(&good).unwrap();
    let meta = |d: &Path| d.join(format::META_FILE).display().to_string();
    let pages = |d: &Path| d.join(format::PAGES_FILE).display().to_string();

    let d = fresh("magic");
    patch(&d.join("meta"), 0, b"NOTEMBER");
    let e = load_err(&d);
    assert!(
        e.contains(&meta(&d)) && e.contains("not an Ember image: bad magic"),
        "{e}"
    );

    let d = fresh("version");
    patch(&d.join("meta"), 8, &99u32.to_le_bytes());
    let e = load_err(&d);
    assert!(
        e.contains(&meta(&d)) && e.contains("format version 99"),
        "{e}"
    );

    let d = fresh("huge");
    patch(&d.join("meta"), 16, &(1u64 << 40).to_le_bytes());
    let e = load_err(&d);
    assert!(e.contains(&meta(&d)) && e.contains("over the"), "{e}");

    let d = fresh("metahash");
    let len = std::fs::metadata(d.join("meta")).unwrap().len();
    patch(&d.join("meta"), len - 3, b"\xff");
    let e = load_err(&d);
    assert!(e.contains(&meta(&d)) && e.contains("hash mismatch"), "{e}");

    let d = fresh("truncmeta");
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("meta"))
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let e = load_err(&d);
    assert!(e.contains(&meta(&d)) && e.contains("truncated"), "{e}");

    let d = fresh("pagebyte");
    patch(&d.join("pages"), 4096 + 100, b"\x13\x37");
    let e = load_err(&d);
    assert!(
        e.contains(&pages(&d)) && e.contains("chunk 0") && e.contains("hash check"),
        "{e}"
    );

    let d = fresh("truncpages");
    let plen = std::fs::metadata(d.join("pages")).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(d.join("pages"))
        .unwrap()
        .set_len(plen - 4096)
        .unwrap();
    let e = load_err(&d);
    assert!(e.contains(&pages(&d)) && e.contains("metadata says"), "{e}");

    let d = fresh("foreign");
    patch(&d.join("pages"), 16, &[0xab; 16]);
    let e = load_err(&d);
    assert!(e.contains(&pages(&d)) && e.contains("another image"), "{e}");

    let d = fresh("missing");
    std::fs::remove_file(d.join("pages")).unwrap();
    let e = load_err(&d);
    assert!(e.contains(&pages(&d)), "{e}");
}

/// Rewrites the image at `dir` with `change` applied to its metadata (a valid image).
fn rewrite(dir: &Path, to: &Path, change: impl FnOnce(&mut ember_snap::Meta)) {
    let img = LoadedImage::load(dir).unwrap();
    let mut m = read_meta(dir).unwrap();
    change(&mut m);
    write_image(to, &mut m, img.page_data()).unwrap();
}

/// Children of this process stopped (by a signal or a tracer) now and 200 ms later.
fn stopped_children() -> Vec<i32> {
    let scan = || -> Vec<i32> {
        let me = std::process::id();
        let mut out = Vec::new();
        for t in std::fs::read_dir(format!("/proc/{me}/task"))
            .unwrap()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<i32>().ok())
            {
                if std::fs::read_to_string(format!("/proc/{k}/stat")).is_ok()
                    && matches!(state(k), 't' | 'T')
                {
                    out.push(k);
                }
            }
        }
        out
    };
    let first = scan();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let second = scan();
    first.into_iter().filter(|p| second.contains(p)).collect()
}

fn restore_err(img: &LoadedImage) -> String {
    match common::try_restore(img) {
        Ok(c) => panic!("restored into {}", c.pid),
        Err(e) => common::chain(&e),
    }
}

#[test]
fn a_changed_file_or_another_machine_is_refused_and_nothing_is_left_behind() {
    if !privileged("a_changed_file_or_another_machine_is_refused_and_nothing_is_left_behind") {
        return;
    }
    let dir = tmp();
    let good = good_image(dir.path());

    let other = dir.path().join("cpu");
    rewrite(&good, &other, |m| {
        m.requires.cpu_features.push("avx1024".into())
    });
    let e = restore_err(&LoadedImage::load(&other).unwrap());
    assert!(
        e.contains("lacks: avx1024") && e.contains(&other.display().to_string()),
        "{e}"
    );

    let other = dir.path().join("kernel");
    rewrite(&good, &other, |m| m.requires.vdso.vdso_hash[0] ^= 1);
    let e = restore_err(&LoadedImage::load(&other).unwrap());
    assert!(e.contains("taken on another kernel"), "{e}");

    let other = dir.path().join("xstate");
    rewrite(&good, &other, |m| m.requires.xfeatures |= 1 << 60);
    let e = restore_err(&LoadedImage::load(&other).unwrap());
    assert!(e.contains("CPU register state"), "{e}");

    // The data file the image maps changes (same size): refused, naming it.
    let img = LoadedImage::load(&good).unwrap();
    std::fs::write(dir.path().join("data.txt"), "jello mapped file").unwrap();
    let e = restore_err(&img);
    assert!(
        e.contains("data.txt changed since the image was taken"),
        "{e}"
    );
    assert_eq!(stopped_children(), Vec::<i32>::new());

    // Into a stopped process of the caller's: it is killed, not left stopped.
    // SAFETY: the child only stops itself and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: async-signal-safe calls in the child.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
            libc::_exit(0);
        }
    }
    let mut st = 0;
    // SAFETY: waiting for our own child into a local.
    unsafe { libc::waitpid(pid, &mut st, libc::WUNTRACED) };
    let new_tid = RestoreOptions {
        accept_new_tid: true,
        ..RestoreOptions::default()
    };
    let e = ember_snap::restore(&img, Target::Stopped { pid }, &new_tid).unwrap_err();
    let e = common::chain(&e);
    assert!(e.contains("changed") || e.contains("inherited"), "{e}");
    // The engine killed it and, as its tracer (here also its parent), collected it.
    // SAFETY: reaping our own child into a local.
    let rc = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    let killed = rc == pid && libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGKILL;
    assert!(
        killed || (rc == -1 && !Path::new(&format!("/proc/{pid}")).exists()),
        "rc {rc} status {st:#x}"
    );
}

/// The syscall number `/proc/PID/syscall` shows (the call the task is blocked in).
fn blocked_in(pid: i32) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    s.split_whitespace().next().unwrap_or("").to_string()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn a_sleep_is_dumped_again_and_again_but_one_resumed_through_restart_syscall_is_refused() {
    if !privileged(
        "a_sleep_is_dumped_again_and_again_but_one_resumed_through_restart_syscall_is_refused",
    ) {
        return;
    }
    // usleep is clock_nanosleep (230), relative: it has a restart block (CPython's
    // time.sleep sleeps to an absolute time, which restarts without one).
    let c = python("import ctypes\nos.write(1, b'ready\\n')\nctypes.CDLL(None).usleep(60_000_000)");
    let pid = c.pid;
    wait_for("clock_nanosleep", || blocked_in(pid) == "230");
    let dir = tmp();
    let opts = DumpOptions {
        inherited: STDIO.to_vec(),
        ..Default::default()
    };
    // A dump that interrupts the sleep leaves it re-issuing clock_nanosleep, not in
    // restart_syscall: the next dump knows the call again.
    for k in 0..3 {
        let out = dir.path().join(format!("image{k}"));
        ember_snap::dump(pid, &out, &opts).unwrap();
        wait_for("the sleep again", || blocked_in(pid) == "230");
    }
    // A stop and a continue send it through restart_syscall (219): its original call is
    // no longer known, and the dump says so instead of making the sleep return EINTR.
    // SAFETY: signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for("the stop", || state(pid) == 'T');
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_for("restart_syscall", || blocked_in(pid) == "219");
    let err = ember_snap::dump(pid, &dir.path().join("refused"), &opts).unwrap_err();
    let err = common::chain(&err);
    assert!(err.contains("restart_syscall"), "{err}");
    assert!(err.contains(&format!("process {pid}")), "{err}");
    // Left as it was: still asleep in restart_syscall.
    wait_for("the sleep, left as it was", || {
        state(pid) == 'S' && blocked_in(pid) == "219"
    });
}
