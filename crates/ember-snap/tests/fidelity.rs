//! The fidelity suite: one small C program per kind of process state (tests/fidelity/*.c),
//! each setting its state up, then checking it after a dump and a restore and saying what
//! differs. Every case is run under every restore policy and through re-dumps of restored
//! processes; it must come back exact, or be refused at dump time by an error that names the
//! state. Never silently wrong, never a hang.
//!
//! A case (the protocol is the same for all; see any file in tests/fidelity/):
//! ```text
//! /* expect: exact */   or   /* expect: refused: SUBSTRING OF THE DUMP'S ERROR */
//! [/* skip-policy: mapped (why; docs/snap.md says why the policy cannot hold) */]
//! [/* dump-in: NR */]  first dumped while blocked in syscall NR (a sleep), checked in the image
//! stdout "ready"; then one line per command read from stdin with read(2):
//!   check -> "ok" | "diff: what differs"      exit / EOF -> exit 0
//! ```
//! The runner asks `check` before the dump too (a case must pass un-dumped), dumps with
//! descriptors 0, 1 and 2 inherited, and prints a table: case x (dump, each policy, each
//! re-dump: restored under that policy, dumped again at once, restored eagerly, checked). The test fails naming every cell that is not what its case expects.

mod common;

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chain, privileged, tmp};
use ember_snap::lazy::{PageServer, PageSource, Policy};
use ember_snap::{DumpOptions, LoadedImage, RestoreOptions, Target};

/// How long a case may take to answer one command (a hang is a failure, not a stuck test).
const ANSWER: Duration = Duration::from_secs(10);
/// How long a dump may take before the suite calls it a hang.
const DUMP: Duration = Duration::from_secs(30);
/// Restores a process directly from the dumped image.
const POLICIES: [Policy; 5] = [
    Policy::Eager,
    Policy::Lazy,
    Policy::Bulk,
    Policy::Prefetch,
    Policy::Mapped,
];
/// Restores a process under these policies, dumps it again and restores that image eagerly.
const REDUMPS: [Policy; 5] = [
    Policy::Eager,
    Policy::Lazy,
    Policy::Bulk,
    Policy::Prefetch,
    Policy::Mapped,
];

#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Exact,
    Refused(String),
}

struct Case {
    name: String,
    bin: PathBuf,
    expect: Expect,
    skip: Vec<Policy>,
    /// `/* dump-in: NR */`: the case is dumped while blocked in syscall NR (a sleep), not in
    /// its read: the runner waits until /proc says so, and checks the image was taken there.
    dump_in: Option<u64>,
}

/// The cases under tests/fidelity, compiled (two compilers at a time).
fn cases(out: &Path) -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fidelity");
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    srcs.sort();
    if let Ok(only) = std::env::var("EMBER_FIDELITY_CASES") {
        let only: Vec<&str> = only.split(',').collect();
        srcs.retain(|p| only.iter().any(|o| p.file_stem().is_some_and(|s| s == *o)));
    }
    let cases: Vec<Case> = srcs
        .iter()
        .map(|src| parse_case(src, out))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}"));
    let per = cases.len().div_ceil(2).max(1);
    let dir = &dir;
    std::thread::scope(|s| {
        for half in cases.chunks(per) {
            s.spawn(move || {
                for c in half {
                    let src = dir.join(format!("{}.c", c.name));
                    common::compile(&src, &c.bin);
                }
            });
        }
    });
    cases
}

fn parse_case(src: &Path, out: &Path) -> Result<Case, String> {
    let name = src.file_stem().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default().trim();
    let body = first
        .strip_prefix("/* expect:")
        .and_then(|r| r.strip_suffix("*/"))
        .map(str::trim)
        .ok_or_else(|| format!("{name}.c: the first line must be /* expect: ... */"))?;
    let expect = match body.strip_prefix("refused:") {
        Some(why) if !why.trim().is_empty() => Expect::Refused(why.trim().to_string()),
        _ if body == "exact" => Expect::Exact,
        _ => return Err(format!("{name}.c: unknown expectation {body:?}")),
    };
    let mut skip = Vec::new();
    let mut dump_in = None;
    for l in lines
        .map(str::trim_start)
        .take_while(|l| l.starts_with("/* skip-policy:") || l.starts_with("/* dump-in:"))
    {
        let (key, rest) = l.split_once(':').unwrap_or_default();
        let word = rest.split_whitespace().next().unwrap_or_default();
        if key == "/* dump-in" {
            let nr = word
                .parse()
                .map_err(|e| format!("{name}.c: dump-in: {e}"))?;
            dump_in = Some(nr);
            continue;
        }
        skip.push(
            word.parse::<Policy>()
                .map_err(|e| format!("{name}.c: skip-policy: {e}"))?,
        );
    }
    Ok(Case {
        bin: out.join(format!("fid-{name}")),
        name,
        expect,
        skip,
        dump_in,
    })
}

