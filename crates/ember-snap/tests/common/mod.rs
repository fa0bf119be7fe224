//! Helpers for ember-snap's privileged tests: targets to dump, and restored instances to
//! talk to over pipes.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use ember_snap::{LoadedImage, RestoreOptions, Target};

pub mod sandboxed;

#[allow(unused_imports, reason = "each test file uses a different subset")]
pub use ember_snap::error_chain as chain;

/// Privileged tests run when the test script says so and we are root; otherwise they
/// print why they skip.
pub fn privileged(test: &str) -> bool {
    let on = std::env::var_os("EMBER_PRIVILEGED_TESTS").is_some_and(|v| v == "1");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !(on && root) {
        eprintln!(
            "SKIP {test}: needs root and EMBER_PRIVILEGED_TESTS=1 (ptrace of other processes)"
        );
    }
    on && root
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("snap-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Compiles the C program `src` to `out` as the tests' targets are built (a PIE with full
/// RELRO, threads, every warning an error); panics with gcc's messages.
pub fn compile(src: &Path, out: &Path) {
    let o = Command::new("gcc")
        .args(["-O1", "-g", "-pie", "-fPIE", "-Wl,-z,relro,-z,now"])
        .args(["-pthread", "-Wall", "-Werror", "-o"])
        .arg(out)
        .arg(src)
        .output()
        .expect("gcc runs (the test script installs it)");
    assert!(
        o.status.success(),
        "compiling {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The C test target, compiled once per test binary.
pub fn testee() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/testee.c");
        let out =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("testee-{}", std::process::id()));
        compile(&src, &out);
        out
    })
}

/// A process talked to over its stdin/stdout.
pub struct Conv {
    /// As we see it.
    pub pid: i32,
    /// As it sees itself (`getpid()`): a restored process keeps the image's.
    pub tid: i32,
    w: std::fs::File,
    r: BufReader<std::fs::File>,
    child: Option<Child>,
}

impl Conv {
    pub fn spawn(cmd: &mut Command) -> Conv {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let w = std::fs::File::from(OwnedFd::from(child.stdin.take().unwrap()));
        let r = BufReader::new(std::fs::File::from(OwnedFd::from(
            child.stdout.take().unwrap(),
        )));
        Conv {
            pid: child.id() as i32,
            tid: child.id() as i32,
            w,
            r,
            child: Some(child),
        }
    }

    pub fn line(&mut self) -> String {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        s.trim_end().to_string()
    }

    pub fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.w, "{cmd}").unwrap();
        self.line()
    }

    pub fn writer(&mut self) -> &mut std::fs::File {
        &mut self.w
    }

    pub fn send(&mut self, cmd: &str) {
        writeln!(self.w, "{cmd}").unwrap();
    }
}

impl Drop for Conv {
    fn drop(&mut self) {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            None => {
                // SAFETY: plain integers; the pid is a child of ours that we reap below.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let mut st = 0;
                // SAFETY: reaping our own child into a local.
                unsafe { libc::waitpid(self.pid, &mut st, 0) };
            }
        }
    }
}

/// Restores `img` into a process the engine forks, wired to fresh pipes on 0 and 1 (and
/// our stderr on 2).
/// Dumps `pid` into `out` with its stdio recorded as inherited, and loads the image.
/// memory.py's anonymous-memory checks: mremap growth, munmap, MADV_DONTNEED reads zeros,
/// and a fork inside the process.
#[allow(dead_code, reason = "not every test binary uses it")]
pub fn check_memory(r: &mut Conv) {
    assert_eq!(r.ask("grow"), "grow True");
    assert_eq!(r.ask("free"), "free True");
    assert_eq!(r.ask("discard"), "discard True True");
    assert_eq!(r.ask("fork"), "fork 0");
}

pub fn dump_stdio(pid: i32, out: &Path) -> LoadedImage {
    let opts = ember_snap::DumpOptions {
        inherited: vec![0, 1, 2],
        ..Default::default()
    };
    ember_snap::dump(pid, out, &opts).unwrap();
    LoadedImage::load(out).unwrap()
}

pub fn restore(img: &LoadedImage) -> Conv {
    try_restore(img).unwrap()
}

pub fn restore_with(img: &LoadedImage, opts: &RestoreOptions) -> Conv {
    try_restore_with(img, opts).unwrap()
}

