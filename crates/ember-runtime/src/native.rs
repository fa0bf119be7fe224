//! The `native` runtime: one process per request. The executable reads the event on stdin
//! and writes its result on stdout, then exits; exit status 0 means success, anything else
//! is the function's error (its last stderr line is the message). stderr goes to the log.
//!
//! ```text
//! spawn (stdin, stdout piped) --event on stdin, EOF--> [runs] --stdout until EOF, exit--> done
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::exec::{ExecSpec, Spawned, spawn};
use crate::protocol::FunctionError;
use crate::python::{InvokeError, LogSink, Outcome, StartError};
use crate::sys;

/// Largest result a native function may write (Lambda's synchronous response limit).
pub const MAX_RESULT: usize = 6 * 1024 * 1024;

pub struct Instance {
    id: String,
    proc: Spawned,
}

impl Instance {
    /// Starts the executable; it waits for its event on stdin.
    pub fn start(
        spec: &ExecSpec,
        logs: Arc<dyn LogSink>,
        confine: impl FnOnce(&mut Command),
    ) -> Result<Instance, StartError> {
        Ok(Instance {
            id: spec.instance_id.clone(),
            proc: spawn(spec, None, true, logs, confine)?,
        })
    }

    /// Writes the event, reads the result and waits for the process to end. Serves once: a
    /// second call finds stdin closed and reports a crash.
    pub async fn invoke(&mut self, event: &[u8]) -> Result<Outcome, InvokeError> {
        let t0 = Instant::now();
        let (Some(mut stdin), Some(stdout)) =
            (self.proc.child.stdin.take(), self.proc.child.stdout.take())
        else {
            return Err(InvokeError::Exited(
                "a native instance serves one request".into(),
            ));
        };
        let write = async move {
            // A process that exits without reading its event is not an error of ours.
            let _ = stdin.write_all(event).await;
            let _ = stdin.shutdown().await;
        };
        let read = async move {
            let mut out = Vec::new();
            let mut limited = stdout.take(MAX_RESULT as u64 + 1);
            limited.read_to_end(&mut out).await.map(|_| out)
        };
        let ((), out) = tokio::join!(write, read);
        let out =
            out.map_err(|e| InvokeError::Exited(format!("reading its stdout failed: {e}")))?;
        if out.len() > MAX_RESULT {
            let _ = sys::kill_group(self.proc.pid);
            return Ok(Outcome::Error(FunctionError {
                error_type: "Function.ResponseSizeTooLarge".into(),
                message: format!("the result is larger than the limit of {MAX_RESULT} bytes"),
                traceback: Vec::new(),
                duration_us: micros(t0.elapsed()),
                marshal: false,
            }));
        }
        let status = self
            .proc
            .child
            .wait()
            .await
            .map_err(|e| InvokeError::Exited(format!("waiting for it failed: {e}")))?;
        let exec = t0.elapsed();
        // Its last stderr line is the error message: let the log catch up first.
        let _ = tokio::time::timeout(Duration::from_millis(100), &mut self.proc.stderr_done).await;
        use std::os::unix::process::ExitStatusExt;
        match status.code() {
            Some(0) => Ok(Outcome::Result { payload: out, exec }),
            // A signal (the sandbox's relay reports it as 128 + signal): the node looks at
            // why (memory, seccomp) before calling it a crash.
            Some(c) if c > 128 => Err(InvokeError::Exited(format!("killed by signal {}", c - 128))),
            None => Err(InvokeError::Exited(format!(
                "killed by signal {}",
                status.signal().unwrap_or(0)
            ))),
            Some(c) => {
                let last = self.proc.stderr_tail.get();
                Ok(Outcome::Error(FunctionError {
                    error_type: "Runtime.ExitError".into(),
                    message: if last.is_empty() {
                        format!("the executable exited with status {c}")
                    } else {
                        format!("the executable exited with status {c}: {last}")
                    },
                    traceback: Vec::new(),
                    duration_us: micros(exec),
                    marshal: false,
                }))
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    pub fn is_gone(&mut self) -> bool {
        self.proc.exited()
    }

    pub async fn exit_status(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.proc.exit_status(within).await
    }

    pub fn kill(self) {
        self.proc.kill();
    }
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