/// A case process: its pid, the pipe to its stdin and from its stdout.
struct Proc {
    pid: i32,
    /// The engine's page server, when a lazy policy restored it.
    server: Option<PageServer>,
    w: std::fs::File,
    r: OwnedFd,
    buf: Vec<u8>,
}

impl Proc {
    /// One line from the process, or why there is none (timeout, EOF).
    fn line(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + ANSWER;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer in {}s", ANSWER.as_secs()));
            }
            let mut pfd = libc::pollfd {
                fd: self.r.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd on our stack, for the time given.
            let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
            if n <= 0 {
                continue;
            }
            let mut chunk = [0u8; 512];
            // SAFETY: reading into a local buffer of its own length from a descriptor we own.
            let got = unsafe { libc::read(self.r.as_raw_fd(), chunk.as_mut_ptr().cast(), 512) };
            if got <= 0 {
                return Err(format!("the process ended ({})", describe_end(self.pid)));
            }
            self.buf.extend_from_slice(&chunk[..got as usize]);
        }
    }

    fn ask(&mut self, cmd: &str) -> Result<String, String> {
        writeln!(self.w, "{cmd}").map_err(|e| format!("writing {cmd:?}: {e}"))?;
        self.line()
    }

    /// Asks `check`: Ok on "ok", the process's own words otherwise.
    fn check(&mut self) -> Result<(), String> {
        match self.ask("check")? {
            s if s == "ok" => Ok(()),
            s => Err(s),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SAFETY: plain integers; the pid is a child of ours, reaped below.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let mut st = 0;
        // SAFETY: reaping our own child into a local.
        unsafe { libc::waitpid(self.pid, &mut st, 0) };
        if let Some(s) = self.server.take() {
            let _ = s.wait();
        }
    }
}

/// How a process that closed its stdout ended, without reaping it (it may take a moment
/// to be reported).
fn describe_end(pid: i32) -> String {
    for _ in 0..50 {
        let s = ended(pid);
        if s != "still running" {
            return s;
        }
        std::thread::sleep(Duration::from_millis(4));
    }
    "closed its stdout, still running".into()
}

fn ended(pid: i32) -> String {
    // SAFETY: siginfo_t is plain data; all zeros is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid into a local siginfo, WNOWAIT leaves the child to be reaped by Drop.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as u32,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    // SAFETY: si_status is valid for CLD_* codes filled in by waitid.
    let status = unsafe { info.si_status() };
    match (rc, info.si_code) {
        (0, libc::CLD_EXITED) => format!("exit code {status}"),
        (0, libc::CLD_KILLED | libc::CLD_DUMPED) => format!("killed by signal {status}"),
        _ => "still running".into(),
    }
}

fn spawn(case: &Case, cwd: &Path) -> Proc {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(&case.bin);
    // SAFETY: close_range is async-signal-safe; it drops descriptors the test harness leaks
    // (a job-server pipe), which a case would otherwise hold at dump time.
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(3, u32::MAX, 0);
            Ok(())
        });
    }
    let mut child = cmd
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let w = std::fs::File::from(OwnedFd::from(child.stdin.take().unwrap()));
    let r = OwnedFd::from(child.stdout.take().unwrap());
    let pid = child.id() as i32;
    // The Proc reaps it by pid.
    std::mem::forget(child);
    Proc {
        pid,
        server: None,
        w,
        r,
        buf: Vec::new(),
    }
}

fn restore(
    img: &Arc<LoadedImage>,
    policy: Policy,
    working_set: Option<Arc<Vec<u64>>>,
) -> Result<Proc, String> {
    let (in_r, in_w) = std::io::pipe().unwrap();
    let (out_r, out_w) = std::io::pipe().unwrap();
    let fds = vec![
        (0, in_r.as_fd().as_raw_fd()),
        (1, out_w.as_fd().as_raw_fd()),
        (2, 2),
    ];
    let opts = RestoreOptions {
        policy,
        source: Some(img.clone() as Arc<dyn PageSource>),
        working_set,
        ..RestoreOptions::default()
    };
    let r = ember_snap::restore(img, Target::Fork { fds }, &opts)
        .map_err(|e| format!("restore: {}", chain(&e)))?;
    Ok(Proc {
        pid: r.pid,
        server: r.server,
        w: std::fs::File::from(OwnedFd::from(in_w)),
        r: OwnedFd::from(out_r),
        buf: Vec::new(),
    })
}