/// A restore with a page server (lazy or bulk): the process and its server.
pub fn restore_served(
    img: &LoadedImage,
    opts: &RestoreOptions,
) -> (Conv, ember_snap::lazy::PageServer) {
    try_restore_served(img, opts).unwrap()
}

pub fn try_restore_served(
    img: &LoadedImage,
    opts: &RestoreOptions,
) -> Result<(Conv, ember_snap::lazy::PageServer), ember_snap::RestoreError> {
    let (c, server) = restore_inner(img, opts)?;
    Ok((c, server.expect("a lazy or bulk restore has a page server")))
}

/// Waits for a restored process to end; the signal that ended it (0 if it exited).
pub fn wait_signal(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: reaping our own child into a local.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFSIGNALED(st) {
        libc::WTERMSIG(st)
    } else {
        0
    }
}

pub fn try_restore(img: &LoadedImage) -> Result<Conv, ember_snap::RestoreError> {
    try_restore_with(img, &RestoreOptions::default())
}

pub fn try_restore_with(
    img: &LoadedImage,
    opts: &RestoreOptions,
) -> Result<Conv, ember_snap::RestoreError> {
    restore_inner(img, opts).map(|(c, _)| c)
}

fn restore_inner(
    img: &LoadedImage,
    opts: &RestoreOptions,
) -> Result<(Conv, Option<ember_snap::lazy::PageServer>), ember_snap::RestoreError> {
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    let fds = vec![(0, in_r.as_raw_fd()), (1, out_w.as_raw_fd()), (2, 2)];
    let r = ember_snap::restore(img, Target::Fork { fds }, opts)?;
    drop((in_r, out_w));
    let conv = Conv {
        pid: r.pid,
        tid: img.meta.task.tid,
        w: std::fs::File::from(OwnedFd::from(in_w)),
        r: BufReader::new(std::fs::File::from(OwnedFd::from(out_r))),
        child: None,
    };
    Ok((conv, r.server))
}

impl Conv {
    /// A process of ours (a child, reaped on drop) talked to over `to` (its stdin) and
    /// `from` (its stdout); `tid` is its pid as it sees itself.
    pub fn of(pid: i32, tid: i32, to: OwnedFd, from: OwnedFd) -> Conv {
        Conv {
            pid,
            tid,
            w: std::fs::File::from(to),
            r: BufReader::new(std::fs::File::from(from)),
            child: None,
        }
    }
}

/// Waits for a restored process to exit; its exit code.
pub fn wait_exit(pid: i32) -> i32 {
    let mut st = 0;
    // SAFETY: reaping our own child into a local.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    libc::WEXITSTATUS(st)
}

/// `/proc/PID/maps` after merging adjacent areas with the same attributes.
pub fn merged_maps(pid: i32) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let maps = ember_snap::proc::parse_maps(&text).unwrap();
    let mut out: Vec<(u64, u64, String)> = Vec::new();
    for m in maps {
        let key = format!("{} {:?} {}", m.perms(), m.name, m.inode);
        match out.last_mut() {
            Some((_, end, k)) if *end == m.start && *k == key && m.inode == 0 => *end = m.end,
            _ => out.push((m.start, m.end, key)),
        }
    }
    out.into_iter()
        .map(|(s, e, k)| format!("{s:x}-{e:x} {k}"))
        .collect()
}

/// Starts the Python target `script` (under tests/targets) with `args` in `cwd`, waits for
/// it to say ready, dumps it (stdio inherited) into `dir/image` and loads the image.
pub fn dump_python(script: &str, args: &[&str], cwd: &Path, dir: &Path) -> LoadedImage {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/targets")
        .join(script);
    let mut original = Conv::spawn(
        Command::new("/usr/bin/python3")
            .arg("-I")
            .arg(&script)
            .args(args)
            .current_dir(cwd),
    );
    assert_eq!(original.line(), "ready");
    let out = dir.join("image");
    let inherited = vec![0, 1, 2];
    ember_snap::dump(
        original.pid,
        &out,
        &ember_snap::DumpOptions {
            inherited,
            ..Default::default()
        },
    )
    .unwrap();
    LoadedImage::load(&out).unwrap()
}

/// The descriptors `pid` holds, by number.
pub fn fds_of(pid: i32) -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}
