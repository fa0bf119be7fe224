//! A Python instance: one runtime process started from Ember's bootstrap, serving
//! invocations over the protocol socket.
//!
//! ```text
//! spawn --BOOT+INIT--> [interpreter starts] --PRELOADED--> [handler import] --READY--> idle
//! idle --INVOKE--> busy --RESULT|ERROR--> idle        any protocol failure: the instance is dead
//! ```

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tracing::{Instrument, info_span};

use crate::protocol::{
    self, Boot, FunctionError, Init, InvokeHeader, Kind, Preloaded, ProtocolError, Ready,
    ResultHeader,
};
use crate::sys;

/// The bootstrap's source, shipped inside the binary.
pub const BOOTSTRAP_PY: &str = include_str!("../python/bootstrap.py");

/// Longest log line kept; longer lines are cut and marked.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Where a runtime's stdout and stderr lines go.
pub trait LogSink: Send + Sync + 'static {
    fn line(&self, instance: &str, stream: Stream, line: &[u8]);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Everything needed to start one instance.
#[derive(Debug, Clone)]
pub struct StartSpec {
    pub instance_id: String,
    pub function: String,
    pub version: u64,
    pub handler: String,
    pub memory_mb: u32,
    /// The interpreter of the function's package environment.
    pub python: PathBuf,
    /// The directory [`install_bootstrap`] returned.
    pub bootstrap: PathBuf,
    pub code_dir: PathBuf,
    /// Top-level modules of the function's packages, imported before the handler.
    pub imports: Vec<String>,
    /// The function's own environment variables (validated by the caller).
    pub env: BTreeMap<String, String>,
}

