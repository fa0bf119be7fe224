//! `ember bench sandbox`: sandbox creation to a running first process, with 1, 10 and 40
//! created at once (the "Cooling Down FaaS" parallelism levels), beside a plain fork+exec of
//! the same program in the same run. "Running" is when `spawn()` returns: the program has
//! been exec'd (the sandbox's set-up is all done before that).

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

async fn one(
    boxes: Option<Arc<Sandboxes>>,
    id: String,
    program: PathBuf,
    args: Vec<String>,
    work: PathBuf,
) -> Result<f64, SandboxBenchError> {
    let t0 = Instant::now();
    let mut sb = match boxes {
        Some(b) => Some(b.prepare(&InstanceSpec {
            id,
            memory_bytes: 256 << 20,
            read_only: vec![work.clone()],
            cwd: work.clone(),
            host_network: false,
            runtime_api_port: None,
        })?),
        None => None,
    };
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .current_dir(&work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(sb) = sb.as_mut() {
        sb.attach(&mut cmd);
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

/// Runs `runs` rounds per parallelism level; each round starts `parallel` processes at once,
/// sandboxed and plain, alternating so both see the same machine.
pub async fn run(
    home: &Path,
    program: &Path,
    args: &[&str],
    levels: &[usize],
    runs: usize,
) -> Result<Vec<Row>, SandboxBenchError> {
    let node_id = format!("bench-{}", std::process::id());
    let boxes = Arc::new(Sandboxes::open(NodeSandbox {
        cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        node_id,
        mount_point: home.join("root"),
        uid: 65534,
        gid: 65534,
        pids_max: 64,
        tmp_bytes: 16 << 20,
    })?);
    let work = home.join("work");
    std::fs::create_dir_all(&work).map_err(|source| SandboxBenchError::Spawn {
        program: work.clone(),
        source,
    })?;
    let mut rows = Vec::new();
    for &parallel in levels {
        let (mut boxed, mut plain) = (Vec::new(), Vec::new());
        for round in 0..runs {
            for sandboxed in [true, false] {
                let mut set = tokio::task::JoinSet::new();
                for i in 0..parallel {
                    set.spawn(one(
                        sandboxed.then(|| boxes.clone()),
                        format!("b{round}-{i}"),
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
                    if sandboxed {
                        boxed.push(ms)
                    } else {
                        plain.push(ms)
                    }
                }
            }
        }
        rows.push(Row {
            mode: "sandbox",
            parallel,
            summary: summarize(&boxed),
        });
        rows.push(Row {
            mode: "fork+exec",
            parallel,
            summary: summarize(&plain),
        });
    }
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
        "{:<10} {:>8} {:>6} {:>9} {:>9}",
        "mode", "parallel", "count", "p50 ms", "p99 ms"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<10} {:>8} {:>6} {:>9.3} {:>9.3}",
            r.mode, r.parallel, r.summary.count, r.summary.p50_ms, r.summary.p99_ms
        );
    }
    let _ = writeln!(t, "host /sys/kernel/rcu_expedited = {}", rcu_expedited());
    for pair in rows.chunks(2) {
        if let [s, p] = pair {
            let _ = writeln!(
                t,
                "parallel {:>2}: sandbox overhead over fork+exec, p50 {:.3} ms",
                s.parallel,
                s.summary.p50_ms - p.summary.p50_ms
            );
        }
    }
    t
}
