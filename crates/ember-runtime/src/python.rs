//! A Python instance: one runtime process started from Ember's bootstrap, serving
//! invocations over the protocol socket.
//!
//! ```text
//! cold boot:  spawn --BOOT+INIT--> [interpreter] --PRELOADED--> [handler import] --READY--> idle
//! image build: spawn --BOOT(snapshot)--> [interpreter, imports, pre-snapshot hook] --PRELOADED-->
//!              (the caller dumps the process, blocked reading INIT)
//! from image: spawn parked (stopped by the sandbox) -> the caller restores the image into it
//!              --INIT(restored)--> [after-restore hook, handler import] --READY--> idle
//! idle --INVOKE--> busy --RESULT|ERROR--> idle        any protocol failure: the instance is dead
//! idle --SNAPSHOT--> [before-snapshot hooks, gc] --SNAPSHOT_READY--> at its snapshot point
//!              (the caller dumps the process, blocked reading its next frame)
//!              --CONTINUE--> idle                    the original serves on
//! from function snapshot: spawn parked -> the caller restores image + layer into it
//!              --INIT(restored)--> [after-restore hook, HOOKED, the function's after-restore
//!              hooks] --READY--> idle                (no handler import)
//! ```

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixStream;
use tokio::process::Command;
use tracing::{Instrument, info_span};

use crate::process::{Adopted, Process};
use crate::protocol::{
    self, Boot, FunctionError, Init, InvokeHeader, Kind, Preloaded, ProtocolError, Ready,
    ResultHeader,
};
use crate::sys;

/// The bootstrap's source, shipped inside the binary.
pub const BOOTSTRAP_PY: &str = include_str!("../python/bootstrap.py");
/// Ember's Node.js runtime (a Lambda Runtime API client), installed beside the Python one.
pub const BOOTSTRAP_JS: &str = include_str!("../node/ember_bootstrap.js");
/// The JavaScript bootstrap's name in the directory [`install_bootstrap`] returns.
pub const BOOTSTRAP_JS_NAME: &str = "ember_bootstrap.js";

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

/// Time spent starting an instance restored from an image or a function snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoredTiming {
    /// The platform's after-restore hook (environment, new seeds).
    pub hook: Duration,
    /// The handler's import: zero from a function snapshot, which has it imported already.
    pub import_handler: Duration,
    /// From a function snapshot: the function's own after-restore hooks.
    pub after_restore: Duration,
}

/// What the runtime reported at its snapshot point: the process may be dumped now, and waits
/// for [`Instance::continue_after_snapshot`] (or, in a restored copy, for
/// [`Instance::init_restored`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotReady {
    /// The function's before-snapshot hooks.
    pub hook: Duration,
    /// The platform's preparation: a full collection, then `gc.freeze()`.
    pub prepare: Duration,
    /// The process's threads; the snapshot engine dumps single-threaded processes only.
    pub threads: u32,
}

/// What the runtime reported after its imports, ready to be dumped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prepared {
    pub import_packages: Duration,
    pub threads: u32,
    pub closed_fds: u32,
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
    /// The function's own init raised: importing its handler or, in a copy restored from a
    /// function snapshot, one of its after-restore hooks (the traceback says which).
    #[error("initialising the function failed: {}: {}", .0.error_type, .0.message)]
    Handler(FunctionError),
    #[error(
        "the runtime has {0} threads after importing its packages, and an image needs one: \
         set the package's thread-count variable, or leave this package set out of images"
    )]
    Threads(u32),
}

/// Where the initialisation of a restored instance failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoredInitError {
    /// Before any of the function's code ran (the restored process, the after-restore hook):
    /// the image's fault.
    #[error("the restored runtime failed before the function's code ran: {0}")]
    Image(#[source] StartError),
    /// While importing the handler: the function's own doing.
    #[error(transparent)]
    Function(StartError),
}