/// Time spent in each phase of a cold boot.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTiming {
    pub spawn: Duration,
    pub interpreter: Duration,
    pub import_packages: Duration,
    pub import_handler: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("could not start {python}")]
    Spawn {
        python: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not create the protocol socket")]
    Socket(#[source] std::io::Error),
    #[error("the runtime failed during start-up (see the function's log): {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the runtime exited during start-up ({0}); its output is in the function's log")]
    Exited(std::process::ExitStatus),
    #[error("importing the handler failed: {}: {}", .0.error_type, .0.message)]
    Handler(FunctionError),
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the instance died or broke the protocol during the invocation: {0}")]
    Crashed(#[from] ProtocolError),
}

/// What one invocation produced.
#[derive(Debug)]
pub enum Outcome {
    /// The handler returned; `payload` is its JSON result.
    Result { payload: Vec<u8>, exec: Duration },
    /// The handler raised (or returned something that is not JSON).
    Error(FunctionError),
}

pub struct Instance {
    id: String,
    child: Child,
    conn: UnixStream,
    pid: u32,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish()
    }
}

/// Variables every instance gets; a function may not set these names itself.
pub fn reserved_env(name: &str) -> bool {
    name.starts_with("EMBER_") || name.starts_with("AWS_LAMBDA_") || name.starts_with("PYTHON")
}

impl Instance {
    /// Starts the runtime, preloads the packages and imports the handler.
    /// `confine` may add steps to the command (a sandbox); they run in the child after the
    /// runtime's own (the protocol descriptor is in place by then).
    pub async fn start(
        spec: &StartSpec,
        logs: Arc<dyn LogSink>,
        confine: impl FnOnce(&mut Command),
    ) -> Result<(Instance, BootTiming), StartError> {
        let t0 = Instant::now();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(StartError::Socket)?;
        ours.set_nonblocking(true).map_err(StartError::Socket)?;
        let conn = UnixStream::from_std(ours).map_err(StartError::Socket)?;

        let mut cmd = Command::new(&spec.python);
        // Imported as a module (not run as a script) so that CPython caches its bytecode:
        // compiling it at every start would cost ~1 ms. Its directory leaves sys.path again
        // before any function code runs.
        cmd.arg("-I")
            .arg("-c")
            .arg(LAUNCH_PY)
            .arg(&spec.bootstrap)
            .arg(sys::PROTOCOL_FD.to_string())
            .current_dir(&spec.code_dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", "/tmp")
            // Single-threaded numeric libraries: faster to start, and snapshot-friendly.
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .env("MKL_NUM_THREADS", "1")
            .env("AWS_LAMBDA_FUNCTION_NAME", &spec.function)
            .env(
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            )
            .env("AWS_LAMBDA_FUNCTION_VERSION", spec.version.to_string())
            .env("EMBER_INSTANCE_ID", &spec.instance_id)
            .envs(&spec.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let proto = theirs.as_raw_fd();
        let parent = sys::own_pid();
        // SAFETY: the closure runs between fork and exec and only calls
        // `sys::child_after_fork`, which is async-signal-safe; `proto` stays open in the
        // parent until after spawn returns because `theirs` is dropped below.
        unsafe {
            cmd.pre_exec(move || sys::child_after_fork(proto, parent));
        }
        confine(&mut cmd);
        let mut child = {
            let _s = info_span!("runtime.spawn").entered();
            cmd.spawn().map_err(|source| StartError::Spawn {
                python: spec.python.clone(),
                source,
            })?
        };
        drop(theirs);
        let spawn = t0.elapsed();
        let pid = child.id().unwrap_or(0);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump_lines(
                out,
                spec.instance_id.clone(),
                Stream::Stdout,
                logs.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump_lines(
                err,
                spec.instance_id.clone(),
                Stream::Stderr,
                logs,
            ));
        }
        let mut inst = Instance {
            id: spec.instance_id.clone(),
            child,
            conn,
            pid,
        };
        match inst.boot(spec, spawn, t0).await {
            Ok(timing) => Ok((inst, timing)),
            Err(StartError::Protocol(e)) => {
                // Most often the runtime exited (a broken interpreter, a bad path): say how.
                let status = inst.exit_status(Duration::from_millis(200)).await;
                let _ = sys::kill_group(inst.pid);
                Err(match status {
                    Some(st) => StartError::Exited(st),
                    None => StartError::Protocol(e),
                })
            }
            Err(e) => {
                let _ = sys::kill_group(inst.pid);
                Err(e)
            }
        }
    }

    async fn boot(
        &mut self,
        spec: &StartSpec,
        spawn: Duration,
        t0: Instant,
    ) -> Result<BootTiming, StartError> {
        let boot = serde_json::to_vec(&Boot {
            imports: &spec.imports,
        })
        .map_err(|e| ProtocolError::Io(e.into()))?;
        let code_dir = spec.code_dir.to_string_lossy();
        let init = serde_json::to_vec(&Init {
            function: &spec.function,
            handler: &spec.handler,
            code_dir: &code_dir,
            memory_mb: spec.memory_mb,
            version: spec.version,
            instance: &spec.instance_id,
        })
        .map_err(|e| ProtocolError::Io(e.into()))?;
        // Both frames go at once: the runtime reads INIT only after it has preloaded.
        protocol::write_frame(&mut self.conn, Kind::Boot, &[&boot]).await?;
        protocol::write_frame(&mut self.conn, Kind::Init, &[&init]).await?;

        let frame = protocol::read_frame(&mut self.conn)
            .instrument(info_span!("runtime.import_packages"))
            .await?;
        let preloaded: Preloaded = match frame.kind {
            Kind::Preloaded => protocol::parse_json("PRELOADED", &frame.body)?,
            got => return Err(unexpected("PRELOADED", got).into()),
        };
        let import_packages = Duration::from_micros(preloaded.import_packages_us);
        let interpreter = t0.elapsed().saturating_sub(spawn + import_packages);

        let frame = protocol::read_frame(&mut self.conn)
            .instrument(info_span!("runtime.import_handler"))
            .await?;
        match frame.kind {
            Kind::Ready => {
                let ready: Ready = protocol::parse_json("READY", &frame.body)?;
                Ok(BootTiming {
                    spawn,
                    interpreter,
                    import_packages,
                    import_handler: Duration::from_micros(ready.import_handler_us),
                })
            }
            Kind::InitError => Err(StartError::Handler(protocol::parse_json(
                "INIT_ERROR",
                &frame.body,
            )?)),
            got => Err(unexpected("READY", got).into()),
        }
    }

    /// Delivers one event and waits for the handler's answer. The caller bounds the wait and
    /// kills the instance when the function's timeout passes.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
    ) -> Result<Outcome, InvokeError> {
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let header = serde_json::to_vec(&InvokeHeader {
            request_id,
            deadline_ms,
        })
        .map_err(|e| ProtocolError::Io(e.into()))?;
        let hlen = (header.len() as u32).to_be_bytes();
        protocol::write_frame(&mut self.conn, Kind::Invoke, &[&hlen, &header, event]).await?;
        let frame = protocol::read_frame(&mut self.conn).await?;
        match frame.kind {
            Kind::Result => {
                let (h, payload): (ResultHeader, _) =
                    protocol::split_headed("RESULT", &frame.body)?;
                Ok(Outcome::Result {
                    payload: payload.to_vec(),
                    exec: Duration::from_micros(h.duration_us),
                })
            }
            Kind::Error => Ok(Outcome::Error(protocol::parse_json("ERROR", &frame.body)?)),
            got => Err(unexpected("RESULT", got).into()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True when the process has exited or its protocol socket is closed.
    pub fn is_gone(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return true;
        }
        // An idle runtime never writes: anything readable (data or EOF) means trouble.
        let mut probe = [0u8; 1];
        match self.conn.try_read(&mut probe) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }

    /// How the process ended, if it has (waiting at most `within`).
    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Kills the instance and everything it started, and reaps it in the background.
    pub fn kill(mut self) {
        if let Err(e) = sys::kill_group(self.pid) {
            tracing::warn!(instance = %self.id, pid = self.pid, "killing the instance's process group failed: {e}");
        }
        tokio::spawn(async move {
            let _ = self.child.kill().await;
        });
    }
}

fn unexpected(expected: &'static str, got: Kind) -> ProtocolError {
    ProtocolError::Unexpected { expected, got }
}

/// Forwards a pipe to the log line by line, cutting lines at [`MAX_LOG_LINE`] so that a
/// function cannot make the daemon buffer without bound.
async fn pump_lines<R: AsyncRead + Unpin>(
    r: R,
    instance: String,
    stream: Stream,
    sink: Arc<dyn LogSink>,
) {
    let mut r = BufReader::new(r);
    let mut line = Vec::with_capacity(256);
    loop {
        let buf = match r.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(b) => b,
        };
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let room = MAX_LOG_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        r.consume(take);
        if done || line.len() >= MAX_LOG_LINE {
            while line.last() == Some(&b'\n') {
                line.pop();
            }
            if !done {
                line.extend_from_slice(b" [line cut]");
            }
            sink.line(&instance, stream, &line);
            line.clear();
        }
    }
    if !line.is_empty() {
        sink.line(&instance, stream, &line);
    }
}

/// `python -I -c LAUNCH_PY <bootstrap dir> <fd>`: imports the bootstrap from its directory.
const LAUNCH_PY: &str = "import sys; d = sys.argv.pop(1); sys.path.insert(0, d); \
    import ember_bootstrap as b; sys.path.remove(d); b.main()";

/// Writes the bootstrap into `dir/<content hash>/ember_bootstrap.py` (once per content) and
/// returns that directory, which [`StartSpec::bootstrap`] names.
pub fn install_bootstrap(dir: &Path) -> std::io::Result<PathBuf> {
    // FNV-1a: stable across builds, unlike std's hasher; collisions only cost a rewrite.
    let hash = BOOTSTRAP_PY.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let home = dir.join(format!("{hash:016x}"));
    let path = home.join("ember_bootstrap.py");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(BOOTSTRAP_PY) {
        std::fs::create_dir_all(&home)?;
        let tmp = home.join(format!(".ember_bootstrap-{}.tmp", std::process::id()));
        std::fs::write(&tmp, BOOTSTRAP_PY)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(home)
}