/// For a `dump-in` case: waits until `pid` is blocked in its syscall (so the dump lands
/// there, not after it), at most a few seconds.
fn wait_in(case: &Case, pid: i32) -> Result<(), String> {
    let Some(nr) = case.dump_in else {
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if now.split_whitespace().next() == Some(nr.to_string().as_str()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "BROKEN CASE: never seen in syscall {nr} (/proc says {now:?})"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// For a `dump-in` case: the image must have been taken in that syscall (its registers'
/// orig_rax), or the case passed without testing anything.
fn taken_in(case: &Case, img: &LoadedImage) -> Result<(), String> {
    let Some(nr) = case.dump_in else {
        return Ok(());
    };
    // orig_rax is word 15 of user_regs_struct.
    match img.meta.task.regs.get(15) {
        Some(&n) if n == nr => Ok(()),
        other => Err(format!(
            "BROKEN CASE: dumped in syscall {other:?}, not {nr} (the sleep ended first)"
        )),
    }
}

/// Dumps `pid` on a thread of its own, so a dump that never ends is reported, not waited
/// for (the thread is left behind; the test fails).
fn dump(pid: i32, out: &Path) -> Result<(), String> {
    let out = out.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = DumpOptions {
            inherited: vec![0, 1, 2],
            ..Default::default()
        };
        let _ = tx.send(ember_snap::dump(pid, &out, &opts).map_err(|e| chain(&e)));
    });
    match rx.recv_timeout(DUMP) {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(format!("HANG: the dump did not end in {}s", DUMP.as_secs())),
    }
}

fn load(dir: &Path) -> Result<Arc<LoadedImage>, String> {
    LoadedImage::load(dir)
        .map(Arc::new)
        .map_err(|e| format!("load: {}", chain(&e)))
}

/// One row of the table: the dump's cell and one per restore.
struct Row {
    name: String,
    cells: Vec<(String, Result<String, String>)>,
}

fn run_case(case: &Case, dir: &Path) -> Row {
    let mut row = Row {
        name: case.name.clone(),
        cells: Vec::new(),
    };
    let cwd = dir.join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let mut original = spawn(case, &cwd);
    let pre = original
        .line()
        .and_then(|l| {
            (l == "ready")
                .then_some(())
                .ok_or(format!("said {l:?}, not ready"))
        })
        .and_then(|()| original.check());
    if let Err(e) = pre {
        row.cells
            .push(("dump".into(), Err(format!("BROKEN CASE un-dumped: {e}"))));
        return row;
    }
    let image = dir.join("image");
    let dumped = wait_in(case, original.pid).and_then(|()| dump(original.pid, &image));
    match (&case.expect, dumped) {
        (Expect::Refused(why), Err(e)) if e.contains(why.as_str()) => {
            // A refusal leaves the process running as it was.
            let after = original
                .check()
                .map(|()| "refused".to_string())
                .map_err(|d| format!("refused, but the process is not as it was: {d}"));
            row.cells.push(("dump".into(), after));
            return row;
        }
        (Expect::Refused(why), Err(e)) => {
            row.cells.push((
                "dump".into(),
                Err(format!("refused without naming {why:?}: {e}")),
            ));
            return row;
        }
        (Expect::Refused(why), Ok(())) => {
            row.cells.push((
                "dump".into(),
                Err(format!("WRONG: accepted, should be refused ({why})")),
            ));
            return row;
        }
        (Expect::Exact, Err(e)) => {
            row.cells.push(("dump".into(), Err(format!("FAILED: {e}"))));
            return row;
        }
        (Expect::Exact, Ok(())) => row.cells.push(("dump".into(), Ok("ok".into()))),
    }
    drop(original);
    let img = match load(&image).and_then(|i| taken_in(case, &i).map(|()| i)) {
        Ok(i) => i,
        Err(e) => {
            row.cells.push(("load".into(), Err(e)));
            return row;
        }
    };
    // Prefetch replays the working set the lazy restore's check touched.
    let mut working_set = None;
    for policy in POLICIES {
        if case.skip.contains(&policy) {
            row.cells.push((policy.to_string(), Ok("skipped".into())));
            continue;
        }
        let cell = restore(&img, policy, working_set.clone()).and_then(|mut p| {
            p.check().map_err(|d| format!("WRONG: {d}"))?;
            if policy == Policy::Lazy
                && let Some(s) = &p.server
            {
                working_set = Some(Arc::new(s.working_set()));
            }
            Ok("ok".to_string())
        });
        row.cells.push((policy.to_string(), cell));
    }
    for policy in REDUMPS {
        if case.skip.contains(&policy) {
            continue;
        }
        let again = dir.join(format!("redump-{policy}"));
        // Dumped before it is asked anything: a lazily restored process has touched
        // nothing yet, so the re-dump must find every page it has not been given.
        let cell = restore(&img, policy, working_set.clone()).and_then(|p| {
            dump(p.pid, &again).map_err(|e| format!("FAILED re-dump: {e}"))?;
            drop(p);
            let img2 = load(&again)?;
            let mut q = restore(&img2, Policy::Eager, None)?;
            q.check()
                .map_err(|d| format!("WRONG after the re-dump: {d}"))?;
            Ok("ok".to_string())
        });
        row.cells.push((format!("re:{policy}"), cell));
    }
    // Layers: restored under each policy and checked, dumped as a layer over the image it
    // came from (with its page server, as the node dumps), the layer restored under each
    // policy and checked.
    for policy in POLICIES {
        if case.skip.contains(&policy) {
            continue;
        }
        let at = dir.join(format!("layer-{policy}"));
        let cell = restore(&img, policy, working_set.clone()).and_then(|mut p| {
            p.check()
                .map_err(|d| format!("WRONG before the layer: {d}"))?;
            let (dumped, server) = dump_layer(p.pid, &at, &img, p.server.take());
            p.server = server;
            dumped.map_err(|e| format!("FAILED layer dump: {e}"))?;
            drop(p);
            let layer = load(&at)?;
            let mut layer_ws = None;
            let mut bad = Vec::new();
            for again in POLICIES {
                if case.skip.contains(&again) {
                    continue;
                }
                let r = restore(&layer, again, layer_ws.clone()).and_then(|mut q| {
                    q.check().map_err(|d| format!("WRONG: {d}"))?;
                    if again == Policy::Lazy
                        && let Some(s) = &q.server
                    {
                        layer_ws = Some(Arc::new(s.working_set()));
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    bad.push(format!("restored {again}: {e}"));
                }
            }
            match bad.first() {
                None => Ok("ok".to_string()),
                Some(_) if bad.iter().any(|b| b.contains("WRONG")) => {
                    Err(format!("WRONG layer: {}", bad.join("; ")))
                }
                Some(_) => Err(format!("FAILED layer: {}", bad.join("; "))),
            }
        });
        row.cells.push((format!("layer:{policy}"), cell));
    }
    row
}

/// Dumps `pid` as a layer over `parent` with its page server on a thread of its own (a
/// dump that never ends is reported, not waited for); hands the server back.
fn dump_layer(
    pid: i32,
    out: &Path,
    parent: &Arc<LoadedImage>,
    server: Option<PageServer>,
) -> (Result<(), String>, Option<PageServer>) {
    let (out, parent) = (out.to_path_buf(), parent.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opts = DumpOptions {
            inherited: vec![0, 1, 2],
            ..Default::default()
        };
        let lineage = ember_snap::Lineage {
            parent: Some(&parent),
            server: server.as_ref(),
        };
        let r = ember_snap::dump_restored(pid, &out, &opts, lineage).map_err(|e| chain(&e));
        let _ = tx.send((r.map(|_| ()), server));
    });
    match rx.recv_timeout(DUMP) {
        Ok(r) => r,
        Err(_) => (
            Err(format!(
                "HANG: the layer dump did not end in {}s",
                DUMP.as_secs()
            )),
            None,
        ),
    }
}

#[test]
fn every_kind_of_state_comes_back_exact_or_is_refused_at_dump() {
    if !privileged("every_kind_of_state_comes_back_exact_or_is_refused_at_dump") {
        return;
    }
    let dir = tmp();
    let cases = cases(dir.path());
    assert!(!cases.is_empty(), "no cases under tests/fidelity");
    let mut rows = Vec::new();
    for case in &cases {
        let case_dir = dir.path().join(&case.name);
        std::fs::create_dir_all(&case_dir).unwrap();
        let t = Instant::now();
        let row = run_case(case, &case_dir);
        eprintln!("{}: {:.2}s", case.name, t.elapsed().as_secs_f64());
        rows.push(row);
    }

    let header: Vec<String> = rows
        .iter()
        .max_by_key(|r| r.cells.len())
        .map(|r| r.cells.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let mut table = format!("\n{:width$}", "case");
    for h in &header {
        table.push_str(&format!(" | {h:>11}"));
    }
    table.push('\n');
    let mut wrong = Vec::new();
    for r in &rows {
        table.push_str(&format!("{:width$}", r.name));
        for (k, v) in &r.cells {
            let short = match v {
                Ok(s) => s.clone(),
                Err(e) if e.starts_with("WRONG") => "WRONG".into(),
                Err(e) if e.starts_with("HANG") => "HANG".into(),
                Err(_) => "FAILED".into(),
            };
            table.push_str(&format!(" | {short:>11}"));
            if let Err(e) = v {
                wrong.push(format!("{} [{k}]: {e}", r.name));
            }
        }
        table.push('\n');
    }
    eprintln!("{table}");
    assert!(
        wrong.is_empty(),
        "{} of the suite's cells are not what their case expects:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
