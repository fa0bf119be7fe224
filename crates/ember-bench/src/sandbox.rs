//! `ember bench sandbox`: sandbox creation to a running first process, with 1, 10 and 40
//! created at once (the "Cooling Down FaaS" parallelism levels), beside a plain fork+exec of
//! the same program in the same run. "Running" is when `spawn()` returns: the program has
//! been exec'd (the sandbox's set-up is all done before that). Also the two ways a sandbox
//! is made for a restore, to its first process stopped: `parked-fork`
//! (`Sandbox::attach_stopped`: a fork of this process) and `parked` (`Sandbox::spawn_parked`:
//! the stopper, no fork; what the node uses). The benchmark first makes this process's
//! address space like a daemon's (`--resident` MiB of heap written), since what a fork
//! copies grows with it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ember_sandbox::{InstanceSpec, NodeSandbox, Sandboxes};
use serde::Serialize;

use crate::stats::{Summary, summarize};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: &'static str,
    pub parallel: usize,
    #[serde(flatten)]
    pub summary: Summary,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxBenchError {
    #[error(transparent)]
    Sandbox(#[from] ember_sandbox::SandboxError),
    #[error("starting {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The ways a process is started in the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sandbox,
    ParkedFork,
    Parked,
    Plain,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Sandbox, Mode::ParkedFork, Mode::Parked, Mode::Plain];

    fn name(self) -> &'static str {
        match self {
            Mode::Sandbox => "sandbox",
            Mode::ParkedFork => "parked-fork",
            Mode::Parked => "parked",
            Mode::Plain => "fork+exec",
        }
    }
}

async fn one(
    mode: Mode,
    boxes: Arc<Sandboxes>,
    id: String,
    program: PathBuf,
    args: Vec<String>,
    work: PathBuf,
) -> Result<f64, SandboxBenchError> {
    let t0 = Instant::now();
    let boxes = (mode != Mode::Plain).then_some(boxes);
    let mut sb = match boxes {
        Some(b) => Some(b.prepare(&InstanceSpec {
            id,
            memory_bytes: 256 << 20,
            read_only: vec![work.clone()],
            bound_at: Vec::new(),
            tmp_bytes: None,
            cwd: work.clone(),
            host_network: false,
            runtime_api_port: None,
        })?),
        None => None,
    };
    if let Some(mut sb) = sb.take_if(|_| mode == Mode::Parked) {
        let fail = |source| SandboxBenchError::Spawn {
            program: PathBuf::from("the stopper"),
            source,
        };
        let stopper = ember_snap::stopper::program_fd().map_err(fail)?;
        let pid = sb.spawn_parked(stopper, &[(0, 0), (1, 1), (2, 2)])?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        // SAFETY: kill and waitpid on our own child, with a live local for the status.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut 0, 0);
        }
        sb.destroy().await;
        return Ok(ms);
    }
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .current_dir(&work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    match (mode, sb.as_mut()) {
        (Mode::ParkedFork, Some(sb)) => sb.attach_stopped(&mut cmd),
        (_, Some(sb)) => sb.attach(&mut cmd),
        _ => {}
    }
    let mut child = cmd
        .spawn()
        .map_err(|source| SandboxBenchError::Spawn { program, source })?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let _ = child.kill().await;
    if let Some(sb) = sb {
        sb.destroy().await;
    }
    Ok(ms)
}

/// Runs `runs` rounds per parallelism level; each round starts `parallel` processes at once
/// in each mode, alternating so all see the same machine. `resident_mib` of heap is written
/// first and held throughout (a daemon's address space).
pub async fn run(
    home: &Path,
    program: &Path,
    args: &[&str],
    levels: &[usize],
    runs: usize,
    resident_mib: usize,
) -> Result<Vec<Row>, SandboxBenchError> {
    let resident = vec![1u8; resident_mib << 20];
    let node_id = format!("bench-{}", std::process::id());
    let boxes = Arc::new(Sandboxes::open(NodeSandbox {
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        node_id,
        mount_point: home.join("root"),
        uid: 65534,
        gid: 65534,
        pids_max: 64,
        tmp_bytes: 16 << 20,
        remap: Default::default(),
    })?);
    let work = home.join("work");
    std::fs::create_dir_all(&work).map_err(|source| SandboxBenchError::Spawn {
        program: work.clone(),
        source,
    })?;
    let mut rows = Vec::new();
    for &parallel in levels {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); Mode::ALL.len()];
        for round in 0..runs {
            for (m, &mode) in Mode::ALL.iter().enumerate() {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..parallel {
                    set.spawn(one(
                        mode,
                        boxes.clone(),
                        format!("b{round}-{m}-{i}"),
                        program.to_path_buf(),
                        args.iter().map(|a| a.to_string()).collect(),
                        work.clone(),
                    ));
                }
                while let Some(r) = set.join_next().await {
                    let ms = r.map_err(|e| SandboxBenchError::Spawn {
                        program: program.to_path_buf(),
                        source: std::io::Error::other(e),
                    })??;
                    times[m].push(ms);
                }
            }
        }
        for (mode, t) in Mode::ALL.iter().zip(&times) {
            rows.push(Row {
                mode: mode.name(),
                parallel,
                summary: summarize(t),
            });
        }
    }
    std::hint::black_box(&resident);
    Ok(rows)
}

/// The host's `rcu_expedited` setting: on cgroup v1, moving a process into a cgroup and
/// detaching the old root each wait for an RCU grace period, so this knob decides whether
/// sandbox creation takes ~4 ms or, now and then, 10-20 ms.
pub fn rcu_expedited() -> String {
    std::fs::read_to_string("/sys/kernel/rcu_expedited")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<12} {:>8} {:>6} {:>9} {:>9}",
        "mode", "parallel", "count", "p50 ms", "p99 ms"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<12} {:>8} {:>6} {:>9.3} {:>9.3}",
            r.mode, r.parallel, r.summary.count, r.summary.p50_ms, r.summary.p99_ms
        );
    }
    let _ = writeln!(t, "host /sys/kernel/rcu_expedited = {}", rcu_expedited());
    for group in rows.chunks(Mode::ALL.len()) {
        let p50 = |name: &str| {
            group
                .iter()
                .find(|r| r.mode == name)
                .map_or(f64::NAN, |r| r.summary.p50_ms)
        };
        let Some(first) = group.first() else { continue };
        let plain = p50(Mode::Plain.name());
        let _ = writeln!(
            t,
            "parallel {:>2}: over fork+exec, p50: sandbox {:+.3} ms, parked-fork {:+.3} ms, parked {:+.3} ms; parked-fork/parked {:.2}x",
            first.parallel,
            p50(Mode::Sandbox.name()) - plain,
            p50(Mode::ParkedFork.name()) - plain,
            p50(Mode::Parked.name()) - plain,
            p50(Mode::ParkedFork.name()) / p50(Mode::Parked.name()),
        );
    }
    t
}
