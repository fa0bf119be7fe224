//! What the two executable runtimes share (`provided` and `native`): the spec of the
//! process, Lambda's environment variables, and the spawn with its output going to the log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::{Child, Command};
use tracing::info_span;

use crate::python::{LogSink, StartError, Stream, pump_lines};
use crate::sys;

/// Everything needed to start one process of an executable runtime.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub instance_id: String,
    pub function: String,
    pub version: u64,
    /// `_HANDLER` for `provided`; the executable's path in the code for `native`.
    pub handler: String,
    pub memory_mb: u32,
    pub code_dir: PathBuf,
    /// The executable, absolute.
    pub program: PathBuf,
    /// Its arguments (Node.js: Ember's JavaScript bootstrap).
    pub args: Vec<String>,
    /// What `LAMBDA_RUNTIME_DIR` names: the runtime's own files (the code's directory when
    /// the runtime is the code's).
    pub runtime_dir: PathBuf,
    /// Directories put before the system's on `PATH` (the package environment's `bin`).
    pub bin_dirs: Vec<PathBuf>,
    /// The function's own environment variables (validated by the caller).
    pub env: BTreeMap<String, String>,
    pub region: String,
}

/// Lambda's reserved variables, as its custom runtimes expect them (clients such as the
/// `lambda_runtime` crate refuse to start without them).
pub fn exec_env(spec: &ExecSpec, runtime_api: Option<&str>) -> BTreeMap<String, String> {
    let mut path: Vec<String> = spec
        .bin_dirs
        .iter()
        .map(|d| d.to_string_lossy().into_owned())
        .collect();
    path.push("/usr/local/bin:/usr/bin:/bin".into());
    let id = crate::lambda_env::Identity {
        function: &spec.function,
        instance_id: &spec.instance_id,
        handler: &spec.handler,
        memory_mb: spec.memory_mb,
        task_root: &spec.code_dir,
        runtime_dir: &spec.runtime_dir,
        region: &spec.region,
        initialization: crate::lambda_env::Initialization::OnDemand,
    };
    let mut env = crate::lambda_env::lambda_env(&id, path.join(":"));
    if let Some(api) = runtime_api {
        env.insert("AWS_LAMBDA_RUNTIME_API".into(), api.to_string());
    }
    env.extend(spec.env.clone());
    env
}

/// The last line a process wrote on stderr (at most 1 KiB), for error messages.
#[derive(Clone, Default)]
pub struct LastLine(Arc<Mutex<Vec<u8>>>);

impl LastLine {
    pub fn get(&self) -> String {
        let l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&l).into_owned()
    }
}

/// Passes lines on to the log and keeps the last stderr line.
struct Tee {
    inner: Arc<dyn LogSink>,
    last: LastLine,
}

impl LogSink for Tee {
    fn line(&self, instance: &str, stream: Stream, line: &[u8]) {
        if stream == Stream::Stderr && !line.is_empty() {
            let mut l = self.last.0.lock().unwrap_or_else(|p| p.into_inner());
            l.clear();
            l.extend_from_slice(&line[..line.len().min(1024)]);
        }
        self.inner.line(instance, stream, line);
    }
}

/// A spawned process of an executable runtime.
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stderr_tail: LastLine,
    /// Ends when the process has closed its stderr (it has exited, or closed it itself).
    pub stderr_done: tokio::task::JoinHandle<()>,
}

impl Spawned {
    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// How the process ended, if it has (waiting at most `within`).
    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Kills its process group and reaps it in the background.
    pub fn kill(mut self) {
        let _ = sys::kill_group(self.pid);
        tokio::spawn(async move {
            let _ = self.child.kill().await;
        });
    }
}

/// Starts `spec.program` with Lambda's environment. With `stdio`, its stdin and stdout are
/// pipes for the caller (native); else stdin is empty and stdout goes to the log. `confine`
/// may add steps to the command (a sandbox).
pub fn spawn(
    spec: &ExecSpec,
    runtime_api: Option<&str>,
    stdio: bool,
    logs: Arc<dyn LogSink>,
    confine: impl FnOnce(&mut Command),
) -> Result<Spawned, StartError> {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(exec_env(spec, runtime_api))
        .current_dir(&spec.code_dir)
        .stdin(if stdio { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    sys::kill_with_daemon(&mut cmd);
    sys::inherit_stdio_only(&mut cmd);
    confine(&mut cmd);
    let mut child = {
        let _s = info_span!("runtime.spawn").entered();
        cmd.spawn().map_err(|source| StartError::Spawn {
            python: spec.program.clone(),
            source,
        })?
    };
    let pid = child.id().unwrap_or(0);
    let last = LastLine::default();
    let sink: Arc<dyn LogSink> = Arc::new(Tee {
        inner: logs,
        last: last.clone(),
    });
    if !stdio && let Some(out) = child.stdout.take() {
        tokio::spawn(pump_lines(
            out,
            spec.instance_id.clone(),
            Stream::Stdout,
            sink.clone(),
        ));
    }
    let stderr_done = match child.stderr.take() {
        Some(err) => tokio::spawn(pump_lines(
            err,
            spec.instance_id.clone(),
            Stream::Stderr,
            sink,
        )),
        None => tokio::spawn(async {}),
    };
    Ok(Spawned {
        child,
        pid,
        stderr_tail: last,
        stderr_done,
    })
}