/// Why an instance did not reach its snapshot point.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotPointError {
    /// A before-snapshot hook of the function raised. The instance is idle again and serves.
    #[error(
        "a before-snapshot hook of the function raised {}: {}; no snapshot is taken and the \
         instance serves on (fix the hook, or turn function snapshots off for this function)",
        .error.error_type, .error.message
    )]
    Hook {
        error: FunctionError,
        /// Time spent in the hooks, up to the one that raised.
        hook: Duration,
    },
    /// The runtime answered with something else, or its connection broke: discard the
    /// instance (it has been killed).
    #[error("the runtime broke the protocol at its snapshot point; the instance was discarded")]
    Protocol(#[from] ProtocolError),
    /// The runtime exited (it was not idle, or the function ended it): discard the instance.
    #[error(
        "the runtime exited at its snapshot point ({0}); its output is in the function's log, \
         and the instance was discarded"
    )]
    Exited(std::process::ExitStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("the instance died or broke the protocol during the invocation: {0}")]
    Crashed(#[from] ProtocolError),
    #[error("the instance ended during the invocation: {0}")]
    Exited(String),
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
    child: Process,
    conn: UnixStream,
    pid: u32,
    /// A restored instance said HOOKED: the function's own code has started running.
    hooked: bool,
    /// What READY said the handler's import added (see [`Instance::take_imported`]).
    imported: Vec<String>,
    /// The function's ARN, which its invocations name as the one invoked.
    arn: String,
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
        let mut inst = Instance::spawn(spec, logs, confine)?;
        let spawn = t0.elapsed();
        let booted = inst.boot(spec, spawn, t0).await;
        let timing = inst.check_start(booted).await?;
        Ok((inst, timing))
    }

    /// Starts the runtime for a dependency image: it imports `spec.imports`, runs the
    /// pre-snapshot hook and waits for an INIT that will never come to it: the caller dumps
    /// it and then kills it.
    pub async fn start_for_image(
        spec: &StartSpec,
        logs: Arc<dyn LogSink>,
        confine: impl FnOnce(&mut Command),
    ) -> Result<(Instance, Prepared), StartError> {
        let mut inst = Instance::spawn(spec, logs, confine)?;
        let prepared = inst.preload(spec).await;
        let prepared = inst.check_start(prepared).await?;
        if prepared.threads != 1 {
            let n = prepared.threads;
            inst.kill();
            return Err(StartError::Threads(n));
        }
        Ok((inst, prepared))
    }

    /// Initialises a process restored from an image: the after-restore hook, then the
    /// handler's import. The error says which of the two failed: before the runtime says
    /// HOOKED it is the image's doing, after it the function's. The same for a process
    /// restored from a function snapshot (dumped at [`Instance::snapshot_point`]): the
    /// after-restore hook, HOOKED, then the function's own after-restore hooks instead of the
    /// import (a hook that raised is [`StartError::Handler`], the function's).
    pub async fn init_restored(
        &mut self,
        spec: &StartSpec,
    ) -> Result<RestoredTiming, RestoredInitError> {
        let hooked = match self.send_init(spec, true).await {
            Ok(()) => self.await_hooked().await,
            Err(e) => Err(e),
        };
        self.check_start(hooked)
            .await
            .map_err(RestoredInitError::Image)?;
        let ready = self.await_ready().await;
        let ready = self
            .check_start(ready)
            .await
            .map_err(RestoredInitError::Function)?;
        Ok(RestoredTiming {
            hook: Duration::from_micros(ready.hook_us),
            import_handler: Duration::from_micros(ready.import_handler_us),
            after_restore: Duration::from_micros(ready.after_restore_us),
        })
    }

    /// Brings an idle instance to its function snapshot point: the function's before-snapshot
    /// hooks run (last registered first), then the platform's preparation (a full collection,
    /// `gc.freeze()`; descriptors stay open). On `Ok` the runtime is blocked reading its next
    /// frame: dump it, then call [`Instance::continue_after_snapshot`] to let it serve on (a
    /// copy restored from the dump gets [`Instance::init_restored`] instead). Anything else
    /// before that (an invocation, another snapshot point) ends the runtime: a protocol error.
    /// The caller checks [`SnapshotReady::threads`]: the snapshot engine dumps one thread.
    ///
    /// [`SnapshotPointError::Hook`] leaves the instance idle and usable; any other error
    /// leaves it killed, to be discarded.
    pub async fn snapshot_point(&mut self) -> Result<SnapshotReady, SnapshotPointError> {
        let answered = async {
            protocol::write_frame(&mut self.conn, Kind::Snapshot, &[b"{}"]).await?;
            let frame = protocol::read_frame(&mut self.conn).await?;
            match frame.kind {
                Kind::SnapshotReady => {
                    protocol::parse_json::<protocol::SnapshotReady>("SNAPSHOT_READY", &frame.body)
                }
                got => Err(unexpected("SNAPSHOT_READY", got)),
            }
        }
        .instrument(info_span!("runtime.snapshot_point"))
        .await;
        let ready = match answered {
            Ok(r) => r,
            Err(e) => {
                let status = self.exit_status(Duration::from_millis(200)).await;
                let _ = sys::kill_group(self.pid);
                return Err(match status {
                    Some(st) => SnapshotPointError::Exited(st),
                    None => SnapshotPointError::Protocol(e),
                });
            }
        };
        let hook = Duration::from_micros(ready.hook_us);
        match (ready.error, ready.threads) {
            (Some(error), _) => Err(SnapshotPointError::Hook { error, hook }),
            (None, Some(threads)) => Ok(SnapshotReady {
                hook,
                prepare: Duration::from_micros(ready.prepare_us),
                threads,
            }),
            (None, None) => {
                let _ = sys::kill_group(self.pid);
                Err(SnapshotPointError::Protocol(ProtocolError::Malformed {
                    what: "SNAPSHOT_READY",
                    detail: "neither threads nor error".into(),
                }))
            }
        }
    }

    /// Lets an instance at its snapshot point serve on (after the dump, or instead of it): it
    /// runs the function's after-restore hooks (one that raises ends the runtime, seen at the
    /// next invocation) and waits for its next invocation. An error means the instance is gone
    /// (discard it).
    pub async fn continue_after_snapshot(&mut self) -> Result<(), SnapshotPointError> {
        protocol::write_frame(&mut self.conn, Kind::Continue, &[b"{}"]).await?;
        Ok(())
    }

    /// Waits for HOOKED: the restored process runs and its after-restore hook is done (its
    /// time comes with READY).
    async fn await_hooked(&mut self) -> Result<(), StartError> {
        let frame = protocol::read_frame(&mut self.conn)
            .instrument(info_span!("runtime.hook"))
            .await?;
        match frame.kind {
            Kind::Hooked => {
                self.hooked = true;
                Ok(())
            }
            got => Err(unexpected("HOOKED", got).into()),
        }
    }

    /// On a start-up failure: kills the process group, and says how the runtime ended when
    /// it did (most often the cause: a broken interpreter, a bad path, a failed restore).
    async fn check_start<T>(&mut self, r: Result<T, StartError>) -> Result<T, StartError> {
        match r {
            Ok(v) => Ok(v),
            Err(StartError::Protocol(e)) => {
                let status = self.exit_status(Duration::from_millis(200)).await;
                let _ = sys::kill_group(self.pid);
                Err(match status {
                    Some(st) => StartError::Exited(st),
                    None => StartError::Protocol(e),
                })
            }
            Err(e) => {
                let _ = sys::kill_group(self.pid);
                Err(e)
            }
        }
    }

    fn spawn(
        spec: &StartSpec,
        logs: Arc<dyn LogSink>,
        confine: impl FnOnce(&mut Command),
    ) -> Result<Instance, StartError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(StartError::Socket)?;
        ours.set_nonblocking(true).map_err(StartError::Socket)?;
        let conn = UnixStream::from_std(ours).map_err(StartError::Socket)?;

        let mut cmd = Command::new(&spec.python);
        cmd.env_clear().envs(instance_env(spec));
        // Imported as a module (not run as a script) so that CPython caches its bytecode:
        // compiling it at every start would cost ~1 ms. Its directory leaves sys.path again
        // before any function code runs.
        cmd.arg("-I")
            .arg("-c")
            .arg(LAUNCH_PY)
            .arg(&spec.bootstrap)
            .arg(sys::PROTOCOL_FD.to_string())
            .current_dir(&spec.code_dir)
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
        Ok(Instance {
            id: spec.instance_id.clone(),
            child: Process::Spawned(child),
            conn,
            pid,
            hooked: false,
            imported: Vec::new(),
            arn: crate::lambda_env::function_arn(&spec.function),
        })
    }

    /// Descriptors for a runtime process that someone else makes (forked from a template):
    /// its ends, to hand it at the numbers [`Wiring::at_numbers`] gives, and ours, for
    /// [`Instance::adopt`].
    pub fn wiring() -> Result<(Wiring, OurEnds), StartError> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(StartError::Socket)?;
        ours.set_nonblocking(true).map_err(StartError::Socket)?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| StartError::Socket(e.into()))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let null = std::fs::File::open("/dev/null").map_err(StartError::Socket)?;
        Ok((
            Wiring {
                stdin: null.into(),
                stdout: out_w,
                stderr: err_w,
                protocol: theirs.into(),
            },
            OurEnds {
                conn: ours,
                stdout: out_r,
                stderr: err_r,
            },
        ))
    }

    /// Takes over the runtime process `pid`, a child of this process made by someone else
    /// with the descriptors of [`Instance::wiring`] (then in its group stop or running; it
    /// waits for a frame on the protocol socket). Waited for and killed through a pidfd. On
    /// an error the process has been killed and collected.
    pub fn adopt(
        spec: &StartSpec,
        logs: Arc<dyn LogSink>,
        pid: i32,
        ours: OurEnds,
    ) -> Result<Instance, StartError> {
        // Taken over first: from here any failure drops it, which kills and collects it.
        let child = match Adopted::new(pid) {
            Ok(c) => c,
            Err(e) => {
                sys::kill_and_collect(pid);
                return Err(StartError::Socket(e));
            }
        };
        let conn = UnixStream::from_std(ours.conn).map_err(StartError::Socket)?;
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd;
        let out = pipe(ours.stdout).map_err(StartError::Socket)?;
        let err = pipe(ours.stderr).map_err(StartError::Socket)?;
        let id = spec.instance_id.clone();
        tokio::spawn(pump_lines(out, id.clone(), Stream::Stdout, logs.clone()));
        tokio::spawn(pump_lines(err, id.clone(), Stream::Stderr, logs));
        Ok(Instance {
            id,
            child: Process::Adopted(child),
            conn,
            pid: u32::try_from(pid).unwrap_or(0),
            hooked: false,
            imported: Vec::new(),
            arn: crate::lambda_env::function_arn(&spec.function),
        })
    }

    async fn preload(&mut self, spec: &StartSpec) -> Result<Prepared, StartError> {
        self.send_boot(spec, true).await?;
        let p = self.await_preloaded().await?;
        Ok(Prepared {
            import_packages: Duration::from_micros(p.import_packages_us),
            threads: p.threads.unwrap_or(0),
            closed_fds: p.closed_fds,
        })
    }

    async fn send_boot(&mut self, spec: &StartSpec, snapshot: bool) -> Result<(), StartError> {
        let boot = serde_json::to_vec(&Boot {
            imports: &spec.imports,
            snapshot,
        })
        .map_err(|e| ProtocolError::Io(e.into()))?;
        protocol::write_frame(&mut self.conn, Kind::Boot, &[&boot]).await?;
        Ok(())
    }

    async fn send_init(&mut self, spec: &StartSpec, restored: bool) -> Result<(), StartError> {
        // A restored process becomes the function `spec` names.
        self.arn = crate::lambda_env::function_arn(&spec.function);
        let code_dir = spec.code_dir.to_string_lossy();
        let env = restored.then(|| instance_env(spec));
        let init = serde_json::to_vec(&Init {
            env: env.as_ref(),
            function: &spec.function,
            handler: &spec.handler,
            code_dir: &code_dir,
            memory_mb: spec.memory_mb,
            version: spec.version,
            instance: &spec.instance_id,
            restored,
        })
        .map_err(|e| ProtocolError::Io(e.into()))?;
        protocol::write_frame(&mut self.conn, Kind::Init, &[&init]).await?;
        Ok(())
    }

    async fn await_preloaded(&mut self) -> Result<Preloaded, StartError> {
        let frame = protocol::read_frame(&mut self.conn)
            .instrument(info_span!("runtime.import_packages"))
            .await?;
        match frame.kind {
            Kind::Preloaded => Ok(protocol::parse_json("PRELOADED", &frame.body)?),
            got => Err(unexpected("PRELOADED", got).into()),
        }
    }

    async fn await_ready(&mut self) -> Result<Ready, StartError> {
        let frame = protocol::read_frame(&mut self.conn)
            .instrument(info_span!("runtime.import_handler"))
            .await?;
        match frame.kind {
            Kind::Ready => {
                let mut ready: Ready = protocol::parse_json("READY", &frame.body)?;
                self.imported = std::mem::take(&mut ready.imported);
                Ok(ready)
            }
            Kind::InitError => Err(StartError::Handler(protocol::parse_json(
                "INIT_ERROR",
                &frame.body,
            )?)),
            got => Err(unexpected("READY", got).into()),
        }
    }

    async fn boot(
        &mut self,
        spec: &StartSpec,
        spawn: Duration,
        t0: Instant,
    ) -> Result<BootTiming, StartError> {
        // Both frames go at once: the runtime reads INIT only after it has preloaded.
        self.send_boot(spec, false).await?;
        self.send_init(spec, false).await?;
        let preloaded = self.await_preloaded().await?;
        let import_packages = Duration::from_micros(preloaded.import_packages_us);
        let interpreter = t0.elapsed().saturating_sub(spawn + import_packages);
        let ready = self.await_ready().await?;
        Ok(BootTiming {
            spawn,
            interpreter,
            import_packages,
            import_handler: Duration::from_micros(ready.import_handler_us),
        })
    }

    /// Delivers one event and waits for the handler's answer. The caller bounds the wait and
    /// kills the instance when the function's timeout passes.
    pub async fn invoke(
        &mut self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
    ) -> Result<Outcome, InvokeError> {
        self.invoke_with(request_id, deadline, event, None).await
    }

    /// [`Instance::invoke`] with the caller's client context (the handler's
    /// `context.client_context`, as the Lambda Invoke API's `X-Amz-Client-Context` gave it).
    pub async fn invoke_with(
        &mut self,
        request_id: &str,
        deadline: SystemTime,
        event: &[u8],
        client_context: Option<&serde_json::Value>,
    ) -> Result<Outcome, InvokeError> {
        let deadline_ms = deadline
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let header = serde_json::to_vec(&InvokeHeader {
            request_id,
            deadline_ms,
            invoked_function_arn: &self.arn,
            client_context,
        })
        .map_err(|e| ProtocolError::Io(e.into()))?;
        let hlen = (header.len() as u32).to_be_bytes();
        protocol::write_frame(&mut self.conn, Kind::Invoke, &[&hlen, &header, event]).await?;
        let frame = protocol::read_frame(&mut self.conn).await?;
        match frame.kind {
            Kind::Result => {
                let (h, payload): (ResultHeader, _) =
                    protocol::split_headed("RESULT", &frame.body)?;
                self.imported.extend(h.imported);
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

    /// The modules the handler's import added, and those its first invocation added, as the
    /// runtime reported them (each once; the function's code runs in that process, so they
    /// are a claim to check, not a fact).
    pub fn take_imported(&mut self) -> Vec<String> {
        std::mem::take(&mut self.imported)
    }

    /// Whether a restored instance got past its after-restore hook into the function's own
    /// code (so that a failure since, even a timeout, is the function's).
    pub fn hooked(&self) -> bool {
        self.hooked
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
        // Only while it is not collected: its number (and its group's) may be reused after.
        if matches!(self.child.try_wait(), Ok(None))
            && let Err(e) = sys::kill_group(self.pid)
        {
            tracing::warn!(instance = %self.id, pid = self.pid, "killing the instance's process group failed: {e}");
        }
        tokio::spawn(async move {
            let _ = self.child.kill().await;
        });
    }
}

/// A runtime process's ends of its descriptors, for whoever makes it (see
/// [`Instance::wiring`]).
pub struct Wiring {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub protocol: OwnedFd,
}

impl Wiring {
    /// (number in the runtime process, our descriptor): stdio and the protocol socket.
    pub fn at_numbers(&self) -> Vec<(RawFd, RawFd)> {
        vec![
            (0, self.stdin.as_raw_fd()),
            (1, self.stdout.as_raw_fd()),
            (2, self.stderr.as_raw_fd()),
            (sys::PROTOCOL_FD, self.protocol.as_raw_fd()),
        ]
    }
}

/// Our ends of a [`Wiring`]: the protocol socket and the read ends of its stdout and stderr.
pub struct OurEnds {
    conn: std::os::unix::net::UnixStream,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

/// The environment an instance runs with: given to a cold boot's interpreter, and set by
/// the after-restore hook in a restored one (whose memory holds the image build's). Lambda's
/// reserved variables; a copy restored from a function snapshot says `snap-start` itself.
fn instance_env(spec: &StartSpec) -> BTreeMap<String, String> {
    let id = crate::lambda_env::Identity {
        function: &spec.function,
        instance_id: &spec.instance_id,
        handler: &spec.handler,
        memory_mb: spec.memory_mb,
        task_root: &spec.code_dir,
        runtime_dir: &spec.bootstrap,
        region: crate::lambda_env::REGION,
        initialization: crate::lambda_env::Initialization::OnDemand,
    };
    let mut env = crate::lambda_env::lambda_env(&id, "/usr/local/bin:/usr/bin:/bin".into());
    // Single-threaded numeric libraries: faster to start, and snapshot-friendly.
    for k in ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        env.insert(k.into(), "1".into());
    }
    env.extend(spec.env.clone());
    env
}

fn unexpected(expected: &'static str, got: Kind) -> ProtocolError {
    ProtocolError::Unexpected { expected, got }
}

/// Forwards a pipe to the log line by line, cutting lines at [`MAX_LOG_LINE`] so that a
/// function cannot make the daemon buffer without bound.
pub(crate) async fn pump_lines<R: AsyncRead + Unpin>(
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
    let hash = BOOTSTRAP_PY
        .bytes()
        .chain(BOOTSTRAP_JS.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    let home = dir.join(format!("{hash:016x}"));
    for (name, text) in [
        ("ember_bootstrap.py", BOOTSTRAP_PY),
        (BOOTSTRAP_JS_NAME, BOOTSTRAP_JS),
    ] {
        let path = home.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
            std::fs::create_dir_all(&home)?;
            let tmp = home.join(format!(".{name}-{}.tmp", std::process::id()));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, &path)?;
        }
    }
    Ok(home)
}
